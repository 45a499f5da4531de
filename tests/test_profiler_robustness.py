"""Any PyTorch code: checkpointing, in-place ops, no_grad, old graphs, gradients unchanged."""

from __future__ import annotations

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from profiling import profile

FLOAT32 = 4


def sin_chain(x: torch.Tensor, k: int = 4) -> torch.Tensor:
    for _ in range(k):
        x = torch.sin(x)
    return x


def test_checkpoint_saves_only_its_input():
    n = 1000
    x = torch.randn(n, requires_grad=True)
    with profile("cpu") as plain:
        sin_chain(x).sum().backward()
    with profile("cpu") as checkpointed:
        loss = checkpoint(sin_chain, x, use_reentrant=False).sum()
        held = checkpointed.held_bytes
        loss.backward()
    assert plain.ops.saved_bytes.sum() == 4 * n * FLOAT32
    assert checkpointed.ops.saved_bytes.sum() == held == n * FLOAT32
    # the recomputation runs inside the backward node that needs it
    assert (checkpointed.ops.op == "SinBackward0").sum() == 4
    assert checkpointed.held_bytes == 0


def test_gradients_unchanged_by_profiling():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(12, 20), torch.nn.Tanh(), torch.nn.Linear(20, 3))
    x = torch.randn(5, 12, requires_grad=True)
    model(x).pow(2).sum().backward()
    expected = [p.grad.clone() for p in model.parameters()] + [x.grad.clone()]
    model.zero_grad()
    x.grad = None
    with profile("cpu"):
        model(x).pow(2).sum().backward()
    actual = [p.grad for p in model.parameters()] + [x.grad]
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=0, atol=0)


def test_in_place_and_multi_output_ops():
    x = torch.randn(8, 16, requires_grad=True)
    with profile("cpu") as prof:
        h = x * 1.5
        h.relu_()  # in place: ReluBackward0 saves the result, h's storage
        values, indices = h.max(dim=1)  # two outputs, one differentiable
        loss = values.sum()
        loss.backward()
    ops = prof.ops.set_index("op")
    assert ops.loc["aten::relu_", "saved_bytes"] == 8 * 16 * FLOAT32
    assert ops.loc["aten::relu_", "output_bytes"] == 0
    assert ops.loc["aten::max.dim", "output_bytes"] == 8 * FLOAT32 + 8 * 8  # float + int64
    assert ops.loc["aten::max.dim", "saved_bytes"] == 8 * 8  # MaxBackward0 saves the indices
    assert prof.held_bytes == 0


def test_no_grad_saves_nothing_and_old_graphs_backward():
    x = torch.randn(100, requires_grad=True)
    old_graph = sin_chain(x).sum()  # built before the block: its saved tensors are not ours
    with profile("cpu") as prof:
        with torch.no_grad():
            y = torch.sin(x) * 2
        old_graph.backward()
    ops = prof.ops
    assert ops.saved_bytes.sum() == 0 and prof.held_bytes == 0
    assert set(ops[ops.phase == "backward"].op) >= {"aten::cos", "aten::mul.Tensor"}
    assert len(prof.graph.nodes) == 0
    assert y.shape == x.shape


def test_profile_reports_seq_in_order_and_meta():
    with profile("cpu", command="python train.py") as prof:
        torch.ones(3).add(1)
    assert prof.ops.seq.tolist() == list(range(len(prof.ops)))
    meta = prof.meta
    assert meta["device"] == "cpu" and meta["command"] == "python train.py"
    assert meta["torch_version"] == torch.__version__ and meta["wall_ms"] > 0
    assert set(meta) >= {"device_name", "triton_version", "python", "started_at", "peak_bytes"}


def test_empty_block_gives_empty_tables_with_their_columns():
    with profile("cpu") as prof:
        pass
    assert prof.ops.empty and list(prof.ops.columns)[:3] == ["seq", "op", "phase"]
    assert prof.ops.dtypes["saved_bytes"] == "int64"
    assert prof.lifetimes.empty and prof.timeline.empty and prof.leaks().empty
    assert prof.graph.nodes.empty and prof.graph.edges.empty
    assert prof.held_bytes == 0 and prof.meta["peak_bytes"] == 0


def test_compiled_function_runs_compiled_under_the_profiler_without_tracing_it():
    from torch._dynamo.utils import counters

    graph_calls = []

    def backend(gm, example_inputs):  # a backend without AOTAutograd, counting graph calls
        def run(*args):
            graph_calls.append(len(args))
            return gm(*args)
        return run

    compiled = torch.compile(lambda x: torch.sin(x * 2).sum(), backend=backend)
    x = torch.randn(16, requires_grad=True)
    compiled(x).backward()
    expected, x.grad = x.grad, None
    frames_before = counters["frames"]["total"]
    with profile("cpu") as prof:
        compiled(x).backward()
    # the compiled graph ran in the block; Dynamo compiled nothing (no frame of the profiler's)
    assert len(graph_calls) == 2
    assert counters["frames"]["total"] == frames_before
    # Dynamo's graph runs as aten ops with this backend: they keep their rows
    assert {"aten::sin", "aten::mul.Tensor", "SinBackward0"} <= set(prof.ops.op)
    assert torch.equal(x.grad, expected)


def test_saved_tensor_modified_in_place_still_fails_backward_like_torch():
    x = torch.randn(8, requires_grad=True)
    with profile("cpu"):
        h = x * 2
        y = torch.sin(h)  # SinBackward0 saves h
        h.add_(1)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            y.sum().backward()


