"""`max_batch`: the largest batch size whose training step peaks within a memory budget.

    fit = max_batch(make_step, budget="2GiB", start=8)   # make_step(batch_size) -> step()
    fit.batch_size, fit.predicted_peak, fit.measured_peak, fit.points

The step's peak is measured (`profiling.profile`, the models and optimizers the step uses
tracked from the start) at `start` and `2 * start` (halving `start` until it fits); a straight
line through the two largest batches measured (the peak grows linearly with the batch:
activations scale, parameters and optimizer state do not) predicts the largest batch within
the budget, which is then run to check. Each measurement joins the line and the next guess
(a batch that does not fit bounds the search from above, one that fits from below) until a
guess lands on a batch already known; a CUDA out-of-memory error counts as not fitting.
Models and optimizers the steps touch are put back as they were found.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn.modules.module import register_module_forward_pre_hook
from torch.optim.optimizer import register_optimizer_step_pre_hook

from ._budget import parse_budget, warn_if_peak_is_a_lower_bound
from ._compiled import around_compiles
from ._state import ModelState, OptimizerState
from .profiler import profile
from .tables import format_bytes

MAX_TRIES = 8  # batches tried after the first two


@dataclass
class BatchFit:
    """The batch size chosen, the line's prediction for it, and its measured peak."""

    batch_size: int
    predicted_peak: int
    measured_peak: int
    budget: int
    fixed_bytes: float  # the line's intercept: what does not grow with the batch
    bytes_per_sample: float  # its slope
    points: pd.DataFrame = field(repr=False)  # batch_size, peak_bytes (None: out of memory)

    @property
    def fits(self) -> bool:
        return self.measured_peak <= self.budget


