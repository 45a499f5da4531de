"""Time every torchext op against eager torch and torch.compile, beside the copy bandwidth.

The full GPU sweep (2^10, 2^12, ..., 2^28 elements, 3 dtypes, 3 modes, 3 providers; torch.compile
compiles each shape afresh) takes longer than one 10-minute command, so it runs per family and
in pieces: `--deadline-s` stops starting new cells, exit code 2 says "not finished", and the
same command with `--resume` carries on (delete the CSV first for a fresh run):

    python -m benchmarks.bench_ops --op sin,cos,mul,mul_scalar,sub --deadline-s 480 --resume \
        --out reports/performance/elementwise.csv
    python -m benchmarks.bench_ops --op sum,norm,dot,mv,least_squares --deadline-s 480 \
        --resume --out reports/performance/reductions.csv
    python -m benchmarks.make_report reports/performance/*.csv

One row per (op, mode, provider, dtype, shape): median time, achieved GB/s (the op's least bytes
moved over that time, see `_providers.py`), its fraction of the copy bandwidth measured at the
start of the same run, and the peak memory above the inputs. Before timing, each provider's
output and gradients are checked against eager torch, so a fast wrong kernel gets no row.
On a machine without CUDA the same code runs tiny sizes through Triton's interpreter: a smoke
run whose rows say `cpu (Triton interpreter)`, never performance figures.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import math
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from benchmarks._harness import (
    ResultWriter,
    RunInfo,
    Timer,
    copy_bandwidth,
    gbps,
    peak_bytes,
    run_info,
)
from benchmarks._providers import (
    CASES_BY_NAME,
    MODES,
    PROVIDERS,
    Inputs,
    OpCase,
    compiled_reference,
    torchext_function,
)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
CUDA_SHAPES = "1024x1024,4096x1024,16384x1024,65536x1024,4096x4096,8192x8192"
CPU_SIZES = (16, 32, 64)
CPU_SHAPES = "16x8,32x16"
# Relative L2 error allowed against eager torch before a provider's rows are refused. A sanity
# check against garbage, not a precision test (tests/ do that): fp32 leaves room for TF32 dots.
CHECK_TOLERANCE = {torch.float32: 5e-3, torch.bfloat16: 5e-2, torch.float16: 5e-2}


def _int(text: str) -> int:
    """`1024`, `2^10` or `2**10`."""
    text = text.strip().replace("**", "^")
    if "^" in text:
        base, exp = text.split("^")
        return int(base) ** int(exp)
    return int(text)


def _shapes(text: str) -> list[tuple[int, int]]:
    return [tuple(_int(d) for d in item.lower().split("x")) for item in text.split(",") if item]


def _tune_option(text: str) -> tuple[str, list[int]]:
    name, _, values = text.partition("=")
    if not name or not values:
        raise argparse.ArgumentTypeError(f"--tune wants NAME=v1,v2 (got {text!r})")
    return name, [_int(v) for v in values.split(",")]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_ops", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--op", "--ops", dest="ops", default="all",
                   help=f"comma-separated, from: {','.join(CASES_BY_NAME)} (default: all)")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--dtypes", default=",".join(DTYPES))
    p.add_argument("--providers", default=None,
                   help="comma-separated from torchext,eager,compile (default: all three on "
                        "CUDA; torchext,eager on the CPU, where compiling per shape is too slow)")
    p.add_argument("--sizes", type=lambda s: [_int(v) for v in s.split(",")], default=None,
                   help="elements for the 1-D ops, e.g. 2^10,2^20 (overrides the exponents)")
    p.add_argument("--min-exp", type=int, default=10)
    p.add_argument("--max-exp", type=int, default=28)
    p.add_argument("--step", type=int, default=2, help="exponent step between sizes")
    p.add_argument("--shapes", type=_shapes, default=None,
                   help=f"X shapes for mv/least_squares (default on CUDA: {CUDA_SHAPES})")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, default=Path("out/bench_ops.csv"))
    p.add_argument("--copy-numel", type=_int, default=None,
                   help="fp32 elements copied to measure bandwidth (default 2^28 CUDA, 2^20 CPU)")
    # Half of do_bench's 25/100 ms: still >= ~20 timed reps at 2^28 elements, and the full
    # sweep fits a GPU lease's 10-minute commands (with --deadline-s/--resume).
    p.add_argument("--warmup-ms", type=float, default=10.0, help="do_bench warm-up (CUDA)")
    p.add_argument("--rep-ms", type=float, default=50.0, help="do_bench repetition time (CUDA)")
    p.add_argument("--cpu-reps", type=int, default=3, help="timed repetitions on the CPU")
    p.add_argument("--compile-mode", default=None, help="torch.compile mode (default: default)")
    p.add_argument("--deadline-s", type=float, default=None,
                   help="start no new (op, dtype, shape) after this many seconds; exit code 2 "
                        "then says to run the same command again with --resume")
    p.add_argument("--resume", action="store_true",
                   help="append to --out, skipping (op, dtype, shape) cells it already holds "
                        "for every requested provider and mode")
    p.add_argument("--tune", type=_tune_option, action="append", default=[],
                   help="NAME=v1,v2: sweep a keyword of the kernel launchers that accept it "
                        "(e.g. --tune block=512,1024,2048 --tune num_warps=4,8); fwd/bwd only")
    return p.parse_args(argv)


@dataclass
class Context:
    device: torch.device
    timer: Timer
    writer: ResultWriter
    copy_gbps: float
    modes: list[str]
    providers: list[str]
    compile_mode: str | None
    tune: list[tuple[str, list[int]]]
    errors: list[str] = field(default_factory=list)
    notes: set[str] = field(default_factory=set)

    def error(self, where: str, exc: Exception) -> None:
        self.errors.append(f"{where}: {type(exc).__name__}: {exc}")
        print(f"error: {self.errors[-1]}", flush=True)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()  # after an out-of-memory error, give the next cell room

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.add(text)
            print(f"note: {text}", flush=True)


def _dtype_name(dtype: torch.dtype) -> str:
    return next(name for name, d in DTYPES.items() if d == dtype)


def record(ctx: Context, case: OpCase, mode: str, provider: str, dtype, shape, timing, peak):
    n_bytes = case.bytes_moved(mode, shape, dtype.itemsize)
    rate = gbps(n_bytes, timing.ms)
    shape_text = "x".join(map(str, shape))
    ctx.writer.write(
        op=case.name, family=case.family, mode=mode, provider=provider,
        dtype=_dtype_name(dtype), shape=shape_text, numel=math.prod(shape), bytes=n_bytes,
        ms=timing.ms, ms_p20=timing.ms_p20, ms_p80=timing.ms_p80, gbps=rate,
        frac_of_copy=rate / ctx.copy_gbps, peak_bytes=peak,
    )  # fmt: skip
    peak_text = "NA" if peak is None else f"{peak / 2**20:.1f} MiB"
    print(f"{case.name:14} {mode:8} {provider:24} {_dtype_name(dtype):5} {shape_text:>12} "
          f"{timing.ms:10.4f} ms {rate:9.2f} GB/s {rate / ctx.copy_gbps:7.1%}  peak {peak_text}",
          flush=True)  # fmt: skip


def evaluate(fn: Callable, inputs: Inputs, grad: torch.Tensor | None):
    """fn's output and the gradients of `grad`·output for the inputs that require grad."""
    out = fn(*inputs.args)
    if grad is None:
        return out, ()
    return out, torch.autograd.grad(out, inputs.grad_inputs, grad)


