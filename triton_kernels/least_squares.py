"""Fused least squares: the loss ‖Xw − y‖² and its w-gradient 2Xᵀ(Xw − y) in one pass over X.

Unfused, autograd reads X twice (forward `X @ w`, backward `Xᵀ grad`) and keeps the (m,)-sized
residual alive between them. Here a persistent grid of programs walks the row blocks of X; for
each block a program computes the residuals r = X_blk·w − y_blk, adds r² to its loss partial
and, when asked, adds 2·Σ r_i X_i to its own (n,)-sized partial of the w-gradient. The second
sweep over the block's columns re-reads the block right after the first, so it comes from cache,
not DRAM, as long as a row block fits its share of L2: rows are grouped in blocks of at most
`LSQ_ROW_BLOCK_BYTES` (very wide rows, n·itemsize ≫ that, fall out of cache and are re-read).
The per-program partials (fp32, fp64 for fp64) are summed afterwards by the split-reduction
kernel: no atomics, so results are deterministic.

Every operand is read through its strides (a transposed or sliced X is not copied), and an
optional leading batch dimension runs the whole batch in one grid (used by `vmap`).

The block sizes and grid size are a reasoned first choice (tile ≤ 8192 elements, row block
≤ 64 KiB, 2 programs per SM), not yet tuned on a GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from triton_kernels.mv import as_batched, sm_count
from triton_kernels.reduction import sum_forward
from triton_kernels.runtime import accumulate_dtype, compute_dtype, kernel_for

LSQ_MAX_BLOCK_N = 256
LSQ_MAX_BLOCK_M = 64
LSQ_MIN_BLOCK_M = 2  # rows wider than the cache budget still get a 2-row tile
LSQ_MAX_TILE = 8192  # elements of X one program loads per loop step
LSQ_ROW_BLOCK_BYTES = 64 * 1024  # a row block this small is still cached for the gradient sweep
LSQ_WARPS = 4
LSQ_PROGRAMS_PER_SM = 2
LSQ_CPU_PROGRAMS = 2  # interpreted programs run one after another: a few exercise the grid loop


@triton.jit
def least_squares_kernel(
    x_ptr,
    w_ptr,
    y_ptr,
    residual_ptr,
    loss_partial_ptr,
    grad_w_partial_ptr,
    M,
    N,
    n_row_blocks,
    programs_per_batch,
    stride_xb,
    stride_xm,
    stride_xn,
    stride_wb,
    stride_wn,
    stride_yb,
    stride_ym,
    STORE_RESIDUAL: tl.constexpr,
    COMPUTE_GRAD_W: tl.constexpr,
    COMPUTE_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Program p of batch b: row blocks p, p + P, p + 2P, ... → loss_partial[b·P + p] = Σ r²,
    grad_w_partial[b·P + p, :] = Σ 2 r_i X_i, residual[b, i] = r_i."""
    pid = tl.program_id(0).to(tl.int64)
    batch = pid // programs_per_batch
    x_batch = x_ptr + batch * stride_xb
    w_batch = w_ptr + batch * stride_wb
    grad_w_partial = grad_w_partial_ptr + pid * N
    loss = tl.zeros([BLOCK_M], dtype=COMPUTE_DTYPE)
    for row_block in range(pid % programs_per_batch, n_row_blocks, programs_per_batch):
        rows = row_block * BLOCK_M + tl.arange(0, BLOCK_M)
        row_mask = rows < M
        x_rows = x_batch + rows[:, None] * stride_xm
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=COMPUTE_DTYPE)
        for start in range(0, N, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N).to(tl.int64)
            col_mask = cols < N
            tile_mask = row_mask[:, None] & col_mask[None, :]
            x = tl.load(x_rows + cols[None, :] * stride_xn, mask=tile_mask, other=0)
            w = tl.load(w_batch + cols * stride_wn, mask=col_mask, other=0).to(COMPUTE_DTYPE)
            acc += x.to(COMPUTE_DTYPE) * w[None, :]
        y = tl.load(y_ptr + batch * stride_yb + rows * stride_ym, mask=row_mask, other=0)
        r = tl.where(row_mask, tl.sum(acc, axis=1) - y.to(COMPUTE_DTYPE), 0)
        loss += r * r
        if STORE_RESIDUAL:
            tl.store(residual_ptr + batch * M + rows, r.to(residual_ptr.dtype.element_ty),
                     mask=row_mask)  # fmt: skip
        if COMPUTE_GRAD_W:
            two_r = 2 * r
            for start in range(0, N, BLOCK_N):
                cols = start + tl.arange(0, BLOCK_N).to(tl.int64)
                col_mask = cols < N
                # The same row block again, moments after the first sweep: a cache hit.
                tile_mask = row_mask[:, None] & col_mask[None, :]
                x = tl.load(x_rows + cols[None, :] * stride_xn, mask=tile_mask, other=0)
                partial = tl.load(grad_w_partial + cols, mask=col_mask, other=0)
                partial += tl.sum(two_r[:, None] * x.to(COMPUTE_DTYPE), axis=0)
                tl.store(grad_w_partial + cols, partial, mask=col_mask)
            # The next row block reads these partials back; the compiler may map elements to
            # other threads for that load than for this store: make the stores visible first.
            tl.debug_barrier()
    tl.store(loss_partial_ptr + pid, tl.sum(loss, axis=0))


