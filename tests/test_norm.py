import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck
from torch.func import grad, jvp, vmap

import torchext
from tests.conftest import assert_close
from tests.test_sum import reduction_scale, reference

SHAPES = [(), (0,), (1,), (7,), (4097,), (3, 5), (64, 33), (2, 3, 4)]
# (dim, keepdim) on a (4, 5, 6) input: rows, a leading dim (strided kernel), non-adjacent dims
DIM_CASES = [(1, False), (-1, True), (0, False), ((0, 2), True), ((1, 2), False)]


def _halves(dtype) -> float:
    """Half-precision gradients: torch rounds grad/norm and then the product (two roundings),
    we round once, so allow two ulps."""
    return 2.0 if dtype in (torch.float16, torch.bfloat16) else 1.0


def _reference_input(x: torch.Tensor) -> torch.Tensor:
    """A leaf copy of x for torch's gradient: fp32 for half precision, x's dtype otherwise."""
    half = x.dtype in (torch.float16, torch.bfloat16)
    return x.detach().to(torch.float32 if half else x.dtype).requires_grad_()


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_and_backward_match_torch(shape, dtype, device):
    x = torch.randn(shape, device=device).to(dtype).requires_grad_()
    y = torchext.norm(x)
    expected = reference(torch.norm, x.detach())
    assert y.dtype == dtype and y.shape == ()
    assert_close(y, expected, scale=reduction_scale(max(x.numel(), 1)))
    g = torch.randn((), device=device).to(dtype)
    y.backward(g)
    x_ref = _reference_input(x)
    torch.norm(x_ref).backward(g.to(x_ref.dtype))
    assert x.grad.dtype == dtype
    assert_close(x.grad, x_ref.grad.to(dtype), scale=_halves(dtype))


@pytest.mark.parametrize("dim,keepdim", DIM_CASES, ids=str)
def test_norm_over_dims_matches_torch(dim, keepdim, dtype, device):
    x = torch.randn(4, 5, 6, device=device).to(dtype).requires_grad_()
    y = torchext.norm(x, dim=dim, keepdim=keepdim)
    expected = reference(torch.norm, x.detach(), dim=dim, keepdim=keepdim)
    assert y.shape == expected.shape
    assert_close(y, expected)
    g = torch.randn_like(y)
    y.backward(g)
    x_ref = _reference_input(x)
    torch.norm(x_ref, dim=dim, keepdim=keepdim).backward(g.to(x_ref.dtype))
    assert_close(x.grad, x_ref.grad.to(dtype), scale=_halves(dtype))


def test_p_variants_and_tensor_method_signature():
    x = torch.randn(3, 4)
    for p in ("fro", 2, 2.0, None):
        assert_close(torchext.norm(x, p), torch.norm(x))
    assert_close(torchext.norm(x, 2, 1, True), x.norm(2, 1, True))
    assert_close(torchext.norm(x, dim=()), torch.norm(x, dim=()))
    assert_close(torchext.norm(x, dim=None, keepdim=True), x.norm(dim=None, keepdim=True))
    assert_close(torchext.norm(x, "fro", (0, 1)), torch.norm(x, "fro", (0, 1)))
    half = torch.randn(100, dtype=torch.float16)
    out = torchext.norm(half, dtype=torch.float32)
    assert out.dtype == torch.float32
    assert_close(out, torch.norm(half, dtype=torch.float32))


def test_zero_norm_has_zero_gradient_like_torch(device):
    x = torch.zeros(5, device=device, requires_grad=True)
    torchext.norm(x).backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
    m = torch.zeros(2, 3, device=device)
    m[1] = torch.tensor([3.0, 4.0, 0.0])
    m.requires_grad_()
    torchext.norm(m, dim=1).sum().backward()
    assert_close(m.grad, torch.tensor([[0, 0, 0], [0.6, 0.8, 0]], device=device))


def test_non_contiguous_inputs(device):
    base = torch.randn(6, 8, device=device)
    for x in (base.t(), base[:, ::2], base[0].expand(5, 8), base.unsqueeze(0)[..., 1:]):
        assert_close(torchext.norm(x), torch.norm(x))
        assert_close(torchext.norm(x, dim=0), torch.norm(x, dim=0))
        xg = x.detach().requires_grad_()
        torchext.norm(xg, dim=-1).sum().backward()
        x_ref = x.detach().requires_grad_()
        torch.norm(x_ref, dim=-1).sum().backward()
        assert_close(xg.grad, x_ref.grad)


