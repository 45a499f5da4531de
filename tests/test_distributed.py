"""torchrun jobs: 2 gloo ranks on the CPU, launched in a subprocess (a launch costs seconds:
torchrun starts Pythons that import torch), so one job covers DDP, collectives and a failing
rank, and one FSDP2; the paths inside one rank run in this process, as a 1-rank job.

`ddp_job`: `torchext-profile run --nproc-per-node 2` on two DDP steps, after which rank 1
raises. Checked: rank folders, the job summary against the rank profiles read back, DDP's bucket
bytes against the reducer's assignment computed here from the parameter sizes, the collectives'
bytes, and the failure report. The FSDP2 job (`fully_shard`, `profile()` in the script):
per-rank peak against MemTracker's, and the shards the collectives move.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.distributed as dist

from profiling import profile
from profiling.cli import main
from profiling.export import load_profile

LAUNCH_TIMEOUT_S = 240  # two Pythons importing torch on a loaded 2-core machine
WORLD = 2
LAYERS = [(512, 512), (512, 128), (128, 64)]  # (in, out) of the DDP model's Linear layers
BUCKET_CAP_MB = 0.25
ALL_REDUCE_NUMEL = 1000
FSDP_LAYERS, FSDP_WIDTH = 8, 128

DDP_SCRIPT = f"""
import json
import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
from torch import nn

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
model = nn.Sequential(*[nn.Linear(i, o, bias=False) for i, o in {LAYERS}])
ddp = nn.parallel.DistributedDataParallel(model, bucket_cap_mb={BUCKET_CAP_MB})
optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1)
for step in range(2):  # DDP sizes its buckets from the second iteration on
    x = torch.randn(4 * (rank + 1), 512)  # rank 1 has twice the batch: a higher peak
    ddp(x).sum().backward()
    optimizer.step()
    optimizer.zero_grad()
# the reducer's own (rebuilt) buckets, as torch hands them to comm hooks (zeroed copies: on
# every rank, so that the ranks differ only in their batch)
buckets = ddp.reducer._get_zeros_like_grad_buckets()
if rank == 0:
    with open("ddp_buckets.json", "w") as file:
        json.dump([b.buffer().numel() * b.buffer().element_size() for b in buckets], file)
del buckets
t = torch.ones({ALL_REDUCE_NUMEL})
dist.all_reduce(t)
funcol.all_reduce(t, "sum", dist.group.WORLD).wait()
if rank == 1:
    raise ValueError("rank 1 fails on purpose")
dist.barrier()
dist.destroy_process_group()
"""

FSDP_SCRIPT = f"""
import json
import sys
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed._tools.mem_tracker import MemTracker
from torch.distributed.fsdp import fully_shard
from profiling import profile

out, device = sys.argv[1], sys.argv[2]
dist.init_process_group("gloo" if device == "cpu" else "nccl")
if device == "cuda":
    torch.cuda.set_device(dist.get_rank())
torch.manual_seed(0)
model = nn.Sequential(*[nn.Linear({FSDP_WIDTH}, {FSDP_WIDTH}, bias=False)
                        for _ in range({FSDP_LAYERS})]).to(device)
for layer in model:
    fully_shard(layer)
fully_shard(model)
model(torch.randn(4, {FSDP_WIDTH}, device=device)).sum().backward()  # FSDP2's lazy init
model.zero_grad(set_to_none=True)
tracker = MemTracker()  # the reference: torch's own logical-memory tracker
tracker.track_external(model)
with tracker:
    model(torch.randn(4, {FSDP_WIDTH}, device=device)).sum().backward()
model.zero_grad(set_to_none=True)
with profile(device, track=[model]) as prof:
    model(torch.randn(4, {FSDP_WIDTH}, device=device)).sum().backward()
prof.save(out)
reference = next(snapshot["Total"] for where, snapshot  # cuda:R on a GPU rank
                 in tracker.get_tracker_snapshot("peak").items() if where.type == device)
with open(f"{{out}}/rank{{dist.get_rank()}}/memtracker_peak.json", "w") as file:
    json.dump(reference, file)
