"""Leak finder: autograd graphs still alive after the block, what holds each, and why.

A graph stays alive while something references a tensor whose `grad_fn` is in it: a loss
summed across steps without `.item()`, or an RNN state carried from one truncated-BPTT chunk to
the next without `.detach()`. One row per live graph root that holds saved tensors, largest
first, with the variable holding it (`_holders`: `hidden[0]`, `state['h']`, `self.h`).

Rows add up to `held_bytes`: two graphs can share saved storages (the state's `h` and `c` both
reach the previous chunk's graph), and each storage is counted once, in the first (largest) row
that holds it; `shared_bytes` is what a row's graph holds beyond that, counted in an earlier row.

`message` says when a graph spans several forward calls of the same top-level module: a call
whose graph reaches the previous call's graph means a tensor was carried between them undetached
(the fix: `detach()` it); calls joined only at the end mean their results were combined, e.g. a
running loss (the fix: `.item()`). Calls are runs of forward operators under the module, so two
calls with no operator between them count as one.
"""

from __future__ import annotations

import bisect
import gc
import sys

import pandas as pd
import torch

from ._graph import NodeRegistry
from ._holders import Holder, base_name, in_frames, in_heap
from .tables import LEAKS_COLUMNS, format_bytes

UNSEEN_NODES = ("saved tensors held by autograd nodes the profiler did not record (a graph "
                "built during backward with create_graph=True, or outside the block)")


def _forward_calls(ops: pd.DataFrame) -> tuple[dict[int, tuple[str, int]], list[int]]:
    """seq -> (top-level module, index of its forward call) for forward rows under a module,
    and the seqs of the rows of other phases (backward, optimizer), sorted."""
    calls: dict[int, tuple[str, int]] = {}
    counts: dict[str, int] = {}
    others: list[int] = []
    previous = None
    ordered = ops.sort_values("seq", kind="stable")
    for seq, phase, module in zip(ordered["seq"].tolist(), ordered["phase"].tolist(),
                                  ordered["module"].tolist(), strict=True):
        if phase != "forward":
            others.append(seq)
        top = module.split(".")[0] if phase == "forward" and module else None
        if top is not None and top != previous:
            counts[top] = counts.get(top, 0) + 1
        previous = top
        if top is not None:
            calls[seq] = (top, counts[top] - 1)
    return calls, others


def _reaches_back(nodes: set[int], node_call: dict[int, int],
                  children: dict[int, list[int]]) -> bool:
    """Whether a node of some call reaches, through the graph, a node of an earlier call."""
    lowest: dict[int, float] = {}  # node -> the earliest call reachable from it (itself too)
    for start in nodes:
        stack = [(start, False)]
        while stack:
            node, expanded = stack.pop()
            if node in lowest:
                continue
            kids = [c for c in children.get(node, ()) if c in nodes]
            if not expanded:
                stack.append((node, True))
                stack.extend((c, False) for c in kids if c not in lowest)
                continue
            below = min((lowest[c] for c in kids), default=float("inf"))
            lowest[node] = min(below, node_call.get(node, float("inf")))
            own = node_call.get(node)
            if own is not None and below < own:
                return True
    return False