class _Steps:
    """Runs `make_step(b)()` under the profiler; finds (and finally restores) the models and
    optimizers it uses, copied when first seen: a model before its first forward, an optimizer
    before its first step."""

    def __init__(self, make_step: Callable[[int], Callable[[], Any]]) -> None:
        self.make_step = make_step
        self.models: list[nn.Module] = []
        self.optimizers: list[torch.optim.Optimizer] = []
        self._states: list[ModelState | OptimizerState] = []
        self.device = torch.device("cpu")

    def _model_seen(self, module: nn.Module, args: Any) -> None:
        if any(module is s for m in self.models for s in m.modules()):
            return
        self.models.append(module)
        self._states.append(ModelState([module]))
        for tensor in (*module.parameters(), *module.buffers()):
            self.device = tensor.device
            break

    def _optimizer_seen(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if optimizer not in self.optimizers:
            self.optimizers.append(optimizer)
            self._states.append(OptimizerState(optimizer))

    def _make(self, batch_size: int) -> Callable[[], Any]:
        step = self.make_step(batch_size)
        if not callable(step):
            raise TypeError(f"make_step({batch_size}) must return a zero-argument callable "
                            f"(the training step), not {type(step).__name__}")
        return step

    def warm_up(self, batch_size: int) -> None:
        step = self._make(batch_size)
        handles: list[Any] = []

        def watch(*_: Any) -> None:
            handles[:] = [register_module_forward_pre_hook(self._model_seen),
                          register_optimizer_step_pre_hook(self._optimizer_seen)]

        def unwatch(*_: Any) -> None:
            for handle in handles:
                handle.remove()
            handles.clear()

        # A model compiled in this first step must not trace the hooks (Dynamo would compile
        # them into its graph, and fail on their bookkeeping): out while Dynamo compiles, as
        # the profiler's own hooks are.
        remove_callbacks = around_compiles(unwatch, watch)
        watch()
        try:
            step()
        finally:
            unwatch()
            remove_callbacks()
        if not self.models:
            raise ValueError(f"make_step({batch_size})() ran no nn.Module: max_batch measures a "
                             f"training step of a model")

    def peak(self, batch_size: int) -> int | None:
        step = self._make(batch_size)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        try:
            with profile(self.device, track=[*self.models, *self.optimizers]) as prof:
                step()
        except torch.cuda.OutOfMemoryError:
            return None
        warn_if_peak_is_a_lower_bound(prof, "max_batch")
        return int(max(prof.meta["peak_bytes"], prof.ops.peak_bytes.max()
                       if len(prof.ops) else 0))

    def restore(self) -> None:
        for state in reversed(self._states):
            state.restore()


def _line(points: dict[int, int | None]) -> tuple[float, float]:
    """Intercept and slope through the two largest measured (not out-of-memory) batches: at
    small batches a fixed part (the optimizer step) can set the peak, at large ones the
    activations do, so the line is drawn where the budget's batch lies."""
    measured = sorted((b, p) for b, p in points.items() if p is not None)[-2:]
    xs = np.array([b for b, _ in measured], dtype=float)
    ys = np.array([p for _, p in measured], dtype=float)
    slope, intercept = np.polyfit(xs, ys, 1)
    return float(intercept), float(slope)


def max_batch(make_step: Callable[[int], Callable[[], Any]], budget: int | float | str, *,
              start: int = 8) -> BatchFit:
    """The largest batch size whose step peaks within `budget` (see the module docstring).

    `make_step(batch_size)` returns a zero-argument callable running one training step on a
    batch of that size. `budget`: bytes, or a string such as "512MiB", "2GiB", "1.5GB".
    """
    if not callable(make_step):
        raise TypeError(f"make_step must be a callable taking a batch size, not "
                        f"{type(make_step).__name__}")
    budget = parse_budget(budget)
    if isinstance(start, bool) or not isinstance(start, int) or start < 1:
        raise ValueError(f"start must be a positive batch size, got {start!r}")
    steps = _Steps(make_step)
    try:
        steps.warm_up(start)
        return _fit(steps, budget, start)
    finally:
        steps.restore()


def _fit(steps: _Steps, budget: int, start: int) -> BatchFit:
    points: dict[int, int | None] = {}
    small = start
    points[small] = steps.peak(small)
    while (points[small] is None or points[small] > budget) and small > 1:
        small = max(1, small // 2)
        points[small] = steps.peak(small)
    if points[small] is None or points[small] > budget:
        measured = points[small]
        raise ValueError(f"even a batch of 1 does not fit {format_bytes(budget)}: its step "
                         f"peaks at {measured} bytes" if measured is not None else
                         f"even a batch of 1 runs out of memory within {format_bytes(budget)}")
    if len([p for p in points.values() if p is not None]) < 2:
        points[2 * small] = steps.peak(2 * small)
    fitting = {b: p for b, p in points.items() if p is not None and p <= budget}
    predicted: dict[int, float] = {}
    for _ in range(MAX_TRIES):
        intercept, slope = _line(points)
        if slope <= 0:
            raise ValueError(f"the step's peak does not grow with the batch size (measured "
                             f"{points}): no largest batch to predict")
        candidate = int((budget - intercept) // slope)
        failed = [b for b, p in points.items() if p is None or p > budget]
        if failed:
            candidate = min(candidate, min(failed) - 1)
        if candidate <= max(fitting) or candidate in points:
            break
        predicted[candidate] = intercept + slope * candidate
        points[candidate] = steps.peak(candidate)
        if points[candidate] is not None and points[candidate] <= budget:
            fitting[candidate] = points[candidate]
    batch = max(fitting)
    intercept, slope = _line(points)
    table = pd.DataFrame({"batch_size": list(points), "peak_bytes": list(points.values())})
    guess = predicted.get(batch, intercept + slope * batch)  # made before measuring it
    return BatchFit(batch_size=batch, predicted_peak=int(round(guess)),
                    measured_peak=int(fitting[batch]), budget=budget, fixed_bytes=intercept,
                    bytes_per_sample=slope,
                    points=table.sort_values("batch_size").reset_index(drop=True))
