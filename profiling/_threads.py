"""Memory of other threads in a CUDA profile: the caching allocator is process-wide.

A profile records the operators, modules and logical memory of its own thread only (see
`_recorder`). On CUDA, though, `live_bytes`/`peak_bytes` are the allocator's numbers, which
include every thread's tensors. What can be told is whether another thread allocated during the
block: between two of this thread's rows, this thread itself only frees memory, except for the
tensors it makes without an operator the profiler sees (`torch.tensor(data, device="cuda")`
copies its data before the op `lift_fresh` shows it), which turn up as new inputs of the next
op. Whatever else the allocator gained meanwhile was another thread's (or code that bypasses
PyTorch's dispatcher), and the report says so.
"""

from __future__ import annotations

import torch

from ._storage import NO_STORAGE, StorageTracker, plain_tensors

_ALLOCATOR_BLOCK = 512  # the caching allocator rounds every block up to a multiple of this


class ForeignAllocations:
    """Bytes the CUDA allocator gained between this thread's rows that were not this thread's."""

    def __init__(self, device: torch.device, storages: StorageTracker, rows: list) -> None:
        self.device = device
        self.storages = storages
        self.rows = rows  # the recorder's rows; each row's live bytes are at index 8
        self.bytes = 0
        self._start_live = 0

    def start(self) -> None:
        self._start_live = torch.cuda.memory_allocated(self.device)

    def check(self, inputs: list[torch.Tensor]) -> None:
        """Before an op's row opens: what was allocated since the last row, less the inputs
        seen for the first time now (made by this thread outside any op)."""
        before = self.rows[-1][8] if self.rows else self._start_live
        now = torch.cuda.memory_allocated(self.device)
        if now <= before:
            return
        rows_now, refs = len(self.rows), self.storages.refs
        fresh = {}
        for tensor in plain_tensors(inputs):
            try:
                ref = refs.get(tensor.untyped_storage()._cdata)
            except NO_STORAGE:
                continue
            if ref is not None and ref.rows_before == rows_now and not ref.created_in_block \
                    and not ref.from_start and ref.device == self.device:
                fresh[ref.address] = -(-ref.nbytes // _ALLOCATOR_BLOCK) * _ALLOCATOR_BLOCK
        now -= sum(fresh.values())
        if now > before:
            self.bytes += now - before

    def note(self) -> str:
        """A sentence for the report when live/peak bytes include memory this thread did not
        allocate ("" when they do not)."""
        if not self.bytes:
            return ""
        return (f"{self.bytes:,} bytes were allocated on {self.device} between this "
                "thread's operators, by another thread (or by code that bypasses PyTorch's "
                "dispatcher): CUDA's allocator is process-wide, so live and peak bytes include "
                "them")
