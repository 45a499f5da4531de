"""`dot` as an autograd Function over the split-reduction kernel (Σ x·y).

Backward is `grad · y` and `grad · x`: products with a 0-dim gradient, which the `mul` kernel
reads through its pointer (no host sync), and differentiable again. Internally the Function
reduces the last dim of two same-shaped tensors, so a vmapped `dot` is one batched kernel.
"""

from __future__ import annotations

import torch

from torchext._validation import check_device_supported, check_same_device, check_tensor
from torchext._vmap import batch_first
from torchext.mul import mul_tensors
from torchext.sub import add_tensors
from torchext.sum import dtype_name
from triton_kernels import reduction as kernels


@torch.library.custom_op("torchext::dot", mutates_args=())
def _dot_op(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return kernels.dot_forward(x, y)


@_dot_op.register_fake
def _dot_fake(x, y):
    return x.new_empty(x.shape[:-1])


class DotFunction(torch.autograd.Function):
    """out[...] = Σ_k x[..., k]·y[..., k]; saves y if x needs a gradient and x if y does."""

    @staticmethod
    def forward(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return _dot_op(x, y)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, y = inputs
        ctx.save_for_backward(x if ctx.needs_input_grad[1] else None,
                              y if ctx.needs_input_grad[0] else None)  # fmt: skip
        ctx.save_for_forward(x, y)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, y = ctx.saved_tensors
        grad = grad.unsqueeze(-1)  # one element for a plain dot: read as a scalar by the kernel
        grad_x = mul_tensors(y, grad) if ctx.needs_input_grad[0] else None
        grad_y = mul_tensors(x, grad) if ctx.needs_input_grad[1] else None
        return grad_x, grad_y

    @staticmethod
    def jvp(ctx, x_tangent, y_tangent):
        x, y = ctx.saved_tensors
        terms = []
        if x_tangent is not None:
            terms.append(DotFunction.apply(x_tangent, y))
        if y_tangent is not None:
            terms.append(DotFunction.apply(x, y_tangent))
        return terms[0] if len(terms) == 1 else add_tensors(*terms)

    @staticmethod
    def vmap(info, in_dims, x, y):
        x, y = batch_first(info.batch_size, in_dims, x, y)
        return DotFunction.apply(x, y), 0


# The custom op's autograd (what torch.compile's graphs and direct `torch.ops.torchext` calls use)
# is the Function's own: one formula for both paths.
_dot_op.register_autograd(DotFunction.backward, setup_context=DotFunction.setup_context)


def _check_dot(x: torch.Tensor, y: torch.Tensor) -> None:
    """torch's checks, in torch's order: ndim, dtype, length, then kernel support."""
    if x.dim() != 1 or y.dim() != 1:
        raise RuntimeError(f"dot: 1D tensors expected, but got {x.dim()}D and {y.dim()}D tensors")
    if x.dtype != y.dtype:
        raise RuntimeError(
            "dot : expected both vectors to have same dtype, but found "
            f"{dtype_name(x.dtype)} and {dtype_name(y.dtype)}"
        )
    if x.numel() != y.numel():
        raise RuntimeError(
            f"dot: inconsistent tensor size, expected tensor [{x.numel()}] and src "
            f"[{y.numel()}] to have the same number of elements, but got {x.numel()} and "
            f"{y.numel()} elements respectively"
        )
    if x.is_complex():
        raise TypeError("dot: complex tensors are not supported; use torch.dot")
    if x.dtype not in kernels.REDUCIBLE_DTYPES or x.dtype == torch.bool:
        raise NotImplementedError(f'"dot" not implemented for \'{dtype_name(x.dtype)}\'')


def dot(input: torch.Tensor, tensor: torch.Tensor) -> torch.Tensor:
    """Drop-in for `torch.dot`: 1-D tensors of one dtype and length; floats accumulate in fp32
    (fp64 for fp64), integers in int64 (wrapping to their dtype, as in torch)."""
    check_tensor("dot", "input", input)
    check_tensor("dot", "tensor", tensor, position=2)
    for t in (input, tensor):
        check_device_supported("dot", t)
    check_same_device("dot", input, tensor)
    _check_dot(input, tensor)
    if torch.compiler.is_compiling():
        return _dot_op(input, tensor)
    return DotFunction.apply(input, tensor)
