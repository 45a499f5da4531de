"""The autograd graph recorded while profiling: nodes, edges, what each node saved, who is alive.

Nodes are found from each operator's outputs (`output.grad_fn`, the node that operator created)
and by walking `next_functions` from there. The profiler must never keep a node alive (a node
owns its saved tensors), so it never stores node objects: it tags each node with a small token
in `node.metadata`, which dies with the node and so tells the registry when the node is freed.
What a node saved is read through its `_saved_*` accessors (or `saved_tensors` for a custom
`autograd.Function`): reading one calls the profiler's unpack hook, which reports the entry.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd
import torch
from torch.autograd.function import BackwardCFunction

from ._saved import SavedLedger
from .tables import format_bytes

_SAVED_ATTRS: dict[type, tuple[str, ...]] = {}


def saved_attributes(node_type: type) -> tuple[str, ...]:
    """Names of the accessors that unpack the tensors a node of this type saved."""
    names = _SAVED_ATTRS.get(node_type)
    if names is None:
        if issubclass(node_type, BackwardCFunction):
            names = ("saved_tensors",)
        else:
            names = tuple("_saved_" + a[len("_raw_saved_"):] for a in dir(node_type)
                          if a.startswith("_raw_saved_"))
        _SAVED_ATTRS[node_type] = names
    return names


class _NodeToken:
    """Lives in a node's metadata; its death is the node's death."""

    __slots__ = ("registry", "node_id")

    def __init__(self, registry: NodeRegistry, node_id: int) -> None:
        self.registry = registry
        self.node_id = node_id

    def __del__(self) -> None:
        self.registry.alive.discard(self.node_id)


class NodeRecord:
    """What the profiler knows about one node (never the node itself)."""

    __slots__ = ("node_id", "name", "module", "row_seq", "saved")

    def __init__(self, node_id: int, name: str, module: str, row_seq: int | None,
                 saved: tuple[int, ...]) -> None:
        self.node_id = node_id
        self.name = name
        self.module = module
        self.row_seq = row_seq  # the operator row that created the node (None: found by walk)
        self.saved = saved  # storage ids of what it saved, in save order


class NodeRegistry:
    """Every node the profiler found, the edges between them, and which are still alive."""

    def __init__(self, ledger: SavedLedger,
                 on_new_node: Callable[[object, int], None] | None) -> None:
        self.key = f"profiling.{id(self)}"
        self.ledger = ledger
        self.on_new_node = on_new_node  # registers the backward hooks (None: no more hooks)
        self.nodes: list[NodeRecord] = []
        self.edges: list[tuple[int, int]] = []
        self.alive: set[int] = set()

    def node_id(self, node: object) -> int | None:
        token = node.metadata.get(self.key)  # type: ignore[attr-defined]
        return None if token is None else token.node_id

    def _saved_by(self, node: object) -> tuple[int, ...]:
        names = saved_attributes(type(node))
        if not names:
            return ()
        captured: list = []
        self.ledger.capturing = captured
        try:
            for attr in names:
                try:
                    getattr(node, attr)
                except RuntimeError:
                    pass  # already freed, or modified in place since: nothing to read
        finally:
            self.ledger.capturing = None
        return tuple(dict.fromkeys(entry.storage_id for entry in captured))

    def _tag(self, node: object, metadata: dict, row_seq: int | None, module: str) -> int:
        node_id = len(self.nodes)
        metadata[self.key] = _NodeToken(self, node_id)
        self.alive.add(node_id)
        self.nodes.append(NodeRecord(node_id, type(node).__name__, module, row_seq,
                                     self._saved_by(node)))
        if self.on_new_node is not None:
            self.on_new_node(node, node_id)
        return node_id

    def discover(self, node: object, row_seq: int | None, module: str) -> int:
        """Tag `node` (created by row `row_seq`) and every untagged node reachable from it."""
        key = self.key
        metadata = node.metadata  # type: ignore[attr-defined]
        token = metadata.get(key)
        if token is not None:
            return token.node_id
        root_id = self._tag(node, metadata, row_seq, module)
        stack = [(node, root_id)]
        edges = self.edges
        while stack:
            parent, parent_id = stack.pop()
            for child, _ in parent.next_functions:  # type: ignore[attr-defined]
                if child is None:
                    continue
                metadata = child.metadata
                token = metadata.get(key)
                if token is None:
                    child_id = self._tag(child, metadata, None, module)
                    stack.append((child, child_id))
                else:
                    child_id = token.node_id
                edges.append((parent_id, child_id))
        return root_id

    def roots(self) -> list[int]:
        """Alive nodes that no alive node points to: the outputs of the live graphs."""
        pointed = {dst for src, dst in self.edges if src in self.alive}
        return sorted(n for n in self.alive if n not in pointed)

    def reachable(self, root: int) -> set[int]:
        children: dict[int, list[int]] = {}
        for src, dst in self.edges:
            children.setdefault(src, []).append(dst)
        seen, stack = {root}, [root]
        while stack:
            for child in children.get(stack.pop(), ()):
                if child not in seen and child in self.alive:
                    seen.add(child)
                    stack.append(child)
        return seen

    def held_bytes(self, node_ids: set[int]) -> int:
        """Bytes of the storages these nodes saved that a graph still holds."""
        storage_ids = {s for n in node_ids for s in self.nodes[n].saved}
        entries = self.ledger.entries
        return sum(entries[s].nbytes for s in storage_ids if entries[s].holds > 0)


NODE_COLUMNS = ["node_id", "name", "module", "saved_bytes", "saved_new_bytes", "alive"]


class AutogradGraph:
    """The recorded graph: `nodes` and `edges` DataFrames (edges point from a node to the nodes
    its gradient flows to, as `next_functions` does) and `to_dot()`."""

    def __init__(self, nodes: pd.DataFrame, edges: pd.DataFrame) -> None:
        self.nodes = nodes
        self.edges = edges

    def __repr__(self) -> str:
        return f"AutogradGraph({len(self.nodes)} nodes, {len(self.edges)} edges)"

    def to_dot(self) -> str:
        """Graphviz DOT text; each node's label gives its saved bytes."""
        lines = ["digraph autograd {", '  node [shape=box, fontname="Helvetica"];']
        for row in self.nodes.itertuples(index=False):
            label = row.name
            if row.module:
                label += f"\\n{row.module}"
            if row.saved_bytes:
                label += f"\\nsaved {format_bytes(row.saved_bytes)}"
            style = "" if row.alive else ", style=dashed"
            lines.append(f'  n{row.node_id} [label="{label}"{style}];')
        for row in self.edges.itertuples(index=False):
            lines.append(f"  n{row.src} -> n{row.dst};")
        lines.append("}")
        return "\n".join(lines) + "\n"