def block_sizes(n: int, itemsize: int) -> tuple[int, int]:
    """(BLOCK_M, BLOCK_N): full-width column steps, and as many rows as the cache budget allows."""
    block_n = min(LSQ_MAX_BLOCK_N, max(16, triton.next_power_of_2(n)))
    rows_in_budget = max(1, LSQ_ROW_BLOCK_BYTES // max(n * itemsize, 1))
    block_m = min(LSQ_MAX_BLOCK_M, LSQ_MAX_TILE // block_n, 1 << (rows_in_budget.bit_length() - 1))
    return max(block_m, LSQ_MIN_BLOCK_M), block_n


def programs_per_batch(n_row_blocks: int, batch: int, device: torch.device) -> int:
    """Persistent grid: enough programs to fill the GPU, each looping over several row blocks."""
    if device.type == "cuda":
        target = max(1, LSQ_PROGRAMS_PER_SM * sm_count(device) // max(batch, 1))
    else:
        target = LSQ_CPU_PROGRAMS
    return max(1, min(target, n_row_blocks))


def least_squares_forward(
    x: torch.Tensor,
    w: torch.Tensor,
    y: torch.Tensor,
    compute_grad_w: bool,
    store_residual: bool,
    n_programs: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, grad_w, residual) for x (*batch, m, n), w (*batch, n), y (*batch, m).

    loss = ‖xw − y‖² per batch element; grad_w = 2xᵀ(xw − y) and residual = xw − y, each an
    empty (0,) tensor unless asked for. `n_programs` (programs per batch element) defaults to
    `programs_per_batch`; tests pass other values to exercise the grid loop.
    """
    batch_shape, (m, n) = x.shape[:-2], x.shape[-2:]
    x3, w2, y2 = as_batched(x, 2), as_batched(w, 1), as_batched(y, 1)
    batch = x3.shape[0]
    block_m, block_n = block_sizes(n, x.element_size())
    n_row_blocks = triton.cdiv(m, block_m)
    programs = max(1, min(n_programs or programs_per_batch(n_row_blocks, batch, x.device),
                          n_row_blocks))  # fmt: skip
    acc = accumulate_dtype(x.dtype)
    loss_partial = torch.empty((batch, programs), dtype=acc, device=x.device)
    grad_w_partial = torch.zeros((batch, programs, n) if compute_grad_w else (0,), dtype=acc,
                                 device=x.device)  # fmt: skip
    residual = torch.empty((*batch_shape, m) if store_residual else (0,), dtype=x.dtype,
                           device=x.device)  # fmt: skip
    if batch > 0:
        kernel_for(least_squares_kernel, x.device)[(batch * programs,)](
            x3, w2, y2, residual, loss_partial, grad_w_partial, m, n, n_row_blocks, programs,
            x3.stride(0), x3.stride(1), x3.stride(2), w2.stride(0), w2.stride(1),
            y2.stride(0), y2.stride(1),
            STORE_RESIDUAL=store_residual, COMPUTE_GRAD_W=compute_grad_w,
            COMPUTE_DTYPE=compute_dtype(x.dtype), BLOCK_M=block_m, BLOCK_N=block_n,
            num_warps=LSQ_WARPS,
        )  # fmt: skip
    loss = sum_forward(loss_partial, x.dtype).view(batch_shape)
    if not compute_grad_w:
        return loss, x.new_empty(0), residual
    # Sum the programs' partials column by column: (batch, P, n) → rows of (batch·n, P).
    per_column = grad_w_partial.transpose(1, 2).reshape(batch * n, programs)
    grad_w = sum_forward(per_column, x.dtype).view(*batch_shape, n)
    return loss, grad_w, residual
