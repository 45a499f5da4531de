import itertools

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck
from torch.func import grad, jvp, vmap

import torchext
from tests.conftest import assert_close
from triton_kernels.least_squares import block_sizes, least_squares_forward

# (m, n): 1×1, several row blocks per program (300×20), column steps that do not divide n
# (3×300: two 256-wide steps), empty m or n, tall and wide.
SHAPES = [(1, 1), (5, 3), (300, 20), (33, 130), (0, 4), (4, 0), (3, 300), (130, 1)]
HALF = (torch.float16, torch.bfloat16)
F64 = torch.float64


def reference(X, w, y):
    return ((X @ w - y) ** 2).sum()


def _inputs(m, n, dtype=F64, device="cpu", requires_grad=(True, True, True)):
    tensors = (torch.randn(m, n), torch.randn(n), torch.randn(m))
    return [t.to(device=device, dtype=dtype).requires_grad_(r)
            for t, r in zip(tensors, requires_grad, strict=True)]  # fmt: skip


def _detached(tensors, dtype=None):
    return [t.detach().to(dtype or t.dtype).requires_grad_(t.requires_grad) for t in tensors]


def _grads(loss, tensors, **kwargs):
    return torch.autograd.grad(loss, [t for t in tensors if t.requires_grad], **kwargs)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_loss_and_grads_match_torch(shape, dtype, device):
    """Half precision is compared against fp32 math on the same rounded inputs; the loss is
    accumulated in fp32 and rounded once, so it meets the dtype's tolerance. Gradients get 4×:
    in half precision grad_X and grad_y are products with the residual, which is stored in the
    input dtype between forward and backward (as in torch's half composition), up to 3
    roundings; in every dtype the residual Xw − y cancels, and our tile-wise summation order
    differs from torch's, so near-zero residuals differ by a few ulps of the terms' size."""
    ours = _inputs(*shape, dtype=dtype, device=device)
    ref = _detached(ours, torch.float32 if dtype in HALF else dtype)
    loss, loss_ref = torchext.least_squares(*ours), reference(*ref)
    assert loss.shape == () and loss.dtype == dtype
    assert_close(loss, loss_ref.to(dtype), dtype)
    for ours_grad, ref_grad in zip(_grads(loss, ours), _grads(loss_ref, ref), strict=True):
        assert ours_grad.dtype == dtype
        assert_close(ours_grad, ref_grad.to(dtype), dtype, scale=4)


def _names(requires_grad) -> str:
    return "".join(name for name, r in zip("Xwy", requires_grad, strict=True) if r) or "none"


@pytest.mark.parametrize("requires_grad", list(itertools.product([False, True], repeat=3)),
                         ids=_names)
def test_every_subset_of_inputs_requiring_grad(requires_grad):
    ours = _inputs(40, 6, requires_grad=requires_grad)
    ref = _detached(ours)
    loss, loss_ref = torchext.least_squares(*ours), reference(*ref)
    assert_close(loss, loss_ref)
    assert loss.requires_grad == any(requires_grad)
    if any(requires_grad):
        for ours_grad, ref_grad in zip(_grads(loss, ours), _grads(loss_ref, ref), strict=True):
            assert_close(ours_grad, ref_grad)


def test_non_contiguous_inputs_are_read_in_place():
    base = torch.randn(14, 30, dtype=F64)
    vec = torch.randn(60, dtype=F64)
    cases = [
        (base.t(), vec[:14], vec[30:60]),  # transposed X
        (base[::2, 1::3], vec[::6], vec[1:15:2]),  # sliced X, strided w and y
        (base[0].expand(9, 30), vec[:60:2], vec[:9]),  # stride-0 rows
    ]
    for X, w, y in cases:
        ours = [t.detach().requires_grad_() for t in (X, w, y)]
        ref = [t.detach().clone().requires_grad_() for t in (X, w, y)]
        loss, loss_ref = torchext.least_squares(*ours), reference(*ref)
        assert_close(loss, loss_ref)
        for ours_grad, ref_grad in zip(_grads(loss, ours), _grads(loss_ref, ref), strict=True):
            assert_close(ours_grad, ref_grad)


