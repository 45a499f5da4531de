"""sin and cos, and their fused derivatives (`grad * cos(x)` and `-grad * sin(x)`).

Each launcher reads its inputs once and writes one output: the backward kernels fuse the
derivative and the product with the incoming gradient, so backward moves 3 tensors, not 5.
Results have torch's strides (`triton_kernels.layout`); kernels index memory in storage order.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from triton_kernels import layout
from triton_kernels.runtime import (
    ELEMENTWISE_BLOCK,
    ELEMENTWISE_WARPS,
    compute_dtype,
    elementwise_grid,
    kernel_for,
)


@triton.jit
def sin_kernel(x_ptr, out_ptr, n_elements, COMPUTE_DTYPE: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    offsets = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n_elements
    x = tl.load(x_ptr + offsets, mask=mask).to(COMPUTE_DTYPE)
    tl.store(out_ptr + offsets, tl.sin(x).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def cos_kernel(x_ptr, out_ptr, n_elements, COMPUTE_DTYPE: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    offsets = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n_elements
    x = tl.load(x_ptr + offsets, mask=mask).to(COMPUTE_DTYPE)
    tl.store(out_ptr + offsets, tl.cos(x).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def grad_times_cos_kernel(
    grad_ptr, x_ptr, out_ptr, n_elements, COMPUTE_DTYPE: tl.constexpr, BLOCK: tl.constexpr
):
    pid = tl.program_id(0).to(tl.int64)
    offsets = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n_elements
    grad = tl.load(grad_ptr + offsets, mask=mask).to(COMPUTE_DTYPE)
    x = tl.load(x_ptr + offsets, mask=mask).to(COMPUTE_DTYPE)
    tl.store(out_ptr + offsets, (grad * tl.cos(x)).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def neg_grad_times_sin_kernel(
    grad_ptr, x_ptr, out_ptr, n_elements, COMPUTE_DTYPE: tl.constexpr, BLOCK: tl.constexpr
):
    pid = tl.program_id(0).to(tl.int64)
    offsets = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n_elements
    grad = tl.load(grad_ptr + offsets, mask=mask).to(COMPUTE_DTYPE)
    x = tl.load(x_ptr + offsets, mask=mask).to(COMPUTE_DTYPE)
    tl.store(out_ptr + offsets, (-grad * tl.sin(x)).to(out_ptr.dtype.element_ty), mask=mask)


def unary_output(x: torch.Tensor) -> torch.Tensor:
    """An empty result of `sin(x)`/`cos(x)` with torch's strides (the fake kernels' result too)."""
    return layout.empty_output(layout.unary, x, dtype=x.dtype, device=x.device)


def backward_output(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """An empty gradient of sin/cos with the strides of torch's (`grad * x.cos()`)."""
    return layout.empty_output(layout.grad_times_unary, grad, x, dtype=x.dtype, device=x.device)


def _unary(kernel, x: torch.Tensor) -> torch.Tensor:
    out = unary_output(x)
    if x.numel() == 0:
        return out
    kernel_for(kernel, x.device)[elementwise_grid(x.numel())](
        layout.in_layout(x, out), out, x.numel(),
        COMPUTE_DTYPE=compute_dtype(x.dtype), BLOCK=ELEMENTWISE_BLOCK, num_warps=ELEMENTWISE_WARPS,
    )  # fmt: skip
    return out


def _binary(kernel, grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    out = backward_output(grad, x)
    if x.numel() == 0:
        return out
    kernel_for(kernel, x.device)[elementwise_grid(x.numel())](
        layout.in_layout(grad, out), layout.in_layout(x, out), out, x.numel(),
        COMPUTE_DTYPE=compute_dtype(x.dtype), BLOCK=ELEMENTWISE_BLOCK, num_warps=ELEMENTWISE_WARPS,
    )  # fmt: skip
    return out


def sin_forward(x: torch.Tensor) -> torch.Tensor:
    return _unary(sin_kernel, x)


def cos_forward(x: torch.Tensor) -> torch.Tensor:
    return _unary(cos_kernel, x)


def sin_backward(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """`grad * cos(x)`: the gradient of sin, and the tangent of sin in forward mode."""
    return _binary(grad_times_cos_kernel, grad, x)


def cos_backward(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """`-grad * sin(x)`: the gradient of cos, and the tangent of cos in forward mode."""
    return _binary(neg_grad_times_sin_kernel, grad, x)
