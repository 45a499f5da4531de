import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck
from torch.func import grad, jvp, vmap

import torchext
from tests.conftest import assert_close

SHAPES = [(), (0,), (1,), (7,), (1023,), (1025,), (3, 5), (2, 3, 4), (64, 33)]
OPS = [(torchext.sin, torch.sin), (torchext.cos, torch.cos)]


@pytest.mark.parametrize("ops", OPS, ids=["sin", "cos"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_and_backward_match_torch(ops, shape, dtype, device):
    ours, ref = ops
    x = (torch.randn(shape, device=device) * 4).to(dtype).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    y, y_ref = ours(x), ref(x_ref)
    assert y.dtype == dtype and y.shape == y_ref.shape
    assert_close(y, y_ref)
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    assert_close(x.grad, x_ref.grad)


@pytest.mark.parametrize("ops", OPS, ids=["sin", "cos"])
def test_non_contiguous_inputs(ops, device):
    ours, ref = ops
    base = torch.randn(6, 8, device=device)
    for x in (base.t(), base[:, ::2], base[0].expand(5, 8), base.unsqueeze(0)[..., 1:]):
        assert_close(ours(x), ref(x))


@pytest.mark.parametrize("op", [torchext.sin, torchext.cos], ids=["sin", "cos"])
def test_gradcheck_and_gradgradcheck(op):
    x = torch.randn(13, dtype=torch.float64, requires_grad=True)
    assert gradcheck(op, (x,), check_forward_ad=True)
    assert gradgradcheck(op, (x,), check_fwd_over_rev=True, check_rev_over_rev=True)


def test_third_derivative_of_sin_is_minus_cos():
    x = torch.randn(9, dtype=torch.float64, requires_grad=True)
    (d1,) = torch.autograd.grad(torchext.sin(x).sum(), x, create_graph=True)
    (d2,) = torch.autograd.grad(d1.sum(), x, create_graph=True)
    (d3,) = torch.autograd.grad(d2.sum(), x)
    assert_close(d1, x.cos())
    assert_close(d2, -x.sin())
    assert_close(d3, -x.detach().cos())


@pytest.mark.parametrize("ops", OPS, ids=["sin", "cos"])
def test_torch_func_transforms_match_torch(ops):
    ours, ref = ops
    x, t = torch.randn(2, 11, dtype=torch.float64).unbind()
    assert_close(jvp(ours, (x,), (t,))[1], jvp(ref, (x,), (t,))[1])
    assert_close(grad(lambda a: ours(a).sum())(x), grad(lambda a: ref(a).sum())(x))
    batch = torch.randn(4, 5, 6, dtype=torch.float64)
    for in_dims in (0, 1, 2):
        assert_close(vmap(ours, in_dims=in_dims)(batch), vmap(ref, in_dims=in_dims)(batch))
    # per-sample gradients and Hessian-vector products compose transforms over our Functions
    assert_close(
        vmap(grad(lambda a: ours(a).sum()))(batch), vmap(grad(lambda a: ref(a).sum()))(batch)
    )
    assert_close(
        jvp(grad(lambda a: ours(a).sum()), (x,), (t,))[1],
        jvp(grad(lambda a: ref(a).sum()), (x,), (t,))[1],
    )


def test_integer_input_promotes_like_torch():
    x = torch.arange(-3, 4)
    assert torchext.sin(x).dtype == torch.sin(x).dtype
    assert_close(torchext.sin(x), torch.sin(x))
    assert_close(torchext.cos(torch.tensor([True, False])), torch.cos(torch.tensor([True, False])))


def test_bad_input_raises_what_torch_raises():
    with pytest.raises(TypeError, match="sin"):
        torchext.sin([1.0, 2.0])
    with pytest.raises(TypeError, match="complex"):
        torchext.cos(torch.randn(3, dtype=torch.complex64))


def test_compiled_function_matches_eager():
    def f(a):
        return torchext.sin(a) * torchext.cos(a)

    x = torch.randn(33, requires_grad=True)
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    y = compiled(x)
    (gx,) = torch.autograd.grad(y.sum(), x)
    x_ref = x.detach().requires_grad_()
    (gx_ref,) = torch.autograd.grad((x_ref.sin() * x_ref.cos()).sum(), x_ref)
    assert_close(y, f(x))
    assert_close(gx, gx_ref)
