"""Helpers for the `vmap` staticmethods of our Functions.

`generate_vmap_rule=True` cannot see through a Triton launch, so each Function says how a
batch dimension maps through it. Elementwise ops only need every batched input to carry the
batch at dim 0 (unbatched ones are broadcast against it).
"""

from __future__ import annotations

import torch


def batch_first(
    batch_size: int, in_dims: tuple[int | None, ...], *tensors: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """Every tensor with its batch at dim 0; unbatched ones expanded to the batch (a view)."""
    out = []
    for t, dim in zip(tensors, in_dims, strict=False):
        if not isinstance(t, torch.Tensor):
            out.append(t)
        elif dim is None:
            out.append(t.unsqueeze(0).expand(batch_size, *t.shape))
        else:
            out.append(t.movedim(dim, 0))
    return tuple(out)


def batch_first_aligned(
    batch_size: int, in_dims: tuple[int | None, ...], *tensors: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """Batched tensors with the batch at dim 0 and padded so torch's right-aligned broadcasting
    of the per-sample shapes still holds; unbatched tensors are left as they are.

    E.g. per-sample shapes () and (3,) batched as (B,) and (3,): the first becomes (B, 1).
    """
    logical_ndim = max(
        (t.dim() - (dim is not None) for t, dim in zip(tensors, in_dims, strict=True)), default=0
    )
    out = []
    for t, dim in zip(tensors, in_dims, strict=True):
        if dim is None:
            out.append(t)
            continue
        t = t.movedim(dim, 0)
        out.append(t.reshape(batch_size, *([1] * (logical_ndim - t.dim() + 1)), *t.shape[1:]))
    return tuple(out)
