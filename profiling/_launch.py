"""Running the user's code for `torchext-profile run`: a script or a module as `__main__`, as
`python` and `python -m cProfile` do, and its traceback without our frames."""

from __future__ import annotations

import importlib.util
import os
import runpy
import sys
import traceback


class CliError(Exception):
    """A usage error: printed as one line, exit status 2, no traceback."""


# Frames of ours and of runpy, hidden from the user's traceback.
_MACHINERY = {os.path.abspath(__file__), os.path.abspath(runpy.__file__), "<frozen runpy>",
              os.path.join(os.path.dirname(os.path.abspath(__file__)), "cli.py")}


def print_user_traceback(error: BaseException) -> None:
    """The traceback as Python would print it for the user's code: our frames left out."""
    tb = error.__traceback__
    while tb is not None and (tb.tb_frame.f_code.co_filename in _MACHINERY
                              or os.path.abspath(tb.tb_frame.f_code.co_filename) in _MACHINERY):
        tb = tb.tb_next
    traceback.print_exception(type(error), error, tb or error.__traceback__, file=sys.stderr)


def run_script(path: str, script_args: list[str]) -> dict:
    """Run a file as `__main__` with its own argv and its folder first on sys.path."""
    saved_argv, saved_path = sys.argv, sys.path[:]
    sys.argv = [path, *script_args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    try:
        return runpy.run_path(path, run_name="__main__")
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path


def run_module(name: str, module_args: list[str]) -> dict:
    """Run a module as `python -m` does: as `__main__`, the current folder first on sys.path."""
    saved_argv, saved_path = sys.argv, sys.path[:]
    sys.argv = [name, *module_args]
    sys.path.insert(0, os.getcwd())
    try:
        return runpy.run_module(name, run_name="__main__", alter_sys=True)
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path


def check_module(name: str) -> None:
    sys.path.insert(0, os.getcwd())
    try:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations is not None:
            if importlib.util.find_spec(f"{name}.__main__") is None:
                raise CliError(f"'{name}' is a package and has no __main__ module to run")
    except (ImportError, ValueError) as exc:
        raise CliError(f"no module named '{name}' ({exc})") from None
    finally:
        sys.path.remove(os.getcwd())
    if spec is None:
        raise CliError(f"no module named '{name}'")


def check_script(path: str) -> None:
    if os.path.isfile(path):
        return
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "__main__.py")):
        return
    raise CliError(f"can't open file '{path}': no such script")
