"""Forward mode, double backward and forward-over-reverse of every op run on torchext's kernels.

A TorchDispatchMode sees every operator call that reaches the dispatcher (a custom op's launcher
runs below it, so a `torchext::` op is one call). Each call is attributed to torchext's code when
a frame of the `torchext` package is on the Python stack. Our code may call torchext custom ops
and the non-math aten ops in `NON_MATH` (views, metadata queries, allocations, copies); torch's
own machinery (the autograd engine, torch.func) may in addition sum gradients that reach one
tensor along two paths (`ENGINE_SUMS`). Anything else is math that did not run on our kernels.

Values are checked against torch's own ops on the same inputs, for every dtype.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch.func import jvp, vjp
from torch.utils._python_dispatch import TorchDispatchMode

import torchext
from tests.conftest import TOLERANCES, assert_close

aten = torch.ops.aten

NON_MATH = {
    # views
    aten.view, aten._unsafe_view, aten.expand, aten.unsqueeze, aten.squeeze, aten.transpose,
    aten.permute, aten.t, aten.as_strided, aten.slice, aten.select, aten.alias, aten.detach,
    # metadata queries (forward AD's layout checks, dtype promotion)
    aten.is_same_size, aten._has_same_storage_numel, aten.promote_types,
    # allocations and constant fills (read no input values): results of our kernels, zeros the
    # engine and torch.func make for missing gradients and tangents, norm's unit numerator
    aten.empty, aten.empty_like, aten.empty_strided, aten.new_empty, aten.zeros, aten.zeros_like,
    aten.ones_like,
    # copies (a dtype cast is a copy too)
    aten._to_copy, aten.copy_, aten.clone,
}
# The autograd engine adds the gradients that reach one tensor by two paths (its InputBuffer):
# torch's sum, not an op's formula, so allowed only where no torchext frame called it.
ENGINE_SUMS = {aten.add}

_TORCHEXT_DIR = str(Path(torchext.__file__).parent)


def _called_from_torchext() -> bool:
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_filename.startswith(_TORCHEXT_DIR):
            return True
        frame = frame.f_back
    return False


class OpCounter(TorchDispatchMode):
    """Counts every operator call, split by who called it: torchext's code or torch's."""

    def __init__(self) -> None:
        super().__init__()
        self.by_torchext: Counter = Counter()
        self.by_torch: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        (self.by_torchext if _called_from_torchext() else self.by_torch)[func] += 1
        return func(*args, **(kwargs or {}))

    def torchext_ops(self) -> set:
        return {f for f in self.by_torchext | self.by_torch if f.namespace == "torchext"}

    def math_not_on_our_kernels(self) -> dict[str, list[str]]:
        return {
            "by torchext": _math(self.by_torchext, NON_MATH),
            "by torch": _math(self.by_torch, NON_MATH | ENGINE_SUMS),
        }


def _math(ops: Counter, allowed: set) -> list[str]:
    """The ops that are neither torchext's nor in `allowed`."""
    return sorted(str(f) for f in ops
                  if f.namespace != "torchext" and f.overloadpacket not in allowed)  # fmt: skip


_SAMPLES = torch.Generator().manual_seed(0)  # the same inputs on every run, whatever ran first


def _rand(*shape: int) -> torch.Tensor:
    return torch.randn(shape, generator=_SAMPLES, dtype=torch.float64)


