"""One figure per op: achieved GB/s vs size, a panel per (dtype, mode), providers as lines.

The copy bandwidth measured in the same run is drawn as a horizontal line: the ceiling every
memory-bound op is held against.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on the benchmark machines

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from benchmarks._harness import CPU_DEVICE_LABEL  # noqa: E402
from benchmarks._providers import MODES, PROVIDER_TITLES  # noqa: E402

PROVIDER_STYLE = {"torchext": "C0", "eager": "C1", "compile": "C2"}


def plot_op(df: pd.DataFrame, op: str, path: Path) -> Path:
    rows = df[df.op == op]
    dtypes = list(dict.fromkeys(rows.dtype))
    modes = [m for m in MODES if (rows["mode"] == m).any()]
    copy_gbps = df[df.op == "copy"].gbps.median()
    matvec = rows.family.eq("matvec").any()
    x_label = "shape of X (m×k), by size" if matvec else "elements (n)"
    by_size = rows.drop_duplicates("shape").sort_values(["numel", "shape"])
    shapes = list(by_size["shape"])
    shape_position = {shape: i for i, shape in enumerate(shapes)}.get
    fig, axes = plt.subplots(len(dtypes), len(modes), squeeze=False, sharex=not matvec,
                             figsize=(4.2 * len(modes), 3.2 * len(dtypes)))  # fmt: skip
    legend = {}
    for i, dtype in enumerate(dtypes):
        for j, mode in enumerate(modes):
            ax = axes[i][j]
            cell = rows[(rows.dtype == dtype) & (rows["mode"] == mode)]
            for provider, group in cell.groupby("provider", sort=False):
                x = group["shape"].map(shape_position) if matvec else group.numel
                group = group.assign(x=x).sort_values("x")
                (line,) = ax.plot(group.x, group.gbps, marker="o", markersize=3,
                                  color=PROVIDER_STYLE.get(provider))  # fmt: skip
                legend.setdefault(PROVIDER_TITLES.get(provider, provider), line)
            if pd.notna(copy_gbps):
                line = ax.axhline(copy_gbps, color="black", linestyle="--", linewidth=1)
                legend.setdefault(f"copy bandwidth ({copy_gbps:.4g} GB/s)", line)
            if matvec:  # shapes of equal numel (65536x1024, 8192x8192) get their own tick
                ax.set_xticks(range(len(shapes)), shapes, rotation=45, fontsize=7)
            else:
                ax.set_xscale("log", base=2)
            ax.set_ylim(bottom=0)
            ax.set_title(f"{mode}, {dtype}", fontsize=10)
            ax.grid(True, which="major", alpha=0.3)
            if i == len(dtypes) - 1:
                ax.set_xlabel(x_label)
            if j == 0:
                ax.set_ylabel("achieved bandwidth (GB/s)")
    device = ", ".join(rows.device_name.unique())
    title = f"{op}: achieved bandwidth vs size on {device}"
    if rows.device.eq(CPU_DEVICE_LABEL).any():
        title += f"\n{CPU_DEVICE_LABEL}: smoke run, not performance figures"
    fig.suptitle(title)
    fig.legend(legend.values(), legend.keys(), loc="lower center", ncol=len(legend))
    # Fixed margins in inches: as readable as tight_layout, at half the cost per figure.
    width, height = fig.get_size_inches()
    fig.subplots_adjust(left=0.75 / width, right=1 - 0.2 / width, bottom=1.25 / height,
                        top=1 - 0.85 / height, wspace=0.25, hspace=0.55)  # fmt: skip
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
