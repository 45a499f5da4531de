"""Broadcasting binary ops (`mul`, `sub`): their operands, result dtype, and gradient reduction."""

from __future__ import annotations

import numbers

import torch

from torchext._validation import (
    KERNEL_DTYPES,
    check_broadcastable,
    check_device_supported,
    check_not_complex,
    check_same_device,
    result_type,
)
from torchext.sum import sum as torchext_sum

Number = bool | int | float


def python_number(op: str, value) -> Number | None:
    """`value` as a plain bool/int/float if it is a real number (numpy's too), else None."""
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
        raise OverflowError(f"{op}: Python int {value} does not fit in int64")
    if isinstance(value, (bool, int, float)):  # a tuple: torch 2.8's Dynamo can't trace `|`
        return value
    if isinstance(value, numbers.Complex) and not isinstance(value, numbers.Real):
        raise TypeError(f"{op}: complex numbers are not supported (got {value!r}); use torch.{op}")
    if isinstance(value, numbers.Integral):
        return python_number(op, int(value))
    if isinstance(value, numbers.Real):
        return float(value)
    return None


def _operand(op: str, arg: str, position: int, value) -> torch.Tensor | Number:
    if isinstance(value, torch.Tensor):
        check_not_complex(op, value)
        check_device_supported(op, value)
        if value.is_floating_point() and value.dtype not in KERNEL_DTYPES:
            raise TypeError(f"{op}: unsupported dtype {value.dtype}; use torch.{op}")
        return value
    number = python_number(op, value)
    if number is None:
        raise TypeError(
            f"{op}(): argument '{arg}' (position {position}) must be Tensor, "
            f"not {type(value).__name__}"
        )
    return number


def _wrapped_number(value: Number) -> torch.Tensor:
    """A number standing in for a tensor, typed as torch wraps one (bool, int64, default float)."""
    if isinstance(value, bool):
        return torch.tensor(value, dtype=torch.bool)
    if isinstance(value, int):
        return torch.tensor(value, dtype=torch.int64)
    return torch.tensor(value, dtype=torch.get_default_dtype())


def broadcast_operands(
    op: str, input, other
) -> tuple[torch.Tensor | Number, torch.Tensor | Number, torch.dtype]:
    """Checked operands of `op(input, other)` and the dtype torch's type promotion gives.

    Python numbers stay numbers (the kernels take them as arguments); at least one operand is
    returned as a tensor. Raises what torch raises for non-numbers, unbroadcastable shapes and
    tensors on different devices; complex and exotic float dtypes are refused by name.
    """
    input = _operand(op, "input", 1, input)
    other = _operand(op, "other", 2, other)
    if not isinstance(input, torch.Tensor) and not isinstance(other, torch.Tensor):
        input = _wrapped_number(input)  # torch.mul(2, 3) is a 0-dim tensor
    out_dtype = result_type(input, other)
    if isinstance(input, torch.Tensor) and isinstance(other, torch.Tensor):
        input, other = _on_one_device(op, input, other)
        check_broadcastable(op, input.shape, other.shape)
    return input, other, out_dtype


def _on_one_device(
    op: str, input: torch.Tensor, other: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Like torch, a 0-dim CPU tensor may join an op on another device. It is copied there
    (`non_blocking`: a host-to-device copy from pageable memory is staged at once and need not
    wait for the stream) and then read through its pointer like any 0-dim operand."""
    if input.device == other.device:
        return input, other
    if other.dim() == 0 and other.device.type == "cpu":
        return input, other.to(input.device, non_blocking=True)
    if input.dim() == 0 and input.device.type == "cpu":
        return input.to(other.device, non_blocking=True), other
    check_same_device(op, input, other)
    return input, other


def sum_to_shape(grad: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Sum `grad` over the dimensions broadcasting added or stretched, with torchext.sum.

    The backward of every broadcasting op: an input of shape (3, 1) used as (2, 3, 4) receives
    the sum over dims 0 and 2 of the incoming (2, 3, 4) gradient. A gradient already of `shape`
    is returned as it is.
    """
    shape = tuple(shape)
    if tuple(grad.shape) == shape:
        return grad
    lead = grad.dim() - len(shape)
    dims = tuple(range(lead)) + tuple(
        lead + i for i, size in enumerate(shape) if size == 1 and grad.shape[lead + i] != 1
    )
    if not dims:  # torchext.sum reads `dim=()` as "all dims", like torch
        return grad.reshape(shape)
    return torchext_sum(grad, dim=dims, keepdim=True).reshape(shape)
