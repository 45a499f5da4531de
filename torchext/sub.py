"""`sub` (`a - alpha·b`, broadcasting, Python scalars) as an autograd Function over a Triton kernel.

Nothing is saved for backward: the gradients are `grad` and `-alpha·grad`, summed back over
broadcast dimensions.
"""

from __future__ import annotations

import torch

from torchext._broadcast import sum_to_shape
from torchext._validation import binary_operands, result_type
from torchext._vmap import batch_first_aligned
from torchext.mul import mul
from triton_kernels import sub as kernels


@torch.library.custom_op("torchext::sub", mutates_args=())
def _sub_op(a: torch.Tensor, b: torch.Tensor, alpha: float, out_dtype: torch.dtype) -> torch.Tensor:
    return kernels.sub_forward(a, b, alpha, out_dtype)


@_sub_op.register_fake
def _sub_fake(a: torch.Tensor, b: torch.Tensor, alpha: float, out_dtype: torch.dtype):
    return a.new_empty(torch.broadcast_shapes(a.shape, b.shape), dtype=out_dtype)


def _sub_op_setup_context(ctx, inputs, output):
    a, b, alpha, _ = inputs
    ctx.shapes, ctx.alpha = (a.shape, b.shape), alpha


def _sub_op_backward(ctx, grad):
    # Used under torch.compile only (see torchext/sin.py); the eager path is SubFunction.
    a_shape, b_shape = ctx.shapes
    return sum_to_shape(grad, a_shape), sum_to_shape(mul(grad, -ctx.alpha), b_shape), None, None


_sub_op.register_autograd(_sub_op_backward, setup_context=_sub_op_setup_context)


class SubFunction(torch.autograd.Function):
    """out = a − alpha·b; saves no tensor, only the shapes to reduce broadcast gradients to."""

    @staticmethod
    def forward(a: torch.Tensor, b: torch.Tensor, alpha: float, out_dtype: torch.dtype):
        return _sub_op(a, b, alpha, out_dtype)

    @staticmethod
    def setup_context(ctx, inputs, output):
        a, b, alpha, _ = inputs
        ctx.shapes, ctx.alpha, ctx.out_shape = (a.shape, b.shape), alpha, output.shape

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        a_shape, b_shape = ctx.shapes
        grad_a = sum_to_shape(grad, a_shape) if ctx.needs_input_grad[0] else None
        grad_b = sum_to_shape(mul(grad, -ctx.alpha), b_shape) if ctx.needs_input_grad[1] else None
        return grad_a, grad_b, None, None

    @staticmethod
    def jvp(ctx, a_tangent, b_tangent, _alpha, _dtype):
        if a_tangent is None:
            out = mul(b_tangent, -ctx.alpha)
        elif b_tangent is None:
            out = a_tangent
        else:
            out = SubFunction.apply(
                a_tangent, b_tangent, ctx.alpha, result_type(a_tangent, b_tangent)
            )
        return out.expand(ctx.out_shape)

    @staticmethod
    def vmap(info, in_dims, a, b, alpha, out_dtype):
        a, b = batch_first_aligned(info.batch_size, in_dims[:2], a, b)
        return SubFunction.apply(a, b, alpha, out_dtype), 0


def sub(input: torch.Tensor, other: torch.Tensor | float, *, alpha: float = 1) -> torch.Tensor:
    """Drop-in for `torch.sub`: `input - alpha * other`, broadcasting, torch's type promotion."""
    if any(isinstance(t, bool) or getattr(t, "dtype", None) == torch.bool for t in (input, other)):
        raise RuntimeError(
            "sub: Subtraction, the `-` operator, with a bool tensor is not supported. "
            "If you are trying to invert a mask, use the `~` or `logical_not()` operator instead."
        )
    input, other, out_dtype = binary_operands("sub", input, other)
    if isinstance(alpha, float) and not out_dtype.is_floating_point:
        raise RuntimeError(
            "sub: For integral input tensors, argument alpha must not be a floating point number."
        )
    if torch.compiler.is_compiling():
        return _sub_op(input, other, float(alpha), out_dtype)
    return SubFunction.apply(input, other, float(alpha), out_dtype)
