"""`torch.compile` with its default backend (Inductor) over every op at once, on CPU.

Each op's own test compiles it with `aot_eager` (fast); this one goes through Inductor's codegen,
where our ops must stay opaque custom ops that it schedules around.
"""

import torch

import torchext
from tests.conftest import assert_close


def every_op(X: torch.Tensor, w: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    r = torchext.sub(torchext.mv(X, w), y)
    waves = torchext.mul(torchext.sin(w), torchext.cos(w))
    return (
        torchext.least_squares(X, w, y)
        + torchext.dot(r, r)
        + torchext.sum(torchext.mul(waves, 2), dim=0)
        + torchext.norm(torchext.sub(3, w, alpha=0.5))
    )


def test_inductor_fullgraph_matches_eager():
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(16, 8, generator=g), torch.randn(16, generator=g)
    w = torch.randn(8, generator=g, requires_grad=True)
    compiled = torch.compile(every_op, fullgraph=True)
    out = compiled(X, w, y)
    (grad,) = torch.autograd.grad(out, w)
    expected = every_op(X, w, y)
    (expected_grad,) = torch.autograd.grad(expected, w)
    assert_close(out, expected)
    assert_close(grad, expected_grad)
