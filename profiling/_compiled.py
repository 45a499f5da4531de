"""torch.compile'd code under the profiler: it runs compiled, and each compiled graph call is a row.

How, on torch >= 2.9:
- The profiler's dispatch mode answers `ignore_compile_internals()` with True, so Dynamo no
  longer skips every frame while it is active: it compiles with the dispatch modes off and runs
  the compiled code with them on (torch's `TorchDispatchMode.ignore_compile_internals`).
- While Dynamo compiles inside the block, the profiler's global hooks (module forward hooks,
  the optimizer step hook, the `Function.apply` wrapper) are taken out, so Dynamo traces the
  program it would trace outside the block: the same graphs and guards, no recompile. Dynamo
  does not guard on global module hooks (`skip_nnmodule_hook_guards`), so code compiled before
  the block runs unchanged inside it.
- Dynamo never compiles the profiler's own frames: each code object of the package is marked
  "skip it and what it calls" (`set_code_exec_strategy`), so a hook that fires in the eager part
  of a compiled function (after a graph break) is not traced.
- Rows: AOTAutograd runs each compiled graph of a training step as an `autograd.Function`, a
  `CompiledFunction` class per graph, whose `forward` and `backward` autograd looks up on the
  class at every call. For the block, the `forward` and `backward` of every live such class (and
  of those compiled inside the block) are wrapped: a forward row per compiled graph call, named
  `CompiledFunction[<function or module> <compile id>]` (Dynamo's frame/recompile id, as
  `TORCH_LOGS` and torch.profiler print it; a graph break starts a new frame id), and the node's
  row `CompiledFunctionBackward[...]`. Its saved tensors go through `ctx.save_for_backward`, so
  the profiler's saved-tensor hooks count them, each storage once, as for eager ops.
- On CUDA, and for Inductor's graphs anywhere, a compiled graph runs as it does without the
  profiler: with the profiler's dispatch mode popped while it runs (when that mode is the
  innermost one), so its extern kernels (`mm`, `addmm`, ...) take neither a Python call nor a
  dispatch mode's out-of-place paths. On CUDA its row's peak is the allocator's, which sees
  every buffer. On the CPU an `aot_eager` graph runs with the mode on (the storages it sees are
  the memory there: its peak is exact); an Inductor graph's scratch buffers are out of sight
  there anyway, so its peak is a lower bound and the profile says so
  (`meta["peak_is_lower_bound"]`, the compile note).
- A graph that needs no gradient (inputs without requires_grad, `torch.no_grad()`) is run by
  AOTAutograd without `CompiledFunction`. Inductor runs it through `CompiledFxGraph.__call__`,
  wrapped for the block: a `CompiledGraph[...]` row, forward only.

torch 2.4 to 2.8 have no `ignore_compile_internals`: Dynamo skips every frame while a dispatch
mode is active, so compiled code runs eagerly inside the block, and a function first called
there is marked skipped for good (still so in torch 2.13.0: `ConvertFrameReturn` applies the
skip to the code object; pytorch#190287 makes it transient). The profiler then warns once, in
the terminal and in the report (`meta["compile"]`), the first time compiled code runs eagerly
in a block. torch 2.9 added `ignore_compile_internals` (pytorch#161648); from 2.10 Dynamo asks
every mode on the stack (`inline_torch_dispatch_torch_compile`), which this mode answers too.

Limits: an inference graph of a backend without Inductor's code generation (`aot_eager`), and
any graph of a backend that does not use AOTAutograd (`eager`, a backend returning
`gm.forward`), run as aten ops: those ops keep their own rows (`compiled` False), which is what
runs. On the CPU an Inductor graph's row counts the storages the graph was given, returned and
saved, not the buffers it freed inside (Inductor allocates them without the dispatcher,
`empty_strided_cpu`): its peak is a lower bound (on CUDA the allocator sees all).
Tensors an `autograd.Function` inside a graph keeps as `ctx` attributes (AOTAutograd's
`_tensors_no_vc_check`) are not counted as saved, as in eager.
"""

from __future__ import annotations

import contextlib
import functools
import re
import sys
import types
import warnings
import weakref
from collections.abc import Callable, Iterator
from threading import get_ident as _thread
from typing import Any

