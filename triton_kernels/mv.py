"""Matrix-vector product `X @ w` and the outer product `g wᵀ` (the gradient of `mv` for X).

Both kernels take every operand's strides, so a transposed, sliced or expanded X is read in place:
the backward's `Xᵀ g` is `mv` on the transposed view, with no copy. Both also take an optional
leading batch dimension (one program grid for the whole batch), which is how `vmap` over `mv`
runs without a Python loop.

`mv_kernel`: each program owns BLOCK_M rows and walks its columns in BLOCK_N steps, accumulating
in fp32 (fp64 for fp64, int64 for integers). When there are too few row blocks to fill the GPU
(a wide matrix, such as Xᵀ of a tall X), the columns are also split between programs and the
per-split partial sums are reduced afterwards by the split-reduction kernel.
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from triton_kernels.reduction import sum_forward
from triton_kernels.runtime import kernel_for, math_dtype

MV_BLOCK_M = 32
MV_BLOCK_N = 128
MV_WARPS = 4
# A column split covers at least this many columns: fewer would cost more in partials than it
# gains in parallelism.
MV_MIN_SPLIT_COLS = 8 * MV_BLOCK_N
PROGRAMS_PER_SM = 4  # the grid size a split aims for, per streaming multiprocessor

OUTER_BLOCK_M = 32
OUTER_BLOCK_N = 128
OUTER_WARPS = 4


@triton.jit
def mv_kernel(
    x_ptr,
    w_ptr,
    out_ptr,
    M,
    N,
    n_row_blocks,
    split_cols,
    n_splits,
    stride_xb,
    stride_xm,
    stride_xn,
    stride_wb,
    stride_wn,
    COMPUTE_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """out[b, i, s] = Σ_j x[b, i, j] · w[b, j] over the columns j of split s."""
    pid = tl.program_id(0).to(tl.int64)
    batch = pid // n_row_blocks
    rows = (pid % n_row_blocks) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < M
    split = tl.program_id(1).to(tl.int64)
    col_start = split * split_cols
    col_end = tl.minimum(col_start + split_cols, N)
    x_rows = x_ptr + batch * stride_xb + rows[:, None] * stride_xm
    w_batch = w_ptr + batch * stride_wb
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=COMPUTE_DTYPE)
    for start in range(col_start, col_end, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        col_mask = cols < col_end
        x = tl.load(
            x_rows + cols[None, :] * stride_xn, mask=row_mask[:, None] & col_mask[None, :], other=0
        ).to(COMPUTE_DTYPE)
        w = tl.load(w_batch + cols * stride_wn, mask=col_mask, other=0).to(COMPUTE_DTYPE)
        acc += x * w[None, :]
    out = tl.sum(acc, axis=1)
    tl.store(out_ptr + (batch * M + rows) * n_splits + split, out.to(out_ptr.dtype.element_ty),
             mask=row_mask)  # fmt: skip


@triton.jit
def outer_kernel(
    g_ptr,
    w_ptr,
    out_ptr,
    M,
    N,
    n_row_blocks,
    n_col_blocks,
    stride_gb,
    stride_gm,
    stride_wb,
    stride_wn,
    COMPUTE_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """out[b, i, j] = g[b, i] · w[b, j], written contiguously; one (BLOCK_M, BLOCK_N) tile each."""
    pid = tl.program_id(0).to(tl.int64)
    tiles_per_batch = n_row_blocks * n_col_blocks
    batch = pid // tiles_per_batch
    tile = pid % tiles_per_batch
    rows = (tile // n_col_blocks) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = (tile % n_col_blocks) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask, col_mask = rows < M, cols < N
    g = tl.load(g_ptr + batch * stride_gb + rows * stride_gm, mask=row_mask, other=0)
    w = tl.load(w_ptr + batch * stride_wb + cols * stride_wn, mask=col_mask, other=0)
    out = g.to(COMPUTE_DTYPE)[:, None] * w.to(COMPUTE_DTYPE)[None, :]
    out_offsets = (batch * M + rows[:, None]) * N + cols[None, :]
    tl.store(out_ptr + out_offsets, out.to(out_ptr.dtype.element_ty),
             mask=row_mask[:, None] & col_mask[None, :])  # fmt: skip


def as_batched(t: torch.Tensor, sample_dims: int) -> torch.Tensor:
    """`t` with all its leading batch dimensions as one (a view when there are 0 or 1)."""
    batch_shape, sample_shape = t.shape[: t.dim() - sample_dims], t.shape[t.dim() - sample_dims :]
    return t.reshape(math.prod(batch_shape), *sample_shape)


def _partial_dtype(dtype: torch.dtype) -> torch.dtype:
    if not dtype.is_floating_point:
        return torch.int64
    return torch.float64 if dtype == torch.float64 else torch.float32


@functools.cache
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (cached: the query is not free per launch)."""
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


