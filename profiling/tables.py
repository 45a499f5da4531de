"""Tables derived from a profile's own: totals per op, per module, saved tensors by fate.

Every writer (CSV/JSON in `export`, Chrome trace in `trace`, Markdown/HTML/text in `html`, PNG
in `plots`, diffs in `compare`) reads its numbers from here, so each figure is computed once.
Functions take the DataFrames (`prof.ops`, `prof.lifetimes`), so live and loaded profiles alike.
Also the two value helpers every writer shares: `format_bytes` (for people), `json_value` (JSON).
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

# The columns of a profile's own tables (`prof.ops`, `prof.lifetimes`, `prof.timeline`, ...):
# the profiler builds them with these, the CSV/JSON files keep them.
OPS_COLUMNS = [
    "seq", "op", "phase", "module", "input_shapes", "dtype", "device", "output_bytes",
    "saved_bytes", "saved_new_bytes", "live_bytes", "peak_bytes", "time_ms", "compiled",
]
LIFETIMES_COLUMNS = [
    "storage_id", "nbytes", "saved_by", "saved_seq", "module", "freed_seq", "freed_by",
    "freed_phase",
]
TIMELINE_COLUMNS = ["seq", "t_ms", "phase", "op", "live_bytes"]
NODES_COLUMNS = ["node_id", "name", "module", "saved_bytes", "saved_new_bytes", "alive"]
EDGES_COLUMNS = ["src", "dst"]
LEAKS_COLUMNS = ["root", "held_bytes", "shared_bytes", "holder", "name", "line", "message"]

# What `saved_new_bytes` counts: the one wording every output (docstring, pages, plots) shows.
SAVED_NEW = "saved new"
SAVED_NEW_DEFINITION = (
    "'saved new' is the part of the saved bytes in storages that an operator allocated inside "
    "the profiled block, leaves requiring grad excepted: the memory the graph adds. Parameters, "
    "tensors made before the block and views of them are saved, not saved new."
)

# Per-op / per-module aggregates: how each column of `prof.ops` combines over calls.
_AGGREGATES = {
    "calls": ("seq", "count"),
    "output_bytes": ("output_bytes", "sum"),
    "saved_bytes": ("saved_bytes", "sum"),
    "saved_new_bytes": ("saved_new_bytes", "sum"),
    "peak_bytes": ("peak_bytes", "max"),
    "time_ms": ("time_ms", "sum"),
}


def format_bytes(nbytes: float) -> str:
    """Bytes in the largest binary unit that keeps the number >= 1 ("96 B", "1.50 KiB")."""
    if nbytes is None or (isinstance(nbytes, float) and math.isnan(nbytes)):
        return ""
    value, sign = abs(float(nbytes)), "-" if nbytes < 0 else ""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{sign}{int(value)} B" if unit == "B" else f"{sign}{value:.2f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def json_value(value: Any) -> Any:
    """A JSON-safe Python value: numpy scalars unwrapped, NaN/NA/inf as null."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _grouped_totals(ops: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    if ops.empty:
        return pd.DataFrame(columns=[*keys, *_AGGREGATES]).astype(
            {"calls": "int64", "time_ms": "float64"}
        )
    totals = ops.groupby(keys, sort=False, dropna=False).agg(**_AGGREGATES).reset_index()
    return totals.sort_values(
        ["saved_bytes", "peak_bytes", *keys], ascending=[False, False] + [True] * len(keys),
        kind="stable",
    ).reset_index(drop=True)


def op_totals(ops: pd.DataFrame) -> pd.DataFrame:
    """One row per (op, phase): calls, summed bytes and time, the highest peak; most saved first."""
    return _grouped_totals(ops, ["op", "phase"])


def module_totals(ops: pd.DataFrame) -> pd.DataFrame:
    """One row per nn.Module path ("" = outside any module), aggregated like `op_totals`."""
    return _grouped_totals(ops, ["module"])


MODULE_FIGURES = {  # column of `prof.ops` -> how it combines over a module's op rows
    "output_bytes": "sum", "saved_bytes": "sum", "saved_new_bytes": "sum", "peak_bytes": "max",
    "time_ms": "sum",
}
MODULE_COLUMNS = ["module", "self_ops", "inclusive_ops"] + [
    f"{kind}_{name}" for name in MODULE_FIGURES for kind in ("self", "inclusive")]


def module_prefixes(path: str) -> list[str]:
    """`path` and the module paths above it: "Net.blocks.0" -> ["Net", "Net.blocks", ...]."""
    parts = path.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)] if path else [""]


