"""CPU smoke test of the benchmark and its report, so neither rots between GPU runs.

Tiny sizes through Triton's interpreter: these check the rows and the report's arithmetic, never
speed (the targets live in the benchmark's report, not in tests).
"""

from __future__ import annotations

import dataclasses
import math
import time

import pandas as pd
import pytest
import torch
import triton

import torchext
from benchmarks import _harness, bench_ops, make_report
from benchmarks import _providers as providers
from benchmarks._harness import COLUMNS, CPU_DEVICE_LABEL
from benchmarks._providers import CASES, CASES_BY_NAME, MODES, LauncherCall
from triton_kernels.runtime import compute_dtype, kernel_for
from triton_kernels.sin import sin_kernel

SIZES = (16, 32, 64)
SHAPES = ((8, 4),)  # the interpreted fused least squares is the slowest op here
DTYPES = ("fp32", "bf16")
PROVIDERS = ("torchext", "eager")
PRESENT = [c for c in CASES if hasattr(torchext, c.torchext_name)]


def run_smoke(tmp_path, *extra: str) -> tuple[int, pd.DataFrame]:
    out = tmp_path / "smoke.csv"
    code = bench_ops.main([
        "--device", "cpu", "--sizes", "2^4,2^5,2^6", "--shapes", "8x4",
        "--dtypes", ",".join(DTYPES), "--providers", ",".join(PROVIDERS), "--cpu-reps", "1",
        "--copy-numel", "2^16", "--out", str(out), *extra,
    ])  # fmt: skip
    return code, pd.read_csv(out, dtype={"shape": str}, na_values=["NA"])


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    code, df = run_smoke(tmp)
    return tmp, code, df


def test_smoke_run_has_every_row_with_positive_finite_numbers(smoke):
    _, code, df = smoke
    assert code == 0
    assert list(df.columns) == list(COLUMNS)
    assert (df.device == CPU_DEVICE_LABEL).all()
    assert df.peak_bytes.isna().all()  # no allocator statistics on the CPU: NA, not 0
    for column in ("ms", "ms_p20", "ms_p80", "gbps", "frac_of_copy", "bytes", "numel"):
        assert (df[column] > 0).all() and df[column].map(math.isfinite).all(), column
    assert (df.ms_p20 <= df.ms).all() and (df.ms <= df.ms_p80).all()

    copy = df[df.op == "copy"]
    assert len(copy) == 1 and copy.frac_of_copy.iloc[0] == 1.0
    assert copy.bytes.iloc[0] == 2 * 4 * 2**16
    rows = df[df.op != "copy"]
    assert rows.frac_of_copy.values == pytest.approx(rows.gbps.values / copy.gbps.iloc[0])
    assert rows.gbps.values == pytest.approx(rows.bytes.values / (rows.ms.values * 1e6))

    assert set(rows.op) == {c.name for c in PRESENT}
    for case in PRESENT:
        shapes = SHAPES if case.family == "matvec" else [(n,) for n in SIZES]
        got = rows[rows.op == case.name]
        assert len(got) == len(shapes) * len(DTYPES) * len(PROVIDERS) * len(MODES), case.name
        assert set(got["mode"]) == set(MODES) and set(got.provider) == set(PROVIDERS)
        for shape in shapes:
            cell = got[got["shape"] == "x".join(map(str, shape))]
            assert (cell.numel == math.prod(shape)).all()
            for mode in MODES:
                nbytes = cell[(cell["mode"] == mode) & (cell.dtype == "bf16")].bytes
                assert (nbytes == case.bytes_moved(mode, shape, 2)).all()


def test_missing_ops_are_skipped_with_a_note_not_faked(tmp_path, capsys, monkeypatch):
    monkeypatch.delattr(torchext, "mul", raising=False)  # as before its helper landed it
    code, df = run_smoke(tmp_path, "--op", "sin,mul,mul_scalar", "--modes", "fwd",
                         "--dtypes", "fp32", "--sizes", "16")  # fmt: skip
    assert code == 0
    assert set(df.op) == {"copy", "sin"}
    printed = capsys.readouterr().out
    for name in ("mul", "mul_scalar"):
        assert f"skipping {name}: torchext.mul does not exist yet" in printed