# name: (torchext function, torch reference, float64 sample inputs)
CASES: dict[str, tuple[Callable, Callable, tuple[torch.Tensor, ...]]] = {
    "sin": (torchext.sin, torch.sin, (_rand(5),)),
    "cos": (torchext.cos, torch.cos, (_rand(5),)),
    "mul": (torchext.mul, torch.mul, (_rand(3, 4), _rand(4))),
    "mul_scalar": (lambda x: torchext.mul(x, 2.5), lambda x: x * 2.5, (_rand(3, 4),)),
    "sub": (lambda a, b: torchext.sub(a, b, alpha=2), lambda a, b: torch.sub(a, b, alpha=2),
            (_rand(3, 4), _rand(4))),
    "sub_scalar": (lambda x: torchext.sub(2, x), lambda x: 2 - x, (_rand(3, 4),)),
    "sum": (lambda x: torchext.sum(x, dim=1), lambda x: x.sum(dim=1), (_rand(3, 4),)),
    "norm": (torchext.norm, torch.norm, (_rand(3, 4),)),
    "norm_dim": (lambda x: torchext.norm(x, dim=1), lambda x: torch.norm(x, dim=1),
                 (_rand(3, 4),)),
    "dot": (torchext.dot, torch.dot, (_rand(5), _rand(5))),
    "mv": (torchext.mv, torch.mv, (_rand(3, 4), _rand(4))),
    "least_squares": (torchext.least_squares, lambda X, w, y: ((X @ w - y) ** 2).sum(),
                      (_rand(3, 4), _rand(4), _rand(3))),
}  # fmt: skip


def _jvp(f, inputs, tangents):
    return jvp(f, inputs, tangents)


def _double_backward(f, inputs, grad_out, grad_grads):
    """d/d(inputs, grad_out) of ⟨grad_grads, d f/d inputs · grad_out⟩, as gradgradcheck does."""
    inputs = tuple(t.detach().requires_grad_() for t in inputs)
    grad_out = grad_out.detach().requires_grad_()
    grads = torch.autograd.grad(f(*inputs), inputs, grad_out, create_graph=True)
    return torch.autograd.grad(grads, (*inputs, grad_out), grad_grads, allow_unused=True)


def _forward_over_reverse(f, inputs, tangents, grad_out):
    return jvp(lambda *xs: vjp(f, *xs)[1](grad_out), inputs, tangents)


def _samples(name: str, dtype: torch.dtype):
    """Inputs, tangents, an output gradient and input grad-grads for case `name` in `dtype`."""
    g = torch.Generator().manual_seed(0)
    _, ref, inputs = CASES[name]

    def like(t: torch.Tensor) -> torch.Tensor:
        return torch.randn(t.shape, generator=g, dtype=torch.float64).to(dtype)

    inputs = tuple(t.to(dtype) for t in inputs)
    out = ref(*(t.double() for t in inputs))
    return inputs, tuple(map(like, inputs)), like(out), tuple(map(like, inputs))


MODES = {
    "jvp": lambda f, x, t, v, u: _jvp(f, x, t),
    "double_backward": lambda f, x, t, v, u: _double_backward(f, x, v, u),
    "forward_over_reverse": lambda f, x, t, v, u: _forward_over_reverse(f, x, t, v),
}


def _flat(result) -> list[torch.Tensor]:
    if isinstance(result, torch.Tensor):
        return [result]
    return [t for part in result if part is not None for t in _flat(part)]


def _float64(samples):
    return [tuple(t.double() for t in s) if isinstance(s, tuple) else s.double() for s in samples]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", CASES)
def test_derivatives_run_on_our_kernels_and_match_torch(name, mode, dtype):
    """No aten math op runs; the values are torch's reference in float64 on the same (rounded)
    inputs."""
    ours, ref, _ = CASES[name]
    samples = _samples(name, dtype)
    with OpCounter() as counter:
        actual = _flat(MODES[mode](ours, *samples))
    assert counter.torchext_ops(), "nothing ran on torchext's kernels"
    assert counter.math_not_on_our_kernels() == {"by torchext": [], "by torch": []}
    expected = _flat(MODES[mode](ref, *_float64(samples)))
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        assert a.dtype == dtype
        _assert_close_normwise(a.double(), e, dtype)


def _assert_close_normwise(actual: torch.Tensor, expected: torch.Tensor, dtype) -> None:
    """Within `dtype`'s tolerance of the largest element, 8 roundings wide: a derivative's
    element can be a sum of terms as large as the rest of the result that cancel, so in half
    precision it is as exact as those terms are, not as itself (torch's own is no closer)."""
    atol, rtol = TOLERANCES[dtype]
    largest = expected.abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, atol=8 * (atol + rtol * largest), rtol=8 * rtol)


