"""The `optimizer` phase: every op inside `torch.optim.Optimizer.step`, in every output."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from profiling import profile
from profiling.html import report_html
from profiling.plots import PHASE_COLORS, memory_figure
from profiling.trace import chrome_trace


class CountOpsInStep(TorchDispatchMode):
    """Counts the aten ops that reach it while `inside` is set (the test's own step hooks set
    it): entered around the profiler, it sees every op the profiler passes on."""

    def __init__(self) -> None:
        super().__init__()
        self.inside = False
        self.in_step = 0
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace != "profiler":  # record_function markers are no ops
            self.total += 1
            self.in_step += self.inside
        return func(*args, **(kwargs or {}))


def count_inside_steps(optimizer: torch.optim.Optimizer, counter: CountOpsInStep) -> None:
    def enter(*_):
        counter.inside = True

    def leave(*_):
        counter.inside = False

    optimizer.register_step_pre_hook(enter)
    optimizer.register_step_post_hook(leave)


@pytest.mark.parametrize("variant", [{"foreach": False}, {"foreach": True}, {"fused": True}],
                         ids=["for-loop", "foreach", "fused"])
def test_adam_step_ops_are_phase_optimizer(variant):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, **variant)
    x = torch.randn(5, 8)
    counter = CountOpsInStep()
    count_inside_steps(optimizer, counter)
    with counter, profile("cpu") as prof:
        loss = model(x).square().mean()
        loss.backward()
        optimizer.step()
        after = loss.detach() * 2  # after the step: forward again
    ops = prof.ops
    assert counter.in_step > 0
    assert (ops.phase == "optimizer").sum() == counter.in_step
    assert len(ops[ops.phase != "backward"]) + (ops.phase == "backward").sum() == len(ops)
    step = ops[ops.phase == "optimizer"]
    assert step.seq.min() > ops[ops.phase == "backward"].seq.max()
    assert ops[ops.seq < step.seq.min()].phase.isin(["forward", "backward"]).all()
    assert ops[ops.op == "aten::addmm"].phase.tolist() == ["forward", "forward"]
    assert set(ops[ops.op.str.endswith("Backward0")].phase) == {"backward"}
    assert ops.iloc[-1].op == "aten::mul.Tensor" and ops.iloc[-1].phase == "forward"
    assert (prof.timeline.phase == "optimizer").sum() == counter.in_step
    assert after.shape == ()


class Lookahead(torch.optim.SGD):
    """An optimizer whose step runs another optimizer's step inside its own: nested steps."""

    def __init__(self, params, inner: torch.optim.Optimizer) -> None:
        super().__init__(params, lr=0.5)
        self.inner = inner

    @torch.no_grad()
    def step(self, closure=None):
        self.inner.step()
        for group in self.param_groups:
            for param in group["params"]:
                param.mul_(0.5)  # after the inner step ended: still inside the outer one
        return None


def test_nested_steps_and_a_step_that_raises_end_their_phase():
    param = torch.nn.Parameter(torch.ones(4))
    param.grad = torch.ones(4)
    inner = torch.optim.SGD([param], lr=0.1, momentum=0.9)
    outer = Lookahead([param], inner)

    class Broken(torch.optim.SGD):
        def step(self, closure=None):
            super().step()
            raise ValueError("a user's error inside step")

    broken = Broken([param], lr=0.1)
    with profile("cpu") as prof:
        torch.zeros(1)
        outer.step()
        torch.zeros(2)
        with pytest.raises(ValueError, match="a user's error"):
            broken.step()
        torch.zeros(3)
    ops = prof.ops
    zeros = ops[ops.op == "aten::zeros"]
    assert zeros.phase.tolist() == ["forward"] * 3
    between = ops[(ops.seq > zeros.seq.iloc[0]) & (ops.seq < zeros.seq.iloc[1])]
    assert "aten::mul_.Tensor" in set(between.op)  # the outer step's own op, after the inner's
    assert set(between.phase) == {"optimizer"}
    in_broken = ops[(ops.seq > zeros.seq.iloc[1]) & (ops.seq < zeros.seq.iloc[2])]
    assert len(in_broken) > 0 and set(in_broken.phase) == {"optimizer"}


def test_steps_through_an_lr_scheduler_are_phase_optimizer():
    """A scheduler wraps the optimizer's step in its own counter; the step is still seen."""
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    counter = CountOpsInStep()
    count_inside_steps(optimizer, counter)
    with counter, profile("cpu") as prof:
        for _ in range(2):
            model(torch.randn(3, 4)).sum().backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
    ops = prof.ops
    assert counter.in_step > 0
    assert (ops.phase == "optimizer").sum() == counter.in_step
    assert set(ops[ops.op == "aten::addmm"].phase) == {"forward"}


def test_optimizer_phase_in_plot_chrome_trace_and_html(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(16, 16)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 16)).sum().backward()
    optimizer.step()  # Adam's state exists: the profiled step allocates temporaries only
    with profile("cpu") as prof:
        model(torch.randn(4, 16)).sum().backward()
        optimizer.step()
    ops = prof.ops
    figure = memory_figure(prof)
    (ax,) = figure.axes
    labels = ax.get_legend_handles_labels()[1]
    assert {"forward phase", "backward phase", "optimizer phase"} <= set(labels)
    assert len({PHASE_COLORS[p] for p in ("forward", "backward", "optimizer")}) == 3
    peak = ops.loc[ops.peak_bytes.idxmax()]
    annotations = [t.get_text() for t in ax.texts]
    assert any(f"#{peak.seq} {peak.op}, phase {peak.phase}" in t for t in annotations)

    trace = json.loads(json.dumps(chrome_trace(prof)))
    slices = [e for e in trace["traceEvents"] if e.get("ph") == "X"]
    names = {e["tid"]: e["args"]["name"] for e in trace["traceEvents"]
             if e.get("ph") == "M" and e["name"] == "thread_name"}
    step_tids = {e["tid"] for e in slices if e["cat"] == "optimizer"}
    assert len(step_tids) == 1 and names[step_tids.pop()] == "optimizer"
    assert sum(e["cat"] == "optimizer" for e in slices) == (ops.phase == "optimizer").sum()

    with profile("cpu") as step_only:
        optimizer.step()
    page = report_html(step_only, tmp_path, images={})
    assert "<td>optimizer</td>" in page and "<td>forward</td>" not in page


def test_a_closure_inside_step_is_optimizer_and_its_backward_is_backward():
    """LBFGS runs the model inside `step`: those ops are the step's, its backward passes are
    backward (the engine runs them), as the profiler's docstring says."""
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.LBFGS(model.parameters(), max_iter=2)
    x = torch.randn(4, 3)

    def closure():
        optimizer.zero_grad()
        loss = model(x).square().mean()
        loss.backward()
        return loss

    with profile("cpu") as prof:
        optimizer.step(closure)
    ops = prof.ops
    assert ops[ops.op == "aten::addmm"].phase.tolist() == ["optimizer", "optimizer"]
    assert set(ops[ops.op.str.endswith("Backward0")].phase) == {"backward"}
    assert set(ops.phase) == {"optimizer", "backward"}
