"""What every study shares: the run's settings, timing, and measuring one step with the profiler."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from profiling import Profile, profile

SIZES = ("tiny", "quick", "full")
REPS = {"tiny": 1, "quick": 7, "full": 15}
WARMUPS = {"tiny": 0, "quick": 1, "full": 2}  # tiny runs only check numbers, not times


@dataclass
class Context:
    """Settings of one report run, handed to every study's `run`."""

    device: torch.device
    size: str  # "tiny" (tests), "quick" (CPU, minutes) or "full" (GPU)
    out: Path
    footer: str = ""
    progress: Callable[[str], None] = field(default=lambda text: None)

    def __post_init__(self) -> None:
        if self.size not in SIZES:
            raise ValueError(f"size must be one of {SIZES}, got {self.size!r}")
        self.device = torch.device(self.device)

    @property
    def reps(self) -> int:
        return REPS[self.size]

    @property
    def warmups(self) -> int:
        return WARMUPS[self.size]

    def pick(self, **by_size):
        """The value for this run's size: `ctx.pick(tiny=2, quick=8, full=32)`."""
        return by_size[self.size]

    def note(self, text: str) -> None:
        """Tell the progress display what is being measured now."""
        self.progress(text)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release_memory(device: torch.device) -> None:
    """On CUDA, free what the last measurement left, since the allocator's numbers include it.
    (CPU numbers count only the storages a profile sees, so leftovers do not show there.)"""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()


def compare_ms(steps: Mapping[str, Callable[[], object]], ctx: Context,
               setups: Mapping[str, Callable[[], object]] | None = None) -> dict[str, float]:
    """Median wall-clock milliseconds of each step over `ctx.reps` runs after `ctx.warmups`.

    The steps take turns (A, B, A, B, ...) so that a busy machine slows them alike;
    `setups[name]()` runs untimed before each run of that step (e.g. a forward, zeroing grads).
    """
    setups = setups or {}
    times: dict[str, list[float]] = {name: [] for name in steps}
    for rep in range(ctx.warmups + ctx.reps):
        for name, step in steps.items():
            if name in setups:
                setups[name]()
            synchronize(ctx.device)
            start = time.perf_counter()
            step()
            synchronize(ctx.device)
            if rep >= ctx.warmups:
                times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(values) for name, values in times.items()}


def median_ms(step: Callable[[], object], ctx: Context,
              setup: Callable[[], object] | None = None) -> float:
    """`compare_ms` of a single step."""
    return compare_ms({"step": step}, ctx, None if setup is None else {"step": setup})["step"]


def measure(step: Callable[[Profile], object], ctx: Context, track: Iterable[object] = ()
            ) -> Profile:
    """Run `step(prof)` once under the profiler and return the finished profile; `step` may
    read `prof.held_bytes` while it runs. What `step` leaves behind is freed when it returns."""
    release_memory(ctx.device)
    with profile(ctx.device, track=track) as prof:
        step(prof)
    return prof


def forward_rows(prof: Profile) -> pd.DataFrame:
    ops = prof.ops
    return ops[ops.phase == "forward"]


def saved_bytes(prof: Profile) -> int:
    """Bytes the recorded forward ops saved for backward (each storage once)."""
    return int(forward_rows(prof).saved_bytes.sum())


def saved_new_bytes(prof: Profile) -> int:
    """Saved new bytes of the forward ops (`profiling.tables.SAVED_NEW_DEFINITION`)."""
    return int(forward_rows(prof).saved_new_bytes.sum())


def peak_bytes(prof: Profile) -> int:
    return int(prof.meta["peak_bytes"])


def zero_grads(*modules: torch.nn.Module) -> Callable[[], None]:
    def setup() -> None:
        for module in modules:
            module.zero_grad(set_to_none=True)
    return setup