def mv_split_cols(programs: int, n: int, device: torch.device) -> int:
    """Columns per program: all of them, unless the row blocks alone leave SMs idle (CUDA)."""
    if device.type != "cuda":
        return max(n, 1)  # the interpreter runs programs one by one: splitting only costs
    target = PROGRAMS_PER_SM * sm_count(device)
    splits = min(triton.cdiv(target, programs), triton.cdiv(n, MV_MIN_SPLIT_COLS))
    if splits <= 1:
        return max(n, 1)
    return triton.cdiv(triton.cdiv(n, splits), MV_BLOCK_N) * MV_BLOCK_N


def mv_forward(x: torch.Tensor, w: torch.Tensor, split_cols: int | None = None) -> torch.Tensor:
    """`x @ w` for `x` of shape (*batch, m, n) and `w` of shape (*batch, n), any strides.

    `split_cols` (columns per program) defaults to `mv_split_cols`; tests pass small values to
    exercise the split path on the CPU.
    """
    batch_shape, (m, n) = x.shape[:-2], x.shape[-2:]
    x3, w2 = as_batched(x, 2), as_batched(w, 1)
    if x3.numel() == 0 or n == 0:
        return torch.zeros((*batch_shape, m), dtype=x.dtype, device=x.device)
    n_row_blocks = triton.cdiv(m, MV_BLOCK_M)
    programs = x3.shape[0] * n_row_blocks
    split_cols = split_cols or mv_split_cols(programs, n, x.device)
    n_splits = triton.cdiv(n, split_cols)
    out_dtype = x.dtype if n_splits == 1 else _partial_dtype(x.dtype)
    out = torch.empty((x3.shape[0] * m, n_splits), dtype=out_dtype, device=x.device)
    kernel_for(mv_kernel, x.device)[(programs, n_splits)](
        x3, w2, out, m, n, n_row_blocks, split_cols, n_splits,
        x3.stride(0), x3.stride(1), x3.stride(2), w2.stride(0), w2.stride(1),
        COMPUTE_DTYPE=math_dtype(x.dtype), BLOCK_M=MV_BLOCK_M, BLOCK_N=MV_BLOCK_N,
        num_warps=MV_WARPS,
    )  # fmt: skip
    if n_splits > 1:
        out = sum_forward(out, x.dtype)
    return out.view(*batch_shape, m)


def outer_forward(g: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """`g[..., :, None] * w[..., None, :]` as a new contiguous (*batch, m, n) tensor."""
    batch_shape, m, n = g.shape[:-1], g.shape[-1], w.shape[-1]
    g2, w2 = as_batched(g, 1), as_batched(w, 1)
    out = torch.empty((*batch_shape, m, n), dtype=g.dtype, device=g.device)
    if out.numel() == 0:
        return out
    n_row_blocks, n_col_blocks = triton.cdiv(m, OUTER_BLOCK_M), triton.cdiv(n, OUTER_BLOCK_N)
    grid = (g2.shape[0] * n_row_blocks * n_col_blocks,)
    kernel_for(outer_kernel, g.device)[grid](
        g2, w2, out, m, n, n_row_blocks, n_col_blocks,
        g2.stride(0), g2.stride(1), w2.stride(0), w2.stride(1),
        COMPUTE_DTYPE=math_dtype(g.dtype), BLOCK_M=OUTER_BLOCK_M, BLOCK_N=OUTER_BLOCK_N,
        num_warps=OUTER_WARPS,
    )  # fmt: skip
    return out
