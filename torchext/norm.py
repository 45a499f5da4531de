"""`norm` (L2) as autograd Functions over the split-reduction kernel (Σx², then sqrt).

Backward is one fused kernel, `grad · x / ‖x‖` (0 where ‖x‖ = 0, as torch). That kernel is a
Function of (grad, x, norm) whose own derivatives are again that kernel, `mul` and `sum`, so
`gradgradcheck` and forward-over-reverse run on our kernels only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from torchext._reduce import reduced_shape
from torchext._validation import KERNEL_DTYPES, check_device_supported, check_tensor
from torchext._vmap import batch_first
from torchext.mul import mul
from torchext.sub import sub
from torchext.sum import SumFunction, dtype_name, reduced_dims
from triton_kernels import norm as kernels


@torch.library.custom_op("torchext::norm", mutates_args=())
def _norm_op(x: torch.Tensor, dims: list[int], keepdim: bool) -> torch.Tensor:
    return kernels.norm_forward(x, tuple(dims)).view(reduced_shape(x.shape, tuple(dims), keepdim))


@_norm_op.register_fake
def _norm_fake(x, dims, keepdim):
    return x.new_empty(reduced_shape(x.shape, tuple(dims), keepdim))


@torch.library.custom_op("torchext::norm_backward", mutates_args=())
def _norm_backward_op(
    grad: torch.Tensor, x: torch.Tensor, norm: torch.Tensor, dims: list[int]
) -> torch.Tensor:
    return kernels.norm_backward(grad, x, norm, tuple(dims))


@_norm_backward_op.register_fake
def _norm_backward_fake(grad, x, norm, dims):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def _keep_shape(shape, dims) -> list[int]:
    return [1 if d in dims else size for d, size in enumerate(shape)]


def _grad_times_x_over_norm(grad, x, norm, dims) -> torch.Tensor:
    """grad · x / norm with grad and norm of x's shape kept as 1 at `dims`."""
    if torch.compiler.is_compiling():
        return _norm_backward_op(grad, x, norm, list(dims))
    return NormBackwardFunction.apply(grad, x, norm, tuple(dims))


def _norm_backward_input_grads(needs, grad_out, grad, x, norm, dims):
    """Gradients of z = grad·x/norm: Σ gz·x / norm, grad·gz / norm, −grad·Σ gz·x / norm²."""
    grad_grad = grad_x = grad_norm = None
    if needs[0] or needs[2]:
        inner = SumFunction.apply(mul(grad_out, x), tuple(dims), True, x.dtype)
        inner_over_norm = _grad_times_x_over_norm(inner, torch.ones_like(norm), norm, dims)
        grad_grad = inner_over_norm if needs[0] else None
        if needs[2]:
            grad_norm = mul(_grad_times_x_over_norm(grad, inner_over_norm, norm, dims), -1)
    if needs[1]:
        grad_x = _grad_times_x_over_norm(grad, grad_out, norm, dims)
    return grad_grad, grad_x, grad_norm


# torch.compile cannot trace an autograd.Function that defines `jvp` (see torchext/sin.py), so
# under compilation `norm` calls the custom ops, with these formulas registered on them.


def _save_norm_inputs(ctx, inputs, output):
    x, dims, _ = inputs
    ctx.save_for_backward(x, output)
    ctx.dims = tuple(dims)


def _norm_op_backward(ctx, grad):
    x, norm = ctx.saved_tensors
    keep = _keep_shape(x.shape, ctx.dims)
    grad_x = _norm_backward_op(grad.reshape(keep), x, norm.reshape(keep), list(ctx.dims))
    return grad_x, None, None


def _save_norm_backward_inputs(ctx, inputs, output):
    *tensors, dims = inputs
    ctx.save_for_backward(*tensors)
    ctx.dims = tuple(dims)


def _norm_backward_op_backward(ctx, grad_out):
    needs = (True, True, True)
    return *_norm_backward_input_grads(needs, grad_out, *ctx.saved_tensors, ctx.dims), None


_norm_op.register_autograd(_norm_op_backward, setup_context=_save_norm_inputs)
_norm_backward_op.register_autograd(
    _norm_backward_op_backward, setup_context=_save_norm_backward_inputs
)


