"""Running the user's code for `torchext-profile run`: a script or a module as `__main__`, as
`python` and `python -m cProfile` do, and its traceback without our frames."""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import io
import os
import runpy
import sys
import traceback
import zipfile


class CliError(Exception):
    """A usage error: printed as one line, exit status 2, no traceback."""


class UnrunnableScript(Exception):
    """The user's script cannot start (its syntax error, in `error`): printed as Python prints
    it, exit status 1, nothing profiled and no report written, as `python script.py` does."""

    def __init__(self, error: SyntaxError) -> None:
        super().__init__(str(error))
        self.error = error


_PROFILER_DIR = os.path.dirname(os.path.abspath(__file__))
_RUNPY = {os.path.abspath(runpy.__file__), "<frozen runpy>"}


def _is_profiler(filename: str) -> bool:
    return os.path.dirname(os.path.abspath(filename)) == _PROFILER_DIR


def _drop_our_frames(report: traceback.TracebackException, seen: set[int]) -> None:
    """Leave out the profiler's frames (the CLI's, the dispatch mode's, the saved-tensor
    hooks') and the runpy frames that start the user's code, in the exception and the ones
    chained to it: what remains is what `python script.py` prints."""
    if id(report) in seen:
        return
    seen.add(id(report))
    frames = [frame for frame in report.stack if not _is_profiler(frame.filename)]
    while frames and frames[0].filename in _RUNPY:
        frames.pop(0)
    report.stack = traceback.StackSummary.from_list(frames)
    for chained in (report.__cause__, report.__context__,
                    *(getattr(report, "exceptions", None) or ())):  # an ExceptionGroup's
        if chained is not None:
            _drop_our_frames(chained, seen)


def print_user_traceback(error: BaseException) -> None:
    """The traceback as Python would print it for the user's code: our frames left out (a
    syntax error in the script, raised before any of its frames run, prints no frames)."""
    report = traceback.TracebackException(type(error), error, error.__traceback__)
    _drop_our_frames(report, set())
    print("".join(report.format()), end="", file=sys.stderr, flush=True)


def user_traceback(error: BaseException) -> str:
    """The traceback `print_user_traceback` prints, as text."""
    text = io.StringIO()
    with contextlib.redirect_stderr(text):
        print_user_traceback(error)
    return text.getvalue()


def run_script(path: str, script_args: list[str]) -> dict:
    """Run a file as `__main__` with its own argv and its folder first on sys.path; its code
    is named by its absolute path, as `python script.py` names it."""
    saved_argv, saved_path = sys.argv, sys.path[:]
    sys.argv = [path, *script_args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    try:
        return runpy.run_path(os.path.abspath(path), run_name="__main__")
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
    """A usage error unless `name` is a module `python -m` can run; its syntax error raised as
    is (compiled here, before anything is profiled)."""
    sys.path.insert(0, os.getcwd())
    try:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations is not None:
            spec = importlib.util.find_spec(f"{name}.__main__")
            if spec is None:
                raise CliError(f"'{name}' is a package and has no __main__ module to run")
    except (ImportError, ValueError) as exc:
        raise CliError(f"no module named '{name}' ({exc})") from None
    finally:
        sys.path.remove(os.getcwd())
    if spec is None:
        raise CliError(f"no module named '{name}'")
    if isinstance(spec.loader, importlib.abc.InspectLoader):
        try:
            spec.loader.get_code(spec.name)
        except SyntaxError as exc:
            raise UnrunnableScript(exc) from None


def check_script(path: str) -> None:
    """A usage error unless `path` is a script (or a folder with `__main__.py`); its syntax
    error raised as is, before anything is profiled, so that none is profiled or reported."""
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "__main__.py")):
        path = os.path.join(path, "__main__.py")
    if not os.path.isfile(path):
        raise CliError(f"can't open file '{path}': no such script")
    if zipfile.is_zipfile(path):
        return  # runpy runs the archive's __main__.py
    with open(path, "rb") as source:
        try:
            compile(source.read(), os.path.abspath(path), "exec", dont_inherit=True)
        except SyntaxError as exc:
            raise UnrunnableScript(exc) from None
