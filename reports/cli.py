"""`torchext-profile`, the console script: the profiler's subcommands (`profiling.cli`: run,
compare, ...), torchext's `examples` (`torchext.cli`) and the reports' `report`.

    torchext-profile run [--out DIR] train.py [args]
    torchext-profile examples [NAME ...]
    torchext-profile compare out/a out/b
    torchext-profile report --quick --out reports/

It sits here, at the top of the layers (triton_kernels <- torchext <- reports), so that each
subcommand lives with the code it drives and the profiler imports none of them; `python -m
profiling` has the profiler's subcommands alone.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from profiling import cli as profiling_cli
from torchext.cli import add_examples_command


def report_command(args: argparse.Namespace) -> int:
    from reports.generate import main as generate_reports

    try:
        return generate_reports(args.report_args, prog=f"{profiling_cli.PROG} report")
    except SystemExit as exc:  # --help, or a usage error the report's parser printed
        return profiling_cli.exit_status(exc)


def add_report_command(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "report", help="regenerate the studies in reports/ (options: report --help)",
        add_help=False, prefix_chars="\0",  # every option goes to reports.generate
        description="Run the reports' studies; see `torchext-profile report --help`.",
    )
    parser.add_argument("report_args", nargs=argparse.REMAINDER)
    parser.set_defaults(handler=report_command)


def subcommands() -> tuple[Callable[[Any], None], ...]:
    """The console script's subcommands: the profiler's as they are now, then ours."""
    return (*profiling_cli.SUBCOMMANDS, add_examples_command, add_report_command)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `torchext-profile`; returns the exit status."""
    return profiling_cli.main(argv, subcommands=subcommands())


if __name__ == "__main__":
    raise SystemExit(main())
