"""torchext.sub against torch.sub: broadcasting, alpha, numbers, torch's errors, autograd."""

from functools import partial

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck
from torch.func import grad, jvp, vmap

import torchext
from tests.conftest import DTYPES, assert_close
from tests.test_mul import (
    SHAPE_PAIRS,
    assert_compiles_for_sm90,
    assert_matches_torch,
    assert_vmap_matches_torch,
    record_launches,
)
from triton_kernels import sub as sub_kernels

ALPHAS = [1, -2.5]


@pytest.mark.parametrize("alpha", ALPHAS, ids=lambda a: f"alpha={a}")
@pytest.mark.parametrize("shapes", SHAPE_PAIRS, ids=str)
def test_forward_and_backward_match_torch(shapes, alpha, dtype, device):
    a = torch.randn(shapes[0], device=device).to(dtype)
    b = torch.randn(shapes[1], device=device).to(dtype)
    # broadcast gradients are sums of up to 30 elements: a few roundings in half precision
    ours, ref = partial(torchext.sub, alpha=alpha), partial(torch.sub, alpha=alpha)
    assert_matches_torch(ours, ref, a, b, grad_scale=4)


@pytest.mark.parametrize("alpha", ALPHAS, ids=lambda a: f"alpha={a}")
@pytest.mark.parametrize("scalar", [2, 0.1, -3.5, 0], ids=repr)
def test_python_numbers_on_either_side(scalar, alpha, dtype, device):
    ours, ref = partial(torchext.sub, alpha=alpha), partial(torch.sub, alpha=alpha)
    for shape in ((9,), ()):
        x = (torch.randn(shape, device=device) * 3).to(dtype)
        assert_matches_torch(ours, ref, x, scalar)
        assert_matches_torch(ours, ref, scalar, x)


def test_two_numbers_give_a_0_dim_tensor_like_torch():
    for a, b in ((2, 3), (2.0, 3), (7, 0.25)):
        out, expected = torchext.sub(a, b, alpha=2), torch.sub(a, b, alpha=2)
        assert out.dtype == expected.dtype and out.shape == ()
        assert_close(out, expected)


@pytest.mark.parametrize(
    "dtypes",
    [(x, y) for x in DTYPES for y in DTYPES if x != y]
    + [(torch.int64, torch.float32), (torch.int32, torch.float16), (torch.uint8, torch.float64)],
    ids=str,
)
def test_type_promotion_like_torch(dtypes):
    a = (torch.randn(6) * 5).to(dtypes[0]).requires_grad_(dtypes[0].is_floating_point)
    b = (torch.randn(6) * 5).to(dtypes[1]).requires_grad_(dtypes[1].is_floating_point)
    expected = torch.sub(a, b, alpha=3)
    out = torchext.sub(a, b, alpha=3)
    assert out.dtype == expected.dtype
    # ours is the exact difference rounded once; torch's CPU kernel may first round alpha·b to
    # fp16 (then a cancellation leaves a few ulps), so hold both to the exact result
    exact = torch.sub(a.double(), b.double(), alpha=3).to(out.dtype)
    assert_close(out, exact)
    assert_close(expected, exact, scale=4)
    needs = [t for t in (a, b) if t.requires_grad]
    for g, e in zip(
        torch.autograd.grad(out.sum(), needs),
        torch.autograd.grad(expected.sum(), needs),
        strict=True,
    ):
        assert g.dtype == e.dtype
        assert_close(g, e)
    zero_dim = torch.tensor(3.0, dtype=torch.float64)  # a 0-dim tensor does not promote dims
    assert torchext.sub(a, zero_dim).dtype == torch.sub(a, zero_dim).dtype


