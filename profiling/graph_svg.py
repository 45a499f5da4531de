"""The recorded graph drawn by graphviz: graph.dot rendered to graph.svg when `dot` exists."""

from __future__ import annotations

import shutil
import subprocess
import warnings
from pathlib import Path


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
