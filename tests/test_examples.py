"""The lesson's examples on torchext ops print what the lesson prints."""

import torch

from torchext import examples


def test_two_x_dot_x_matches_lesson():
    out = examples.two_x_dot_x()
    assert out["y"].item() == 28.0
    assert out["x.grad"].tolist() == [0.0, 4.0, 8.0, 12.0]
    assert out["x.grad == 4 * x"].all()


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
    assert out["x.grad == u"].all()
    assert out["x.grad == 2 * x (after y.sum().backward())"].all()


def test_control_flow_gradient_is_d_over_a_for_scalar_and_vector():
    assert examples.control_flow_scalar()["a.grad == d / a"]
    cases = ((examples.control_flow_scalar(), ()), (examples.control_flow_vector(), (10,)))
    for out, shape in cases:
        assert out["a"].shape == shape
        # d / a recovers k up to one rounding per element: exact for the lesson's scalar
        torch.testing.assert_close(out["a.grad"], out["d"] / out["a"], rtol=1e-6, atol=0)
        # f(a) = k·a with k a power of two (times 100 on the negative branch)
        k = out["a.grad"].flatten()[0].item()
        assert torch.equal(out["a.grad"], torch.full(shape, k))
        assert torch.linalg.norm(out["d"]) >= 1000 or torch.sum(out["d"]) <= 0


def test_control_flow_f_agrees_with_the_same_code_on_torch_ops():
    a = torch.tensor([0.3, -1.2, 0.7])

    def f_torch(a):
        b = a * 2
        while b.norm() < 1000:
            b = b * 2
        return b if b.sum() > 0 else 100 * b

    torch.testing.assert_close(examples.f(a), f_torch(a))


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


def test_chain_rule_gradients_match_the_closed_forms():
    out = examples.chain_rule()
    assert out["matches 2(<x,w> - y)x"]
    assert out["matches 2X^T(Xw - y)"]


def test_main_prints_every_example(tmp_path, capsys):
    assert examples.main(["--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    for name in examples.EXAMPLES:
        assert f"== {name}:" in printed
    assert (tmp_path / "sin_and_derivative.png").exists()
