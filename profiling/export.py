"""Write a profile to a report folder and read it back.

`save_profile` writes everything a user or a later tool needs: CSV tables, a JSON file that
`load_profile` turns back into a profile-like object (for `compare` and for reports), a Markdown
summary, a Chrome trace that Perfetto opens, the graph as DOT (and SVG when graphviz is
installed), PNG plots and a self-contained HTML page. Works on anything with the profile API,
so a loaded profile can be saved again.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

PROFILE_FORMAT = "torchext-profile"
PROFILE_VERSION = 1

OPS_COLUMNS = [
    "seq", "op", "phase", "module", "input_shapes", "dtype", "device", "output_bytes",
    "saved_bytes", "saved_new_bytes", "live_bytes", "peak_bytes", "time_ms",
]
LIFETIMES_COLUMNS = [
    "storage_id", "nbytes", "saved_by", "saved_seq", "module", "freed_seq", "freed_by",
    "freed_phase",
]
TIMELINE_COLUMNS = ["seq", "t_ms", "phase", "op", "live_bytes"]
NODES_COLUMNS = ["node_id", "name", "module", "saved_bytes", "saved_new_bytes", "alive"]
EDGES_COLUMNS = ["src", "dst"]
LEAKS_COLUMNS = ["root", "held_bytes", "holder"]

# Per-op / per-module aggregates: how each column of `prof.ops` combines over calls.
_AGGREGATES = {
    "calls": ("seq", "count"),
    "output_bytes": ("output_bytes", "sum"),
    "saved_bytes": ("saved_bytes", "sum"),
    "saved_new_bytes": ("saved_new_bytes", "sum"),
    "peak_bytes": ("peak_bytes", "max"),
    "time_ms": ("time_ms", "sum"),
}


# ----------------------------------------------------------------------------- aggregates


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


# ----------------------------------------------------------------------------- JSON frames


def json_value(value: Any) -> Any:
    """A JSON-safe Python value: numpy scalars unwrapped, NaN/NA/inf as null."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def frame_to_json(frame: pd.DataFrame) -> dict:
    """Columns, dtypes and rows of a DataFrame, so `frame_from_json` rebuilds it exactly."""
    return {
        "columns": [str(c) for c in frame.columns],
        "dtypes": [str(t) for t in frame.dtypes],
        "data": [[json_value(v) for v in row] for row in frame.itertuples(index=False, name=None)],
    }


def frame_from_json(payload: dict) -> pd.DataFrame:
    frame = pd.DataFrame(payload["data"], columns=payload["columns"])
    for column, dtype in zip(payload["columns"], payload["dtypes"], strict=True):
        if str(frame[column].dtype) != dtype:  # e.g. Int64 with <NA>, bool, object strings
            frame[column] = frame[column].astype(dtype)
    return frame


# ----------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class LoadedGraph:
    """The recorded autograd graph as saved: node and edge tables and its DOT text."""

    nodes: pd.DataFrame
    edges: pd.DataFrame
    dot: str = ""

    def to_dot(self) -> str:
        return self.dot


@dataclass(frozen=True)
class LoadedProfile:
    """A profile read back from disk: the live profile's tables, read-only (copies are returned)."""

    meta: dict
    held_bytes: int
    graph: LoadedGraph
    _frames: dict[str, pd.DataFrame] = field(repr=False)
    path: Path | None = None

    @property
    def ops(self) -> pd.DataFrame:
        return self._frames["ops"].copy()

    @property
    def lifetimes(self) -> pd.DataFrame:
        return self._frames["lifetimes"].copy()

    @property
    def timeline(self) -> pd.DataFrame:
        return self._frames["timeline"].copy()

    def leaks(self) -> pd.DataFrame:
        return self._frames["leaks"].copy()

    def save(self, path: str | Path) -> Path:
        return save_profile(self, path)


def snapshot(prof: Any, path: Path | None = None) -> LoadedProfile:
    """Every table of `prof` read once (a live profile builds its graph and scans for leaks on
    each access), as the same read-only object `load_profile` returns."""
    graph = prof.graph
    frames = {"ops": prof.ops, "lifetimes": prof.lifetimes, "timeline": prof.timeline,
              "leaks": prof.leaks()}
    meta = {str(k): json_value(v) for k, v in dict(prof.meta).items()}
    return LoadedProfile(meta=meta, held_bytes=int(prof.held_bytes),
                         graph=LoadedGraph(graph.nodes, graph.edges, graph.to_dot()),
                         _frames=frames, path=path)


def profile_to_json(prof: Any) -> dict:
    """Everything `load_profile` needs, as one JSON-safe dict."""
    graph = prof.graph
    return {
        "format": PROFILE_FORMAT,
        "version": PROFILE_VERSION,
        "meta": {str(k): json_value(v) for k, v in dict(prof.meta).items()},
        "held_bytes": int(prof.held_bytes),
        "ops": frame_to_json(prof.ops),
        "lifetimes": frame_to_json(prof.lifetimes),
        "timeline": frame_to_json(prof.timeline),
        "leaks": frame_to_json(prof.leaks()),
        "graph": {
            "nodes": frame_to_json(graph.nodes),
            "edges": frame_to_json(graph.edges),
            "dot": graph.to_dot(),
        },
    }


