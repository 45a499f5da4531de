"""Input checks that raise what torch raises, before any kernel sees the input."""

from __future__ import annotations

import torch

KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(op: str, arg: str, value, position: int = 1) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(
            f"{op}(): argument '{arg}' (position {position}) must be Tensor, "
            f"not {type(value).__name__}"
        )


def check_same_device(op: str, *tensors: torch.Tensor) -> None:
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        first, second = sorted(devices, key=str)[:2]
        raise RuntimeError(
            f"{op}: Expected all tensors to be on the same device, but found at least two "
            f"devices, {first} and {second}!"
        )


def check_device_supported(op: str, t: torch.Tensor) -> None:
    if t.device.type not in ("cpu", "cuda", "meta"):
        raise RuntimeError(
            f"{op}: torchext kernels run on cpu (interpreted) or cuda tensors, got {t.device}"
        )


def check_not_complex(op: str, t: torch.Tensor) -> None:
    if t.is_complex():
        raise TypeError(f"{op}: complex tensors are not supported (got {t.dtype}); use torch.{op}")


def float_input(op: str, t: torch.Tensor) -> torch.Tensor:
    """Integer and bool inputs of a floating-valued op promote like torch: to the default dtype."""
    check_not_complex(op, t)
    check_device_supported(op, t)
    if t.dtype in KERNEL_DTYPES:
        return t
    if t.is_floating_point():  # float8 and friends: no kernel math for them
        raise TypeError(f"{op}: unsupported dtype {t.dtype}")
    return t.to(torch.get_default_dtype())


def binary_operands(op: str, input, other) -> tuple[torch.Tensor, torch.Tensor, torch.dtype]:
    """Both operands as tensors on one device, and the result dtype torch would give.

    A Python number becomes a 0-dim tensor (fp64/int64, so no precision is lost before the kernel
    converts it); the result dtype is taken from the original operands, because a Python number
    does not promote a tensor the way a 0-dim tensor of the same value would.
    """
    check_tensor(op, "input", input)
    if not isinstance(other, (torch.Tensor, bool, int, float)):
        raise TypeError(
            f"{op}(): argument 'other' (position 2) must be Tensor or Number, "
            f"not {type(other).__name__}"
        )
    out_dtype = result_type(input, other)
    for t in (input, other):
        if isinstance(t, torch.Tensor):
            check_not_complex(op, t)
            check_device_supported(op, t)
    if isinstance(other, complex) or out_dtype.is_complex:
        raise TypeError(f"{op}: complex results are not supported; use torch.{op}")
    if not isinstance(other, torch.Tensor):
        wrapped = torch.float64 if isinstance(other, float) else torch.int64
        other = torch.full((), other, dtype=wrapped, device=input.device)
    elif other.device != input.device:
        # torch lets a 0-dim CPU tensor take part in a CUDA op (it becomes a kernel argument).
        if other.dim() == 0 and other.device.type == "cpu":
            other = other.to(input.device)
        elif input.dim() == 0 and input.device.type == "cpu":
            input = input.to(other.device)
        else:
            check_same_device(op, input, other)
    if out_dtype not in KERNEL_DTYPES and out_dtype.is_floating_point:
        raise TypeError(f"{op}: unsupported dtype {out_dtype}")
    check_broadcastable(op, input.shape, other.shape)
    return input, other, out_dtype


def check_broadcastable(op: str, a: torch.Size, b: torch.Size) -> None:
    for dim in range(-1, -min(len(a), len(b)) - 1, -1):
        if a[dim] != b[dim] and 1 not in (a[dim], b[dim]):
            raise RuntimeError(
                f"{op}: The size of tensor a ({a[dim]}) must match the size of tensor b "
                f"({b[dim]}) at non-singleton dimension {max(len(a), len(b)) + dim}"
            )


def _promote(higher: torch.dtype | None, lower: torch.dtype | None) -> torch.dtype | None:
    """c10's combine_categories: a lower-priority operand only promotes across categories."""
    if higher is None or lower is None:
        return lower if higher is None else higher
    if higher.is_floating_point:
        return higher
    if higher == torch.bool or lower.is_floating_point:
        return torch.promote_types(higher, lower)
    return higher


def result_type(input: torch.Tensor, other) -> torch.dtype:
    """`torch.result_type(input, other)`, in a form torch.compile can trace.

    Priority: tensors with dimensions, then 0-dim tensors, then Python numbers; a lower group
    only matters when it is of a higher category (bool < integer < floating).
    """
    groups: dict[str, torch.dtype | None] = {"dim": None, "zero": None, "number": None}
    for value in (input, other):
        if isinstance(value, torch.Tensor):
            group, dtype = ("dim" if value.dim() else "zero"), value.dtype
        elif isinstance(value, bool):
            group, dtype = "number", torch.bool
        elif isinstance(value, int):
            group, dtype = "number", torch.int64
        else:
            group, dtype = "number", torch.get_default_dtype()
        groups[group] = (
            dtype if groups[group] is None else torch.promote_types(groups[group], dtype)
        )
    return _promote(groups["dim"], _promote(groups["zero"], groups["number"]))
