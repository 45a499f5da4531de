"""The checkpoint planner: its choice against brute force, its prediction against measurement,
gradients with and without the plan, plans saved and applied, the budget
floor, max_batch, and the `plan` subcommand."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from profiling import apply_plan, max_batch, plan_checkpoints, profile
from profiling._budget import parse_budget
from profiling.cli import main as profiling_main
from reports import models

FLOAT32 = 4
ROOT = Path(__file__).resolve().parents[1]
PREDICTION_TOLERANCE = 0.05  # |predicted - measured| <= 5% of measured, on every architecture


class Block(nn.Module):
    """x + down(tanh(up(x))): the only bytes inside it are tanh's output, batch * hidden
    floats (saved by tanh and by down); its input is saved by up, so checkpointing keeps
    nothing extra. `sleep_ms` makes its forward cost known."""

    def __init__(self, width: int, hidden: int, sleep_ms: float = 0.0, dropout: float = 0.0
                 ) -> None:
        super().__init__()
        self.up, self.down = nn.Linear(width, hidden), nn.Linear(hidden, width)
        self.drop = nn.Dropout(dropout)
        self.sleep_ms = sleep_ms
        self.reference_checkpoint = False  # the test's own checkpointing, not the planner's

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.sleep_ms:
            time.sleep(self.sleep_ms / 1e3)
        return x + self.drop(self.down(torch.tanh(self.up(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reference_checkpoint:
            return checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)


class Chain(nn.Module):
    def __init__(self, width: int, hiddens: list[int], sleeps: list[float] | None = None,
                 dropout: float = 0.0) -> None:
        super().__init__()
        sleeps = sleeps or [0.0] * len(hiddens)
        self.blocks = nn.ModuleList(Block(width, h, s, dropout)
                                    for h, s in zip(hiddens, sleeps, strict=True))
        self.head = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def training_step(model: nn.Module, batch: int, width: int, optimizer_class=torch.optim.SGD):
    x, y = torch.randn(batch, width), torch.randint(10, (batch,))
    optimizer = optimizer_class(model.parameters(), lr=0.01)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    return step, optimizer


def measured_peak(step, *track) -> int:
    with profile("cpu", track=track) as prof:
        step()
    return int(prof.meta["peak_bytes"])


# ----------------------------------------------------------------------------- budgets


def test_budget_units():
    assert parse_budget(1000) == 1000
    assert parse_budget("512MiB") == 512 * 2**20
    assert parse_budget("2GiB") == 2 * 2**30
    assert parse_budget("1.5GB") == 1_500_000_000
    assert parse_budget("64 kib") == 64 * 1024
    assert parse_budget("4096") == 4096
    for bad in ("two GiB", "2 parsecs", "", "-1MiB", "0"):
        with pytest.raises(ValueError):
            parse_budget(bad)
    for wrong in (None, True, [1]):
        with pytest.raises(TypeError):
            parse_budget(wrong)


# ----------------------------------------------------------------------------- the choice


def test_choice_is_the_cheapest_set_that_brute_force_measures_within_the_budget():
    """Four blocks whose saved bytes (batch * hidden floats) and forward times (sleeps with
    distinct subset sums) are known: every subset is checkpointed by the test itself and
    measured; the planner must pick the cheapest one that fits."""
    torch.manual_seed(0)
    hiddens, sleeps = [64, 32, 48, 16], [24.0, 6.0, 14.0, 2.0]
    batch, width = 256, 8  # activations dominate: the peak moves with the blocks chosen
    model = Chain(width, hiddens, sleeps)
    step, optimizer = training_step(model, batch, width)
    step()  # the optimizer's state exists from here on, as in the planner's runs
    peaks = {}
    for subset in itertools.chain.from_iterable(
            itertools.combinations(range(4), k) for k in range(5)):
        for index, block in enumerate(model.blocks):
            block.reference_checkpoint = index in subset
        peaks[subset] = measured_peak(step, model, optimizer)
    for block in model.blocks:
        block.reference_checkpoint = False
    levels = sorted(set(peaks.values()))
    assert len(levels) >= 3  # the subsets really differ
    cost = {s: sum(sleeps[i] for i in s) for s in peaks}
    for budget in (levels[0], levels[len(levels) // 2]):  # the lowest needs several blocks
        best = min((s for s in peaks if peaks[s] <= budget), key=cost.get)
        assert best  # the empty set does not fit
        plan = plan_checkpoints(step, model, budget)
        assert sorted(plan.modules) == [f"blocks.{i}" for i in best]
        assert plan.measured_peak == peaks[best]
        assert plan.baseline_peak == peaks[()]
        assert plan.fits
    inside = plan.candidates.set_index("module")
    for i, hidden in enumerate(hiddens):  # hand count: tanh's output, nothing kept
        assert inside.loc[f"blocks.{i}", "saved_bytes"] == batch * hidden * FLOAT32
        assert inside.loc[f"blocks.{i}", "kept_bytes"] == 0


# ----------------------------------------------------------------------------- predictions


def _transformer():
    model = models.build(lambda: models.TransformerLM(32, 16, 2, 2, 16), torch.device("cpu"))
    ids = models.tokens(4, 16, 32, torch.device("cpu"))
    return model, lambda: models.lm_loss(model(ids[:, :-1]), ids[:, 1:])


def _lstm():
    model = models.build(lambda: models.LSTMLM(32, 16, 32), torch.device("cpu"))
    ids = models.tokens(16, 32, 32, torch.device("cpu"))
    return model, lambda: models.lm_loss(model(ids[:, :-1])[0], ids[:, 1:])


def _cnn():
    model = models.build(lambda: models.SmallCNN(4, 16), torch.device("cpu"))
    images = models.normal(8, 1, 16, 16, device=torch.device("cpu"))
    labels = models.labels(8, 10, torch.device("cpu"))
    return model, lambda: F.cross_entropy(model(images), labels)


@pytest.mark.parametrize("make", [_transformer, _lstm, _cnn], ids=["transformer", "lstm", "cnn"])
def test_prediction_matches_measurement_on_three_architectures(make):
    model, loss = make()
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss().backward()
        optimizer.step()

    unplanned = plan_checkpoints(step, model, "1TiB", repeat=1)
    assert unplanned.modules == [] and unplanned.floor < unplanned.baseline_peak
    budget = (unplanned.baseline_peak + unplanned.floor) // 2
    plan = plan_checkpoints(step, model, budget, repeat=1)
    assert plan.modules
    assert abs(plan.predicted_peak - plan.measured_peak) <= (
        PREDICTION_TOLERANCE * plan.measured_peak)
    assert plan.fits and plan.max_grad_diff == 0.0
    step()  # the optimizer's state exists, as in the planner's runs
    assert measured_peak(_planned(plan, model, step), model, optimizer) == plan.measured_peak


# ----------------------------------------------------------------------------- applying


def test_gradients_equal_with_and_without_the_plan_dropout_included():
    torch.manual_seed(0)
    model = Chain(8, [64, 64, 64], dropout=0.3)
    step, optimizer = training_step(model, 32, 8)
    step()
    plan = plan_checkpoints(step, model, measured_peak(step, model, optimizer) - 8192)
    assert plan.modules and plan.max_grad_diff == 0.0

    def gradients():
        torch.manual_seed(1)
        model.zero_grad(set_to_none=True)
        x = torch.randn(32, 8)
        model(x).square().sum().backward()
        return [p.grad.clone() for p in model.parameters()]

    plain = gradients()
    with plan.applied(model):
        planned = gradients()
    assert all(torch.equal(a, b) for a, b in zip(plain, planned, strict=True))


def test_applied_leaves_parameters_hooks_and_attributes_as_they_were():
    torch.manual_seed(0)
    model = Chain(8, [32, 32])
    calls = []
    model.blocks[0].register_forward_hook(lambda m, i, o: calls.append("hook"))
    own_forward = model.blocks[1].forward
    model.blocks[1].forward = own_forward  # a user's instance attribute, kept as it is
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with apply_plan(model, ["blocks.0", "blocks.1"]):
        assert model.blocks[0].__dict__["forward"] is not None
        model(torch.randn(4, 8)).sum().backward()
        with pytest.raises(RuntimeError, match="checkpointed already"):
            apply_plan(model, ["blocks.0"])
    assert calls == ["hook"]  # the hook ran once: not again in the recomputation
    assert "forward" not in model.blocks[0].__dict__
    assert model.blocks[1].__dict__["forward"] is own_forward
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="no submodule"):
        apply_plan(model, ["blocks.7"])
    with pytest.raises(ValueError, match="inside it"):
        apply_plan(model, ["blocks", "blocks.0"])


def _saved_bytes(model: nn.Module) -> int:
    """Bytes autograd asks to save, counted by the test's own saved-tensor hooks: a
    checkpointed module's own saves go to checkpoint's hooks instead."""
    total = [0]

    def pack(tensor):
        total[0] += tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(torch.randn(16, 8)).sum().backward()
    return total[0]


def test_apply_plan_from_json(tmp_path):
    torch.manual_seed(0)
    model = Chain(8, [64, 64, 64])
    step, optimizer = training_step(model, 128, 8)
    step()
    plan = plan_checkpoints(step, model, measured_peak(step, model, optimizer) - 4096)
    path = plan.save(tmp_path / "plan.json")
    saved = json.loads(path.read_text())
    assert saved["modules"] == plan.modules and saved["model"] == "Chain"
    assert saved["measured_peak"] == plan.measured_peak
    before = _saved_bytes(model)
    handle = apply_plan(model, path)  # the one line in the user's code
    during = _saved_bytes(model)
    handle.remove()
    assert during < before and _saved_bytes(model) == before
    (tmp_path / "other.json").write_text('{"modules": ["blocks.0"]}')
    with pytest.raises(ValueError, match="not a checkpoint plan"):
        apply_plan(model, tmp_path / "other.json")
    with pytest.raises(ValueError, match="cannot read the checkpoint plan"):
        apply_plan(model, tmp_path / "missing.json")


def test_checkpointed_multihead_attention_is_profiled_as_it_runs():
    """Under the profiler's saved-tensor hooks the recomputation gets new tensor objects for
    MultiheadAttention's query, key and value; without the same objects it would take the
    unpacked path and fail checkpoint's shape check."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    x = torch.randn(2, 5, 16)
    layer(x).sum().backward()
    plain = [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad()
    with apply_plan(layer, ["self_attn"]), profile("cpu"):
        layer(x).sum().backward()
    assert all(torch.equal(a, p.grad) for a, p in zip(plain, layer.parameters(), strict=True))


def test_an_overshoot_tightens_the_budget_and_plans_again(monkeypatch):
    """A prediction made too low on purpose (every row 20 KiB lighter): the first plan's
    measured peak is over the budget, so the planner plans again for less and then fits."""
    from profiling import _plan_model, planner

    def optimistic(*args, **kwargs):
        model = _plan_model.build_model(*args, **kwargs)
        model.peaks = model.peaks - 20 * 1024
        return model

    monkeypatch.setattr(planner, "build_model", optimistic)
    torch.manual_seed(0)
    model = Chain(8, [64, 64, 64, 64])
    step, optimizer = training_step(model, 128, 8)
    step()
    baseline = measured_peak(step, model, optimizer)
    plan = plan_checkpoints(step, model, baseline - 40 * 1024, repeat=1)
    assert len(plan.tries) >= 2
    assert plan.tries[0]["measured_peak"] > plan.budget
    assert plan.tries[1]["target"] < plan.tries[0]["target"]
    assert plan.fits and plan.measured_peak == measured_peak(_planned(plan, model, step),
                                                             model, optimizer)


def _planned(plan, model, step):
    def run():
        with plan.applied(model):
            step()
    return run


# ----------------------------------------------------------------------------- errors


def test_budget_below_the_floor_names_the_floor_in_bytes():
    torch.manual_seed(0)
    model = Chain(8, [32, 32])
    step, _ = training_step(model, 8, 8, torch.optim.Adam)
    weights = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=r"the floor is (\d+) bytes") as error:
        plan_checkpoints(step, model, "1KiB")
    floor = int(error.value.args[0].split("the floor is ")[1].split(" bytes")[0])
    params = sum(p.numel() for p in model.parameters()) * FLOAT32
    assert floor >= 4 * params  # parameters, gradients and Adam's two moments
    assert all(torch.equal(w, p) for w, p in zip(weights, model.parameters(), strict=True))