def load_profile(path: str | Path) -> LoadedProfile:
    """Read a profile saved by `save_profile`: its folder or the `profile.json` inside it."""
    path = Path(path)
    file = path / "profile.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"no saved profile at {path} (expected {file})")
    payload = json.loads(file.read_text(encoding="utf-8"))
    if payload.get("format") != PROFILE_FORMAT:
        raise ValueError(f"{file} is not a torchext profile (format={payload.get('format')!r})")
    if payload.get("version") != PROFILE_VERSION:
        raise ValueError(f"{file}: unsupported profile version {payload.get('version')!r}")
    graph = payload["graph"]
    frames = {name: frame_from_json(payload[name]) for name in ("ops", "lifetimes", "timeline")}
    frames["leaks"] = frame_from_json(payload["leaks"])
    return LoadedProfile(
        meta=dict(payload["meta"]),
        held_bytes=int(payload["held_bytes"]),
        graph=LoadedGraph(
            frame_from_json(graph["nodes"]), frame_from_json(graph["edges"]), graph["dot"]
        ),
        _frames=frames,
        path=file.parent,
    )


# ----------------------------------------------------------------------------- Chrome trace

TRACE_PID = 1
TRACE_THREADS = {"forward": 1, "backward": 2}
_OTHER_THREAD = 3


def chrome_trace(prof: Any) -> dict:
    """The op timeline as a Chrome trace (JSON object format) that Perfetto and chrome://tracing
    open: one complete ("X") slice per op on a forward or backward track, with ts/dur in µs, and
    a counter ("C") track of live bytes after each recorded event."""
    ops, timeline = prof.ops, prof.timeline
    end_ms = dict(zip(timeline["seq"].tolist(), timeline["t_ms"].tolist(), strict=True))
    events: list[dict] = [
        _metadata("process_name", {"name": f"torchext profile ({prof.meta.get('device', '')})"}),
    ]
    threads = {**TRACE_THREADS, "other": _OTHER_THREAD}
    for name, tid in threads.items():
        events.append(_metadata("thread_name", {"name": name}, tid))
        events.append(_metadata("thread_sort_index", {"sort_index": tid}, tid))
    for row in ops.itertuples(index=False):
        duration_us = max(float(row.time_ms) * 1000.0, 0.0)
        end_us = float(end_ms.get(row.seq, 0.0)) * 1000.0
        events.append({
            "name": str(row.op), "cat": str(row.phase), "ph": "X",
            "ts": round(max(end_us - duration_us, 0.0), 3), "dur": round(duration_us, 3),
            "pid": TRACE_PID, "tid": TRACE_THREADS.get(row.phase, _OTHER_THREAD),
            "args": {
                "seq": int(row.seq), "module": str(row.module),
                "input_shapes": str(row.input_shapes), "dtype": str(row.dtype),
                "saved_bytes": int(row.saved_bytes), "saved_new_bytes": int(row.saved_new_bytes),
                "live_bytes": int(row.live_bytes), "peak_bytes": int(row.peak_bytes),
            },
        })
    for row in timeline.itertuples(index=False):
        events.append({
            "name": "live memory", "ph": "C", "ts": round(float(row.t_ms) * 1000.0, 3),
            "pid": TRACE_PID, "args": {"live_bytes": int(row.live_bytes)},
        })
    other = {k: json_value(v) for k, v in dict(prof.meta).items()}
    return {"traceEvents": events, "displayTimeUnit": "ms", "otherData": other}


def _metadata(name: str, args: dict, tid: int = 0) -> dict:
    return {"name": name, "ph": "M", "pid": TRACE_PID, "tid": tid, "args": args}


# ----------------------------------------------------------------------------- saving


def render_graph_svg(dot_file: Path, timeout_s: float = 120.0) -> Path | None:
    """`dot_file` rendered to SVG beside it when graphviz's `dot` exists; None otherwise."""
    dot = shutil.which("dot")
    if dot is None:
        return None
    svg = dot_file.with_suffix(".svg")
    try:
        done = subprocess.run(
            [dot, "-Tsvg", str(dot_file), "-o", str(svg)],
            capture_output=True, text=True, timeout=timeout_s, check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        warnings.warn(f"graphviz failed on {dot_file}: {exc}", RuntimeWarning, stacklevel=2)
        return None
    if done.returncode != 0 or not svg.is_file():
        warnings.warn(f"graphviz failed on {dot_file}: {done.stderr.strip()}", RuntimeWarning,
                      stacklevel=2)
        return None
    return svg


def save_profile(prof: Any, path: str | Path, top: int = 10) -> Path:
    """Write the report folder `path` (created if needed) and return it.

    Files: ops.csv, lifetimes.csv, timeline.csv, leaks.csv, profile.json, summary.md,
    trace.json, graph.dot (+ graph.svg with graphviz), memory.png, saved_by_op.png,
    saved_by_module.png and report.html; `top` rows in the summary's per-op tables.
    """
    from profiling import html, plots  # plotting is the slow import: only when saving

    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    saved = snapshot(prof, folder)
    payload = profile_to_json(saved)
    (folder / "profile.json").write_text(json.dumps(payload, indent=1), encoding="utf-8")
    for name in ("ops", "lifetimes", "timeline"):
        getattr(saved, name).to_csv(folder / f"{name}.csv", index=False)
    saved.leaks().to_csv(folder / "leaks.csv", index=False)
    trace = json.dumps(chrome_trace(saved), separators=(",", ":"))
    (folder / "trace.json").write_text(trace, encoding="utf-8")
    dot_file = folder / "graph.dot"
    dot_file.write_text(saved.graph.to_dot(), encoding="utf-8")
    render_graph_svg(dot_file)
    images = plots.save_plots(saved, folder)
    (folder / "summary.md").write_text(html.summary_markdown(saved, top), encoding="utf-8")
    (folder / "report.html").write_text(html.report_html(saved, folder, images, top),
                                        encoding="utf-8")
    return folder
