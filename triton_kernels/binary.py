"""Launch plumbing shared by the broadcasting binary ops (`mul`, `sub`).

Python numbers reach the kernels as scalar arguments, never as tensors: no allocation, no copy,
and nothing for a CUDA graph to capture. Triton would type a Python float as fp32 (lossy for fp64
results), so every scalar travels in a pair of pinned arguments, `(fp64, int64)`; the kernel reads
the one its compute dtype needs (int64 math for integer and bool results, floats otherwise).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from triton_kernels import layout
from triton_kernels.runtime import (
    ELEMENTWISE_BLOCK,
    ELEMENTWISE_WARPS,
    elementwise_grid,
    kernel_for,
    math_dtype,
)

Number = bool | int | float

_FP64_EXACT_INT = 2**53


@triton.jit
def load_operand(ptr, offsets, mask, IS_SCALAR: tl.constexpr, COMPUTE_DTYPE: tl.constexpr):
    """An operand's block, or its single element for every lane when it is one broadcast value."""
    if IS_SCALAR:  # a constexpr branch: one return type per specialisation
        value = tl.load(ptr)
    else:
        value = tl.load(ptr + offsets, mask=mask)
    return value.to(COMPUTE_DTYPE)


@triton.jit
def pinned_scalar(value_fp64, value_int64, COMPUTE_DTYPE: tl.constexpr):
    """The `(fp64, int64)` pair of `scalar_args` as one value of the compute dtype."""
    if COMPUTE_DTYPE == tl.int64:
        value = tl.full((), value_int64, COMPUTE_DTYPE)
    else:
        value = tl.full((), value_fp64, COMPUTE_DTYPE)
    return value


def scalar_args(value: Number, out_dtype: torch.dtype) -> tuple[float, int]:
    """`value` as the `(fp64, int64)` kernel argument pair for a result of `out_dtype`.

    Both are exactly what torch computes with: integer results read the int64 slot; floating
    results read the fp64 slot, rounded once to fp32 inside the kernel as torch rounds the scalar
    to its fp32 "opmath" type. An int too large for fp64 is pre-rounded straight to fp32 here,
    because int -> fp64 -> fp32 could round twice.
    """
    if not out_dtype.is_floating_point:
        return 0.0, int(value)
    if isinstance(value, int) and abs(value) > _FP64_EXACT_INT and out_dtype != torch.float64:
        value = torch.tensor(value, dtype=torch.int64).to(torch.float32).item()  # host, no sync
    return float(value), 0


def binary_output(a: torch.Tensor, b: torch.Tensor | Number, out_dtype: torch.dtype):
    """An empty `a op b` result (`b` a tensor or a number) with torch's shape and strides."""
    return layout.empty_output(layout.binary, a, b, dtype=out_dtype, device=a.device)


def tensor_operands(
    a: torch.Tensor, b: torch.Tensor, out: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, bool, bool]:
    """Operands of a broadcasting binary op over `out`, and whether each is a single value.

    A one-element operand stays one element: the kernel reads it once per program through its
    pointer (no `.item()`, so no host sync). Others are brought to `out`'s layout: a view when
    they have it, else one copy (a broadcast, or a layout other than the result's).
    """
    a_scalar, b_scalar = a.numel() == 1, b.numel() == 1
    a = a.reshape(1) if a_scalar else layout.in_layout(a, out)
    b = b.reshape(1) if b_scalar else layout.in_layout(b, out)
    return a, b, a_scalar, b_scalar


def launch_elementwise(kernel, out: torch.Tensor, *args, **constexprs) -> torch.Tensor:
    """`kernel[grid](*args, out, out.numel(), **constexprs)` over `out`, math in `out`'s dtype.

    The kernel indexes `out`'s dense memory (and its operands', in the same layout) in storage
    order. Computes in fp32 for fp16/bf16/fp32 results, fp64 for fp64, int64 for integers and bool.
    An empty `out` launches nothing.
    """
    if out.numel() == 0:
        return out
    kernel_for(kernel, out.device)[elementwise_grid(out.numel())](
        *args, out, out.numel(), **constexprs,
        COMPUTE_DTYPE=math_dtype(out.dtype), BLOCK=ELEMENTWISE_BLOCK, num_warps=ELEMENTWISE_WARPS,
    )  # fmt: skip
    return out