def module_table(ops: pd.DataFrame) -> pd.DataFrame:
    """One row per module path, with self and inclusive figures (cProfile's tottime/cumtime).

    `self_*` aggregates the op rows whose `module` is the path itself; `inclusive_*` those of
    the path and every path under it ("Net" includes "Net.blocks.0.proj"), so a root module's
    inclusive row is the whole model. Bytes and time are summed, peaks are the highest. Paths
    above a module that ran ops (a ModuleList never called) get a row with zero self figures.
    "" (ops outside any module) has its own row and is under no root. Rows in call order, each
    module before the modules under it.
    """
    if ops.empty:
        return pd.DataFrame(columns=MODULE_COLUMNS).astype(
            {c: "float64" if c.endswith("time_ms") else "int64" for c in MODULE_COLUMNS[1:]})
    own = ops.groupby("module", sort=False).agg(
        ops=("seq", "count"), first_seq=("seq", "min"),
        **{name: (name, how) for name, how in MODULE_FIGURES.items()})
    paths = list(dict.fromkeys(p for module in own.index for p in module_prefixes(module)))
    rows, first_seq = [], {}
    for path in paths:
        under = own[(own.index == path) | own.index.str.startswith(path + ".")] if path \
            else own.loc[[""]]
        first_seq[path] = int(under["first_seq"].min())
        mine = own.loc[path] if path in own.index else None
        row = {"module": path, "self_ops": 0 if mine is None else int(mine["ops"]),
               "inclusive_ops": int(under["ops"].sum())}
        for name, how in MODULE_FIGURES.items():
            row[f"self_{name}"] = 0 if mine is None else mine[name]
            row[f"inclusive_{name}"] = under[name].agg(how)
        rows.append(row)
    table = pd.DataFrame(rows, columns=MODULE_COLUMNS)
    order = sorted(range(len(paths)), key=lambda i: (
        paths[i] == "", [first_seq[p] for p in module_prefixes(paths[i])], paths[i]))
    table = table.iloc[order].reset_index(drop=True)
    return table.astype({c: "float64" if c.endswith("time_ms") else "int64"
                         for c in MODULE_COLUMNS[1:]})


def inclusive_module_totals(ops: pd.DataFrame) -> pd.DataFrame:
    """`module_table`'s inclusive figures under the op totals' names (calls = operator rows)."""
    table = module_table(ops)
    return pd.DataFrame({"module": table["module"], "calls": table["inclusive_ops"],
                         **{name: table[f"inclusive_{name}"] for name in MODULE_FIGURES}})


def top_ops(ops: pd.DataFrame, n: int, by: str = "saved_bytes") -> pd.DataFrame:
    """The `n` (op, phase) rows of `op_totals` with the most `by` (> 0), ties by op name."""
    totals = op_totals(ops)
    totals = totals[totals[by] > 0]
    order = totals.sort_values([by, "op"], ascending=[False, True], kind="stable")
    return order.head(n).reset_index(drop=True)


def lifetime_summary(lifetimes: pd.DataFrame) -> pd.DataFrame:
    """Saved tensor storages by fate: freed during backward, freed after it, or still alive."""
    fates = {"backward": "freed during backward", "after": "freed after backward"}
    fate = lifetimes["freed_phase"].map(fates).fillna("still alive")
    fate = fate.where(lifetimes["freed_phase"].astype(str) != "", "still alive")
    rows = []
    for label in (*fates.values(), "still alive"):
        chosen = lifetimes.loc[fate == label, "nbytes"]
        rows.append({"fate": label, "tensors": int(chosen.size), "bytes": int(chosen.sum())})
    return pd.DataFrame(rows)


def freed_by_node(lifetimes: pd.DataFrame) -> pd.DataFrame:
    """Bytes of saved tensors freed during/after each backward node, most bytes first."""
    freed = lifetimes[lifetimes["freed_by"].astype(str) != ""]
    if freed.empty:
        return pd.DataFrame({"freed_by": [], "tensors": [], "bytes": []}).astype(
            {"tensors": "int64", "bytes": "int64"}
        )
    table = freed.groupby("freed_by", sort=False).agg(
        tensors=("nbytes", "size"), bytes=("nbytes", "sum"), first_seq=("freed_seq", "min")
    )
    table = table.reset_index().sort_values(["bytes", "first_seq"], ascending=[False, True])
    return table.drop(columns="first_seq").reset_index(drop=True)
