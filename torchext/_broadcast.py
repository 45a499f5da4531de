"""Reducing a broadcast gradient back to the shape of the input it belongs to."""

from __future__ import annotations

import torch


def sum_to_shape(grad: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Sum `grad` over the dimensions broadcasting added or stretched, with torchext.sum.

    The backward of every broadcasting op: an input of shape (3, 1) used as (2, 3, 4) receives
    the sum over dim 0 and dim 2 of the incoming (2, 3, 4) gradient.
    """
    shape = tuple(shape)
    if tuple(grad.shape) == shape:
        return grad
    from torchext.sum import sum as torchext_sum

    lead = grad.dim() - len(shape)
    dims = list(range(lead)) + [
        lead + i for i, size in enumerate(shape) if size == 1 and grad.shape[lead + i] != 1
    ]
    return torchext_sum(grad, dim=dims, keepdim=True).reshape(shape)
