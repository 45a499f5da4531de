"""`mul` (`a * b`, broadcasting, Python numbers on either side) as autograd Functions.

Two Functions: `MulFunction` for tensor × tensor and `MulScalarFunction` for tensor × Python
number (the number is a kernel argument, never a tensor). The backward of each is again a
product (`grad * b`, `grad * a`, `grad * scalar`) summed back over broadcast dimensions with
torchext.sum, so gradients of every order run on our kernels.

Integer and bool tensors follow torch: int × int stays an integer (computed exactly in int64
and wrapped to the result dtype, as torch wraps), bool × bool is bool, int × float promotes.
"""

from __future__ import annotations

import torch

from torchext._broadcast import Number, broadcast_operands, sum_to_shape
from torchext._validation import result_type
from torchext._vmap import batch_first_aligned
from triton_kernels import mul as kernels

# Launchers as opaque custom ops (see torchext/sin.py): torch.compile sees one node per kernel.


@torch.library.custom_op("torchext::mul", mutates_args=())
def _mul_op(a: torch.Tensor, b: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    return kernels.mul_forward(a, b, out_dtype)


@torch.library.custom_op("torchext::mul_scalar", mutates_args=())
def _mul_scalar_op(
    x: torch.Tensor, scalar: bool | int | float, out_dtype: torch.dtype
) -> torch.Tensor:
    return kernels.mul_scalar_forward(x, scalar, out_dtype)


@_mul_op.register_fake
def _mul_fake(a: torch.Tensor, b: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    return kernels.binary_output(a, b, out_dtype)  # torch's strides, as the kernel's result has


@_mul_scalar_op.register_fake
def _mul_scalar_fake(x: torch.Tensor, scalar, out_dtype: torch.dtype) -> torch.Tensor:
    return kernels.binary_output(x, scalar, out_dtype)


def mul_tensors(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`a * b` for two tensors already checked; what backward formulas and other ops call."""
    out_dtype = result_type(a, b)
    if torch.compiler.is_compiling():
        return _mul_op(a, b, out_dtype)
    return MulFunction.apply(a, b, out_dtype)


def mul_scalar(x: torch.Tensor, scalar: Number, out_dtype: torch.dtype | None = None):
    """`x * scalar` for a checked tensor and Python number, stored as `out_dtype`
    (default: torch's result dtype)."""
    out_dtype = result_type(x, scalar) if out_dtype is None else out_dtype
    if torch.compiler.is_compiling():
        return _mul_scalar_op(x, scalar, out_dtype)
    return MulScalarFunction.apply(x, scalar, out_dtype)


class MulFunction(torch.autograd.Function):
    """out = a·b; saves b only if a needs a gradient and a only if b does (as torch does)."""

    @staticmethod
    def forward(a: torch.Tensor, b: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
        return _mul_op(a, b, out_dtype)

    @staticmethod
    def setup_context(ctx, inputs, output):
        a, b, out_dtype = inputs
        needs_a, needs_b = ctx.needs_input_grad[:2]
        ctx.save_for_backward(a if needs_b else None, b if needs_a else None)
        ctx.save_for_forward(a, b)
        ctx.shapes, ctx.out_dtype = (a.shape, b.shape), out_dtype

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        a, b = ctx.saved_tensors
        a_shape, b_shape = ctx.shapes
        grad_a = sum_to_shape(mul_tensors(grad, b), a_shape) if ctx.needs_input_grad[0] else None
        grad_b = sum_to_shape(mul_tensors(grad, a), b_shape) if ctx.needs_input_grad[1] else None
        return grad_a, grad_b, None

    @staticmethod
    def jvp(ctx, a_tangent, b_tangent, _out_dtype):
        # The product rule; each term already has the broadcast shape and the result dtype.
        a, b = ctx.saved_tensors
        terms = []
        if a_tangent is not None:
            terms.append(MulFunction.apply(a_tangent, b, ctx.out_dtype))
        if b_tangent is not None:
            terms.append(MulFunction.apply(a, b_tangent, ctx.out_dtype))
        if len(terms) == 1:
            return terms[0]
        from torchext.sub import add_tensors  # sub imports this module

        return add_tensors(*terms)

    @staticmethod
    def vmap(info, in_dims, a, b, out_dtype):
        a, b = batch_first_aligned(info.batch_size, in_dims[:2], a, b)
        return MulFunction.apply(a, b, out_dtype), 0


class MulScalarFunction(torch.autograd.Function):
    """out = x·scalar for a Python number; saves no tensor."""

    @staticmethod
    def forward(x: torch.Tensor, scalar: Number, out_dtype: torch.dtype) -> torch.Tensor:
        return _mul_scalar_op(x, scalar, out_dtype)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, ctx.scalar, ctx.out_dtype = inputs

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return mul_scalar(grad, ctx.scalar, grad.dtype), None, None

    @staticmethod
    def jvp(ctx, x_tangent, _scalar, _out_dtype):
        return MulScalarFunction.apply(x_tangent, ctx.scalar, ctx.out_dtype)

    @staticmethod
    def vmap(info, in_dims, x, scalar, out_dtype):
        return MulScalarFunction.apply(x, scalar, out_dtype), in_dims[0]


# The custom ops' autograd (what torch.compile's graphs and direct `torch.ops.torchext` calls use)
# is the Functions' own: one formula for both paths.
_mul_op.register_autograd(MulFunction.backward, setup_context=MulFunction.setup_context)
_mul_scalar_op.register_autograd(
    MulScalarFunction.backward, setup_context=MulScalarFunction.setup_context
)


def mul(input: torch.Tensor | Number, other: torch.Tensor | Number) -> torch.Tensor:
    """Drop-in for `torch.mul`: broadcasting, Python numbers on either side, torch's promotion."""
    input, other, out_dtype = broadcast_operands("mul", input, other)
    if not isinstance(input, torch.Tensor):  # 2 * x: the product commutes
        input, other = other, input
    if not isinstance(other, torch.Tensor):
        return mul_scalar(input, other, out_dtype)
    if torch.compiler.is_compiling():
        return _mul_op(input, other, out_dtype)
    return MulFunction.apply(input, other, out_dtype)
