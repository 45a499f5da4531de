"""`dot` as an autograd Function over the split-reduction kernel (sum of products).

Backward is `grad · y` and `grad · x`: products with a 0-dim gradient, read by the `mul` kernel
through its pointer (no host sync), and differentiable again.
"""

from __future__ import annotations

import torch

from torchext._validation import check_device_supported, check_not_complex, check_tensor
from torchext.mul import mul_tensors
from torchext.sum import sum as torchext_sum
from triton_kernels import reduction as kernels


@torch.library.custom_op("torchext::dot", mutates_args=())
def _dot_op(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return kernels.dot_forward(x.view(1, -1), y.view(1, -1), x.dtype).reshape(())


@_dot_op.register_fake
def _dot_fake(x, y):
    return x.new_empty(())


def _dot_op_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _dot_op_backward(ctx, grad):
    # Used under torch.compile only (see torchext/sin.py); the eager path is DotFunction.
    x, y = ctx.saved_tensors
    return mul_tensors(y, grad), mul_tensors(x, grad)


_dot_op.register_autograd(_dot_op_backward, setup_context=_dot_op_setup_context)


class DotFunction(torch.autograd.Function):
    """out = ⟨x, y⟩; saves y if x needs a gradient and x if y does."""

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
        grad_x = mul_tensors(y, grad) if ctx.needs_input_grad[0] else None
        grad_y = mul_tensors(x, grad) if ctx.needs_input_grad[1] else None
        return grad_x, grad_y

    @staticmethod
    def jvp(ctx, x_tangent, y_tangent):
        x, y = ctx.saved_tensors
        out = None
        if x_tangent is not None:
            out = DotFunction.apply(x_tangent, y)
        if y_tangent is not None:
            term = DotFunction.apply(x, y_tangent)
            out = term if out is None else out + term
        return out

    @staticmethod
    def vmap(info, in_dims, x, y):
        # A batch of dot products is a row-wise sum of products.
        x_dim, y_dim = in_dims
        x = x.movedim(x_dim, 0) if x_dim is not None else x
        y = y.movedim(y_dim, 0) if y_dim is not None else y
        return torchext_sum(mul_tensors(x, y), dim=-1), 0


def _check_dot(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.dim() != 1 or y.dim() != 1:
        raise RuntimeError(f"dot: 1D tensors expected, but got {x.dim()}D and {y.dim()}D tensors")
    if x.numel() != y.numel():
        raise RuntimeError(
            f"dot: inconsistent tensor size, expected tensor [{x.numel()}] and src "
            f"[{y.numel()}] to have the same number of elements, but got {x.numel()} and "
            f"{y.numel()} elements respectively"
        )
    if x.dtype != y.dtype:
        raise RuntimeError(
            f"dot : expected both vectors to have same dtype, but found "
            f"{_dtype_name(x.dtype)} and {_dtype_name(y.dtype)}"
        )
    if x.device != y.device:
        raise RuntimeError(
            f"dot: Expected all tensors to be on the same device, but found at least two "
            f"devices, {x.device} and {y.device}!"
        )


def _dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "Float", torch.float64: "Double", torch.float16: "Half",
            torch.bfloat16: "BFloat16", torch.int64: "Long", torch.int32: "Int"}.get(
        dtype, str(dtype).removeprefix("torch."))  # fmt: skip


def dot(input: torch.Tensor, tensor: torch.Tensor) -> torch.Tensor:
    """Drop-in for `torch.dot`: 1-D tensors of one dtype and length, accumulated in fp32."""
    check_tensor("dot", "input", input)
    check_tensor("dot", "tensor", tensor, position=2)
    for t in (input, tensor):
        check_not_complex("dot", t)
        check_device_supported("dot", t)
    _check_dot(input, tensor)
    if input.dtype == torch.bool:
        raise RuntimeError("\"dot\" not implemented for 'Bool'")
    if torch.compiler.is_compiling():
        return _dot_op(input, tensor)
    return DotFunction.apply(input, tensor)
