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
from torchext.mul import mul_scalar, mul_tensors
from torchext.sub import add_tensors, sub_tensors
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
    return kernels.unary_output(x)  # torch's strides, as the kernel's result has


@_sin_backward_op.register_fake
@_cos_backward_op.register_fake
def _binary_fake(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return kernels.backward_output(grad, x)


def _sin_backward(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """grad·cos(x), differentiable again (a custom op while torch.compile traces: see `sin`)."""
    if torch.compiler.is_compiling():
        return _sin_backward_op(grad, x)
    return SinBackwardFunction.apply(grad, x)


def _cos_backward(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """-grad·sin(x), differentiable again."""
    if torch.compiler.is_compiling():
        return _cos_backward_op(grad, x)
    return CosBackwardFunction.apply(grad, x)


def _negated(t: torch.Tensor) -> torch.Tensor:
    return mul_scalar(t, -1)


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
        return _sin_backward(grad, x)

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
        return _cos_backward(grad, x)

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
        grad_grad = _sin_backward(grad_out, x) if ctx.needs_input_grad[0] else None
        grad_x = _cos_backward(mul_tensors(grad_out, grad), x) if ctx.needs_input_grad[1] else None
        return grad_grad, grad_x

    @staticmethod
    def jvp(ctx, grad_tangent, x_tangent):
        grad, x = ctx.saved_tensors
        terms = []
        if grad_tangent is not None:
            terms.append(SinBackwardFunction.apply(grad_tangent, x))
        if x_tangent is not None:
            terms.append(CosBackwardFunction.apply(mul_tensors(x_tangent, grad), x))
        return terms[0] if len(terms) == 1 else add_tensors(*terms)

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
        grad_grad = _cos_backward(grad_out, x) if ctx.needs_input_grad[0] else None
        grad_x = None
        if ctx.needs_input_grad[1]:
            grad_x = _sin_backward(_negated(mul_tensors(grad_out, grad)), x)
        return grad_grad, grad_x

    @staticmethod
    def jvp(ctx, grad_tangent, x_tangent):
        grad, x = ctx.saved_tensors
        x_term = None
        if x_tangent is not None:
            x_term = SinBackwardFunction.apply(mul_tensors(x_tangent, grad), x)
        if grad_tangent is None:
            return _negated(x_term)
        grad_term = CosBackwardFunction.apply(grad_tangent, x)
        return grad_term if x_term is None else sub_tensors(grad_term, x_term)

    @staticmethod
    def vmap(info, in_dims, grad, x):
        grad, x = batch_first(info.batch_size, in_dims, grad, x)
        return CosBackwardFunction.apply(grad, x), 0


# The custom ops' autograd (what torch.compile's graphs and direct `torch.ops.torchext` calls use)
# is the Functions' own: one formula for both paths. (torch.compile cannot trace an
# autograd.Function that defines `jvp`, so while it traces, the public ops call the custom ops.)
_sin_op.register_autograd(SinFunction.backward, setup_context=SinFunction.setup_context)
_cos_op.register_autograd(CosFunction.backward, setup_context=CosFunction.setup_context)
_sin_backward_op.register_autograd(
    SinBackwardFunction.backward, setup_context=SinBackwardFunction.setup_context
)
_cos_backward_op.register_autograd(
    CosBackwardFunction.backward, setup_context=CosBackwardFunction.setup_context
)


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