def check_close(expected: Sequence[torch.Tensor], actual: Sequence[torch.Tensor], what: str):
    for i, (want, got) in enumerate(zip(expected, actual, strict=True)):
        if got.shape != want.shape or got.dtype != want.dtype:
            raise ValueError(f"{what}: result {i} is {got.dtype} {tuple(got.shape)}, eager "
                             f"torch gives {want.dtype} {tuple(want.shape)}")
        tol = CHECK_TOLERANCE.get(want.dtype, 5e-3)
        err = ((got.float() - want.float()).norm() / want.float().norm().clamp_min(1e-30)).item()
        if not err <= tol:  # also refuses NaN
            raise ValueError(f"{what}: result {i} differs from eager torch "
                             f"(relative error {err:.2e}, allowed {tol:.0e})")


def timed_call(mode: str, fn: Callable, inputs: Inputs, grad: torch.Tensor):
    """(set-up, timed callable) for a mode: forward (graph recorded, as in training), backward
    alone (after an untimed fresh forward each repetition) or forward then backward."""
    args = inputs.args
    if mode == "fwd":
        return None, lambda: fn(*args)
    if mode == "fwd+bwd":
        return None, lambda: fn(*args).backward(grad)
    graph = []

    def forward() -> None:
        graph.append(fn(*args))

    def backward() -> None:
        graph.pop().backward(grad)

    return forward, backward