def test_gradients_of_a_tensor_used_twice_are_summed_out_of_place_under_the_profiler():
    # The caveat in profiling.profiler's docstring: torch sums them in place (add_) when no
    # dispatch mode is active. If torch changes this, the docstring must change too.
    def backward_op_names() -> set[str]:
        x = torch.randn(64, requires_grad=True)
        y = x.exp()
        loss = (y.sin() + y.cos()).sum()
        with torch.profiler.profile() as recorded:
            loss.backward()
        return {event.name for event in recorded.events()}

    unprofiled = backward_op_names()
    with profile("cpu"):
        profiled = backward_op_names()
    assert "aten::add_" in unprofiled and "aten::add" not in unprofiled
    assert "aten::add" in profiled and "aten::add_" not in profiled


def test_node_found_late_counts_a_saved_tensor_modified_in_place_since():
    # A node that a backward with create_graph=True built is found only when a later op walks
    # to it; what it saved has been modified in place by then, and still is what it holds.
    n = 8
    x = torch.randn(n, requires_grad=True)
    with profile("cpu") as prof:
        h = x * 2
        (g,) = torch.autograd.grad(torch.sin(h).sum(), h, create_graph=True)  # CosBackward0(h)
        h.add_(1)
        z = g * 3
    held = prof.graph_held_bytes(z)
    assert held == prof.graph_held_bytes(g) >= n * FLOAT32


@pytest.mark.parametrize("foreach", [False, True])
def test_parameter_stepped_by_the_optimizer_fails_the_next_backward_like_torch(foreach):
    # torch's foreach ops do not bump versions under a dispatch mode; the profiler does it
    w = torch.randn(4, requires_grad=True)
    optimizer = torch.optim.SGD([w], lr=0.1, foreach=foreach)
    with profile("cpu") as prof:
        loss = (w * w).sum()  # MulBackward0 saves w
        loss.backward(retain_graph=True)
        optimizer.step()
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            loss.backward()
    assert "aten::_foreach_add_.List" in set(prof.ops.op) or not foreach


def test_hooks_set_around_the_block_give_way_to_the_profilers():
    # the caveat in profiling.profiler's docstring
    x = torch.randn(4, requires_grad=True)
    with torch.autograd.graph.allow_mutation_on_saved_tensors():
        h = x * 2
        y = torch.sin(h)
        h.add_(1)
        y.sum().backward()  # allowed: the context saved a copy of h
        with profile("cpu"):
            h = x * 2
            y = torch.sin(h)
            h.add_(1)
            with pytest.raises(RuntimeError, match="modified by an inplace operation"):
                y.sum().backward()


def test_a_lazy_module_materialized_in_the_block():
    # An UninitializedParameter has no storage to read until the first forward fills it in.
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.LazyLinear(8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    x = torch.randn(4, 16)
    with profile("cpu", track=[model]) as prof:
        model(x).sum().backward()
    weight = model[0].weight
    assert weight.shape == (8, 16) and weight.grad is not None
    # the materialized weight and its gradient count: their bytes are live at the end
    assert prof.ops.live_bytes.iloc[-1] >= 2 * weight.numel() * FLOAT32


def test_ops_on_a_strided_nested_tensor_get_rows():
    # a strided nested tensor has no single shape: its row names its component count
    nested = torch.nested.nested_tensor([torch.ones(2), torch.ones(3)])
    with profile("cpu") as prof:
        doubled = nested * 2
    assert torch.equal(doubled.unbind()[1], torch.full((3,), 2.0))
    row = prof.ops[prof.ops.op == "aten::mul.Tensor"].iloc[0]
    assert row.input_shapes.startswith("[nested(2)]")


class _StoragelessView(torch.Tensor):
    """A subclass whose `untyped_storage()` says it has none (as sparse tensors do)."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN206
        if func is torch.Tensor.untyped_storage:
            raise NotImplementedError("Cannot access storage of _StoragelessView")
        return super().__torch_function__(func, types, args, kwargs or {})


def test_a_tracked_tensor_without_storage_is_passed_over():
    tracked = torch.ones(1000).as_subclass(_StoragelessView)
    with profile("cpu", track=[tracked]) as prof:
        out = torch.ones(3) * 2
    assert torch.equal(out, torch.full((3,), 2.0))
    assert list(prof.ops.op) == ["aten::ones", "aten::mul.Tensor"]


class _MaskFirst(torch.autograd.Function):
    """Returns (mask, y): its first output has no gradient."""

    @staticmethod
    def forward(ctx, x):  # noqa: ANN001, ANN205
        mask = x > 0
        ctx.mark_non_differentiable(mask)
        ctx.save_for_backward(x)
        return mask, x.sin()

    @staticmethod
    def backward(ctx, grad_mask, grad_y):  # noqa: ANN001, ANN205
        (x,) = ctx.saved_tensors
        return grad_y * x.cos()


def test_a_function_whose_first_output_has_no_gradient_keeps_its_backward_row():
    x = torch.randn(100, requires_grad=True)
    with profile("cpu") as prof:
        _, y = _MaskFirst.apply(x)
        y.backward(torch.ones(100))  # no op after the Function makes a node that reaches it
    assert torch.allclose(x.grad, x.detach().cos())
    rows = prof.ops.set_index("op")
    assert rows.loc["_MaskFirstBackward", "phase"] == "backward"
    assert rows.loc["_MaskFirst", "saved_bytes"] == 100 * FLOAT32  # x, found through its node
