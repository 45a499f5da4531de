"""The lesson's examples on torchext ops print what the lesson prints."""

import pytest
import torch

from tests.conftest import assert_close
from torchext import examples


def test_two_x_dot_x_matches_lesson():
    out = examples.two_x_dot_x()
    assert out["y"].item() == 28.0
    assert out["x.grad"].tolist() == [0.0, 4.0, 8.0, 12.0]  # 4x, by hand
    assert out["x.grad == 4 * x"].tolist() == [True] * 4


def test_sum_gradient_is_ones():
    out = examples.sum_of_x()
    assert out["y"].item() == 6.0
    assert out["x.grad"].tolist() == [1.0, 1.0, 1.0, 1.0]


def test_x_times_x_gradient_is_2x():
    out = examples.x_times_x()
    assert out["x.grad"].tolist() == [0.0, 2.0, 4.0, 6.0]


def test_detach_makes_u_a_constant():
    out = examples.detach()
    assert out["u"].tolist() == [0.0, 1.0, 4.0, 9.0]
    assert out["x.grad (of sum(u * x))"].tolist() == [0.0, 1.0, 4.0, 9.0]  # u, by hand
    assert out["x.grad (after y.sum().backward())"].tolist() == [0.0, 2.0, 4.0, 6.0]  # 2x
    assert out["x.grad == u"].tolist() == [True] * 4
    assert out["x.grad == 2 * x (after y.sum().backward())"].tolist() == [True] * 4


def _f_on_torch(a):
    b = a * 2
    while b.norm() < 1000:
        b = b * 2
    return b if b.sum() > 0 else 100 * b


def _control_flow_on_torch(shape):
    """The same exercise on torch's own ops and autograd: the independent reference."""
    a = torch.randn(shape, generator=torch.Generator().manual_seed(0)).requires_grad_()
    d = _f_on_torch(a)
    d.sum().backward()
    return a.detach(), d.detach(), a.grad


@pytest.mark.parametrize(
    ("example", "shape"),
    [(examples.control_flow_scalar, ()), (examples.control_flow_vector, (10,))],
)
def test_control_flow_gradient_matches_torch_bit_for_bit(example, shape):
    out = example()
    a, d, grad = _control_flow_on_torch(shape)
    assert torch.equal(out["a"], a)
    assert torch.equal(out["d"], d) and torch.equal(out["a.grad"], grad)
    # The lesson's check, element by element, is what torch's own `a.grad == d / a` gives ...
    assert torch.equal(out["a.grad == d / a (the lesson's check)"], grad == d / a)
    # ... and the slope the example reports is torch's gradient, in every element.
    assert torch.equal(grad, torch.full(shape, out["slope k of the branch taken"]))
    assert out["a.grad == k (exact check, every element)"] is True


def test_vector_exercise_shows_the_rounding_false_and_says_why():
    out = examples.control_flow_vector()
    a, d, grad = _control_flow_on_torch((10,))
    lesson_check = (grad == d / a).tolist()
    assert lesson_check.count(False) == 1  # torch's own check has one False for this seed
    assert out["a.grad == d / a (the lesson's check)"].tolist() == lesson_check
    assert grad[0].item() == 51200.0 == out["slope k of the branch taken"]  # 2^9 · 100
    assert "rounds" in out["why d / a can differ"]


def test_branch_slope_follows_each_branch():
    assert examples.branch_slope(torch.tensor(1.0)) == 1024.0  # 2^10 > 1000, positive
    assert examples.branch_slope(torch.tensor(-1.0)) == 102400.0  # negative: times 100
    assert examples.branch_slope(torch.tensor([600.0, 800.0])) == 2.0  # ‖2a‖ = 2000 at once


def test_control_flow_f_agrees_with_the_same_code_on_torch_ops():
    a = torch.tensor([0.3, -1.2, 0.7])
    torch.testing.assert_close(examples.f(a), _f_on_torch(a))


def test_backward_twice_raises_and_retain_graph_accumulates():
    out = examples.backward_twice()
    assert "backward through the graph a second time" in out["error"]
    assert out["x.grad (two backwards, retain_graph=True)"].tolist() == [0.0, 4.0, 8.0, 12.0]


def test_sin_derivative_is_cos_and_plot_is_saved(tmp_path):
    out = examples.sin_and_derivative()
    assert out["x"].numel() == 400
    assert out["max |dy/dx - cos x|"] < 1e-6
    png = examples.plot_sin_and_derivative(tmp_path / "sin.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_chain_rule_gradients_match_torch_autograd():
    out = examples.chain_rule()
    g = torch.Generator().manual_seed(0)  # the example's inputs, drawn the same way
    X = torch.randn(8, 4, generator=g, dtype=torch.float64)
    y = torch.randn(8, generator=g, dtype=torch.float64)
    w = torch.randn(4, generator=g, dtype=torch.float64, requires_grad=True)
    (grad_scalar,) = torch.autograd.grad((X[0] @ w - y[0]) ** 2, w)
    loss = ((X @ w - y) ** 2).sum()
    (grad,) = torch.autograd.grad(loss, w)
    assert_close(out["grad of (<x,w> - y)^2"], grad_scalar)
    assert_close(out["||Xw - y||^2"], loss.detach())
    assert_close(out["grad (composed)"], grad)
    assert_close(out["grad (fused least_squares)"], grad)
    assert out["matches 2(<x,w> - y)x"] is True and out["matches 2X^T(Xw - y)"] is True


def test_main_prints_every_example(tmp_path, capsys):
    assert examples.main(["--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    for name in examples.EXAMPLES:
        assert f"== {name}:" in printed
    assert (tmp_path / "sin_and_derivative.png").exists()
