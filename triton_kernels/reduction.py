"""Split row reductions: the one kernel behind `sum`, `norm` and `dot`.

A reduction is viewed as `(rows, cols)` (the reduced dimensions last, contiguous). Each program
reduces one chunk of one row into an fp32 (fp64 for fp64, int64 for integers) partial; while a
row has more than one chunk, the partials are reduced again by the same kernel. So a full
reduction of n elements runs ~n/CHUNK programs in its first pass — enough to fill every SM —
and never a single program over the whole tensor, and never an atomic.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from triton_kernels.runtime import kernel_for, math_dtype

REDUCE_BLOCK = 1024  # elements loaded per loop step of one program
REDUCE_CHUNK = 16 * REDUCE_BLOCK  # elements one program reduces in the first pass
REDUCE_WARPS = 4

# What the first pass reduces: x, x², or x·y.
LOAD_X, LOAD_SQUARE, LOAD_PRODUCT = 0, 1, 2


@triton.jit
def reduce_row_chunks_kernel(
    x_ptr,
    y_ptr,
    out_ptr,
    n_cols,
    chunk_cols,
    n_chunks,
    LOAD: tl.constexpr,
    SQRT: tl.constexpr,
    COMPUTE_DTYPE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1).to(tl.int64)
    row_start = row * n_cols
    chunk_start = chunk * chunk_cols
    acc = tl.zeros([BLOCK], dtype=COMPUTE_DTYPE)
    for offset in range(0, chunk_cols, BLOCK):
        in_chunk = offset + tl.arange(0, BLOCK)
        cols = chunk_start + in_chunk
        mask = (in_chunk < chunk_cols) & (cols < n_cols)
        x = tl.load(x_ptr + row_start + cols, mask=mask, other=0).to(COMPUTE_DTYPE)
        if LOAD == 1:
            x = x * x
        elif LOAD == 2:
            x = x * tl.load(y_ptr + row_start + cols, mask=mask, other=0).to(COMPUTE_DTYPE)
        acc += x
    total = tl.sum(acc, axis=0)
    if SQRT:
        total = tl.sqrt(total)
    tl.store(out_ptr + row * n_chunks + chunk, total.to(out_ptr.dtype.element_ty))


def reduce_rows(
    x: torch.Tensor,
    out_dtype: torch.dtype,
    load: int = LOAD_X,
    y: torch.Tensor | None = None,
    sqrt: bool = False,
    chunk: int = REDUCE_CHUNK,
) -> torch.Tensor:
    """Reduce each row of the 2-D `x` (times `y`, or squared): a `(rows,)` tensor of `out_dtype`."""
    x = x.contiguous()
    y = x if y is None else y.contiguous()
    rows, cols = x.shape
    compute = math_dtype(out_dtype if out_dtype.is_floating_point else torch.int64)
    partial_dtype = {tl.float64: torch.float64, tl.float32: torch.float32}.get(compute, torch.int64)
    if cols == 0 or rows == 0:
        out = torch.zeros(rows, dtype=out_dtype, device=x.device)
        return out.sqrt() if sqrt else out
    while True:
        n_chunks = triton.cdiv(cols, chunk)
        last = n_chunks == 1
        out = torch.empty((rows, n_chunks), dtype=out_dtype if last else partial_dtype,
                          device=x.device)  # fmt: skip
        kernel_for(reduce_row_chunks_kernel, x.device)[(rows, n_chunks)](
            x, y, out, cols, chunk, n_chunks,
            LOAD=load, SQRT=sqrt and last, COMPUTE_DTYPE=compute,
            BLOCK=min(REDUCE_BLOCK, triton.next_power_of_2(chunk)), num_warps=REDUCE_WARPS,
        )  # fmt: skip
        if last:
            return out.view(rows)
        # The partials are summed again (plain sum; the square/product was taken in pass one).
        x = y = out
        cols, load = n_chunks, LOAD_X


def sum_forward(x2d: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """Row sums of `x2d` accumulated in fp32/fp64/int64, stored as `out_dtype`."""
    return reduce_rows(x2d, out_dtype)


def norm_forward(x2d: torch.Tensor) -> torch.Tensor:
    """Row L2 norms: sqrt of the fp32 sum of squares, stored in `x2d`'s dtype."""
    return reduce_rows(x2d, x2d.dtype, load=LOAD_SQUARE, sqrt=True)


def dot_forward(x2d: torch.Tensor, y2d: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """Row dot products of two same-shaped 2-D tensors."""
    return reduce_rows(x2d, out_dtype, load=LOAD_PRODUCT, y=y2d)
