"""Elementwise product with broadcasting: `out = a * b`, and `out = x * scalar`.

A one-element operand (0-dim tensor, or any tensor of one element) is read once per program
through its pointer instead of being expanded in memory, and a Python number is a kernel
argument: `x * 2` moves 2 tensors' worth of memory, not 3, and never syncs with the host.
The result has torch's strides (`triton_kernels.layout`); an operand of another layout, or any
other broadcast, is copied to the result's layout first (see `binary.tensor_operands`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from triton_kernels.binary import (
    Number,
    binary_output,
    launch_elementwise,
    load_operand,
    pinned_scalar,
    scalar_args,
    tensor_operands,
)
from triton_kernels.layout import in_layout


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
    a = load_operand(a_ptr, offsets, mask, A_IS_SCALAR, COMPUTE_DTYPE)
    b = load_operand(b_ptr, offsets, mask, B_IS_SCALAR, COMPUTE_DTYPE)
    tl.store(out_ptr + offsets, (a * b).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["scalar_int64"])
def mul_scalar_kernel(
    x_ptr,
    scalar_fp64: tl.float64,
    scalar_int64: tl.int64,
    out_ptr,
    n_elements,
    COMPUTE_DTYPE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    offsets = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n_elements
    scalar = pinned_scalar(scalar_fp64, scalar_int64, COMPUTE_DTYPE)
    x = tl.load(x_ptr + offsets, mask=mask).to(COMPUTE_DTYPE)
    tl.store(out_ptr + offsets, (x * scalar).to(out_ptr.dtype.element_ty), mask=mask)


def mul_forward(a: torch.Tensor, b: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """`a * b` broadcast, stored as `out_dtype` (math in fp32, fp64 for fp64, int64 for ints)."""
    out = binary_output(a, b, out_dtype)
    a, b, a_scalar, b_scalar = tensor_operands(a, b, out)
    return launch_elementwise(mul_kernel, out, a, b, A_IS_SCALAR=a_scalar, B_IS_SCALAR=b_scalar)


def mul_scalar_forward(x: torch.Tensor, scalar: Number, out_dtype: torch.dtype) -> torch.Tensor:
    """`x * scalar` for a Python number, stored as `out_dtype`."""
    out = binary_output(x, scalar, out_dtype)
    return launch_elementwise(
        mul_scalar_kernel, out, in_layout(x, out), *scalar_args(scalar, out_dtype)
    )
