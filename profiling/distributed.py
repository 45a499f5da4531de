"""Profiling a torchrun job: one profile per rank, collectives as rows, DDP's buckets named.

Under torchrun (`RANK` and `WORLD_SIZE` set) a `profile()` block also records, per rank:
- every collective the rank issues, `c10d::*` (what `torch.distributed.all_reduce` and DDP's
  reducer dispatch) and `_c10d_functional::*`, with the bytes the rank sends into it (its input
  buffers; `barrier`'s dummy tensor counts 0). They reach the dispatcher like any aten op, so a
  dispatch mode of ours sees them, also the ones DDP's reducer issues from C++ during backward
  (which the ops table folds into the backward node that triggered them);
- DDP's gradient buckets: an all-reduce issued during a backward pass after a
  `DistributedDataParallel` forward is the reducer's, and the i-th of a pass is bucket i (the
  reducer launches buckets in index order). Their rows are named `DDP gradient bucket i`;
- the end of each `optimizer.step()`, for the step time.

`prof.save(DIR)` then writes `DIR/rank{R}/` (the usual report folder, plus collectives.csv and
rank.json) and refreshes the job summary in `DIR/` (`profiling._job_summary`). The CLI's
`run --nproc-per-node N` launches the script through `torch.distributed.run`, each worker
running `python -m profiling run` under torchrun, and writes the summary once all ranks ended.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import shlex
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ._storage import nested_tensors_in

COLLECTIVE_NAMESPACES = ("c10d", "_c10d_functional", "_c10d_functional_autograd")
NOT_COLLECTIVES = ("_c10d_functional::wait_tensor", "_c10d_functional::_wrap_tensor_autograd")
# Schema arguments holding what a rank sends into a collective.
SENT_ARGUMENTS = ("tensors", "input_tensors", "input_tensor", "input", "inputs")
COLLECTIVE_COLUMNS = ["seq", "op", "phase", "module", "bytes", "dtype", "tensors", "time_ms"]
BUCKET_PREFIX = "DDP gradient bucket"


@dataclass(frozen=True)
class RankInfo:
    """Where this process sits in a torchrun job (from the environment torchrun sets)."""

    rank: int
    world_size: int
    local_rank: int


def rank_from_env() -> RankInfo | None:
    """This process's rank under torchrun (`RANK`, `WORLD_SIZE`), or None outside one."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", rank))
    except ValueError:
        raise ValueError("RANK, WORLD_SIZE and LOCAL_RANK must be integers, got "
                         f"{os.environ.get('RANK')!r}, {os.environ.get('WORLD_SIZE')!r}, "
                         f"{os.environ.get('LOCAL_RANK')!r}") from None
    return RankInfo(rank, world, local)


def cuda_index() -> int:
    """The CUDA device a profile measures by default: under torchrun the rank's own
    (`LOCAL_RANK`, which scripts pass to `torch.cuda.set_device`, often inside the profiled
    block), else the current one."""
    rank = rank_from_env()
    if rank is not None and rank.local_rank < torch.cuda.device_count():
        return rank.local_rank
    return torch.cuda.current_device()


def rank_folder(out: str | Path, rank: int) -> Path:
    return Path(out) / f"rank{rank}"


def _sent_bytes(func: Any, args: tuple, kwargs: dict) -> tuple[int, str, int]:
    """(bytes sent, dtype, tensor count) over the schema arguments in `SENT_ARGUMENTS`."""
    schema = func._schema
    values = []
    for index, argument in enumerate(schema.arguments):
        if argument.name in SENT_ARGUMENTS:
            values.append(args[index] if index < len(args) else kwargs.get(argument.name))
    tensors = nested_tensors_in(values)
    nbytes = sum(t.numel() * t.element_size() for t in tensors)
    dtype = str(tensors[0].dtype) if tensors else ""
    return nbytes, dtype, len(tensors)


