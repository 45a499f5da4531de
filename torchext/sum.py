"""`sum` as autograd Functions over the split-reduction kernel.

The backward of a sum is a broadcast of the incoming gradient: a view, as in torch, so `sum`
saves no tensor. That broadcast is itself a Function (`SumBackwardFunction`) whose backward is a
sum again, so derivatives of every order stay on our kernels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from torchext._reduce import normalize_dims, reduced_shape
from torchext._validation import check_device_supported, check_not_complex, check_tensor
from triton_kernels import reduction as kernels


def dtype_name(dtype: torch.dtype) -> str:
    """c10's name for a dtype, as torch's messages print it: Float, Half, Long, Bool, ..."""
    return torch.empty((), dtype=dtype).type().removeprefix("torch.").removesuffix("Tensor")


@torch.library.custom_op("torchext::sum", mutates_args=())
def _sum_op(
    x: torch.Tensor, dims: list[int], keepdim: bool, out_dtype: torch.dtype
) -> torch.Tensor:
    out = kernels.reduce(x, tuple(dims), out_dtype, cast_dtype=out_dtype)
    return out.view(reduced_shape(x.shape, tuple(dims), keepdim))


@_sum_op.register_fake
def _sum_fake(x, dims, keepdim, out_dtype):
    return x.new_empty(reduced_shape(x.shape, tuple(dims), keepdim), dtype=out_dtype)


def _broadcast_grad(grad, shape, dims, in_dtype: torch.dtype) -> torch.Tensor:
    """grad (reduced, keepdim or not) cast to the input's dtype and expanded to `shape`: a view
    of the small grad, never a materialised full-size tensor."""
    keep_shape = [1 if d in dims else size for d, size in enumerate(shape)]
    return grad.to(in_dtype).reshape(keep_shape).expand(shape)


def _sum_backward(grad, shape, dims: tuple[int, ...], keepdim: bool, in_dtype) -> torch.Tensor:
    """`_broadcast_grad`, differentiable again (a view and cast while torch.compile traces)."""
    if torch.compiler.is_compiling():
        return _broadcast_grad(grad, shape, dims, in_dtype)
    return SumBackwardFunction.apply(grad, shape, dims, keepdim, in_dtype)


class SumFunction(torch.autograd.Function):
    """out = Σ over `dims` of x (an empty `dims` reduces nothing); saves only x's shape."""

    @staticmethod
    def forward(x, dims: tuple[int, ...], keepdim: bool, out_dtype: torch.dtype) -> torch.Tensor:
        return _sum_op(x, list(dims), keepdim, out_dtype)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, dims, keepdim, out_dtype = inputs
        ctx.shape, ctx.dims, ctx.keepdim = x.shape, tuple(dims), keepdim  # the op's dims: a list
        ctx.in_dtype, ctx.out_dtype = x.dtype, out_dtype

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad_x = _sum_backward(grad, ctx.shape, ctx.dims, ctx.keepdim, ctx.in_dtype)
        return grad_x, None, None, None

    @staticmethod
    def jvp(ctx, x_tangent, *_):
        return SumFunction.apply(x_tangent, ctx.dims, ctx.keepdim, ctx.out_dtype)

    @staticmethod
    def vmap(info, in_dims, x, dims, keepdim, out_dtype):
        x = x.movedim(in_dims[0], 0)
        return SumFunction.apply(x, tuple(d + 1 for d in dims), keepdim, out_dtype), 0


class SumBackwardFunction(torch.autograd.Function):
    """x_grad = grad broadcast over `dims` to `shape` (a view); its backward sums over `dims`."""

    @staticmethod
    def forward(grad, shape: torch.Size, dims: tuple[int, ...], keepdim: bool, in_dtype):
        return _broadcast_grad(grad, shape, dims, in_dtype)

    @staticmethod
    def setup_context(ctx, inputs, output):
        grad, shape, dims, keepdim, in_dtype = inputs
        ctx.dims, ctx.keepdim, ctx.grad_dtype = dims, keepdim, grad.dtype
        ctx.args = shape, dims, keepdim, in_dtype

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        return sum_dims(grad_out, ctx.dims, ctx.keepdim, ctx.grad_dtype), *[None] * 4

    @staticmethod
    def jvp(ctx, grad_tangent, *_):
        return SumBackwardFunction.apply(grad_tangent, *ctx.args)

    @staticmethod
    def vmap(info, in_dims, grad, shape, dims, keepdim, in_dtype):
        grad = grad.movedim(in_dims[0], 0)
        batched_dims = tuple(d + 1 for d in dims)
        out = SumBackwardFunction.apply(grad, (grad.shape[0], *shape), batched_dims, keepdim,
                                        in_dtype)  # fmt: skip
        return out, 0


def sum_dims(x, dims: tuple[int, ...], keepdim: bool, out_dtype: torch.dtype) -> torch.Tensor:
    """Σ over `dims` (an empty `dims` reduces nothing), differentiable; the custom op while
    torch.compile traces (Dynamo cannot trace a Function that defines `jvp`)."""
    if torch.compiler.is_compiling():
        return _sum_op(x, list(dims), keepdim, out_dtype)
    return SumFunction.apply(x, dims, keepdim, out_dtype)


# The custom op's autograd (what torch.compile's graphs and direct `torch.ops.torchext` calls use)
# is the Function's own: one formula for both paths.
_sum_op.register_autograd(SumFunction.backward, setup_context=SumFunction.setup_context)


def reduced_dims(op: str, ndim: int, dim) -> tuple[int, ...]:
    """`dim` (None, an int or a sequence of ints) as sorted non-negative dims, checked as torch."""
    if not (dim is None or isinstance(dim, int) or (
        isinstance(dim, Sequence) and all(isinstance(d, int) for d in dim)
    )):
        raise TypeError(f"{op}(): argument 'dim' must be tuple of ints, not {type(dim).__name__}")
    return normalize_dims(op, ndim, dim)


def _out_dtype(input: torch.Tensor, dtype: torch.dtype | None) -> torch.dtype:
    if dtype is not None and not isinstance(dtype, torch.dtype):
        raise TypeError(f"sum(): argument 'dtype' must be torch.dtype, not {type(dtype).__name__}")
    out_dtype = dtype or (input.dtype if input.is_floating_point() else torch.int64)
    if out_dtype.is_complex:
        raise TypeError(f"sum: complex results are not supported (got {out_dtype}); use torch.sum")
    for d in (input.dtype, out_dtype):
        if d not in kernels.REDUCIBLE_DTYPES:
            raise TypeError(f"sum: unsupported dtype {d}")
    if input.requires_grad and torch.is_grad_enabled() and not out_dtype.is_floating_point:
        raise RuntimeError(f"sum: Autograd not support dtype: {dtype_name(out_dtype)}")
    return out_dtype


def sum(
    input: torch.Tensor,
    dim: int | Sequence[int] | None = None,
    keepdim: bool = False,
    *,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Drop-in for `torch.sum`: integers and bool sum to int64; `dtype=` casts each element
    first (inside the kernel, no extra pass); `dim=()` reduces every dim, as in torch."""
    check_tensor("sum", "input", input)
    check_not_complex("sum", input)
    check_device_supported("sum", input)
    out_dtype = _out_dtype(input, dtype)
    return sum_dims(input, reduced_dims("sum", input.dim(), dim), keepdim, out_dtype)
