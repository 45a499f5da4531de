"""Launch plumbing shared by every kernel: pick the compiled kernel or Triton's interpreter.

CUDA tensors run the compiled kernel. CPU tensors run the same kernel source through Triton's
interpreter, so every op works (slowly) on a machine without a GPU and CPU tests exercise the
very code that runs on the GPU.
"""

from __future__ import annotations

import contextlib
import functools
import sys

import torch
import triton
import triton.language as tl

# Elementwise kernels: 1024 elements per program, 4 warps (Triton tutorial 01's choice; a
# multiple of 128 keeps loads vectorised on every NVIDIA generation).
ELEMENTWISE_BLOCK = 1024
ELEMENTWISE_WARPS = 4


class _InterpretedKernel:
    """A kernel run by Triton's interpreter on CPU tensors, `kernel[grid](...)` like the real one.

    `InterpretedFunction(kernel.fn)` interprets the kernel's own body, but the `@triton.jit`
    helpers it calls (triton.language's `tl.sum`, `tl.zeros`, ..., and our own, such as
    `triton_kernels.binary.load_operand`) stay compiled-only and refuse to run. For the launch,
    they are swapped for interpreted twins, which is what `TRITON_INTERPRET=1` does for the whole
    process at import time.
    """

    def __init__(self, kernel: triton.JITFunction) -> None:
        from triton.runtime.interpreter import InterpretedFunction

        self.fn = InterpretedFunction(kernel.fn)
        self.helpers = _interpreted_twins(sys.modules[kernel.fn.__module__], skip=kernel)

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            with _interpreted_helpers(self.helpers):
                return self.fn[grid](*args, **kwargs)

        return launch


Twins = tuple[tuple[object, str, object, object], ...]  # (module, name, compiled, interpreted)


def _interpreted_twins(*modules: object, skip: object = None) -> Twins:
    """Each `@triton.jit` function of `modules` (but `skip`), with its interpreted twin."""
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    return tuple(
        (module, name, helper, InterpretedFunction(helper.fn))
        for module in modules
        for name, helper in vars(module).items()
        if isinstance(helper, JITFunction) and helper is not skip
    )


@functools.cache
def _language_helpers() -> Twins:
    with contextlib.suppress(ImportError):  # imports tl.standard by name; must see the originals
        import triton.experimental.gluon.language  # noqa: F401
    return _interpreted_twins(tl, tl.standard)


@contextlib.contextmanager
def _interpreted_helpers(kernel_helpers: Twins):
    helpers = _language_helpers() + kernel_helpers
    patched = _patched_by_interpreter()
    before = [dict(vars(obj)) for obj in patched]
    for module, name, _, interpreted in helpers:
        setattr(module, name, interpreted)
    try:
        yield
    finally:
        for module, name, compiled, _ in helpers:
            setattr(module, name, compiled)
        for obj, saved in zip(patched, before, strict=True):
            _restore_attributes(obj, saved)


def _patched_by_interpreter() -> tuple[object, ...]:
    """What Triton's interpreter patches when a kernel calls an interpreted helper.

    `InterpretedFunction.__call__` (a device-function call such as `tl.sum`) patches
    triton.language and never restores it; left so, the next CUDA compile in this process sees
    interpreter builtins and fails.
    """
    core = tl.core
    patched = (tl, core, tl.math, core.tensor, getattr(core, "tensor_descriptor_base", None))
    return tuple(obj for obj in patched if obj is not None)  # older tritons: no descriptors


def _restore_attributes(obj: object, saved: dict[str, object]) -> None:
    for name, value in list(vars(obj).items()):
        if name not in saved:
            # Modules keep additions: the interpreter caches rewritten helpers whose globals
            # need them. Classes get patched methods (`tensor.__repr__`) removed.
            if isinstance(obj, type):
                delattr(obj, name)
        elif value is not saved[name]:
            setattr(obj, name, saved[name])


@functools.cache
def _interpreted(kernel: triton.JITFunction) -> _InterpretedKernel:
    return _InterpretedKernel(kernel)


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


def math_dtype(dtype: torch.dtype) -> tl.dtype:
    """Like `compute_dtype`, but integer and bool results are computed exactly in int64."""
    if dtype.is_floating_point:
        return compute_dtype(dtype)
    return tl.int64
