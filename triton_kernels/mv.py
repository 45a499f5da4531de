"""Matrix-vector product `X @ w` and the outer product `g wᵀ` (the gradient of `mv` for X).

`mv_kernel` takes X's strides, so the backward's `Xᵀ g` runs on a transposed view without a copy.
Each program owns BLOCK_M rows and walks the columns in BLOCK_N steps, accumulating in fp32
(fp64 for fp64 inputs).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from triton_kernels.runtime import kernel_for, math_dtype

MV_BLOCK_M = 32
MV_BLOCK_N = 128
MV_WARPS = 4
OUTER_BLOCK = 64


@triton.jit
def mv_kernel(
    x_ptr,
    w_ptr,
    out_ptr,
    M,
    N,
    stride_xm,
    stride_xn,
    stride_w,
    COMPUTE_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < M
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=COMPUTE_DTYPE)
    for start in range(0, N, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N).to(tl.int64)
        col_mask = cols < N
        x = tl.load(
            x_ptr + rows[:, None] * stride_xm + cols[None, :] * stride_xn,
            mask=row_mask[:, None] & col_mask[None, :],
            other=0,
        ).to(COMPUTE_DTYPE)
        w = tl.load(w_ptr + cols * stride_w, mask=col_mask, other=0).to(COMPUTE_DTYPE)
        acc += x * w[None, :]
    tl.store(out_ptr + rows, tl.sum(acc, axis=1).to(out_ptr.dtype.element_ty), mask=row_mask)


@triton.jit
def outer_kernel(g_ptr, w_ptr, out_ptr, M, N, COMPUTE_DTYPE: tl.constexpr, BLOCK: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    cols = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    g = tl.load(g_ptr + rows, mask=rows < M, other=0).to(COMPUTE_DTYPE)
    w = tl.load(w_ptr + cols, mask=cols < N, other=0).to(COMPUTE_DTYPE)
    mask = (rows < M)[:, None] & (cols < N)[None, :]
    out = (g[:, None] * w[None, :]).to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + rows[:, None] * N + cols[None, :], out, mask=mask)


def mv_forward(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """`x @ w` for a 2-D `x` of any strides and a 1-D `w`."""
    m, n = x.shape
    out = torch.empty(m, dtype=x.dtype, device=x.device)
    if n == 0:
        return out.zero_()
    if m == 0:
        return out
    kernel_for(mv_kernel, x.device)[(triton.cdiv(m, MV_BLOCK_M),)](
        x, w, out, m, n, x.stride(0), x.stride(1), w.stride(0),
        COMPUTE_DTYPE=math_dtype(x.dtype), BLOCK_M=MV_BLOCK_M, BLOCK_N=MV_BLOCK_N,
        num_warps=MV_WARPS,
    )  # fmt: skip
    return out


def outer_forward(g: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """`g[:, None] * w[None, :]` as a new contiguous (m, n) tensor."""
    g, w = g.contiguous(), w.contiguous()
    out = torch.empty((g.numel(), w.numel()), dtype=g.dtype, device=g.device)
    if out.numel() == 0:
        return out
    grid = (triton.cdiv(g.numel(), OUTER_BLOCK), triton.cdiv(w.numel(), OUTER_BLOCK))
    kernel_for(outer_kernel, g.device)[grid](
        g, w, out, g.numel(), w.numel(),
        COMPUTE_DTYPE=math_dtype(g.dtype), BLOCK=OUTER_BLOCK, num_warps=4,
    )  # fmt: skip
    return out
