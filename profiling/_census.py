"""What each submodule call saves for backward, for the checkpoint planner.

Hooks on the models' modules record every call: its qualified name, its inputs, and the range
of autograd sequence numbers handed out while it ran (every node created during the call has
one in that range). When an outermost call returns, the graph it built is walked once and each
saved storage is given to the calls it is *internal* to: every node that saved it was created
inside the call, and it is not an input of the call (or of a call around it). Those are the
bytes checkpointing the call frees; `kept_bytes` are the inputs the graph does not hold but a
checkpoint would keep (an input freed before backward without one). The profiler's per-op
first-saver attribution cannot say this: a storage saved by two modules belongs to neither.

Known limits: a tensor a module reads from outside its arguments (an attribute, a closure)
counts as created inside it; storages saved after the model returned (by the loss) are not
walked, so the model's outputs are taken as held outside.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.nn.modules.module import register_module_forward_pre_hook

from ._graph import saved_attributes
from ._storage import nested_tensors_in, storage_of

_SEQ_LIMIT = 2**62  # AccumulateGrad nodes carry UINT64_MAX


def _next_sequence_nr() -> int:
    """The sequence number the next autograd node created on this thread gets."""
    read = getattr(torch._C._autograd, "_get_sequence_nr", None)
    if read is not None:
        return read()
    with torch._C._DisableTorchDispatch(), torch.enable_grad():  # older torch: make a node
        return torch.empty(0, requires_grad=True).view(0).grad_fn._sequence_nr() + 1


class Call:
    """One forward call of a module of a planned model."""

    __slots__ = ("index", "label", "path", "module", "parent", "top", "seq_lo", "seq_hi",
                 "inputs", "saved_bytes", "kept_bytes", "events", "wall")

    def __init__(self, index: int, label: str, path: str, module: nn.Module,
                 parent: Call | None, inputs: list[torch.Tensor]) -> None:
        self.index, self.label, self.path, self.module = index, label, path, module
        self.parent = parent
        self.top: Call = self if parent is None else parent.top
        self.seq_lo = _next_sequence_nr()
        self.seq_hi = self.seq_lo
        seen: dict[int, tuple[weakref.ref, int]] = {}
        for tensor in inputs:
            storage = storage_of(tensor)
            if storage is not None and storage._cdata not in seen:
                seen[storage._cdata] = (weakref.ref(storage), storage.nbytes())
        self.inputs = list(seen.values())
        self.saved_bytes = 0
        self.kept_bytes = 0
        self.events: tuple[Any, Any] | None = None  # CUDA start/end events
        self.wall = time.perf_counter()

    def chain(self) -> list[Call]:
        """This call and the calls around it, innermost first."""
        calls, call = [], self
        while call is not None:
            calls.append(call)
            call = call.parent
        return calls

    def __repr__(self) -> str:
        return f"Call({self.index}, {self.label}:{self.path or '<model>'})"


class Census:
    """Records the calls of the given models (or, with `discover=True`, of every model whose
    forward runs outside any other module) and what each call saves."""

    def __init__(self, models: Iterable[tuple[str, nn.Module]] = (), *, discover: bool = False,
                 walk: bool = True, cuda_events: bool = False,
                 on_new_model: Callable[[str, nn.Module], None] | None = None) -> None:
        self.models: dict[str, nn.Module] = {}
        self.calls: list[Call] = []
        self.events: list[tuple[str, Call]] = []  # ("enter" | "exit", call), in order
        self._names: weakref.WeakKeyDictionary[nn.Module, tuple[str, str]] = (
            weakref.WeakKeyDictionary())
        self._stack: list[Call] = []
        self._handles: list[Any] = []
        self._discover = discover
        self._walk_graphs = walk
        self._cuda_events = cuda_events
        self._on_new_model = on_new_model
        self._initial = list(models)

    # ------------------------------------------------------------------ hooks
    def attach(self, label: str, model: nn.Module) -> None:
        self.models[label] = model
        for path, module in model.named_modules():
            if module in self._names:
                continue
            self._names[module] = (label, path)
            self._handles.append(module.register_forward_pre_hook(self._pre, with_kwargs=True))
            self._handles.append(module.register_forward_hook(self._post, always_call=True))

    def label_for(self, model: nn.Module) -> str:
        """Class name, numbered from the second model of a class on: "MLP", "MLP#2"."""
        name, count = type(model).__name__, 1
        while (name if count == 1 else f"{name}#{count}") in self.models:
            count += 1
        return name if count == 1 else f"{name}#{count}"

    def _discover_hook(self, module: nn.Module, args: Any) -> None:
        if self._stack or module in self._names or not any(True for _ in module.children()):
            return
        label = self.label_for(module)
        if self._on_new_model is not None:
            self._on_new_model(label, module)  # may wrap submodules before they run
        self.attach(label, module)
        self._pre(module, args, {})  # this call's own instance hooks were collected already

    def _pre(self, module: nn.Module, args: Any, kwargs: Any) -> None:
        label, path = self._names[module]
        if self._stack and self._stack[-1].module is module and self._stack[-1].seq_hi < 0:
            return  # the discovery hook recorded this call already
        parent = self._stack[-1] if self._stack else None
        call = Call(len(self.calls), label, path, module, parent,
                    nested_tensors_in(args) + nested_tensors_in(kwargs))
        call.seq_hi = -1  # open
        if self._cuda_events:
            start = torch.cuda.Event(enable_timing=True)
            start.record()
            call.events = (start, None)
        self.calls.append(call)
        self.events.append(("enter", call))
        self._stack.append(call)

    def _post(self, module: nn.Module, args: Any, output: Any) -> None:
        if not self._stack or self._stack[-1].module is not module:
            return
        call = self._stack.pop()
        call.seq_hi = _next_sequence_nr()
        call.wall = time.perf_counter() - call.wall
        if call.events is not None:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            call.events = (call.events[0], end)
        self.events.append(("exit", call))
        if call.parent is None and self._walk_graphs:
            self._walk(call, nested_tensors_in(output))

    def forward_ms(self) -> dict[tuple[str, str], float]:
        """Milliseconds spent in each module's forward (its calls added up, nested calls in),
        from CUDA events on CUDA, else wall-clock time."""
        spent: dict[tuple[str, str], float] = {}
        for call in self.calls:
            if call.events is not None and call.events[1] is not None:
                ms = call.events[0].elapsed_time(call.events[1])
            else:
                ms = call.wall * 1e3
            spent[(call.label, call.path)] = spent.get((call.label, call.path), 0.0) + ms
        return spent

    def __enter__(self) -> Census:
        for label, model in self._initial:
            self.attach(label, model)
        if self._discover:
            self._handles.append(register_module_forward_pre_hook(self._discover_hook))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._stack.clear()

    # ------------------------------------------------------------------ the graph walk
    def _walk(self, top: Call, outputs: list[torch.Tensor]) -> None:
        calls = [c for c in self.calls[top.index:] if c.top is top]
        nodes = self._nodes(top, outputs)
        innermost = self._innermost(calls, nodes)
        fixed: set[int] = set()
        for model in self.models.values():
            for tensor in (*model.parameters(), *model.buffers()):
                storage = storage_of(tensor)
                if storage is not None:
                    fixed.add(storage._cdata)
        outside = {s._cdata for s in map(storage_of, outputs) if s is not None}
        outside |= {key for key in (_alive_key(ref) for ref, _ in top.inputs) if key is not None}
        savers: dict[int, set[int]] = {}
        nbytes: dict[int, int] = {}
        for node, call in zip(nodes, innermost, strict=True):
            if call is None:
                continue
            for tensor in _saved_tensors(node):
                storage = storage_of(tensor)
                if storage is None or storage._cdata in fixed or storage._cdata in outside:
                    continue
                savers.setdefault(storage._cdata, set()).add(call.index)
                nbytes[storage._cdata] = storage.nbytes()
        by_index = {c.index: c for c in calls}
        inputs_of = {c.index: {k for k in (_alive_key(r) for r, _ in c.inputs) if k is not None}
                     for c in calls}
        for key, indices in savers.items():
            chain = _common_chain([by_index[i] for i in indices])
            highest_input = max((i for i, c in enumerate(chain) if key in inputs_of[c.index]),
                                default=-1)
            for call in chain[highest_input + 1:]:
                call.saved_bytes += nbytes[key]
        for call in calls:
            call.kept_bytes = sum(size for ref, size in call.inputs if ref() is None)

    @staticmethod
    def _nodes(top: Call, outputs: list[torch.Tensor]) -> list[Any]:
        """The nodes created during `top` that its outputs reach."""
        seen: dict[int, Any] = {}
        stack = [t.grad_fn for t in outputs if t.grad_fn is not None]
        while stack:
            node = stack.pop()
            if node is None or id(node) in seen:
                continue
            seq = node._sequence_nr()
            if seq >= _SEQ_LIMIT or not top.seq_lo <= seq < top.seq_hi:
                continue
            seen[id(node)] = node
            stack.extend(child for child, _ in node.next_functions)
        return sorted(seen.values(), key=lambda n: n._sequence_nr())

    @staticmethod
    def _innermost(calls: list[Call], nodes: list[Any]) -> list[Call | None]:
        """For each node (sorted by sequence number), the innermost call that created it."""
        found: list[Call | None] = []
        ordered = sorted(calls, key=lambda c: (c.seq_lo, c.index))
        stack: list[Call] = []
        position = 0
        for node in nodes:
            seq = node._sequence_nr()
            while position < len(ordered) and ordered[position].seq_lo <= seq:
                stack.append(ordered[position])
                position += 1
            while stack and stack[-1].seq_hi <= seq:
                stack.pop()
            # a call with an empty range (no node) may sit above a real one: skip it
            owner = next((c for c in reversed(stack) if c.seq_lo <= seq < c.seq_hi), None)
            found.append(owner)
        return found


def _alive_key(ref: weakref.ref) -> int | None:
    storage = ref()
    return None if storage is None else storage._cdata


def _saved_tensors(node: Any) -> list[torch.Tensor]:
    tensors = []
    for name in saved_attributes(type(node)):
        try:
            value = getattr(node, name)
        except RuntimeError:  # freed already, or modified in place since
            continue
        tensors.extend(nested_tensors_in(value))
    return tensors


def _common_chain(calls: list[Call]) -> list[Call]:
    """The calls around all of `calls` (their innermost common one first)."""
    chains = [c.chain() for c in calls]
    common = set(map(id, chains[0]))
    for chain in chains[1:]:
        common &= set(map(id, chain))
    return [c for c in chains[0] if id(c) in common]
