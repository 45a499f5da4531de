"""The planner's prediction: the step's measured memory, row by row, with checkpointing applied.

The baseline profile gives the memory at every operator row (`peak_bytes`). Checkpointing a
module call changes each row by a known amount:

- a row after the call in the same forward/backward cycle (a later forward op, or a backward
  node of an earlier part of the model) no longer has the call's internal saved bytes, but has
  its inputs that the graph would not have kept: `-(saved_bytes - kept_bytes)`;
- a backward row of the call itself runs after the recomputation, which rebuilds exactly the
  saved tensors the baseline held there; it keeps the kept inputs and one recomputed operator's
  output on top: `+(kept_bytes + largest output)`;
- rows before the call, and after the backward pass (the optimizer step), are unchanged.

So `predicted = max over rows of (peak - effect @ chosen)`, linear in the choice, and the
choice is a 0/1 program: minimise the chosen modules' forward time (the recompute cost)
subject to every row within the budget and no chosen module inside another. `scipy.optimize.milp`
(HiGHS) solves it exactly; the same program with the peak as objective gives the floor.
Rows are placed against calls by module path (forward rows in call order; backward node rows by
the module that created the node, walking back through the forward order).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ._census import Call, Census

_SCALE = 2.0**20  # the solver sees MiB: bytes in the billions upset its tolerances


def _row_names(call: Call) -> tuple[str, ...]:
    """The module paths the profiler may give this call's rows: relative to the outermost
    module called, with or without its class name in front."""
    top = call.top
    root_name = type(top.module).__name__
    if call is top:
        return (root_name, call.path) if call.path else (root_name,)
    rel = call.path if not top.path else call.path[len(top.path) + 1:]
    return rel, f"{root_name}.{rel}"


def _matches(row_path: str, call: Call) -> bool:
    return row_path in _row_names(call)


def _assign_forward(paths: list[str], events: list[tuple[str, Call]]) -> list[Call | None]:
    """The innermost call of each forward row, merging rows and call events in order."""
    owners: list[Call | None] = []
    stack: list[Call] = []
    position = 0
    for path in paths:
        if not path:
            while position < len(events) and events[position][0] == "exit" and stack:
                stack.pop()
                position += 1
            owners.append(None)
            continue
        if stack and _matches(path, stack[-1]):
            owners.append(stack[-1])
            continue
        trial, ahead = list(stack), position
        while ahead < len(events) and ahead - position < 500:
            kind, call = events[ahead]
            ahead += 1
            if kind == "enter":
                trial.append(call)
            elif trial:
                trial.pop()
            if trial and _matches(path, trial[-1]):
                stack, position = trial, ahead
                break
        owners.append(stack[-1] if stack else None)
    return owners


@dataclass
class PeakModel:
    """Rows of the baseline (deduplicated) and how each candidate module's checkpoint moves
    them; `candidates` has one row per module that checkpointing could help."""

    candidates: pd.DataFrame  # label, module, saved_bytes, kept_bytes, recompute_ms, calls
    peaks: np.ndarray  # int64 [rows]
    effects: np.ndarray  # int64 [rows, candidates]: bytes removed when chosen
    ancestors: list[list[int]]  # candidate -> candidates that contain it

    def predict(self, chosen: np.ndarray) -> int:
        if len(self.peaks) == 0:
            return 0
        return int((self.peaks - self.effects @ chosen.astype(np.int64)).max())

    def _antichain(self, extra: int) -> Any:
        from scipy.optimize import LinearConstraint

        rows = []
        n = len(self.candidates)
        for index, above in enumerate(self.ancestors):
            if above:
                row = np.zeros(n + extra)
                row[[index, *above]] = 1
                rows.append(row)
        return LinearConstraint(np.array(rows), -np.inf, 1) if rows else None

    def solve(self, budget: int) -> np.ndarray | None:
        """The cheapest choice predicted within `budget` (None: no choice is)."""
        from scipy.optimize import Bounds, LinearConstraint, milp

        n = len(self.candidates)
        if n == 0:
            return np.zeros(0, dtype=bool) if self.predict(np.zeros(0)) <= budget else None
        need = (self.peaks - budget) / _SCALE
        constraints = [LinearConstraint(self.effects / _SCALE, need, np.inf)]
        antichain = self._antichain(0)
        if antichain is not None:
            constraints.append(antichain)
        cost = self.candidates.recompute_ms.to_numpy(float)
        cost = cost + 1e-6 * (cost.sum() + 1.0)  # ties: fewer modules
        result = milp(cost, constraints=constraints, integrality=np.ones(n),
                      bounds=Bounds(0, 1))
        if result.x is None:
            return None
        chosen = np.round(result.x).astype(bool)
        return chosen if self.predict(chosen) <= budget else None

    def floor(self) -> tuple[int, np.ndarray]:
        """The lowest predicted peak any choice reaches, and that choice."""
        from scipy.optimize import Bounds, LinearConstraint, milp

        n = len(self.candidates)
        if n == 0:
            return self.predict(np.zeros(0)), np.zeros(0, dtype=bool)
        top = float(self.peaks.max()) / _SCALE
        matrix = np.hstack([self.effects / _SCALE, np.ones((len(self.peaks), 1))])
        constraints = [LinearConstraint(matrix, self.peaks / _SCALE, np.inf)]
        antichain = self._antichain(1)
        if antichain is not None:
            constraints.append(antichain)
        cost = np.zeros(n + 1)
        cost[-1] = 1.0
        result = milp(cost, constraints=constraints, integrality=[*([1] * n), 0],
                      bounds=Bounds([0] * (n + 1), [1] * n + [top]))
        chosen = (np.round(result.x[:n]).astype(bool) if result.x is not None
                  else np.zeros(n, dtype=bool))
        return self.predict(chosen), chosen


def _call_times(calls: list[Call], owners: list[Call | None], times: np.ndarray) -> dict:
    """Forward milliseconds of each call, its nested calls included."""
    spent = {c.index: 0.0 for c in calls}
    for owner, ms in zip(owners, times, strict=True):
        call = owner
        while call is not None:
            spent[call.index] += ms
            call = call.parent
    for call in calls:
        if call.events is not None and call.events[1] is not None:
            spent[call.index] = call.events[0].elapsed_time(call.events[1])
    return spent


def build_model(ops: pd.DataFrame, census: Census,
                forward_ms: dict[tuple[str, str], float] | None = None) -> PeakModel:
    """The prediction for this baseline profile and the census taken in the same run;
    `forward_ms` (label, module) -> recompute cost, measured without the profiler (default:
    the profiled rows' `time_ms`)."""
    ops = ops.sort_values("seq").reset_index(drop=True)
    forward = (ops.phase != "backward").to_numpy()  # forward, optimizer, ...: in call order
    paths = ops.module.astype(str).tolist()
    fw_index = np.flatnonzero(forward)
    owners = _assign_forward([paths[i] for i in fw_index], census.events)
    # forward position (row number) and cycle (backward passes before) of every call
    start: dict[int, int] = {}
    end: dict[int, int] = {}
    backward_starts = np.r_[False, forward[:-1] & ~forward[1:]]
    cycle_of_row = np.cumsum(backward_starts)  # a forward row's cycle = passes begun before it
    # what recomputing an op allocates beyond what it saves: freed before the backward op runs
    unsaved = (ops.output_bytes - ops.saved_new_bytes).clip(lower=0).to_numpy(np.int64)
    largest_output: dict[int, int] = {}
    for owner, row in zip(owners, fw_index, strict=True):
        call = owner
        while call is not None:
            start.setdefault(call.index, row)
            end[call.index] = row
            largest_output[call.index] = max(largest_output.get(call.index, 0),
                                             int(unsaved[row]))
            call = call.parent
    calls = [c for c in census.calls if c.index in start and c.path]
    cycle = {i: int(cycle_of_row[row]) for i, row in start.items()}
    times = _call_times(census.calls, owners, ops.time_ms.to_numpy(float)[fw_index])

    keys = sorted({(c.label, c.path) for c in calls if c.saved_bytes > c.kept_bytes},
                  key=lambda k: min(c.index for c in calls if (c.label, c.path) == k))
    column = {key: j for j, key in enumerate(keys)}
    rows = len(ops)
    effects = np.zeros((rows, len(keys)), dtype=np.int64)
    chosen_calls = [c for c in calls if (c.label, c.path) in column]
    # where each row sits: forward rows at their own number, backward rows at the forward row
    # of the module that created their node, walking back through the forward order
    position = np.arange(rows)
    row_cycle = cycle_of_row.copy()
    named: dict[str, list[Call]] = {}
    for call in census.calls:
        if call.index in start:
            for name in _row_names(call):
                named.setdefault(name, []).append(call)
    frontier = rows
    for i in range(rows):
        if forward[i]:
            continue
        if i == 0 or forward[i - 1]:
            frontier = i  # a backward pass starts: everything before it in the forward order
        row_cycle[i] = cycle_of_row[i] - 1
        best = None
        for call in named.get(paths[i], ()):
            if (cycle[call.index] == row_cycle[i] and start[call.index] <= frontier
                    and (best is None or start[call.index] > start[best.index])):
                best = call
        if best is not None:
            frontier = min(frontier, end[best.index])
        position[i] = frontier
    for call in chosen_calls:
        j = column[(call.label, call.path)]
        same = row_cycle == cycle[call.index]
        after = same & (position > end[call.index])
        inside = same & ~forward & (position >= start[call.index]) & (
            position <= end[call.index])
        effects[after, j] += call.saved_bytes - call.kept_bytes
        effects[inside, j] -= call.kept_bytes
    peaks = ops.peak_bytes.to_numpy(np.int64)
    # the recomputation itself: when the backward pass reaches a checkpointed call, live bytes
    # as the baseline had them there, plus the largest output the recomputed forward drops
    live = ops.live_bytes.to_numpy(np.int64)
    extra_peaks, extra_effects = [], []
    for call in chosen_calls:
        inside = np.flatnonzero((row_cycle == cycle[call.index]) & ~forward
                                & (position >= start[call.index])
                                & (position <= end[call.index]))
        if len(inside) and inside[0] > 0:
            effect = effects[inside[0]].copy()
            effect[column[(call.label, call.path)]] -= largest_output.get(call.index, 0)
            extra_peaks.append(live[inside[0] - 1])
            extra_effects.append(effect)
    if extra_peaks:
        peaks = np.r_[peaks, extra_peaks]
        effects = np.vstack([effects, extra_effects])
    if rows and keys:  # rows that move alike: only the highest matters
        effects, inverse = np.unique(effects, axis=0, return_inverse=True)
        highest = np.full(len(effects), np.iinfo(np.int64).min)
        np.maximum.at(highest, inverse.ravel(), peaks)
        peaks = highest
    elif rows:
        effects, peaks = effects[:1], peaks.max(keepdims=True)
    table = pd.DataFrame({
        "label": [k[0] for k in keys], "module": [k[1] for k in keys],
        "saved_bytes": [sum(c.saved_bytes for c in chosen_calls if (c.label, c.path) == k)
                        for k in keys],
        "kept_bytes": [sum(c.kept_bytes for c in chosen_calls if (c.label, c.path) == k)
                       for k in keys],
        "recompute_ms": [forward_ms[k] if forward_ms and k in forward_ms else
                         sum(times[c.index] for c in chosen_calls if (c.label, c.path) == k)
                         for k in keys],
        "calls": [sum(1 for c in chosen_calls if (c.label, c.path) == k) for k in keys],
    })
    ancestors = [[column[(label, p)] for p in _prefixes(path) if (label, p) in column]
                 for label, path in keys]
    return PeakModel(table, peaks, effects, ancestors)


def _prefixes(path: str) -> list[str]:
    parts = path.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]