# The compiled path's autograd: each custom op called directly, as torch.compile's graphs call it,
# with the torch expression it computes.
ops = torch.ops.torchext
CUSTOM_OP_CASES = {
    "sin": (ops.sin, torch.sin, (_rand(5),)),
    "cos_backward": (ops.cos_backward, lambda g, x: -g * x.sin(), (_rand(5), _rand(5))),
    "mul": (lambda a, b: ops.mul(a, b, torch.float64), torch.mul, (_rand(3, 4), _rand(4))),
    "sub": (lambda a, b: ops.sub(a, b, 2, torch.float64), lambda a, b: torch.sub(a, b, alpha=2),
            (_rand(3, 4), _rand(4))),
    "sum": (lambda x: ops.sum(x, [1], False, torch.float64), lambda x: x.sum(1), (_rand(3, 4),)),
    "norm": (lambda x: ops.norm(x, [1], True), lambda x: x.norm(dim=1, keepdim=True),
             (_rand(3, 4),)),
    "dot": (ops.dot, torch.dot, (_rand(5), _rand(5))),
    "mv": (ops.mv, torch.mv, (_rand(3, 4), _rand(4))),
    "least_squares": (lambda X, w, y: ops.least_squares(X, w, y, True, True)[0],
                      lambda X, w, y: ((X @ w - y) ** 2).sum(), (_rand(3, 4), _rand(4), _rand(3))),
}  # fmt: skip


@pytest.mark.parametrize("name", CUSTOM_OP_CASES)
def test_custom_ops_double_backward_on_our_kernels(name):
    """Each custom op's registered autograd is its Function's formula: differentiable again, on
    our kernels, and equal to torch's second derivatives."""
    op, ref, inputs = CUSTOM_OP_CASES[name]
    grad_out = torch.randn_like(ref(*inputs))
    grad_grads = tuple(torch.randn_like(t) for t in inputs)
    with OpCounter() as counter:
        actual = _double_backward(op, inputs, grad_out, grad_grads)
    assert counter.torchext_ops(), "nothing ran on torchext's kernels"
    assert counter.math_not_on_our_kernels() == {"by torchext": [], "by torch": []}
    expected = _double_backward(ref, inputs, grad_out, grad_grads)
    for a, e, wrt in zip(actual, expected, (*inputs, grad_out), strict=True):
        zero = torch.zeros_like(wrt)  # a linear op's second derivative: None (unused) or zeros
        assert_close(zero if a is None else a, zero if e is None else e)


def test_each_custom_op_registers_its_functions_own_formula():
    """One formula per op: the autograd registered on each custom op (torch.compile's path) is
    the eager Function's own setup_context and backward, not a second copy that can drift."""
    from torch._library.custom_ops import OPDEFS

    def module(name):  # `torchext.sin` and friends are the public functions, not the modules
        return sys.modules[f"torchext.{name}"]

    sin, mul, sub, norm, mv = map(module, ("sin", "mul", "sub", "norm", "mv"))
    functions = {
        "sin": sin.SinFunction, "cos": sin.CosFunction,
        "sin_backward": sin.SinBackwardFunction, "cos_backward": sin.CosBackwardFunction,
        "mul": mul.MulFunction, "mul_scalar": mul.MulScalarFunction,
        "sub": sub.SubFunction, "sub_scalar": sub.SubScalarFunction,
        "sum": module("sum").SumFunction, "norm": norm.NormFunction,
        "norm_backward": norm.NormBackwardFunction, "dot": module("dot").DotFunction,
        "mv": mv.MvFunction, "outer": mv.OuterFunction,
        "least_squares": module("least_squares").LeastSquaresFunction,
    }  # fmt: skip
    registered = {name.removeprefix("torchext::"): op for name, op in OPDEFS.items()
                  if name.startswith("torchext::")}  # fmt: skip
    assert set(registered) == set(functions)
    for name, op in registered.items():
        assert op._backward_fn is functions[name].backward, name
        assert op._setup_context_fn is functions[name].setup_context, name
