"""`mv` (matrix @ vector) and its gradient's outer product, as autograd Functions over kernels.

The two form a closed family: the backward of `mv` is an `outer` (for X) and an `mv` on the
transposed view of X (for w); the backward of `outer` is two `mv`s. So every derivative order
runs on the same two kernels. Both Functions accept one or more leading batch dimensions
(`X` of shape (*batch, m, n)), which is what their `vmap` rules call: no loop over the batch.
"""

from __future__ import annotations

import torch

from torchext._validation import (
    KERNEL_DTYPES,
    check_device_supported,
    check_not_complex,
    check_same_device,
    check_tensor,
)
from torchext._vmap import batch_first
from torchext.sub import add_tensors
from triton_kernels import mv as kernels


@torch.library.custom_op("torchext::mv", mutates_args=())
def _mv_op(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return kernels.mv_forward(x, w)


@torch.library.custom_op("torchext::outer", mutates_args=())
def _outer_op(g: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return kernels.outer_forward(g, w)


@_mv_op.register_fake
def _mv_fake(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return x.new_empty(x.shape[:-1])


@_outer_op.register_fake
def _outer_fake(g: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return g.new_empty((*g.shape, w.shape[-1]))


def _save_for_other_input(ctx, inputs, output):
    a, b = inputs
    ctx.save_for_backward(a if ctx.needs_input_grad[1] else None,
                          b if ctx.needs_input_grad[0] else None)  # fmt: skip
    ctx.save_for_forward(a, b)


def _sum_of_terms(first: torch.Tensor | None, second: torch.Tensor | None) -> torch.Tensor:
    """The sum of a product rule's terms (one may be missing), on torchext's kernels."""
    if first is None or second is None:
        return second if first is None else first
    return add_tensors(first, second)


class MvFunction(torch.autograd.Function):
    """out = X·w for X (*batch, m, n), w (*batch, n); saves w only if X needs a gradient and X
    only if w does (as torch does)."""

    @staticmethod
    def forward(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return _mv_op(x, w)

    setup_context = staticmethod(_save_for_other_input)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, w = ctx.saved_tensors
        grad_x = outer(grad, w) if ctx.needs_input_grad[0] else None
        grad_w = matvec(x.mT, grad) if ctx.needs_input_grad[1] else None  # Xᵀg: a strided view
        return grad_x, grad_w

    @staticmethod
    def jvp(ctx, x_tangent, w_tangent):
        x, w = ctx.saved_tensors
        x_term = MvFunction.apply(x_tangent, w) if x_tangent is not None else None
        w_term = MvFunction.apply(x, w_tangent) if w_tangent is not None else None
        return _sum_of_terms(x_term, w_term)

    @staticmethod
    def vmap(info, in_dims, x, w):
        # The unbatched operand is expanded to the batch (a stride-0 view, never copied).
        return MvFunction.apply(*batch_first(info.batch_size, in_dims, x, w)), 0


class OuterFunction(torch.autograd.Function):
    """out = g·wᵀ for g (*batch, m), w (*batch, n): the gradient of `mv` for X."""

    @staticmethod
    def forward(g: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return _outer_op(g, w)

    setup_context = staticmethod(_save_for_other_input)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        g, w = ctx.saved_tensors
        grad_g = matvec(grad, w) if ctx.needs_input_grad[0] else None
        grad_w = matvec(grad.mT, g) if ctx.needs_input_grad[1] else None
        return grad_g, grad_w

    @staticmethod
    def jvp(ctx, g_tangent, w_tangent):
        g, w = ctx.saved_tensors
        g_term = OuterFunction.apply(g_tangent, w) if g_tangent is not None else None
        w_term = OuterFunction.apply(g, w_tangent) if w_tangent is not None else None
        return _sum_of_terms(g_term, w_term)

    @staticmethod
    def vmap(info, in_dims, g, w):
        return OuterFunction.apply(*batch_first(info.batch_size, in_dims, g, w)), 0


def matvec(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Differentiable X·w for already-checked operands with any leading batch dimensions."""
    if torch.compiler.is_compiling():
        return _mv_op(x, w)
    return MvFunction.apply(x, w)


def outer(g: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Differentiable g·wᵀ (batched like `matvec`): the X-gradient of mv and least_squares."""
    if torch.compiler.is_compiling():
        return _outer_op(g, w)
    return OuterFunction.apply(g, w)


# The custom ops' autograd (what torch.compile's graphs and direct `torch.ops.torchext` calls use)
# is the Functions' own: one formula for both paths.
_mv_op.register_autograd(MvFunction.backward, setup_context=MvFunction.setup_context)
_outer_op.register_autograd(OuterFunction.backward, setup_context=OuterFunction.setup_context)


def _check_mv(input: torch.Tensor, vec: torch.Tensor) -> None:
    """torch.mv's checks in torch's order: types, ndim, sizes, dtypes, devices."""
    check_tensor("mv", "input", input)
    check_tensor("mv", "vec", vec, position=2)
    for t in (input, vec):
        check_not_complex("mv", t)
        check_device_supported("mv", t)
    if input.dim() != 2 or vec.dim() != 1:
        raise RuntimeError(
            f"mv: vector + matrix @ vector expected, got 1, {input.dim()}, {vec.dim()}"
        )
    if input.shape[1] != vec.shape[0]:
        raise RuntimeError(
            f"mv: size mismatch, got input ({input.shape[0]}), mat "
            f"({input.shape[0]}x{input.shape[1]}), vec ({vec.shape[0]})"
        )
    if input.dtype != vec.dtype:
        raise RuntimeError(
            f"mv: input tensors must have the same dtype, but got input {input.dtype} and "
            f"vec {vec.dtype}"
        )
    if input.dtype == torch.bool:
        raise NotImplementedError("mv: \"addmv\" not implemented for 'Bool'")
    if input.is_floating_point() and input.dtype not in KERNEL_DTYPES:  # float8 and friends
        raise TypeError(f"mv: unsupported dtype {input.dtype}")
    check_same_device("mv", input, vec)


def mv(input: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
    """Drop-in for `torch.mv`: any strides of the matrix (read in place), fp32 accumulation
    (fp64 for fp64, exact int64 for integer tensors, as torch's CPU kernel allows them)."""
    _check_mv(input, vec)
    return matvec(input, vec)
