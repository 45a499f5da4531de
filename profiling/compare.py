"""Diff two profiles: what a change (detach, checkpointing, retain_graph) bought, op by op.

Both sides are aggregated the same way as the summary (`op_totals`, and `module_table`'s
inclusive figures: a module with the modules under it, so a root module's row is the model's
change; bytes and time summed over calls, peak the highest of any call), then joined; a row
present on one side only counts as zero calls and zero bytes on the other. `delta` is b - a
and `ratio` is b / a (NaN where a is 0, because "how many times more than nothing" has no
answer).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from profiling.html import Section, display_header, markdown_table
from profiling.tables import format_bytes, inclusive_module_totals, op_totals

METRICS = ("calls", "saved_bytes", "saved_new_bytes", "peak_bytes", "time_ms")
RATIO_METRICS = ("saved_bytes", "saved_new_bytes", "peak_bytes", "time_ms")


@dataclass(frozen=True)
class ProfileComparison:
    """Per-op, per-module and whole-profile differences between profiles `a` and `b`."""

    ops: pd.DataFrame
    modules: pd.DataFrame
    totals: pd.DataFrame


def _ratio(b: pd.Series, a: pd.Series) -> pd.Series:
    a = a.astype("float64")
    return (b.astype("float64") / a).where(a != 0)


def _diff(a: pd.DataFrame, b: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    joined = a[[*keys, *METRICS]].merge(
        b[[*keys, *METRICS]], on=keys, how="outer", suffixes=("_a", "_b"), sort=False
    )
    columns = list(keys)
    for metric in METRICS:
        left, right = f"{metric}_a", f"{metric}_b"
        kind = "float64" if metric == "time_ms" else "int64"
        joined[left] = joined[left].fillna(0).astype(kind)
        joined[right] = joined[right].fillna(0).astype(kind)
        joined[f"{metric}_delta"] = joined[right] - joined[left]
        columns += [left, right, f"{metric}_delta"]
        if metric in RATIO_METRICS:
            joined[f"{metric}_ratio"] = _ratio(joined[right], joined[left])
            columns.append(f"{metric}_ratio")
    joined = joined[columns]
    order = joined.assign(
        _saved=joined["saved_bytes_delta"].abs(), _peak=joined["peak_bytes_delta"].abs()
    ).sort_values(["_saved", "_peak", *keys], ascending=[False, False] + [True] * len(keys),
                  kind="stable")
    return order.drop(columns=["_saved", "_peak"]).reset_index(drop=True)


def _totals(prof: Any) -> dict[str, float]:
    ops = prof.ops
    peak = int(ops["peak_bytes"].max()) if len(ops) else 0
    return {
        "operators": len(ops),
        "saved_bytes": int(ops["saved_bytes"].sum()),
        "saved_new_bytes": int(ops["saved_new_bytes"].sum()),
        "peak_bytes": int(prof.meta.get("peak_bytes") or peak),
        "held_bytes": int(prof.held_bytes),
        "time_ms": float(ops["time_ms"].sum()),
    }


def compare_profiles(a: Any, b: Any) -> ProfileComparison:
    """Compare profile `a` (before) with `b` (after): live `Profile`s or `load_profile` results.

    `ops` has one row per (op, phase), `modules` one per module path (inclusive), each with
    `<metric>_a`, `<metric>_b`, `<metric>_delta` and (bytes, time) `<metric>_ratio` columns for
    calls, saved_bytes, saved_new_bytes, peak_bytes and time_ms, largest saved change first.
    `totals` has one row per whole-profile metric: [metric, a, b, delta, ratio].
    """
    ops_a, ops_b = a.ops, b.ops
    ops = _diff(op_totals(ops_a), op_totals(ops_b), ["op", "phase"])
    modules = _diff(inclusive_module_totals(ops_a), inclusive_module_totals(ops_b), ["module"])
    total_a, total_b = _totals(a), _totals(b)
    totals = pd.DataFrame({
        "metric": list(total_a),
        "a": [float(v) for v in total_a.values()],
        "b": [float(v) for v in total_b.values()],
    })
    totals["delta"] = totals["b"] - totals["a"]
    totals["ratio"] = _ratio(totals["b"], totals["a"])
    return ProfileComparison(ops=ops, modules=modules, totals=totals)


# ----------------------------------------------------------------------------- rendering

SHOWN_METRICS = ("saved_bytes", "peak_bytes", "time_ms")


def _shown_columns(keys: list[str]) -> list[str]:
    columns = list(keys)
    for metric in SHOWN_METRICS:
        columns += [f"{metric}_a", f"{metric}_b", f"{metric}_delta"]
    return columns


def totals_for_display(totals: pd.DataFrame) -> pd.DataFrame:
    """The totals table as text: bytes metrics in binary units, times in ms."""
    rows = []
    for row in totals.itertuples(index=False):
        if "bytes" in row.metric:
            a, b, delta = (format_bytes(v) for v in (row.a, row.b, row.delta))
        elif row.metric == "time_ms":
            a, b, delta = (f"{v:.3f}" for v in (row.a, row.b, row.delta))
        else:
            a, b, delta = (f"{v:g}" for v in (row.a, row.b, row.delta))
        ratio = "" if pd.isna(row.ratio) else f"{row.ratio:.3f}"
        rows.append({"metric": display_header(row.metric), "A": a, "B": b, "B - A": delta,
                     "B / A": ratio})
    return pd.DataFrame(rows)


def comparison_sections(comparison: ProfileComparison, top: int | None) -> list[Section]:
    """The totals, then the `top` (None: all) largest per-op and per-module changes."""
    ops, modules = comparison.ops, comparison.modules
    which = "Largest"
    if top is not None:
        ops, modules, which = ops.head(top), modules.head(top), f"Top {top}"
    return [
        Section("totals", "Totals (B - A)", comparison.totals,
                totals_for_display(comparison.totals), in_csv=False),
        Section("ops", f"{which} operator changes (by saved, then peak bytes)", ops,
                ops[_shown_columns(["op", "phase"])]),
        Section("modules", f"{which} module changes, each module with the modules under it "
                "(by saved, then peak bytes)", modules,
                modules[_shown_columns(["module"])]),
    ]


def save_comparison(comparison: ProfileComparison, folder: str | Path,
                    names: tuple[str, str] = ("A", "B")) -> Path:
    """Write compare_ops.csv, compare_modules.csv, compare_totals.csv and compare.md."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("ops", "modules", "totals"):
        getattr(comparison, name).to_csv(folder / f"compare_{name}.csv", index=False)
    lines = [f"# Profile comparison\n\nA = `{names[0]}`, B = `{names[1]}`; delta = B - A, "
             "ratio = B / A (empty where A is 0).\n"]
    for section in comparison_sections(comparison, top=None):
        table = section.frame if section.shown is None else section.shown
        lines.append(f"## {section.title}\n\n{markdown_table(table)}")
    (folder / "compare.md").write_text("\n".join(lines), encoding="utf-8")
    return folder