def test_bad_arguments_are_refused(tmp_path):
    for bad in (["--op", "tan"], ["--dtypes", "fp8"], ["--providers", "jax"], ["--modes", "up"]):
        with pytest.raises(SystemExit):
            bench_ops.main(["--device", "cpu", "--out", str(tmp_path / "x.csv"), *bad])


def test_report_from_the_smoke_csv(smoke):
    tmp, _, df = smoke
    md, plots = tmp / "report" / "performance.md", tmp / "report" / "performance"
    notes = tmp / "notes.md"
    notes.write_text("sin misses the eager target on the CPU: the interpreter is Python.\n")
    argv = [str(tmp / "smoke.csv"), "--md", str(md), "--plots-dir", str(plots),
            "--bandwidth-numel", "16", "--eager-numel", "16", "--ls-shape", "16x8",
            "--notes", str(notes)]
    assert make_report.main(argv) == 0
    text = md.read_text()
    assert notes.read_text().strip() in text
    assert "Not performance figures" in text and CPU_DEVICE_LABEL in text
    assert f"python -m benchmarks.make_report {' '.join(argv)}" in text
    assert df.command.iloc[0] in text and torch.__version__ in text and triton.__version__ in text
    assert "## Targets" in text and "| target | op | measured | verdict |" in text
    targets = make_report.all_targets(df, make_report.Thresholds(16, eager_numel=16,
                                                                   ls_shape="16x8"))
    for target in targets:
        assert f"| {target.goal} | {target.op} | {target.measured} | **{target.verdict}** |" in text
        if target.op not in set(df.op):
            assert target.verdict == make_report.NOT_MEASURED
    assert {t.verdict for t in targets if t.op == "sin"} <= {make_report.MET, make_report.MISSED}
    # The interpreter is far slower than eager torch, so that verdict is computed, and missed.
    sin_vs_eager = next(t for t in targets if t.op == "sin" and "eager" in t.goal)
    assert sin_vs_eager.verdict == make_report.MISSED
    for case in PRESENT:
        png = plots / f"{case.name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
        assert f"![{case.name}](performance/{case.name}.png)" in text


def test_report_refuses_cpu_rows_in_the_repository_reports(smoke):
    tmp, _, _ = smoke
    report = make_report.REPO_REPORTS / "performance.md"
    before = report.read_bytes() if report.exists() else None
    with pytest.raises(SystemExit, match="not performance figures"):
        make_report.main([str(tmp / "smoke.csv")])
    assert (report.read_bytes() if report.exists() else None) == before


def _row(op, mode, provider, ms, *, numel=2**24, shape=None, dtype="fp32", frac=1.0, peak=None):
    family = next((c.family for c in CASES if c.name == op), "limit")
    return dict(device="cuda", device_name="GPU", torch="t", triton="t", date="d", command="c",
                op=op, family=family, mode=mode, provider=provider, dtype=dtype,
                shape=shape or str(numel), numel=numel, bytes=1, ms=ms, ms_p20=ms, ms_p80=ms,
                gbps=1000 * frac, frac_of_copy=frac, peak_bytes=peak)  # fmt: skip


def test_target_verdicts_met_missed_and_not_measured():
    ls = dict(numel=65536 * 1024, shape="65536x1024", mode="fwd+bwd")
    df = pd.DataFrame([
        _row("copy", "fwd", "torch", 1.0),
        _row("sin", "fwd", "torchext", 1.00, frac=0.90), _row("sin", "fwd", "eager", 1.0),
        _row("sin", "bwd", "torchext", 1.04, frac=0.86), _row("sin", "bwd", "eager", 1.0),
        _row("sin", "bwd", "torchext", 1.0, numel=2**20, frac=0.10),  # below 2^24: not judged
        _row("cos", "fwd", "torchext", 1.20, frac=0.84), _row("cos", "fwd", "eager", 1.0),
        _row("cos", "fwd", "torchext", 9.0, numel=2**15), _row("cos", "fwd", "eager", 1.0,
                                                                  numel=2**15),
        _row("least_squares", provider="torchext", ms=1.0, peak=100, **ls),
        _row("least_squares", provider="eager", ms=1.9, peak=300, **ls),
        _row("least_squares", provider="compile", ms=1.1, peak=200, **ls),
    ])  # fmt: skip
    by_op = {}
    for t in make_report.all_targets(df, make_report.Thresholds()):
        by_op.setdefault(t.op, []).append(t.verdict)
    assert by_op["sin"] == ["met", "met", "met"]  # 90%, 86% of copy; 1.04× eager
    assert by_op["cos"] == ["missed", "not measured", "missed"]  # 84%; no bwd; 1.2× eager
    assert by_op["mul"] == ["not measured"] * 3
    assert by_op["least_squares"] == ["met", "met", "missed", "met"]  # vs eager; 1.9×; 1.1×; peak
    no_peak = df.assign(peak_bytes=float("nan"))
    assert make_report.least_squares_targets(no_peak, make_report.Thresholds())[-1].verdict == (
        make_report.NOT_MEASURED)