def test_integer_results_are_exact_like_torch():
    cases = [
        (torch.tensor([2**40, -7, 3, -(2**62)]), torch.tensor([5, 1, -(2**20), 2**62]), 3),
        (torch.tensor([2**40, -7]), 2**50, -2),
        (torch.tensor([100, -100, 7], dtype=torch.int8), torch.tensor(3, dtype=torch.int8), 50),
        (torch.tensor([0, 1, 200], dtype=torch.uint8), 7, 1),  # wraps like torch
        (torch.tensor([3, 4], dtype=torch.int16), torch.tensor([2**20, 1], dtype=torch.int32), 1),
    ]
    for a, b, alpha in cases:
        expected = torch.sub(a, b, alpha=alpha)
        out = torchext.sub(a, b, alpha=alpha)
        assert out.dtype == expected.dtype
        assert torch.equal(out, expected), (a, b, alpha, out, expected)
    x = torch.tensor([5, -9])
    assert torch.equal(torchext.sub(3, x, alpha=4), torch.sub(3, x, alpha=4))
    assert torch.equal(torchext.sub(x, 2.5), torch.sub(x, 2.5))  # a float number promotes


def test_non_contiguous_inputs(device):
    base = torch.randn(6, 8, device=device, dtype=torch.float64)
    other = torch.randn(8, 6, device=device, dtype=torch.float64)
    ours, ref = partial(torchext.sub, alpha=0.5), partial(torch.sub, alpha=0.5)
    for a, b in (
        (base.t(), other),
        (base[:, ::2], other.t()[:, 1::2]),
        (base[0].expand(5, 8), base[1:]),
        (base[2, 3], base.t()[::2]),
    ):
        assert_matches_torch(ours, ref, a, b)


def test_numbers_and_alpha_are_kernel_arguments(monkeypatch):
    launches = record_launches(monkeypatch)
    x = torch.randn(6, dtype=torch.float64)
    for operands, scalar_first in (((x, 0.1), False), ((0.1, x), True)):
        out = torchext.sub(*operands, alpha=3)
        kernel, args, kwargs = launches[-1]
        assert kernel is sub_kernels.sub_scalar_kernel
        assert args[1:5] == (0.1, 0, 3.0, 0) and kwargs["SCALAR_FIRST"] is scalar_first
        assert [a.numel() for a in args if isinstance(a, torch.Tensor)] == [6, 6]
        assert_close(out, torch.sub(*operands, alpha=3))
    torchext.sub(torch.arange(4), torch.tensor(2), alpha=5)
    kernel, args, kwargs = launches[-1]
    assert kernel is sub_kernels.sub_kernel and kwargs["B_IS_SCALAR"]
    assert args[1].numel() == 1 and args[2:4] == (0.0, 5)  # int results read the int64 slot


def test_gradcheck_and_gradgradcheck():
    # tiny on purpose: gradgradcheck launches a few kernels per element through the interpreter
    a = torch.randn(2, 1, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, requires_grad=True)

    def sub_alpha(p, q):
        return torchext.sub(p, q, alpha=2.5)

    assert gradcheck(sub_alpha, (a, b), check_forward_ad=True)
    assert gradgradcheck(sub_alpha, (a, b), check_fwd_over_rev=True)
    x = torch.randn(2, dtype=torch.float64)

    def squared_residual(w):  # the lesson's chain rule: (<x, w> - y)^2, on torchext ops only
        residual = torchext.sub(torchext.dot(x, w), 0.3)
        return torchext.mul(residual, residual)

    for fn, inputs in (
        (lambda t: torchext.sub(t, 0.5, alpha=3), (a,)),
        (lambda t: torchext.sub(0.5, t, alpha=3), (a,)),
        (squared_residual, (b,)),
    ):
        assert gradcheck(fn, inputs, check_forward_ad=True)
        assert gradgradcheck(fn, inputs)