def test_clear_errors_and_the_model_restored():
    torch.manual_seed(0)
    model = Chain(8, [16])
    step, _ = training_step(model, 4, 8)
    with pytest.raises(ValueError, match="cannot read"):
        plan_checkpoints(step, model, "lots")
    with pytest.raises(ValueError, match="no submodules"):
        plan_checkpoints(step, nn.Linear(2, 2), "1MiB")
    with pytest.raises(ValueError, match="never called"):
        plan_checkpoints(lambda: None, model, "1MiB")
    weights = [p.detach().clone() for p in model.parameters()]
    runs = []

    def failing_step():
        step()
        runs.append(1)
        if len(runs) == 2:
            raise KeyError("the user's own error")

    with pytest.raises(KeyError, match="the user's own error"):
        plan_checkpoints(failing_step, model, "1MiB")
    assert all(torch.equal(w, p) for w, p in zip(weights, model.parameters(), strict=True))


# ----------------------------------------------------------------------------- max_batch


def test_max_batch_is_verified_by_running_it():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 10))
    optimizer = torch.optim.Adam(model.parameters())

    def make_step(batch):
        x, y = torch.randn(batch, 32), torch.randint(10, (batch,))

        def step():
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
        return step

    weights = [p.detach().clone() for p in model.parameters()]
    fit = max_batch(make_step, budget="256KiB", start=4)
    assert fit.fits and fit.batch_size > 8
    assert abs(fit.predicted_peak - fit.measured_peak) <= 0.05 * fit.measured_peak
    assert all(torch.equal(w, p) for w, p in zip(weights, model.parameters(), strict=True))
    assert len(optimizer.state) == 0  # as it was found
    make_step(1)()  # the optimizer's state exists from here on, as in max_batch's runs
    assert measured_peak(make_step(fit.batch_size), model, optimizer) == fit.measured_peak
    assert measured_peak(make_step(fit.batch_size + 1), model, optimizer) > fit.budget


