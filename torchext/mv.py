"""`mv` (matrix @ vector) and its gradient's outer product, as autograd Functions over kernels.

The two form a closed family: the backward of `mv` is an `outer` (for X) and an `mv` on Xᵀ (for
w); the backward of `outer` is two `mv`s. So every derivative order runs on the same kernels.
"""

from __future__ import annotations

import torch

from torchext._validation import check_device_supported, check_not_complex, check_tensor
from torchext.mul import mul_tensors
from torchext.sum import sum as torchext_sum
from triton_kernels import mv as kernels


@torch.library.custom_op("torchext::mv", mutates_args=())
def _mv_op(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return kernels.mv_forward(x, w)


@torch.library.custom_op("torchext::outer", mutates_args=())
def _outer_op(g: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return kernels.outer_forward(g, w)


@_mv_op.register_fake
def _mv_fake(x, w):
    return x.new_empty(x.shape[0])


@_outer_op.register_fake
def _outer_fake(g, w):
    return g.new_empty((g.shape[0], w.shape[0]))


def _save_inputs(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _mv_op_backward(ctx, grad):
    # Used under torch.compile only (see torchext/sin.py); the eager path is MvFunction.
    x, w = ctx.saved_tensors
    return _outer_op(grad, w), _mv_op(x.t(), grad)


def _outer_op_backward(ctx, grad):
    g, w = ctx.saved_tensors
    return _mv_op(grad, w), _mv_op(grad.t(), g)


_mv_op.register_autograd(_mv_op_backward, setup_context=_save_inputs)
_outer_op.register_autograd(_outer_op_backward, setup_context=_save_inputs)


class MvFunction(torch.autograd.Function):
    """out = X·w; saves w if X needs a gradient and X if w does."""

    @staticmethod
    def forward(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return _mv_op(x, w)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, w = inputs
        ctx.save_for_backward(x if ctx.needs_input_grad[1] else None,
                              w if ctx.needs_input_grad[0] else None)  # fmt: skip
        ctx.save_for_forward(x, w)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, w = ctx.saved_tensors
        grad_x = OuterFunction.apply(grad, w) if ctx.needs_input_grad[0] else None
        grad_w = MvFunction.apply(x.t(), grad) if ctx.needs_input_grad[1] else None
        return grad_x, grad_w

    @staticmethod
    def jvp(ctx, x_tangent, w_tangent):
        x, w = ctx.saved_tensors
        out = None
        if x_tangent is not None:
            out = MvFunction.apply(x_tangent, w)
        if w_tangent is not None:
            term = MvFunction.apply(x, w_tangent)
            out = term if out is None else out + term
        return out

    @staticmethod
    def vmap(info, in_dims, x, w):
        # A batch of matrix-vector products: rows of X times w, summed (B·m·n intermediate).
        x_dim, w_dim = in_dims
        x = x.movedim(x_dim, 0) if x_dim is not None else x  # (B, m, n) or (m, n)
        w = w.movedim(w_dim, 0).unsqueeze(-2) if w_dim is not None else w  # (B, 1, n) or (n,)
        return torchext_sum(mul_tensors(x, w), dim=-1), 0


class OuterFunction(torch.autograd.Function):
    """out = g·wᵀ (the gradient of mv for X); saves g and w."""

    @staticmethod
    def forward(g: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return _outer_op(g, w)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)
        ctx.save_for_forward(*inputs)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        g, w = ctx.saved_tensors
        grad_g = MvFunction.apply(grad, w) if ctx.needs_input_grad[0] else None
        grad_w = MvFunction.apply(grad.t(), g) if ctx.needs_input_grad[1] else None
        return grad_g, grad_w

    @staticmethod
    def jvp(ctx, g_tangent, w_tangent):
        g, w = ctx.saved_tensors
        out = None
        if g_tangent is not None:
            out = OuterFunction.apply(g_tangent, w)
        if w_tangent is not None:
            term = OuterFunction.apply(g, w_tangent)
            out = term if out is None else out + term
        return out

    @staticmethod
    def vmap(info, in_dims, g, w):
        g_dim, w_dim = in_dims
        g = g.movedim(g_dim, 0).unsqueeze(-1) if g_dim is not None else g.unsqueeze(-1)
        w = w.movedim(w_dim, 0).unsqueeze(-2) if w_dim is not None else w.unsqueeze(0)
        return mul_tensors(g, w), 0


def outer(g: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """`torch.outer` for 1-D tensors of one dtype: what mv's and least_squares' backward use."""
    if torch.compiler.is_compiling():
        return _outer_op(g, w)
    return OuterFunction.apply(g, w)


def check_mv(op: str, x: torch.Tensor, w: torch.Tensor) -> None:
    check_tensor(op, "input", x)
    check_tensor(op, "vec", w, position=2)
    for t in (x, w):
        check_not_complex(op, t)
        check_device_supported(op, t)
    if x.dim() != 2 or w.dim() != 1:
        raise RuntimeError(f"{op}: vector + matrix @ vector expected, got 1, {x.dim()}, {w.dim()}")
    if x.shape[1] != w.shape[0]:
        raise RuntimeError(
            f"{op}: size mismatch, got input ({x.shape[0]}), mat ({x.shape[0]}x{x.shape[1]}), "
            f"vec ({w.shape[0]})"
        )
    if x.dtype != w.dtype:
        raise RuntimeError(
            f"{op}: input tensors must have the same dtype, but got {x.dtype} and {w.dtype}"
        )
    if x.dtype == torch.bool:
        raise NotImplementedError(f"{op}: \"addmv\" not implemented for 'Bool'")
    if x.device != w.device:
        raise RuntimeError(
            f"{op}: Expected all tensors to be on the same device, but found at least two "
            f"devices, {x.device} and {w.device}!"
        )


def mv(input: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
    """Drop-in for `torch.mv`: any strides of the matrix, fp32 accumulation."""
    check_mv("mv", input, vec)
    if torch.compiler.is_compiling():
        return _mv_op(input, vec)
    return MvFunction.apply(input, vec)
