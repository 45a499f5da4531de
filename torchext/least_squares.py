"""`least_squares(X, w, y)` = ‖Xw − y‖² as one fused op: loss and w-gradient in one pass over X.

What backward needs is computed in forward: the w-gradient 2Xᵀr (n values) when w requires
grad, the residual r = Xw − y (m values) only when X or y do. So a first-order backward reads
no X at all, and with only w requiring grad nothing (m,)-sized is kept for it (torch's
`((X @ w - y) ** 2).sum()` keeps r for `pow` and reads X again for `Xᵀ grad`).

A second derivative (`create_graph=True`, which `torch.func.grad` always uses) needs a graph
through the gradient, which the fused kernel does not record. Then backward rebuilds it from
differentiable torchext ops and reads X again, twice — the lesson's point that higher
derivatives cost more. With only w requiring grad, y is not saved; the gradient is affine in w,
so it is rebuilt as `saved + 2XᵀX(w − w₀)` around the forward's w₀: the saved value exactly,
with the exact derivative 2XᵀX.
"""

from __future__ import annotations

import torch
from torch.autograd import forward_ad

from torchext._validation import (
    KERNEL_DTYPES,
    check_device_supported,
    check_not_complex,
    check_same_device,
    check_tensor,
)
from torchext._vmap import batch_first
from torchext.mul import mul, mul_tensors
from torchext.mv import matvec, outer
from torchext.sub import add_tensors, sub
from torchext.sum import sum as torchext_sum
from triton_kernels import least_squares as kernels


