"""`norm` (L2) as an autograd Function over the split-reduction kernel (sum of squares, sqrt).

Backward is `grad · x / ‖x‖` (zero where ‖x‖ = 0, as torch), built from `mul` so that it is
differentiable again; it saves x and the 0-dim/row-sized norm.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from torchext._reduce import as_rows, normalize_dims, reduced_shape
from torchext._validation import check_device_supported, check_tensor
from torchext.mul import mul_tensors
from torchext.sum import sum as torchext_sum
from triton_kernels import reduction as kernels


@torch.library.custom_op("torchext::norm", mutates_args=())
def _norm_op(x: torch.Tensor, dims: list[int], keepdim: bool) -> torch.Tensor:
    x2d, _ = as_rows(x, tuple(dims))
    return kernels.norm_forward(x2d).reshape(reduced_shape(x.shape, tuple(dims), keepdim))


@_norm_op.register_fake
def _norm_fake(x, dims, keepdim):
    return x.new_empty(reduced_shape(x.shape, tuple(dims), keepdim))


def _grad_scale(grad: torch.Tensor, norm: torch.Tensor, shape, dims) -> torch.Tensor:
    """grad / norm shaped to broadcast against x, with 0 where the norm is 0."""
    keep = [1 if d in dims else s for d, s in enumerate(shape)]
    grad, norm = grad.reshape(keep), norm.reshape(keep)
    return torch.where(norm == 0, torch.zeros_like(grad), grad / norm)


def _norm_op_setup_context(ctx, inputs, output):
    x, dims, keepdim = inputs
    ctx.save_for_backward(x, output)
    ctx.dims = tuple(dims)


def _norm_op_backward(ctx, grad):
    # Used under torch.compile only (see torchext/sin.py); the eager path is NormFunction.
    x, norm = ctx.saved_tensors
    return mul_tensors(x, _grad_scale(grad, norm, x.shape, ctx.dims)), None, None


_norm_op.register_autograd(_norm_op_backward, setup_context=_norm_op_setup_context)


class NormFunction(torch.autograd.Function):
    """out = ‖x‖₂ over `dims`; saves x and the norm."""

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
        return mul_tensors(x, _grad_scale(grad, norm, x.shape, ctx.dims)), None, None

    @staticmethod
    def jvp(ctx, x_tangent, *_):
        x, norm = ctx.saved_tensors
        inner = torchext_sum(mul_tensors(x, x_tangent), dim=ctx.dims, keepdim=ctx.keepdim)
        return torch.where(norm == 0, torch.zeros_like(inner), inner / norm)

    @staticmethod
    def vmap(info, in_dims, x, dims, keepdim):
        x = x.movedim(in_dims[0], 0)
        return NormFunction.apply(x, tuple(d + 1 for d in dims), keepdim), 0


def norm(
    input: torch.Tensor,
    p: str | float | None = "fro",
    dim: int | Sequence[int] | None = None,
    keepdim: bool = False,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Drop-in for `torch.norm` with p=2/'fro': the L2 norm over all elements or over `dim`."""
    check_tensor("norm", "input", input)
    check_device_supported("norm", input)
    if p not in ("fro", 2, 2.0, None):
        raise NotImplementedError(f"norm: torchext computes the 2-norm only, got p={p!r}")
    if dtype is not None:
        input = input.to(dtype)
    if input.is_complex():
        raise TypeError("norm: complex tensors are not supported; use torch.norm")
    if not input.is_floating_point():
        raise RuntimeError(
            f"norm: Expected a floating point or complex tensor as input. Got {input.dtype}"
        )
    dims = normalize_dims("norm", input.dim(), dim)
    if torch.compiler.is_compiling():
        return _norm_op(input, list(dims), keepdim)
    return NormFunction.apply(input, dims, keepdim)
