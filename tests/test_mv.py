import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck
from torch.func import grad, jvp, vmap

import torchext
from tests.conftest import assert_close
from triton_kernels.mv import as_batched, mv_forward, outer_forward

# (m, n): 1×1, sizes that are not multiples of the 32×128 block, empty m or n, tall and wide.
SHAPES = [(1, 1), (3, 5), (33, 130), (0, 4), (4, 0), (1, 200), (200, 1), (70, 9)]
HALF = (torch.float16, torch.bfloat16)


def _reference_dtype(dtype: torch.dtype) -> torch.dtype:
    """Half precision is compared against fp32 math on the same (rounded) inputs: our kernels
    accumulate in fp32 and round once, so they match it to the half dtype's tolerance, while
    torch's own half kernels may round partial sums and would make the comparison looser."""
    return torch.float32 if dtype in HALF else dtype


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_and_backward_match_torch(shape, dtype, device):
    m, n = shape
    x = torch.randn(m, n, device=device).to(dtype).requires_grad_()
    w = torch.randn(n, device=device).to(dtype).requires_grad_()
    ref = _reference_dtype(dtype)
    x_ref, w_ref = (t.detach().to(ref).requires_grad_() for t in (x, w))
    out, out_ref = torchext.mv(x, w), torch.mv(x_ref, w_ref)
    assert out.dtype == dtype and out.shape == (m,)
    assert_close(out, out_ref.to(dtype), dtype)
    g = torch.randn(m, device=device).to(dtype)
    out.backward(g)
    out_ref.backward(g.to(ref))
    assert x.grad.dtype == dtype and w.grad.dtype == dtype
    assert_close(x.grad, x_ref.grad.to(dtype), dtype)
    assert_close(w.grad, w_ref.grad.to(dtype), dtype)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8], ids=str)
def test_integer_mv_is_exact_like_torch(dtype):
    x = torch.randint(0, 9, (6, 5), dtype=dtype)
    w = torch.randint(0, 3, (5,), dtype=dtype)
    out = torchext.mv(x, w)
    assert out.dtype == dtype
    assert torch.equal(out, torch.mv(x, w))


def test_non_contiguous_inputs_are_read_in_place(device):
    base = torch.randn(9, 12, device=device, dtype=torch.float64)
    vec = torch.randn(24, device=device, dtype=torch.float64)
    cases = [
        (base.t(), vec[:9]),  # transposed: what backward's Xᵀg reads
        (base[::2, 1::3], vec[::6]),  # sliced rows and columns, strided vec
        (base[0].expand(5, 12), vec[:12]),  # stride-0 rows
        (base[:4, :7], vec[:14].view(7, 2)[:, 0]),
    ]
    for x, w in cases:
        batched = as_batched(x, 2)  # what the launcher hands the kernel: a view, never a copy
        assert batched.data_ptr() == x.data_ptr() and batched.stride()[1:] == x.stride()
        x, w = x.requires_grad_(), w.detach().requires_grad_()
        x_ref, w_ref = (t.detach().clone().requires_grad_() for t in (x, w))
        out, out_ref = torchext.mv(x, w), torch.mv(x_ref, w_ref)
        assert_close(out, out_ref)
        g = torch.randn_like(out)
        out.backward(g)
        out_ref.backward(g)
        assert_close(x.grad, x_ref.grad)
        assert_close(w.grad, w_ref.grad)


@pytest.mark.parametrize("split_cols", [37, 64, 128])
def test_column_split_sums_its_partials(split_cols, dtype):
    """The split path (used on GPU when row blocks alone cannot fill the SMs) on the CPU."""
    x = torch.randn(150, 37).to(dtype)
    w = torch.randn(150).to(dtype)
    xt = x.t()  # (37, 150): few rows, many columns, like Xᵀg for a tall X
    expected = torch.mv(xt.to(torch.float64), w.to(torch.float64)).to(dtype)
    assert_close(mv_forward(xt, w, split_cols=split_cols), expected, dtype, scale=2)


def test_batched_kernels_match_per_sample_results():
    x = torch.randn(3, 40, 7, dtype=torch.float64)
    w = torch.randn(3, 7, dtype=torch.float64)
    g = torch.randn(3, 40, dtype=torch.float64)
    assert_close(mv_forward(x, w), torch.einsum("bmn,bn->bm", x, w))
    assert_close(mv_forward(x, w[0].expand(3, 7)), x @ w[0])  # stride-0 batch
    two_batch_dims = torch.einsum("bmn,bn->bm", x, w).expand(2, 3, 40)
    assert_close(mv_forward(x.expand(2, 3, 40, 7), w.expand(2, 3, 7)), two_batch_dims)
    assert_close(outer_forward(g, w), g[..., :, None] * w[..., None, :])
    assert outer_forward(torch.randn(0, 3), torch.randn(0, 4)).shape == (0, 3, 4)


def test_gradcheck_and_gradgradcheck():
    # Tiny shapes: every check point is a few interpreted kernel launches.
    x = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, dtype=torch.float64, requires_grad=True)
    assert gradcheck(torchext.mv, (x, w), check_forward_ad=True)
    xt = torch.randn(2, 3, dtype=torch.float64).t().requires_grad_()  # backward reads Xᵀ's Xᵀ
    assert gradgradcheck(torchext.mv, (xt, w), check_fwd_over_rev=True, fast_mode=True)


