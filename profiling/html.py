"""A profile for people: tables as Markdown, HTML, aligned text or rich; summary.md; report.html;
and what the CLI prints on stdout (`emit`: also csv and json for machines).

summary.md and report.html show the same sections (top operators by saved and by peak bytes,
per-module self and inclusive totals, held bytes, leaks, saved-tensor lifetimes). The HTML page
inlines its CSS and embeds the PNG plots as base64, so the one file can be mailed or attached
anywhere; no JavaScript.
"""

from __future__ import annotations

import base64
import html
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from profiling.tables import (
    SAVED_NEW,
    SAVED_NEW_DEFINITION,
    format_bytes,
    freed_by_node,
    json_value,
    lifetime_summary,
    module_table,
    top_ops,
)

TABLE_COLUMNS = ["op", "phase", "calls", "saved_bytes", "saved_new_bytes", "peak_bytes",
                 "time_ms"]
LEAK_TABLE_COLUMNS = ["root", "held_bytes", "shared_bytes", "holder", "message"]
MODULE_TABLE_COLUMNS = ["module", "self_ops", "self_saved_bytes", "inclusive_saved_bytes",
                        "self_saved_new_bytes", "inclusive_saved_new_bytes",
                        "inclusive_peak_bytes", "self_time_ms", "inclusive_time_ms"]
# Column names shown to people: longest first, so "saved_new_bytes" wins over "saved_bytes".
HEADERS = (
    ("saved_new_bytes", SAVED_NEW), ("saved_bytes", "saved"), ("peak_bytes", "peak"),
    ("output_bytes", "output"), ("held_bytes", "held"), ("shared_bytes", "shared"),
    ("live_bytes", "live"), ("time_ms", "time (ms)"),
)


def display_header(column: str) -> str:
    for name, shown in HEADERS:
        column = column.replace(name, shown)
    return column.replace("_", " ")


def display_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Strings for people: byte columns as "1.50 KiB", times to µs, "" module as "(no module)"."""
    shown = frame.copy()
    for column in shown.columns:
        name, values = str(column), shown[column].tolist()
        if name.endswith("_ratio"):
            shown[column] = ["" if pd.isna(v) else f"{v:.3f}" for v in values]
        elif "bytes" in name:
            shown[column] = [format_bytes(v) for v in values]
        elif "time_ms" in name:
            shown[column] = ["" if pd.isna(v) else f"{v:.3f}" for v in values]
        elif name == "module":
            shown[column] = ["(no module)" if v == "" else str(v) for v in values]
    return shown.rename(columns=lambda c: display_header(str(c)))


def _is_numeric(column: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub Markdown table of `frame` (shown with `display_frame`), numbers right-aligned."""
    if frame.empty:
        return "_(none)_\n"
    numeric = [_is_numeric(frame[c]) for c in frame.columns]
    shown = display_frame(frame)
    cells = [[str(v).replace("|", "\\|") for v in row] for row in shown.itertuples(index=False)]
    header = "| " + " | ".join(str(c) for c in shown.columns) + " |"
    rule = "|" + "|".join("---:" if right else ":---" for right in numeric) + "|"
    body = ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join([header, rule, *body]) + "\n"


