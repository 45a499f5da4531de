"""Elementwise difference with broadcasting and torch's `alpha`: `out = a - alpha * b`.

Operands are handled as in `triton_kernels.mul`: one-element tensors are read through their
pointer, Python numbers (the operand on either side, and `alpha`) are pinned-dtype kernel
arguments, results have torch's strides and other operands are brought to them.
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


@triton.jit(do_not_specialize=["alpha_int64"])
def sub_kernel(
    a_ptr,
    b_ptr,
    alpha_fp64: tl.float64,
    alpha_int64: tl.int64,
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
    alpha = pinned_scalar(alpha_fp64, alpha_int64, COMPUTE_DTYPE)
    a = load_operand(a_ptr, offsets, mask, A_IS_SCALAR, COMPUTE_DTYPE)
    b = load_operand(b_ptr, offsets, mask, B_IS_SCALAR, COMPUTE_DTYPE)
    tl.store(out_ptr + offsets, (a - alpha * b).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["scalar_int64", "alpha_int64"])
def sub_scalar_kernel(
    x_ptr,
    scalar_fp64: tl.float64,
    scalar_int64: tl.int64,
    alpha_fp64: tl.float64,
    alpha_int64: tl.int64,
    out_ptr,
    n_elements,
    SCALAR_FIRST: tl.constexpr,
    COMPUTE_DTYPE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """`x - alpha * scalar`, or `scalar - alpha * x` when SCALAR_FIRST."""
    pid = tl.program_id(0).to(tl.int64)
    offsets = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n_elements
    scalar = pinned_scalar(scalar_fp64, scalar_int64, COMPUTE_DTYPE)
    alpha = pinned_scalar(alpha_fp64, alpha_int64, COMPUTE_DTYPE)
    x = tl.load(x_ptr + offsets, mask=mask).to(COMPUTE_DTYPE)
    if SCALAR_FIRST:
        out = scalar - alpha * x
    else:
        out = x - alpha * scalar
    tl.store(out_ptr + offsets, out.to(out_ptr.dtype.element_ty), mask=mask)


def sub_forward(
    a: torch.Tensor, b: torch.Tensor, alpha: Number, out_dtype: torch.dtype
) -> torch.Tensor:
    """`a - alpha * b` broadcast, computed like `mul_forward`, stored as `out_dtype`."""
    out = binary_output(a, b, out_dtype)
    a, b, a_scalar, b_scalar = tensor_operands(a, b, out)
    return launch_elementwise(
        sub_kernel, out, a, b, *scalar_args(alpha, out_dtype),
        A_IS_SCALAR=a_scalar, B_IS_SCALAR=b_scalar,
    )  # fmt: skip


def sub_scalar_forward(
    x: torch.Tensor, scalar: Number, alpha: Number, scalar_first: bool, out_dtype: torch.dtype
) -> torch.Tensor:
    """`x - alpha * scalar` (or `scalar - alpha * x` if `scalar_first`) for a Python number."""
    out = binary_output(x, scalar, out_dtype)
    return launch_elementwise(
        sub_scalar_kernel, out, in_layout(x, out),
        *scalar_args(scalar, out_dtype), *scalar_args(alpha, out_dtype),
        SCALAR_FIRST=scalar_first,
    )  # fmt: skip