def sin_forward_with_block(x: torch.Tensor, *, block: int = 1024) -> torch.Tensor:
    """A launcher that takes its block size: what `--tune` sweeps."""
    out = torch.empty_like(x)
    kernel_for(sin_kernel, x.device)[(triton.cdiv(x.numel(), block),)](
        x, out, x.numel(), COMPUTE_DTYPE=compute_dtype(x.dtype), BLOCK=block)
    return out


def sin_forward_with_wrong_grid(x: torch.Tensor, *, block: int = 1024) -> torch.Tensor:
    """Launches one program whatever the block: too small a block leaves the tail unwritten."""
    out = torch.full_like(x, float("nan"))
    kernel_for(sin_kernel, x.device)[(1,)](
        x, out, x.numel(), COMPUTE_DTYPE=compute_dtype(x.dtype), BLOCK=block)
    return out


@pytest.mark.parametrize("launcher, good", [(sin_forward_with_block.__name__, True),
                                            (sin_forward_with_wrong_grid.__name__, False)])
def test_tune_sweeps_launcher_block_sizes_and_refuses_wrong_results(
    tmp_path, monkeypatch, launcher, good
):
    call = LauncherCall(__name__, launcher, lambda inputs, grad: (inputs.args[0].detach(),))
    case = dataclasses.replace(CASES_BY_NAME["sin"], launchers={"fwd": call})
    monkeypatch.setitem(bench_ops.CASES_BY_NAME, "sin", case)
    code, df = run_smoke(tmp_path, "--op", "sin", "--modes", "fwd,bwd", "--dtypes", "fp32",
                         "--sizes", "64", "--tune", "block=16,64")  # fmt: skip
    tuned = df[df.provider.str.startswith("torchext[")]
    assert set(tuned["mode"]) == {"fwd"}  # no bwd launcher wired: noted, not tuned
    expected = {"torchext[launcher]", "torchext[block=16]", "torchext[block=64]"}
    assert set(tuned.provider) == (expected if good else expected - {"torchext[block=16]"})
    assert code == (0 if good else 1)


def test_deadline_stops_and_resume_finishes_without_remeasuring(tmp_path):
    one_cell = ("--op", "sin", "--dtypes", "fp32", "--sizes", "16")
    code, df = run_smoke(tmp_path, *one_cell, "--deadline-s", "0")
    assert code == 2 and list(df.op) == ["copy"]  # stopped before the first cell
    code, df = run_smoke(tmp_path, *one_cell, "--resume")
    assert code == 0 and list(df.op) == ["copy", "copy"] + ["sin"] * 6
    code, df = run_smoke(tmp_path, *one_cell, "--resume", "--dtypes", "fp32,bf16")
    assert code == 0 and (df.op == "sin").sum() == 12  # only the bf16 cell was new
    assert df.command.nunique() == 3
    assert len(make_report.load([tmp_path / "smoke.csv"])) == len(df)
    doubled = tmp_path / "doubled.csv"
    doubled.write_text((tmp_path / "smoke.csv").read_text() + "".join(
        (tmp_path / "smoke.csv").read_text().splitlines(keepends=True)[1:]))
    assert len(make_report.load([doubled])) == len(df) + 3  # repeats kept once; copies all
    elsewhere = (tmp_path / "smoke.csv").read_text().replace(CPU_DEVICE_LABEL, "cuda")
    (tmp_path / "smoke.csv").write_text(elsewhere)
    with pytest.raises(SystemExit, match="same device"):
        run_smoke(tmp_path, *one_cell, "--resume")


