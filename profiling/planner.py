"""A checkpoint planner: which modules to checkpoint so that a training step fits a budget.

    plan = plan_checkpoints(step, model, budget="2GiB")   # step(): one training step of model
    plan.modules, plan.predicted_peak, plan.measured_peak, plan.extra_time, plan.fits
    with plan.applied(model):
        step()
    plan.save("plan.json"); apply_plan(model, "plan.json")

How: (1) one profiled step, with a census of what each module call saves for backward that
its inputs do not already hold (`_census`), and its forward time (the recompute cost); (2) the
cheapest set of modules, none inside another, whose predicted peak is within the budget
(`_plan_model`: the measured rows moved by what checkpointing frees, keeps and recomputes,
solved exactly as a 0/1 program); (3) the plan applied with
`torch.utils.checkpoint.checkpoint(..., use_reentrant=False)` (`_checkpointing`); (4) the step
run again with it, its peak and time measured and its gradients compared with the unplanned
step's. A measured peak over the budget tightens the budget by the overshoot and plans again
(at most `retries` times); whatever happens is reported, `fits` says if it worked.

Between runs the model's parameters, buffers and gradients, the optimizers that step them and
the random generators go back to how they were after a first warm-up step (`_state`), so every
run computes the same numbers; after planning they go back to how they were found.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from ._budget import parse_budget, warn_if_peak_is_a_lower_bound
from ._census import Census
from ._checkpointing import CheckpointHandle
from ._plan_model import build_model
from ._state import StepState
from .profiler import profile
from .tables import format_bytes

PLAN_FORMAT = "torchext-checkpoint-plan"


@dataclass
class CheckpointPlan:
    """Modules to checkpoint, with the prediction and the measurement that back the choice."""

    modules: list[str]
    budget: int
    baseline_peak: int
    predicted_peak: int
    measured_peak: int
    extra_time: float
    max_grad_diff: float
    floor: int
    model: str = ""
    baseline_ms: float = float("nan")
    planned_ms: float = float("nan")
    candidates: pd.DataFrame = field(default_factory=pd.DataFrame, repr=False)
    tries: list[dict] = field(default_factory=list, repr=False)

    @property
    def fits(self) -> bool:
        return self.measured_peak <= self.budget

    def applied(self, model: nn.Module) -> CheckpointHandle:
        """Checkpointing on for the plan's modules of `model`; off again when the block ends."""
        return CheckpointHandle(model, self.modules)

    def to_dict(self) -> dict:
        return {"format": PLAN_FORMAT, "version": 1, "model": self.model,
                "modules": list(self.modules), "budget": self.budget,
                "baseline_peak": self.baseline_peak, "predicted_peak": self.predicted_peak,
                "measured_peak": self.measured_peak, "extra_time": self.extra_time,
                "max_grad_diff": self.max_grad_diff, "floor": self.floor, "fits": self.fits}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> CheckpointPlan:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read the checkpoint plan {str(path)!r}: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT:
            raise ValueError(f"{str(path)!r} is not a checkpoint plan (no \"format\": "
                             f"\"{PLAN_FORMAT}\")")
        keys = ("budget", "baseline_peak", "predicted_peak", "measured_peak", "extra_time",
                "max_grad_diff", "floor")
        missing = [k for k in ("modules", *keys) if k not in data]
        if missing or not isinstance(data["modules"], list):
            raise ValueError(f"the checkpoint plan {str(path)!r} lacks {', '.join(missing)} "
                             f"or its \"modules\" is not a list of names")
        return cls(modules=[str(m) for m in data["modules"]], model=data.get("model", ""),
                   **{k: data[k] for k in keys})

    def summary(self) -> str:
        chosen = ", ".join(self.modules) or "(none: the step fits as it is)"
        return (f"checkpoint: {chosen}\n"
                f"budget {format_bytes(self.budget)}; peak without the plan "
                f"{format_bytes(self.baseline_peak)}, predicted with it "
                f"{format_bytes(self.predicted_peak)}, measured "
                f"{format_bytes(self.measured_peak)} "
                f"({'fits' if self.fits else 'OVER the budget'}); step time "
                f"x{self.extra_time:.2f}; gradients differ by at most {self.max_grad_diff:.3g}")


def apply_plan(model: nn.Module, plan: CheckpointPlan | str | Path | Iterable[str]
               ) -> CheckpointHandle:
    """Checkpoint the plan's modules of `model` (a plan, a saved plan's path, or names) until
    `.remove()` is called on the handle returned (it is a context manager too)."""
    if isinstance(plan, (str, Path)):
        plan = CheckpointPlan.load(plan)
    names = plan.modules if isinstance(plan, CheckpointPlan) else list(plan)
    return CheckpointHandle(model, names)


