"""`sub` (`a - alpha·b`, broadcasting, Python numbers on either side) as autograd Functions.

Nothing is saved for backward: the gradients are `grad` and `-alpha·grad`, summed back over
broadcast dimensions with torchext.sum. Like torch, bool operands are refused, and so is a
float `alpha` for integer results; integer results are exact (int64 math, wrapped like torch).
"""

from __future__ import annotations

import numbers

import torch

from torchext._broadcast import Number, broadcast_operands, python_number, sum_to_shape
from torchext._validation import result_type
from torchext._vmap import batch_first_aligned
from torchext.mul import MulScalarFunction, mul_scalar
from triton_kernels import sub as kernels

_Scalar = bool | int | float  # the custom ops' schema type (`Scalar`)


@torch.library.custom_op("torchext::sub", mutates_args=())
def _sub_op(
    a: torch.Tensor, b: torch.Tensor, alpha: _Scalar, out_dtype: torch.dtype
) -> torch.Tensor:
    return kernels.sub_forward(a, b, alpha, out_dtype)


@torch.library.custom_op("torchext::sub_scalar", mutates_args=())
def _sub_scalar_op(
    x: torch.Tensor, scalar: _Scalar, alpha: _Scalar, scalar_first: bool, out_dtype: torch.dtype
) -> torch.Tensor:
    return kernels.sub_scalar_forward(x, scalar, alpha, scalar_first, out_dtype)


@_sub_op.register_fake
def _sub_fake(a: torch.Tensor, b: torch.Tensor, alpha, out_dtype: torch.dtype) -> torch.Tensor:
    return kernels.binary_output(a, b, out_dtype)  # torch's strides, as the kernel's result has


@_sub_scalar_op.register_fake
def _sub_scalar_fake(x: torch.Tensor, scalar, alpha, scalar_first, out_dtype: torch.dtype):
    return kernels.binary_output(x, scalar, out_dtype)


def sub_tensors(
    a: torch.Tensor, b: torch.Tensor, alpha: Number = 1, out_dtype: torch.dtype | None = None
) -> torch.Tensor:
    """`a - alpha * b` for two checked tensors (default dtype: torch's result dtype)."""
    out_dtype = result_type(a, b) if out_dtype is None else out_dtype
    if torch.compiler.is_compiling():
        return _sub_op(a, b, alpha, out_dtype)
    return SubFunction.apply(a, b, alpha, out_dtype)