import torch
from torch.autograd.function import Function
from torch.utils._python_dispatch import _get_current_dispatch_mode as _current_dispatch_mode
from torch.utils._python_dispatch import _pop_mode_temporarily

from ._dispatch import OpDispatcher
from ._storage import NO_STORAGE, plain_tensors, tensors_in

_GLOBAL_HOOK_WARNING = "Using `torch.compile(module)` when there are global hooks"
_CALLS_USER_CODE = {"apply"}  # the Function.apply wrapper runs the user's forward
# turns Dynamo off itself, and reads what was on (torch < 2.9: compiled code running eagerly)
_SWITCHES_DYNAMO_ITSELF = {"_dispatch_without_dynamo"}
_marked_modules: set[str] = set()
_modules_seen = 0  # len(sys.modules) at the last scan: no new module, nothing to mark
_warned_eager = False


@functools.cache
def compiled_code_support() -> str:
    """"" when torch.compile'd code can run compiled under the profiler, else why not."""
    from torch.utils._python_dispatch import TorchDispatchMode

    if not hasattr(TorchDispatchMode, "ignore_compile_internals"):
        return (f"torch {torch.__version__} skips compiling every frame while a dispatch mode "
                "is active (TorchDispatchMode.ignore_compile_internals needs torch >= 2.9)")
    try:
        from torch._C._dynamo.eval_frame import set_code_exec_strategy  # noqa: F401
        from torch._dynamo import callback_handler  # noqa: F401
        from torch._dynamo.types import FrameAction, FrameExecStrategy  # noqa: F401
    except Exception as error:  # noqa: BLE001 - any missing piece: compiled code runs eagerly
        return f"torch {torch.__version__} lacks a Dynamo hook the profiler needs ({error})"
    return ""


def _codes(module: types.ModuleType) -> list[types.CodeType]:
    """Every code object defined in `module`: functions, methods, and the ones nested in them."""
    roots: list[Any] = []
    for value in vars(module).values():
        if getattr(value, "__module__", None) != module.__name__:
            continue
        if isinstance(value, type):
            for member in vars(value).values():
                member = getattr(member, "__func__", member)  # staticmethod, classmethod
                if isinstance(member, property):
                    roots.extend(f for f in (member.fget, member.fset) if f is not None)
                elif isinstance(member, types.FunctionType):
                    roots.append(member)
        elif isinstance(value, types.FunctionType):
            roots.append(value)
    codes, stack = [], [f.__code__ for f in roots]
    while stack:
        code = stack.pop()
        codes.append(code)
        stack.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
    return codes


def keep_dynamo_out() -> None:
    """Mark the profiler's code objects so that Dynamo never compiles them, nor what they call
    (the `Function.apply` wrapper only skips itself: it calls the user's forward)."""
    global _modules_seen
    if len(sys.modules) == _modules_seen:
        return
    _modules_seen = len(sys.modules)
    from torch._C._dynamo.eval_frame import set_code_exec_strategy
    from torch._dynamo.types import FrameAction, FrameExecStrategy

    skip_all = FrameExecStrategy(FrameAction.SKIP, FrameAction.SKIP)
    skip_self = FrameExecStrategy(FrameAction.SKIP, FrameAction.DEFAULT)
    package = __name__.rpartition(".")[0]
    for name, module in list(sys.modules.items()):
        if name in _marked_modules or not (name == package or name.startswith(package + ".")):
            continue
        if module is None or name.endswith(("._launch", ".cli")):  # they run the user's script
            continue
        _marked_modules.add(name)
        for code in _codes(module):
            if code.co_name not in _SWITCHES_DYNAMO_ITSELF:
                set_code_exec_strategy(code, skip_self if code.co_name in _CALLS_USER_CODE
                                       else skip_all)


def around_compiles(on_start: Callable[[Any], None], on_end: Callable[[Any], None],
                    ) -> Callable[[], None]:
    """Call `on_start` when Dynamo starts compiling a frame and `on_end` when it is done (to take
    global hooks out of its sight meanwhile); returns what removes the two callbacks, safe to
    call after `torch._dynamo.reset()` has cleared them."""
    from torch._dynamo import callback_handler

    callback_handler.register_start_callback(on_start)
    callback_handler.register_end_callback(on_end)

    def remove() -> None:
        for remove_callback, callback in ((callback_handler.remove_start_callback, on_start),
                                          (callback_handler.remove_end_callback, on_end)):
            try:
                remove_callback(callback)
            except ValueError:
                pass  # torch._dynamo.reset() cleared the callbacks already

    return remove


