"""Activation checkpointing of chosen submodules, by qualified name, undone exactly.

Each chosen module instance gets a `forward` attribute that runs its own forward through
`torch.utils.checkpoint.checkpoint(..., use_reentrant=False)` (RNG state preserved, so Dropout
recomputes the same mask). Nothing else changes: parameters, buffers, hooks and the class are
untouched, and `remove()` puts back exactly what was there: no instance attribute, or the one
the user had set.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

_MISSING = object()
_MARK = "_profiling_checkpointed"


def _checkpointed(forward: Any) -> Any:
    @functools.wraps(forward)
    def run(*args: Any, **kwargs: Any) -> Any:
        # Under any saved-tensor hooks (a profiler's, `save_on_cpu`), the recomputation gets
        # each saved input back as a new tensor object, and code that tests identity takes
        # another path (`query is key` in MultiheadAttention): give the repeats back their
        # first object.
        tensors = [(k, v) for k, v in (*enumerate(args), *kwargs.items())
                   if isinstance(v, torch.Tensor)]
        first: dict[int, int | str] = {}
        same = [(k, first.setdefault(id(v), k)) for k, v in tensors]
        same = [(k, j) for k, j in same if k != j]
        if not same:
            return checkpoint(forward, *args, use_reentrant=False, **kwargs)

        def forward_same_objects(*a: Any, **kw: Any) -> Any:
            a = list(a)
            for k, j in same:
                value = a[j] if isinstance(j, int) else kw[j]
                if isinstance(k, int):
                    a[k] = value
                else:
                    kw[k] = value
            return forward(*a, **kw)

        return checkpoint(forward_same_objects, *args, use_reentrant=False, **kwargs)

    setattr(run, _MARK, True)
    return run


def resolve(model: nn.Module, names: Iterable[str]) -> list[tuple[str, nn.Module]]:
    """The submodules named (qualified names, as `named_modules` gives them)."""
    modules = dict(model.named_modules())
    found, missing = [], []
    for name in names:
        if not name or name not in modules:
            missing.append(name)
        else:
            found.append((name, modules[name]))
    if missing:
        raise ValueError(f"the plan names {', '.join(map(repr, missing))}, which "
                         f"{type(model).__name__} has no submodule of (it has "
                         f"{len(modules) - 1} submodules, e.g. "
                         f"{', '.join(repr(n) for n in list(modules)[1:4])})")
    for (outer, _), (inner, _) in ((a, b) for a in found for b in found if a is not b):
        if inner.startswith(outer + "."):
            raise ValueError(f"the plan checkpoints both {outer!r} and {inner!r}, which is "
                             f"inside it")
    return found


class CheckpointHandle:
    """Checkpointing applied to some modules; `remove()` undoes it (also a context manager)."""

    def __init__(self, model: nn.Module, names: Iterable[str]) -> None:
        chosen = resolve(model, names)
        for name, module in chosen:
            if getattr(module.__dict__.get("forward"), _MARK, False):
                raise RuntimeError(f"{name!r} is checkpointed already (a plan is applied to "
                                   f"it); remove that one first")
        self.names = [name for name, _ in chosen]
        self._undo: list[tuple[nn.Module, Any]] = []
        for _, module in chosen:
            previous = module.__dict__.get("forward", _MISSING)
            module.forward = _checkpointed(module.forward)  # the bound method, or the user's
            self._undo.append((module, previous))

    def remove(self) -> None:
        while self._undo:
            module, previous = self._undo.pop()
            if previous is _MISSING:
                module.__dict__.pop("forward", None)
            else:
                module.forward = previous

    def __enter__(self) -> CheckpointHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
