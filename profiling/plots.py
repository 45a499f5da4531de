"""PNG plots of a profile: the memory "mountain" and saved bytes per operator and per module.

Figures are built with `matplotlib.figure.Figure` and rendered by Agg, never through pyplot, so
plotting needs no display and leaves the caller's matplotlib backend and state alone.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from profiling.tables import SAVED_NEW, SAVED_NEW_DEFINITION, format_bytes, module_totals, op_totals

MIB = 1024 * 1024
PHASE_COLORS = {"forward": "#4C72B0", "backward": "#DD8452", "optimizer": "#55A868"}
OTHER_PHASE_COLOR = "#999999"
MAX_BARS = 15


def _phase_runs(timeline: pd.DataFrame) -> list[tuple[str, float, float]]:
    """Consecutive stretches of one phase as (phase, first seq - 0.5, last seq + 0.5)."""
    runs: list[tuple[str, float, float]] = []
    for seq, phase in zip(timeline["seq"].tolist(), timeline["phase"].tolist(), strict=True):
        if runs and runs[-1][0] == phase:
            runs[-1] = (phase, runs[-1][1], seq + 0.5)
        else:
            runs.append((phase, seq - 0.5, seq + 0.5))
    return runs


def _empty(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def memory_figure(prof: Any) -> Figure:
    """Live memory after each recorded event, each phase shaded, the peak marked."""
    timeline, ops = prof.timeline, prof.ops
    fig = Figure(figsize=(10, 4.5), layout="constrained")
    ax = fig.add_subplot()
    ax.set_title("Memory over the operator sequence (forward rises, backward falls)")
    if timeline.empty:
        _empty(ax, "no operators recorded")
        return fig
    timeline = timeline.sort_values("seq", kind="stable")
    shaded: set[str] = set()
    for phase, start, stop in _phase_runs(timeline):
        label = None if phase in shaded else f"{phase} phase"
        shaded.add(phase)
        ax.axvspan(start, stop, color=PHASE_COLORS.get(phase, OTHER_PHASE_COLOR), alpha=0.12,
                   linewidth=0, label=label)
    ax.step(timeline["seq"], timeline["live_bytes"] / MIB, where="post", color="black",
            linewidth=1.5, label="live bytes after the event")
    if not ops.empty:
        ax.plot(ops["seq"], ops["peak_bytes"] / MIB, linestyle="none", marker=".",
                markersize=4, color="#C44E52", alpha=0.6, label="peak during the op")
        peak = ops.loc[ops["peak_bytes"].idxmax()]
        peak_bytes = int(peak["peak_bytes"])
    else:
        peak = timeline.loc[timeline["live_bytes"].idxmax()]
        peak_bytes = int(peak["live_bytes"])
    peak_seq, peak_op = int(peak["seq"]), f"{peak['op']}, phase {peak['phase']}"
    ax.plot([peak_seq], [peak_bytes / MIB], marker="v", markersize=10, color="#C44E52",
            linestyle="none", label="peak")
    ax.annotate(f"peak {format_bytes(peak_bytes)}\n#{peak_seq} {peak_op}",
                xy=(peak_seq, peak_bytes / MIB), xytext=(0, 14), textcoords="offset points",
                ha="center", va="bottom", fontsize=9)
    ax.set_ylim(bottom=0, top=max(peak_bytes / MIB, 1e-9) * 1.25)
    ax.set_xlabel("operator sequence number (seq)")
    ax.set_ylabel("allocated memory (MiB)")
    ax.legend(loc="upper left", fontsize=8)
    return fig


def _bar_unit(largest: float) -> tuple[str, float]:
    for unit, scale in (("GiB", 1024**3), ("MiB", MIB), ("KiB", 1024)):
        if largest >= scale:
            return unit, scale
    return "B", 1


def _saved_bars(totals: pd.DataFrame, labels: pd.Series, title: str, what: str) -> Figure:
    """Horizontal bars of saved and saved-new bytes, largest at the top."""
    totals = totals.assign(label=labels.values)
    totals = totals[totals["saved_bytes"] > 0]
    clipped = len(totals) > MAX_BARS
    totals = totals.head(MAX_BARS).iloc[::-1]
    fig = Figure(figsize=(9, max(2.5, 1.2 + 0.38 * len(totals))), layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(f"{title} (top {MAX_BARS})" if clipped else title)
    if totals.empty:
        _empty(ax, "no tensors saved for backward")
        return fig
    unit, scale = _bar_unit(float(totals["saved_bytes"].max()))
    rows = range(len(totals))
    ax.barh([r + 0.2 for r in rows], totals["saved_bytes"] / scale, height=0.4,
            color="#4C72B0", label="saved for backward")
    ax.barh([r - 0.2 for r in rows], totals["saved_new_bytes"] / scale, height=0.4,
            color="#55A868", label=SAVED_NEW)
    for row, nbytes in zip(rows, totals["saved_bytes"].tolist(), strict=True):
        ax.annotate(format_bytes(nbytes), xy=(nbytes / scale, row + 0.2), xytext=(3, 0),
                    textcoords="offset points", va="center", fontsize=8)
    ax.set_yticks(list(rows), totals["label"].tolist())
    ax.set_xlim(right=float(totals["saved_bytes"].max()) / scale * 1.2)
    ax.set_xlabel(f"bytes saved for backward ({unit})")
    ax.set_ylabel(what)
    ax.legend(loc="lower right", fontsize=8)
    fig.supxlabel(textwrap.fill(SAVED_NEW_DEFINITION, 130), fontsize=7, color="#555555")
    return fig


def saved_by_op_figure(prof: Any) -> Figure:
    """Saved bytes per operator name (summed over calls and phases)."""
    totals = op_totals(prof.ops)
    per_op = totals.groupby("op", sort=False)[["saved_bytes", "saved_new_bytes"]].sum()
    per_op = per_op.reset_index().sort_values(["saved_bytes", "op"], ascending=[False, True])
    return _saved_bars(per_op, per_op["op"], "Saved bytes by operator", "operator")


def saved_by_module_figure(prof: Any) -> Figure:
    """Saved bytes per nn.Module path; ops outside any module under "(no module)"."""
    totals = module_totals(prof.ops)
    labels = totals["module"].astype(str).replace("", "(no module)")
    return _saved_bars(totals, labels, "Saved bytes by module (self: its own operators)",
                       "nn.Module")


PLOTS = {
    "memory": memory_figure,
    "saved_by_op": saved_by_op_figure,
    "saved_by_module": saved_by_module_figure,
}


def save_plots(prof: Any, folder: str | Path, dpi: int = 100) -> dict[str, Path]:
    """Render every plot in `PLOTS` to `folder/<name>.png`; returns name -> path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, make_figure in PLOTS.items():
        path = folder / f"{name}.png"
        make_figure(prof).savefig(path, dpi=dpi)
        paths[name] = path
    return paths
