"""Elementwise product with broadcasting: `out = a * b`.

A one-element operand (a Python scalar wrapped as a 0-dim tensor, or a 0-dim/one-element tensor)
is read once per program instead of being expanded in memory, so `x * 2` moves 2 tensors, not 3.
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
def mul_kernel(
    a_ptr,
    b_ptr,
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
    tl.store(out_ptr + offsets, (a * b).to(out_ptr.dtype.element_ty), mask=mask)


def mul_forward(a: torch.Tensor, b: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """`a * b` broadcast; math in fp32 (fp64 for fp64, int64 for ints), stored as `out_dtype`."""
    a_flat, b_flat, a_scalar, b_scalar, shape = binary_operands(a, b)
    out = torch.empty(shape, dtype=out_dtype, device=a.device)
    if out.numel() == 0:
        return out
    kernel_for(mul_kernel, a.device)[elementwise_grid(out.numel())](
        a_flat, b_flat, out, out.numel(),
        A_IS_SCALAR=a_scalar, B_IS_SCALAR=b_scalar, COMPUTE_DTYPE=math_dtype(out_dtype),
        BLOCK=ELEMENTWISE_BLOCK, num_warps=ELEMENTWISE_WARPS,
    )  # fmt: skip
    return out
