"""Launch plumbing shared by every kernel: pick the compiled kernel or Triton's interpreter.

CUDA tensors run the compiled kernel. CPU tensors run the same kernel source through Triton's
interpreter, so every op works (slowly) on a machine without a GPU and CPU tests exercise the
very code that runs on the GPU.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

# Elementwise kernels: 1024 elements per program, 4 warps (Triton tutorial 01's choice; a
# multiple of 128 keeps loads vectorised on every NVIDIA generation).
ELEMENTWISE_BLOCK = 1024
ELEMENTWISE_WARPS = 4


@functools.cache
def _interpreted(kernel: triton.JITFunction):
    from triton.runtime.interpreter import InterpretedFunction

    return InterpretedFunction(kernel.fn)


def kernel_for(kernel: triton.JITFunction, device: torch.device):
    """The launchable form of `kernel` for tensors on `device`."""
    if device.type == "cuda":
        return kernel
    if device.type == "cpu":
        # Under TRITON_INTERPRET=1 `triton.jit` already returns an interpreted function.
        return kernel if _is_interpreted(kernel) else _interpreted(kernel)
    raise RuntimeError(f"torchext kernels run on cpu (interpreted) or cuda, not {device.type}")


def _is_interpreted(kernel) -> bool:
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(kernel, InterpretedFunction)


def compute_dtype(dtype: torch.dtype) -> tl.dtype:
    """The dtype kernels do their math in: fp64 stays fp64, everything narrower goes to fp32."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    """The torch dtype of fp32/fp64 partial sums for a reduction over `dtype` inputs."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def elementwise_grid(numel: int, block: int = ELEMENTWISE_BLOCK) -> tuple[int]:
    return (triton.cdiv(numel, block),)
