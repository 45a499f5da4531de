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
from torchext.mul import mul_scalar, mul_tensors
from torchext.sub import add_tensors, sub_tensors
from torchext.sum import SumFunction, dtype_name, reduced_dims, sum_dims
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
    """grad · x / norm with grad and norm of x's shape kept as 1 at `dims`, differentiable (the
    custom op while torch.compile traces: Dynamo cannot trace a Function that defines `jvp`)."""
    if torch.compiler.is_compiling():
        return _norm_backward_op(grad, x, norm, list(dims))
    return NormBackwardFunction.apply(grad, x, norm, tuple(dims))


def _over(numerator, norm, dims) -> torch.Tensor:
    """numerator / norm for two tensors of one shape (0 where norm = 0), on the same kernel."""
    return _grad_times_x_over_norm(numerator, torch.ones_like(norm), norm, dims)


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
        ctx.dims, ctx.keepdim = tuple(dims), keepdim  # the op's dims: a list

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, norm = ctx.saved_tensors
        keep = _keep_shape(x.shape, ctx.dims)
        grad_x = _grad_times_x_over_norm(grad.reshape(keep), x, norm.reshape(keep), ctx.dims)
        return grad_x, None, None

    @staticmethod
    def jvp(ctx, x_tangent, *_):
        # d‖x‖ = ⟨x, dx⟩ / ‖x‖ over each reduced group
        x, norm = ctx.saved_tensors
        norm = norm.reshape(_keep_shape(x.shape, ctx.dims))
        inner = SumFunction.apply(mul_tensors(x, x_tangent), ctx.dims, True, x.dtype)
        out = _over(inner, norm, ctx.dims)
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
        ctx.dims = tuple(dims)  # the op's dims: a list

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        """Gradients of z = grad·x/norm: Σ gz·x / norm, grad·gz / norm, −grad·Σ gz·x / norm²."""
        grad, x, norm = ctx.saved_tensors
        needs, dims = ctx.needs_input_grad, ctx.dims
        grad_grad = grad_x = grad_norm = None
        if needs[0] or needs[2]:
            inner_over_norm = _over(sum_dims(mul_tensors(grad_out, x), dims, True, x.dtype), norm,
                                    dims)  # fmt: skip
            grad_grad = inner_over_norm if needs[0] else None
            if needs[2]:
                grad_norm = _grad_times_x_over_norm(grad, inner_over_norm, norm, dims)
                grad_norm = mul_scalar(grad_norm, -1)
        if needs[1]:
            grad_x = _grad_times_x_over_norm(grad, grad_out, norm, dims)
        return grad_grad, grad_x, grad_norm, None

    @staticmethod
    def jvp(ctx, grad_tangent, x_tangent, norm_tangent, _):
        grad, x, norm = ctx.saved_tensors
        apply, dims = NormBackwardFunction.apply, ctx.dims
        terms = []
        if grad_tangent is not None:
            terms.append(apply(grad_tangent, x, norm, dims))
        if x_tangent is not None:
            terms.append(apply(grad, x_tangent, norm, dims))
        out = None if not terms else terms[0] if len(terms) == 1 else add_tensors(*terms)
        if norm_tangent is not None:  # ∂z/∂norm = −z / norm
            term = apply(norm_tangent, apply(grad, x, norm, dims), norm, dims)
            out = mul_scalar(term, -1) if out is None else sub_tensors(out, term)
        return out

    @staticmethod
    def vmap(info, in_dims, grad, x, norm, dims):
        grad, x, norm = batch_first(info.batch_size, in_dims[:3], grad, x, norm)
        return NormBackwardFunction.apply(grad, x, norm, tuple(d + 1 for d in dims)), 0


# The custom ops' autograd (what torch.compile's graphs and direct `torch.ops.torchext` calls use)
# is the Functions' own: one formula for both paths.
_norm_op.register_autograd(NormFunction.backward, setup_context=NormFunction.setup_context)
_norm_backward_op.register_autograd(
    NormBackwardFunction.backward, setup_context=NormBackwardFunction.setup_context
)


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
