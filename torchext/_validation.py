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