def add_tensors(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`a + b` on the sub kernel, for the sums of tangent terms in the ops' `jvp` formulas.

    `a - (-1)·b` is exactly `a + b`: negation is exact and `a - (-b)` is IEEE addition (signed
    zeros included), and int64 arithmetic is exact.
    """
    return sub_tensors(a, b, -1)


class SubFunction(torch.autograd.Function):
    """out = a − alpha·b; saves no tensor, only the shapes to reduce broadcast gradients to."""

    @staticmethod
    def forward(a: torch.Tensor, b: torch.Tensor, alpha: Number, out_dtype: torch.dtype):
        return _sub_op(a, b, alpha, out_dtype)

    @staticmethod
    def setup_context(ctx, inputs, output):
        a, b, ctx.alpha, ctx.out_dtype = inputs
        ctx.shapes, ctx.out_shape = (a.shape, b.shape), output.shape

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        """(grad, -alpha·grad), each summed to its input's shape (the scale after the sum)."""
        a_shape, b_shape = ctx.shapes
        grad_a = sum_to_shape(grad, a_shape) if ctx.needs_input_grad[0] else None
        grad_b = None
        if ctx.needs_input_grad[1]:
            grad_b = mul_scalar(sum_to_shape(grad, b_shape), -ctx.alpha)
        return grad_a, grad_b, None, None

    @staticmethod
    def jvp(ctx, a_tangent, b_tangent, _alpha, _out_dtype):
        # A missing tangent is zero; the others are copied (scaled) into fresh result-dtype
        # tensors, so no output tangent aliases an input's.
        if a_tangent is not None and b_tangent is not None:
            return SubFunction.apply(a_tangent, b_tangent, ctx.alpha, ctx.out_dtype)
        if a_tangent is not None:
            tangent = MulScalarFunction.apply(a_tangent, 1, ctx.out_dtype)
        else:
            tangent = MulScalarFunction.apply(b_tangent, -ctx.alpha, ctx.out_dtype)
        return tangent.expand(ctx.out_shape)

    @staticmethod
    def vmap(info, in_dims, a, b, alpha, out_dtype):
        a, b = batch_first_aligned(info.batch_size, in_dims[:2], a, b)
        return SubFunction.apply(a, b, alpha, out_dtype), 0


class SubScalarFunction(torch.autograd.Function):
    """out = x − alpha·scalar, or scalar − alpha·x (`scalar_first`); saves no tensor."""

    @staticmethod
    def forward(x, scalar: Number, alpha: Number, scalar_first: bool, out_dtype: torch.dtype):
        return _sub_scalar_op(x, scalar, alpha, scalar_first, out_dtype)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, _, ctx.alpha, ctx.scalar_first, ctx.out_dtype = inputs

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad_x = mul_scalar(grad, -ctx.alpha, grad.dtype) if ctx.scalar_first else grad
        return grad_x, None, None, None, None

    @staticmethod
    def jvp(ctx, x_tangent, *_):
        scale = -ctx.alpha if ctx.scalar_first else 1  # 1: a copy, not the input's tangent
        return MulScalarFunction.apply(x_tangent, scale, ctx.out_dtype)

    @staticmethod
    def vmap(info, in_dims, x, scalar, alpha, scalar_first, out_dtype):
        return SubScalarFunction.apply(x, scalar, alpha, scalar_first, out_dtype), in_dims[0]


# The custom ops' autograd (what torch.compile's graphs and direct `torch.ops.torchext` calls use)
# is the Functions' own: one formula for both paths.
_sub_op.register_autograd(SubFunction.backward, setup_context=SubFunction.setup_context)
_sub_scalar_op.register_autograd(
    SubScalarFunction.backward, setup_context=SubScalarFunction.setup_context
)


def _check_no_bool(input, other) -> None:
    bools = sum(
        isinstance(t, bool) or (isinstance(t, torch.Tensor) and t.dtype == torch.bool)
        for t in (input, other)
    )
    if bools == 2:
        raise RuntimeError(
            "sub: Subtraction, the `-` operator, with two bool tensors is not supported. "
            "Use the `^` or `logical_xor()` operator instead."
        )
    if bools == 1:
        raise RuntimeError(
            "sub: Subtraction, the `-` operator, with a bool tensor is not supported. "
            "If you are trying to invert a mask, use the `~` or `logical_not()` operator instead."
        )


def _checked_alpha(alpha, out_dtype: torch.dtype) -> Number:
    if isinstance(alpha, bool):
        raise RuntimeError("sub: Boolean alpha only supported for Boolean results.")
    if isinstance(alpha, numbers.Complex) and not isinstance(alpha, numbers.Real):
        raise RuntimeError(
            "sub: For non-complex input tensors, argument alpha must not be a complex number."
        )
    number = python_number("sub", alpha)
    if number is None:
        raise TypeError(f"sub(): argument 'alpha' must be Number, not {type(alpha).__name__}")
    if isinstance(number, float) and not out_dtype.is_floating_point:
        raise RuntimeError(
            "sub: For integral input tensors, argument alpha must not be a floating point number."
        )
    return number


def sub(
    input: torch.Tensor | Number, other: torch.Tensor | Number, *, alpha: Number = 1
) -> torch.Tensor:
    """Drop-in for `torch.sub`: `input - alpha * other`, broadcasting, Python numbers on either
    side, torch's type promotion and its errors for bool operands and a float `alpha` on ints."""
    input, other, out_dtype = broadcast_operands("sub", input, other)
    _check_no_bool(input, other)
    alpha = _checked_alpha(alpha, out_dtype)
    if isinstance(input, torch.Tensor) and isinstance(other, torch.Tensor):
        return sub_tensors(input, other, alpha, out_dtype)
    if isinstance(other, torch.Tensor):  # 2 - x
        x, scalar, scalar_first = other, input, True
    else:
        x, scalar, scalar_first = input, other, False
    if torch.compiler.is_compiling():
        return _sub_scalar_op(x, scalar, alpha, scalar_first, out_dtype)
    return SubScalarFunction.apply(x, scalar, alpha, scalar_first, out_dtype)
