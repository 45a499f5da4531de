"""`with torchext.patch():` — unchanged torch code runs the lesson's ops on torchext kernels.

A `TorchFunctionMode` sees every `torch.*` call and `Tensor` method before dispatch. Calls that
torchext implements, with arguments it supports (floating dtypes, cpu/cuda tensors, no `out=`
tensor; `torch.norm` passes `out=None` itself), go to torchext; everything else — other ops,
other arguments (`norm(p=1)`, `sum(dtype=...)` on ints, ...) — goes to torch untouched, so
patching never changes what a program computes beyond rounding.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

import torchext
from torchext._validation import KERNEL_DTYPES

Route = Callable[..., Any]  # returns NotImplemented when torchext does not take the call


def _kernel_tensor(t: Any) -> bool:
    # Tensor subclasses other than Parameter keep their own semantics: they go to torch.
    return (
        type(t) in (torch.Tensor, torch.nn.Parameter)
        and t.dtype in KERNEL_DTYPES
        and t.device.type in ("cpu", "cuda")
    )


def _operand(x: Any) -> bool:
    return _kernel_tensor(x) or (isinstance(x, (int, float)) and not isinstance(x, bool))


def _unary(op: Callable[[torch.Tensor], torch.Tensor]) -> Route:
    def route(input, **kwargs):
        if kwargs or not _kernel_tensor(input):
            return NotImplemented
        return op(input)

    return route


def _binary(op: Callable[..., torch.Tensor], reflected: bool = False) -> Route:
    def route(input, other, **kwargs):
        if set(kwargs) - {"alpha"} or not (_operand(input) and _operand(other)):
            return NotImplemented
        if not (_kernel_tensor(input) or _kernel_tensor(other)):
            return NotImplemented
        if reflected:
            input, other = other, input
        return op(input, other, **kwargs)

    return route


def _sum(input, dim=None, keepdim=False, *, dtype=None, **kwargs):
    if kwargs or dtype is not None or not _kernel_tensor(input):
        return NotImplemented
    return torchext.sum(input, dim=dim, keepdim=keepdim)


def _norm(input, p="fro", dim=None, keepdim=False, dtype=None, **kwargs):
    if kwargs or p not in ("fro", 2, 2.0, None) or dim is not None or keepdim or dtype is not None:
        return NotImplemented
    return torchext.norm(input) if _kernel_tensor(input) else NotImplemented


def _vector_op(op_name: str) -> Route:
    def route(input, other, **kwargs):
        if kwargs or not (_kernel_tensor(input) and _kernel_tensor(other)):
            return NotImplemented
        return getattr(torchext, op_name)(input, other)

    return route


def _routes() -> dict[Callable, Route]:
    T = torch.Tensor
    unary = {
        f: _unary(op)
        for op, fs in (
            (torchext.sin, (torch.sin, T.sin)),
            (torchext.cos, (torch.cos, T.cos)),
        )
        for f in fs
    }
    mul, sub, rsub = _binary(torchext.mul), _binary(torchext.sub), _binary(torchext.sub, True)
    return {
        **unary,
        torch.mul: mul,
        T.mul: mul,
        T.__mul__: mul,
        T.__rmul__: _binary(torchext.mul, True),
        torch.sub: sub,
        T.sub: sub,
        T.__sub__: sub,
        T.__rsub__: rsub,
        torch.rsub: rsub,
        torch.sum: _sum,
        T.sum: _sum,
        torch.norm: _norm,
        T.norm: _norm,
        torch.dot: _vector_op("dot"),
        T.dot: _vector_op("dot"),
        torch.mv: _vector_op("mv"),
        T.mv: _vector_op("mv"),
    }


class TorchextMode(TorchFunctionMode):
    """Routes supported torch calls to torchext; counts them so users can see what was routed."""

    def __init__(self) -> None:
        super().__init__()
        self.routes = _routes()
        self.routed: dict[str, int] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        route = self.routes.get(func)
        if route is not None:
            # `out=None` is no out tensor: `torch.norm(x)` passes it on its own.
            routed_kwargs = {k: v for k, v in kwargs.items() if not (k == "out" and v is None)}
            out = route(*args, **routed_kwargs)
            if out is not NotImplemented:
                name = getattr(func, "__name__", str(func))
                self.routed[name] = self.routed.get(name, 0) + 1
                return out
        return func(*args, **kwargs)


@contextmanager
def patch() -> Iterator[TorchextMode]:
    """Route `torch.sin`, `torch.dot`, `Tensor.__mul__`, `Tensor.sum`, ... to torchext.

    Yields the mode; `mode.routed` counts the calls that ran on torchext kernels.
    """
    mode = TorchextMode()
    with mode:
        yield mode
