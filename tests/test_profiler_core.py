"""Exact-number tests of the profiler core on CPU: saved bytes, held bytes, de-duplication."""

from __future__ import annotations

import warnings

import pytest
import torch

from profiling import profile

FLOAT32 = 4


def sin_chain(x: torch.Tensor, k: int) -> torch.Tensor:
    for _ in range(k):
        x = torch.sin(x)
    return x


@pytest.mark.parametrize("n,k", [(1, 1), (1000, 6), (4097, 3)])
def test_sin_chain_saves_k_inputs_and_graph_holds_them_until_plain_backward(n: int, k: int):
    x = torch.randn(n, requires_grad=True)
    with profile("cpu") as prof:
        loss = sin_chain(x, k).sum()
        held_after_forward = prof.held_bytes
        loss.backward(retain_graph=True)
        held_after_retained_backward = prof.held_bytes
        loss.backward()
        held_after_plain_backward = prof.held_bytes
    chain_bytes = k * n * FLOAT32
    assert held_after_forward == chain_bytes
    assert held_after_retained_backward == chain_bytes
    assert held_after_plain_backward == 0
    sins = prof.ops[prof.ops.op == "aten::sin"]
    assert len(sins) == k
    assert sins.saved_bytes.tolist() == [n * FLOAT32] * k  # each sin saves its input
    assert prof.ops.saved_bytes.sum() == chain_bytes
    # The leaf is alive anyway: only the k - 1 intermediates are memory the graph adds.
    assert prof.ops.saved_new_bytes.sum() == (k - 1) * n * FLOAT32
    assert sins.output_bytes.tolist() == [n * FLOAT32] * k
    assert set(prof.ops.phase) == {"forward", "backward"}
    assert (prof.ops.op == "SinBackward0").sum() == 2 * k


