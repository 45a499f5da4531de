"""`least_squares(X, w, y)` = ‖Xw − y‖² as one fused op: loss and w-gradient in one pass over X.

What backward needs is computed in forward: the w-gradient (n values) when w requires grad, the
residual r = Xw − y (m values) only when X or y do. So first-order backward reads no X at all.
A second derivative (`create_graph=True`) needs a graph through the gradient, which the fused
kernel does not record: then backward rebuilds it from differentiable torchext ops and reads X
again — the lesson's point that higher derivatives cost more.
"""

from __future__ import annotations

import torch

from torchext.dot import dot
from torchext.mul import mul, mul_tensors
from torchext.mv import check_mv, mv, outer
from torchext.sub import sub
from triton_kernels import least_squares as kernels


@torch.library.custom_op("torchext::least_squares", mutates_args=())
def _least_squares_op(
    x: torch.Tensor, w: torch.Tensor, y: torch.Tensor, compute_grad_w: bool, store_residual: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return kernels.least_squares_forward(x, w, y, compute_grad_w, store_residual)


@_least_squares_op.register_fake
def _least_squares_fake(x, w, y, compute_grad_w, store_residual):
    m, n = x.shape
    return (x.new_empty(()), x.new_empty(n if compute_grad_w else 0),
            x.new_empty(m if store_residual else 0))  # fmt: skip


def _first_order_grads(ctx, grad, grad_w_saved, residual, w):
    """Gradients from what forward saved: no pass over X."""
    needs_x, needs_w, needs_y = ctx.needs_input_grad[:3]
    grad_x = outer(mul_tensors(residual, 2 * grad), w) if needs_x else None
    grad_w = mul_tensors(grad_w_saved, grad) if needs_w else None
    grad_y = mul_tensors(residual, -2 * grad) if needs_y else None
    return grad_x, grad_w, grad_y


def _setup_context(ctx, inputs, output):
    x, w, y, _, _ = inputs
    _, grad_w, residual = output
    ctx.save_for_backward(x, w, y, grad_w, residual)
    ctx.mark_non_differentiable(grad_w, residual)


def _op_backward(ctx, grad, _grad_w, _residual):
    # Used under torch.compile only (see torchext/sin.py): first order, from the saved values.
    _, w, _, grad_w, residual = ctx.saved_tensors
    return (*_first_order_grads(ctx, grad, grad_w, residual, w), None, None)


_least_squares_op.register_autograd(_op_backward, setup_context=_setup_context)


class LeastSquaresFunction(torch.autograd.Function):
    """loss = ‖Xw − y‖²; saves the n-sized w-gradient and, only if X or y need grad, r."""

    @staticmethod
    def forward(x, w, y, compute_grad_w: bool, store_residual: bool):
        loss, grad_w, residual = _least_squares_op(x, w, y, compute_grad_w, store_residual)
        return loss, grad_w, residual

    @staticmethod
    def setup_context(ctx, inputs, output):
        _setup_context(ctx, inputs, output)
        ctx.save_for_forward(*inputs[:3])

    @staticmethod
    def backward(ctx, grad, _grad_w, _residual):
        x, w, y, grad_w, residual = ctx.saved_tensors
        if not torch.is_grad_enabled():
            return (*_first_order_grads(ctx, grad, grad_w, residual, w), None, None)
        # create_graph=True: rebuild the gradient from differentiable ops (reads X again).
        r = sub(mv(x, w), y)
        two_grad = mul(grad, 2)
        grad_x = outer(mul_tensors(r, two_grad), w) if ctx.needs_input_grad[0] else None
        grad_w = mul_tensors(mv(x.t(), r), two_grad) if ctx.needs_input_grad[1] else None
        grad_y = mul_tensors(r, -two_grad) if ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_y, None, None

    @staticmethod
    def jvp(ctx, x_tangent, w_tangent, y_tangent, *_):
        x, w, y = ctx.saved_tensors[:3]
        r = sub(mv(x, w), y)
        r_tangent = None
        for term in (
            mv(x_tangent, w) if x_tangent is not None else None,
            mv(x, w_tangent) if w_tangent is not None else None,
            mul(y_tangent, -1) if y_tangent is not None else None,
        ):
            if term is not None:
                r_tangent = term if r_tangent is None else r_tangent + term
        return mul(dot(r, r_tangent), 2), None, None

    @staticmethod
    def vmap(info, in_dims, x, w, y, compute_grad_w, store_residual):
        # One fused call per sample: the kernel has no batch dimension (a Python loop, B calls).
        samples = [
            LeastSquaresFunction.apply(
                *(t.select(d, b) if d is not None else t for t, d in zip((x, w, y), in_dims[:3],
                                                                          strict=True)),
                compute_grad_w, store_residual,
            )
            for b in range(info.batch_size)
        ]  # fmt: skip
        return tuple(torch.stack(out) for out in zip(*samples, strict=True)), (0, 0, 0)


def least_squares(X: torch.Tensor, w: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """‖Xw − y‖², equal to `((X @ w - y) ** 2).sum()`, fused: one pass over X for loss and grad."""
    check_mv("least_squares", X, w)
    if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.shape[0] != X.shape[0]:
        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise RuntimeError(f"least_squares: y must have shape ({X.shape[0]},), got {shape}")
    if y.dtype != X.dtype or y.device != X.device:
        raise RuntimeError(
            f"least_squares: y must match X's dtype and device ({X.dtype}, {X.device}), "
            f"got {y.dtype}, {y.device}"
        )
    if not X.is_floating_point():
        raise RuntimeError(f"least_squares: expected a floating point X, got {X.dtype}")
    grad_on = torch.is_grad_enabled()
    compute_grad_w = grad_on and w.requires_grad
    store_residual = grad_on and (X.requires_grad or y.requires_grad)
    if torch.compiler.is_compiling():
        return _least_squares_op(X, w, y, compute_grad_w, store_residual)[0]
    return LeastSquaresFunction.apply(X, w, y, compute_grad_w, store_residual)[0]
