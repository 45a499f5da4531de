"""mul and sub against torch: broadcasting, Python scalars, dtypes, autograd of every order."""

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck
from torch.func import grad, jvp, vmap

import torchext
from tests.conftest import assert_close

SHAPE_PAIRS = [
    ((), ()),
    ((7,), ()),
    ((), (5,)),
    ((0,), (1,)),
    ((1025,), (1025,)),
    ((3, 1), (1, 4)),
    ((2, 3, 4), (4,)),
    ((2, 1, 4), (3, 1)),
    ((64, 33), (64, 33)),
]
OPS = {
    "mul": (torchext.mul, torch.mul),
    "sub": (torchext.sub, torch.sub),
    "sub_alpha": (
        lambda a, b: torchext.sub(a, b, alpha=2.5),
        lambda a, b: torch.sub(a, b, alpha=2.5),
    ),
}


@pytest.mark.parametrize("name", OPS)
@pytest.mark.parametrize("shapes", SHAPE_PAIRS, ids=str)
def test_matches_torch_forward_and_backward(name, shapes, dtype, device):
    ours, ref = OPS[name]
    a = torch.randn(shapes[0], device=device).to(dtype).requires_grad_()
    b = torch.randn(shapes[1], device=device).to(dtype).requires_grad_()
    a_ref, b_ref = (t.detach().clone().requires_grad_() for t in (a, b))
    out, expected = ours(a, b), ref(a_ref, b_ref)
    assert out.dtype == expected.dtype and out.shape == expected.shape
    assert_close(out, expected)
    g = torch.randn_like(expected)
    out.backward(g)
    expected.backward(g)
    # broadcast gradients are sums over up to 64 elements: a few roundings in half precision
    assert_close(a.grad, a_ref.grad, scale=4)
    assert_close(b.grad, b_ref.grad, scale=4)


@pytest.mark.parametrize(
    "name, scalar",
    [("mul", s) for s in (2, 100, 0.1, -3.5, True)] + [("sub", s) for s in (2, 0.1, -3.5)],
)
def test_python_scalars_on_either_side(name, scalar, dtype):
    ours, ref = OPS[name]
    x = torch.randn(9).to(dtype)
    assert_close(ours(x, scalar), ref(x, scalar))
    if name == "mul":
        with torchext.patch():
            assert_close(scalar * x, ref(x, scalar))  # the lesson's `100 * b`


@pytest.mark.parametrize(
    "dtypes",
    [
        (torch.float16, torch.float32),
        (torch.bfloat16, torch.float16),
        (torch.int64, torch.float32),
        (torch.int32, torch.int64),
        (torch.bool, torch.float64),
    ],
    ids=str,
)
def test_type_promotion_like_torch(dtypes):
    a = (torch.randn(6) * 5).to(dtypes[0])
    b = (torch.randn(6) * 5).to(dtypes[1])
    expected = torch.mul(a, b)
    out = torchext.mul(a, b)
    assert out.dtype == expected.dtype
    assert_close(out, expected, dtype=torch.float16 if expected.is_floating_point() else None)
    zero_dim = torch.tensor(3.0, dtype=torch.float64)  # a 0-dim tensor does not promote fp16
    assert torchext.mul(a, zero_dim).dtype == torch.mul(a, zero_dim).dtype


def test_integer_results_are_exact():
    a = torch.tensor([2**40, -7, 3])
    assert torch.equal(torchext.mul(a, 3), a * 3)
    assert torch.equal(torchext.sub(a, 5, alpha=2), torch.sub(a, 5, alpha=2))
    bools = torch.tensor([True, False, True])
    assert torch.equal(
        torchext.mul(bools, torch.tensor([True, True, False])),
        bools & torch.tensor([True, True, False]),
    )


