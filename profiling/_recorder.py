"""Records one row per operator call: forward ops, custom autograd.Functions, backward nodes.

- Forward aten ops: a `TorchDispatchMode`. After each op, a weak reference to its outputs lets
  the next event find `output.grad_fn`, the node the op created, and what that node saved.
- Custom `autograd.Function`s: `Function.apply` is wrapped for the duration of the block (and
  restored after), so a Function's forward is one row under its class name, with the ops inside
  it (e.g. a `torchext::...` custom op) folded into that row. Nothing public in PyTorch marks
  where a Function's forward starts; the node it creates only shows up after it returned.
- Backward nodes: a pre-hook on every node found. A node's row runs from its pre-hook to the
  next node's pre-hook (or the end of the backward pass, via `queue_callback`). Post-hooks are
  not used on purpose: a node with post-hooks keeps its incoming gradients alive until the hooks
  ran, which would change the memory being measured.
- Phases: "backward" while autograd's engine runs (in any thread), else "optimizer" between
  the profiler markers `Optimizer.step` wraps every step in (`record_function`, whose exit
  also runs when the step raises, and which nest), else "forward".
- Threads: the dispatch mode and saved-tensor hooks are thread-local (autograd hands them to
  its worker threads for the backward passes this thread starts); the global hooks (modules,
  `Function.apply`, optimizer steps) ignore calls from other threads. On CUDA, where the
  allocator is process-wide, `_threads` tells when another thread allocated during the block.
"""

from __future__ import annotations

import threading
import time
import weakref
from functools import partial
from typing import Any

import torch
from torch.autograd.function import Function
from torch.optim.optimizer import register_optimizer_step_pre_hook

from ._compiled import CompiledGraphs
from ._dispatch import OpDispatcher, op_info
from ._graph import NodeRegistry, is_backward_running
from ._modules import ModuleStack
from ._saved import SavedLedger, context_outside_rows
from ._storage import (
    NO_STORAGE,
    StorageTracker,
    held_tensors,
    is_wrapper_subclass,
    storage_address,
    tensors_in,
)
from ._threads import ForeignAllocations

Tensor = torch.Tensor
_perf_counter = time.perf_counter
_graph_task_id = torch._C._current_graph_task_id
_grad_enabled = torch.is_grad_enabled
_queue_engine_callback = torch.autograd.Variable._execution_engine.queue_callback
_thread_id = threading.get_ident
_MARKER_ENTER = ("profiler::_record_function_enter_new", "profiler::_record_function_enter")
_MARKER_EXIT = "profiler::_record_function_exit"
_STEP_MARKER = "Optimizer.step#"  # the name `Optimizer.profile_hook_step` gives every step
_OP_INFO: dict[int, tuple[str, Any, Any]] = {}  # id(func) -> (*op_info(func), func): per process

# Row fields, in order (input_shapes holds raw shape tuples until the DataFrame is built).
ROW_FIELDS = ("seq", "op", "phase", "module", "input_shapes", "dtype", "device", "output_bytes",
              "live_bytes", "peak_bytes", "time_ms", "t_ms")


def shapes_of(tensors: list[Tensor]) -> list[tuple]:
    """Each tensor's shape; a strided nested tensor, which has none, by its components' count."""
    shapes: list[tuple] = []
    for tensor in tensors:
        try:
            shapes.append(tensor.shape)
        except RuntimeError:
            shapes.append((f"nested({tensor.size(0)})",))
    return shapes


def _outputs(out: Any) -> list[Tensor]:
    if isinstance(out, Tensor):
        return [out]
    return tensors_in(out) if isinstance(out, (tuple, list)) else []


class _OpenRow:
    """A row being measured while other ops run inside it (a Function or a backward node)."""

    __slots__ = ("seq", "op", "phase", "module", "shapes", "dtype", "device", "output_bytes",
                 "start", "peak", "kind")

    def __init__(self, seq: int, op: str, phase: str, module: str, kind: str,
                 shapes: list[tuple[int, ...]], peak: int) -> None:
        self.seq, self.op, self.phase, self.module, self.kind = seq, op, phase, module, kind
        self.shapes = shapes
        self.dtype = self.device = None
        self.output_bytes = 0
        self.peak = peak  # live bytes at the start; ops inside raise it
        self.start = _perf_counter()