@pytest.mark.parametrize("n_programs", [1, 2, 3, 100])
def test_grid_loop_and_batch_match_per_sample_sums(n_programs):
    """Programs that own several row blocks, and one grid over a batch of problems."""
    X, w, y = (torch.randn(shape, dtype=F64) for shape in ((3, 300, 20), (3, 20), (3, 300)))
    loss, grad_w, residual = least_squares_forward(X, w, y, True, True, n_programs)
    r = torch.einsum("bmn,bn->bm", X, w) - y
    assert_close(residual, r)
    assert_close(loss, (r * r).sum(-1))
    assert_close(grad_w, 2 * torch.einsum("bmn,bm->bn", X, r))
    loss, grad_w, residual = least_squares_forward(X[0], w[0], y[0], False, False, n_programs)
    assert_close(loss, (r[0] * r[0]).sum())
    assert grad_w.shape == residual.shape == (0,)


def test_rows_wider_than_the_cache_budget_get_two_row_blocks():
    X, w, y = _inputs(3, 8500, requires_grad=(False, False, False))
    assert block_sizes(8500, X.element_size()) == (2, 256)  # 8500 fp64 columns > 64 KiB
    loss, grad_w, _ = least_squares_forward(X, w, y, True, False)
    assert_close(loss, reference(X, w, y))
    assert_close(grad_w, 2 * X.T @ (X @ w - y))


def test_gradcheck_and_gradgradcheck():
    # Tiny shapes: every check point is a few interpreted kernel launches.
    inputs = _inputs(2, 2)
    assert gradcheck(torchext.least_squares, inputs, check_forward_ad=True)
    assert gradgradcheck(torchext.least_squares, inputs, check_fwd_over_rev=True, fast_mode=True)


def test_gradgradcheck_with_only_w_requiring_grad():
    """y is not saved: backward's graph is the linearisation around the forward's w."""
    inputs = _inputs(3, 2, requires_grad=(False, True, False))
    assert gradgradcheck(torchext.least_squares, inputs, check_fwd_over_rev=True)


@pytest.mark.parametrize("requires_grad", list(itertools.product([False, True], repeat=3))[1:],
                         ids=_names)  # fmt: skip
def test_second_derivatives_match_torch(requires_grad):
    ours = _inputs(5, 3, requires_grad=requires_grad)
    ref = _detached(ours)
    grads = _grads(torchext.least_squares(*ours), ours, create_graph=True)
    grads_ref = _grads(reference(*ref), ref, create_graph=True)
    directions = [torch.randn_like(g) for g in grads]
    second = _grads(sum((g * v).sum() for g, v in zip(grads, directions, strict=True)), ours)
    second_ref = _grads(sum((g * v).sum() for g, v in zip(grads_ref, directions, strict=True)), ref)
    for a, b in zip((*grads, *second), (*grads_ref, *second_ref), strict=True):
        assert_close(a, b)


def test_hessian_in_w_is_two_xtx():
    X, w, y = _inputs(6, 3, requires_grad=(False, True, False))
    (g,) = torch.autograd.grad(torchext.least_squares(X, w, y), w, create_graph=True)
    assert_close(g, 2 * X.T @ (X @ w - y))
    rows = [torch.autograd.grad(g[i], w, retain_graph=True)[0] for i in range(3)]
    assert_close(torch.stack(rows), 2 * X.T @ X)


def test_torch_func_transforms_match_torch():
    X, w, y = (t.detach() for t in _inputs(5, 3))
    tangents = tuple(torch.randn_like(t) for t in (X, w, y))
    assert_close(jvp(torchext.least_squares, (X, w, y), tangents)[1],
                 jvp(reference, (X, w, y), tangents)[1])  # fmt: skip
    for argnums in (1, (0, 1, 2)):
        ours = grad(torchext.least_squares, argnums=argnums)(X, w, y)
        theirs = grad(reference, argnums=argnums)(X, w, y)
        for a, b in zip(*(torch.utils._pytree.tree_leaves(t) for t in (ours, theirs)), strict=True):
            assert_close(a, b)
    Xs, ws, ys = (torch.randn(shape, dtype=F64) for shape in ((4, 5, 3), (4, 3), (4, 5)))
    for args, in_dims in [
        ((Xs, ws, ys), 0),
        ((Xs, w, ys), (0, None, 0)),
        ((X, ws, y), (None, 0, None)),
        ((Xs.movedim(0, 2), ws, ys.T), (2, 0, 1)),
    ]:
        assert_close(vmap(torchext.least_squares, in_dims)(*args), vmap(reference, in_dims)(*args))
    per_sample = vmap(grad(torchext.least_squares, argnums=(0, 1, 2)))(Xs, ws, ys)
    for a, b in zip(per_sample, vmap(grad(reference, argnums=(0, 1, 2)))(Xs, ws, ys), strict=True):
        assert_close(a, b)
    hvp = jvp(grad(torchext.least_squares, argnums=1), (X, w, y), tangents)[1]
    assert_close(hvp, jvp(grad(reference, argnums=1), (X, w, y), tangents)[1])