def _assert_all_close(actual, expected):
    for a, e in zip(actual, expected, strict=True):
        assert_close(a, e)


def test_torch_func_transforms_match_torch():
    x, tx = torch.randn(2, 5, 3, dtype=torch.float64).unbind()
    w, tw = torch.randn(2, 3, dtype=torch.float64).unbind()
    assert_close(jvp(torchext.mv, (x, w), (tx, tw))[1], jvp(torch.mv, (x, w), (tx, tw))[1])

    def loss(op):
        return lambda a, b: op(a, b).sin().sum()

    _assert_all_close(grad(loss(torchext.mv), argnums=(0, 1))(x, w),
                      grad(loss(torch.mv), argnums=(0, 1))(x, w))  # fmt: skip
    xs = torch.randn(4, 5, 3, dtype=torch.float64)
    ws = torch.randn(4, 3, dtype=torch.float64)
    for args, in_dims in [((xs, ws), (0, 0)), ((x, ws), (None, 0)), ((xs, w), (0, None)),
                          ((xs.movedim(0, 2), ws.t()), (2, 1))]:  # fmt: skip
        assert_close(vmap(torchext.mv, in_dims)(*args), vmap(torch.mv, in_dims)(*args))
    nested = (xs.expand(2, 4, 5, 3), ws)
    assert_close(vmap(vmap(torchext.mv), (0, None))(*nested),
                 vmap(vmap(torch.mv), (0, None))(*nested))  # fmt: skip
    # per-sample gradients and Hessian-vector products compose transforms over our Functions
    per_sample = vmap(grad(loss(torchext.mv), argnums=(0, 1)))(xs, ws)
    _assert_all_close(per_sample, vmap(grad(loss(torch.mv), argnums=(0, 1)))(xs, ws))
    hvp = jvp(grad(loss(torchext.mv), argnums=1), (x, w), (tx, tw))[1]
    assert_close(hvp, jvp(grad(loss(torch.mv), argnums=1), (x, w), (tx, tw))[1])


def _error(fn, *args):
    with pytest.raises(Exception) as info:
        fn(*args)
    return info


@pytest.mark.parametrize(
    "x, w",
    [
        (torch.randn(3), torch.randn(3)),  # 1-D matrix
        (torch.randn(2, 3, 4), torch.randn(4)),  # 3-D matrix
        (torch.randn(3, 4), torch.randn(4, 1)),  # 2-D vector
        (torch.randn(3, 4), torch.tensor(1.0)),  # 0-dim vector
        (torch.randn(3, 4), torch.randn(5)),  # size mismatch
    ],
    ids=["1d-matrix", "3d-matrix", "2d-vec", "0d-vec", "size"],
)
def test_shape_errors_are_torchs_named_for_the_op(x, w):
    ours, theirs = _error(torchext.mv, x, w), _error(torch.mv, x, w)
    assert ours.type is theirs.type is RuntimeError
    assert str(ours.value) == f"mv: {theirs.value}"


def test_other_bad_input_raises_what_torch_raises():
    x, w = torch.randn(3, 4), torch.randn(4)
    cases = [
        ((x, w.double()), "same dtype"),
        ((x.bool(), w.bool()), "Bool"),
        ((x, w.to("meta")), "same device"),
        (([[1.0]], w), "argument 'input'"),
        ((x, [1.0, 2.0, 3.0, 4.0]), "argument 'vec'"),
    ]
    for args, match in cases:
        ours, theirs = _error(torchext.mv, *args), _error(torch.mv, *args)
        assert ours.type is theirs.type, (args, ours.value, theirs.value)
        assert "mv" in str(ours.value) and match in str(ours.value)
    with pytest.raises(TypeError, match="complex"):  # torch.mv takes complex; our kernels do not
        torchext.mv(x.to(torch.complex64), w.to(torch.complex64))


def test_backward_twice_with_retain_graph_gives_the_same_grads():
    x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, dtype=torch.float64, requires_grad=True)
    out = torchext.mv(x, w)
    g = torch.randn(6, dtype=torch.float64)
    first = torch.autograd.grad(out, (x, w), g, retain_graph=True)
    second = torch.autograd.grad(out, (x, w), g)
    _assert_all_close(first, second)
    assert_close(first[0], torch.outer(g, w.detach()))


def test_saves_only_the_other_operand():
    saved = []
    x = torch.randn(6, 4, requires_grad=True)
    w = torch.randn(4)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        torchext.mv(x, w)
    assert [t.shape for t in saved] == [w.shape]


def test_compiled_function_matches_eager():
    def f(a, b):
        return torchext.mv(a, b).sin()

    x = torch.randn(7, 5, requires_grad=True)
    w = torch.randn(5, requires_grad=True)
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    out = compiled(x, w)
    grads = torch.autograd.grad(out.sum(), (x, w))
    x_ref, w_ref = (t.detach().requires_grad_() for t in (x, w))
    out_ref = torch.mv(x_ref, w_ref).sin()
    assert_close(out, out_ref)
    _assert_all_close(grads, torch.autograd.grad(out_ref.sum(), (x_ref, w_ref)))