# ----------------------------------------------------------------------------- the CLI


def test_plan_subcommand_on_a_script(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    code = profiling_main(["plan", "--budget", "1.7MiB", "--out", str(tmp_path),
                           "examples/plan_train.py", "--steps", "1"])
    out, err = capsys.readouterr()
    assert code == 0, err
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["modules"] and plan["fits"] and plan["model"] == "Net"
    assert plan["measured_peak"] <= parse_budget("1.7MiB") < plan["baseline_peak"]
    assert "checkpoint: " + ", ".join(plan["modules"]) in out
    assert err.count("run ") >= 4  # a progress line per run
    assert f"apply_plan(model, {str(tmp_path / 'plan.json')!r})" in err

    code = profiling_main(["plan", "--budget", "a lot", "examples/plan_train.py"])
    assert code == 2 and "cannot read 'a lot'" in capsys.readouterr().err


def test_max_batch_warns_that_a_compiled_steps_cpu_peak_is_a_lower_bound():
    # Inductor allocates its scratch buffers out of the profiler's sight on the CPU: the profiled
    # peak falls below MemTracker's for the same step run eagerly, and max_batch says so
    from torch.distributed._tools.mem_tracker import MemTracker

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 256), torch.nn.ReLU(),
                                torch.nn.Linear(256, 32))
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="inductor")

    def make_step(batch_size, module=compiled):
        x = torch.randn(batch_size, 32)

        def step():
            module(x).pow(2).mean().backward()
            for parameter in model.parameters():
                parameter.grad = None
        return step

    make_step(8)()  # compiled before max_batch runs it
    tracker = MemTracker()
    tracker.track_external(model)
    with tracker:
        make_step(64, model)()
    eager_peak = tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]
    with profile("cpu", track=[model]) as prof:
        make_step(64)()
    assert prof.meta["peak_is_lower_bound"] and prof.ops.peak_bytes.max() < eager_peak
    with pytest.warns(RuntimeWarning, match="lower bounds"):
        max_batch(make_step, budget=eager_peak, start=8)