def build_graph(registry: NodeRegistry, first_saver: dict[int, int]) -> AutogradGraph:
    """Nodes with the bytes each saved first (a storage saved by two nodes counts once)."""
    entries = registry.ledger.entries
    rows = []
    for record in registry.nodes:
        mine = [s for s in record.saved if first_saver.get(s) == record.node_id]
        rows.append((record.node_id, record.name, record.module,
                     sum(entries[s].nbytes for s in mine),
                     sum(entries[s].nbytes for s in mine if entries[s].new),
                     record.node_id in registry.alive))
    nodes = pd.DataFrame(rows, columns=NODE_COLUMNS)
    edges = pd.DataFrame(sorted(set(registry.edges)), columns=["src", "dst"])
    return AutogradGraph(nodes.astype({"node_id": "int64", "saved_bytes": "int64",
                                       "saved_new_bytes": "int64", "alive": "bool"}),
                         edges.astype("int64"))


def node_first_savers(registry: NodeRegistry) -> dict[int, int]:
    """storage id -> the first node (in discovery order) that saved it."""
    first: dict[int, int] = {}
    for record in registry.nodes:
        for storage_id in record.saved:
            first.setdefault(storage_id, record.node_id)
    return first


def is_backward_running() -> bool:
    return torch._C._current_graph_task_id() != -1