def overview(prof: Any) -> dict[str, str]:
    """The headline numbers of a profile, as label -> text."""
    ops, meta = prof.ops, dict(prof.meta)
    device = str(meta.get("device", ""))
    if meta.get("device_name") and meta.get("device_name") != device:
        device += f" ({meta['device_name']})"
    peak = int(ops["peak_bytes"].max()) if not ops.empty else 0
    rows = {
        "command": str(meta.get("command") or ""),
        "device": device,
        "started at": str(meta.get("started_at") or ""),
        "wall time": f"{float(meta.get('wall_ms') or 0.0):.1f} ms",
        "operators recorded": str(len(ops)),
        "peak memory": format_bytes(int(meta.get("peak_bytes") or peak)),
        "memory of other threads": str(meta.get("other_threads") or ""),
        "torch.compile": str(meta.get("compile") or ""),
        **({"the block raised": f"{meta['error']} (a partial profile: up to the error)"}
           if meta.get("error") else {}),
        "saved for backward": format_bytes(int(ops["saved_bytes"].sum()) if len(ops) else 0),
        SAVED_NEW: format_bytes(int(ops["saved_new_bytes"].sum()) if len(ops) else 0),
        "held by live graphs after the block": format_bytes(int(prof.held_bytes)),
        "versions": ", ".join(
            f"{name} {meta[key]}"
            for name, key in (("torch", "torch_version"), ("triton", "triton_version"),
                              ("python", "python"))
            if meta.get(key)
        ),
    }
    return {label: text for label, text in rows.items() if text}


MODULES_EXPLANATION = (
    "Operators grouped by the nn.Module that ran them. Self: the operators a module ran itself; "
    "inclusive: with those of every module under it (like cProfile's tottime and cumtime), so a "
    "root module's inclusive row is the whole model. Peaks are the highest of any call. "
    "'(no module)' is what ran outside every module.")


def sections(prof: Any, top: int) -> list[tuple[str, str, pd.DataFrame]]:
    """(title, explanation, table) for each section of the summary, in order."""
    ops, lifetimes, leaks = prof.ops, prof.lifetimes, prof.leaks()
    held = format_bytes(int(prof.held_bytes))
    return [
        (f"Top {top} operators by saved bytes",
         "Bytes of tensors each operator saved for backward, summed over its calls. "
         + SAVED_NEW_DEFINITION,
         top_ops(ops, top, "saved_bytes")[TABLE_COLUMNS]),
        (f"Top {top} operators by peak bytes",
         "The highest allocated memory during any call of the operator.",
         top_ops(ops, top, "peak_bytes")[TABLE_COLUMNS]),
        ("Modules: self and inclusive", MODULES_EXPLANATION,
         module_table(ops)[MODULE_TABLE_COLUMNS]),
        ("Leaks: autograd graphs alive after the block",
         f"The live autograd graphs hold {held} after the profiled block. Each row is a graph "
         "still alive: the bytes only it holds (the rows add up to the held bytes), the bytes "
         "it shares with an earlier row (counted there), what holds it and, when the graph "
         "spans several forward calls of a module, why and the fix.",
         leaks[[c for c in LEAK_TABLE_COLUMNS if c in leaks.columns]]),
        ("Saved tensor lifetimes",
         "When each saved tensor storage was freed: during backward (node by node), after it, "
         "or not at all.", lifetime_summary(lifetimes)),
        (f"Saved bytes freed by backward node (top {top})",
         "The backward node during or after which saved tensors were freed: this explains the "
         "falling half of the memory curve.", freed_by_node(lifetimes).head(top)),
    ]


def summary_markdown(prof: Any, top: int = 10) -> str:
    """The profile summary as Markdown (summary.md)."""
    lines = ["# Autograd memory profile", ""]
    lines += [f"- **{label}**: {text}" for label, text in overview(prof).items()]
    for title, explanation, table in sections(prof, top):
        lines += ["", f"## {title}", "", explanation, "", markdown_table(table).rstrip("\n")]
    return "\n".join(lines) + "\n"


CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 70em; color: #222;
       padding: 0 1em; line-height: 1.4; }