@pytest.mark.cuda
def test_cuda_run_times_with_events_and_reports_peak_memory(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device: the GPU path (do_bench, peak memory) has no CPU twin")
    out = tmp_path / "cuda.csv"
    code = bench_ops.main(["--device", "cuda", "--sizes", "2^12", "--shapes", "64x32",
                           "--dtypes", "fp32", "--rep-ms", "5", "--warmup-ms", "2",
                           "--copy-numel", "2^24", "--out", str(out)])  # fmt: skip
    df = pd.read_csv(out, dtype={"shape": str}, na_values=["NA"])
    assert code == 0 and (df.device == "cuda").all()
    rows = df[df.op != "copy"]
    assert set(rows.provider) == {"torchext", "eager", "compile"}
    assert (rows.ms > 0).all() and rows.gbps.map(math.isfinite).all()
    assert (rows[rows["mode"] == "fwd+bwd"].peak_bytes > 0).all()  # gradients at least
    assert df[df.op == "copy"].gbps.iloc[0] > 50  # any CUDA GPU copies faster than this


class _HostEvent:
    """Stands in for torch.cuda.Event so the CUDA set-up timing loop runs on the host."""

    def __init__(self, enable_timing: bool = True):
        self.at = None

    def record(self) -> None:
        self.at = time.perf_counter()

    def elapsed_time(self, end: _HostEvent) -> float:
        return (end.at - self.at) * 1e3


def test_setup_timing_loop_times_fn_only_and_pairs_setup_with_fn(monkeypatch):
    monkeypatch.setattr(torch.cuda, "Event", _HostEvent)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(_harness, "L2_FLUSH_BYTES", 1024)
    x = torch.ones(3, requires_grad=True)
    calls = {"setup": 0, "fn": 0}

    def setup():
        assert x.grad is None  # grads were reset before the set-up
        calls["setup"] += 1
        time.sleep(0.03)

    def fn():
        calls["fn"] += 1
        x.grad = torch.zeros(3)
        time.sleep(0.001)

    timer = _harness.Timer(torch.device("cpu"), warmup_ms=2, rep_ms=10)
    timing = timer._time_on_cuda_with_setup(fn, (x,), setup)
    assert 0.9 <= timing.ms < 20  # the 30 ms set-up is not in the time (slack for load)
    assert calls["setup"] == calls["fn"] >= 5 + 1 + 1


def test_backward_mode_runs_a_fresh_forward_so_compiled_donated_buffers_work():
    """torch.compile's least squares backward donates its saved residual: retain_graph=True
    would raise, so each backward repetition gets its own forward."""
    case = CASES_BY_NAME["least_squares"]
    inputs = case.make_inputs((16, 8), torch.float32, torch.device("cpu"))
    compiled = providers.compiled_reference(case)
    setup, backward = bench_ops.timed_call("bwd", compiled, inputs, torch.tensor(1.0))
    (w,) = inputs.grad_inputs
    X, _, y = inputs.args
    for _ in range(2):
        w.grad = None
        setup()
        backward()
        torch.testing.assert_close(w.grad, 2 * X.t() @ (X @ w.detach() - y))


def test_a_provider_with_wrong_results_gets_no_rows(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torchext, "sin", torch.cos)  # fast and wrong
    code, df = run_smoke(tmp_path, "--op", "sin", "--dtypes", "fp32", "--sizes", "64")
    assert code == 1
    assert set(df[df.op == "sin"].provider) == {"eager"}
    assert "sin torchext fp32 64: ValueError: sin/torchext: result 0 differs" in (
        capsys.readouterr().out)


@pytest.mark.parametrize("case", [c for c in CASES if c.launchers], ids=lambda c: c.name)
def test_wired_launchers_compute_the_op(case):
    """--tune calls these launchers directly: their arguments must stay what they take."""
    shape = (8, 4) if case.family == "matvec" else (40,)
    inputs = case.make_inputs(shape, torch.float32, torch.device("cpu"))
    out = case.reference(*inputs.args)
    grad = torch.randn_like(out)
    expected = {"fwd": out.detach()}
    if "bwd" in case.launchers:
        expected["bwd"] = torch.autograd.grad(out, inputs.grad_inputs, grad)[0]
    for mode, launcher in case.launchers.items():
        got = bench_ops._tensors(launcher.resolve()(*launcher.arguments(inputs, grad)))[0]
        torch.testing.assert_close(got.reshape(expected[mode].shape), expected[mode])
