"""Timing, peak memory, the copy-bandwidth limit and the CSV rows: everything but the op table.

On CUDA, times come from `triton.testing.do_bench` (warm-up, L2 flushed before each repetition,
CUDA events, median and 20th/80th percentiles). On the CPU the ops run through Triton's
interpreter, so a `time.perf_counter` median over a few repetitions is all that makes sense: those
rows are labelled `cpu (Triton interpreter)` and are smoke-test output, not performance figures.
"""

from __future__ import annotations

import csv
import datetime
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import triton
import triton.testing

CPU_DEVICE_LABEL = "cpu (Triton interpreter)"
QUANTILES = (0.5, 0.2, 0.8)  # median first: it is the reported time

COLUMNS = (
    "device", "device_name", "torch", "triton", "date", "command",
    "op", "family", "mode", "provider", "dtype", "shape", "numel",
    "bytes", "ms", "ms_p20", "ms_p80", "gbps", "frac_of_copy", "peak_bytes",
)  # fmt: skip


@dataclass(frozen=True)
class RunInfo:
    """What every row repeats, so that any subset of a CSV still says where it came from."""

    device: str
    device_name: str
    torch: str
    triton: str
    date: str
    command: str


def run_info(device: torch.device, command: str) -> RunInfo:
    if device.type == "cuda":
        label, name = "cuda", torch.cuda.get_device_name(device)
    else:
        label, name = CPU_DEVICE_LABEL, _cpu_name()
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return RunInfo(label, name, torch.__version__, triton.__version__, date, command)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


@dataclass(frozen=True)
class Timing:
    ms: float
    ms_p20: float
    ms_p80: float


def _no_setup() -> None:
    return None


@dataclass(frozen=True)
class Timer:
    """Times `fn` on `device`: median and 20th/80th percentiles in ms.

    `grad_to_none` tensors get `.grad = None` before each repetition (no accumulation timed).
    `setup`, when given, runs untimed before each repetition: a backward-only measurement runs
    a fresh forward there, so no `retain_graph=True` is needed (which torch.compile refuses when
    its backward donates saved buffers, and which would time a backward that frees nothing).
    do_bench has no per-repetition set-up, so that case runs do_bench's own recipe here: the
    same run-time estimate, warm-up, L2 flush before every repetition and CUDA events.
    """

    device: torch.device
    warmup_ms: float = 25.0
    rep_ms: float = 100.0
    cpu_reps: int = 3
    host_warmup: bool = True  # off where the caller already ran fn once (bench_ops' check)

    def __call__(self, fn: Callable[[], object], grad_to_none: Sequence[torch.Tensor] = (),
                 setup: Callable[[], object] | None = None) -> Timing:  # fmt: skip
        if self.device.type != "cuda":
            return self._time_on_host(fn, grad_to_none, setup or _no_setup)
        if setup is not None:
            return self._time_on_cuda_with_setup(fn, grad_to_none, setup)
        median, p20, p80 = triton.testing.do_bench(
            fn, warmup=self.warmup_ms, rep=self.rep_ms,
            grad_to_none=list(grad_to_none) or None, quantiles=list(QUANTILES),
        )  # fmt: skip
        return Timing(median, p20, p80)

    def _time_on_host(self, fn, grad_to_none, setup) -> Timing:
        if self.host_warmup:  # first-call costs (interpreter set-up, caches) stay out
            setup()
            fn()
        times = []
        for _ in range(self.cpu_reps):
            for t in grad_to_none:
                t.grad = None
            setup()
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        return _summary(times)

    def _time_on_cuda_with_setup(self, fn, grad_to_none, setup) -> Timing:
        l2_flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.int8, device=self.device)

        def repetition(flush_timed: bool = False):
            for t in grad_to_none:
                t.grad = None
            setup()
            start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
            if flush_timed:  # the estimate counts the flush, as do_bench's does
                start.record()
            l2_flush.zero_()
            if not flush_timed:
                start.record()
            fn()
            end.record()
            return start, end

        estimate = [repetition(flush_timed=True) for _ in range(5)]
        torch.cuda.synchronize(self.device)
        estimate_ms = max(sum(s.elapsed_time(e) for s, e in estimate) / len(estimate), 1e-3)
        for _ in range(max(1, int(self.warmup_ms / estimate_ms))):
            repetition()
        events = [repetition() for _ in range(max(1, int(self.rep_ms / estimate_ms)))]
        torch.cuda.synchronize(self.device)
        return _summary([s.elapsed_time(e) for s, e in events])


L2_FLUSH_BYTES = 256 * 2**20  # what do_bench writes between repetitions: larger than any L2


def _summary(times_ms: Sequence[float]) -> Timing:
    median, p20, p80 = torch.tensor(times_ms, dtype=torch.float64).quantile(
        torch.tensor(QUANTILES, dtype=torch.float64)
    )
    return Timing(median.item(), p20.item(), p80.item())


def peak_bytes(fn: Callable[[], object], device: torch.device,
               grad_to_none: Sequence[torch.Tensor] = (),
               setup: Callable[[], object] | None = None) -> int | None:  # fmt: skip
    """Bytes allocated at the peak of one call of `fn`, above what was allocated before it.

    The inputs (and, for a backward-only call, the graph that `setup`'s forward left) are
    allocated before, so they are not counted; gradients, saved activations and temporaries
    are. None on the CPU, where torch keeps no allocator statistics.
    """
    if device.type != "cuda":
        return None
    for t in grad_to_none:
        t.grad = None
    if setup is not None:
        setup()
    torch.cuda.synchronize(device)
    baseline = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - baseline


def copy_bandwidth(timer: Timer, numel: int) -> tuple[Timing, int]:
    """Time `dst.copy_(src)` over `numel` fp32 elements: the device's achievable bandwidth.

    Returns the timing and the bytes moved (read src + write dst).
    """
    src = torch.randn(numel, device=timer.device)
    dst = torch.empty_like(src)
    timing = timer(lambda: dst.copy_(src))
    return timing, 2 * src.nbytes


def gbps(n_bytes: int, ms: float) -> float:
    return n_bytes / (ms * 1e-3) / 1e9


class ResultWriter:
    """Writes rows to the CSV as they are measured, so a run cut short keeps what it measured.

    With `append`, rows go after those of an earlier run of the same schema (`--resume`).
    """

    def __init__(self, path: Path, info: RunInfo, append: bool = False):
        path.parent.mkdir(parents=True, exist_ok=True)
        append = append and path.exists() and path.stat().st_size > 0
        if append:
            with path.open(newline="") as existing:
                header = next(csv.reader(existing), [])
            if tuple(header) != COLUMNS:
                raise SystemExit(f"{path}: columns {header} are not {list(COLUMNS)}; "
                                 "write to a new --out instead of resuming")
        self._file = path.open("a" if append else "w", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=COLUMNS)
        if not append:
            self._writer.writeheader()
        self._info = info

    def write(self, **row) -> None:
        row = {**self._info.__dict__, **row}
        self._writer.writerow({k: "NA" if row.get(k) is None else row[k] for k in COLUMNS})
        self._file.flush()

    def close(self) -> None:
        self._file.close()
