"""Smoke test of the profiler overhead benchmark: a tiny run writes the full table."""

from __future__ import annotations

import csv

from benchmarks import bench_profiler_overhead


def test_overhead_benchmark_writes_one_row_per_tool(tmp_path, capsys):
    out = tmp_path / "overhead.csv"
    code = bench_profiler_overhead.main([
        "--d-model", "16", "--nhead", "2", "--dim-feedforward", "32", "--batch", "2",
        "--seq", "4", "--repeats", "2", "--warmup", "0", "--out", str(out),
    ])
    assert code == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["tool"] for r in rows] == ["unprofiled", "profiling.profile",
                                         "profiling.profile+ops", "torch.profiler", "MemTracker"]
    assert set(rows[0]) == set(bench_profiler_overhead.COLUMNS)
    assert float(rows[0]["ratio"]) == 1.0
    assert all(float(r["ms"]) > 0 and int(r["repeats"]) == 2 for r in rows)
    assert "x unprofiled" in capsys.readouterr().out
