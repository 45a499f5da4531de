"""Who saved what: custom autograd.Functions, modules, lifetimes, leaks, the graph."""

from __future__ import annotations

import torch

from profiling import profile

FLOAT32 = 4


class ScaledSin(torch.autograd.Function):
    """sin(x) * 2; saves x, and runs several aten ops inside its forward."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.sin(x) * 2

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * torch.cos(x) * 2


class Outer(torch.autograd.Function):
    """A Function whose forward calls another Function: one row, under the outer name."""

    @staticmethod
    def forward(ctx, x):
        y = ScaledSin.apply(x)
        ctx.save_for_backward(y)
        return y + 1

    @staticmethod
    def backward(ctx, grad):
        return grad


def test_custom_function_attributed_under_its_name():
    n = 200
    x = torch.randn(n, requires_grad=True)
    with profile("cpu") as prof:
        h = x.exp()
        y = ScaledSin.apply(h)
        loss = y.sum()
        loss.backward()
    ops = prof.ops
    assert "aten::sin" not in set(ops.op)  # folded into the Function's row
    row = ops[ops.op == "ScaledSin"].iloc[0]
    assert row.phase == "forward"
    assert row.saved_bytes == 0  # it saved h, which exp already saved as its result
    assert row.output_bytes == 2 * n * FLOAT32  # sin(x) and the product
    assert row.input_shapes == f"[{n}]"
    assert ops[ops.op == "aten::exp"].saved_bytes.item() == n * FLOAT32
    backward = ops[ops.op == "ScaledSinBackward"]
    assert len(backward) == 1 and backward.phase.item() == "backward"
    assert torch.allclose(x.grad, torch.cos(x.exp()) * 2 * x.exp())


def test_custom_function_saved_bytes_and_nesting():
    n = 64
    x = torch.randn(n, requires_grad=True)
    with profile("cpu") as prof:
        y = Outer.apply(x)
    ops = prof.ops
    assert list(ops.op) == ["Outer"]  # the inner Function is part of the outer call
    assert ops.saved_bytes.item() == n * FLOAT32  # Outer saved y; the inner saved nothing
    assert prof.held_bytes == n * FLOAT32
    assert y.requires_grad


def test_module_paths_forward_and_backward():
    torch.manual_seed(0)

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(8, 8)

        def forward(self, x):
            return torch.tanh(self.proj(x))

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.ModuleList([Block(), Block()])

        def forward(self, x):
            for block in self.blocks:
                x = block(x)
            return x * 3

    net = Net()
    with profile("cpu") as prof:
        net(torch.randn(2, 8)).sum().backward()
    ops = prof.ops
    forward = ops[ops.phase == "forward"]
    assert forward[forward.op == "aten::addmm"].module.tolist() == ["Net.blocks.0.proj",
                                                                      "Net.blocks.1.proj"]
    assert forward[forward.op == "aten::tanh"].module.tolist() == ["Net.blocks.0", "Net.blocks.1"]
    assert forward[forward.op == "aten::mul.Tensor"].module.tolist() == ["Net"]
    assert forward[forward.op == "aten::sum"].module.tolist() == [""]
    backward = ops[ops.phase == "backward"]
    assert backward[backward.op == "TanhBackward0"].module.tolist() == ["Net.blocks.1",
                                                                        "Net.blocks.0"]


def test_lifetimes_name_the_backward_node_that_freed_each_saved_tensor():
    n = 100
    x = torch.randn(n, requires_grad=True)
    with profile("cpu") as prof:
        loss = x.sin().cos().sum()  # sin saves x, cos saves sin(x)
        loss.backward()
    life = prof.lifetimes
    ops = prof.ops.set_index("seq")
    assert life.nbytes.tolist() == [n * FLOAT32, n * FLOAT32]
    assert life.saved_by.tolist() == ["aten::sin", "aten::cos"]
    assert life.freed_by.tolist() == ["SinBackward0", "CosBackward0"]
    assert set(life.freed_phase) == {"backward"}
    for row in life.itertuples():
        assert ops.loc[row.freed_seq, "op"] == row.freed_by
        assert ops.loc[row.saved_seq, "op"] == row.saved_by
    timeline = prof.timeline
    assert timeline.seq.tolist() == prof.ops.seq.tolist()
    assert timeline.t_ms.is_monotonic_increasing


def test_lifetimes_of_retained_graph_stay_alive():
    x = torch.randn(10, requires_grad=True)
    with profile("cpu") as prof:
        loss = x.sin().sum()
        loss.backward(retain_graph=True)
    life = prof.lifetimes
    assert life.freed_seq.isna().all() and set(life.freed_by) == {""}
    del loss
    life = prof.lifetimes
    assert life.freed_phase.tolist() == ["after"]


def test_leaks_find_a_loss_accumulated_without_item():
    torch.manual_seed(0)
    model = torch.nn.Linear(16, 16)
    with profile("cpu") as prof:
        total_loss = 0
        for _ in range(3):
            x = torch.randn(4, 16)
            loss = model(x).relu().mean()
            loss.backward(retain_graph=True)  # retained: each step's graph stays alive
            total_loss = total_loss + loss  # not .item(): keeps every graph alive
    leaks = prof.leaks()
    assert len(leaks) == 1
    row = leaks.iloc[0]
    assert row.root == "AddBackward0"
    assert row.held_bytes == prof.held_bytes > 0
    assert row.holder.startswith("local 'total_loss' in test_leaks_find_a_loss_accumulated")
    assert row["name"] == "total_loss"
    assert row.message.startswith("this graph joins 3 forward calls of Linear")
    del total_loss, loss
    assert len(prof.leaks()) == 0
    assert prof.held_bytes == 0


def test_leak_held_in_a_container_is_described():
    x = torch.randn(32, requires_grad=True)
    kept = {}
    with profile("cpu") as prof:
        kept["y"] = x.exp()
    leaks = prof.leaks()
    assert leaks.held_bytes.tolist() == [32 * FLOAT32]
    assert leaks.root.tolist() == ["ExpBackward0"]
    assert leaks["name"].item() == "kept['y']"


def test_graph_nodes_edges_and_dot():
    x = torch.randn(10, requires_grad=True)
    with profile("cpu") as prof:
        loss = (x.exp() * 2).sum()
    graph = prof.graph
    names = dict(zip(graph.nodes.node_id, graph.nodes.name, strict=True))
    assert sorted(names.values()) == ["AccumulateGrad", "ExpBackward0", "MulBackward0",
                                      "SumBackward0"]
    edges = {(names[s], names[d]) for s, d in zip(graph.edges.src, graph.edges.dst, strict=True)}
    assert edges == {("SumBackward0", "MulBackward0"), ("MulBackward0", "ExpBackward0"),
                     ("ExpBackward0", "AccumulateGrad")}
    assert graph.nodes.alive.all()
    assert graph.nodes.saved_bytes.sum() == 40
    dot = graph.to_dot()
    assert dot.startswith("digraph") and "saved 40 B" in dot and dot.count("->") == 3
    del loss
    assert not prof.graph.nodes.alive.any()
