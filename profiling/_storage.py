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
        self._refs: dict[int, _StorageRef] = {}  # StorageImpl address -> weak ref (while alive)
        self._next_id = 0
        self.live: dict[torch.device, int] = {}
        self.peak: dict[torch.device, int] = {}

    def _on_free(self, ref: _StorageRef) -> None:
        if self._refs.get(ref.address) is ref:
            del self._refs[ref.address]
        self.live[ref.device] -= ref.nbytes

    def track(self, tensor: torch.Tensor, created: bool) -> tuple[_StorageRef | None, bool]:
        """The record of `tensor`'s storage, tracking it if new; also whether it was new."""
        try:
            storage = tensor.untyped_storage()
        except (RuntimeError, NotImplementedError, TypeError):
            return None, False  # tensors without storage (subclasses, sparse, nested)
        address = storage._cdata
        ref = self._refs.get(address)
        if ref is not None:
            return ref, False
        ref = _StorageRef(storage, self._on_free)
        ref.address = address
        ref.storage_id = self._next_id
        self._next_id += 1
        ref.nbytes = storage.nbytes()
        device = storage.device
        ref.device = device
        ref.created_in_block = created
        self._refs[address] = ref
        live = self.live.get(device, 0) + ref.nbytes
        self.live[device] = live
        if live > self.peak.get(device, 0):
            self.peak[device] = live
        return ref, True

    def stop(self) -> None:
        """Forget every storage: drops the weak references, so no callback fires later."""
        self._refs.clear()
