"""torchext's subcommand of `torchext-profile`: `examples`, the lesson's examples profiled.

    torchext-profile examples [--out DIR] [NAME ...]

It lives here because it drives torchext (`torchext.examples`); torchext may import the
profiler, never the other way round. `reports/cli.py` composes it into the console script.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import pandas as pd

from profiling import html
from profiling.cli import (
    DEFAULT_OUT,
    PROG,
    CliError,
    device_options,
    message,
    out_folder,
    output_options,
    print_user_traceback,
    profile_call,
    save_report,
)


def _load_examples() -> dict[str, Callable[[], Any]]:
    from torchext.examples import EXAMPLES  # the ops' Triton kernels: only when asked for

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
    folder = out_folder(args.out)
    rows, status = [], 0
    for index, name in enumerate(chosen, start=1):
        label = f"example {index}/{len(chosen)}: {name}"
        command = f"{PROG} examples {name}"
        run = profile_call(examples[name], device=args.device, command=command, label=label)
        if run.error is not None:
            message(f"example {name} raised:")
            print_user_traceback(run.error)
        saved = save_report(run.prof, folder / name, args.top)
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
        parents=[device_options(), output_options(DEFAULT_OUT)],
        description="Profile each example of torchext.examples.EXAMPLES; one report folder "
        "per example under --out.",
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help="examples to run (default: all)")
    parser.set_defaults(handler=examples_command)