# ----------------------------------------------------------------------------- running steps


_COMPILED = ("plan_checkpoints plans an uncompiled model: under torch.compile its submodules' "
             "forwards are inlined into the compiled graph (no call to checkpoint), and what to "
             "recompute is the compiler's choice (torch._functorch.config."
             "activation_memory_budget; see reports/compile.md).")


def _device_of(model: nn.Module) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Runs:
    """The user's step, run from the same state each time, with or without checkpointing."""

    def __init__(self, step: Callable[[], Any], model: nn.Module) -> None:
        self.step, self.model = step, model
        self.device = _device_of(model)
        self.state = StepState([model])

    def warm_up(self) -> None:
        with self.state.finding_optimizers():
            self.step()
        _sync(self.device)
        self.state.mark()

    def profiled(self, names: list[str], census: Census | None = None) -> Any:
        self.state.rewind()
        with CheckpointHandle(self.model, names):
            if census is not None:
                with census, profile(self.device, track=[self.model, *self.state.optimizers]
                                     ) as prof:
                    self.step()
            else:
                with profile(self.device, track=[self.model, *self.state.optimizers]) as prof:
                    self.step()
        return prof

    def forward_ms(self, repeat: int) -> dict[tuple[str, str], float]:
        """Each module's forward time, the median of `repeat` unprofiled steps."""
        runs: list[dict[tuple[str, str], float]] = []
        for _ in range(repeat):
            self.state.rewind()
            timer = Census([(type(self.model).__name__, self.model)], walk=False,
                           cuda_events=self.device.type == "cuda")
            with timer:
                self.step()
            _sync(self.device)
            runs.append(timer.forward_ms())
        return {key: statistics.median(r.get(key, 0.0) for r in runs) for key in runs[0]}

    def gradients(self, names: list[str]) -> list[torch.Tensor | None]:
        """The gradients the step computes (read when an optimizer steps, else at the end)."""
        self.state.rewind()
        captured: list[list[torch.Tensor | None]] = []
        params = list(self.model.parameters())

        def read(*_: Any) -> None:
            if not captured:
                captured.append([None if p.grad is None else p.grad.detach().to("cpu", copy=True)
                                 for p in params])

        handles = [register_optimizer_step_pre_hook(read)]
        try:
            with CheckpointHandle(self.model, names):
                self.step()
        finally:
            for handle in handles:
                handle.remove()
        read()
        return captured[0]

    def timed(self, names: list[str]) -> float:
        self.state.rewind()
        with CheckpointHandle(self.model, names):
            _sync(self.device)
            begin = time.perf_counter()
            self.step()
            _sync(self.device)
        return (time.perf_counter() - begin) * 1e3


def _peak(prof: Any) -> int:
    warn_if_peak_is_a_lower_bound(prof, "plan_checkpoints")
    rows = prof.ops.peak_bytes
    return int(max(prof.meta["peak_bytes"], rows.max() if len(rows) else 0))


def _max_difference(a: list[torch.Tensor | None], b: list[torch.Tensor | None]) -> float:
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        if (x is None) != (y is None):
            return float("inf")
        if x is not None:
            worst = max(worst, float((x.double() - y.double()).abs().max()) if x.numel() else 0.0)
    return worst


def _fixed_bytes(model: nn.Module, optimizers: list[torch.optim.Optimizer]) -> int:
    """Parameters, their gradients (allocated or to come), buffers and optimizer state: what
    no checkpoint plan removes."""
    storages: dict[int, int] = {}
    tensors = [*model.parameters(), *model.buffers()]
    tensors += [p.grad for p in model.parameters() if p.grad is not None]
    tensors += [v for o in optimizers for state in o.state.values() for v in state.values()
                if isinstance(v, torch.Tensor)]
    for tensor in tensors:
        storage = tensor.untyped_storage()
        storages[storage._cdata] = storage.nbytes()
    to_come = sum(p.numel() * p.element_size() for p in model.parameters()
                  if p.requires_grad and p.grad is None)
    return sum(storages.values()) + to_come


