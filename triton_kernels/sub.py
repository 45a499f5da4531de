"""Elementwise difference with broadcasting and torch's `alpha`: `out = a - alpha * b`.

`alpha` arrives as a 0-dim tensor of the compute dtype (Triton would pass a Python float as
fp32, which is not exact for fp64 results).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from triton_kernels.runtime import (
    ELEMENTWISE_BLOCK,
    ELEMENTWISE_WARPS,
    binary_operands,
    elementwise_grid,
    kernel_for,
    math_dtype,
)


@triton.jit
def sub_kernel(
    a_ptr,
    b_ptr,
    alpha_ptr,
    out_ptr,
    n_elements,
    A_IS_SCALAR: tl.constexpr,
    B_IS_SCALAR: tl.constexpr,
    COMPUTE_DTYPE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    offsets = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n_elements
    if A_IS_SCALAR:
        a = tl.load(a_ptr).to(COMPUTE_DTYPE)
    else:
        a = tl.load(a_ptr + offsets, mask=mask).to(COMPUTE_DTYPE)
    if B_IS_SCALAR:
        b = tl.load(b_ptr).to(COMPUTE_DTYPE)
    else:
        b = tl.load(b_ptr + offsets, mask=mask).to(COMPUTE_DTYPE)
    alpha = tl.load(alpha_ptr).to(COMPUTE_DTYPE)
    tl.store(out_ptr + offsets, (a - alpha * b).to(out_ptr.dtype.element_ty), mask=mask)


def sub_forward(
    a: torch.Tensor, b: torch.Tensor, alpha: float, out_dtype: torch.dtype
) -> torch.Tensor:
    """`a - alpha * b` broadcast, computed like `mul_forward`, stored as `out_dtype`."""
    a_flat, b_flat, a_scalar, b_scalar, shape = binary_operands(a, b)
    out = torch.empty(shape, dtype=out_dtype, device=a.device)
    if out.numel() == 0:
        return out
    compute = torch.float64 if out_dtype == torch.float64 else torch.float32
    if not out_dtype.is_floating_point:
        compute = torch.int64
    alpha_tensor = torch.full((), alpha, dtype=compute, device=a.device)
    kernel_for(sub_kernel, a.device)[elementwise_grid(out.numel())](
        a_flat, b_flat, alpha_tensor, out, out.numel(),
        A_IS_SCALAR=a_scalar, B_IS_SCALAR=b_scalar, COMPUTE_DTYPE=math_dtype(out_dtype),
        BLOCK=ELEMENTWISE_BLOCK, num_warps=ELEMENTWISE_WARPS,
    )  # fmt: skip
    return out
