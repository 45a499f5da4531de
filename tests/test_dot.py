import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck
from torch.func import grad, jvp, vmap

import torchext
from tests.conftest import assert_close
from tests.test_sum import reduction_scale

SIZES = [0, 1, 7, 1025, 4097, 10_000]


def _reference_dot(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """torch.dot, through fp32 for half-precision inputs, cast back."""
    if x.dtype in (torch.float16, torch.bfloat16):
        return torch.dot(x.float(), y.float()).to(x.dtype)
    return torch.dot(x, y)


@pytest.mark.parametrize("n", SIZES)
def test_forward_and_backward_match_torch(n, dtype, device):
    x = torch.randn(n, device=device).to(dtype).requires_grad_()
    y = torch.randn(n, device=device).to(dtype).requires_grad_()
    out = torchext.dot(x, y)
    assert out.dtype == dtype and out.shape == ()
    assert_close(out, _reference_dot(x.detach(), y.detach()), scale=reduction_scale(max(n, 1)))
    g = torch.randn((), device=device).to(dtype)
    out.backward(g)
    x_ref, y_ref = x.detach().clone().requires_grad_(), y.detach().clone().requires_grad_()
    torch.dot(x_ref, y_ref).backward(g)
    assert_close(x.grad, x_ref.grad)
    assert_close(y.grad, y_ref.grad)


def test_lesson_example_two_x_dot_x_has_gradient_four_x(device):
    x = torch.arange(4.0, device=device, requires_grad=True)
    y = torchext.mul(torchext.dot(x, x), 2)
    y.backward()
    assert y.item() == 28.0
    assert torch.equal(x.grad, 4 * x.detach())


def test_only_the_needed_operand_is_saved():
    x = torch.randn(6, requires_grad=True)
    y = torch.randn(6)
    out = torchext.dot(x, y)
    saved = [t for t in out.grad_fn.saved_tensors if t is not None]
    assert len(saved) == 1 and saved[0].data_ptr() == y.data_ptr()


@pytest.mark.parametrize(
    "dtype", [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64], ids=str
)
def test_integer_dot_wraps_like_torch(dtype):
    x = torch.randint(0, 100, (300,)).to(dtype)
    y = torch.randint(0, 100, (300,)).to(dtype)
    got, want = torchext.dot(x, y), torch.dot(x, y)
    assert got.dtype == want.dtype == dtype and torch.equal(got, want)


def test_non_contiguous_inputs(device):
    base = torch.randn(6, 8, device=device)
    for x, y in [(base[:, 0], base[:, 1]), (base[0, ::2], base[1, 1::2]),
                 (base[0, :1].expand(8), base[2]), (base.t()[3], base[:, 5])]:  # fmt: skip
        assert_close(torchext.dot(x, y), torch.dot(x, y))


def test_gradcheck_and_gradgradcheck():
    x = torch.randn(4, dtype=torch.float64, requires_grad=True)
    y = torch.randn(4, dtype=torch.float64, requires_grad=True)
    assert gradcheck(torchext.dot, (x, y), check_forward_ad=True)
    assert gradgradcheck(torchext.dot, (x, y), check_fwd_over_rev=True)


def test_torch_func_transforms_match_torch():
    x, y, tx, ty = torch.randn(4, 7, dtype=torch.float64).unbind()
    assert_close(jvp(torchext.dot, (x, y), (tx, ty))[1], jvp(torch.dot, (x, y), (tx, ty))[1])
    assert_close(grad(torchext.dot, argnums=(0, 1))(x, y)[1], x)
    a, b = torch.randn(2, 5, 7, dtype=torch.float64).unbind()
    for in_dims in [(0, 0), (1, 1), (0, None), (None, 1)]:
        bb = b[0] if in_dims[1] is None else b
        aa = a[:, 0] if in_dims[0] is None else a
        assert_close(vmap(torchext.dot, in_dims=in_dims)(aa, bb),
                     vmap(torch.dot, in_dims=in_dims)(aa, bb))  # fmt: skip
    a3, b3 = torch.randn(2, 3, 5, 7, dtype=torch.float64).unbind()
    assert_close(vmap(vmap(torchext.dot))(a3, b3), (a3 * b3).sum(-1))
    assert_close(vmap(grad(torchext.dot))(a, b), b)
    # Hessian-vector product of xᵀx: 2v
    assert_close(jvp(grad(lambda u: torchext.dot(u, u)), (x,), (tx,))[1], 2 * tx)


def test_bad_input_raises_what_torch_raises():
    v = torch.randn(3)
    with pytest.raises(TypeError, match=r"dot\(\): argument 'input' \(position 1\)"):
        torchext.dot([1.0], v)
    with pytest.raises(TypeError, match=r"dot\(\): argument 'tensor' \(position 2\)"):
        torchext.dot(v, 3)
    with pytest.raises(RuntimeError, match="dot: 1D tensors expected, but got 2D and 1D tensors"):
        torchext.dot(torch.randn(2, 3), v)
    with pytest.raises(RuntimeError, match="dot: 1D tensors expected, but got 0D and 0D"):
        torchext.dot(torch.tensor(1.0), torch.tensor(2.0))
    with pytest.raises(RuntimeError, match="dot: inconsistent tensor size, expected tensor"):
        torchext.dot(v, torch.randn(4))
    with pytest.raises(RuntimeError, match="dot : expected both vectors to have same dtype, "
                       "but found Float and Double"):  # fmt: skip
        torchext.dot(v, torch.randn(4, dtype=torch.float64))  # dtype is checked before size
    with pytest.raises(NotImplementedError, match="\"dot\" not implemented for 'Bool'"):
        torchext.dot(torch.ones(2, dtype=torch.bool), torch.ones(2, dtype=torch.bool))
    with pytest.raises(TypeError, match="complex"):
        torchext.dot(torch.randn(2, dtype=torch.complex64), torch.randn(2, dtype=torch.complex64))


def test_compiled_function_matches_eager():
    def f(a, b):
        return torchext.dot(a, b) * torchext.dot(a, a)

    x, y = torch.randn(2, 33).unbind()
    x.requires_grad_()
    y.requires_grad_()
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    out = compiled(x, y)
    gx, gy = torch.autograd.grad(out, (x, y))
    x_ref, y_ref = x.detach().requires_grad_(), y.detach().requires_grad_()
    out_ref = torch.dot(x_ref, y_ref) * torch.dot(x_ref, x_ref)
    gx_ref, gy_ref = torch.autograd.grad(out_ref, (x_ref, y_ref))
    assert_close(out, f(x, y))
    assert_close(out, out_ref)
    assert_close(gx, gx_ref)
    assert_close(gy, gy_ref)


def test_large_dot_on_gpu():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA: 2^24 elements are too slow for the interpreter")
    x, y = torch.randn(2, 2**24 + 3, device="cuda").unbind()
    want = torch.dot(x.double(), y.double())
    assert_close(torchext.dot(x, y).double(), want, dtype=torch.float32, scale=64)
