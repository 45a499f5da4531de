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


@dataclass(frozen=True)
class Timer:
    """Times a callable on `device`; `grad_to_none` tensors get `.grad = None` before each rep."""

    device: torch.device
    warmup_ms: float = 25.0
    rep_ms: float = 100.0
    cpu_reps: int = 3

    def __call__(self, fn: Callable[[], object], grad_to_none: Sequence[torch.Tensor] = ()):
        if self.device.type == "cuda":
            median, p20, p80 = triton.testing.do_bench(
                fn, warmup=self.warmup_ms, rep=self.rep_ms,
                grad_to_none=list(grad_to_none) or None, quantiles=list(QUANTILES),
            )  # fmt: skip
            return Timing(median, p20, p80)
        return self._time_on_host(fn, grad_to_none)

    def _time_on_host(self, fn, grad_to_none) -> Timing:
        fn()  # warm-up: first-call costs (interpreter set-up, caches) stay out of the numbers
        times = []
        for _ in range(self.cpu_reps):
            for t in grad_to_none:
                t.grad = None
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        median, p20, p80 = torch.tensor(times, dtype=torch.float64).quantile(
            torch.tensor(QUANTILES, dtype=torch.float64)
        )
        return Timing(median.item(), p20.item(), p80.item())


def peak_bytes(
    fn: Callable[[], object], device: torch.device, grad_to_none: Sequence[torch.Tensor] = ()
) -> int | None:
    """Bytes allocated at the peak of one call of `fn`, above what was allocated before it.

    The inputs (and, for a backward-only call, the graph the forward left) are allocated before,
    so they are not counted; gradients, saved activations and temporaries are. None on the CPU,
    where torch keeps no allocator statistics.
    """
    if device.type != "cuda":
        return None
    for t in grad_to_none:
        t.grad = None
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