def _diagnosis(nodes: set[int], registry: NodeRegistry, calls: dict[int, tuple[str, int]],
               others: list[int], children: dict[int, list[int]], holder: Holder | None) -> str:
    """What the graph's forward calls say about the leak, with the fix ("" if nothing)."""
    by_module: dict[str, dict[int, int]] = {}
    first_seq: dict[tuple[str, int], int] = {}
    for node in nodes:
        seq = registry.nodes[node].row_seq
        if seq is None or seq not in calls:
            continue
        top, call = calls[seq]
        by_module.setdefault(top, {})[node] = call
        first_seq[(top, call)] = min(seq, first_seq.get((top, call), seq))
    for top, node_call in sorted(by_module.items(), key=lambda item: -len(set(item[1].values()))):
        spanned = sorted(set(node_call.values()))
        if len(spanned) < 2:
            continue
        starts = [first_seq[(top, call)] for call in spanned]
        between = sum(bisect.bisect_left(others, b) > bisect.bisect_left(others, a)
                      for a, b in zip(starts, starts[1:], strict=False))
        count = f"{len(spanned)} forward calls of {top}"
        if _reaches_back(nodes, node_call, children):
            name = base_name(holder.name) if holder is not None and holder.name else "state"
            fix = (f"`{name} = tuple(t.detach() for t in {name})`" if holder is not None
                   and holder.name.startswith(f"{name}[") else f"`{name} = {name}.detach()`")
            if between:
                return (f"undetached state: this graph spans {count}, iterations with a backward "
                        "between them, each call's graph reaching the previous one's through a "
                        "tensor carried from one iteration to the next, so every iteration's "
                        f"graph stays alive. Fix: detach() the carried state between "
                        f"iterations, e.g. {fix}.")
            return (f"this graph chains {count}, each call's graph reaching the previous one's "
                    "through a tensor passed from one call to the next. If each call is an "
                    "iteration (truncated BPTT, a carried RNN state), detach() the carried state "
                    f"between them, e.g. {fix}.")
        return (f"this graph joins {count}, combined after they ran (e.g. `total += loss` across "
                "iterations), which keeps every call's graph alive. For a running total, add "
                "`loss.item()` or `loss.detach()` instead.")
    return ""


def find_leaks(registry: NodeRegistry, ops: pd.DataFrame, skip_frames: int = 0) -> pd.DataFrame:
    """One row per alive graph root holding saved tensors, largest first (see the module)."""
    caller = sys._getframe(skip_frames + 1)
    gc.collect()
    entries = registry.ledger.entries
    alive = registry.alive
    children: dict[int, list[int]] = {}
    for src, dst in set(registry.edges):
        if src in alive and dst in alive:
            children.setdefault(src, []).append(dst)
    graphs: dict[int, tuple[set[int], set[int]]] = {}
    for root in registry.roots():
        nodes = registry.reachable(root)
        held = {s for n in nodes for s in registry.nodes[n].saved if entries[s].holds > 0}
        if held:
            graphs[root] = (nodes, held)

    def match(tensor: torch.Tensor) -> int | None:
        node = tensor.grad_fn
        return None if node is None else registry.node_id(node)

    holders: dict[int, Holder] = {}
    if graphs:
        holders = in_frames(caller, match, set(graphs))
        if len(holders) < len(graphs):
            holders.update(in_heap(match, set(graphs) - holders.keys()))
    del caller
    calls, others = _forward_calls(ops)
    order = sorted(graphs, key=lambda r: (-sum(entries[s].nbytes for s in graphs[r][1]), r))
    counted_in: dict[int, int] = {}  # storage id -> the row that counts it
    rows = []
    for index, root in enumerate(order):
        nodes, held = graphs[root]
        mine = [s for s in held if s not in counted_in]
        shared = [s for s in held if s in counted_in]
        counted_in.update((s, index) for s in mine)
        holder = holders.get(root)
        notes = [_diagnosis(nodes, registry, calls, others, children, holder)]
        if shared:
            earlier = sorted({counted_in[s] for s in shared})
            notes.append(f"{format_bytes(sum(entries[s].nbytes for s in shared))} of what it "
                         f"holds is shared with the graph of row {', '.join(map(str, earlier))} "
                         "and counted there.")
        rows.append((registry.nodes[root].name, sum(entries[s].nbytes for s in mine),
                     sum(entries[s].nbytes for s in shared), holder.text if holder else "",
                     holder.name if holder else "", holder.line if holder else None,
                     " ".join(n for n in notes if n)))
    unseen = registry.ledger.held_bytes - sum(row[1] for row in rows)
    if unseen > 0:
        rows.append(("(unrecorded nodes)", unseen, 0, "", "", None, UNSEEN_NODES))
    frame = pd.DataFrame(rows, columns=LEAKS_COLUMNS)
    return frame.astype({"held_bytes": "int64", "shared_bytes": "int64", "line": "Int64",
                         "root": "str", "holder": "str", "name": "str", "message": "str"})