dist.destroy_process_group()
"""


def _launch(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True,
                          timeout=LAUNCH_TIMEOUT_S, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def ddp_job(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    folder = tmp_path_factory.mktemp("ddp")
    (folder / "train.py").write_text(DDP_SCRIPT)
    done = _launch([sys.executable, "-m", "profiling", "run", "--nproc-per-node", str(WORLD),
                    "--out", str(folder / "out"), "--format", "json", "train.py"], folder)
    return done, folder / "out"


def expected_ddp_buckets() -> list[list[int]]:
    """Bucket bytes of each backward pass, as DDP's reducer assigns them (torch 2.13): the first
    pass has one bucket of every gradient; then the reducer rebuilds its buckets in the order
    the gradients became ready (for a chain of Linear layers: the last layer first) and closes
    a bucket once it reaches bucket_cap_mb."""
    ready = [fan_in * fan_out * 4 for fan_in, fan_out in reversed(LAYERS)]  # float32 weights
    cap = int(BUCKET_CAP_MB * 1024 * 1024)
    rebuilt, current = [], 0
    for nbytes in ready:
        current += nbytes
        if current >= cap:
            rebuilt.append(current)
            current = 0
    if current:
        rebuilt.append(current)
    return [[sum(ready)], rebuilt]


def test_ddp_job_writes_every_rank_and_a_summary_that_matches_them(ddp_job):
    done, out = ddp_job
    assert done.returncode != 0, done.stderr[-3000:]  # rank 1 raised
    summary = json.loads((out / "job_summary.json").read_text())
    ranks_csv = pd.read_csv(out / "job_ranks.csv").set_index("rank")
    assert sorted(ranks_csv.index) == [0, 1] and summary["world_size"] == WORLD
    peaks = {}
    for rank in range(WORLD):
        prof = load_profile(out / f"rank{rank}")  # a full saved profile
        assert prof.meta["rank"] == rank and prof.meta["world_size"] == WORLD
        row = ranks_csv.loc[rank]
        assert row["peak_bytes"] == prof.meta["peak_bytes"]
        assert row["saved_bytes"] == prof.ops["saved_bytes"].sum()
        assert row["held_bytes"] == prof.held_bytes
        assert row["step_ms"] == pytest.approx(prof.meta["step_ms"])
        assert row["optimizer_steps"] == 2
        peaks[rank] = prof.meta["peak_bytes"]
    assert summary["highest_peak_rank"] == max(peaks, key=peaks.get) == 1  # twice the batch
    spread = pd.read_csv(out / "job_spread.csv").set_index("metric")
    assert spread.loc["peak_bytes", "spread"] == peaks[1] - peaks[0]
    compare_ops = pd.read_csv(out / "job_compare_ops.csv")
    assert (compare_ops["saved_bytes_delta"] == compare_ops["saved_bytes_b"]
            - compare_ops["saved_bytes_a"]).all()
    stdout = json.loads(done.stdout)  # --format json: the same summary on stdout
    assert [r["peak_bytes"] for r in stdout["ranks"]] == [peaks[0], peaks[1]]


def test_ddp_buckets_and_collectives_carry_the_bytes_they_move(ddp_job):
    _, out = ddp_job
    first_pass, rebuilt = expected_ddp_buckets()
    assert rebuilt == [32 * 1024 + 256 * 1024, 1024 * 1024]  # two buckets from pass two on
    logged = json.loads((out.parent / "ddp_buckets.json").read_text())
    assert logged == rebuilt
    param_bytes = sum(rebuilt)
    for rank in range(WORLD):
        rows = pd.read_csv(out / f"rank{rank}" / "collectives.csv", keep_default_na=False)
        buckets = rows[rows["module"].str.startswith("DDP gradient bucket")]
        assert (buckets["op"] == "c10d::allreduce_").all()
        assert (buckets["phase"] == "backward").all()
        assert buckets["module"].tolist() == ["DDP gradient bucket 0", "DDP gradient bucket 0",
                                              "DDP gradient bucket 1"]
        assert buckets["bytes"].tolist() == first_pass + rebuilt
        forward = rows[rows["phase"] == "forward"]
        for op in ("c10d::allreduce_", "_c10d_functional::all_reduce"):
            assert forward.loc[forward["op"] == op, "bytes"].tolist() == [ALL_REDUCE_NUMEL * 4]
        # DDP broadcasts rank 0's parameters at construction
        assert forward.loc[forward["op"] == "c10d::broadcast_", "bytes"].max() == param_bytes
        # what one rank holds at the end of its backward: parameters, gradients, buckets
        assert load_profile(out / f"rank{rank}").meta["peak_bytes"] >= 3 * param_bytes
    ranks = pd.read_csv(out / "job_ranks.csv")
    assert ranks["ddp_bucket_bytes"].tolist() == [param_bytes] * WORLD
    assert ranks["ddp_buckets"].tolist() == [2] * WORLD
    assert "DDP gradient bucket 1" in (out / "job_summary.md").read_text()


def test_a_failing_rank_is_named_with_its_error_and_the_others_still_report(ddp_job):
    done, out = ddp_job
    summary = json.loads((out / "job_summary.json").read_text())
    assert summary["failed_rank"] == 1 and summary["ok"] is False
    status = {r["rank"]: r["status"] for r in summary["ranks"]}
    assert status[1] == "failed: ValueError: rank 1 fails on purpose"
    assert status[0].startswith(("raised after rank 1 failed", "stopped by the launcher after"))
    rank0 = json.loads((out / "rank0" / "rank.json").read_text())
    assert rank0["exit_code"] != 0  # its partial profile was still written
    assert len(load_profile(out / "rank0").ops) > 0
    rank1 = json.loads((out / "rank1" / "rank.json").read_text())
    first_frame = rank1["traceback"].splitlines()[1]  # the user's, not the profiler's
    assert 'train.py", line' in first_frame and "profiling" not in first_frame
    markdown = (out / "job_summary.md").read_text()
    assert "**failed**: rank 1: ValueError: rank 1 fails on purpose" in markdown


@pytest.fixture
def one_rank_job(tmp_path, monkeypatch):
    """This process as rank 0 of a 1-rank torchrun job (the environment torchrun sets)."""
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("LOCAL_RANK", "0")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)
    try:
        yield tmp_path
    finally:
        dist.destroy_process_group()


def test_profile_and_run_inside_torchrun_read_the_rank_from_the_environment(one_rank_job):
    out = one_rank_job / "job"
    with profile() as prof:  # profile() inside a script that torchrun started
        t = torch.ones(ALL_REDUCE_NUMEL)
        dist.all_reduce(t)
    assert prof.save(out) == out / "rank0"
    assert load_profile(out / "rank0").meta["rank"] == 0
    assert prof.collectives[["op", "bytes"]].values.tolist() == [
        ["c10d::allreduce_", ALL_REDUCE_NUMEL * 4]]
    summary = json.loads((out / "job_summary.json").read_text())
    assert summary["ok"] is True and summary["world_size"] == 1
    # `torchrun -m profiling run script.py`: the CLI under torchrun profiles this rank
    script = one_rank_job / "step.py"
    script.write_text("import torch, torch.distributed as dist\n"
                      f"dist.all_reduce(torch.ones({ALL_REDUCE_NUMEL}))\n")
    assert main(["run", "--out", str(one_rank_job / "cli"), str(script)]) == 0
    status = json.loads((one_rank_job / "cli" / "rank0" / "rank.json").read_text())
    assert status["exit_code"] == 0 and status["error"] is None
    rows = pd.read_csv(one_rank_job / "cli" / "rank0" / "collectives.csv")
    assert rows["bytes"].tolist() == [ALL_REDUCE_NUMEL * 4]


def test_compare_accepts_two_job_folders(ddp_job, one_rank_job, capsys):
    _, a = ddp_job
    b = one_rank_job / "job"
    with profile() as prof:
        dist.all_reduce(torch.ones(ALL_REDUCE_NUMEL))
    prof.save(b)
    assert main(["compare", str(a), str(b), "--format", "json"]) == 0
    ranks = pd.DataFrame(json.loads(capsys.readouterr().out)["ranks"]).set_index("rank")
    peak_a = load_profile(a / "rank0").meta["peak_bytes"]
    peak_b = load_profile(b / "rank0").meta["peak_bytes"]
    assert ranks.loc[0, "peak_bytes_a"] == peak_a and ranks.loc[0, "peak_bytes_b"] == peak_b
    assert ranks.loc[0, "peak_bytes_delta"] == peak_b - peak_a
    assert pd.isna(ranks.loc[1, "peak_bytes_b"])  # job B has one rank


@pytest.mark.parametrize("device", [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(
        torch.cuda.device_count() < WORLD, reason="FSDP2 on CUDA needs 2 GPUs (NCCL: one per "
        "rank)")]),
])
def test_fsdp2_peak_per_rank_shows_the_sharding(tmp_path, device):
    """FSDP2 frees each unsharded layer with `storage.resize_(0)`, which bypasses the
    dispatcher, and its parameters are DTensors whose own storage stands at the full size: the
    per-rank peak is right only if the profiler sees both, as MemTracker does."""
    (tmp_path / "fsdp.py").write_text(FSDP_SCRIPT)
    done = _launch([sys.executable, "-m", "torch.distributed.run", "--standalone",
                    "--nproc-per-node", str(WORLD), "fsdp.py", str(tmp_path / "out"), device],
                   tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    param_bytes = FSDP_LAYERS * FSDP_WIDTH * FSDP_WIDTH * 4
    layer_bytes = param_bytes // FSDP_LAYERS
    for rank in range(WORLD):
        folder = tmp_path / "out" / f"rank{rank}"
        peak = load_profile(folder).meta["peak_bytes"]
        if device == "cpu":  # logical bytes, counted as MemTracker counts them
            assert peak == json.loads((folder / "memtracker_peak.json").read_text())
        # sharded parameters and gradients (1/N each), plus at most a few unsharded layers
        # (all-gather buffers, prefetch) and small activations: far below the unsharded 2x
        assert 2 * param_bytes // WORLD <= peak <= 2 * param_bytes // WORLD + 6 * layer_bytes
        rows = pd.read_csv(folder / "collectives.csv", keep_default_na=False)
        forward = rows[(rows["phase"] == "forward") & (rows["op"] == "c10d::_allgather_base_")]
        backward = rows[(rows["phase"] == "backward")
                        & (rows["op"] == "c10d::_reduce_scatter_base_")]
        # each rank sends its shard (1/N of the parameters) into forward's all-gathers ...
        assert forward["bytes"].sum() == param_bytes // WORLD
        # ... and every unsharded gradient into backward's reduce-scatters
        assert backward["bytes"].sum() == param_bytes


def test_compiled_code_runs_compiled_under_torchrun_too(monkeypatch):
    """The rank's dispatch mode tells Dynamo what the profiler's own does: without it, a
    compiled function would run eagerly, op by op, inside a torchrun job's profile."""
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    torch._dynamo.reset()
    compiled = torch.compile(lambda x: (x.sin() * 2).sum(), backend="aot_eager")
    x = torch.randn(8, requires_grad=True)
    compiled(x).backward()  # compile outside the block
    with profile() as prof:
        compiled(x).backward()
    assert prof.ops["compiled"].sum() == 2  # the graph call and its backward
    assert not prof.ops["op"].str.startswith("aten::sin").any()


@pytest.mark.parametrize(("devices", "expected"), [(2, 1), (1, 0)])
def test_a_rank_measures_its_own_gpu_by_default(monkeypatch, devices, expected):
    """Scripts call torch.cuda.set_device(LOCAL_RANK), often inside the profiled block: the
    profile takes the rank's device from LOCAL_RANK (when this machine has it), not the
    current device, which is still cuda:0 when the block starts."""
    from profiling.distributed import cuda_index

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: devices)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert cuda_index() == expected
    monkeypatch.delenv("RANK")  # outside torchrun: the current device
    assert cuda_index() == 0


def test_nproc_per_node_under_torchrun_is_a_usage_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    script = tmp_path / "step.py"
    script.write_text("print('never runs')\n")
    assert main(["run", "--nproc-per-node", "2", "--out", str(tmp_path / "out"),
                 str(script)]) == 2
    err = capsys.readouterr().err
    assert "already running under torchrun" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
