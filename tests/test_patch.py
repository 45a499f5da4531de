"""`torchext.patch()` routes unchanged torch code to torchext, and nothing else."""

from collections import Counter

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import torchext
from tests.conftest import assert_close


def lesson_code(x, w, X, y):
    """Unchanged user code: every call here is one torchext implements."""
    a = 2 * torch.dot(x, x)
    b = (x * x).sum() + x.sum()
    c = torch.sin(x).sum() + x.cos().sum()
    d = x.norm() - torch.norm(x * 3)
    e = ((torch.mv(X, w) - y) * (X.mv(w) - y)).sum()
    return a + b + c + d + e


def _inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, generator=g, dtype=torch.float64, requires_grad=True)
    X = torch.randn(6, 5, generator=g, dtype=torch.float64)
    y = torch.randn(6, generator=g, dtype=torch.float64)
    return x, w, X, y


def test_patched_code_runs_on_torchext_and_matches_torch():
    x, w, X, y = _inputs()
    ref = lesson_code(x, w, X, y)
    ref_grads = torch.autograd.grad(ref, (x, w))
    with torchext.patch() as mode:
        out = lesson_code(x, w, X, y)
        grads = torch.autograd.grad(out, (x, w))
    assert_close(out, ref)
    for g, g_ref in zip(grads, ref_grads, strict=True):
        assert_close(g, g_ref)
    routed = set(mode.routed)
    # `x * x`, `2 * x` and `a - b` reach the mode as Tensor.mul and Tensor.sub
    assert {"dot", "mul", "sum", "sin", "cos", "norm", "mv", "sub"} <= routed


def test_numbers_on_the_left_are_routed_like_torch():
    x = torch.randn(5, dtype=torch.float64, requires_grad=True)
    with torchext.patch() as mode:
        out = (2 - x) * (3 * x) + torch.rsub(x, 1.5, alpha=2)
        (grad,) = torch.autograd.grad(out.sum(), x)
    ref = (2 - x) * (3 * x) + torch.rsub(x, 1.5, alpha=2)
    assert_close(out, ref)
    assert_close(grad, torch.autograd.grad(ref.sum(), x)[0])
    assert mode.routed["__rsub__"] == 1 and mode.routed["rsub"] == 1 and mode.routed["mul"] == 2


def test_patched_graph_is_made_of_torchext_functions():
    x = torch.randn(4, requires_grad=True)
    with torchext.patch():
        y = torch.sin(x * x).sum()
    names = []
    node = y.grad_fn
    while node is not None:
        names.append(type(node).__name__)
        node = node.next_functions[0][0] if node.next_functions else None
    assert names[-1] == "AccumulateGrad"
    assert any("Sin" in n for n in names)
    assert all(n.endswith("FunctionBackward") for n in names[:-1]), names


def test_unsupported_calls_go_to_torch():
    x = torch.randn(3, 4)
    expected_sum = x.exp().double().sum()
    with torchext.patch() as mode:
        torch.testing.assert_close(x.norm(p=1), torch.linalg.vector_norm(x, 1))
        torch.testing.assert_close(x.exp().sum(dtype=torch.float64), expected_sum)
        ints = torch.arange(5)
        assert torch.equal(ints * ints, torch.tensor([0, 1, 4, 9, 16]))
        row_sums = x.sum(1, keepdim=True)
        relu = x.relu()
    assert "norm" not in mode.routed
    assert mode.routed.get("sum") == 1  # x.sum(1, keepdim=True) did route; exp().sum(dtype=) not
    torch.testing.assert_close(row_sums, torch.sum(x, 1, keepdim=True))
    assert torch.equal(relu, x.clamp(min=0))


def test_patch_is_undone_on_exit_and_on_error():
    x = torch.randn(3, requires_grad=True)
    try:
        with torchext.patch():
            raise ValueError("user code failed")
    except ValueError:
        pass
    assert type(torch.sin(x).grad_fn).__name__ == "SinBackward0"


