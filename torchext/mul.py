"""`mul` (`a * b`, broadcasting, Python scalars) as an autograd Function over a Triton kernel.

Its backward is again a product (`grad * b`, `grad * a`) summed back over broadcast dimensions,
so gradients of every order run on the same kernel.
"""

from __future__ import annotations

import torch

from torchext._broadcast import sum_to_shape
from torchext._validation import binary_operands, result_type
from torchext._vmap import batch_first_aligned
from triton_kernels import mul as kernels


@torch.library.custom_op("torchext::mul", mutates_args=())
def _mul_op(a: torch.Tensor, b: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    return kernels.mul_forward(a, b, out_dtype)


@_mul_op.register_fake
def _mul_fake(a: torch.Tensor, b: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    return a.new_empty(torch.broadcast_shapes(a.shape, b.shape), dtype=out_dtype)


def _mul_op_setup_context(ctx, inputs, output):
    a, b, _ = inputs
    ctx.save_for_backward(a, b)


def _mul_op_backward(ctx, grad):
    # Used under torch.compile only (see torchext/sin.py); the eager path is MulFunction.
    a, b = ctx.saved_tensors
    grad_a = sum_to_shape(_mul_op(grad, b, result_type(grad, b)), a.shape)
    grad_b = sum_to_shape(_mul_op(grad, a, result_type(grad, a)), b.shape)
    return grad_a, grad_b, None


_mul_op.register_autograd(_mul_op_backward, setup_context=_mul_op_setup_context)


def mul_tensors(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`a * b` for two tensors already checked; what backward and other ops call."""
    return MulFunction.apply(a, b, result_type(a, b))


class MulFunction(torch.autograd.Function):
    """out = a·b; saves b only if a needs a gradient and a only if b does (as torch does)."""

    @staticmethod
    def forward(a: torch.Tensor, b: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
        return _mul_op(a, b, out_dtype)

    @staticmethod
    def setup_context(ctx, inputs, output):
        a, b, _ = inputs
        needs_a, needs_b = ctx.needs_input_grad[:2]
        ctx.save_for_backward(a if needs_b else None, b if needs_a else None)
        ctx.save_for_forward(a, b)
        ctx.shapes = (a.shape, b.shape)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        a, b = ctx.saved_tensors
        a_shape, b_shape = ctx.shapes
        grad_a = sum_to_shape(mul_tensors(grad, b), a_shape) if ctx.needs_input_grad[0] else None
        grad_b = sum_to_shape(mul_tensors(grad, a), b_shape) if ctx.needs_input_grad[1] else None
        return grad_a, grad_b, None

    @staticmethod
    def jvp(ctx, a_tangent, b_tangent, _):
        a, b = ctx.saved_tensors
        out = None
        if a_tangent is not None:
            out = mul_tensors(a_tangent, b)
        if b_tangent is not None:
            term = mul_tensors(a, b_tangent)
            out = term if out is None else out + term
        return out.expand(torch.broadcast_shapes(a.shape, b.shape))

    @staticmethod
    def vmap(info, in_dims, a, b, out_dtype):
        a, b = batch_first_aligned(info.batch_size, in_dims[:2], a, b)
        return MulFunction.apply(a, b, out_dtype), 0


def mul(input: torch.Tensor, other: torch.Tensor | float) -> torch.Tensor:
    """Drop-in for `torch.mul`: broadcasting, Python numbers, torch's type promotion."""
    input, other, out_dtype = binary_operands("mul", input, other)
    if torch.compiler.is_compiling():
        return _mul_op(input, other, out_dtype)
    return MulFunction.apply(input, other, out_dtype)
