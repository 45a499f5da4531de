"""Overhead of `profiling.profile` on a TransformerEncoderLayer training step, beside PyTorch's
own memory tools, all measured in the same run:

- `unprofiled`: the step alone (the baseline every ratio divides by);
- `profiling.profile`: our profiler around the step (hooks in, step, hooks out; the tables are
  built only when read, so `profiling.profile+ops` also times building `prof.ops`);
- `torch.profiler`: `torch.profiler.profile(profile_memory=True, record_shapes=True)`;
- `MemTracker`: `torch.distributed._tools.mem_tracker.MemTracker` (with `track_external`);
- `TorchDispatchMode (empty)`: a dispatch mode that only calls each op. Not a tool: the floor
  any profiler built on a Python dispatch mode pays (ours and MemTracker) before it records
  anything. Besides a Python call per op, while a mode is active PyTorch treats every tensor
  as subclass-like and skips in-place fast paths (e.g. backward sums gradients out of place):
  the floor grows with the tensors' sizes, not only with the number of ops (try a small
  `--d-model`).

Repetitions are interleaved (each round runs every tool once, in a shuffled order) so that
drift in the machine's speed hits all of them alike, and so that no tool always runs right
after the same other one (what a run leaves behind, e.g. freed memory, changes the next). The
table gives medians, their ratios, and the added time as the median of same-round differences
(`paired_added_ms`). On a machine shared with other work, `--clock cpu --threads 1` measures
CPU time instead of wall time, which other processes disturb far less.

With `--compiled BACKEND` the layer is `torch.compile`d (compiled before timing) and the
profilers time the compiled step, which runs compiled inside `profiling.profile` too. MemTracker
is left out there: under it torch runs compiled code eagerly (it does not declare
`ignore_compile_internals`), so its row would time another program; the empty dispatch mode
declares it (torch >= 2.9), so that it times the compiled step too. It stays on while a compiled
graph runs, and so pays a Python call for each op the graph dispatches (its extern kernels),
which `profiling.profile` does not (it pops its mode around compiled graphs): on a compiled step
the row is the floor of a mode that stays on, and ours can come in under it.

The verdict, `profiling.profile` against `torch.profiler`, is read from the same rounds: the
median of the per-round differences, with a bootstrap confidence interval
(`scipy.stats.bootstrap`, 90%), and in how many rounds ours added less. The interval is what
says whether one costs more than the other or the run cannot tell them apart; under
`MIN_ROUNDS_FOR_VERDICT` rounds there is no interval and no verdict.

    python -m benchmarks.bench_profiler_overhead                 # CPU
    python -m benchmarks.bench_profiler_overhead --device cuda --out overhead.csv
    python -m benchmarks.bench_profiler_overhead --compiled inductor
"""

from __future__ import annotations

import argparse
import csv
import datetime
import platform
import random
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy.stats
import torch
from torch.distributed._tools.mem_tracker import MemTracker
from torch.utils._python_dispatch import TorchDispatchMode

from profiling import profile

COLUMNS = ("device", "device_name", "torch", "date", "command", "config", "tool", "repeats",
           "ms", "ms_p20", "ms_p80", "ratio", "added_ms", "vs_torch_profiler_ms",
           "vs_torch_profiler_ci")


class _CallEachOp(TorchDispatchMode):
    """Calls each op, nothing else: the floor row."""


def _call_op(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN202
    return func(*args, **(kwargs or {}))


# Set after the class exists, so that torch does not wrap it in `_disable_dynamo` (the profiler
# does without that wrapper too): the floor is the mode alone.
_CallEachOp.__torch_dispatch__ = _call_op  # type: ignore[method-assign]


class _CallEachOpRunningCompiled(_CallEachOp):
    """The floor of a compiled step: compiled code runs compiled under it (torch >= 2.9), as
    under the profiler."""

    @classmethod
    def ignore_compile_internals(cls) -> bool:
        return True


# torch < 2.9 skips compiling under any dispatch mode: the floor would time eager code
_FLOOR_RUNS_COMPILED = hasattr(TorchDispatchMode, "ignore_compile_internals")


def make_step(args: argparse.Namespace, device: torch.device):
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(args.d_model, args.nhead, args.dim_feedforward,
                                             batch_first=True, device=device)
    model = layer if args.compiled is None else torch.compile(layer, backend=args.compiled)
    optimizer = torch.optim.Adam(layer.parameters(), lr=1e-4)
    x = torch.randn(args.batch, args.seq, args.d_model, device=device)

    def step() -> None:
        loss = model(x).square().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    step()  # optimizer state exists from here on (and the compiled graphs)
    return step, (layer, optimizer, x)


def tools(step: Callable[[], None], external: tuple, device: torch.device,
          compiled: bool = False) -> dict:
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)

    def ours() -> None:
        with profile(device):
            step()

    def ours_with_table() -> None:
        with profile(device) as prof:
            step()
        prof.ops  # noqa: B018 - building the table is part of this variant

    def torch_profiler() -> None:
        with torch.profiler.profile(activities=activities, profile_memory=True,
                                    record_shapes=True):
            step()

    def mem_tracker() -> None:
        tracker = MemTracker()
        tracker.track_external(*external)
        with tracker:
            step()

    floor_mode = _CallEachOpRunningCompiled if compiled else _CallEachOp

    def dispatch_mode_floor() -> None:
        with floor_mode():
            step()

    candidates = {"unprofiled": step, "profiling.profile": ours,
                  "profiling.profile+ops": ours_with_table, "torch.profiler": torch_profiler,
                  "MemTracker": mem_tracker, "TorchDispatchMode (empty)": dispatch_mode_floor}
    if compiled:  # under MemTracker torch runs the compiled step eagerly: not comparable
        del candidates["MemTracker"]
        if not _FLOOR_RUNS_COMPILED:
            del candidates["TorchDispatchMode (empty)"]
    return candidates


