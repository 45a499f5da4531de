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
calls with no operator between them count as one. Code outside any module is judged by its
forward passes, the runs of forward operators between backward passes.
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


class ForwardCalls:
    """The forward calls of each top-level module, and the forward passes (runs of forward rows
    between two rows of another phase: backward, optimizer), read from the ops table."""

    def __init__(self, ops: pd.DataFrame) -> None:
        self.of_module: dict[int, tuple[str, int]] = {}  # seq -> (module, its call index)
        self.passes: dict[int, int] = {}  # seq -> forward pass index
        self.others: list[int] = []  # seqs of the rows of other phases, sorted
        self.ops: dict[int, tuple[str, str]] = {}  # seq -> (op, module)
        counts: dict[str, int] = {}
        passes, previous = 0, None
        ordered = ops.sort_values("seq", kind="stable")
        for seq, op, phase, module in zip(*(ordered[c].tolist() for c in
                                            ("seq", "op", "phase", "module")), strict=True):
            self.ops[seq] = (op, module)
            if phase != "forward":
                self.others.append(seq)
                previous = None
                continue
            if previous is None:
                passes += 1
            self.passes[seq] = passes - 1
            top = module.split(".")[0] if module else ""
            if top and top != previous:
                counts[top] = counts.get(top, 0) + 1
            previous = top
            if top:
                self.of_module[seq] = (top, counts[top] - 1)

    def separated(self, starts: list[int]) -> bool:
        """Whether a row of another phase ran between each two consecutive of these seqs."""
        index = [bisect.bisect_left(self.others, seq) for seq in starts]
        return all(b > a for a, b in zip(index, index[1:], strict=False))


def _carried(nodes: set[int], node_call: dict[int, int],
             children: dict[int, list[int]]) -> set[int]:
    """The nodes of a call that a later call's graph reaches first (directly, or through nodes
    of no call): the grad_fns of tensors carried from one call into the next."""
    carried: set[int] = set()
    for node, call in node_call.items():
        stack, seen = list(children.get(node, ())), set()
        while stack:
            child = stack.pop()
            if child in seen or child not in nodes:
                continue
            seen.add(child)
            other = node_call.get(child)
            if other is None:
                stack.extend(children.get(child, ()))
            elif other < call:
                carried.add(child)
    return carried


def _fix(carried: set[int], registry: NodeRegistry, root: int, holder: Holder | None,
         calls: ForwardCalls) -> str:
    """How to detach: by the holder's name when it holds the latest of the carried tensors (its
    root is a node of the same kind: the same backward node, made in the same module)."""
    made_by = sorted({calls.ops[registry.nodes[n].row_seq] for n in carried
                      if registry.nodes[n].row_seq in calls.ops})
    what = ", ".join(f"{op} in {module}" if module else op for op, module in made_by[:3])
    kind = (registry.nodes[root].name, registry.nodes[root].module)
    if holder is not None and holder.name and kind in {
            (registry.nodes[n].name, registry.nodes[n].module) for n in carried}:
        name = base_name(holder.name)
        example = (f"`{name} = tuple(t.detach() for t in {name})`"
                   if holder.name.startswith(f"{name}[") else f"`{name} = {name}.detach()`")
    else:
        example = "`state = state.detach()` (for a tuple, `tuple(t.detach() for t in state)`)"
    return f"the carried tensors are outputs of {what}. Fix: detach() them between " \
        f"iterations, e.g. {example}."


def _diagnosis(root: int, nodes: set[int], registry: NodeRegistry, calls: ForwardCalls,
               children: dict[int, list[int]], holder: Holder | None) -> str:
    """What the graph's forward calls say about the leak, with the fix ("" if nothing): the
    calls of a top-level module first, else the forward passes of code outside modules."""
    spans: dict[str, dict[int, int]] = {}  # what -> {node: call index}
    first_seq: dict[tuple[str, int], int] = {}
    for node in nodes:
        seq = registry.nodes[node].row_seq
        for what, call in ((calls.of_module.get(seq, (None, 0))), ("", calls.passes.get(seq))):
            if what is None or call is None:
                continue
            spans.setdefault(what, {})[node] = call
            first_seq[(what, call)] = min(seq, first_seq.get((what, call), seq))
    ordered = sorted((w for w in spans if w), key=lambda w: -len(set(spans[w].values())))
    for what in [*ordered, ""] if "" in spans else ordered:
        node_call = spans[what]
        spanned = sorted(set(node_call.values()))
        if len(spanned) < 2:
            continue
        count = f"{len(spanned)} forward calls of {what}" if what else \
            f"{len(spanned)} forward passes"
        carried = _carried(nodes, node_call, children)
        if carried:
            fix = _fix(carried, registry, root, holder, calls)
            if calls.separated([first_seq[(what, call)] for call in spanned]):
                return (f"undetached state: this graph spans {count}, iterations with a backward "
                        "between them, each call's graph reaching the previous one's through a "
                        "tensor carried from one iteration to the next, so every iteration's "
                        f"graph stays alive; {fix}")
            return (f"this graph chains {count}, each call's graph reaching the previous one's "
                    "through a tensor passed from one call to the next. If each call is an "
                    "iteration (truncated BPTT, a carried RNN state), " + fix)
        if what:
            return (f"this graph joins {count}, combined after they ran (e.g. `total += loss` "
                    "across iterations), which keeps every call's graph alive. For a running "
                    "total, add `loss.item()` or `loss.detach()` instead.")
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
    calls = ForwardCalls(ops)
    order = sorted(graphs, key=lambda r: (-sum(entries[s].nbytes for s in graphs[r][1]), r))
    counted_in: dict[int, int] = {}  # storage id -> the row that counts it
    rows = []
    for index, root in enumerate(order):
        nodes, held = graphs[root]
        mine = [s for s in held if s not in counted_in]
        shared = [s for s in held if s in counted_in]
        counted_in.update((s, index) for s in mine)
        holder = holders.get(root)
        notes = [_diagnosis(root, nodes, registry, calls, children, holder)]
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
