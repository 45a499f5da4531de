"""Memory layout of elementwise results: torch's strides, and operands brought to them.

torch's elementwise ops give their result the layout of their inputs (a channels_last input
gives a channels_last result, a transposed one a transposed result; mixed and broadcast inputs
follow TensorIterator's ordering rules). Rather than re-implement those rules, `empty_output`
asks torch: the same op on meta tensors (shapes and strides, no data, no kernel) gives the
strides, cached per layout of the operands.

The kernels then index the result's dense memory in storage order, which is the same flat index
for every operand brought to the result's layout (`in_layout`: a view when an operand already
has it, else one copy, as the contiguous-only kernels copied before).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch._subclasses.fake_tensor import is_fake

Operand = torch.Tensor | bool | int | float
LayoutOp = Callable[..., torch.Tensor]  # the torch op whose result layout ours must have


def unary(x: torch.Tensor) -> torch.Tensor:
    """The layout of `torch.sin(x)`, `torch.cos(x)`: TensorIterator's unary rule."""
    return torch.sin(x)


def binary(a: Operand, b: Operand) -> torch.Tensor:
    """The layout of `a * b`, `a - b` (any broadcasting binary op, numbers included)."""
    return torch.mul(a, b)


def grad_times_unary(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The layout of torch's sin/cos gradient, `grad * x.cos()` (and `grad * -x.sin()`)."""
    return torch.mul(grad, torch.cos(x))


def empty_output(
    layout_op: LayoutOp, *operands: Operand, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """An uninitialised result with the shape and strides torch's `layout_op(*operands)` has.

    Works on real and on fake tensors (a custom op's fake kernel calls it too, so that compiled
    graphs see the strides the kernel produces).
    """
    if any(isinstance(t, torch.Tensor) and is_fake(t) for t in operands):
        # Fake tensors, possibly of symbolic sizes: torch's op on them touches no data.
        reference = layout_op(*operands)
        shape, strides = reference.shape, reference.stride()
    else:
        shape, strides = _torch_layout(layout_op, tuple(map(_layout_spec, operands)))
    return torch.empty_strided(shape, strides, dtype=dtype, device=device)


def _layout_spec(operand: Operand) -> tuple | type:
    """What the layout of a result depends on: shapes, strides, dtypes, the kinds of numbers."""
    if isinstance(operand, torch.Tensor):
        return tuple(operand.shape), operand.stride(), operand.dtype
    return type(operand)


def _meta_operand(spec: tuple | type) -> Operand:
    if isinstance(spec, tuple):
        shape, strides, dtype = spec
        return torch.empty_strided(shape, strides, dtype=dtype, device="meta")
    return spec(1)  # a Python number of that kind


@functools.lru_cache(maxsize=4096)
def _torch_layout(layout_op: LayoutOp, specs: tuple) -> tuple[torch.Size, tuple[int, ...]]:
    reference = layout_op(*map(_meta_operand, specs))
    return reference.shape, reference.stride()


def in_layout(t: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """`t` broadcast to `out`'s shape and stored with `out`'s strides (a copy if it is not).

    `out` is dense (torch never gives an elementwise result gaps or overlaps), so after this
    flat index i of `t`'s memory is the element that flat index i of `out`'s memory holds.
    """
    t = t.expand(out.shape)
    if _same_layout(t, out):
        return t
    return torch.empty_like(out, dtype=t.dtype).copy_(t)


def _same_layout(t: torch.Tensor, out: torch.Tensor) -> bool:
    # Dimensions of size 1 are never stepped over, so their strides do not matter.
    return all(
        size == 1 or a == b for size, a, b in zip(out.shape, t.stride(), out.stride(), strict=True)
    )