def bench_provider(ctx, case, provider, fn, inputs, grad, expected, dtype, shape) -> None:
    out, grads = evaluate(fn, inputs, grad)
    check_close((expected[0], *expected[1]), (out, *grads), f"{case.name}/{provider}")
    del out, grads
    for mode in ctx.modes:
        setup, call = timed_call(mode, fn, inputs, grad)
        timing = ctx.timer(call, inputs.grad_inputs, setup)
        peak = peak_bytes(call, ctx.device, inputs.grad_inputs, setup)
        record(ctx, case, mode, provider, dtype, shape, timing, peak)


def _tensors(out) -> tuple[torch.Tensor, ...]:
    return out if isinstance(out, tuple) else (out,)


def bench_tuned(ctx, case, inputs, grad, dtype, shape) -> None:
    """Sweep launcher keywords (`--tune`) on launchers that accept them, against their defaults."""
    names = [name for name, _ in ctx.tune]
    for mode in [m for m in ctx.modes if m in ("fwd", "bwd")]:
        launcher = case.launchers.get(mode)
        if launcher is None or not launcher.accepts(names):
            where = "no launcher wired" if launcher is None else (
                f"{launcher.module}.{launcher.function} takes no {'/'.join(names)}")
            ctx.note(f"--tune: {case.name} {mode}: {where}; not tuned")
            continue
        run, args = launcher.resolve(), launcher.arguments(inputs, grad)
        baseline = _tensors(run(*args))
        timing = ctx.timer(lambda: run(*args))  # noqa: B023 (called before the loop moves on)
        record(ctx, case, mode, "torchext[launcher]", dtype, shape, timing, None)
        for values in itertools.product(*(vals for _, vals in ctx.tune)):
            kwargs = dict(zip(names, values, strict=True))
            label = "torchext[" + ",".join(f"{k}={v}" for k, v in kwargs.items()) + "]"
            try:
                check_close(baseline, _tensors(run(*args, **kwargs)), f"{case.name}/{label}")
                timing = ctx.timer(lambda: run(*args, **kwargs))  # noqa: B023
            except Exception as exc:  # a bad configuration is a finding, not the end of the run
                ctx.error(f"{case.name} {mode} {label}", exc)
                continue
            record(ctx, case, mode, label, dtype, shape, timing, None)


