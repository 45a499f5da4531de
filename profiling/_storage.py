"""Logical memory accounting: which tensor storages exist, and how many bytes are live per device.

A storage is tracked from the first time the profiler sees it (an operator output, or an operator
input that existed before). Storages that existed before the block and belong to what the block
uses (a module it runs, an optimizer it steps, `track=`) count from the block's start instead:
`count_from_start` says which earlier rows must be raised by how much. A weak reference with a
callback on its `torch.UntypedStorage` tells us when it is freed, as
`torch.distributed._tools.mem_tracker` does: PyTorch keeps a storage's Python object alive exactly
as long as the C++ storage, so the callback fires at the real free. `UntypedStorage.resize_`
bypasses the dispatcher (FSDP2 frees and re-allocates its unsharded parameters with it): the
tracker wraps it for the block, as MemTracker's `_track_resize` does.
Nothing here holds a tensor or a storage strongly.
"""

from __future__ import annotations

import functools
import weakref
from itertools import count
from typing import Any

import torch
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

Tensor = torch.Tensor
# What `untyped_storage()` raises for tensors without storage (subclasses, sparse, nested; a lazy
# module's `UninitializedParameter` raises ValueError).
NO_STORAGE = (RuntimeError, NotImplementedError, TypeError, ValueError)
# The address of a tensor's StorageImpl (`untyped_storage()._cdata`) without making a Python
# storage object: half the cost on the hot path, where most storages are known already.
storage_address = getattr(torch._C, "_storage_address",
                          lambda tensor: tensor.untyped_storage()._cdata)
_wrapper_types: dict[type, bool] = {Tensor: False, torch.nn.Parameter: False}


def is_wrapper_subclass(tensor: Tensor) -> bool:
    """A traceable wrapper subclass (DTensor, Float8 and NF4 tensors): its own storage stands in
    at the logical size and holds no bytes; the tensors `__tensor_flatten__` names hold them (on
    a rank, a DTensor's `_local_tensor`). MemTracker counts such a tensor the same way. Decided
    once per type: the hot path asks it for every Parameter."""
    cls = type(tensor)
    known = _wrapper_types.get(cls)
    if known is None:
        known = _wrapper_types[cls] = is_traceable_wrapper_subclass(tensor)
    return known


class _StorageRef(weakref.ref):
    """Weak reference to a storage that remembers what it needs to account for the free."""

    __slots__ = ("address", "storage_id", "nbytes", "device", "created_in_block", "rows_before",
                 "from_start")


class StorageTracker:
    """Live and peak bytes of the storages seen, per device, updated as storages are freed."""

    def __init__(self, rows: list) -> None:
        self.rows = rows  # the recorder's finished rows: their count dates each first sight
        self.refs: dict[int, _StorageRef] = {}  # StorageImpl address -> weak ref (while alive)
        self._ids = count()
        self.live: dict[torch.device, int] = {}
        self.peak: dict[torch.device, int] = {}
        self._resize: Any = None  # torch.UntypedStorage.resize_ as it was before watch_resizes

    def watch_resizes(self) -> None:
        """Wrap `torch.UntypedStorage.resize_` until `stop`, so that each resize is accounted."""
        resize, tracker = torch.UntypedStorage.resize_, self

        @functools.wraps(resize)
        def resize_(storage: torch.UntypedStorage, size: int) -> Any:
            out = resize(storage, size)
            tracker.resized(storage)
            return out

        self._resize = resize
        torch.UntypedStorage.resize_ = resize_  # type: ignore[method-assign]

    def _on_free(self, ref: _StorageRef) -> None:
        if self.refs.get(ref.address) is ref:
            del self.refs[ref.address]
        self.live[ref.device] -= ref.nbytes

    def add(self, storage: torch.UntypedStorage, address: int, created: bool) -> _StorageRef:
        ref = _StorageRef(storage, self._on_free)  # not kept on self: that would be a cycle
        ref.address = address
        ref.storage_id = next(self._ids)
        ref.nbytes = nbytes = storage.nbytes()
        ref.device = device = storage.device
        ref.created_in_block = created
        ref.rows_before = len(self.rows)
        ref.from_start = False
        self.refs[address] = ref
        self._grow(device, nbytes)
        return ref

    def _grow(self, device: torch.device, nbytes: int) -> None:
        live = self.live.get(device, 0) + nbytes
        self.live[device] = live
        if live > self.peak.get(device, 0):
            self.peak[device] = live

    def resized(self, storage: torch.UntypedStorage) -> None:
        """`storage.resize_` changed a tracked storage's size (FSDP2 frees and re-allocates its
        unsharded parameters so): its bytes count at the new size from now on."""
        ref = self.refs.get(storage._cdata)
        if ref is None:
            return
        nbytes = storage.nbytes()
        if nbytes == ref.nbytes:
            return
        change = nbytes - ref.nbytes  # negative when freed
        ref.nbytes = nbytes
        self._grow(ref.device, change)

    def lookup(self, tensor: Tensor) -> tuple[_StorageRef | None, torch.UntypedStorage | None]:
        """(its record, None) for a storage tracked already, (None, the storage) for one not
        seen yet, (None, None) for a tensor without storage. The address comes first: no Python
        storage object for a known one. (`Recorder.on_op` inlines the same steps.)"""
        try:
            ref = self.refs.get(storage_address(tensor))
            return ref, None if ref is not None else tensor.untyped_storage()
        except NO_STORAGE:  # also where only `untyped_storage` says so (__torch_function__)
            return None, None

    def track(self, tensor: torch.Tensor, created: bool) -> _StorageRef | None:
        """The record of `tensor`'s storage, tracking it if new (None: it has no storage). A
        wrapper subclass's inner tensors are all tracked; the record is its largest one's."""
        if type(tensor) is not Tensor and is_wrapper_subclass(tensor):
            refs = [self.track(inner, created) for inner in plain_tensors([tensor])]
            return max((r for r in refs if r is not None), key=lambda r: r.nbytes, default=None)
        ref, storage = self.lookup(tensor)
        if storage is None:
            return ref
        return self.add(storage, storage._cdata, created)

    def track_all(self, tensors: list[torch.Tensor], created: bool) -> int:
        """Track each tensor's storage; the bytes of those not seen before."""
        new_bytes = 0
        for tensor in plain_tensors(tensors):
            _, storage = self.lookup(tensor)
            if storage is not None:
                new_bytes += self.add(storage, storage._cdata, created).nbytes
        return new_bytes

    def track_output(self, out: Any) -> int:
        """Track what an operator returned (a tensor, or a list/tuple of them): the bytes of the
        storages not seen before. The single-tensor case, by far the most common, is inlined."""
        if isinstance(out, Tensor):
            if type(out) is not Tensor and is_wrapper_subclass(out):
                return self.track_all([out], True)
            _, storage = self.lookup(out)
            return 0 if storage is None else self.add(storage, storage._cdata, True).nbytes
        if isinstance(out, (tuple, list)):
            return self.track_all(tensors_in(out), True)
        return 0

    def count_from_start(self, tensors: list[Tensor]) -> list[tuple[int, torch.device, int]]:
        """Count these storages, which existed before the block, from its start: each one not
        seen yet is tracked now, and one seen first as an operator input is backdated. Returns
        (rows before the first sight, device, bytes) for each storage backdated, so that the
        caller raises the live and peak bytes of those earlier rows."""
        raised = []
        rows_now = len(self.rows)
        for tensor in plain_tensors(tensors):
            ref, storage = self.lookup(tensor)
            if ref is None and storage is None:
                continue  # no storage
            if ref is None:
                address = storage._cdata
                # every moment before now lacked it: the peak so far rises by its size too
                nbytes, device = storage.nbytes(), storage.device
                self.peak[device] = self.peak.get(device, 0) + nbytes
                ref = self.add(storage, address, False)
            elif ref.created_in_block or ref.from_start or ref.rows_before == 0:
                ref.from_start = True
                continue
            ref.from_start = True
            raised.append((min(ref.rows_before, rows_now), ref.device, ref.nbytes))
        return raised

    def stop(self) -> None:
        """Forget every storage: drops the weak references, so no callback fires later; puts
        `resize_` back."""
        self.refs.clear()
        if self._resize is not None:
            torch.UntypedStorage.resize_ = self._resize  # type: ignore[method-assign]
            self._resize = None


