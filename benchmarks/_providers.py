"""The op table: one small entry per torchext op, and the providers that run it.

An entry names the torchext function, its eager torch reference (also what `torch.compile`
compiles), how to make inputs, and how many bytes each mode must move at the least — each input
read once and each output written once, scalars ignored. Achieved GB/s is that count over the
measured time; its fraction of the copy bandwidth is how close the op is to the memory limit.

Backward rows differentiate with respect to every tensor input, except for `mv` and
`least_squares`, where only `w` requires grad (the lesson's X and y are data).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

MODES = ("fwd", "bwd", "fwd+bwd")
FAMILIES = ("elementwise", "reduction", "matvec")
PROVIDERS = ("torchext", "eager", "compile")  # eager: torch; compile: torch.compile of it
PROVIDER_TITLES = {"torchext": "torchext", "eager": "torch eager", "compile": "torch.compile"}


@dataclass(frozen=True)
class Inputs:
    args: tuple  # positional arguments, the same for the torch reference and the torchext op
    grad_inputs: tuple[torch.Tensor, ...]  # the tensors that require grad


@dataclass(frozen=True)
class LauncherCall:
    """A kernel launcher (`triton_kernels.<module>.<function>`) and how to build its arguments.

    Used only by `--tune`, which passes block sizes straight to launchers that accept them.
    Wired for the launchers whose signatures have settled (sin, cos, mul); an op's helper adds
    its own once its launcher takes a block size (tests/test_benchmarks.py checks the wiring).
    """

    module: str
    function: str
    arguments: Callable[[Inputs, torch.Tensor], tuple]  # (inputs, grad of the output) -> args

    def resolve(self) -> Callable:
        return getattr(importlib.import_module(self.module), self.function)

    def accepts(self, names) -> bool:
        params = inspect.signature(self.resolve()).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return True
        return all(name in params for name in names)


@dataclass(frozen=True)
class OpCase:
    name: str  # the row label; `mul_scalar` is torchext.mul with a Python scalar
    torchext_name: str
    family: str
    reference: Callable  # eager torch, a module-level function so torch.compile can take it
    make_inputs: Callable[[tuple[int, ...], torch.dtype, torch.device], Inputs]
    bytes_formula: Mapping[str, str]  # mode -> the count in words, shown in the report
    bytes_moved: Callable[[str, tuple[int, ...], int], int]  # (mode, shape, itemsize) -> bytes
    launchers: Mapping[str, LauncherCall] = field(default_factory=dict)  # mode -> launcher


# Eager references. Module-level functions, so torch.compile sees ordinary Python.


def torch_sin(x):
    return torch.sin(x)


def torch_cos(x):
    return torch.cos(x)


def torch_mul(a, b):
    return a * b


def torch_sub(a, b):
    return a - b


def torch_sum(x):
    return x.sum()


def torch_norm(x):
    return x.norm()


def torch_dot(x, y):
    return torch.dot(x, y)


def torch_mv(X, w):
    return torch.mv(X, w)


def torch_least_squares(X, w, y):
    return ((X @ w - y) ** 2).sum()


# Inputs. Random normal values, never zeros (they can hide unwritten outputs and run faster).


def _vectors(count: int, scalar: float | None = None):
    def make(shape, dtype, device) -> Inputs:
        tensors = tuple(
            torch.randn(shape, dtype=dtype, device=device, requires_grad=True) for _ in range(count)
        )
        return Inputs(tensors + (() if scalar is None else (scalar,)), tensors)

    return make


def _matvec(with_target: bool):
    """X scaled by 1/sqrt(k) and small w, y: the loss over 65536 rows stays finite in fp16."""

    def make(shape, dtype, device) -> Inputs:
        m, k = shape
        X = (torch.randn(m, k, device=device) / k**0.5).to(dtype)
        w = (torch.randn(k, device=device) * 0.1).to(dtype).requires_grad_()
        if not with_target:
            return Inputs((X, w), (w,))
        y = (torch.randn(m, device=device) * 0.1).to(dtype)
        return Inputs((X, w, y), (w,))

    return make


# Bytes moved.


def _n_sized(fwd: int, bwd: int):
    """Bytes for ops that move `fwd`/`bwd` tensors of n elements; fwd+bwd is the sum."""
    counts = {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}

    def bytes_moved(mode, shape, itemsize):
        return counts[mode] * shape[0] * itemsize

    return bytes_moved


def _mv_bytes(mode, shape, itemsize):
    m, k = shape
    fwd = m * k + k + m  # read X, w; write X w
    bwd = m * k + m + k  # read X, grad; write dw = X^T grad
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[mode] * itemsize


def _least_squares_bytes(mode, shape, itemsize):
    m, k = shape
    counts = {
        "fwd": m * k + k + m,  # read X, w, y
        "bwd": m * k + m + k,  # an unfused backward: read X and the residual, write dw
        "fwd+bwd": m * k + m + 2 * k,  # the fused op: read X, w, y once, write dw
    }
    return counts[mode] * itemsize


def _elementwise_launchers(module: str, forward: str, backward: str):
    return {
        "fwd": LauncherCall(module, forward, lambda inp, grad: (inp.args[0].detach(),)),
        "bwd": LauncherCall(module, backward, lambda inp, grad: (grad, inp.args[0].detach())),
    }


def _forward_launcher(module: str, function: str, arguments: Callable) -> dict:
    """A forward launcher alone; `arguments` maps the op's detached arguments to its own."""
    return {"fwd": LauncherCall(module, function, lambda inp, grad: arguments(
        *(a.detach() if isinstance(a, torch.Tensor) else a for a in inp.args)))}