@pytest.mark.parametrize(
    "ops",
    [
        (lambda p, q: torchext.sub(p, q, alpha=2), lambda p, q: torch.sub(p, q, alpha=2)),
        (lambda p, q: torchext.sub(q, p), lambda p, q: torch.sub(q, p)),
    ],
    ids=["sub_alpha", "sub_reversed"],
)
def test_jvp_and_grad_match_torch(ops):
    ours, ref = ops
    x, t = torch.randn(2, 4, 3, dtype=torch.float64).unbind()
    y, u = torch.randn(2, 3, dtype=torch.float64).unbind()
    assert_close(jvp(ours, (x, y), (t, u))[1], jvp(ref, (x, y), (t, u))[1])
    # one tangent at a time: the Function's jvp gets None for the other
    assert_close(jvp(lambda p: ours(p, y), (x,), (t,))[1], jvp(lambda p: ref(p, y), (x,), (t,))[1])
    assert_close(jvp(lambda q: ours(x, q), (y,), (u,))[1], jvp(lambda q: ref(x, q), (y,), (u,))[1])
    assert_close(
        grad(lambda p, q: ours(p, q).sum(), argnums=(0, 1))(x, y),
        grad(lambda p, q: ref(p, q).sum(), argnums=(0, 1))(x, y),
        dtype=torch.float64,
    )


def test_torch_func_transforms_match_torch():
    x, t = torch.randn(2, 4, 3, dtype=torch.float64).unbind()
    y, u = torch.randn(2, 3, dtype=torch.float64).unbind()
    half, half_t = torch.randn(2, 3, dtype=torch.float16).unbind()
    # fp64 - fp16 is fp64: each tangent alone must come out promoted
    assert_close(
        jvp(lambda p: torchext.sub(p, half), (y,), (u,))[1],
        jvp(lambda p: torch.sub(p, half), (y,), (u,))[1],
    )
    assert_close(
        jvp(lambda q: torchext.sub(y, q, alpha=3), (half,), (half_t,))[1],
        jvp(lambda q: torch.sub(y, q, alpha=3), (half,), (half_t,))[1],
        dtype=torch.float16,  # torch rounds alpha·tangent to fp16 before promoting; we do not
    )
    assert_close(
        jvp(lambda p: torchext.sub(1.5, p, alpha=3), (x,), (t,))[1],
        jvp(lambda p: torch.sub(1.5, p, alpha=3), (x,), (t,))[1],
    )
    ours, ref = partial(torchext.sub, alpha=-2), partial(torch.sub, alpha=-2)
    assert_vmap_matches_torch(ours, ref)
    batch = torch.randn(5, 4, 3, dtype=torch.float64)
    assert_close(
        vmap(grad(lambda p: torchext.sum(torchext.sub(p, y, alpha=3))))(batch),
        vmap(grad(lambda p: torch.sub(p, y, alpha=3).sum()))(batch),
    )


def test_retain_graph_backward_twice_gives_the_same_gradients():
    a = torch.randn(4, 3, requires_grad=True)
    b = torch.randn(3, requires_grad=True)
    loss = torchext.sum(torchext.sub(torchext.sub(a, b, alpha=2), 1.0))
    first = torch.autograd.grad(loss, (a, b), retain_graph=True)
    second = torch.autograd.grad(loss, (a, b), retain_graph=True)
    for g1, g2 in zip(first, second, strict=True):
        assert torch.equal(g1, g2)
    loss.backward(retain_graph=True)
    loss.backward()
    assert_close(a.grad, 2 * first[0])
    assert_close(b.grad, torch.full((3,), -16.0))  # -alpha * 4 rows, twice


def test_bool_operands_raise_like_torch():
    flags = torch.tensor([True, False])
    with pytest.raises(RuntimeError, match="sub: .* with two bool tensors is not supported"):
        torchext.sub(flags, flags)
    for a, b in ((flags, torch.ones(2)), (torch.ones(2), True), (flags, 1), (True, torch.ones(2))):
        with pytest.raises(RuntimeError, match="sub: .* with a bool tensor is not supported"):
            torchext.sub(a, b)


