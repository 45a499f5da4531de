"""Smoke test of the profiler overhead benchmark: a tiny run writes the full table."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks import bench_profiler_overhead


def test_overhead_benchmark_writes_one_row_per_tool(tmp_path, capsys):
    out = tmp_path / "overhead.csv"
    code = bench_profiler_overhead.main([
        "--d-model", "16", "--nhead", "2", "--dim-feedforward", "32", "--batch", "2",
        "--seq", "4", "--repeats", "2", "--warmup", "0", "--out", str(out),
    ])
    assert code == 0
    rows = list(csv.DictReader(out.read_text().splitlines()))
    assert [r["tool"] for r in rows] == ["unprofiled", "profiling.profile",
                                         "profiling.profile+ops", "torch.profiler", "MemTracker",
                                         "TorchDispatchMode (empty)"]
    assert set(rows[0]) == set(bench_profiler_overhead.COLUMNS)
    assert float(rows[0]["ratio"]) == 1.0 and float(rows[0]["added_ms"]) == 0.0
    assert all(float(r["ms"]) > 0 and int(r["repeats"]) == 2 for r in rows)
    assert "x unprofiled" in capsys.readouterr().out


def test_added_time_is_the_median_of_same_round_differences():
    # Rounds run at different speeds; within each, profiling adds 2 ms, except one 28 ms spike.
    # The difference of the two medians would say 20 ms (32 - 12).
    unprofiled = [10.0, 11.0, 30.0, 31.0, 12.0]
    profiled = [12.0, 13.0, 32.0, 33.0, 40.0]
    assert bench_profiler_overhead.paired_added_ms(profiled, unprofiled) == 2.0


def test_rounds_run_every_tool_once_in_changing_orders():
    # A tool that always ran right after the same other one would carry that one's after-effects
    # (e.g. memory it freed) into every one of its samples.
    calls: list[str] = []
    candidates = {name: (lambda name=name: calls.append(name)) for name in "abcd"}
    times = bench_profiler_overhead.measure(candidates, repeats=12, warmup=0,
                                            device=torch.device("cpu"))
    rounds = [calls[i:i + 4] for i in range(0, len(calls), 4)]
    assert all(sorted(r) == list("abcd") for r in rounds) and len(rounds) == 12
    assert list(times) == list("abcd") and all(len(t) == 12 for t in times.values())
    predecessors = {r[r.index("a") - 1] for r in rounds if r[0] != "a"}
    assert len(predecessors) > 1


def test_compiled_overhead_benchmark_times_the_compiled_step_under_each_profiler(tmp_path):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    out = tmp_path / "compiled.csv"
    code = bench_profiler_overhead.main([
        "--d-model", "16", "--nhead", "2", "--dim-feedforward", "32", "--batch", "2",
        "--seq", "4", "--repeats", "2", "--warmup", "0", "--compiled", "aot_eager",
        "--out", str(out),
    ])
    assert code == 0
    rows = list(csv.DictReader(out.read_text().splitlines()))
    # MemTracker would run the compiled step eagerly: left out; the empty mode's floor declares
    # ignore_compile_internals (torch >= 2.9), so it times the compiled step
    floor = (["TorchDispatchMode (empty)"]
             if hasattr(TorchDispatchMode, "ignore_compile_internals") else [])
    assert [r["tool"] for r in rows] == ["unprofiled", "profiling.profile",
                                         "profiling.profile+ops", "torch.profiler", *floor]
    assert "torch.compile(aot_eager)" in rows[0]["config"]
    assert counters["stats"]["unique_graphs"] >= 1  # the layer was compiled


def test_head_to_head_pairs_rounds_and_brackets_the_median():
    # Round by round ours adds 1 ms less, whatever the machine's speed that round: the median
    # difference is -1 ms, every round is a win, and a bootstrap of identical differences
    # cannot move off -1 ms.
    theirs = [12.0, 30.0, 11.0, 50.0, 13.0, 14.0, 20.0, 9.0, 40.0, 16.0, 18.0, 25.0]
    ours = [t - 1.0 for t in theirs]
    median, low, high, wins = bench_profiler_overhead.head_to_head(ours, theirs)
    assert (median, low, high, wins) == (-1.0, -1.0, -1.0, 12)
    assert "less than torch.profiler's" in bench_profiler_overhead.verdict_line(
        median, low, high, wins, 12)
    # mixed rounds: differences -3, -1, 0, +2, +4, twice each (median 0); the interval holds it
    median, low, high, wins = bench_profiler_overhead.head_to_head(
        [7.0, 9.0, 10.0, 12.0, 14.0] * 2, [10.0] * 10)
    assert median == 0.0 and wins == 4
    assert -3.0 <= low <= 0.0 <= high <= 4.0
    assert "not told apart" in bench_profiler_overhead.verdict_line(median, low, high, wins, 10)


def test_too_few_rounds_give_no_interval_and_no_verdict():
    # one round (README's smoke run) cannot say which profiler costs more
    median, low, high, wins = bench_profiler_overhead.head_to_head([5.0], [9.0])
    assert median == -4.0 and wins == 1 and math.isnan(low) and math.isnan(high)
    line = bench_profiler_overhead.verdict_line(median, low, high, wins, 1)
    assert "no verdict" in line and "less than" not in line


def test_the_compiled_floor_runs_compiled_code_compiled():
    if not hasattr(TorchDispatchMode, "ignore_compile_internals"):
        pytest.skip("torch < 2.9 skips compiling under any dispatch mode")
    calls = []

    def counting_backend(gm, example_inputs):  # noqa: ANN001, ANN202
        calls.append(gm)
        return gm.forward

    torch._dynamo.reset()
    compiled = torch.compile(lambda x: x.sin() + 1, backend=counting_backend)
    with bench_profiler_overhead._CallEachOpRunningCompiled():
        out = compiled(torch.ones(3))
    assert len(calls) == 1  # compiled inside the mode, not skipped
    assert torch.equal(out, torch.ones(3).sin() + 1)