class Recorder:
    """All the hooks of one profile, and the rows they produce."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.rows: list[tuple] = []
        self.thread = _thread_id()
        self.storages = StorageTracker(self.rows)
        self.ledger = SavedLedger(self.storages, self.current_seq, self.release_context)
        self.registry = NodeRegistry(self.ledger, self._hook_node)
        self.modules = ModuleStack(self.count_from_start)
        self._markers: list[bool] = []  # record_function markers open (an optimizer step?)
        self._steps = 0  # optimizer steps running (nested steps count each)
        self._stepped: weakref.WeakSet = weakref.WeakSet()  # optimizers that stepped here
        self.foreign = ForeignAllocations(device, self.storages, self.rows)  # CUDA only
        self.seq = -1
        self.started = self.stopped = False
        self.t0 = 0.0
        self._open: _OpenRow | None = None
        self._pending: tuple[int, str, weakref.ref | list[weakref.ref]] | None = None
        self._handles: list[Any] = []
        self.compiled = CompiledGraphs(self)
        self._mode = OpDispatcher(self.on_op, self.compiled.ran_eagerly)
        self._saved_hooks = self.ledger.hooks()
        self._original_apply: Any = None
        self._graph_task = -1

    # ------------------------------------------------------------------ lifecycle
    def count_from_start(self, *objects: Any) -> None:
        """Count the storages these objects hold (see `held_tensors`), which existed before the
        block, from its start: rows recorded before they were seen are raised by their bytes."""
        self._raise_earlier_rows(self.storages.count_from_start(held_tensors(objects)))

    def _raise_earlier_rows(self, raised: list[tuple[int, torch.device, int]]) -> None:
        """Add each backdated storage's bytes to the live and peak bytes of the rows recorded
        before it was seen (logical accounting only: CUDA's allocator counted it all along)."""
        raised = [(before, nbytes) for before, device, nbytes in raised
                  if device == self.device and before > 0]
        if self.cuda or not raised:
            return
        rows, rows_now = self.rows, len(self.rows)
        extra = [0] * (rows_now + 1)  # extra[i]: bytes to add to rows[i], as a suffix sum
        for before, nbytes in raised:
            extra[before - 1] += nbytes
            if before == rows_now and self._open is not None:
                self._open.peak += nbytes  # open since before the storage was counted
        for index in range(rows_now - 1, -1, -1):
            extra[index] += extra[index + 1]
            if extra[index]:
                row = rows[index]
                rows[index] = row[:8] + (row[8] + extra[index], row[9] + extra[index]) + row[10:]
        peak = max(row[9] for row in rows[:max(before for before, _ in raised)])
        storages = self.storages
        if peak > storages.peak.get(self.device, 0):
            storages.peak[self.device] = peak

    def _optimizer_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if _thread_id() != self.thread:
            return
        if optimizer not in self._stepped:  # its first step here: what it holds is older
            self._stepped.add(optimizer)
            self.count_from_start(optimizer)
        else:  # state an earlier step made without an op the profiler saw (Adam's `step`)
            self.storages.track_all(held_tensors((optimizer,)), True)

    def start(self, track: tuple = ()) -> None:
        self.t0 = time.perf_counter()
        self.started = True
        self.thread = _thread_id()
        if self.cuda:
            self.foreign.start()
        self.count_from_start(*track)
        self.storages.watch_resizes()
        self.modules.start(self.thread)
        self._handles.append(register_optimizer_step_pre_hook(
            self._optimizer_step))
        self._original_apply = Function.__dict__["apply"]
        recorder, original = self, self._original_apply.__func__

        def apply(cls, *args, **kwargs):  # noqa: ANN001, ANN202
            if _thread_id() != recorder.thread:  # another thread's Function: not profiled
                return original(cls, *args, **kwargs)
            row = recorder.enter_function(cls, args)
            outputs = None
            try:
                outputs = original(cls, *args, **kwargs)
            finally:
                recorder.exit_function(row, outputs)
            return outputs

        apply.__wrapped__ = original  # type: ignore[attr-defined]
        Function.apply = classmethod(apply)  # type: ignore[method-assign, assignment]
        self.compiled.start()
        self._saved_hooks.__enter__()
        self._mode.__enter__()

    def stop(self) -> None:
        """Remove every hook; close what is open. Safe to call after a failure mid-block."""
        errors = []
        for undo in (lambda: self._mode.__exit__(None, None, None),
                     lambda: self._saved_hooks.__exit__(None, None, None),
                     self.compiled.stop, self.modules.stop):
            try:
                undo()
            except Exception as error:  # noqa: BLE001 - keep removing the rest
                errors.append(error)
        Function.apply = self._original_apply  # type: ignore[method-assign]
        self.stopped = True  # from here on no hook gets registered
        try:
            self.discover_pending()  # the last op's node: tagged, not hooked
            self._close_open_row()
        finally:
            for handle in self._handles:
                handle.remove()
            self._handles.clear()
            self.storages.stop()
            self._drop_back_references()
        if errors:
            raise errors[0]

    def _drop_back_references(self) -> None:
        """While the block runs, the helpers call back into the recorder (reference cycles).
        Dropping those callbacks lets reference counting free a finished profile at once,
        instead of leaving its rows for the garbage collector to walk."""
        self.ledger.close(self.current_seq())
        self.registry.on_new_node = None
        self._mode = None  # type: ignore[assignment]
        self.compiled.recorder = None

    # ------------------------------------------------------------------ shared state
    def current_seq(self) -> int:
        return max(self.seq, 0)

    def release_context(self) -> tuple[int, str, str]:
        """(seq, backward node, phase) for a saved tensor the graph releases now."""
        if self._open is not None and self._open.kind == "node" and not self.stopped:
            return self._open.seq, self._open.op, "backward"
        return context_outside_rows(self.current_seq())

    def _live(self) -> int:
        if self.cuda:
            return torch.cuda.memory_allocated(self.device)
        return self.storages.live.get(self.device, 0)

    def _reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)

    # ------------------------------------------------------------------ forward ops
    def on_op(self, func: Any, args: tuple, kwargs: dict) -> Any:
        # The hot path: runs for every aten op, so it binds locals, inlines the common cases
        # (plain tensors, known storages) and calls little.
        if self._pending is not None:
            self.discover_pending()
        op = _OP_INFO.get(id(func))  # OpOverloads live forever; hashing them is slow
        if op is None:
            op = _OP_INFO[id(func)] = (*op_info(func), func)  # holding func keeps its id unique
        name, call, _ = op
        if not name:  # profiler markers: no row
            return self._on_marker(func, call, args, kwargs)
        storages = self.storages
        open_row = self._open
        if open_row is not None and open_row.kind == "node":
            # inside a backward node: its inputs are known already; count what it allocates
            out = call(*args, **kwargs)
            open_row.output_bytes += storages.track_output(out)
            live = (torch.cuda.memory_allocated(self.device) if self.cuda
                    else storages.live.get(self.device, 0))
            if live > open_row.peak:
                open_row.peak = live
            return out
        inputs = []
        for value in args:
            if isinstance(value, Tensor):
                inputs.append(value)
            elif isinstance(value, (list, tuple)):
                inputs.extend(tensors_in(value))
        if kwargs:
            inputs.extend(tensors_in(kwargs.values()))
        refs = storages.refs
        for tensor in inputs:
            if type(tensor) is not Tensor and is_wrapper_subclass(tensor):
                storages.track_all([tensor], False)
                continue
            try:
                if storage_address(tensor) in refs:
                    continue
                storage = tensor.untyped_storage()
            except NO_STORAGE:
                continue
            storages.add(storage, storage._cdata, False)
        if open_row is not None:  # folded into a custom Function's row
            out = call(*args, **kwargs)
            open_row.output_bytes += storages.track_output(out)
            live = self._live()
            if live > open_row.peak:
                open_row.peak = live
            return out
        self.seq = seq = self.seq + 1
        cuda = self.cuda
        if cuda:
            self.foreign.check(inputs)
            torch.cuda.reset_peak_memory_stats(self.device)
        start = _perf_counter()
        out = call(*args, **kwargs)
        end = _perf_counter()
        if isinstance(out, Tensor) and (type(out) is Tensor or not is_wrapper_subclass(out)):
            first, output_bytes = out, 0
            try:
                storage = None if storage_address(out) in refs else out.untyped_storage()
            except NO_STORAGE:
                storage = None
            if storage is not None:
                output_bytes = storages.add(storage, storage._cdata, True).nbytes
        else:
            outputs = _outputs(out)
            output_bytes = storages.track_all(outputs, True) if outputs else 0
            first = outputs[0] if outputs else None
        if cuda:
            live = torch.cuda.memory_allocated(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            live = peak = storages.live.get(self.device, 0)
        backward = _graph_task_id() != -1
        module = "" if backward else self.modules.current
        meta = first if first is not None else (inputs[0] if inputs else None)
        try:
            shapes = [t.shape for t in inputs]
        except RuntimeError:  # a strided nested tensor has no single shape
            shapes = shapes_of(inputs)
        self.rows.append((
            seq, name, "backward" if backward else "optimizer" if self._steps else "forward",
            module,
            shapes, None if meta is None else meta.dtype,
            None if meta is None else meta.device, output_bytes, live, peak,
            (end - start) * 1e3, (end - self.t0) * 1e3,
        ))
        if first is not None and not backward and _grad_enabled():
            for tensor in inputs:
                if tensor.requires_grad:  # the op may have created a node: find it next
                    self._pending = (seq, module, weakref.ref(first))
                    break
        return out

    def _on_marker(self, func: Any, call: Any, args: tuple, kwargs: dict) -> Any:
        """A `record_function` marker: those of `Optimizer.step` open and close its phase.
        `record_function` is a context manager, so its markers nest: a stack pairs each exit
        with its enter (the handles they pass are new Python objects each time)."""
        out = call(*args, **kwargs)
        name = getattr(func, "_name", "")
        if name in _MARKER_ENTER:
            step = bool(args) and isinstance(args[0], str) and args[0].startswith(_STEP_MARKER)
            self._markers.append(step)
            self._steps += step
        elif name.startswith(_MARKER_EXIT) and self._markers:  # not one entered before the block
            self._steps -= self._markers.pop()
        return out

    def other_threads_note(self) -> str:
        """What the report says about other threads' memory (see `_threads`)."""
        return self.foreign.note() if self.cuda else ""

    def discover_pending(self) -> None:
        """Find the node the last op (or Function) created, and what it saved."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        seq, module, refs = pending
        # one output (an op's first), or every output of a graph whose nodes were not attached
        # yet when it returned: the first with a node
        for ref in refs if type(refs) is list else (refs,):
            tensor = ref()
            node = None if tensor is None else tensor.grad_fn
            if node is not None:
                self.registry.discover(node, seq, module)
                return

    # ------------------------------------------------------------------ custom Functions
    def enter_function(self, cls: type, args: tuple) -> _OpenRow | None:
        if self.stopped:
            return None
        if self._pending is not None:
            self.discover_pending()
        if self._open is not None:
            return None  # a Function inside another Function or a backward node: folded
        self.seq += 1
        backward = is_backward_running()
        inputs = tensors_in(args)
        self.storages.track_all(inputs, False)
        if self.cuda:
            self.foreign.check(inputs)
        self._reset_peak()
        phase = "backward" if backward else "optimizer" if self._steps else "forward"
        row = _OpenRow(self.seq, cls.__name__, phase,
                       "" if backward else self.modules.current, "function",
                       shapes_of(inputs), self._live())
        self._open = row
        return row

    def exit_function(self, row: _OpenRow | None, outputs: Any) -> None:
        if row is None or self._open is not row:
            return  # closed by stop() already
        self._open = None
        tensors = tensors_in(outputs if isinstance(outputs, (tuple, list)) else (outputs,))
        if tensors:
            row.dtype, row.device = tensors[0].dtype, tensors[0].device
        self._finish(row)
        if tensors and row.phase != "backward" and torch.is_grad_enabled():
            # the first output with a node (an argmax or a mask returned first has none)
            first = next((t for t in tensors if t.grad_fn is not None), None)
            if first is not None:
                self._pending = (row.seq, row.module, weakref.ref(first))

    def _finish(self, row: _OpenRow) -> None:
        end = _perf_counter()
        live = self._live()
        peak = (torch.cuda.max_memory_allocated(self.device) if self.cuda
                else max(row.peak, live))
        self.rows.append((row.seq, row.op, row.phase, row.module, row.shapes, row.dtype,
                          row.device, row.output_bytes, live, peak, (end - row.start) * 1e3,
                          (end - self.t0) * 1e3))

    def _close_open_row(self) -> None:
        if self._open is not None:
            row, self._open = self._open, None
            self._finish(row)

    # ------------------------------------------------------------------ backward nodes
    def _hook_node(self, node: Any, node_id: int) -> None:
        self.compiled.name_node(node, self.registry.nodes[node_id])
        if not self.stopped:
            self._handles.append(node.register_prehook(partial(self.on_node, node_id)))

    def on_node(self, node_id: int, grad_outputs: tuple) -> None:
        if self._pending is not None:
            self.discover_pending()
        if self._open is not None and self._open.kind == "node":
            self._close_open_row()
        task = _graph_task_id()
        if task != self._graph_task:  # a backward pass starts: its last row closes at its end
            self._graph_task = task
            _queue_engine_callback(self._end_backward)
        record = self.registry.nodes[node_id]
        self.seq += 1
        if self.compiled.nodes:
            self.compiled.on_node_row(node_id, self.seq)
        self._reset_peak()
        row = self._open = _OpenRow(self.seq, record.name, "backward", record.module, "node",
                                    shapes_of([g for g in grad_outputs if g is not None]),
                                    self._live())
        for grad in grad_outputs:
            if grad is not None:
                row.dtype, row.device = grad.dtype, grad.device
                break

    def _end_backward(self) -> None:
        self._graph_task = -1
        if self._open is not None and self._open.kind == "node":
            self._close_open_row()