def test_gradcheck_and_gradgradcheck():
    x = torch.randn(2, 2, 2, dtype=torch.float64, requires_grad=True)
    # full Jacobians for the full norm; random projections (fast_mode) for the dim cases
    for fast, dim in enumerate([None, 1, (0, 2)]):
        def f(a, dim=dim):
            return torchext.norm(a, dim=dim)

        assert gradcheck(f, (x,), check_forward_ad=True, fast_mode=bool(fast))
        assert gradgradcheck(f, (x,), check_fwd_over_rev=True, fast_mode=bool(fast))


def test_backward_is_the_fused_kernel_function():
    x = torch.randn(5, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(torchext.norm(x), x, create_graph=True)
    assert g.grad_fn.name() == "NormBackwardFunctionBackward"
    # Hessian of ‖x‖: (I − x xᵀ/‖x‖²)/‖x‖; its product with v, against torch
    v = torch.randn(5, dtype=torch.float64)
    (hv,) = torch.autograd.grad(g, x, v)
    x_ref = x.detach().requires_grad_()
    (g_ref,) = torch.autograd.grad(x_ref.norm(), x_ref, create_graph=True)
    (hv_ref,) = torch.autograd.grad(g_ref, x_ref, v)
    assert_close(hv, hv_ref)


def test_torch_func_transforms_match_torch():
    x, t = torch.randn(2, 3, 5, dtype=torch.float64).unbind()
    for dim in (None, 1):
        def ours(a, dim=dim):
            return torchext.norm(a, dim=dim)

        def ref(a, dim=dim):
            return torch.norm(a, dim=dim)

        assert_close(jvp(ours, (x,), (t,))[1], jvp(ref, (x,), (t,))[1])
        assert_close(grad(lambda a: ours(a).sum())(x), grad(lambda a: ref(a).sum())(x))
        # Hessian-vector product: forward over reverse through the fused backward
        assert_close(
            jvp(grad(lambda a: ours(a).sum()), (x,), (t,))[1],
            jvp(grad(lambda a: ref(a).sum()), (x,), (t,))[1],
        )
    batch = torch.randn(4, 5, 6, dtype=torch.float64)
    for in_dims in (0, 1, 2):
        assert_close(vmap(torchext.norm, in_dims=in_dims)(batch),
                     vmap(torch.norm, in_dims=in_dims)(batch))  # fmt: skip
    assert_close(vmap(grad(torchext.norm))(batch), vmap(grad(torch.norm))(batch))
    assert_close(vmap(lambda a: torchext.norm(a, dim=0))(batch), batch.norm(dim=1))


def test_bad_input_raises_what_torch_raises():
    x = torch.randn(2, 3)
    with pytest.raises(TypeError, match="norm"):
        torchext.norm([1.0, 2.0])
    with pytest.raises(NotImplementedError, match="norm.*2-norm only"):
        torchext.norm(x, p=1)
    with pytest.raises(NotImplementedError, match="norm"):
        torchext.norm(x, p=float("inf"))
    with pytest.raises(NotImplementedError, match="norm"):
        torchext.norm(x, p="nuc")
    with pytest.raises(RuntimeError, match="norm: .*Expected a floating point .* Got Long"):
        torchext.norm(torch.arange(3))
    with pytest.raises(TypeError, match="complex"):
        torchext.norm(torch.randn(3, dtype=torch.complex64))
    with pytest.raises(RuntimeError, match=r"norm: .*without narrowing .*\(Half\)"):
        torchext.norm(x, dtype=torch.float16)
    with pytest.raises(RuntimeError, match="norm: .*dim must be a 2-tuple"):
        torchext.norm(torch.randn(2, 2, 2), "fro", (0, 1, 2))
    with pytest.raises(IndexError, match="norm: Dimension out of range"):
        torchext.norm(x, dim=2)


def test_compiled_function_matches_eager():
    def f(a):
        return torchext.norm(a) + torchext.sum(torchext.norm(a, dim=1, keepdim=True))

    x = torch.randn(5, 33, requires_grad=True)
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    y = compiled(x)
    (gx,) = torch.autograd.grad(y, x)
    x_ref = x.detach().requires_grad_()
    y_ref = x_ref.norm() + x_ref.norm(dim=1, keepdim=True).sum()
    (gx_ref,) = torch.autograd.grad(y_ref, x_ref)
    assert_close(y, f(x))
    assert_close(y, y_ref)
    assert_close(gx, gx_ref)


def test_large_norm_on_gpu():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA: 2^24 elements are too slow for the interpreter")
    x = torch.randn(2**24 + 3, device="cuda", requires_grad=True)
    y = torchext.norm(x)
    assert_close(y.double(), x.detach().double().norm(), dtype=torch.float32, scale=64)
    y.backward()
    assert_close(x.grad, x.detach() / y.detach())
