"""`torchext-profile`: profile a script, a module or the lesson's examples; compare two profiles.

    torchext-profile run train.py --epochs 1      # like `python -m cProfile train.py --epochs 1`
    torchext-profile run -m package.module args
    torchext-profile examples [NAME ...]
    torchext-profile compare profile_out/ other_out/
    torchext-profile report --quick --out reports/  # the generated studies (reports.generate)

Each subcommand is added by one `add_*_command(subparsers)` function listed in `SUBCOMMANDS`.
Tables go to stdout (`--format`: an aligned table, or md/csv/json for machines); progress and
messages go to stderr, so stdout stays parseable.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from profiling import html
from profiling._launch import (
    CliError,
    check_module,
    check_script,
    print_user_traceback,
    run_module,
    run_script,
)

PROG = "torchext-profile"
DEFAULT_OUT = "profile_out"
HEARTBEAT_S = 10.0  # seconds between "still profiling" lines when stderr is not a terminal


@dataclass
class ProfiledRun:
    """A profiled call: the profile, the error it raised (if any) and its exit status."""

    prof: Any
    error: BaseException | None
    exit_code: int
    result: Any = None  # kept alive until the report is saved, so leaks name their holders


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None or isinstance(exc.code, int):
        return exc.code or 0
    print(exc.code, file=sys.stderr)
    return 1


def profile_call(
    call: Callable[[], Any], *, device: str | None, command: str, label: str
) -> ProfiledRun:
    """Run `call` inside `profiling.profile`; an exception it raises is kept, not propagated,
    so the partial profile can still be saved; `sys.exit()` ends it normally, as in cProfile."""
    from profiling import profile

    error, exit_code, result = None, 0, None
    with progress(label), profile(device=device, command=command) as prof:
        try:
            result = call()
        except SystemExit as exc:
            exit_code = _exit_code(exc)
        except BaseException as exc:  # noqa: BLE001 - reported below, profile kept
            error, exit_code = exc, 130 if isinstance(exc, KeyboardInterrupt) else 1
    return ProfiledRun(prof, error, exit_code, result)


def _out_folder(out: str | None) -> Path | None:
    if out is None:
        return None
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise CliError(f"--out {out}: exists and is not a folder")
    return folder


def _save(prof: Any, folder: Path, top: int) -> Any:
    """Write the report folder; returns the profile as saved (`load_profile`), for printing."""
    from profiling.export import load_profile, save_profile

    try:
        return load_profile(save_profile(prof, folder, top=top))
    except OSError as exc:
        raise CliError(f"could not write the report to {folder}: {exc}") from None


# ----------------------------------------------------------------------------- output


def message(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@contextlib.contextmanager
def progress(label: str) -> Iterator[None]:
    """Show that a long run is alive: a rich spinner with the elapsed time when stderr is a
    terminal, else a line when it starts, every `HEARTBEAT_S` seconds, and when it ends."""
    start, stop = time.perf_counter(), threading.Event()
    live = None
    if sys.stderr.isatty():
        from rich.console import Console
        from rich.live import Live
        from rich.spinner import Spinner

        spinner = Spinner("dots", text=f"profiling {label}")
        live = Live(spinner, console=Console(stderr=True), transient=True,
                    redirect_stdout=False, redirect_stderr=False)  # the script keeps its streams
        live.start()
    else:
        message(f"profiling {label} ...")

    def heartbeat() -> None:
        while not stop.wait(0.25 if live is not None else HEARTBEAT_S):
            elapsed = time.perf_counter() - start
            if live is not None:
                spinner.update(text=f"profiling {label} ({elapsed:.0f} s)")
            else:
                message(f"... still profiling {label} ({elapsed:.0f} s)")

    thread = threading.Thread(target=heartbeat, name="torchext-profile-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        if live is not None:
            live.stop()
        message(f"profiled {label} in {time.perf_counter() - start:.1f} s")


# ----------------------------------------------------------------------------- run


def run_command(args: argparse.Namespace) -> int:
    target = list(args.target)
    if target[:1] == ["--"]:
        target = target[1:]
    if not target:
        raise CliError("run: give a script (run script.py [args]) or a module (run -m module)")
    name, target_args = target[0], target[1:]
    folder = _out_folder(args.out)
    if args.module:
        check_module(name)
        call, label = (lambda: run_module(name, target_args)), f"-m {name}"
    else:
        check_script(name)
        call, label = (lambda: run_script(name, target_args)), name
    command = shlex.join([PROG, "run", *(["-m"] if args.module else []), *target])
    run = profile_call(call, device=args.device, command=command, label=label)
    if run.error is not None:
        print_user_traceback(run.error)
    saved = _save(run.prof, folder, args.top)
    partial = " (partial: the run raised)" if run.error is not None else ""
    html.emit_profile(saved, args.format, args.top, folder)
    message(f"report written to {folder}/{partial}: open {folder / 'report.html'}")
    return run.exit_code


def add_run_command(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "run", help="profile a Python script or module (like python -m cProfile)",
        parents=[_device_options(), _output_options(DEFAULT_OUT)],
        description="Profile a whole script (run script.py [args]) or module (run -m module "
        "[args]) and write the report folder to --out.",
    )
    parser.add_argument("-m", dest="module", action="store_true",
                        help="run a library module as a script, as python -m does")
    parser.add_argument("target", nargs=argparse.REMAINDER, metavar="script.py | module [args]",
                        help="what to run and the arguments it gets")
    parser.set_defaults(handler=run_command)


# ----------------------------------------------------------------------------- examples


def _load_examples() -> dict[str, Callable[[], Any]]:
    try:
        from torchext.examples import EXAMPLES
    except ImportError as exc:
        raise CliError(f"the lesson's examples are not available: {exc}") from None
    return dict(EXAMPLES)


def _example_row(name: str, error: BaseException | None, saved: Any) -> dict:
    ops = saved.ops
    return {
        "example": name,
        "status": "ok" if error is None else f"{type(error).__name__}: {error}"[:80],
        "operators": len(ops), "saved_bytes": int(ops["saved_bytes"].sum()),
        "saved_new_bytes": int(ops["saved_new_bytes"].sum()),
        "peak_bytes": int(saved.meta["peak_bytes"]), "held_bytes": int(saved.held_bytes),
        "leaks": len(saved.leaks()), "time_ms": float(saved.meta["wall_ms"]),
        "out": str(saved.path),
    }


def examples_command(args: argparse.Namespace) -> int:
    examples = _load_examples()
    unknown = [name for name in args.names if name not in examples]
    if unknown:
        raise CliError(f"unknown example(s) {', '.join(unknown)}; choose from "
                       f"{', '.join(examples)}")
    chosen = args.names or list(examples)
    folder = _out_folder(args.out)
    rows, status = [], 0
    for index, name in enumerate(chosen, start=1):
        label = f"example {index}/{len(chosen)}: {name}"
        command = f"{PROG} examples {name}"
        run = profile_call(examples[name], device=args.device, command=command, label=label)
        if run.error is not None:
            message(f"example {name} raised:")
            print_user_traceback(run.error)
        saved = _save(run.prof, folder / name, args.top)
        rows.append(_example_row(name, run.error, saved))
        status = status or run.exit_code
    table = pd.DataFrame(rows)
    table.to_csv(folder / "examples.csv", index=False)
    html.emit([html.Section("examples", "Profiled examples", table, table.drop(columns="out"))],
              args.format, {}, {"out": str(folder)})
    message(f"reports written to {folder}/<example>/ (summary: {folder / 'examples.csv'})")
    return status


def add_examples_command(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "examples", help="profile the autograd lesson's examples (torchext.examples)",
        parents=[_device_options(), _output_options(DEFAULT_OUT)],
        description="Profile each example of torchext.examples.EXAMPLES; one report folder "
        "per example under --out.",
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help="examples to run (default: all)")
    parser.set_defaults(handler=examples_command)


# ----------------------------------------------------------------------------- compare


def compare_command(args: argparse.Namespace) -> int:
    from profiling.compare import compare_profiles, comparison_sections, save_comparison
    from profiling.export import load_profile

    profiles = []
    for path in (args.a, args.b):
        try:
            profiles.append(load_profile(path))
        except (OSError, ValueError, KeyError) as exc:
            raise CliError(f"cannot read profile {path}: {exc}") from None
    folder = _out_folder(args.out)
    comparison = compare_profiles(*profiles)
    header = {"A": str(args.a), "B": str(args.b)}
    html.emit(comparison_sections(comparison, args.top), args.format, header, header)
    if folder is not None:
        save_comparison(comparison, folder, (args.a, args.b))
        message(f"comparison written to {folder}/")
    return 0


def add_compare_command(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "compare", help="diff two saved profiles (per op and per module: saved, peak, time)",
        parents=[_output_options(None)],
        description="Compare profile A (before) with profile B (after): deltas are B - A, "
        "ratios B / A.",
    )
    parser.add_argument("a", metavar="A", help="report folder (or profile.json) of the baseline")
    parser.add_argument("b", metavar="B", help="report folder (or profile.json) to compare")
    parser.set_defaults(handler=compare_command)


# ----------------------------------------------------------------------------- report


def report_command(args: argparse.Namespace) -> int:
    from reports.generate import main as generate_reports

    try:
        return generate_reports(args.report_args, prog=f"{PROG} report")
    except SystemExit as exc:  # --help, or a usage error the report's parser printed
        return _exit_code(exc)


def add_report_command(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "report", help="regenerate the studies in reports/ (options: report --help)",
        add_help=False, prefix_chars="\0",  # every option goes to reports.generate
        description="Run the reports' studies; see `torchext-profile report --help`.",
    )
    parser.add_argument("report_args", nargs=argparse.REMAINDER)
    parser.set_defaults(handler=report_command)


# ----------------------------------------------------------------------------- parser

SUBCOMMANDS: tuple[Callable[[Any], None], ...] = (
    add_run_command,
    add_examples_command,
    add_compare_command,
    add_report_command,
)


def _device(text: str) -> str:
    """A device torch knows and this machine has (checked before anything runs)."""
    import torch

    try:
        device = torch.device(text)
    except RuntimeError as exc:
        raise argparse.ArgumentTypeError(str(exc).split(":")[0] + f": {text!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: CUDA is not available on this machine")
    return text


def _device_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--device", default=None, type=_device,
                        help="device whose memory live/peak bytes report (default: cuda if "
                        "available, else cpu)")
    return parent


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _output_options(out_default: str | None) -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--format", choices=("md", "csv", "json"), default=None,
                        help="what to print on stdout (default: an aligned table)")
    parent.add_argument("--top", type=_positive, default=10, metavar="N",
                        help="rows per table (default: 10)")
    out_help = f"report folder (default: {out_default})" if out_default else (
        "also write the tables to this folder")
    parent.add_argument("--out", default=out_default, metavar="DIR", help=out_help)
    return parent


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Autograd memory profiler: what each operator saved for "
        "backward and what it cost.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_command in SUBCOMMANDS:
        add_command(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of `torchext-profile`; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse printed
        return _exit_code(exc)
    try:
        return args.handler(args)
    except CliError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # stdout closed early (| head): stop quietly, as cProfile does
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps interpreter exit quiet
        return 1
