"""`sum` as an autograd Function over the split-reduction kernel.

Backward is a broadcast of the incoming gradient (a view, as in torch): `sum` saves nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from torchext._reduce import as_rows, normalize_dims, reduced_shape
from torchext._validation import check_device_supported, check_not_complex, check_tensor
from triton_kernels import reduction as kernels


@torch.library.custom_op("torchext::sum", mutates_args=())
def _sum_op(
    x: torch.Tensor, dims: list[int], keepdim: bool, out_dtype: torch.dtype
) -> torch.Tensor:
    x2d, _ = as_rows(x, tuple(dims))
    out = kernels.sum_forward(x2d, out_dtype)
    return out.reshape(reduced_shape(x.shape, tuple(dims), keepdim))


@_sum_op.register_fake
def _sum_fake(x, dims, keepdim, out_dtype):
    return x.new_empty(reduced_shape(x.shape, tuple(dims), keepdim), dtype=out_dtype)


def _expand_grad(grad: torch.Tensor, shape: torch.Size, dims, keepdim: bool) -> torch.Tensor:
    keep_shape = [1 if d in dims else s for d, s in enumerate(shape)]
    return grad.reshape(keep_shape).expand(shape)


def _sum_op_setup_context(ctx, inputs, output):
    x, dims, keepdim, _ = inputs
    ctx.shape, ctx.dims, ctx.keepdim = x.shape, tuple(dims), keepdim


def _sum_op_backward(ctx, grad):
    # Used under torch.compile only (see torchext/sin.py); the eager path is SumFunction.
    return _expand_grad(grad, ctx.shape, ctx.dims, ctx.keepdim), None, None, None


_sum_op.register_autograd(_sum_op_backward, setup_context=_sum_op_setup_context)


class SumFunction(torch.autograd.Function):
    """out = Σ over `dims` of x; saves no tensor, only the input's shape."""

    @staticmethod
    def forward(x, dims: tuple[int, ...], keepdim: bool, out_dtype: torch.dtype):
        return _sum_op(x, list(dims), keepdim, out_dtype)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, dims, keepdim, out_dtype = inputs
        ctx.shape, ctx.dims, ctx.keepdim, ctx.out_dtype = x.shape, dims, keepdim, out_dtype

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _expand_grad(grad, ctx.shape, ctx.dims, ctx.keepdim), None, None, None

    @staticmethod
    def jvp(ctx, x_tangent, *_):
        return SumFunction.apply(x_tangent, ctx.dims, ctx.keepdim, ctx.out_dtype)

    @staticmethod
    def vmap(info, in_dims, x, dims, keepdim, out_dtype):
        x = x.movedim(in_dims[0], 0)
        return SumFunction.apply(x, tuple(d + 1 for d in dims), keepdim, out_dtype), 0


def sum(
    input: torch.Tensor,
    dim: int | Sequence[int] | None = None,
    keepdim: bool = False,
    *,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Drop-in for `torch.sum`: integers and bool sum to int64, `dtype=` casts first."""
    check_tensor("sum", "input", input)
    check_not_complex("sum", input)
    check_device_supported("sum", input)
    if dtype is not None:
        input = input.to(dtype)
    out_dtype = input.dtype if input.is_floating_point() else torch.int64
    dims = normalize_dims("sum", input.dim(), dim)
    if torch.compiler.is_compiling():
        return _sum_op(input, list(dims), keepdim, out_dtype)
    return SumFunction.apply(input, dims, keepdim, out_dtype)
