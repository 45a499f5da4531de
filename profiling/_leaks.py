"""Leak finder: autograd graphs still alive after the block, and what keeps each one alive.

A graph stays alive while something references a tensor whose `grad_fn` is in it: typically a
loss accumulated across steps without `.item()`/`.detach()`. For each root we look for such a
tensor in the calling frames' locals and globals, then among every tensor the garbage
collector knows, naming the container that holds it. Only run on demand: it scans objects.

Before Python 3.13, reading `frame.f_locals` of a running function stores a snapshot dict in
the frame that keeps its values alive until the function returns; the finder empties those
snapshots again (anything that reads them, `locals()` or a tracer, refills them first).
"""

from __future__ import annotations

import gc
import inspect
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager

import pandas as pd
import torch

from ._graph import NodeRegistry

LEAK_COLUMNS = ["root", "held_bytes", "holder"]
_SNAPSHOT_LOCALS = sys.version_info < (3, 13)


@contextmanager
def _locals_of(frame: types.FrameType) -> Iterator[dict]:
    names = frame.f_locals
    try:
        yield names
    finally:
        if _SNAPSHOT_LOCALS and frame.f_code.co_flags & inspect.CO_OPTIMIZED:
            names.clear()


def _root_of(value: object, registry: NodeRegistry) -> int | None:
    if not issubclass(type(value), torch.Tensor) or value.grad_fn is None:  # type: ignore[attr-defined]
        return None
    return registry.node_id(value.grad_fn)  # type: ignore[attr-defined]


def _in_frames(roots: set[int], registry: NodeRegistry, frame: types.FrameType | None,
               found: dict[int, str]) -> None:
    while frame is not None and len(found) < len(roots):
        code = frame.f_code
        with _locals_of(frame) as local_names:
            for name, value in local_names.items():
                node_id = _root_of(value, registry)
                if node_id in roots and node_id not in found:
                    found[node_id] = (f"variable '{name}' in {code.co_name} "
                                      f"({code.co_filename}:{frame.f_lineno})")
        module = frame.f_globals.get("__name__", "?")
        for name, value in list(frame.f_globals.items()):
            node_id = _root_of(value, registry)
            if node_id in roots and node_id not in found:
                found[node_id] = f"variable '{name}' in {module}"
        frame = frame.f_back


def _describe_container(tensor: torch.Tensor, ignore: set[int]) -> str:
    for holder in gc.get_referrers(tensor):
        if id(holder) in ignore:
            continue
        if isinstance(holder, dict):
            for key, value in holder.items():
                if value is tensor:
                    if "__builtins__" in holder and "__name__" in holder:
                        return f"variable '{key}' in {holder['__name__']}"
                    return f"key {key!r} of a dict"
        elif isinstance(holder, list):
            return f"item of a list of {len(holder)}"
        elif isinstance(holder, tuple):
            return f"item of a tuple of {len(holder)}"
    return "a tensor referenced from elsewhere"


def _in_heap(roots: set[int], registry: NodeRegistry, found: dict[int, str]) -> None:
    objects = gc.get_objects()
    ignore = {id(objects), id(sys._getframe())}
    for obj in objects:
        if len(found) == len(roots):
            break
        node_id = _root_of(obj, registry)
        if node_id in roots and node_id not in found:
            found[node_id] = _describe_container(obj, ignore)  # type: ignore[arg-type]
    del objects


def find_leaks(registry: NodeRegistry, skip_frames: int = 0) -> pd.DataFrame:
    """One row per alive graph root holding saved bytes, largest first."""
    caller = sys._getframe(skip_frames + 1)
    gc.collect()
    held = {}
    for root in registry.roots():
        nbytes = registry.held_bytes(registry.reachable(root))
        if nbytes > 0:
            held[root] = nbytes
    found: dict[int, str] = {}
    if held:
        _in_frames(set(held), registry, caller, found)
        if len(found) < len(held):
            _in_heap(set(held), registry, found)
    del caller
    rows = [(registry.nodes[n].name, nbytes, found.get(n, ""))
            for n, nbytes in sorted(held.items(), key=lambda item: -item[1])]
    return pd.DataFrame(rows, columns=LEAK_COLUMNS).astype({"held_bytes": "int64"})