def _is_compiled_function(cls: type) -> bool:
    return cls.__name__ == "CompiledFunction" and cls.__module__.startswith("torch._functorch")


def _dynamo_frame(frame: types.FrameType | None) -> tuple[types.FrameType | None, Any]:
    """The Dynamo frame above `frame` (running a compiled function's code), and the code it
    was compiled from; (None, None) outside compiled code."""
    from torch._dynamo.utils import orig_code_map

    while frame is not None and orig_code_map.get(frame.f_code) is None:
        frame = frame.f_back
    return (None, None) if frame is None else (frame, orig_code_map.get(frame.f_code))


def _local_of(frame: types.FrameType, names: tuple[str, ...], kind: type) -> Any:
    """The first of the frame's locals `names` that is a `kind`, without keeping the frame's
    locals alive."""
    values = frame.f_locals
    try:
        return next((v for k, v in values.items() if k in names and isinstance(v, kind)), None)
    finally:
        if sys.version_info < (3, 13):
            values.clear()  # the snapshot would keep the frame's locals alive


def _graph_name(frame: types.FrameType | None, original: Any) -> tuple[str, str]:
    """(name, module class) of the compiled graph that the Dynamo frame `frame` (compiled from
    the code `original`, see `_dynamo_frame`) runs: its function's qualified name (the module's
    class for torch's own wrappers, e.g. of `module.compile()`) and Dynamo's compile id."""
    from torch._C._dynamo.eval_frame import _debug_get_cache_entry_list

    if frame is None:
        return "graph", ""
    compile_id = next((str(entry.compile_id) for entry in _debug_get_cache_entry_list(original)
                       if entry.code is frame.f_code), "?")
    name = getattr(original, "co_qualname", original.co_name)
    module_class = ""
    if original.co_filename.startswith(_TORCH_DIR):  # Module._call_impl, wrap_inline's inner
        owner = _local_of(frame, ("self", "fn", "mod"), torch.nn.Module)
        if owner is not None:
            module_class = name = type(owner).__name__
    return f"{name} {compile_id}", module_class


def _stepping_optimizer(frame: types.FrameType | None, original: Any,
                        ) -> torch.optim.Optimizer | None:
    """The optimizer whose compiled `step` (`torch.compile(optimizer.step)`) the Dynamo frame
    `frame` runs: its step pre-hooks and profiler markers were compiled away."""
    if frame is None or original.co_name != "step":
        return None
    return _local_of(frame, ("self",), torch.optim.Optimizer)


_TORCH_DIR = torch.__file__.rpartition("/")[0] + "/"
_graph_task_id = torch._C._current_graph_task_id
# CompiledFunction class -> its graph's (name, module class): one graph, one name, in every block
_graph_names: weakref.WeakKeyDictionary[type, tuple[str, str]] = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def _unprofiled_graph_run(recorder: Any, inductor: bool = False) -> Iterator[None]:
    """Run a compiled graph as it runs without the profiler: with the profiler's dispatch mode
    off (when it is the innermost mode), so that the graph's extern kernels take no Python
    dispatch and no dispatch-mode slow path. On CUDA, where the allocator's peak sees every
    buffer of the graph; and for an Inductor graph anywhere (off CUDA its scratch buffers are
    out of sight whatever the mode sees: its peak is a lower bound, and says so). Elsewhere the
    memory is the storages the mode sees, so it stays on: an `aot_eager` graph's peak is exact."""
    mode = (None if recorder is None or recorder.stopped or not (recorder.cuda or inductor)
            else recorder._mode)
    if mode is None or _current_dispatch_mode() is not mode:
        yield
        return
    with _pop_mode_temporarily():
        yield


class _CompiledGraph:
    """What an Inductor inference graph's row is opened as (a Function's row opens as its
    class)."""


