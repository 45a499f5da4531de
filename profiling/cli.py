"""`python -m profiling`: the profiler's subcommands, and what every subcommand shares.

    python -m profiling run train.py --epochs 1          # like python -m cProfile train.py ...
    python -m profiling run --out out/train -m package.module args
    python -m profiling compare out/a out/b

As with `python -m cProfile` and `torchrun`, our options go before the script and everything
after it is the script's. The console script `torchext-profile` (reports/cli.py) adds the
subcommands of the layers above, `examples` (torchext/cli.py) and `report` (reports/cli.py):
the profiler imports none of them. Each subcommand is one `add_*_command(subparsers)` function;
`SUBCOMMANDS` lists the profiler's. Tables go to stdout (`--format`: an aligned table, or
md/csv/json for machines); progress and messages go to stderr, so stdout stays parseable.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from profiling import html
from profiling._launch import (
    CliError,
    UnrunnableScript,
    check_module,
    check_script,
    print_user_traceback,
    run_module,
    run_script,
)
from profiling._plan_cli import add_plan_command

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


def exit_status(exc: SystemExit) -> int:
    """The exit status `sys.exit(code)` means; a message as code is printed, status 1."""
    if exc.code is None or isinstance(exc.code, int):
        return exc.code or 0
    print(exc.code, file=sys.stderr)
    return 1


def profile_call(
    call: Callable[[], Any], *, device: str | None, command: str, label: str
) -> ProfiledRun:
    """Run `call` inside `profiling.profile`; an exception it raises is kept, not propagated,
    so the partial profile can still be saved; `sys.exit()` ends it normally, as in cProfile.

    Says on stderr how long it took, in two numbers: the profiled block (the report's "wall
    time") and the whole, which adds starting the profiler (it imports torch._dynamo) and
    stopping it."""
    from profiling import profile

    error, exit_code, result = None, 0, None
    start = time.perf_counter()
    with progress(label):
        with profile(device=device, command=command) as prof:
            try:
                result = call()
            except SystemExit as exc:
                exit_code = exit_status(exc)
            except BaseException as exc:  # noqa: BLE001 - reported below, profile kept
                error, exit_code = exc, 130 if isinstance(exc, KeyboardInterrupt) else 1
    total_s = time.perf_counter() - start
    message(f"profiled {label}: {prof.meta['wall_ms']:.1f} ms in the profiled block (the "
            f"report's wall time), {total_s:.1f} s with starting and stopping the profiler")
    return ProfiledRun(prof, error, exit_code, result)


def out_folder(out: str | None) -> Path | None:
    """`--out` as a folder (None: not given); a usage error if it names a file."""
    if out is None:
        return None
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise CliError(f"--out {out}: exists and is not a folder")
    return folder


def save_report(prof: Any, folder: Path, top: int) -> Any:
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
    terminal, else a line when it starts and every `HEARTBEAT_S` seconds."""
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


# ----------------------------------------------------------------------------- run


def _options_taking_values(parser: argparse.ArgumentParser) -> dict[str, bool]:
    """The parser's long options (--help aside), each with whether it takes a value."""
    return {name: action.nargs != 0 for action in parser._actions  # argparse keeps no public list
            for name in action.option_strings if name.startswith("--") and name != "--help"}


def note_options_after_script(args: argparse.Namespace, target: list[str]) -> None:
    """One line on stderr when the script's arguments hold one of our option names: they went
    to the script (everything after it is its own, as with cProfile), and how to give them to
    us instead."""
    own, moved, kept, index = args.own_options, [], [target[0]], 1
    while index < len(target):
        arg = target[index]
        name = arg.split("=", 1)[0]
        if name in own:
            takes_value = own[name] and "=" not in arg
            moved += target[index:index + 1 + takes_value]
            index += 1 + takes_value
        else:
            kept.append(arg)
            index += 1
    if not moved:
        return
    argv = list(getattr(args, "argv", None) or ["run", *(["-m"] if args.module else []), *target])
    before = argv[:len(argv) - len(args.target)]
    if before[-1:] == ["-m"]:  # keep -m right before the module
        before, kept = before[:-1], ["-m", *kept]
    suggestion = shlex.join([args.prog, *before, *moved, *kept])
    message(f"{args.prog}: note: {shlex.join(moved)} came after {target[0]}, so they went to it "
            f"(everything after the script is the script's); to give them to {args.prog}, put "
            f"them before the script: {suggestion}")


def run_command(args: argparse.Namespace) -> int:
    target = list(args.target)
    if target[:1] == ["--"]:
        target = target[1:]
    if not target:
        raise CliError("run: give a script (run script.py [args]) or a module (run -m module)")
    note_options_after_script(args, target)
    from profiling.distributed import rank_from_env
    from profiling.distributed import run_command as run_job

    if args.nproc_per_node is not None or rank_from_env() is not None:  # a torchrun job
        return run_job(args, ["-m"] * args.module + target)
    name, target_args = target[0], target[1:]
    folder = out_folder(args.out)
    if args.module:
        check_module(name)
        call, label = (lambda: run_module(name, target_args)), f"-m {name}"
    else:
        check_script(name)
        call, label = (lambda: run_script(name, target_args)), name
    command = shlex.join([args.prog, "run", *(["-m"] if args.module else []), *target])
    run = profile_call(call, device=args.device, command=command, label=label)
    if run.error is not None:
        print_user_traceback(run.error)
    start = time.perf_counter()
    saved = save_report(run.prof, folder, args.top)
    partial = " (partial: the run raised)" if run.error is not None else ""
    html.emit_profile(saved, args.format, args.top, folder)
    message(f"report written to {folder}/{partial} in {time.perf_counter() - start:.1f} s: "
            f"open {folder / 'report.html'}")
    return run.exit_code


def add_run_command(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "run", help="profile a Python script or module (like python -m cProfile)",
        parents=[device_options(), output_options(DEFAULT_OUT)],
        description="Profile a whole script (run [options] script.py [args]) or module (run "
        "[options] -m module [args]) and write the report folder to --out. Options go before "
        "the script: everything after it is the script's own arguments.",
    )
    parser.add_argument("-m", dest="module", action="store_true",
                        help="run a library module as a script, as python -m does")
    parser.add_argument("--nproc-per-node", type=positive_int, default=None, metavar="N",
                        help="run N ranks through torch.distributed.run: DIR/rank{R}/ per rank, "
                        "a job summary in DIR (see profiling.distributed)")
    parser.add_argument("target", nargs=argparse.REMAINDER, metavar="script.py | module [args]",
                        help="what to run and the arguments it gets")
    parser.set_defaults(handler=run_command, own_options=_options_taking_values(parser))


# ----------------------------------------------------------------------------- compare


def load_saved_profile(path: str) -> Any:
    """`load_profile` with a one-line usage error for what is not a saved profile: no file,
    not JSON, JSON of another shape."""
    from profiling.export import PROFILE_FORMAT, load_profile

    file = Path(path) / "profile.json" if Path(path).is_dir() else Path(path)
    try:
        payload = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CliError(f"cannot read profile {path}: no saved profile there (expected "
                       f"{file})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read profile {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise CliError(f"cannot read profile {path}: {file} is not JSON ({exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != PROFILE_FORMAT:
        raise CliError(f"cannot read profile {path}: {file} is JSON but not a profile that "
                       f"{PROG} saved (no \"format\": \"{PROFILE_FORMAT}\" in it)")
    try:
        return load_profile(file)
    except ValueError as exc:  # e.g. an unsupported version
        raise CliError(f"cannot read profile {path}: {exc}") from None
    except (KeyError, TypeError, AttributeError, IndexError) as exc:
        raise CliError(f"cannot read profile {path}: {file} is an incomplete or damaged "
                       f"profile ({type(exc).__name__}: {exc})") from None


def compare_command(args: argparse.Namespace) -> int:
    from profiling.compare import compare_profiles, comparison_sections, save_comparison
    from profiling.distributed import compare_jobs_command, is_job_folder

    if is_job_folder(args.a) or is_job_folder(args.b):  # torchrun jobs: rank{R}/ folders
        return compare_jobs_command(args)
    profiles = [load_saved_profile(path) for path in (args.a, args.b)]
    folder = out_folder(args.out)
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
        parents=[output_options(None)],
        description="Compare profile A (before) with profile B (after): deltas are B - A, "
        "ratios B / A.",
    )
    parser.add_argument("a", metavar="A", help="report folder (or profile.json) of the baseline")
    parser.add_argument("b", metavar="B", help="report folder (or profile.json) to compare")
    parser.set_defaults(handler=compare_command)


# ----------------------------------------------------------------------------- parser

SUBCOMMANDS: tuple[Callable[[Any], None], ...] = (
    add_run_command,
    add_compare_command,
    add_plan_command,
)


def _device(text: str) -> str:
    """A device whose memory the profiler accounts for (cpu, cuda[:N]) and this machine has."""
    import torch

    try:
        device = torch.device(text)
    except RuntimeError as exc:
        raise argparse.ArgumentTypeError(str(exc).split(":")[0] + f": {text!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(
            f"{text!r}: the profiler accounts for the memory of cpu and cuda devices only")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text!r}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(
                f"{text!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return text


def device_options() -> argparse.ArgumentParser:
    """The `--device` option, as a parent parser."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--device", default=None, type=_device,
                        help="device whose memory live/peak bytes report: cpu or cuda[:N] "
                        "(default: cuda if available, else cpu)")
    return parent


def positive_int(text: str) -> int:
    """An argparse type: a whole number, at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def output_options(out_default: str | None) -> argparse.ArgumentParser:
    """`--format`, `--top` and `--out`, as a parent parser."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--format", choices=("md", "csv", "json"), default=None,
                        help="what to print on stdout (default: an aligned table)")
    parent.add_argument("--top", type=positive_int, default=10, metavar="N",
                        help="rows per table (default: 10)")
    out_help = f"report folder (default: {out_default})" if out_default else (
        "also write the tables to this folder")
    parent.add_argument("--out", default=out_default, metavar="DIR", help=out_help)
    return parent


def build_parser(subcommands: Sequence[Callable[[Any], None]] | None = None,
                 prog: str = PROG) -> argparse.ArgumentParser:
    """The parser with `subcommands` (default: the profiler's, `SUBCOMMANDS`)."""
    parser = argparse.ArgumentParser(
        prog=prog, description="Autograd memory profiler: what each operator saved for "
        "backward and what it cost.",
    )
    parser.set_defaults(prog=prog)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_command in SUBCOMMANDS if subcommands is None else subcommands:
        add_command(subparsers)
    return parser


def main(argv: list[str] | None = None, *,
         subcommands: Sequence[Callable[[Any], None]] | None = None, prog: str = PROG) -> int:
    """Parse `argv` with `subcommands` (default: the profiler's), run the handler; returns the
    exit status: 2 and one line for a usage error, 1 for a script that cannot start."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(subcommands, prog)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse printed
        return exit_status(exc)
    args.argv = argv
    try:
        return args.handler(args)
    except CliError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except UnrunnableScript as exc:  # its syntax error, as python prints it; nothing profiled
        print_user_traceback(exc.error)
        return 1
    except BrokenPipeError:  # stdout closed early (| head): stop quietly, as cProfile does
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps interpreter exit quiet
        return 1