class RankRecorder(TorchDispatchMode):
    """Collectives, DDP buckets and optimizer steps of one rank; entered inside the profiler's
    own dispatch mode (so it sees each op first and hands it on unchanged)."""

    def __init__(self, recorder: Any, info: RankInfo) -> None:
        super().__init__()
        self.info = info
        self._recorder = recorder
        self.rows: list[tuple] = []
        self.step_ends_ms: list[float] = []
        self._ddp_seen = False
        self._bucket_task, self._next_bucket = -1, 0
        self._handles: list[Any] = []

    @classmethod
    def ignore_compile_internals(cls) -> bool:
        """As the profiler's own mode: compiled code runs compiled inside the block."""
        from ._dispatch import OpDispatcher

        return OpDispatcher.compiled_code_runs_compiled

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        name = getattr(func, "_name", "")
        if getattr(func, "namespace", "") not in COLLECTIVE_NAMESPACES or name in NOT_COLLECTIVES:
            return func(*args, **kwargs)
        start = time.perf_counter()
        out = func(*args, **kwargs)
        elapsed_ms = (time.perf_counter() - start) * 1e3
        recorder = self._recorder
        task = torch._C._current_graph_task_id()
        module = "" if task != -1 else recorder.modules.current
        if task != -1 and self._ddp_seen and name == "c10d::allreduce_":
            if task != self._bucket_task:
                self._bucket_task, self._next_bucket = task, 0
            module = f"{BUCKET_PREFIX} {self._next_bucket}"
            self._next_bucket += 1
        open_row = recorder._open  # a backward node or Function the collective is folded into
        seq = open_row.seq if open_row is not None else recorder.seq
        self.rows.append((seq, name, "backward" if task != -1 else "forward", module,
                          *_sent_bytes(func, args, kwargs), elapsed_ms))
        return out

    def _forward_pre(self, module: torch.nn.Module, args: Any) -> None:
        if not self._ddp_seen:
            from torch.nn.parallel import DistributedDataParallel

            self._ddp_seen = isinstance(module, DistributedDataParallel)

    def _step_done(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self.step_ends_ms.append((time.perf_counter() - self._recorder.t0) * 1e3)

    def start(self) -> None:
        from torch.nn.modules.module import register_module_forward_pre_hook
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self._handles = [register_module_forward_pre_hook(self._forward_pre),
                         register_optimizer_step_post_hook(self._step_done)]
        self.__enter__()

    def stop(self) -> None:
        try:
            self.__exit__(None, None, None)
        finally:
            for handle in self._handles:
                handle.remove()
            self._handles.clear()
            self._recorder = None  # no reference back to the profile's hooks



def collectives_frame(recorder: RankRecorder | None) -> pd.DataFrame:
    """`Profile.collectives`: one row per collective (empty outside torchrun)."""
    frame = pd.DataFrame(recorder.rows if recorder else [], columns=COLLECTIVE_COLUMNS)
    return frame.astype({"seq": "int64", "op": "str", "phase": "str", "module": "str",
                         "bytes": "int64", "dtype": "str", "tensors": "int64",
                         "time_ms": "float64"})


def rank_meta(recorder: RankRecorder | None, wall_ms: float) -> dict:
    """The rank's entries of `Profile.meta`: rank, world size, optimizer steps, step time."""
    if recorder is None:
        return {}
    ends = recorder.step_ends_ms
    # the median interval between step ends (the first from the block's start); no optimizer
    # step: the whole block is the step
    steps = pd.Series([ends[0], *(b - a for a, b in zip(ends, ends[1:], strict=False))]) \
        if ends else pd.Series([wall_ms])
    return {"rank": recorder.info.rank, "world_size": recorder.info.world_size,
            "optimizer_steps": len(ends), "step_ms": float(steps.median())}


# ----------------------------------------------------------------------------- saving a rank


def save_rank(prof: Any, out: str | Path, top: int = 10, *, exit_code: int = 0,
              error: BaseException | None = None) -> Path:
    """Write this rank's report to `out/rank{R}/` and refresh the job summary in `out/`."""
    from profiling._job_summary import write_job_summary
    from profiling._launch import user_traceback
    from profiling.export import save_profile

    ended_at = time.time()  # before saving: which rank failed first
    info = prof._rank_recorder.info
    folder = save_profile(prof, rank_folder(out, info.rank), top=top)
    prof.collectives.to_csv(folder / "collectives.csv", index=False)
    if error is None and prof.error is not None:  # kept without frames: its text was kept
        error, trace = prof.error, prof.error_traceback
    else:
        trace = None if error is None else user_traceback(error)
    status = {"rank": info.rank, "world_size": info.world_size, "local_rank": info.local_rank,
              "exit_code": exit_code or (1 if error is not None else 0), "ended_at": ended_at,
              "error": None if error is None else f"{type(error).__name__}: {error}",
              "traceback": trace}
    (folder / "rank.json").write_text(json.dumps(status, indent=1), encoding="utf-8")
    with _job_lock(Path(out)):  # the last rank to get here sees every rank's folder
        write_job_summary(out, top=top)
    return folder


@contextlib.contextmanager
def _job_lock(folder: Path) -> Any:
    try:
        import fcntl
    except ImportError:  # not POSIX: ranks may interleave; the launcher rewrites it at the end
        yield
        return
    with open(folder / ".job.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# ----------------------------------------------------------------------------- the CLI


class RankTerminated(Exception):
    """The launcher stopped this rank (SIGTERM), usually because another rank failed."""


def _terminate(signum: int, frame: Any) -> None:
    raise RankTerminated("terminated by the launcher (SIGTERM), most likely because another "
                         "rank failed")


def run_command(args: argparse.Namespace, target: list[str]) -> int:
    """`torchext-profile run` in a job: launch it (`--nproc-per-node`) or run this rank."""
    from profiling._launch import CliError

    info = rank_from_env()
    if info is None:
        return launch(args, target)
    if args.nproc_per_node is not None:
        raise CliError("--nproc-per-node: already running under torchrun (RANK is set); "
                       "run the script without it")
    return run_rank(args, target, info)


def _check_target(target: list[str]) -> None:
    from profiling._launch import CliError, check_module, check_script

    if not target or target == ["-m"]:
        raise CliError("run: give a script (run script.py [args]) or a module (run -m module)")
    if target[0] == "-m":
        check_module(target[1])
    else:
        check_script(target[0])


def _worker_options(args: argparse.Namespace) -> list[str]:
    options = ["--out", str(args.out), "--top", str(args.top)]
    if args.device is not None:
        options += ["--device", args.device]
    return options


def launch(args: argparse.Namespace, target: list[str]) -> int:
    """Run `target` on `--nproc-per-node` local ranks through `torch.distributed.run`, each
    under `python -m profiling run`, then write the job summary with every rank's outcome."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser
    from torch.distributed.run import run as torchrun

    from profiling import html
    from profiling._job_summary import job_sections, write_job_summary
    from profiling._launch import CliError

    _check_target(target)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("rank*/rank.json"):  # a previous job's ranks must not be counted
        stale.unlink()
    torchrun_args = get_args_parser().parse_args([
        "--standalone", "--nproc-per-node", str(args.nproc_per_node), "--module", "profiling",
        "run", *_worker_options(args), *target])
    failures: dict[int, str] = {}
    first = None
    try:
        torchrun(torchrun_args)
    except ChildFailedError as exc:
        first = exc.get_first_failure()[0]
        for rank, failure in exc.failures.items():
            failures[rank] = (f"killed by {failure.signal_name()}" if failure.exitcode < 0
                              else f"exit code {failure.exitcode}")
    summary = write_job_summary(out, top=args.top, launcher_failures=failures,
                                world_size=args.nproc_per_node, first_failure=first)
    html.emit(job_sections(summary, args.top), args.format, summary.headline(),
              {"out": str(out), **summary.to_json()})
    print(f"job report written to {out}/: open {out / 'job_summary.html'}", file=sys.stderr)
    return 0 if summary.ok and not failures else 1


def run_rank(args: argparse.Namespace, target: list[str], info: RankInfo) -> int:
    """One worker of a job: profile the target like `run`, save to `--out/rank{R}/`."""
    from profiling._launch import run_module, run_script
    from profiling.cli import PROG, profile_call

    _check_target(target)
    if target[0] == "-m":
        call = functools.partial(run_module, target[1], target[2:])
    else:
        call = functools.partial(run_script, target[0], target[1:])
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        run = profile_call(call, device=args.device, label=f"rank {info.rank}: {target[0]}",
                           command=shlex.join([PROG, "run", *target]))
    finally:  # the rank's report is written even when the launcher asks it to stop now
        signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        if run.error is not None:
            from profiling._launch import print_user_traceback
            print(f"rank {info.rank} raised:", file=sys.stderr)
            print_user_traceback(run.error)
        folder = save_rank(run.prof, args.out, args.top, exit_code=run.exit_code,
                           error=run.error)
        print(f"rank {info.rank}: report written to {folder}/", file=sys.stderr)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return run.exit_code



def is_job_folder(path: str | Path) -> bool:
    """A folder of rank{R}/ reports (what `run --nproc-per-node` and a job's save write)."""
    from profiling._job_summary import is_job_folder as job_folder

    return job_folder(path)


def compare_jobs_command(args: argparse.Namespace) -> int:
    """`compare A B` for two job folders: rank by rank, then the highest-peak ranks."""
    from profiling import html
    from profiling._job_summary import compare_jobs
    from profiling._launch import CliError
    from profiling.compare import comparison_sections, save_comparison

    try:
        ranks, highest = compare_jobs(args.a, args.b)
    except (OSError, ValueError, KeyError) as exc:
        raise CliError(f"cannot compare jobs {args.a} and {args.b}: {exc}") from None
    sections = [html.Section("ranks", "Per rank (B - A)", ranks),
                *comparison_sections(highest, args.top)]
    header = {"A": str(args.a), "B": str(args.b)}
    html.emit(sections, args.format, header, header)
    if args.out is not None:
        folder = save_comparison(highest, args.out, (str(args.a), str(args.b)))
        ranks.to_csv(folder / "compare_ranks.csv", index=False)
        print(f"comparison written to {folder}/", file=sys.stderr)
    return 0