def test_detach_halfway_new_graph_holds_half():
    n, k = 512, 8
    x = torch.randn(n, requires_grad=True)
    with profile("cpu") as prof:
        first_half = sin_chain(x, k // 2)
        second_half = sin_chain(first_half.detach().requires_grad_(), k // 2)
        loss = second_half.sum()
        inside = prof.graph_held_bytes(loss), prof.graph_held_bytes(first_half)
    half = k // 2 * n * FLOAT32
    assert inside == (half, half)  # the last op's node too, while the block runs
    assert prof.held_bytes == 2 * half
    assert prof.graph_held_bytes(loss) == half
    assert prof.graph_held_bytes(first_half) == half
    del first_half  # the first graph dies with its last reference
    assert prof.held_bytes == half
    loss.backward()
    assert prof.held_bytes == 0


def test_mlp_saves_analytic_activation_bytes():
    """Linear -> ReLU -> Linear -> ReLU -> Linear on a batch of B, widths d0..d3, x without grad.

    aten runs each Linear as addmm, whose backward node saves mat1 (the layer input, needed for
    the weight gradient) and mat2 = weight.t() only when mat1 requires grad (needed for the input
    gradient): so the first layer saves x but not W1. ReLU saves its output, which the next
    addmm saves too: the same storage, counted once. Total:
        saved     = B*d0 (x) + B*d1 + B*d2 (ReLU outputs) + d1*d2 + d2*d3 (W2, W3)   [x 4 bytes]
        saved_new = B*d1 + B*d2   (x and the weights are alive anyway)
    """
    torch.manual_seed(0)
    batch, (d0, d1, d2, d3) = 8, (16, 32, 24, 4)
    mlp = torch.nn.Sequential(torch.nn.Linear(d0, d1), torch.nn.ReLU(), torch.nn.Linear(d1, d2),
                              torch.nn.ReLU(), torch.nn.Linear(d2, d3))
    x = torch.randn(batch, d0)
    with profile("cpu") as prof:
        loss = mlp(x).sum()
    ops = prof.ops
    expected_saved = (batch * (d0 + d1 + d2) + d1 * d2 + d2 * d3) * FLOAT32
    assert ops.saved_bytes.sum() == expected_saved
    assert ops.saved_new_bytes.sum() == batch * (d1 + d2) * FLOAT32
    assert prof.held_bytes == expected_saved
    relus = ops[ops.op == "aten::relu"]
    assert relus.module.tolist() == ["Sequential.1", "Sequential.3"]
    assert relus.saved_bytes.tolist() == [batch * d1 * FLOAT32, batch * d2 * FLOAT32]
    addmm = ops[ops.op == "aten::addmm"]
    assert addmm.module.tolist() == ["Sequential.0", "Sequential.2", "Sequential.4"]
    assert addmm.saved_bytes.tolist() == [batch * d0 * FLOAT32, d1 * d2 * FLOAT32,
                                          d2 * d3 * FLOAT32]
    del loss
    assert prof.held_bytes == 0


def test_tensor_saved_twice_counts_once():
    n = 300
    x = torch.randn(n, requires_grad=True)
    with profile("cpu") as prof:
        y = x.exp()  # ExpBackward0 saves its result y
        z = y * y  # MulBackward0 saves y as self and as other
    ops = prof.ops
    assert ops.saved_bytes.sum() == n * FLOAT32
    assert ops[ops.op == "aten::exp"].saved_bytes.item() == n * FLOAT32
    assert ops[ops.op == "aten::mul.Tensor"].saved_bytes.item() == 0
    assert prof.held_bytes == n * FLOAT32
    nodes = prof.graph.nodes.set_index("name")
    assert nodes.loc["ExpBackward0", "saved_bytes"] == n * FLOAT32
    assert nodes.loc["MulBackward0", "saved_bytes"] == 0
    del z
    assert prof.held_bytes == n * FLOAT32  # y is still saved by the exp node, alive through y
    del y
    assert prof.held_bytes == 0


def test_live_and_peak_bytes_follow_storages():
    n = 1000
    with profile("cpu") as prof:
        a = torch.ones(n)
        b = a * 2
        del a
        c = b + 1
    ops = prof.ops.set_index("op")
    assert ops.loc["aten::ones", "live_bytes"] == n * FLOAT32
    assert ops.loc["aten::mul.Tensor", "live_bytes"] == 2 * n * FLOAT32
    assert ops.loc["aten::add.Tensor", "peak_bytes"] == 2 * n * FLOAT32  # a was freed
    assert ops.loc["aten::add.Tensor", "output_bytes"] == n * FLOAT32
    assert prof.meta["peak_bytes"] == 2 * n * FLOAT32
    assert b.shape == c.shape


def test_views_allocate_nothing_and_share_the_storage_saved():
    x = torch.randn(64, 8, requires_grad=True)
    with profile("cpu") as prof:
        y = x.exp()
        v = y.view(8, 64).t()
        loss = v.sin().sum()  # sin saves v: a view of y, already saved by exp
    ops = prof.ops.set_index("op")
    assert ops.loc["aten::view", "output_bytes"] == 0
    assert ops.loc["aten::sin", "saved_bytes"] == 0
    assert prof.held_bytes == 64 * 8 * FLOAT32
    assert loss.requires_grad


def test_tracking_a_non_leaf_tensor_does_not_warn():
    x = torch.randn(8, requires_grad=True)
    hidden = x * 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with profile("cpu", track=[hidden]) as prof:
            hidden.sum()
    assert prof.ops.op.tolist() == ["aten::sum"]


def test_tracking_a_non_leaf_counts_the_grad_it_retains():
    n = 16
    x = torch.randn(n, requires_grad=True)
    hidden = x * 2
    hidden.retain_grad()
    hidden.sum().backward()
    with profile("cpu", track=[hidden]) as prof:
        hidden.sum()
    # hidden and hidden.grad, then the sum's 0-d output
    assert prof.ops.live_bytes.tolist() == [2 * n * FLOAT32 + FLOAT32]
