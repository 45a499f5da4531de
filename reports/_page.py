"""Markdown pages with tables and plots, and the raw CSV beside them.

A study fills one `Page`: the answer first (one or two sentences built from the measured
numbers), then sections of text, tables and figures. `Page.write()` puts `<study>.md` in the
output folder and its CSV/PNG files in `<study>/`. Tables are formatted here rather than with
`DataFrame.to_markdown`, which needs the optional `tabulate` package.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

MIB = 2**20
PLOT_DPI = 90
Formatter = str | Callable[[object], str]


def mib(nbytes: float) -> float:
    return nbytes / MIB


def human_bytes(nbytes: float) -> str:
    """Bytes in the largest binary unit that keeps the number >= 1 (B, KiB, MiB, GiB)."""
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB"):
        if abs(value) < 1024:
            return f"{value:.0f} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.2f} GiB"


def ratio(a: float, b: float) -> float:
    """a / b, or nan when b is 0 (a ratio nobody should read)."""
    return a / b if b else math.nan


UNITS = {"B": (1, ".0f"), "KiB": (1024, ".1f"), "MiB": (MIB, ".3f")}


def bytes_table(frame: pd.DataFrame, unit: str | None = None
                ) -> tuple[pd.DataFrame, dict[str, str]]:
    """`frame` for display: each `*_bytes` column in `unit` (default: B, KiB or MiB, one unit
    per table, from the largest value), each `*_ms` column to 0.1 ms. Returns the frame and
    its formats."""
    byte_columns = [c for c in frame.columns if c.endswith("_bytes")]
    if unit is None:
        largest = max((frame[c].abs().max() for c in byte_columns), default=0)
        unit = "MiB" if largest >= MIB else "KiB" if largest >= 1024 else "B"
    scale, spec = UNITS[unit]
    shown = frame.copy()
    formats = {c: ".1f" for c in frame.columns if c.endswith("_ms")}
    names = {}
    for column in byte_columns:
        names[column] = f"{column[: -len('_bytes')]} ({unit})"
        shown[column] = shown[column] / scale
        formats[names[column]] = spec
    return shown.rename(columns=names), formats


def _cell(value: object, fmt: Formatter | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return ""
    if fmt is None:
        return str(value).replace("|", "\\|").replace("\n", " ")
    return fmt(value) if callable(fmt) else format(value, fmt)


def markdown_table(frame: pd.DataFrame, formats: Mapping[str, Formatter] | None = None,
                   headers: Mapping[str, str] | None = None) -> str:
    """A GitHub Markdown table; `formats` maps a column to a format spec or a function,
    `headers` renames columns for display. Numbers are right-aligned."""
    formats = formats or {}
    headers = headers or {}
    columns = list(frame.columns)
    head = "| " + " | ".join(headers.get(c, c) for c in columns) + " |"
    numeric = [pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])
               for c in columns]
    rule = "|" + "|".join("---:" if n else "---" for n in numeric) + "|"
    body = ["| " + " | ".join(_cell(v, formats.get(c)) for c, v in zip(columns, row,
                                                                          strict=True)) + " |"
            for row in frame.itertuples(index=False, name=None)]
    return "\n".join([head, rule, *body])


def axes(title: str, xlabel: str, ylabel: str, width: float = 6.4, height: float = 3.6):
    """A new figure and axes with the labels every report plot must have."""
    fig, ax = plt.subplots(figsize=(width, height), layout="constrained")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(True, alpha=0.3)
    return fig, ax


LINE_STYLES = [dict(marker="o", linestyle="-"), dict(marker="s", linestyle="--"),
               dict(marker="^", linestyle=":"), dict(marker="D", linestyle="-."),
               dict(marker="v", linestyle=(0, (5, 1, 1, 1)))]


def line_plot(frame: pd.DataFrame, x: str, series: Mapping[str, str], title: str,
              xlabel: str, ylabel: str, scale: float = 1.0, logx: bool = False):
    """One line per (label -> column) of `frame` against column `x`, each value times `scale`."""
    fig, ax = axes(title, xlabel, ylabel)
    for i, (label, column) in enumerate(series.items()):  # styles tell overlapping lines apart
        ax.plot(frame[x], frame[column] * scale, label=label, **LINE_STYLES[i % len(LINE_STYLES)])
    if logx:
        log2_ticks(ax, frame[x])
    ax.legend()
    return fig


def lines_by(frame: pd.DataFrame, x: str, by: str, y: str, title: str, xlabel: str,
             ylabel: str, scale: float = 1.0, logx: bool = False,
             labels: Mapping[str, str] | None = None):
    """One line per value of column `by`, `y` against `x`, from a long table (as the CSVs
    hold it); `labels` maps a value of `by` to its legend text."""
    wide = frame.pivot(index=x, columns=by, values=y).reset_index()
    labels = labels or {}
    series = {labels.get(v, v): v for v in dict.fromkeys(frame[by])}
    return line_plot(wide, x, series, title, xlabel, ylabel, scale, logx)


def log2_ticks(ax, values) -> None:
    """A base-2 log x axis labelled with the measured x values themselves."""
    ax.set_xscale("log", base=2)
    ticks = sorted(set(values))
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()


def bar_plot(labels: Sequence[str], groups: Mapping[str, Sequence[float]], title: str,
             ylabel: str, xlabel: str = "", reference: float | None = None):
    """Grouped bars: one group per label, one bar per (legend entry -> values); `reference`
    draws a dashed horizontal line (e.g. 1 for ratios)."""
    fig, ax = axes(title, xlabel, ylabel, width=max(6.4, 1.1 * len(labels) * len(groups) ** 0.5))
    width = 0.8 / max(len(groups), 1)
    for i, (name, values) in enumerate(groups.items()):
        positions = [j + (i - (len(groups) - 1) / 2) * width for j in range(len(labels))]
        ax.bar(positions, values, width=width, label=name)
    ax.set_xticks(range(len(labels)), labels, rotation=20 if len(labels) > 4 else 0,
                  ha="right" if len(labels) > 4 else "center")
    if reference is not None:
        ax.axhline(reference, color="gray", linestyle="--", linewidth=1)
    ax.legend()
    return fig


class Page:
    """One study's Markdown page and its folder of CSV and PNG files."""

    def __init__(self, study: str, title: str, out: Path) -> None:
        self.study = study
        self.title = title
        self.out = Path(out)
        self.folder = self.out / study
        self.answer = ""
        self.blocks: list[str] = []
        self.files: list[Path] = []
        self.folder.mkdir(parents=True, exist_ok=True)

    @property
    def path(self) -> Path:
        return self.out / f"{self.study}.md"

    def set_answer(self, text: str) -> None:
        """The page's opening: what a practitioner should do, with the measured numbers."""
        self.answer = text.strip()

    def section(self, heading: str, text: str = "") -> None:
        self.blocks.append(f"## {heading}")
        if text:
            self.text(text)

    def text(self, text: str) -> None:
        self.blocks.append(text.strip())

    def code(self, text: str, language: str = "") -> None:
        self.blocks.append(f"```{language}\n{text.rstrip()}\n```")

    def table(self, raw: pd.DataFrame, name: str, formats: Mapping[str, Formatter] | None = None,
              headers: Mapping[str, str] | None = None, unit: str | None = None) -> Path:
        """Write `raw` to `<study>/<name>.csv` and show it as a table, bytes in `unit`
        (`bytes_table`); `formats` adds to or overrides the formats of shown columns."""
        csv = self.folder / f"{name}.csv"
        raw.to_csv(csv, index=False)
        self.files.append(csv)
        frame, shown_formats = bytes_table(raw, unit)
        formats = shown_formats | dict(formats or {})
        link = f"{self.study}/{csv.name}"
        self.blocks.append(markdown_table(frame, formats, headers)
                           + f"\n\nRaw numbers: [`{link}`]({link})")
        return csv

    def csv(self, raw: pd.DataFrame, name: str, what: str) -> Path:
        """Write `raw` to `<study>/<name>.csv` with a link only (e.g. the data of a plot)."""
        csv = self.folder / f"{name}.csv"
        raw.to_csv(csv, index=False)
        self.files.append(csv)
        self.blocks.append(f"{what}: [`{self.study}/{csv.name}`]({self.study}/{csv.name})")
        return csv

    def figure(self, fig, name: str, caption: str) -> Path:
        """Save `fig` as `<study>/<name>.png` (and close it) and show it with `caption`."""
        png = self.folder / f"{name}.png"
        fig.savefig(png, dpi=PLOT_DPI)
        plt.close(fig)
        self.files.append(png)
        self.blocks.append(f"![{caption}]({self.study}/{png.name})")
        return png

    def write(self, footer: str = "") -> Path:
        if not self.answer:
            raise ValueError(f"page {self.study!r}: set_answer() before write()")
        parts = [f"# {self.title}", f"**Answer.** {self.answer}", *self.blocks]
        if footer:
            parts.append(footer.strip())
        self.path.write_text("\n\n".join(parts) + "\n", encoding="utf-8")
        return self.path
