"""Split (two-stage) reductions: the kernels behind `sum`, `norm` and `dot`.

A reduction over any set of dims is laid out as a contiguous `(outer, reduced, inner)` tensor,
without a copy when the input already is one (reduced dims form one block of a contiguous tensor,
or a permutation of it is contiguous). The first pass splits the `reduced` axis into chunks: many
programs, each reducing one chunk of one (or a tile of several) output element(s) into an fp32
partial (fp64 for fp64, int64 for integers). Further passes reduce the `(outer, chunks, inner)`
partials the same way until one chunk is left. The number of chunks is chosen so the first pass
runs about `PROGRAMS_PER_SM` programs per SM: enough to keep HBM busy, few enough that the
partials (and the second pass) are tiny. No single program walks a large tensor, no atomics.
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from triton_kernels.runtime import accumulate_dtype, kernel_for, math_dtype

# Elements one program loads per loop step, and its warps: 8 elements per thread, i.e. two 16-byte
# loads of fp32 (one of fp16/bf16) in flight per thread per step. Smaller tiles (short rows, the
# last pass over partials) get one warp per 256 elements.
REDUCE_TILE = 2048
REDUCE_WARPS = 8
# First-pass programs per SM: 8 programs of 8 warps fill an H100 SM (64 warps) in one wave.
PROGRAMS_PER_SM = 8
# Tiles of a reduction over a middle axis are at most this wide along the contiguous inner axis
# (1 KiB of fp32 per row: coalesced), so that wide rows still give many programs.
MIDDLE_BLOCK_INNER = 256
# A chunk spans at least this many elements of the reduced axis: partials then add at most
# 1/32 to the bytes the first pass reads.
MIN_REDUCED_PER_PROGRAM = 32
# Under the interpreter programs run one after another: a few big ones are fastest, and 16 still
# splits anything over a few tiles, so CPU tests run the same two-stage path as the GPU.
INTERPRETER_PROGRAMS = 16

# What the first pass adds up: x, x², or x·y.
TERM_X, TERM_SQUARE, TERM_PRODUCT = 0, 1, 2

_TL_DTYPES = {
    torch.bool: tl.int1, torch.uint8: tl.uint8, torch.int8: tl.int8, torch.int16: tl.int16,
    torch.int32: tl.int32, torch.int64: tl.int64, torch.float16: tl.float16,
    torch.bfloat16: tl.bfloat16, torch.float32: tl.float32, torch.float64: tl.float64,
}  # fmt: skip
REDUCIBLE_DTYPES = tuple(_TL_DTYPES)


@triton.jit
def reduce_split_kernel(
    x_ptr,
    y_ptr,
    out_ptr,
    n_outer,
    n_reduced,
    n_inner,
    n_inner_blocks,
    reduced_per_program,
    n_chunks,
    TERM: tl.constexpr,
    CAST_DTYPE: tl.constexpr,
    SQRT: tl.constexpr,
    COMPUTE_DTYPE: tl.constexpr,
    BLOCK_OUTER: tl.constexpr,
    BLOCK_REDUCED: tl.constexpr,
    BLOCK_INNER: tl.constexpr,
):
    """out[o, chunk, i] = Σ term(x[o, r, i]) over the chunk's r, for a contiguous 3-D x.

    Tiles are (BLOCK_OUTER, BLOCK_REDUCED, BLOCK_INNER), wide along the contiguous axis: for
    rows (inner = 1) BLOCK_OUTER rows by BLOCK_REDUCED columns; otherwise (BLOCK_OUTER = 1) a
    BLOCK_REDUCED by BLOCK_INNER block, so `sum(dim=0)` of a matrix reads it coalesced and in
    place instead of transposing it first.
    """
    pid = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1).to(tl.int64)
    outer = (pid // n_inner_blocks) * BLOCK_OUTER + tl.arange(0, BLOCK_OUTER)
    inner = (pid % n_inner_blocks) * BLOCK_INNER + tl.arange(0, BLOCK_INNER)
    kept_mask = (outer < n_outer)[:, None] & (inner < n_inner)[None, :]
    base = (outer * n_reduced * n_inner)[:, None, None] + inner[None, None, :]
    first = chunk * reduced_per_program
    acc = tl.zeros([BLOCK_OUTER, BLOCK_REDUCED, BLOCK_INNER], dtype=COMPUTE_DTYPE)
    for start in range(0, reduced_per_program, BLOCK_REDUCED):
        reduced = first + start + tl.arange(0, BLOCK_REDUCED)
        mask = kept_mask[:, None, :] & (reduced < n_reduced)[None, :, None]
        offsets = base + (reduced * n_inner)[None, :, None]
        x = tl.load(x_ptr + offsets, mask=mask, other=0).to(CAST_DTYPE).to(COMPUTE_DTYPE)
        if TERM == 1:
            x = x * x
        elif TERM == 2:
            x = x * tl.load(y_ptr + offsets, mask=mask, other=0).to(COMPUTE_DTYPE)
        acc += x
    total = tl.sum(acc, axis=1)
    if SQRT:
        total = tl.sqrt(total)
    out_offsets = (outer[:, None] * n_chunks + chunk) * n_inner + inner[None, :]
    tl.store(out_ptr + out_offsets, total.to(out_ptr.dtype.element_ty), mask=kept_mask)


def reduction_layout(
    x: torch.Tensor, dims: tuple[int, ...]
) -> tuple[torch.Tensor, list[int] | None]:
    """`x` as a contiguous `(outer, reduced, inner)` tensor, and the permutation of x's dims it
    was taken from (None: x's own order). Copies x only when no view of it has that form."""
    dims = tuple(dims)
    block = _contiguous_block(x, dims) if x.is_contiguous() else None
    if block is not None:
        return x.view(block), None
    kept = [d for d in range(x.dim()) if d not in dims]
    # The order of the reduced dims is free: take them in memory order, so that e.g. a
    # transposed matrix reduced over all its dims needs no copy.
    reduced = sorted(dims, key=lambda d: -x.stride(d))
    order = kept + reduced
    rows, cols = math.prod(x.shape[d] for d in kept), math.prod(x.shape[d] for d in reduced)
    return x.permute(order).contiguous().view(rows, cols, 1), order


def _contiguous_block(x: torch.Tensor, dims: tuple[int, ...]) -> tuple[int, int, int] | None:
    """(outer, reduced, inner) sizes if the reduced dims of size > 1 are adjacent, else None."""
    sized = [d for d in range(x.dim()) if x.shape[d] != 1]
    positions = [i for i, d in enumerate(sized) if d in dims]
    if not positions:  # nothing to add up: each output element is one input element
        return x.numel(), 1, 1
    first, last = positions[0], positions[-1]
    if last - first + 1 != len(positions):
        return None
    size = [x.shape[d] for d in sized]
    return math.prod(size[:first]), math.prod(size[first : last + 1]), math.prod(size[last + 1 :])


@functools.cache
def _first_pass_programs(device: torch.device) -> int:
    if device.type == "cuda":
        return PROGRAMS_PER_SM * torch.cuda.get_device_properties(device).multi_processor_count
    return INTERPRETER_PROGRAMS


def split_plan(
    outer: int, reduced: int, inner: int, device: torch.device
) -> tuple[tuple[int, int, int], int, int]:
    """((BLOCK_OUTER, BLOCK_REDUCED, BLOCK_INNER), reduced_per_program, n_chunks) for one pass.

    A tile is REDUCE_TILE elements: as wide along the contiguous axis (reduced for rows, inner
    otherwise) as the data allows, the rest of it along the other axis. The reduced axis is then
    split into chunks until the pass has about `_first_pass_programs` programs, never into
    more chunks than it has tiles, nor into chunks shorter than MIN_REDUCED_PER_PROGRAM.
    """
    if inner == 1:  # rows: tiles of BLOCK_OUTER rows by BLOCK_REDUCED columns
        block_reduced = min(triton.next_power_of_2(reduced), REDUCE_TILE)
        block_outer = min(REDUCE_TILE // block_reduced, triton.next_power_of_2(outer))
        block = (block_outer, block_reduced, 1)
        kept_programs = triton.cdiv(outer, block_outer)
    else:  # tiles of BLOCK_REDUCED by BLOCK_INNER of one outer index
        block_inner = min(triton.next_power_of_2(inner), MIDDLE_BLOCK_INNER)
        block_reduced = min(REDUCE_TILE // block_inner, triton.next_power_of_2(reduced))
        block = (1, block_reduced, block_inner)
        kept_programs = outer * triton.cdiv(inner, block_inner)
    tiles = triton.cdiv(reduced, block_reduced)
    max_chunks = min(tiles, reduced // MIN_REDUCED_PER_PROGRAM)
    n_chunks = max(1, min(max_chunks, _first_pass_programs(device) // kept_programs))
    per_program = triton.cdiv(tiles, n_chunks) * block_reduced
    return block, per_program, triton.cdiv(reduced, per_program)


def _reduce_pass(x3, y3, out_dtype, partial_dtype, term, cast_dtype, sqrt) -> torch.Tensor:
    """One pass: (outer, reduced, inner) → (outer, chunks, inner) partials, or the result in
    `out_dtype` (sqrt'ed if asked) when one chunk is left."""
    outer, reduced, inner = x3.shape
    block, per_program, n_chunks = split_plan(outer, reduced, inner, x3.device)
    last = n_chunks == 1
    out = torch.empty((outer, n_chunks, inner), dtype=out_dtype if last else partial_dtype,
                      device=x3.device)  # fmt: skip
    inner_blocks = triton.cdiv(inner, block[2])
    grid = (triton.cdiv(outer, block[0]) * inner_blocks, n_chunks)
    kernel_for(reduce_split_kernel, x3.device)[grid](
        x3, y3, out, outer, reduced, inner, inner_blocks, per_program, n_chunks,
        TERM=term, CAST_DTYPE=_TL_DTYPES[cast_dtype], SQRT=sqrt and last,
        COMPUTE_DTYPE=math_dtype(out_dtype), BLOCK_OUTER=block[0], BLOCK_REDUCED=block[1],
        BLOCK_INNER=block[2], num_warps=max(1, math.prod(block) * REDUCE_WARPS // REDUCE_TILE),
    )  # fmt: skip
    return out


def reduce(
    x: torch.Tensor,
    dims: tuple[int, ...],
    out_dtype: torch.dtype,
    term: int = TERM_X,
    y: torch.Tensor | None = None,
    sqrt: bool = False,
    cast_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Σ over `dims` of x (or x², or x·y for a same-shaped y), sqrt'ed if asked.

    Elements are cast to `cast_dtype` (torch.sum's `dtype=`) before the math, which runs in
    fp32, fp64 for fp64 results, int64 for integer and bool results. Returns x's shape with
    the reduced dims kept as size 1, in `out_dtype`.
    """
    keep_shape = [1 if d in dims else size for d, size in enumerate(x.shape)]
    if y is not None:  # both operands must share one layout: make both plain contiguous
        x, y = x.contiguous(), y.contiguous()
    x3, _ = reduction_layout(x, dims)
    y3 = x3 if y is None else reduction_layout(y, dims)[0]
    outer, reduced, inner = x3.shape
    if outer * inner == 0 or reduced == 0:  # an empty sum is 0
        return torch.zeros(keep_shape, dtype=out_dtype, device=x.device)
    partial_dtype = accumulate_dtype(out_dtype) if out_dtype.is_floating_point else torch.int64
    cast_dtype = x.dtype if cast_dtype is None else cast_dtype
    while True:
        out = _reduce_pass(x3, y3, out_dtype, partial_dtype, term, cast_dtype, sqrt)
        if out.shape[1] == 1:
            return out.view(keep_shape)
        # Partials are plain sums: the term and the cast belong to the first pass.
        x3 = y3 = out
        term, cast_dtype = TERM_X, partial_dtype


def sum_forward(x2d: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """Row sums of a 2-D tensor, `(rows,)` in `out_dtype`: how fused kernels (least squares)
    reduce their `(n, programs)` partials."""
    return reduce(x2d, (1,), out_dtype).view(x2d.shape[0])


def dot_forward(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Σ over the last dim of x·y for same-shaped x and y: shape `x.shape[:-1]`, x's dtype."""
    return reduce(x, (x.dim() - 1,), x.dtype, term=TERM_PRODUCT, y=y).view(x.shape[:-1])