def measure(candidates: dict[str, Callable[[], None]], repeats: int, warmup: int,
            device: torch.device, clock: Callable[[], float] = time.perf_counter,
            ) -> dict[str, list[float]]:
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    names = list(candidates)
    for _ in range(warmup):
        for name in names:
            candidates[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    order = random.Random(0)  # the same orders in every run
    for _ in range(repeats):
        order.shuffle(names)
        for name in names:
            sync()
            start = clock()
            candidates[name]()
            sync()
            times[name].append((clock() - start) * 1e3)
    return times


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def paired_added_ms(samples: list[float], baseline: list[float]) -> float:
    """Median over rounds of (tool − unprofiled) in the same round. Each round runs every tool
    back to back, so a slow spell of the machine shifts both sides of a difference alike: a
    steadier estimate of the added time than a difference of two medians."""
    return statistics.median(t - b for t, b in zip(samples, baseline, strict=True))


MIN_ROUNDS_FOR_VERDICT = 10  # fewer: a bootstrap of a handful of rounds claims too much


def head_to_head(ours: list[float], theirs: list[float], confidence: float = 0.9,
                 ) -> tuple[float, float, float, int]:
    """ours − theirs, paired by round: (median ms, the interval's low and high ends, rounds in
    which ours took less). The interval bootstraps the median over rounds (fixed seed: a rerun
    on the same samples gives the same interval); NaN under `MIN_ROUNDS_FOR_VERDICT` rounds."""
    differences = np.subtract(ours, theirs)
    low = high = float("nan")
    if len(differences) >= MIN_ROUNDS_FOR_VERDICT:
        interval = scipy.stats.bootstrap((differences,), np.median, confidence_level=confidence,
                                         method="percentile", random_state=0).confidence_interval
        low, high = float(interval.low), float(interval.high)
    return float(np.median(differences)), low, high, int((differences < 0).sum())


def verdict_line(median: float, low: float, high: float, wins: int, rounds: int) -> str:
    """The head-to-head as the benchmark prints it."""
    head = f"profiling.profile − torch.profiler, paired: {median:+.2f} ms"
    if np.isnan(low):
        return (f"{head}; ours added less in {wins} of {rounds} rounds (under "
                f"{MIN_ROUNDS_FOR_VERDICT} rounds: no interval, no verdict)")
    verdict = "more than" if low > 0 else "less than" if high < 0 else "not told apart from"
    return (f"{head} (90% CI {low:+.2f} to {high:+.2f}); ours added less in {wins} of "
            f"{rounds} rounds: {verdict} torch.profiler's overhead")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--nhead", type=int, default=4)
    parser.add_argument("--dim-feedforward", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall time, or this process's CPU time (steadier on a busy "
                             "machine; with --threads 1 it is the step's own work)")
    parser.add_argument("--compiled", metavar="BACKEND", choices=("inductor", "aot_eager"),
                        help="torch.compile the layer with this backend (inductor, aot_eager)")
    parser.add_argument("--out", type=Path, help="write the table as CSV here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())

    step, external = make_step(args, device)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    candidates = tools(step, external, device, compiled=args.compiled is not None)
    times = measure(candidates, args.repeats, args.warmup, device, clock)
    baseline = statistics.median(times["unprofiled"])
    config = (f"TransformerEncoderLayer d_model={args.d_model} nhead={args.nhead} "
              f"ff={args.dim_feedforward} batch={args.batch} seq={args.seq}"
              f"{'' if args.compiled is None else f', torch.compile({args.compiled})'}, Adam step, "
              f"{torch.get_num_threads()} threads, {args.clock} clock")
    device_name = (torch.cuda.get_device_name(device) if device.type == "cuda"
                   else platform.processor() or platform.machine())
    info = {"device": str(device), "device_name": device_name, "torch": torch.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": shlex.join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
            "config": config}
    rows = []
    for tool, samples in times.items():
        median = statistics.median(samples)
        rows.append(info | {"tool": tool, "repeats": len(samples), "ms": round(median, 3),
                            "ms_p20": round(quantile(samples, 0.2), 3),
                            "ms_p80": round(quantile(samples, 0.8), 3),
                            "ratio": round(median / baseline, 3),
                            "added_ms": round(paired_added_ms(samples, times["unprofiled"]), 3)})

    print(f"{config} on {device} ({device_name}), torch {torch.__version__}, "
          f"{args.repeats} interleaved repeats")
    print(f"{'tool':<27}{'median ms':>12}{'p20':>10}{'p80':>10}{'x unprofiled':>14}"
          f"{'added ms (paired)':>19}")
    for row in rows:
        print(f"{row['tool']:<27}{row['ms']:>12.2f}{row['ms_p20']:>10.2f}{row['ms_p80']:>10.2f}"
              f"{row['ratio']:>14.2f}{row['added_ms']:>19.2f}")
    median, low, high, wins = head_to_head(times["profiling.profile"], times["torch.profiler"])
    print(verdict_line(median, low, high, wins, args.repeats))
    for row in rows:
        ours = row["tool"] == "profiling.profile"
        row["vs_torch_profiler_ms"] = round(median, 3) if ours else ""
        row["vs_torch_profiler_ci"] = f"{low:.3f}..{high:.3f}" if ours and low == low else ""
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
