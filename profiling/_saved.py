"""Tensors saved for backward, through `torch.autograd.graph.saved_tensors_hooks`.

The pack hook wraps each saved tensor in a `_Packed` object that the autograd graph then owns.
When the graph lets go of a saved tensor (a backward pass without `retain_graph`, or the graph
being dropped), the wrapper dies and tells the ledger: that is how `held_bytes` and the saved
tensor lifetimes are exact. The wrapper holds a *detached* alias: returning the tensor itself
would make an output saved by its own node a reference cycle through C++ that never frees.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ._storage import StorageTracker


class SavedEntry:
    """One saved storage: its size, who holds it, and when the graph released it."""

    __slots__ = (
        "storage_id", "nbytes", "device", "new", "pack_seq", "holds",
        "freed_seq", "freed_by", "freed_phase",
    )

    def __init__(self, storage_id: int, nbytes: int, device: torch.device, new: bool,
                 pack_seq: int) -> None:
        self.storage_id = storage_id
        self.nbytes = nbytes
        self.device = device
        self.new = new
        self.pack_seq = pack_seq
        self.holds = 0
        self.freed_seq: int | None = None
        self.freed_by = ""
        self.freed_phase = ""


class _Packed:
    """What the autograd graph stores for one saved tensor: a detached alias (it shares the
    original's version counter), the version at save time, and the ledger entry."""

    __slots__ = ("tensor", "version", "entry", "ledger")

    def __init__(self, tensor: torch.Tensor, entry: SavedEntry, ledger: SavedLedger) -> None:
        self.tensor = tensor
        self.version = tensor._version
        self.entry = entry
        self.ledger = ledger

    def __del__(self) -> None:
        self.ledger.release(self.entry)


ReleaseContext = Callable[[], tuple[int, str, str]]


def context_outside_rows(seq: int) -> tuple[int, str, str]:
    """(seq, backward node, phase) for a release outside any open row: during a backward pass
    the running node, else "after" the last row."""
    if torch._C._current_graph_task_id() != -1:
        node = torch._C._current_autograd_node()
        return seq, type(node).__name__ if node is not None else "", "backward"
    return seq, "", "after"


class SavedLedger:
    """Every storage saved for backward while profiling, and the bytes graphs still hold."""

    def __init__(self, storages: StorageTracker, current_seq: Callable[[], int],
                 release_context: ReleaseContext) -> None:
        self.storages = storages
        self.entries: dict[int, SavedEntry] = {}  # storage_id -> entry
        self.held_bytes = 0
        self.capturing: list[SavedEntry] | None = None
        self._current_seq = current_seq
        self._release_context = release_context
        self._final_seq: int | None = None

    def close(self, final_seq: int) -> None:
        """The block ended: later releases (a graph freed after it) come after its last row.
        Drops the callbacks into the recorder, so that no reference cycle keeps the finished
        profile for the garbage collector to find: reference counting frees it."""
        self._final_seq = final_seq
        self._current_seq = self._release_context = None  # type: ignore[assignment]

    def pack(self, tensor: torch.Tensor) -> object:
        ref = self.storages.track(tensor, created=False)
        if ref is None:
            return tensor  # no storage to account for: save as autograd would
        entry = self.entries.get(ref.storage_id)
        if entry is None:
            # Activations are new; leaves (parameters, inputs) and older storages are not.
            new = ref.created_in_block and not (tensor.is_leaf and tensor.requires_grad)
            entry = SavedEntry(ref.storage_id, ref.nbytes, ref.device, new,
                               self._current_seq())
            self.entries[ref.storage_id] = entry
        if entry.holds == 0:
            self.held_bytes += entry.nbytes
            entry.freed_seq, entry.freed_by, entry.freed_phase = None, "", ""
        entry.holds += 1
        with torch._C._DisableTorchDispatch():
            alias = tensor.detach()
        return _Packed(alias, entry, self)

    def unpack(self, packed: object) -> torch.Tensor:
        if type(packed) is not _Packed:
            return packed  # type: ignore[return-value]
        if self.capturing is not None:  # the node saved it, modified since or not
            self.capturing.append(packed.entry)
        tensor = packed.tensor
        if tensor._version != packed.version:
            # autograd skips its own version check once saved-tensor hooks are set: without
            # this one, profiling would turn torch's error into silently wrong gradients
            raise RuntimeError(
                "one of the variables needed for gradient computation has been modified by an "
                f"inplace operation: [{tensor.type()} {list(tensor.shape)}] is at version "
                f"{tensor._version}; expected version {packed.version} instead.")
        return tensor

    def release(self, entry: SavedEntry) -> None:
        entry.holds -= 1
        if entry.holds == 0:
            self.held_bytes -= entry.nbytes
            entry.freed_seq, entry.freed_by, entry.freed_phase = (
                self._release_context() if self._final_seq is None
                else context_outside_rows(self._final_seq))

    def hooks(self) -> torch.autograd.graph.saved_tensors_hooks:
        return torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack)
