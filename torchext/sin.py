"""`sin` and `cos` as autograd Functions over Triton kernels.

The derivative of each is the other (times the incoming gradient), so the four Functions form a
closed family: the backward of every one is another one, which is what makes double backward,
forward-over-reverse and the lesson's "plot sin and its derivative" exercise work on our kernels
only.
"""

from __future__ import annotations

import torch

from torchext._validation import check_tensor, float_input
from torchext._vmap import batch_first
from triton_kernels import sin as kernels

# Each launcher is registered as an opaque custom op so that torch.compile (and any
# TorchDispatchMode, such as our profiler) sees one node per kernel instead of tracing into
# Triton's Python.


@torch.library.custom_op("torchext::sin", mutates_args=())
def _sin_op(x: torch.Tensor) -> torch.Tensor:
    return kernels.sin_forward(x)


@torch.library.custom_op("torchext::cos", mutates_args=())
def _cos_op(x: torch.Tensor) -> torch.Tensor:
    return kernels.cos_forward(x)


@torch.library.custom_op("torchext::sin_backward", mutates_args=())
def _sin_backward_op(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return kernels.sin_backward(grad, x)


@torch.library.custom_op("torchext::cos_backward", mutates_args=())
def _cos_backward_op(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return kernels.cos_backward(grad, x)


@_sin_op.register_fake
@_cos_op.register_fake
def _unary_fake(x: torch.Tensor) -> torch.Tensor:
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


@_sin_backward_op.register_fake
@_cos_backward_op.register_fake
def _binary_fake(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


# torch.compile cannot trace an autograd.Function that defines `jvp`, so under compilation the
# public ops call the custom ops directly, with this autograd formula registered on them.


def _save_inputs(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _sin_op_backward(ctx, grad):
    (x,) = ctx.saved_tensors
    return _sin_backward_op(grad, x)


def _cos_op_backward(ctx, grad):
    (x,) = ctx.saved_tensors
    return _cos_backward_op(grad, x)


def _sin_backward_op_backward(ctx, grad_out):
    grad, x = ctx.saved_tensors
    return _sin_backward_op(grad_out, x), _cos_backward_op(grad_out * grad, x)


def _cos_backward_op_backward(ctx, grad_out):
    grad, x = ctx.saved_tensors
    return _cos_backward_op(grad_out, x), -_sin_backward_op(grad_out * grad, x)


_sin_op.register_autograd(_sin_op_backward, setup_context=_save_inputs)
_cos_op.register_autograd(_cos_op_backward, setup_context=_save_inputs)
_sin_backward_op.register_autograd(_sin_backward_op_backward, setup_context=_save_inputs)
_cos_backward_op.register_autograd(_cos_backward_op_backward, setup_context=_save_inputs)


def _mul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    from torchext.mul import mul  # mul's backward does not need sin: no cycle at runtime

    return mul(a, b)


class SinFunction(torch.autograd.Function):
    """y = sin(x); saves x only (cos x is recomputed in the fused backward kernel)."""

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        return _sin_op(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        (x,) = inputs
        ctx.save_for_backward(x)
        ctx.save_for_forward(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return SinBackwardFunction.apply(grad, x)

    @staticmethod
    def jvp(ctx, x_tangent: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return SinBackwardFunction.apply(x_tangent, x)

    @staticmethod
    def vmap(info, in_dims, x):
        return SinFunction.apply(x), in_dims[0]


class CosFunction(torch.autograd.Function):
    """y = cos(x); saves x only."""

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        return _cos_op(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        (x,) = inputs
        ctx.save_for_backward(x)
        ctx.save_for_forward(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return CosBackwardFunction.apply(grad, x)

    @staticmethod
    def jvp(ctx, x_tangent: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return CosBackwardFunction.apply(x_tangent, x)

    @staticmethod
    def vmap(info, in_dims, x):
        return CosFunction.apply(x), in_dims[0]


class SinBackwardFunction(torch.autograd.Function):
    """z = g·cos(x), the backward of sin; differentiable so that double backward works.

    dz/dg = cos(x) and dz/dx = -g·sin(x), so its own backward is again a pair of fused kernels.
    """

    @staticmethod
    def forward(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return _sin_backward_op(grad, x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        grad, x = inputs
        ctx.save_for_backward(grad, x)
        ctx.save_for_forward(grad, x)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad, x = ctx.saved_tensors
        grad_grad = SinBackwardFunction.apply(grad_out, x) if ctx.needs_input_grad[0] else None
        grad_x = (
            CosBackwardFunction.apply(_mul(grad_out, grad), x) if ctx.needs_input_grad[1] else None
        )
        return grad_grad, grad_x

    @staticmethod
    def jvp(ctx, grad_tangent, x_tangent):
        grad, x = ctx.saved_tensors
        out = None
        if grad_tangent is not None:
            out = SinBackwardFunction.apply(grad_tangent, x)
        if x_tangent is not None:
            term = CosBackwardFunction.apply(_mul(x_tangent, grad), x)
            out = term if out is None else out + term
        return out

    @staticmethod
    def vmap(info, in_dims, grad, x):
        grad, x = batch_first(info.batch_size, in_dims, grad, x)
        return SinBackwardFunction.apply(grad, x), 0


class CosBackwardFunction(torch.autograd.Function):
    """z = -g·sin(x), the backward of cos; dz/dg = -sin(x) and dz/dx = -g·cos(x)."""

    @staticmethod
    def forward(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return _cos_backward_op(grad, x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        grad, x = inputs
        ctx.save_for_backward(grad, x)
        ctx.save_for_forward(grad, x)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad, x = ctx.saved_tensors
        grad_grad = CosBackwardFunction.apply(grad_out, x) if ctx.needs_input_grad[0] else None
        grad_x = (
            -SinBackwardFunction.apply(_mul(grad_out, grad), x) if ctx.needs_input_grad[1] else None
        )
        return grad_grad, grad_x

    @staticmethod
    def jvp(ctx, grad_tangent, x_tangent):
        grad, x = ctx.saved_tensors
        out = None
        if grad_tangent is not None:
            out = CosBackwardFunction.apply(grad_tangent, x)
        if x_tangent is not None:
            term = -SinBackwardFunction.apply(_mul(x_tangent, grad), x)
            out = term if out is None else out + term
        return out

    @staticmethod
    def vmap(info, in_dims, grad, x):
        grad, x = batch_first(info.batch_size, in_dims, grad, x)
        return CosBackwardFunction.apply(grad, x), 0


def sin(input: torch.Tensor) -> torch.Tensor:
    """Drop-in for `torch.sin`: integer inputs promote to the default float dtype, like torch."""
    check_tensor("sin", "input", input)
    input = float_input("sin", input)
    if torch.compiler.is_compiling():
        return _sin_op(input)
    return SinFunction.apply(input)


def cos(input: torch.Tensor) -> torch.Tensor:
    """Drop-in for `torch.cos`."""
    check_tensor("cos", "input", input)
    input = float_input("cos", input)
    if torch.compiler.is_compiling():
        return _cos_op(input)
    return CosFunction.apply(input)
