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
    if len(set(out)) != len(out):
        raise RuntimeError(f"{op}: dim {out} appears multiple times in the list of dims")
    return tuple(sorted(d for d in out if d < ndim))


def as_rows(x: torch.Tensor, dims: tuple[int, ...]) -> tuple[torch.Tensor, list[int]]:
    """`x` as `(rows, cols)` with the reduced `dims` last, and the shape with them kept as 1."""
    kept = [d for d in range(x.dim()) if d not in dims]
    x2d = x.permute(kept + list(dims)).reshape(
        _prod(x.shape[d] for d in kept), _prod(x.shape[d] for d in dims)
    )
    keepdim_shape = [1 if d in dims else size for d, size in enumerate(x.shape)]
    return x2d, keepdim_shape


def reduced_shape(shape: torch.Size, dims: tuple[int, ...], keepdim: bool) -> list[int]:
    return [1 if d in dims else s for d, s in enumerate(shape) if keepdim or d not in dims]


def _prod(sizes) -> int:
    out = 1
    for s in sizes:
        out *= s
    return out
