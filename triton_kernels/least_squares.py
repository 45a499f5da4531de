"""Fused least squares: the loss ‖Xw − y‖² and its w-gradient 2Xᵀ(Xw − y) in one pass over X.

Each program owns BLOCK_M rows of X. It computes their residuals r = X_blk·w − y_blk, adds r² to
its loss partial and, when asked, 2·Σ r_i X_i to its column partials — re-reading its row block
right after the first read, from cache, not from DRAM. Unfused, autograd reads X twice (forward
`X @ w`, backward `Xᵀ grad`) and keeps the (m,)-sized residual alive between them.
Partials are laid out `(n, programs)` so the split-reduction kernel sums them row by row.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from triton_kernels.reduction import sum_forward
from triton_kernels.runtime import compute_dtype, kernel_for

LSQ_BLOCK_M = 32
LSQ_BLOCK_N = 128
LSQ_WARPS = 4


@triton.jit
def least_squares_kernel(
    x_ptr,
    w_ptr,
    y_ptr,
    r_ptr,
    loss_partial_ptr,
    grad_w_partial_ptr,
    M,
    N,
    n_programs,
    stride_xm,
    stride_xn,
    STORE_RESIDUAL: tl.constexpr,
    COMPUTE_GRAD_W: tl.constexpr,
    COMPUTE_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
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
        w = tl.load(w_ptr + cols, mask=col_mask, other=0).to(COMPUTE_DTYPE)
        acc += x * w[None, :]
    y = tl.load(y_ptr + rows, mask=row_mask, other=0).to(COMPUTE_DTYPE)
    r = tl.where(row_mask, tl.sum(acc, axis=1) - y, 0)
    if STORE_RESIDUAL:
        tl.store(r_ptr + rows, r.to(r_ptr.dtype.element_ty), mask=row_mask)
    tl.store(loss_partial_ptr + pid, tl.sum(r * r, axis=0))
    if COMPUTE_GRAD_W:
        for start in range(0, N, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N).to(tl.int64)
            col_mask = cols < N
            x = tl.load(
                x_ptr + rows[:, None] * stride_xm + cols[None, :] * stride_xn,
                mask=row_mask[:, None] & col_mask[None, :],
                other=0,
            ).to(COMPUTE_DTYPE)
            partial = tl.sum(2 * r[:, None] * x, axis=0)
            tl.store(grad_w_partial_ptr + cols * n_programs + pid, partial, mask=col_mask)


def least_squares_forward(
    x: torch.Tensor,
    w: torch.Tensor,
    y: torch.Tensor,
    compute_grad_w: bool,
    store_residual: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, grad_w, residual): grad_w is 2Xᵀ(Xw − y) and residual Xw − y, each empty (0,)
    unless asked for. Partials accumulate in fp32 (fp64 for fp64)."""
    m, n = x.shape
    w, y = w.contiguous(), y.contiguous()
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    n_programs = max(triton.cdiv(m, LSQ_BLOCK_M), 1)
    loss_partial = torch.zeros(n_programs, dtype=acc, device=x.device)
    grad_w_partial = torch.zeros((n, n_programs) if compute_grad_w else (0, 0), dtype=acc,
                                 device=x.device)  # fmt: skip
    residual = torch.empty(m if store_residual else 0, dtype=x.dtype, device=x.device)
    if m > 0:
        kernel_for(least_squares_kernel, x.device)[(n_programs,)](
            x, w, y, residual, loss_partial, grad_w_partial, m, n, n_programs,
            x.stride(0), x.stride(1),
            STORE_RESIDUAL=store_residual, COMPUTE_GRAD_W=compute_grad_w,
            COMPUTE_DTYPE=compute_dtype(x.dtype), BLOCK_M=LSQ_BLOCK_M, BLOCK_N=LSQ_BLOCK_N,
            num_warps=LSQ_WARPS,
        )  # fmt: skip
    loss = sum_forward(loss_partial.view(1, -1), x.dtype).reshape(())
    grad_w = sum_forward(grad_w_partial, x.dtype) if compute_grad_w else x.new_empty(0)
    return loss, grad_w, residual