class _OpCounter(TorchDispatchMode):
    """Counts every op that reaches dispatch, by schema name (`torchext::sin`, `aten::sin`)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func._schema.name] += 1
        return func(*args, **(kwargs or {}))


_g = torch.Generator().manual_seed(0)
_A, _B, _ROW = (torch.randn(s, generator=_g) for s in ((3, 4), (3, 4), (4,)))
_V, _U = torch.randn(4, generator=_g), torch.randn(4, generator=_g)

# Every call form of README's op table: (the call, the torchext op that must run for it).
CLAIMED_CALLS = {
    "torch.sin(x)": (lambda: torch.sin(_A), "sin"),
    "x.sin()": (lambda: _A.sin(), "sin"),
    "torch.sin(x, out=None)": (lambda: torch.sin(_A, out=None), "sin"),
    "torch.cos(x)": (lambda: torch.cos(_A), "cos"),
    "x.cos()": (lambda: _A.cos(), "cos"),
    "torch.mul(a, b)": (lambda: torch.mul(_A, _B), "mul"),
    "torch.mul(a, row)": (lambda: torch.mul(_A, _ROW), "mul"),
    "a.mul(b)": (lambda: _A.mul(_B), "mul"),
    "a * b": (lambda: _A * _ROW, "mul"),
    "torch.mul(a, 2)": (lambda: torch.mul(_A, 2), "mul_scalar"),
    "torch.mul(2, a)": (lambda: torch.mul(2, _A), "mul_scalar"),
    "a * 2.5": (lambda: _A * 2.5, "mul_scalar"),
    "2.5 * a": (lambda: 2.5 * _A, "mul_scalar"),
    "torch.sub(a, b)": (lambda: torch.sub(_A, _B), "sub"),
    "torch.sub(a, row, alpha=2)": (lambda: torch.sub(_A, _ROW, alpha=2), "sub"),
    "a.sub(b)": (lambda: _A.sub(_B), "sub"),
    "a - b": (lambda: _A - _B, "sub"),
    "torch.sub(a, 2, alpha=3)": (lambda: torch.sub(_A, 2, alpha=3), "sub_scalar"),
    "a - 2": (lambda: _A - 2, "sub_scalar"),
    "2 - a": (lambda: 2 - _A, "sub_scalar"),
    "torch.rsub(a, 2)": (lambda: torch.rsub(_A, 2), "sub_scalar"),
    "torch.sum(x)": (lambda: torch.sum(_A), "sum"),
    "x.sum()": (lambda: _A.sum(), "sum"),
    "torch.sum(x, 0)": (lambda: torch.sum(_A, 0), "sum"),
    "x.sum(dim=1, keepdim=True)": (lambda: _A.sum(dim=1, keepdim=True), "sum"),
    "x.sum(dim=(0, 1))": (lambda: _A.sum(dim=(0, 1)), "sum"),
    "torch.norm(x)": (lambda: torch.norm(_A), "norm"),
    "x.norm()": (lambda: _A.norm(), "norm"),
    "torch.norm(x, 2)": (lambda: torch.norm(_A, 2), "norm"),
    "x.norm(p='fro')": (lambda: _A.norm(p="fro"), "norm"),
    "torch.dot(x, y)": (lambda: torch.dot(_V, _U), "dot"),
    "x.dot(y)": (lambda: _V.dot(_U), "dot"),
    "torch.mv(X, w)": (lambda: torch.mv(_A, _V), "mv"),
    "X.mv(w)": (lambda: _A.mv(_V), "mv"),
}


_TORCH_MATH = {
    f"aten::{name}" for name in "sin cos mul sub rsub sum norm linalg_vector_norm dot mv".split()
}


@pytest.mark.parametrize("call", CLAIMED_CALLS)
def test_every_call_of_the_op_table_runs_torchext_op(call):
    fn, op = CLAIMED_CALLS[call]
    expected = fn()
    with torchext.patch(), _OpCounter() as counter:
        out = fn()
    assert counter.ops[f"torchext::{op}"] == 1, dict(counter.ops)
    assert not _TORCH_MATH & set(counter.ops), dict(counter.ops)
    torch.testing.assert_close(out, expected)