def test_bad_alpha_raises_like_torch():
    x, ints = torch.randn(3), torch.arange(3)
    with pytest.raises(RuntimeError, match="alpha must not be a floating point number"):
        torchext.sub(ints, ints, alpha=0.5)
    with pytest.raises(RuntimeError, match="Boolean alpha only supported for Boolean results"):
        torchext.sub(x, x, alpha=True)
    with pytest.raises(RuntimeError, match="alpha must not be a complex number"):
        torchext.sub(x, x, alpha=1j)
    with pytest.raises(TypeError, match="argument 'alpha' must be Number, not NoneType"):
        torchext.sub(x, x, alpha=None)
    with pytest.raises(OverflowError, match="sub"):
        torchext.sub(ints, ints, alpha=2**64)
    assert torch.equal(torchext.sub(ints, 0.5, alpha=2), torch.sub(ints, 0.5, alpha=2))


def test_bad_input_raises_what_torch_raises():
    x = torch.randn(3)
    with pytest.raises(RuntimeError, match=r"sub: The size of tensor a \(3\) must match the size"):
        torchext.sub(x, torch.randn(2, 4))
    with pytest.raises(RuntimeError, match="same device"):
        torchext.sub(torch.randn(3, device="meta"), x)
    with pytest.raises(TypeError, match=r"sub\(\): argument 'other' \(position 2\) must be Tensor"):
        torchext.sub(x, [1.0])
    with pytest.raises(TypeError, match="sub: complex"):
        torchext.sub(torch.randn(3, dtype=torch.complex64), 1)
    with pytest.raises(TypeError, match="positional"):
        torchext.sub(x, x, 2)  # like torch's non-deprecated signature: alpha is keyword-only


def test_compiled_function_matches_eager():
    def f(p, q):
        r = torchext.sub(torchext.sub(p, q, alpha=2), 0.5)  # tensor - tensor, tensor - number
        return torchext.sum(torchext.mul(r, r)) + torchext.sum(torchext.sub(1.0, q, alpha=3))

    p, q = torch.randn(3, 4, requires_grad=True), torch.randn(4, requires_grad=True)
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    out = compiled(p, q)
    grads = torch.autograd.grad(out, (p, q))
    expected = f(p, q)
    assert_close(out, expected)
    assert_close(grads, torch.autograd.grad(expected, (p, q)), dtype=torch.float32)


def test_kernels_compile_for_cuda_without_a_gpu(tmp_path):
    alpha = {"alpha_fp64": "fp64", "alpha_int64": "i64"}
    out = {"out_ptr": "*fp32", "n_elements": "i64"}
    constexprs = {"COMPUTE_DTYPE": "constexpr", "BLOCK": "constexpr"}
    sub_signature = {
        "a_ptr": "*bf16",
        "b_ptr": "*fp32",
        **alpha,
        **out,
        "A_IS_SCALAR": "constexpr",
        "B_IS_SCALAR": "constexpr",
        **constexprs,
    }
    scalar_signature = {
        "x_ptr": "*bf16",
        "scalar_fp64": "fp64",
        "scalar_int64": "i64",
        **alpha,
        **out,
        "SCALAR_FIRST": "constexpr",
        **constexprs,
    }
    sub_variants = [
        {"A_IS_SCALAR": False, "B_IS_SCALAR": b_is_scalar, "COMPUTE_DTYPE": dtype, "BLOCK": 1024}
        for b_is_scalar, dtype in ((True, "float32"), (False, "int64"))
    ]
    scalar_variants = [
        {"SCALAR_FIRST": scalar_first, "COMPUTE_DTYPE": dtype, "BLOCK": 1024}
        for scalar_first, dtype in ((True, "float32"), (False, "int64"))
    ]
    cases = [
        (sub_kernels.sub_kernel, sub_signature, sub_variants),
        (sub_kernels.sub_scalar_kernel, scalar_signature, scalar_variants),
    ]
    assert_compiles_for_sm90(cases, tmp_path)
