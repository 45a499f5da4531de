"""Smoke test of the profiler overhead benchmark: a tiny run writes the full table."""

from __future__ import annotations

import csv

import torch

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
    # the dispatch-mode tools that would run the compiled step eagerly are left out
    assert [r["tool"] for r in rows] == ["unprofiled", "profiling.profile",
                                         "profiling.profile+ops", "torch.profiler"]
    assert "torch.compile(aot_eager)" in rows[0]["config"]
    assert counters["stats"]["unique_graphs"] >= 1  # the layer was compiled
