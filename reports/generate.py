"""Generate the reports: run every study, write its page, CSV and plots, and the index.

    python -m reports.generate --quick --out reports/      # CPU, a few minutes
    torchext-profile report --device cuda --out reports/   # full size, for a GPU

Every number on the pages is measured in this run (the profiler's saved/held/peak bytes,
`time.perf_counter` medians); nothing is typed in.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import importlib.metadata
import os
import platform
import shlex
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from .studies import STUDIES
from .studies._common import Context

DEFAULT_PROG = "python -m reports.generate"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"),
                        default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where the studies run (default: cuda when available)")
    parser.add_argument("--out", default="reports/", help="output folder (default: reports/)")
    parser.add_argument("--quick", action="store_true",
                        help="quick sizes: a few minutes on a CPU (same as --size quick)")
    parser.add_argument("--size", choices=("tiny", "quick", "full"),
                        help="tiny (tests), quick or full (default: full on cuda, quick on cpu)")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="torch CPU threads (default: 1 on cpu, so that timings stay "
                        "stable on a shared machine; torch's default on cuda)")
    parser.add_argument("--only", action="append", choices=STUDIES, metavar="STUDY",
                        help=f"run only this study (repeatable): {', '.join(STUDIES)}")
    return parser


@contextmanager
def _progress(total: int) -> Iterator[tuple[Callable[[str], None], Callable[[], None]]]:
    """(describe(text), advance()) for a progress bar on stderr: rich's on a terminal, else a
    counter, one line per step (readable in logs)."""
    try:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )
        console = Console(stderr=True)
        plain = not console.is_terminal
    except ImportError:
        plain = True
    if plain:
        done = [0]

        def describe(text: str) -> None:
            print(f"[{done[0] + 1}/{total}] {text}", file=sys.stderr, flush=True)

        def advance() -> None:
            done[0] += 1

        yield describe, advance
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("reports", total=total)
        yield (lambda text: progress.update(task, description=text[:70]),
               lambda: progress.advance(task))


def _answer(page: Path) -> str:
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("**Answer.** "):
            return line.removeprefix("**Answer.** ")
    return ""


def write_index(out: Path, header: list[str], ran: dict[str, float]) -> Path:
    """`README.md`: how the pages were made, then each study's page and its answer."""
    lines = ["# Reports: what autograd costs, measured", "", *header, "",
             "| study | answer | seconds |", "|---|---|---:|"]
    for study in STUDIES:
        page = out / f"{study}.md"
        if not page.exists():
            continue
        title = page.read_text(encoding="utf-8").splitlines()[0].removeprefix("# ")
        seconds = f"{ran[study]:.0f}" if study in ran else "earlier run"
        lines.append(f"| [{title}]({study}.md) | {_answer(page).replace('|', '/')} | "
                     f"{seconds} |")
    path = out / "README.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _run_studies(studies: list[str], ctx_args: dict, describe, advance
                 ) -> tuple[dict[str, float], list[str]]:
    """Run each study (a failing one is reported and skipped); seconds per study, failures."""
    ran: dict[str, float] = {}
    failed = []
    for study in studies:
        describe(study)
        ctx = Context(**ctx_args, progress=describe)
        begin = time.perf_counter()
        try:
            importlib.import_module(f"reports.studies.{study}").run(ctx)
            ran[study] = time.perf_counter() - begin
        except Exception:  # one study failing must not cost the others
            traceback.print_exc()
            failed.append(study)
        advance()
    return ran, failed


def main(argv: list[str] | None = None, *, prog: str = DEFAULT_PROG) -> int:
    """Run the studies; 0 when every one wrote its page, 1 when one failed, 2 on bad usage."""
    args = _parser(prog).parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"{prog}: --device cuda, but CUDA is not available", file=sys.stderr)
        return 2
    if args.threads is not None and args.threads < 1:
        print(f"{prog}: --threads must be at least 1, got {args.threads}", file=sys.stderr)
        return 2
    size = args.size or ("quick" if args.quick or args.device == "cpu" else "full")
    threads = args.threads or (1 if args.device == "cpu" else torch.get_num_threads())
    studies = [s for s in STUDIES if not args.only or s in args.only]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    command = " ".join([prog, *map(shlex.quote, sys.argv[1:] if argv is None else argv)])
    date = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    header = [f"- Device: {args.device}, {device_name(device)}; {threads} torch thread(s)",
              f"- torch {torch.__version__}, triton {_version('triton')}, "
              f"Python {platform.python_version()}",
              f"- Date: {date}", f"- Size: {size}", f"- Command: `{command}`"]
    # Carried gradients decay into subnormal floats, which x86 cores compute many times slower:
    # a timing would then measure the CPU's subnormal path, not what the graph costs.
    flush_denormal = device.type == "cpu" and torch.set_flush_denormal(True)
    if flush_denormal:
        header.append("- Subnormal floats flushed to zero (`torch.set_flush_denormal(True)`), "
                      "so that timings measure the graph, not the CPU's slow subnormal path")
    footer = "---\n" + " · ".join(line.removeprefix("- ") for line in header)
    started = time.perf_counter()
    threads_before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with _progress(len(studies)) as (describe, advance):
            ran, failed = _run_studies(studies, dict(device=device, size=size, out=out,
                                                     footer=footer), describe, advance)
    finally:
        torch.set_num_threads(threads_before)
        if flush_denormal:
            torch.set_flush_denormal(False)  # torch's default
    seconds = time.perf_counter() - started
    header.append(f"- Took {seconds:.0f} s" + (f"; failed: {', '.join(failed)}" if failed else ""))
    index = write_index(out, header, ran)
    print(f"wrote {index} and {len(ran)} of {len(studies)} study pages in {seconds:.0f} s",
          file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