def test_vmap_output_backpropagates_through_the_batched_kernel():
    Xs = torch.randn(4, 6, 3, dtype=F64, requires_grad=True)
    w = torch.randn(3, dtype=F64, requires_grad=True)
    ys = torch.randn(4, 6, dtype=F64, requires_grad=True)
    losses = vmap(torchext.least_squares, (0, None, 0))(Xs, w, ys)
    ref = _detached((Xs, w, ys))
    losses_ref = vmap(reference, (0, None, 0))(*ref)
    assert_close(losses, losses_ref)
    weights = torch.randn(4, dtype=F64)
    for a, b in zip(_grads(losses @ weights, (Xs, w, ys)), _grads(losses_ref @ weights, ref),
                    strict=True):  # fmt: skip
        assert_close(a, b)


def test_backward_twice_with_retain_graph_gives_the_same_grads():
    inputs = _inputs(7, 4)
    loss = torchext.least_squares(*inputs)
    first = _grads(loss, inputs, retain_graph=True)
    second = _grads(loss, inputs)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


def _saved_while(fn, *args) -> list[torch.Tensor]:
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        fn(*args)
    return saved


def test_only_w_requiring_grad_saves_nothing_m_sized_and_no_copy_of_x():
    m, n = 12, 5
    X, w, y = _inputs(m, n, requires_grad=(False, True, False))
    saved = _saved_while(torchext.least_squares, X, w, y)
    assert not [t.shape for t in saved if m in t.shape and t is not X]
    x_sized = [t for t in saved if t.numel() == X.numel()]
    assert all(t.data_ptr() == X.data_ptr() and t.shape == X.shape for t in x_sized)
    inputs = (X.data_ptr(), w.data_ptr())
    assert sorted(t.numel() for t in saved if t.data_ptr() not in inputs) == [n]  # grad_w
    # the same recorder sees torch's composition keep the (m,) residual for `pow`
    assert any(t.shape == (m,) for t in _saved_while(reference, X, w, y))
    # and ours keeps it when X or y needs a gradient
    X.requires_grad_()
    assert any(t.shape == (m,) for t in _saved_while(torchext.least_squares, X, w, y))


def test_bad_input_raises_torch_like_errors_naming_the_op():
    X, w, y = _inputs(4, 3, dtype=torch.float32, requires_grad=(False, False, False))
    cases = [
        ((X.tolist(), w, y), TypeError, "argument 'X'"),
        ((X, w, 1.0), TypeError, "argument 'y'"),
        ((X[0], w, y), RuntimeError, "shape"),
        ((X, w[:2], y), RuntimeError, r"w \(2,\)"),
        ((X, w, y[:3]), RuntimeError, r"y \(3,\)"),
        ((X, w.unsqueeze(0), y), RuntimeError, "shape"),
        ((X, w.double(), y), RuntimeError, "same dtype"),
        ((X.long(), w.long(), y.long()), RuntimeError, "floating point"),
        ((X, w, y.to("meta")), RuntimeError, "same device"),
        ((X.cfloat(), w.cfloat(), y.cfloat()), TypeError, "complex"),
    ]
    for args, error, match in cases:
        with pytest.raises(error, match=match) as info:
            torchext.least_squares(*args)
        assert "least_squares" in str(info.value)


@pytest.mark.parametrize("requires_grad", [(True, True, True), (False, True, False)],
                         ids=["Xwy", "w"])  # fmt: skip
def test_compiled_function_matches_eager(requires_grad):
    def f(X, w, y):
        return torchext.least_squares(X, w, y) * 0.5

    ours = _inputs(9, 4, dtype=torch.float32, requires_grad=requires_grad)
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    loss = compiled(*ours)
    ref = _detached(ours)
    loss_ref = reference(*ref) * 0.5
    assert_close(loss, loss_ref)
    for a, b in zip(_grads(loss, ours), _grads(loss_ref, ref), strict=True):
        assert_close(a, b)
