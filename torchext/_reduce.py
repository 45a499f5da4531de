"""Shape bookkeeping shared by the reductions: which dims, and the `(rows, cols)` view of them."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def normalize_dims(op: str, ndim: int, dim: int | Sequence[int] | None) -> tuple[int, ...]:
    """Reduced dims as sorted non-negative ints; `None` (or `()`, like torch) means all of them."""
    if dim is None:
        return tuple(range(ndim))
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    if not dims:
        return tuple(range(ndim))
    rank = max(ndim, 1)  # a 0-dim tensor accepts dim 0 and -1, as in torch
    out = []
    for d in dims:
        if not isinstance(d, int):
            raise TypeError(
                f"{op}(): dim must be int or a sequence of ints, got {type(d).__name__}"
            )
        if not -rank <= d < rank:
            raise IndexError(
                f"{op}: Dimension out of range (expected to be in range of [{-rank}, {rank - 1}], "
                f"but got {d})"
            )
        out.append(d % rank)
    for i, d in enumerate(out):
        if d in out[:i]:
            raise RuntimeError(f"{op}: dim {d} appears multiple times in the list of dims")
    return tuple(sorted(d for d in out if d < ndim))


def reduced_shape(shape: torch.Size, dims: tuple[int, ...], keepdim: bool) -> list[int]:
    return [1 if d in dims else s for d, s in enumerate(shape) if keepdim or d not in dims]

