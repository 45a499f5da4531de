"""How the profiler sees each aten op: a `TorchDispatchMode`, and what each op is called through.

Three details of running under a dispatch mode are handled here:
- torch.compile'd code must run compiled inside the block: the mode tells Dynamo to compile with
  it off and run the compiled code with it on (`ignore_compile_internals`, see `_compiled`);
- Dynamo must never trace the profiler when a compiled function runs inside the block;
- torch's in-place foreach ops do not bump their tensors' versions under a mode (see
  `_bumping_versions`), which would silence backward's check on modified saved tensors.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode


def op_info(func: Any) -> tuple[str, Any]:
    """(row name, what to call) for an operator: `OpOverload.__call__` only forwards to `_op`,
    so calling that skips a Python frame per op. Profiler markers (record_function, e.g. around
    `optimizer.step`) get no row: name ""."""
    name = "" if getattr(func, "namespace", "") == "profiler" else func._name
    call = getattr(func, "_op", func)
    schema = getattr(func, "_schema", None)
    if schema is None or not schema.name.startswith("aten::_foreach_"):
        return name, call
    mutated_lists = tuple(
        (index, argument.name) for index, argument in enumerate(schema.arguments)
        if argument.alias_info is not None and argument.alias_info.is_write
        and isinstance(argument.type, torch.ListType))
    return name, _bumping_versions(call, mutated_lists) if mutated_lists else call


def _bumping_versions(call: Any, mutated_lists: tuple[tuple[int, str], ...]) -> Any:
    """`call` for an in-place foreach op (`_foreach_add_`, ...). Under a dispatch mode torch
    does not bump the versions of the tensors it writes (it does without one), so a saved
    tensor that a foreach optimizer step modified would pass backward's version check and give
    wrong gradients. Bump what the op left stale, as it would have been without the profiler.
    (Fused optimizer ops bump nothing even without a mode: left as they are.)"""

    def call_and_bump_versions(*args: Any, **kwargs: Any) -> Any:
        lists = [args[index] if index < len(args) else kwargs.get(name, ())
                 for index, name in mutated_lists]
        before = [[t._version for t in tensors] for tensors in lists]
        out = call(*args, **kwargs)
        for tensors, versions in zip(lists, before, strict=True):
            for tensor, version in zip(tensors, versions, strict=True):
                if tensor._version == version:
                    torch.autograd.graph.increment_version(tensor)
        return out

    return call_and_bump_versions


class OpDispatcher(TorchDispatchMode):
    """Hands every aten op to `handle(func, args, kwargs)`, with Dynamo's frame hook off, so
    that a compiled function running under the profiler never traces the profiler. Where the
    torch installed cannot run compiled code under a mode, `ran_eagerly()` is called (once) when
    an op of a compiled function runs eagerly."""

    compiled_code_runs_compiled = False  # set by `_compiled` from what the torch installed does

    def __init__(self, handle: Callable[[Any, tuple, dict], Any],
                 ran_eagerly: Callable[[], None] | None = None) -> None:
        _install_dispatch_without_dynamo()
        super().__init__()
        self.handle = handle
        self.ran_eagerly = ran_eagerly

    @classmethod
    def ignore_compile_internals(cls) -> bool:
        """True: Dynamo compiles with this mode off and runs the compiled code with it on,
        instead of skipping every frame while it is active (torch >= 2.9)."""
        return cls.compiled_code_runs_compiled

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        return self.handle(func, args, kwargs or {})


def _dispatch_without_dynamo(self: OpDispatcher, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN201
    # What `torch._disable_dynamo` does around a mode's `__torch_dispatch__` (Dynamo's frame
    # hook off while the profiler runs), without its two wrapper frames and stance lookups,
    # which every op of the block would pay. Where compiled code runs compiled, the profiler's
    # code objects are marked for Dynamo to skip with all they call (`_compiled.keep_dynamo_out`):
    # the handler runs with the hook off already, and switching it here would be paid twice.
    if self.compiled_code_runs_compiled:
        return self.handle(func, args, kwargs or {})
    prior = _set_eval_frame(None)
    try:
        if prior and self.ran_eagerly is not None and not self.compiled_code_runs_compiled:
            # a compiled function's frame is running, eagerly since torch skipped compiling it
            self.ran_eagerly()
            self.ran_eagerly = None
        return self.handle(func, args, kwargs or {})
    finally:
        _set_eval_frame(prior)


def _install_dispatch_without_dynamo() -> None:
    """Swap in `_dispatch_without_dynamo` (once, at the first profile: it imports Dynamo, as
    torch's wrapper does at its first call). Dynamo must skip the function when it traces a
    compiled function under the profiler; if any piece is missing, torch's wrapper stays."""
    global _set_eval_frame
    if OpDispatcher.__torch_dispatch__ is _dispatch_without_dynamo:
        return
    try:
        from torch._C._dynamo.eval_frame import set_eval_frame
        from torch._dynamo.decorators import skip
    except Exception:  # noqa: BLE001 - any failure: torch's own wrapper stays in place
        return
    _set_eval_frame = set_eval_frame
    # set on the class after it exists: `TorchDispatchMode.__init_subclass__` would wrap it
    OpDispatcher.__torch_dispatch__ = skip(_dispatch_without_dynamo)  # type: ignore[method-assign]


_set_eval_frame: Any = None
