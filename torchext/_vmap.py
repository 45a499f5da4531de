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