class CompiledGraphs:
    """The block's view of compiled code: hooks out of Dynamo's way, a row per graph call."""

    def __init__(self, recorder: Any) -> None:
        self.recorder = recorder
        self.rows: set[int] = set()  # seq of every compiled row
        self.nodes: set[int] = set()  # node ids of the compiled graphs' backward nodes
        self.note = ""  # what the report says about compiled code ("" when nothing to say)
        self.calls = 0
        self.unseen_buffers = False  # an Inductor graph ran off CUDA: peaks are lower bounds
        self.support = ""
        self._wrapped: dict[type, tuple[Any, Any]] = {}  # class -> its own forward, backward
        self._ran: weakref.WeakSet[type] = weakref.WeakSet()  # graphs whose forward ran here
        self._hidden: list[tuple[dict, int, Any]] = []
        self._apply_in_block: Any = None
        self._inductor_call: Any = None  # CompiledFxGraph.__call__ before the block
        self._filter: tuple | None = None
        self._remove_callbacks: Callable[[], None] | None = None
        self._started = False

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self.support = compiled_code_support()
        OpDispatcher.compiled_code_runs_compiled = not self.support
        if self.support:
            return
        try:
            self._install()
        except Exception as error:  # noqa: BLE001 - Dynamo internals moved: run eagerly, say so
            self.stop()
            self.support = f"the profiler could not hook torch.compile ({error!r})"
            OpDispatcher.compiled_code_runs_compiled = False

    def _install(self) -> None:
        self._started = True
        keep_dynamo_out()
        # torch warns at each call of a torch.compile(module) that global module hooks exist
        before = list(warnings.filters)
        warnings.filterwarnings("ignore", message=re.escape(_GLOBAL_HOOK_WARNING),
                                category=UserWarning)
        # an enclosing profile's identical filter is moved, not copied: leave it to that one
        self._filter = None if warnings.filters[0] in before else warnings.filters[0]
        self._remove_callbacks = around_compiles(self._compile_started, self._compile_ended)
        self._wrap_new_classes()

    def stop(self) -> None:
        """Undo everything `start` did (also after a failure in the block)."""
        if not self._started:
            return
        self._started = False
        if self._remove_callbacks is not None:
            self._remove_callbacks()
            self._remove_callbacks = None
        self._restore_hidden()
        if self._inductor_call is not None:
            sys.modules["torch._inductor.output_code"].CompiledFxGraph.__call__ = (
                self._inductor_call)
            self._inductor_call = None
        for cls, (forward, backward) in self._wrapped.items():
            cls.forward, cls.backward = forward, backward
        self._wrapped.clear()
        if self._filter is not None and self._filter in warnings.filters:
            warnings.filters.remove(self._filter)
            warnings._filters_mutated()  # type: ignore[attr-defined]
        if self.calls:
            self.note = (f"{self.calls} compiled graph calls recorded (rows with compiled=True); "
                         "ops outside the compiled graphs (a graph break's eager part, the loss "
                         "after the model) have per-op rows")
        if self.unseen_buffers:
            self.note += ("; " if self.note else "") + (
                "Inductor allocated its graphs' scratch buffers out of the profiler's sight "
                "(CPU): the peak is a lower bound")

    def ran_eagerly(self) -> None:
        """The dispatch mode saw an op of a torch.compile'd function that runs eagerly because
        this torch cannot compile under the profiler (called once per profile)."""
        global _warned_eager
        self.note = (f"torch.compile'd code ran EAGERLY in this profile: {self.support}; its rows "
                     "are eager operators, not the compiled graphs")
        if not _warned_eager:
            _warned_eager = True
            warnings.warn(f"profiling: {self.note}", RuntimeWarning, stacklevel=3)

    # ------------------------------------------------------------------ while Dynamo compiles
    def _compile_started(self, args: Any) -> None:
        """Take the profiler's global hooks out of Dynamo's sight while it traces."""
        recorder = self.recorder
        owners = (recorder, recorder.modules)
        from torch.nn.modules import module as nn_module
        from torch.optim import optimizer

        for hooks in (nn_module._global_forward_pre_hooks, nn_module._global_forward_hooks,
                      optimizer._global_optimizer_pre_hooks):
            for key, hook in list(hooks.items()):
                if getattr(hook, "__self__", None) in owners:
                    self._hidden.append((hooks, key, hooks.pop(key)))
        current = Function.__dict__["apply"]
        if current is not recorder._original_apply:
            self._apply_in_block = current
            Function.apply = recorder._original_apply  # type: ignore[method-assign]

    def _compile_ended(self, args: Any) -> None:
        self._restore_hidden()
        self._wrap_new_classes()

    def _restore_hidden(self) -> None:
        for hooks, key, hook in self._hidden:
            hooks[key] = hook
        self._hidden.clear()
        if self._apply_in_block is not None:
            Function.apply = self._apply_in_block  # type: ignore[method-assign]
            self._apply_in_block = None

    # ------------------------------------------------------------------ compiled graph rows
    def _wrap_new_classes(self) -> None:
        """Wrap what runs compiled graphs and is not wrapped yet: each `CompiledFunction` class,
        and Inductor's `CompiledFxGraph.__call__` once Inductor is imported (not before: importing
        it would slow every profile's start)."""
        output_code = sys.modules.get("torch._inductor.output_code")  # imported once it is used
        if output_code is not None and self._inductor_call is None:
            graph = output_code.CompiledFxGraph
            self._inductor_call = graph.__dict__["__call__"]
            graph.__call__ = self._inference_call_of(self._inductor_call)
        wrapped = self._wrapped
        for cls in Function.__subclasses__():  # hundreds: the name first, it is the cheap test
            if cls.__name__ == "CompiledFunction" and cls not in wrapped and (
                    _is_compiled_function(cls)):
                forward, backward = cls.__dict__["forward"], cls.__dict__["backward"]
                self._wrapped[cls] = (forward, backward)
                cls.forward = staticmethod(self._forward_of(cls, forward.__func__))
                cls.backward = staticmethod(self._backward_of(backward.__func__))

    def _forward_of(self, cls: type, forward: Any) -> Any:
        recorder, graphs = self.recorder, self

        def compiled_forward(ctx, *args):  # noqa: ANN001, ANN202
            if recorder.stopped or recorder.thread != _thread():  # not this profile's
                return forward(ctx, *args)
            name = _graph_names.get(cls)
            if name is None:
                name = _graph_names[cls] = _graph_name(*_dynamo_frame(sys._getframe(1)))
            graphs._ran.add(cls)
            row = recorder.enter_function(cls, args)
            # storages seen from here on were made by the graph (ids only grow)
            first_id = next(recorder.storages._ids)
            outputs = None
            try:
                with _unprofiled_graph_run(recorder):
                    outputs = forward(ctx, *args)
            finally:
                graphs._close_forward(row, name, ctx, outputs, first_id)
            return outputs

        return compiled_forward

    def _inference_call_of(self, call: Any) -> Any:
        """Inductor runs each graph it compiled through `CompiledFxGraph.__call__`: a training
        graph's inside its `CompiledFunction` row (or its backward node's row), an inference
        graph (no input needs grad, or `torch.no_grad()`) on its own. Its kernels run unseen by
        the dispatcher, so the latter gets a `CompiledGraph[...]` row here."""
        recorder, graphs = self.recorder, self

        def run_compiled_graph(graph, inputs):  # noqa: ANN001, ANN202
            if recorder.stopped or recorder.thread != _thread():
                return call(graph, inputs)  # not this profile's
            if not recorder.cuda:  # its scratch buffers are allocated out of sight
                graphs.unseen_buffers = True
            if recorder._open is not None:  # inside an open row (its CompiledFunction's, or
                with _unprofiled_graph_run(recorder, inductor=True):  # its backward node's)
                    return call(graph, inputs)
            node = torch._C._current_autograd_node() if _graph_task_id() != -1 else None
            forward_cls = getattr(type(node), "_forward_cls", None)
            optimizer = None
            if forward_cls is not None:  # the backward of a graph whose node has no row here
                kind = "CompiledFunctionBackward"  # (its forward ran before the block)
                name = _graph_names.get(forward_cls) if forward_cls in graphs._ran else None
                name = name or ("graph", "")
            else:
                kind, dynamo_frame = "CompiledGraph", _dynamo_frame(sys._getframe(1))
                name = _graph_name(*dynamo_frame)
                if node is None:  # a compiled optimizer step: its state counts from the
                    # block's start, its row is in the optimizer phase, as for an eager step
                    optimizer = _stepping_optimizer(*dynamo_frame)
            if optimizer is not None:
                recorder._optimizer_step(optimizer, (), {})
                recorder._steps += 1
            try:
                row = recorder.enter_function(_CompiledGraph, tuple(inputs))
                first_id = next(recorder.storages._ids)
                outputs = None
                try:
                    with _unprofiled_graph_run(recorder, inductor=True):
                        outputs = call(graph, inputs)  # boxed: it may empty `inputs`
                finally:
                    graphs._close_forward(row, name, None, outputs, first_id, kind)
            finally:
                if optimizer is not None:
                    recorder._steps -= 1
            return outputs

        return run_compiled_graph

    def _close_forward(self, row: Any, name: tuple[str, str], ctx: Any, outputs: Any,
                       first_id: int, kind: str = "CompiledFunction") -> None:
        """Close the graph's row (`row` None: folded into the row open around it)."""
        recorder = self.recorder
        storages = recorder.storages
        # What the graph made: its outputs and what it saves (packed after forward returns).
        # Storages not seen before were allocated inside the graph; so were those first seen
        # inside it as the `out=` buffer of an extern kernel (Inductor allocates it unseen).
        returned = tensors_in(outputs if isinstance(outputs, (tuple, list)) else (outputs,))
        saved = tensors_in(getattr(ctx, "to_save", None) or ())
        saved += tensors_in(getattr(ctx, "_tensors_no_vc_check", None) or ())
        made = 0
        for tensor in plain_tensors(returned + saved):
            try:
                storage = tensor.untyped_storage()
            except NO_STORAGE:
                continue
            ref = storages.refs.get(storage._cdata)
            if ref is None:
                made += storages.add(storage, storage._cdata, True).nbytes
            elif ref.storage_id > first_id and not ref.created_in_block:
                ref.created_in_block = True
                made += ref.nbytes
        if row is None:
            open_row = recorder._open
            if open_row is not None:
                open_row.output_bytes += made
                open_row.peak = max(open_row.peak, recorder._live())
            return
        row.op = f"{kind}[{name[0]}]"
        if not row.module:
            row.module = name[1]
        row.output_bytes += made
        self.rows.add(row.seq)
        self.calls += 1
        recorder.exit_function(row, outputs)
        if returned:  # forward runs without grad: point the recorder at the node it makes,
            # which autograd attaches to the outputs after forward returns
            recorder._pending = (row.seq, row.module, [weakref.ref(t) for t in returned])

    def _backward_of(self, backward: Any) -> Any:
        recorder = self.recorder

        def compiled_backward(ctx, *grads):  # noqa: ANN001, ANN202
            row = recorder._open
            if row is None or row.kind != "node" or recorder.stopped:
                # not inside a node row of this profile (a graph whose forward ran before the
                # block): its ops stay in sight, as backward rows of their own
                return backward(ctx, *grads)
            with _unprofiled_graph_run(recorder):
                grads_in = backward(ctx, *grads)
            if recorder._open is row:
                row.output_bytes += recorder.storages.track_all(
                    tensors_in(grads_in if isinstance(grads_in, (tuple, list)) else (grads_in,)),
                    True)
                live = recorder._live()
                if live > row.peak:
                    row.peak = live
            return grads_in

        return compiled_backward

    def name_node(self, node: Any, record: Any) -> None:
        """Name a CompiledFunctionBackward node after its graph, and remember it."""
        cls = getattr(type(node), "_forward_cls", None)
        # a graph whose forward ran in this block (the set is kept after stop(): the block's
        name = _graph_names.get(cls) if cls in self._ran else None
        if name is None:  # last node is found then
            return
        record.name = f"CompiledFunctionBackward[{name[0]}]"
        if not record.module:
            record.module = name[1]
        self.nodes.add(record.node_id)

    def on_node_row(self, node_id: int, seq: int) -> None:
        """A backward node's row opened: a compiled graph's backward is a compiled row."""
        if node_id in self.nodes:
            self.rows.add(seq)
            self.calls += 1

