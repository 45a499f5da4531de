"""`torch.library.opcheck` over every `torchext::` custom op (on CPU, and on CUDA when present).

opcheck checks what torch.compile and the dispatcher rely on and cannot see for themselves: the
schema (no input mutated or aliased by an output, as `mutates_args=()` declares), the fake
kernel (shapes, strides and dtypes of the real kernel's results), the registered autograd (the
op's gradient goes through it), and that AOT dispatch traces the op, backward included.
"""

from __future__ import annotations

import pytest
import torch

import torchext  # noqa: F401  (registers the ops)

ops = torch.ops.torchext


def _t(*shape: int, dtype: torch.dtype, grad: bool = True) -> torch.Tensor:
    g = torch.Generator().manual_seed(sum(shape) + len(shape))
    t = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    return t.requires_grad_(grad)


def _float_samples(dtype: torch.dtype) -> dict[str, list[tuple]]:
    """Representative arguments for each op in a float dtype: every tensor requires grad (one
    case per op does not), some are non-contiguous, broadcast, 0-dim or empty."""
    x = _t(3, 4, dtype=dtype)
    row, col = _t(4, dtype=dtype), _t(3, dtype=dtype)
    scalar = _t(dtype=dtype)
    positive = _t(3, 1, dtype=dtype).detach().abs().add(1).requires_grad_()
    nhwc = _t(1, 2, 2, 3, dtype=dtype).detach().to(memory_format=torch.channels_last)
    return {
        "sin": [(x,), (x.detach().t(),), (_t(0, dtype=dtype),), (scalar,), (nhwc,)],
        "cos": [(x,), (x.detach()[:, ::2],)],
        "sin_backward": [(x, _t(3, 4, dtype=dtype)), (x.detach().t(), _t(4, 3, dtype=dtype)),
                         (_t(1, 2, 2, 3, dtype=dtype), nhwc)],
        "cos_backward": [(x, _t(3, 4, dtype=dtype)), (scalar, _t(dtype=dtype, grad=False))],
        "mul": [(x, row, dtype), (x, scalar, dtype), (col.unsqueeze(1), row, dtype),
                (x.detach().t(), col, dtype), (x, _t(3, 4, dtype=dtype, grad=False), dtype),
                (nhwc, _t(2, 1, 1, dtype=dtype), dtype)],
        "mul_scalar": [(x, 2.5, dtype), (x.detach().t(), -3, dtype), (scalar, True, dtype)],
        "sub": [(x, row, 2, dtype), (x, scalar, -0.5, dtype), (col.unsqueeze(1), row, 1, dtype)],
        "sub_scalar": [(x, 2, 1, True, dtype), (x, 1.5, -2.0, False, dtype)],
        "sum": [(x, [], False, dtype), (x, [0, 1], True, dtype), (x, [1], False, dtype),
                (x.detach().t(), [0], False, torch.float32), (_t(0, 3, dtype=dtype), [0], False,
                                                               dtype)],
        "norm": [(x, [], False), (x, [0, 1], False), (x, [1], True), (scalar, [], False)],
        "norm_backward": [(col.unsqueeze(1), x, positive, [1]),
                          (_t(1, 1, dtype=dtype), x, _t(1, 1, dtype=dtype), [0, 1])],
        "dot": [(row, _t(4, dtype=dtype)), (_t(2, 4, dtype=dtype), _t(2, 4, dtype=dtype)),
                (_t(0, dtype=dtype), _t(0, dtype=dtype))],
        "mv": [(x, row), (x.detach().t(), col), (_t(2, 3, 4, dtype=dtype), _t(2, 4, dtype=dtype)),
               (_t(3, 0, dtype=dtype), _t(0, dtype=dtype))],
        "outer": [(col, row), (_t(2, 3, dtype=dtype), _t(2, 4, dtype=dtype))],
        "least_squares": [(x, row, col, True, True), (x, row, col, False, False),
                          (x.detach(), row, col.detach(), True, False),
                          (x.detach().t(), col, row, False, True)],
    }  # fmt: skip


def _integer_samples() -> dict[str, list[tuple]]:
    ints = torch.arange(-6, 6).reshape(3, 4)
    return {
        "mul": [(ints, ints[0], torch.int64), (ints, torch.tensor(True), torch.int64)],
        "mul_scalar": [(ints, 3, torch.int64)],
        "sub": [(ints, ints[:, :1], 2, torch.int64)],
        "sub_scalar": [(ints.to(torch.int32), 7, 1, True, torch.int32)],
        "sum": [(ints, [1], False, torch.int64), (ints > 0, [], False, torch.int64)],
        "dot": [(ints[0], ints[1])],
        "mv": [(ints, ints[0])],
    }


def _registered_ops() -> set[str]:
    names = torch._C._dispatch_get_all_op_names()
    return {name.removeprefix("torchext::") for name in names if name.startswith("torchext::")}


def test_every_registered_op_has_samples():
    assert set(_float_samples(torch.float32)) == _registered_ops()


# The schema (mutation, aliasing) and AOT dispatch do not depend on the dtype and are the slow
# checks: float32 runs them; every dtype runs the fake kernel and autograd registration checks.
EVERY_DTYPE_CHECKS = ("test_faketensor", "test_autograd_registration")
ALL_CHECKS = (*EVERY_DTYPE_CHECKS, "test_schema", "test_aot_dispatch_dynamic")


def _check(name: str, args: tuple, test_utils: tuple[str, ...] = ALL_CHECKS) -> None:
    results = torch.library.opcheck(getattr(ops, name).default, args, test_utils=test_utils)
    assert results == dict.fromkeys(test_utils, "SUCCESS")


def _on(device: str, args: tuple) -> tuple:
    """`args` with each tensor on `device` (strides of dense tensors kept, requires_grad too)."""
    return tuple(a.detach().to(device).requires_grad_(a.requires_grad)
                 if isinstance(a, torch.Tensor) else a for a in args)  # fmt: skip


@pytest.mark.parametrize("name", sorted(_float_samples(torch.float32)))
def test_opcheck_float_ops(name, dtype, device):
    checks = ALL_CHECKS if dtype == torch.float32 else EVERY_DTYPE_CHECKS
    for args in _float_samples(dtype)[name]:
        _check(name, _on(device, args), checks)


@pytest.mark.parametrize("name", sorted(_integer_samples()))
def test_opcheck_integer_ops(name):
    for args in _integer_samples()[name]:
        _check(name, args)


def test_opcheck_catches_a_fake_kernel_that_disagrees_with_the_kernel():
    """opcheck is not vacuous here: a fake kernel with the wrong strides fails it."""
    lib = torch.library.Library("torchext_opcheck_probe", "FRAGMENT")
    try:
        lib.define("transposed_sin(Tensor x) -> Tensor")
        lib.impl("transposed_sin", lambda x: ops.sin(x.t().contiguous()).t(), "CPU")
        lib.impl("transposed_sin", lambda x: x.new_empty(x.shape), "Meta")  # contiguous: wrong
        x = _t(3, 4, dtype=torch.float32, grad=False)
        with pytest.raises(Exception, match="[Ss]tride"):
            torch.library.opcheck(torch.ops.torchext_opcheck_probe.transposed_sin.default, (x,),
                                  test_utils=("test_faketensor",))  # fmt: skip
    finally:
        lib._destroy()
