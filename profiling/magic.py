"""Jupyter: `%load_ext profiling`, the `%%memprofile` cell magic, and a profile's inline summary.

    %load_ext profiling

    %%memprofile --top 5 --out out/cell
    loss = model(x).sum()
    loss.backward(retain_graph=True)

The cell runs as it would without the magic (IPython runs it: its output, its last value, its
exception and traceback, and the cell counting as failed), inside `profile()`. Then the summary
shows below it as HTML: headline numbers (peak, saved, held bytes), the memory plot as an
embedded PNG, top operators, modules, leaks. The profile is kept as `_memprofile` in the user's
namespace; `--out DIR` also saves the report folder. Displaying the cell's last value (a
tensor's repr runs aten ops) happens outside the profile, as it is not the cell's own work.

`profile_html` and `profile_markdown` are what `Profile._repr_html_` / `_repr_markdown_` show,
so `prof` on a cell's last line renders the same summary. This module imports IPython only
when the extension is loaded.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from profiling.html import html_table, overview, sections, summary_markdown

DEFAULT_TOP = 10
NAMESPACE_NAME = "_memprofile"  # where the cell's profile is kept
# Styles for the summary only (a notebook page has its own): scoped to the summary's div.
_STYLE = """
.torchext-profile table { border-collapse: collapse; margin: .3em 0; font-size: .9em; }
.torchext-profile th, .torchext-profile td { padding: .2em .6em; border-bottom: 1px solid #ddd;
  text-align: left; }
.torchext-profile td.num, .torchext-profile th.num { text-align: right; }
.torchext-profile dl { display: grid; grid-template-columns: max-content auto; gap: .1em 1em; }
.torchext-profile dt { font-weight: 600; } .torchext-profile dd { margin: 0; }
.torchext-profile p.note { color: #555; margin: .2em 0; }
"""


def _memory_png(prof: Any) -> str:
    """The memory plot as a base64 PNG."""
    from profiling.plots import memory_figure

    buffer = io.BytesIO()
    memory_figure(prof).savefig(buffer, format="png", dpi=80)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _snapshot(prof: Any) -> Any:
    """Every table read once (a live profile rebuilds its graph and leaks on each access)."""
    from profiling.export import snapshot

    return snapshot(prof) if hasattr(prof, "_recorder") else prof


def profile_html(prof: Any, top: int = DEFAULT_TOP, plot: bool = True) -> str:
    """The profile summary as an HTML fragment for a notebook: headline numbers, the memory
    plot (embedded PNG, unless `plot` is False) and the summary's tables."""
    prof = _snapshot(prof)
    parts = [f'<div class="torchext-profile"><style>{_STYLE}</style>',
             "<strong>Autograd memory profile</strong><dl>",
             *(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>"
               for k, v in overview(prof).items()), "</dl>"]
    if plot:
        parts.append(f'<img alt="memory over the operator sequence" style="max-width:100%" '
                     f'src="data:image/png;base64,{_memory_png(prof)}">')
    for title, explanation, table in sections(prof, top):
        parts += [f"<h4>{html.escape(title)}</h4>",
                  f'<p class="note">{html.escape(explanation)}</p>', html_table(table)]
    parts.append("</div>")
    return "\n".join(parts)


def profile_markdown(prof: Any, top: int = DEFAULT_TOP) -> str:
    """The profile summary as Markdown (summary.md's text)."""
    return summary_markdown(_snapshot(prof), top)


# ----------------------------------------------------------------------------- the magic


@contextlib.contextmanager
def _formatting_unprofiled(formatter: Any) -> Iterator[None]:
    """Let IPython format the cell's last value with no dispatch mode active, so the aten ops
    of a tensor's repr are not recorded as the cell's."""
    from torch.utils._python_dispatch import _disable_current_modes

    def format_unprofiled(*args: Any, **kwargs: Any) -> Any:
        with _disable_current_modes():
            return original(*args, **kwargs)

    original = formatter.format
    formatter.format = format_unprofiled  # the instance attribute shadows the method
    try:
        yield
    finally:
        del formatter.format


def _parse(line: str) -> tuple[int, str | None]:
    """`--top N --out DIR`, or IPython's UsageError (a one-line message)."""
    import argparse

    from IPython.core.error import UsageError

    parser = argparse.ArgumentParser(prog="%%memprofile", add_help=False, exit_on_error=False)
    parser.add_argument("--top", type=int, default=DEFAULT_TOP)
    parser.add_argument("--out", default=None)
    try:
        args, unknown = parser.parse_known_args(shlex.split(line))
    except (argparse.ArgumentError, ValueError) as exc:
        raise UsageError(f"%%memprofile: {exc}") from None
    if unknown:
        raise UsageError(f"%%memprofile: unrecognized arguments: {' '.join(unknown)} "
                         "(usage: %%memprofile [--top N] [--out DIR])")
    if args.top < 1:
        raise UsageError(f"%%memprofile: --top must be at least 1, got {args.top}")
    return args.top, args.out


def memprofile(line: str, cell: str) -> None:
    """`%%memprofile [--top N] [--out DIR]`: run the cell under `profile()`, show the summary."""
    from IPython import get_ipython
    from IPython.display import HTML, display

    from profiling import profile

    top, out = _parse(line)
    shell = get_ipython()
    outer = shell.displayhook.exec_result  # the %%memprofile cell's own result
    with profile(command=f"%%memprofile {line}".strip()) as prof, \
            _formatting_unprofiled(shell.display_formatter):
        result = shell.run_cell(cell, store_history=False)
    if outer is not None:  # the cell fails as it would without the magic
        outer.error_before_exec = result.error_before_exec
        outer.error_in_exec = result.error_in_exec
    if result.error_before_exec is not None:  # e.g. a syntax error: nothing ran
        return
    shell.user_ns[NAMESPACE_NAME] = prof
    if out is not None:
        prof.save(Path(out))
    display(HTML(profile_html(prof, top)))


def load_ipython_extension(ipython: Any) -> None:
    """Register `%%memprofile` (`%load_ext profiling`)."""
    ipython.register_magic_function(memprofile, magic_kind="cell", magic_name="memprofile")