def test_max_batch_on_a_model_first_compiled_inside_it():
    # The compile happens in max_batch's warm-up step: its hooks stay out of Dynamo's trace.
    # aot_eager's CPU peak is exact, so the answer is the uncompiled model's.
    from torch._dynamo.testing import CompileCounterWithBackend

    def make_step_for(compile_it: bool):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(32, 256), torch.nn.ReLU(),
                                    torch.nn.Linear(256, 32))
        backend = CompileCounterWithBackend("aot_eager")
        run = torch.compile(model, backend=backend) if compile_it else model
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

        def make_step(batch_size):
            x = torch.randn(batch_size, 32)

            def step():
                optimizer.zero_grad()
                run(x).pow(2).mean().backward()
                optimizer.step()
            return step
        return make_step, backend

    torch._dynamo.reset()
    compiled_steps, backend = make_step_for(True)
    compiled = max_batch(compiled_steps, budget="400KiB", start=8)
    eager = max_batch(make_step_for(False)[0], budget="400KiB", start=8)
    assert backend.frame_count >= 1  # it ran compiled
    assert (compiled.batch_size, compiled.measured_peak) == (eager.batch_size,
                                                             eager.measured_peak)


def test_a_compiled_model_gets_a_clear_error_not_a_wrong_plan():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 16))
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager")
    x = torch.randn(8, 16)

    def step():
        compiled(x).pow(2).mean().backward()
        for parameter in model.parameters():
            parameter.grad = None

    step()
    with pytest.raises(ValueError, match="plans an uncompiled model.*model._orig_mod"):
        plan_checkpoints(step, compiled, budget="1MiB")
    with pytest.raises(ValueError, match="never called Sequential's forward.*uncompiled model"):
        plan_checkpoints(step, model, budget="1MiB")