h1 { font-size: 1.6em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .5em 0; font-size: .9em; }
th, td { padding: .25em .7em; border-bottom: 1px solid #eee; text-align: left; }
th { background: #f4f4f4; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
dl.overview { display: grid; grid-template-columns: max-content auto; gap: .2em 1em; }
dl.overview dt { font-weight: 600; } dl.overview dd { margin: 0; }
img { max-width: 100%; border: 1px solid #eee; } p.note { color: #555; }
pre { background: #f7f7f7; padding: .7em; overflow: auto; max-height: 30em; }
"""


def html_table(frame: pd.DataFrame) -> str:
    """An escaped HTML table of `frame` (shown with `display_frame`), numbers right-aligned."""
    if frame.empty:
        return '<p class="note">(none)</p>'
    numeric = [_is_numeric(frame[c]) for c in frame.columns]
    shown = display_frame(frame)
    klass = [' class="num"' if right else "" for right in numeric]
    head = "".join(f"<th{k}>{html.escape(str(c))}</th>" for c, k in zip(shown.columns, klass,
                                                                         strict=True))
    body = "".join(
        "<tr>" + "".join(f"<td{k}>{html.escape(str(v))}</td>" for v, k in zip(row, klass,
                                                                             strict=True))
        + "</tr>"
        for row in shown.itertuples(index=False)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def embedded_image(path: Path, alt: str) -> str:
    mime = "image/svg+xml" if path.suffix == ".svg" else "image/png"
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:{mime};base64,{data}">'


MAX_DOT_CHARS = 200_000


def report_html(prof: Any, folder: str | Path, images: dict[str, Path], top: int = 10) -> str:
    """The self-contained HTML report (report.html) for a profile saved in `folder`."""
    folder = Path(folder)
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        "<title>Autograd memory profile</title>", f"<style>{CSS}</style></head><body>",
        "<h1>Autograd memory profile</h1>", '<dl class="overview">',
        *(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in overview(prof).items()),
        "</dl>",
    ]
    if "memory" in images:
        parts += ["<h2>Memory over the operator sequence</h2>",
                  embedded_image(images["memory"], "memory over the operator sequence")]
    for index, (title, explanation, table) in enumerate(sections(prof, top)):
        parts += [f"<h2>{html.escape(title)}</h2>", f'<p class="note">{html.escape(explanation)}'
                  "</p>", html_table(table)]
        if index == 0 and "saved_by_op" in images:
            parts.append(embedded_image(images["saved_by_op"], "saved bytes by operator"))
        if index == 2 and "saved_by_module" in images:
            parts.append(embedded_image(images["saved_by_module"], "saved bytes by module"))
    parts.append("<h2>Autograd graph</h2>")
    svg = folder / "graph.svg"
    if svg.is_file():
        parts.append(embedded_image(svg, "autograd graph with saved bytes per node"))
    dot = prof.graph.to_dot()
    clipped = dot[:MAX_DOT_CHARS] + ("\n…(clipped; see graph.dot)" if len(dot) > MAX_DOT_CHARS
                                     else "")
    parts += ['<p class="note">Graphviz DOT text (render with <code>dot -Tsvg graph.dot</code>); '
              "saved bytes per node are in the labels.</p>",
              f"<details><summary>graph.dot</summary><pre>{html.escape(clipped)}</pre></details>",
              '<p class="note">Full tables: ops.csv, lifetimes.csv, timeline.csv, leaks.csv; '
              "Chrome trace for Perfetto: trace.json.</p>", "</body></html>"]
    return "\n".join(parts) + "\n"


def plain_table(frame: pd.DataFrame, title: str = "") -> str:
    """An aligned text table of `frame` (shown with `display_frame`), numbers right-aligned."""
    lines = [title] if title else []
    if frame.empty:
        return "\n".join([*lines, "  (none)"]) + "\n"
    numeric = [_is_numeric(frame[c]) for c in frame.columns]
    shown = display_frame(frame)
    header = [str(c) for c in shown.columns]
    rows = [[str(v) for v in row] for row in shown.itertuples(index=False)]
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if right else c.ljust(w)
                         for c, w, right in zip(cells, widths, numeric, strict=True)).rstrip()

    lines += [line(header), "  ".join("-" * w for w in widths)]
    lines += [line(row) for row in rows]
    return "\n".join(lines) + "\n"


def rich_table(frame: pd.DataFrame, title: str = "") -> Any:
    """The same table as a `rich.table.Table`, for a terminal."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text(title) if title else None, title_justify="left")
    shown = display_frame(frame)
    for column, shown_name in zip(frame.columns, shown.columns, strict=True):
        table.add_column(Text(str(shown_name)),
                         justify="right" if _is_numeric(frame[column]) else "left")
    for row in shown.itertuples(index=False):
        table.add_row(*(Text(str(v)) for v in row))  # Text: a "[x]" in a name is not markup
    return table


@dataclass
class Section:
    """One printed table: `key` names it in csv/json, `shown` is what people see (default all)."""

    key: str
    title: str
    frame: pd.DataFrame
    shown: pd.DataFrame | None = None
    in_csv: bool = True  # csv stacks sections into one table: leave out ones that do not fit


def _records(frame: pd.DataFrame) -> list[dict]:
    return [{str(k): json_value(v) for k, v in zip(frame.columns, row, strict=True)}
            for row in frame.itertuples(index=False, name=None)]


def emit(sections: list[Section], fmt: str | None, header: dict[str, str],
         extra: dict[str, Any]) -> None:
    """Print `sections` on stdout as an aligned table (rich on a terminal), md, csv or json.

    csv is one table: the sections stacked, a `table` column naming each row's section. json is
    one object: `extra` plus a list of records per section."""
    out = sys.stdout
    if fmt == "json":
        payload = {**extra, **{sec.key: _records(sec.frame) for sec in sections}}
        out.write(json.dumps(payload, indent=2, default=str) + "\n")
    elif fmt == "csv":
        frames = [sec.frame.assign(table=sec.key) for sec in sections if sec.in_csv]
        stacked = pd.concat([f[["table", *f.columns[:-1]]] for f in frames], ignore_index=True)
        stacked.to_csv(out, index=False, lineterminator="\n")
    elif fmt == "md":
        out.write("".join(f"- **{k}**: {v}\n" for k, v in header.items()))
        for sec in sections:
            out.write(f"\n## {sec.title}\n\n")
            out.write(markdown_table(sec.frame if sec.shown is None else sec.shown))
    elif out.isatty():
        from rich.console import Console
        from rich.markup import escape

        console = Console(file=out)
        for key, value in header.items():
            console.print(f"[bold]{escape(key)}[/bold]: {escape(value)}")
        for sec in sections:
            console.print(rich_table(sec.frame if sec.shown is None else sec.shown,
                                          sec.title))
    else:
        out.write("".join(f"{k}: {v}\n" for k, v in header.items()))
        for sec in sections:
            table = sec.frame if sec.shown is None else sec.shown
            out.write("\n" + plain_table(table, sec.title))
    out.flush()


HEADLINES = ("operators recorded", "peak memory", "saved for backward", SAVED_NEW,
             "held by live graphs after the block")


def emit_profile(prof: Any, fmt: str | None, top: int, saved: Path) -> None:
    """Top operators by saved and by peak bytes, with the headline numbers."""
    ops, leaks = prof.ops, prof.leaks()
    sections = [Section("top_by_saved", f"Top {top} operators by saved bytes",
                        top_ops(ops, top, "saved_bytes")[TABLE_COLUMNS]),
                Section("top_by_peak", f"Top {top} operators by peak bytes",
                        top_ops(ops, top, "peak_bytes")[TABLE_COLUMNS])]
    if len(leaks):
        sections.append(Section("leaks", "Autograd graphs alive after the run", leaks,
                                leaks[[c for c in LEAK_TABLE_COLUMNS if c in leaks.columns]]))
    numbers = overview(prof)
    header = {k: numbers[k] for k in HEADLINES if k in numbers}
    extra = {"out": str(saved), "meta": {k: json_value(v) for k, v in prof.meta.items()},
             "operators": len(ops), "saved_bytes": int(ops["saved_bytes"].sum()),
             "saved_new_bytes": int(ops["saved_new_bytes"].sum()),
             "held_bytes": int(prof.held_bytes)}
    emit(sections, fmt, header, extra)