def plan_checkpoints(step: Callable[[], Any], model: nn.Module, budget: int | float | str, *,
                     repeat: int = 3, retries: int = 3) -> CheckpointPlan:
    """The cheapest set of `model`'s submodules to checkpoint so that `step()` peaks within
    `budget`, measured with the plan applied (see the module docstring).

    `step` is a zero-argument callable running one training step of `model` (forward,
    backward, optimizer step). `budget`: bytes, or a string such as "512MiB", "2GiB", "1.5GB".
    `repeat` timed runs of each variant give the step times; `retries` bounds how often a
    measured overshoot tightens the budget.
    """
    if not callable(step):
        raise TypeError(f"step must be a zero-argument callable, not {type(step).__name__}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, not {type(model).__name__}")
    if type(model).__name__ == "OptimizedModule":
        raise ValueError(_COMPILED + " Pass the model itself (`model._orig_mod`) and a step "
                         "that runs it uncompiled")
    budget = parse_budget(budget)
    if next(model.children(), None) is None:
        raise ValueError(f"{type(model).__name__} has no submodules: there is nothing to "
                         f"checkpoint inside it (checkpoint the whole call with "
                         f"torch.utils.checkpoint.checkpoint instead)")
    if repeat < 1 or retries < 0:
        raise ValueError(f"repeat must be >= 1 and retries >= 0, got {repeat} and {retries}")
    runs = _Runs(step, model)
    try:
        return _plan(runs, budget, repeat, retries)
    finally:
        runs.state.restore_first()


def _plan(runs: _Runs, budget: int, repeat: int, retries: int) -> CheckpointPlan:
    model = runs.model
    runs.warm_up()
    census = Census([(type(model).__name__, model)], cuda_events=runs.device.type == "cuda")
    baseline = runs.profiled([], census)
    if not census.calls:
        compiled = baseline.ops.compiled.any()
        raise ValueError(f"step() never called {type(model).__name__}'s forward: nothing to "
                         f"plan" + (f". {_COMPILED} Plan a step that runs the model uncompiled"
                                    if compiled else ""))
    baseline_peak = _peak(baseline)
    peaks = build_model(baseline.ops, census, runs.forward_ms(repeat))
    floor, _ = peaks.floor()
    floor = min(floor, baseline_peak)
    if budget < floor:
        fixed = _fixed_bytes(model, runs.state.optimizers)
        raise ValueError(
            f"budget {budget} bytes ({format_bytes(budget)}) is below what any checkpoint plan "
            f"reaches for this step: the floor is {floor} bytes ({format_bytes(floor)}): "
            f"parameters, gradients, "
            f"buffers and optimizer state ({format_bytes(fixed)}) plus the activations no "
            f"checkpoint of {type(model).__name__}'s submodules removes")
    names_of = peaks.candidates.module.tolist()
    tries: list[dict] = []
    best: tuple[list[str], int, int] | None = None
    if baseline_peak <= budget:
        best = ([], peaks.predict(np.zeros(len(names_of))), baseline_peak)
    target = budget
    for attempt in range(retries + 1 if best is None else 0):
        chosen = peaks.solve(target)
        if chosen is None:
            break
        names = [n for n, c in zip(names_of, chosen, strict=True) if c]
        predicted = peaks.predict(chosen)
        measured = _peak(runs.profiled(names))
        tries.append({"target": target, "modules": names, "predicted_peak": predicted,
                      "measured_peak": measured})
        if best is None or measured < best[2]:
            best = (names, predicted, measured)
        if measured <= budget:
            break
        target -= (measured - budget) * (attempt + 1)  # tighten by the overshoot, then more
    if best is None:  # the budget is above the floor, so a choice exists: defensive
        raise ValueError(f"no checkpoint plan is predicted within {format_bytes(budget)}")
    names, predicted, measured = best
    if names:
        reference, planned = runs.gradients([]), runs.gradients(names)
        difference = _max_difference(reference, planned)
        times: dict[str, list[float]] = {"baseline": [], "plan": []}
        for _ in range(repeat):
            times["baseline"].append(runs.timed([]))
            times["plan"].append(runs.timed(names))
        baseline_ms = statistics.median(times["baseline"])
        planned_ms = statistics.median(times["plan"])
    else:
        difference, baseline_ms, planned_ms = 0.0, float("nan"), float("nan")
    candidates = peaks.candidates.drop(columns="label").assign(
        chosen=peaks.candidates.module.isin(names))
    return CheckpointPlan(
        modules=names, budget=budget, baseline_peak=baseline_peak, predicted_peak=predicted,
        measured_peak=measured, extra_time=planned_ms / baseline_ms if names else 1.0,
        max_grad_diff=difference, floor=floor, model=type(model).__name__,
        baseline_ms=baseline_ms, planned_ms=planned_ms, candidates=candidates, tries=tries)