@torch.library.custom_op("torchext::least_squares", mutates_args=())
def _least_squares_op(
    x: torch.Tensor, w: torch.Tensor, y: torch.Tensor, compute_grad_w: bool, store_residual: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return kernels.least_squares_forward(x, w, y, compute_grad_w, store_residual)


@_least_squares_op.register_fake
def _least_squares_fake(x, w, y, compute_grad_w, store_residual):
    batch_shape, (m, n) = x.shape[:-2], x.shape[-2:]
    grad_w = x.new_empty((*batch_shape, n) if compute_grad_w else (0,))
    residual = x.new_empty((*batch_shape, m) if store_residual else (0,))
    return x.new_empty(batch_shape), grad_w, residual


def _differentiable_elsewhere(t: torch.Tensor | None) -> bool:
    """Whether `t` can be differentiated by something other than this backward: a forward-mode
    tangent, or a torch.func transform (whose tensors are wrapped)."""
    if t is None:
        return False
    return (torch._C._functorch.is_functorch_wrapped_tensor(t)
            or forward_ad.unpack_dual(t).tangent is not None)  # fmt: skip


def _save_for_backward(ctx, inputs, output) -> None:
    """X and w always (references, for a second derivative); y and r only if X or y need grad.

    y is also kept when the gradient cannot be linearised in w alone (X or y carry tangents or
    belong to a torch.func transform) or when the fused outputs do not cover what backward
    needs (then backward recomputes from X, w, y).
    """
    x, w, y = inputs[:3]
    _, grad_w, residual = output
    needs_x, needs_w, needs_y = ctx.needs_input_grad[:3]
    needs_residual = needs_x or needs_y
    ctx.fused = (not needs_w or grad_w.shape == w.shape) and (
        not needs_residual or residual.shape == y.shape
    )
    keep_y = needs_residual or not ctx.fused or any(map(_differentiable_elsewhere, (x, y)))
    ctx.save_for_backward(x, w, y if keep_y else None, grad_w if needs_w else None,
                          residual if needs_residual else None)  # fmt: skip
    ctx.mark_non_differentiable(grad_w, residual)


def _first_order_grads(needs, grad, w, grad_w, residual):
    """From what forward computed: grad_X = 2g·r wᵀ, grad_w = g·(2Xᵀr), grad_y = −2g·r."""
    needs_x, needs_w, needs_y = needs
    grad_col = grad.unsqueeze(-1)  # () → (1,), (*batch,) → (*batch, 1): broadcasts over m or n
    grad_x = outer(residual, mul_tensors(w, mul(grad_col, 2))) if needs_x else None
    grad_w = mul_tensors(grad_w, grad_col) if needs_w else None
    grad_y = mul_tensors(residual, mul(grad_col, -2)) if needs_y else None
    return grad_x, grad_w, grad_y


def _grads_with_graph(needs, grad, x, w, y, grad_w):
    """The same gradients as differentiable functions of X, w, y and grad (reads X again)."""
    needs_x, needs_w, needs_y = needs
    grad_col = grad.unsqueeze(-1)
    if y is None:  # only w needs a gradient: linearise around the forward's w (see top)
        hessian_dw = matvec(x.mT, matvec(x, sub(w, w.detach())))
        return None, mul_tensors(sub(grad_w, hessian_dw, alpha=-2), grad_col), None
    # The gradient reaching r, 2g·r, made once: grad is used once, so a derivative in grad sums
    # one (m,) vector rather than three rounded partial sums (which cancel in half precision).
    grad_r = mul_tensors(sub(matvec(x, w), y), mul(grad_col, 2))
    grad_x = outer(grad_r, w) if needs_x else None
    grad_w = matvec(x.mT, grad_r) if needs_w else None
    grad_y = mul(grad_r, -1) if needs_y else None
    return grad_x, grad_w, grad_y


def _backward(ctx, grad, _grad_w, _residual):
    x, w, y, grad_w, residual = ctx.saved_tensors
    needs = ctx.needs_input_grad[:3]
    with_graph = torch.is_grad_enabled() or not ctx.fused  # create_graph=True, or a fallback
    if with_graph or any(map(_differentiable_elsewhere, (x, w, y, grad))):
        grads = _grads_with_graph(needs, grad, x, w, y, grad_w)
    else:
        grads = _first_order_grads(needs, grad, w, grad_w, residual)
    return (*grads, None, None)


class LeastSquaresFunction(torch.autograd.Function):
    """(loss, grad_w, residual) = fused least squares of X (*batch, m, n), w, y.

    Only the loss is differentiable; grad_w and residual are outputs so that they can be saved
    for backward (each an empty tensor unless the flags ask for it).
    """

    @staticmethod
    def forward(x, w, y, compute_grad_w: bool, store_residual: bool):
        return _least_squares_op(x, w, y, compute_grad_w, store_residual)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _save_for_backward(ctx, inputs, output)
        ctx.save_for_forward(*inputs[:3])

    backward = staticmethod(_backward)

    @staticmethod
    def jvp(ctx, x_tangent, w_tangent, y_tangent, *_):
        """d‖r‖² = 2 Σ r_i (Ẋ_i·w + X_i·ẇ − ẏ_i)."""
        x, w, y = ctx.saved_tensors
        r_tangent = matvec(x_tangent, w) if x_tangent is not None else None
        if w_tangent is not None:
            term = matvec(x, w_tangent)
            r_tangent = term if r_tangent is None else add_tensors(r_tangent, term)
        if y_tangent is not None:
            r_tangent = mul(y_tangent, -1) if r_tangent is None else sub(r_tangent, y_tangent)
        r = sub(matvec(x, w), y)
        return mul(torchext_sum(mul_tensors(r, r_tangent), dim=-1), 2), None, None

    @staticmethod
    def vmap(info, in_dims, x, w, y, compute_grad_w, store_residual):
        # The kernel takes a batch dimension; unbatched operands are expanded (stride-0 views).
        x, w, y = batch_first(info.batch_size, in_dims[:3], x, w, y)
        # Batched tensors do not report requires_grad: ask the physical ones as well.
        grad_w_here, residual_here = _outputs_for_backward(x, w, y)
        compute_grad_w, store_residual = (compute_grad_w or grad_w_here,
                                          store_residual or residual_here)  # fmt: skip
        out = LeastSquaresFunction.apply(x, w, y, compute_grad_w, store_residual)
        return out, (0, 0 if compute_grad_w else None, 0 if store_residual else None)


# The custom op's autograd (what torch.compile's graphs and direct `torch.ops.torchext` calls use)
# is the Function's own: one formula for both paths.
_least_squares_op.register_autograd(
    LeastSquaresFunction.backward, setup_context=LeastSquaresFunction.setup_context
)


def _outputs_for_backward(x, w, y) -> tuple[bool, bool]:
    """(compute_grad_w, store_residual): what the fused kernel computes for backward."""
    if not torch.is_grad_enabled():
        return False, False
    return w.requires_grad, x.requires_grad or y.requires_grad


def _check_least_squares(X, w, y) -> None:
    for position, (name, t) in enumerate((("X", X), ("w", w), ("y", y)), start=1):
        check_tensor("least_squares", name, t, position)
    for t in (X, w, y):
        check_not_complex("least_squares", t)
        check_device_supported("least_squares", t)
    if (X.dim(), w.dim(), y.dim()) != (2, 1, 1) or (w.shape[0], y.shape[0]) != X.shape[::-1]:
        raise RuntimeError(
            f"least_squares: expected X of shape (m, n), w of shape (n,) and y of shape (m,), "
            f"got X {tuple(X.shape)}, w {tuple(w.shape)}, y {tuple(y.shape)}"
        )
    if not X.dtype == w.dtype == y.dtype:
        raise RuntimeError(
            f"least_squares: expected X, w and y to have the same dtype, but got {X.dtype}, "
            f"{w.dtype} and {y.dtype}"
        )
    if X.dtype not in KERNEL_DTYPES:
        raise RuntimeError(
            f"least_squares: expected a floating point dtype (float16, bfloat16, float32 or "
            f"float64), got {X.dtype}"
        )
    check_same_device("least_squares", X, w, y)


def least_squares(X: torch.Tensor, w: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """‖Xw − y‖², equal to `((X @ w - y) ** 2).sum()`, fused: one pass over X for the loss and
    the w-gradient; accumulates in fp32 (fp64 for fp64); any strides of X, read in place."""
    _check_least_squares(X, w, y)
    compute_grad_w, store_residual = _outputs_for_backward(X, w, y)
    if torch.compiler.is_compiling():
        return _least_squares_op(X, w, y, compute_grad_w, store_residual)[0]
    return LeastSquaresFunction.apply(X, w, y, compute_grad_w, store_residual)[0]