def plain_tensors(tensors: list[Tensor]) -> list[Tensor]:
    """`tensors`, each wrapper subclass replaced by the tensors inside it (recursively)."""
    if all(type(t) is Tensor for t in tensors):
        return tensors
    plain = []
    for tensor in tensors:
        if type(tensor) is not Tensor and is_wrapper_subclass(tensor):
            names, _ = tensor.__tensor_flatten__()  # type: ignore[attr-defined]
            inner = (getattr(tensor, name) for name in names)  # may name opaque objects too
            plain.extend(plain_tensors([t for t in inner if isinstance(t, Tensor)]))
        else:
            plain.append(tensor)
    return plain


def tensors_in(values: Any) -> list[Tensor]:
    """The tensors among `values` and inside the lists/tuples among them (one level)."""
    found = []
    for value in values:
        if isinstance(value, Tensor):
            found.append(value)
        elif isinstance(value, (list, tuple)):
            found.extend(v for v in value if isinstance(v, Tensor))
    return found


def nested_tensors_in(value: Any) -> list[Tensor]:
    """The tensors at any depth of nested lists, tuples and dicts (args, kwargs, outputs): for
    the paths that run once per module call or collective, not for every op."""
    found, stack = [], [value]
    while stack:
        item = stack.pop()
        if isinstance(item, Tensor):
            found.append(item)
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
    return found


def storage_of(tensor: Tensor) -> torch.UntypedStorage | None:
    """`tensor`'s storage, None for a tensor without one (see `NO_STORAGE`)."""
    try:
        return tensor.untyped_storage()
    except NO_STORAGE:
        return None


def held_tensors(objects: Any) -> list[Tensor]:
    """The tensors an object holds: a module's parameters, buffers and gradients; an optimizer's
    parameters, gradients and state; tensors (with their gradients) nested in lists, tuples,
    dicts."""
    tensors: list[Tensor] = []
    stack = list(objects)
    while stack:
        obj = stack.pop()
        if isinstance(obj, Tensor):
            tensors.append(obj)
            # a non-leaf has a .grad only after retain_grad(); reading it otherwise warns
            if (obj.is_leaf or obj.retains_grad) and obj.grad is not None:
                tensors.append(obj.grad)
        elif isinstance(obj, torch.nn.Module):
            stack.extend(obj.parameters())
            stack.extend(obj.buffers())
        elif isinstance(obj, torch.optim.Optimizer):
            stack.extend(obj.state.values())
            stack.extend(group["params"] for group in obj.param_groups)
        elif isinstance(obj, dict):
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple)):
            stack.extend(obj)
    return tensors
