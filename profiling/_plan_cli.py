"""`torchext-profile plan --budget 2GiB [--out DIR] train.py [args]`: a checkpoint plan for a
script's models, checked by running the script again with it.

The script runs four times, each from the same random state, with one progress line per run:
(1) profiled, with the census of every model whose forward runs outside any other module;
(2) profiled, with the chosen modules of each model checkpointed (wrapped by qualified name
when the model is first called), more runs if the measured peak is over the budget; (3, 4)
unprofiled, without and with the plan, for the step-time ratio and the gradients at the first
optimizer step. It prints the plan and writes `plan.json` for `apply_plan(model, path)`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from ._budget import parse_budget
from ._census import Census
from ._checkpointing import CheckpointHandle
from ._launch import (
    CliError,
    check_module,
    check_script,
    print_user_traceback,
    run_module,
    run_script,
)
from ._plan_model import build_model
from ._state import RandomState
from .planner import CheckpointPlan
from .tables import format_bytes

DEFAULT_OUT = "plan_out"
RETRIES = 2


class _ScriptRuns:
    """The script, run again and again from the same random state."""

    def __init__(self, args: argparse.Namespace, target: list[str]) -> None:
        self.module = args.module
        self.name, self.args = target[0], target[1:]
        self.label = ("-m " if self.module else "") + self.name
        self.device = args.device
        self.random = RandomState()
        self.runs = 0
        self.total = 4
        self.globals: dict = {}

    def run(self, what: str, *, census: Census | None = None, profiled: bool,
            plan: dict[str, list[str]] | None = None) -> tuple[Any, float, list]:
        """(profile or None, seconds, gradients at the first optimizer step)."""
        from .cli import progress
        from .profiler import profile

        self.runs += 1
        self.random.restore()
        handles: list[CheckpointHandle] = []
        models: list[nn.Module] = []
        grads: list = []

        def on_new_model(label: str, model: nn.Module) -> None:
            models.append(model)
            if plan and plan.get(label):
                handles.append(CheckpointHandle(model, plan[label]))

        def first_step(optimizer: torch.optim.Optimizer, *_: Any) -> None:
            if not grads:
                grads.extend(None if p.grad is None else p.grad.detach().to("cpu", copy=True)
                             for m in models for p in m.parameters())

        watcher = census or Census(discover=True, walk=False, on_new_model=on_new_model)
        watcher._on_new_model = on_new_model
        step_hook = register_optimizer_step_pre_hook(first_step)
        prof, start = None, time.perf_counter()
        try:
            with progress(f"run {self.runs}/{max(self.total, self.runs)}: {self.label} {what}"):
                if profiled:
                    with watcher, profile(self.device) as prof:
                        self._call()
                else:
                    with watcher:
                        self._call()
        finally:
            step_hook.remove()
            for handle in handles:
                handle.remove()
        return prof, time.perf_counter() - start, grads

    def _call(self) -> None:
        try:
            result = (run_module(self.name, self.args) if self.module
                      else run_script(self.name, self.args))
            self.globals = result
        except SystemExit as exc:
            if exc.code not in (None, 0):
                raise
        except Exception as exc:
            print_user_traceback(exc)
            raise CliError(f"{self.label} raised {type(exc).__name__} (traceback above): "
                           f"no plan") from None


def _variable_name(namespace: dict, model: nn.Module) -> str | None:
    for name, value in namespace.items():
        if value is model and name.isidentifier() and not name.startswith("_"):
            return name
    return None


def plan_command(args: argparse.Namespace) -> int:
    from .cli import message, note_options_after_script, out_folder

    target = list(args.target)
    if target[:1] == ["--"]:
        target = target[1:]
    if not target:
        raise CliError("plan: give a script (plan --budget 2GiB train.py [args]) or a module "
                       "(plan --budget 2GiB -m module)")
    try:
        budget = parse_budget(args.budget, "--budget")
    except (TypeError, ValueError) as exc:
        raise CliError(str(exc)) from None
    note_options_after_script(args, target)
    (check_module if args.module else check_script)(target[0])
    folder = out_folder(args.out) or Path(DEFAULT_OUT)
    runs = _ScriptRuns(args, target)

    census = Census(discover=True, cuda_events=False)
    baseline, _, _ = runs.run("without a plan (profiled)", census=census, profiled=True)
    if not census.models:
        raise CliError(f"{runs.label} ran no model with submodules: nothing to checkpoint")
    models = dict(census.models)
    baseline_peak = int(max(baseline.meta["peak_bytes"], baseline.ops.peak_bytes.max()))
    peaks = build_model(baseline.ops, census)
    floor, _ = peaks.floor()
    floor = min(floor, baseline_peak)
    if budget < floor:
        raise CliError(f"--budget {format_bytes(budget)} is below what any checkpoint plan "
                       f"reaches for {runs.label}: the floor is {floor} bytes "
                       f"({format_bytes(floor)}; without a plan it peaks at "
                       f"{format_bytes(baseline_peak)})")
    keys = list(zip(peaks.candidates.label, peaks.candidates.module, strict=True))
    chosen, predicted, measured, target_budget = np.zeros(len(keys), bool), 0, baseline_peak, budget
    runs.total = 4 if baseline_peak > budget else 1
    for attempt in range(RETRIES + 1 if baseline_peak > budget else 0):
        choice = peaks.solve(target_budget)
        if choice is None:
            break
        chosen, predicted = choice, peaks.predict(choice)
        runs.total = 4 + attempt
        prof, _, _ = runs.run("with the plan (profiled)", profiled=True,
                              plan=_by_label(keys, chosen))
        measured = int(max(prof.meta["peak_bytes"], prof.ops.peak_bytes.max()))
        if measured <= budget:
            break
        target_budget -= (measured - budget) * (attempt + 1)
    if baseline_peak <= budget:
        predicted = peaks.predict(chosen)
    plan = _by_label(keys, chosen)
    extra_time, difference = 1.0, 0.0
    if any(plan.values()):
        _, plain_s, plain_grads = runs.run("without a plan (timed)", profiled=False)
        _, plan_s, plan_grads = runs.run("with the plan (timed)", profiled=False, plan=plan)
        extra_time = plan_s / plain_s
        difference = _difference(plain_grads, plan_grads)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for label, model in models.items():
        names = plan.get(label, [])
        result = CheckpointPlan(
            modules=names, budget=budget, baseline_peak=baseline_peak,
            predicted_peak=predicted, measured_peak=measured, extra_time=extra_time,
            max_grad_diff=difference, floor=floor, model=label)
        path = folder / ("plan.json" if len(models) == 1 else f"plan-{label}.json")
        result.save(path)
        written.append((label, model, path, result))
    for label, _, _, result in written:
        print(f"{label}: {result.summary()}")
    for label, model, path, _ in written:
        variable = _variable_name(runs.globals, model) or "model"
        message(f"plan for {label} written to {path}; to use it, add after building "
                f"{variable} in {target[0]}:\n    from profiling import apply_plan; "
                f"apply_plan({variable}, {str(path)!r})")
    return 0 if measured <= budget else 1


def _by_label(keys: list[tuple[str, str]], chosen: np.ndarray) -> dict[str, list[str]]:
    plan: dict[str, list[str]] = {}
    for (label, module), pick in zip(keys, chosen, strict=True):
        if pick:
            plan.setdefault(label, []).append(module)
    return plan


def _difference(a: list, b: list) -> float:
    if len(a) != len(b):
        return float("inf")
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        if (x is None) != (y is None):
            return float("inf")
        if x is not None and x.numel():
            worst = max(worst, float((x.double() - y.double()).abs().max()))
    return worst


def add_plan_command(subparsers: Any) -> None:
    from .cli import _options_taking_values, device_options

    parser = subparsers.add_parser(
        "plan", help="choose modules to checkpoint so a script's step fits a memory budget",
        parents=[device_options()],
        description="Run the script, plan which modules of its models to checkpoint so that "
        "its peak stays within --budget, run it again with the plan to check, and write "
        "plan.json for profiling.apply_plan. Options go before the script.",
    )
    parser.add_argument("--budget", required=True, metavar="BYTES",
                        help="peak memory allowed: bytes or a size such as 512MiB, 2GiB, 1.5GB")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help=f"where plan.json goes (default: {DEFAULT_OUT})")
    parser.add_argument("-m", dest="module", action="store_true",
                        help="run a library module as a script, as python -m does")
    parser.add_argument("target", nargs=argparse.REMAINDER, metavar="script.py | module [args]",
                        help="what to run and the arguments it gets")
    parser.set_defaults(handler=plan_command, own_options=_options_taking_values(parser))

