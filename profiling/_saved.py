"""Tensors saved for backward, through `torch.autograd.graph.saved_tensors_hooks`.

The pack hook wraps each saved tensor in a `_Packed` object that the autograd graph then owns.
When the graph lets go of a saved tensor (a backward pass without `retain_graph`, or the graph
being dropped), the wrapper dies and tells the ledger: that is how `held_bytes` and the saved
tensor lifetimes are exact. The wrapper holds a *detached* alias: returning the tensor itself
would make an output saved by its own node a reference cycle through C++ that never frees.
"""

from __future__ import annotations

import re
import weakref
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
    original's version counter), the version at save time, the ledger entry, and the origin
    torch's version-check error names (`_Origin`; None for a leaf)."""

    __slots__ = ("tensor", "version", "entry", "ledger", "origin")

    def __init__(self, tensor: torch.Tensor, entry: SavedEntry, ledger: SavedLedger,
                 origin: _Origin | None) -> None:
        self.tensor = tensor
        self.version = tensor._version
        self.entry = entry
        self.ledger = ledger
        self.origin = origin

    def __del__(self) -> None:
        self.ledger.release(self.entry)


class _Origin:
    """Where a saved non-leaf tensor came from, for the error torch itself would raise: its
    node's sequence number (equal to the saving node's when the tensor is that node's output)
    and output index, whether it is a view, and a weak reference to it (a strong one would make
    an output saved by its own node a reference cycle through C++)."""

    __slots__ = ("node_seq", "output_nr", "is_view", "tensor_ref")

    def __init__(self, tensor: torch.Tensor, grad_fn: torch.autograd.graph.Node) -> None:
        self.node_seq = grad_fn._sequence_nr()
        self.output_nr = tensor.output_nr
        self.is_view = tensor._is_view()
        self.tensor_ref = weakref.ref(tensor)

    def node_name(self) -> str:
        """The node torch's message names, as torch finds it when unpacking without hooks: the
        saving node for its own output, else the original tensor's grad_fn now (a view whose
        base was modified in place gets a regenerated `AsStridedBackward0`)."""
        node = torch._C._current_autograd_node()
        if node is not None and node._sequence_nr() == self.node_seq:
            return node.name()
        original = self.tensor_ref()
        if original is not None and original.grad_fn is not None:
            return original.grad_fn.name()
        return "AsStridedBackward0" if self.is_view else (node.name() if node else "")


def modified_in_place_error(packed: _Packed) -> RuntimeError:
    """torch's own error for a saved tensor modified in place (torch/csrc/autograd/
    saved_variable.cpp), word for word: autograd skips its version check once saved-tensor
    hooks are set, so the unpack hook raises it instead."""
    tensor, origin = packed.tensor, packed.origin
    text = ("one of the variables needed for gradient computation has been modified by an "
            f"inplace operation: [{tensor.type()} {list(tensor.shape)}]")
    if origin is not None:
        name = re.sub(r"Backward\d*$", "", origin.node_name())
        text += f", which is output {origin.output_nr} of {name},"
    text += f" is at version {tensor._version}; expected version {packed.version} instead."
    if torch.is_anomaly_enabled():
        text += (" Hint: the backtrace further above shows the operation that failed to compute "
                 "its gradient. The variable in question was changed in there or anywhere "
                 "later. Good luck!")
    else:
        text += (" Hint: enable anomaly detection to find the operation that failed to compute "
                 "its gradient, with torch.autograd.set_detect_anomaly(True, check_nan=False).")
    return RuntimeError(text)


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
        grad_fn = tensor.grad_fn
        return _Packed(alias, entry, self, None if grad_fn is None else _Origin(tensor, grad_fn))

    def unpack(self, packed: object) -> torch.Tensor:
        if type(packed) is not _Packed:
            return packed  # type: ignore[return-value]
        if self.capturing is not None:  # the node saved it, modified since or not
            self.capturing.append(packed.entry)
        tensor = packed.tensor
        if tensor._version != packed.version:
            # autograd skips its own version check once saved-tensor hooks are set: without
            # this one, profiling would turn torch's error into silently wrong gradients
            raise modified_in_place_error(packed)
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


def drop_unpack_frame(error: BaseException) -> None:
    """Cut the unpack hook's frame off the traceback of the version-check error it raised, so
    that the error ends in torch's own frames, as it does without the profiler."""
    tb, before = error.__traceback__, None
    while tb is not None and tb.tb_next is not None:
        tb, before = tb.tb_next, tb
    if before is not None and tb.tb_frame.f_code is SavedLedger.unpack.__code__:
        before.tb_next = None