class NormFunction(torch.autograd.Function):
    """out = ‖x‖₂ over `dims` (an empty `dims` gives |x|); saves x and the norm."""

    @staticmethod
    def forward(x: torch.Tensor, dims: tuple[int, ...], keepdim: bool) -> torch.Tensor:
        return _norm_op(x, list(dims), keepdim)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, dims, keepdim = inputs
        ctx.save_for_backward(x, output)
        ctx.save_for_forward(x, output)
        ctx.dims, ctx.keepdim = dims, keepdim

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, norm = ctx.saved_tensors
        keep = _keep_shape(x.shape, ctx.dims)
        grad_x = NormBackwardFunction.apply(grad.reshape(keep), x, norm.reshape(keep), ctx.dims)
        return grad_x, None, None

    @staticmethod
    def jvp(ctx, x_tangent, *_):
        # d‖x‖ = ⟨x, dx⟩ / ‖x‖ over each reduced group
        x, norm = ctx.saved_tensors
        norm = norm.reshape(_keep_shape(x.shape, ctx.dims))
        inner = SumFunction.apply(mul(x, x_tangent), ctx.dims, True, x.dtype)
        out = NormBackwardFunction.apply(inner, torch.ones_like(norm), norm, ctx.dims)
        return out.reshape(reduced_shape(x.shape, ctx.dims, ctx.keepdim))

    @staticmethod
    def vmap(info, in_dims, x, dims, keepdim):
        x = x.movedim(in_dims[0], 0)
        return NormFunction.apply(x, tuple(d + 1 for d in dims), keepdim), 0


class NormBackwardFunction(torch.autograd.Function):
    """z = grad · x / norm (0 where norm = 0), grad and norm of x's shape kept as 1 at `dims`.

    The backward of `NormFunction`, differentiable in all three inputs (norm is the forward's
    output, so double backward also flows through it back into x).
    """

    @staticmethod
    def forward(grad, x, norm, dims: tuple[int, ...]) -> torch.Tensor:
        return _norm_backward_op(grad, x, norm, list(dims))

    @staticmethod
    def setup_context(ctx, inputs, output):
        grad, x, norm, dims = inputs
        ctx.save_for_backward(grad, x, norm)
        ctx.save_for_forward(grad, x, norm)
        ctx.dims = dims

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        needs = ctx.needs_input_grad[:3]
        return *_norm_backward_input_grads(needs, grad_out, *ctx.saved_tensors, ctx.dims), None

    @staticmethod
    def jvp(ctx, grad_tangent, x_tangent, norm_tangent, _):
        grad, x, norm = ctx.saved_tensors
        apply, dims = NormBackwardFunction.apply, ctx.dims
        out = None
        if grad_tangent is not None:
            out = apply(grad_tangent, x, norm, dims)
        if x_tangent is not None:
            term = apply(grad, x_tangent, norm, dims)
            out = term if out is None else out + term
        if norm_tangent is not None:  # ∂z/∂norm = −z / norm
            term = apply(norm_tangent, apply(grad, x, norm, dims), norm, dims)
            out = mul(term, -1) if out is None else sub(out, term)
        return out

    @staticmethod
    def vmap(info, in_dims, grad, x, norm, dims):
        grad, x, norm = batch_first(info.batch_size, in_dims[:3], grad, x, norm)
        return NormBackwardFunction.apply(grad, x, norm, tuple(d + 1 for d in dims)), 0


def _check_p(p, dim) -> None:
    if p not in ("fro", 2, None):
        raise NotImplementedError(
            f"norm: torchext computes the 2-norm only (p=2 or 'fro'), got p={p!r}; use torch.norm"
        )
    if p == "fro" and dim is not None and not isinstance(dim, int) and len(dim) > 2:
        raise RuntimeError(
            f"norm: linalg.matrix_norm: dim must be a 2-tuple. Got {' '.join(map(str, dim))}"
        )


def norm(
    input: torch.Tensor,
    p: str | float | None = "fro",
    dim: int | Sequence[int] | None = None,
    keepdim: bool = False,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Drop-in for `torch.norm` / `Tensor.norm` with p=2 or 'fro': the L2 norm over all
    elements, or over `dim`; other p raise NotImplementedError."""
    check_tensor("norm", "input", input)
    check_device_supported("norm", input)
    _check_p(p, dim)
    if input.is_complex():
        raise TypeError("norm: complex tensors are not supported; use torch.norm")
    if not input.is_floating_point():
        raise RuntimeError(
            "norm: linalg.vector_norm: Expected a floating point or complex tensor as input. "
            f"Got {dtype_name(input.dtype)}"
        )
    dims = reduced_dims("norm", input.dim(), dim)
    if dtype is not None:
        if torch.promote_types(input.dtype, dtype) != dtype:
            raise RuntimeError(
                f"norm: linalg.vector_norm: the dtype of the input ({dtype_name(input.dtype)}) "
                f"should be convertible without narrowing to the specified dtype "
                f"({dtype_name(dtype)})"
            )
        input = input.to(dtype)
    if input.dtype not in KERNEL_DTYPES:
        raise TypeError(f"norm: unsupported dtype {input.dtype}")
    if torch.compiler.is_compiling():
        return _norm_op(input, list(dims), keepdim)
    return NormFunction.apply(input, dims, keepdim)