def bench_shape(ctx: Context, case: OpCase, dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    inputs = case.make_inputs(shape, dtype, ctx.device)
    with torch.no_grad():
        grad = torch.randn_like(case.reference(*inputs.args))
    expected = evaluate(case.reference, inputs, grad)
    for provider in ctx.providers:
        try:
            if provider == "torchext":
                fn = torchext_function(case)
            elif provider == "eager":
                fn = case.reference
            else:
                fn = compiled_reference(case, ctx.compile_mode)
            bench_provider(ctx, case, provider, fn, inputs, grad, expected, dtype, shape)
        except Exception as exc:  # keep going: a long GPU run should not die on one cell
            ctx.error(f"{case.name} {provider} {_dtype_name(dtype)} {'x'.join(map(str, shape))}",
                      exc)  # fmt: skip
    if ctx.tune:
        bench_tuned(ctx, case, inputs, grad, dtype, shape)


def select_cases(spec: str) -> list[OpCase]:
    names = list(CASES_BY_NAME) if spec == "all" else [n.strip() for n in spec.split(",")]
    unknown = [n for n in names if n not in CASES_BY_NAME]
    if unknown:
        raise SystemExit(f"bench_ops: unknown op(s) {unknown}; choose from {list(CASES_BY_NAME)}")
    chosen = []
    for case in (CASES_BY_NAME[n] for n in names):
        if torchext_function(case) is None:
            print(f"note: skipping {case.name}: torchext.{case.torchext_name} does not exist yet",
                  flush=True)
        else:
            chosen.append(case)
    return chosen


def _choose(spec: str, allowed: Sequence[str], what: str) -> list[str]:
    chosen = [item.strip() for item in spec.split(",") if item.strip()]
    bad = [item for item in chosen if item not in allowed]
    if bad:
        raise SystemExit(f"bench_ops: unknown {what} {bad}; choose from {list(allowed)}")
    return chosen


def completed_cells(path: Path, info: RunInfo, providers: Sequence[str],
                    modes: Sequence[str]) -> set[tuple]:  # fmt: skip
    """(op, dtype, shape) cells of an earlier CSV that hold a row for every provider and mode.

    Refuses a CSV measured on another device: one file, one machine.
    """
    if not path.exists() or path.stat().st_size == 0:
        return set()
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    others = {(r["device"], r["device_name"]) for r in rows} - {(info.device, info.device_name)}
    if others:
        raise SystemExit(f"bench_ops: {path} holds rows from {sorted(others)}, not "
                         f"{info.device_name}; --resume only continues a run on the same device")
    have: dict[tuple, set] = {}
    for row in rows:
        have.setdefault((row["op"], row["dtype"], row["shape"]), set()).add(
            (row["provider"], row["mode"]))
    wanted = set(itertools.product(providers, modes))
    return {cell for cell, pairs in have.items() if wanted <= pairs}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; exit code 0 done, 1 some cell failed, 2 stopped at --deadline-s."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    device = torch.device(args.device)
    on_cuda = device.type == "cuda"
    modes = _choose(args.modes, MODES, "mode(s)")
    dtypes = [DTYPES[d] for d in _choose(args.dtypes, list(DTYPES), "dtype(s)")]
    if args.providers is None:
        providers = list(PROVIDERS) if on_cuda else ["torchext", "eager"]
        if not on_cuda:
            print("note: torch.compile provider skipped on the CPU (ask with --providers)")
    else:
        providers = _choose(args.providers, PROVIDERS, "provider(s)")
    sizes = args.sizes or (
        [2**e for e in range(args.min_exp, args.max_exp + 1, args.step)] if on_cuda
        else list(CPU_SIZES))
    shapes = args.shapes or _shapes(CUDA_SHAPES if on_cuda else CPU_SHAPES)
    if not on_cuda:
        print("note: no CUDA device: Triton interpreter smoke run; times are not performance")
    command = shlex.join(["python", "-m", "benchmarks.bench_ops", *argv])
    info = run_info(device, command)
    done = completed_cells(args.out, info, providers, modes) if args.resume else set()
    cells = [(case, dtype, shape) for case in select_cases(args.ops) for dtype in dtypes
             for shape in (shapes if case.family == "matvec" else [(n,) for n in sizes])
             if (case.name, _dtype_name(dtype), "x".join(map(str, shape))) not in done]
    if done:
        print(f"note: --resume: {len(done)} cell(s) already in {args.out}; {len(cells)} to go")

    start = time.perf_counter()
    torch.manual_seed(0)
    # On the CPU the correctness check before timing is each provider's warm-up: the
    # interpreter is too slow to spend another call on it. do_bench warms up on CUDA.
    timer = Timer(device, args.warmup_ms, args.rep_ms, args.cpu_reps, host_warmup=False)
    copy_numel = args.copy_numel or (2**28 if on_cuda else 2**20)
    copy_timing, copy_bytes = copy_bandwidth(replace(timer, host_warmup=True), copy_numel)
    copy_rate = gbps(copy_bytes, copy_timing.ms)
    writer = ResultWriter(args.out, info, append=args.resume)
    writer.write(op="copy", family="limit", mode="fwd", provider="torch", dtype="fp32",
                 shape=str(copy_numel), numel=copy_numel, bytes=copy_bytes, ms=copy_timing.ms,
                 ms_p20=copy_timing.ms_p20, ms_p80=copy_timing.ms_p80, gbps=copy_rate,
                 frac_of_copy=1.0, peak_bytes=None)  # fmt: skip
    print(f"copy bandwidth: {copy_rate:.2f} GB/s ({copy_bytes} bytes in {copy_timing.ms:.4f} ms)")

    ctx = Context(device, timer, writer, copy_rate, modes, providers, args.compile_mode, args.tune)
    left = 0
    try:
        for i, (case, dtype, shape) in enumerate(cells):
            if args.deadline_s is not None and time.perf_counter() - start > args.deadline_s:
                left = len(cells) - i
                break
            try:
                bench_shape(ctx, case, dtype, shape)
            except Exception as exc:  # the eager reference itself failed (out of memory, say)
                ctx.error(f"{case.name} {_dtype_name(dtype)} {'x'.join(map(str, shape))}", exc)
    finally:
        writer.close()
    print(f"wrote {args.out} in {time.perf_counter() - start:.1f} s; {len(ctx.errors)} error(s)")
    for error in ctx.errors:
        print(f"  {error}")
    if left:
        print(f"deadline: {left} cell(s) not measured; run the same command with --resume")
    return 1 if ctx.errors else 2 if left else 0


if __name__ == "__main__":
    raise SystemExit(main())
