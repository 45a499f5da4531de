"""Logical memory accounting: which tensor storages exist, and how many bytes are live per device.

A storage is tracked from the first time the profiler sees it (an operator output, or an operator
input that existed before). A weak reference with a callback on its `torch.UntypedStorage` tells
us when it is freed, as `torch.distributed._tools.mem_tracker` does: PyTorch keeps a storage's
Python object alive exactly as long as the C++ storage, so the callback fires at the real free.
Nothing here holds a tensor or a storage strongly.
"""

from __future__ import annotations

import weakref

import torch


class _StorageRef(weakref.ref):
    """Weak reference to a storage that remembers what it needs to account for the free."""

    __slots__ = ("address", "storage_id", "nbytes", "device", "created_in_block")


class StorageTracker:
    """Live and peak bytes of the storages seen, per device, updated as storages are freed."""

    def __init__(self) -> None:
        self.refs: dict[int, _StorageRef] = {}  # StorageImpl address -> weak ref (while alive)
        self._next_id = 0
        self.live: dict[torch.device, int] = {}
        self.peak: dict[torch.device, int] = {}

    def _on_free(self, ref: _StorageRef) -> None:
        if self.refs.get(ref.address) is ref:
            del self.refs[ref.address]
        self.live[ref.device] -= ref.nbytes

    def add(self, storage: torch.UntypedStorage, address: int, created: bool) -> _StorageRef:
        ref = _StorageRef(storage, self._on_free)  # not kept on self: that would be a cycle
        ref.address = address
        ref.storage_id = self._next_id
        self._next_id += 1
        ref.nbytes = nbytes = storage.nbytes()
        ref.device = device = storage.device
        ref.created_in_block = created
        self.refs[address] = ref
        live = self.live.get(device, 0) + nbytes
        self.live[device] = live
        if live > self.peak.get(device, 0):
            self.peak[device] = live
        return ref

    def track(self, tensor: torch.Tensor, created: bool) -> _StorageRef | None:
        """The record of `tensor`'s storage, tracking it if new (None: it has no storage)."""
        try:
            storage = tensor.untyped_storage()
        except (RuntimeError, NotImplementedError, TypeError):
            return None  # tensors without storage (subclasses, sparse, nested)
        address = storage._cdata
        ref = self.refs.get(address)
        return ref if ref is not None else self.add(storage, address, created)

    def track_all(self, tensors: list[torch.Tensor], created: bool) -> int:
        """Track each tensor's storage; the bytes of those not seen before."""
        refs, new_bytes = self.refs, 0
        for tensor in tensors:
            try:
                storage = tensor.untyped_storage()
            except (RuntimeError, NotImplementedError, TypeError):
                continue
            address = storage._cdata
            if address not in refs:
                new_bytes += self.add(storage, address, created).nbytes
        return new_bytes

    def stop(self) -> None:
        """Forget every storage: drops the weak references, so no callback fires later."""
        self.refs.clear()
