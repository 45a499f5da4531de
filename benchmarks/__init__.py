"""Benchmarks: torchext ops against eager torch, torch.compile and the device's copy bandwidth.

`python -m benchmarks.bench_ops` measures and writes a CSV; `python -m benchmarks.make_report`
turns CSVs into `reports/performance.md` and its plots.
"""
