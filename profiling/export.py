"""Write a profile to a report folder and read it back; the CSV and JSON files are written here.

`save_profile` writes everything a user or a later tool needs: CSV tables, a JSON file that
`load_profile` turns back into a profile-like object (for `compare` and for reports), and, through
the writer of each other format, a Markdown summary and an HTML page (`html`), a Chrome trace
(`trace`), the graph as DOT (and SVG when graphviz is installed, `graph_svg`) and PNG plots
(`plots`). Works on anything with the profile API, so a loaded profile can be saved again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from profiling.graph_svg import render_graph_svg
from profiling.tables import json_value, module_table
from profiling.trace import chrome_trace

PROFILE_FORMAT = "torchext-profile"
PROFILE_VERSION = 1


# ----------------------------------------------------------------------------- JSON frames


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
    def modules(self) -> pd.DataFrame:
        return module_table(self._frames["ops"])

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


def save_profile(prof: Any, path: str | Path, top: int = 10) -> Path:
    """Write the report folder `path` (created if needed) and return it.

    Files: ops.csv, modules.csv, lifetimes.csv, timeline.csv, leaks.csv, profile.json,
    summary.md, trace.json, graph.dot (+ graph.svg with graphviz), memory.png, saved_by_op.png,
    saved_by_module.png and report.html; `top` rows in the summary's per-op tables.
    """
    from profiling import html, plots  # plotting is the slow import: only when saving

    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    saved = snapshot(prof, folder)
    payload = profile_to_json(saved)
    (folder / "profile.json").write_text(json.dumps(payload, indent=1), encoding="utf-8")
    for name in ("ops", "modules", "lifetimes", "timeline"):
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