_UNARY = {"fwd": "read x, write y: 2n", "bwd": "read dy, x, write dx: 3n", "fwd+bwd": "5n"}
_BINARY = {"fwd": "read a, b, write y: 3n", "bwd": "read dy, a, b, write da, db: 5n",
           "fwd+bwd": "8n"}  # fmt: skip
_MATVEC_LS = "X is m×k; w, dw: k; y, residual: m"

CASES: tuple[OpCase, ...] = (
    OpCase("sin", "sin", "elementwise", torch_sin, _vectors(1), _UNARY, _n_sized(2, 3),
           _elementwise_launchers("triton_kernels.sin", "sin_forward", "sin_backward")),
    OpCase("cos", "cos", "elementwise", torch_cos, _vectors(1), _UNARY, _n_sized(2, 3),
           _elementwise_launchers("triton_kernels.sin", "cos_forward", "cos_backward")),
    OpCase("mul", "mul", "elementwise", torch_mul, _vectors(2), _BINARY, _n_sized(3, 5),
           _forward_launcher("triton_kernels.mul", "mul_forward", lambda a, b: (a, b, a.dtype))),
    OpCase("mul_scalar", "mul", "elementwise", torch_mul, _vectors(1, scalar=2.5),
           {"fwd": "read x, write y: 2n", "bwd": "read dy, write dx: 2n", "fwd+bwd": "4n"},
           _n_sized(2, 2)),
    OpCase("sub", "sub", "elementwise", torch_sub, _vectors(2),
           {"fwd": "read a, b, write y: 3n",
            "bwd": "read dy, write db = -dy: 2n (da is dy itself; torch aliases it)",
            "fwd+bwd": "5n"}, _n_sized(3, 2)),
    OpCase("sum", "sum", "reduction", torch_sum, _vectors(1),
           {"fwd": "read x: n", "bwd": "write dx (the expanded grad, materialised): n",
            "fwd+bwd": "2n"}, _n_sized(1, 1)),
    OpCase("norm", "norm", "reduction", torch_norm, _vectors(1),
           {"fwd": "read x: n", "bwd": "read x, write dx = dy·x/‖x‖: 2n", "fwd+bwd": "3n"},
           _n_sized(1, 2)),
    OpCase("dot", "dot", "reduction", torch_dot, _vectors(2),
           {"fwd": "read x, y: 2n", "bwd": "read x, y, write dx, dy: 4n", "fwd+bwd": "6n"},
           _n_sized(2, 4)),
    OpCase("mv", "mv", "matvec", torch_mv, _matvec(with_target=False),
           {"fwd": f"read X, w, write Xw: mk+k+m ({_MATVEC_LS})",
            "bwd": "read X, dy, write dw: mk+m+k", "fwd+bwd": "2mk+2m+2k (X read twice)"},
           _mv_bytes),
    OpCase("least_squares", "least_squares", "matvec", torch_least_squares,
           _matvec(with_target=True),
           {"fwd": "read X, w, y: mk+k+m",
            "bwd": "an unfused backward's bytes, read X, residual, write dw: mk+m+k (the fused "
                   "op did this work in forward, so its bwd rows can pass the copy bandwidth)",
            "fwd+bwd": "read X, w, y once, write dw: mk+m+2k"},
           _least_squares_bytes),
)  # fmt: skip

CASES_BY_NAME = {case.name: case for case in CASES}


def torchext_function(case: OpCase) -> Callable | None:
    """The torchext op for `case`, or None while its helper has not landed it yet."""
    import torchext

    return getattr(torchext, case.torchext_name, None)


def compiled_reference(case: OpCase, mode: str | None = None) -> Callable:
    """`torch.compile` of the eager reference, static shapes: compile's best case per shape.

    Dynamo's caches are reset first, so each (op, dtype, shape) gets a fresh specialisation
    instead of hitting the recompile limit or turning dynamic.
    """
    torch._dynamo.reset()
    return torch.compile(case.reference, dynamic=False, mode=mode)