@pytest.mark.parametrize("name", ["mul", "sub"])
def test_non_contiguous_inputs(name, device):
    ours, ref = OPS[name]
    base = torch.randn(6, 8, device=device)
    other = torch.randn(8, 6, device=device)
    for a, b in (
        (base.t(), other),
        (base[:, ::2], other.t()[:, 1::2]),
        (base[0].expand(5, 8), base[1:]),
    ):
        assert_close(ours(a, b), ref(a, b))


@pytest.mark.parametrize("name", OPS)
def test_gradcheck_and_gradgradcheck(name):
    ours, _ = OPS[name]
    # small on purpose: gradgradcheck launches a few kernels per element through the interpreter
    a = torch.randn(2, 1, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, 1, dtype=torch.float64, requires_grad=True)
    assert gradcheck(ours, (a, b), check_forward_ad=True)
    assert gradgradcheck(ours, (a, b), check_fwd_over_rev=True)
    assert gradcheck(lambda t: ours(t, 0.5), (a,), check_forward_ad=True)


@pytest.mark.parametrize("name", OPS)
def test_torch_func_transforms_match_torch(name):
    ours, ref = OPS[name]
    x, t = torch.randn(2, 4, 3, dtype=torch.float64).unbind()
    y = torch.randn(3, dtype=torch.float64)
    assert_close(jvp(lambda p: ours(p, y), (x,), (t,))[1], jvp(lambda p: ref(p, y), (x,), (t,))[1])
    assert_close(
        grad(lambda p, q: ours(p, q).sum(), argnums=(0, 1))(x, y)[1],
        grad(lambda p, q: ref(p, q).sum(), argnums=(0, 1))(x, y)[1],
    )
    batch = torch.randn(5, 4, 3, dtype=torch.float64)
    scalars = torch.randn(5, dtype=torch.float64)
    for in_dims, args in (
        ((0, None), (batch, y)),
        ((None, 0), (y, batch)),
        ((1, 0), (batch.transpose(0, 1), batch)),
        ((0, 0), (scalars, batch)),  # per-sample () against per-sample (4, 3)
    ):
        assert_close(vmap(ours, in_dims=in_dims)(*args), vmap(ref, in_dims=in_dims)(*args))


def test_retain_graph_backward_twice_gives_the_same_gradients():
    a = torch.randn(4, 3, requires_grad=True)
    b = torch.randn(3, requires_grad=True)
    loss = torchext.sum(torchext.sub(torchext.mul(a, b), b))
    first = torch.autograd.grad(loss, (a, b), retain_graph=True)
    second = torch.autograd.grad(loss, (a, b))
    for g1, g2 in zip(first, second, strict=True):
        assert torch.equal(g1, g2)


def test_bad_input():
    with pytest.raises(RuntimeError, match=r"mul: The size of tensor a \(3\) must match"):
        torchext.mul(torch.randn(3), torch.randn(4))
    with pytest.raises(TypeError, match="mul"):
        torchext.mul(torch.randn(3), "2")
    with pytest.raises(TypeError, match="must be Tensor"):
        torchext.mul([1.0], torch.randn(3))
    with pytest.raises(TypeError, match="complex"):
        torchext.sub(torch.randn(3, dtype=torch.complex64), 1)
    with pytest.raises(RuntimeError, match="bool tensor is not supported"):
        torchext.sub(torch.tensor([True]), torch.tensor([False]))
    with pytest.raises(RuntimeError, match="alpha must not be a floating point"):
        torchext.sub(torch.arange(3), 1, alpha=0.5)


def test_compiled_function_matches_eager():
    def f(p, q):
        return torchext.sum(torchext.sub(torchext.mul(p, q), q, alpha=2))

    p, q = torch.randn(3, 4, requires_grad=True), torch.randn(4, requires_grad=True)
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    out = compiled(p, q)
    grads = torch.autograd.grad(out, (p, q))
    expected = torch.autograd.grad(f(p, q), (p, q))
    assert_close(out, f(p, q))
    for g, e in zip(grads, expected, strict=True):
        assert_close(g, e)
