"""Elementwise results and gradients have the strides torch gives them, and the same values.

torch keeps its inputs' memory layout (channels_last, transposed, and TensorIterator's rules for
broadcast and mixed operands); so do torchext's sin, cos, mul and sub, forward and backward.
"""

from __future__ import annotations

import pytest
import torch

import torchext
from tests.conftest import DEVICES, assert_close


def _layouts(device: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(device)

    return {
        "channels_last": randn(2, 3, 4, 5).to(memory_format=torch.channels_last),
        "contiguous_4d": randn(2, 3, 4, 5),
        "transposed": randn(5, 4).t(),
        "contiguous_2d": randn(4, 5),
        "row": randn(5),
        "column": randn(4, 1),
        "channel": randn(3, 1, 1),
        "sliced": randn(4, 10)[:, ::2],  # not dense: torch gives a dense result
        "permuted_3d": randn(3, 4, 5).permute(2, 0, 1),
        "zero_dim": randn(()),
    }


UNARY = {"sin": (torch.sin, torchext.sin), "cos": (torch.cos, torchext.cos)}
BINARY = {"mul": (torch.mul, torchext.mul), "sub": (torch.sub, torchext.sub)}
UNARY_INPUTS = ["channels_last", "transposed", "sliced", "permuted_3d"]
BINARY_INPUTS = [
    ("channels_last", "channels_last"),
    ("channels_last", "contiguous_4d"),  # mixed: torch follows the first operand here
    ("contiguous_4d", "channels_last"),
    ("channels_last", "channel"),  # broadcast
    ("channel", "channels_last"),
    ("transposed", "row"),
    ("column", "transposed"),
    ("transposed", "contiguous_2d"),
    ("contiguous_2d", "transposed"),
    ("sliced", "transposed"),
    ("transposed", "zero_dim"),
    ("row", "column"),  # both broadcast
]


def _check_like_torch(out: torch.Tensor, expected: torch.Tensor) -> None:
    assert out.shape == expected.shape
    assert out.stride() == expected.stride()
    assert_close(out, expected)


def _grads(fn, inputs, grad_out):
    inputs = [t.detach().requires_grad_() for t in inputs]
    out = fn(*inputs)
    return out, torch.autograd.grad(out, inputs, grad_out)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", UNARY_INPUTS)
@pytest.mark.parametrize("op", UNARY)
def test_unary_result_and_gradient_strides_match_torch(op, layout, device):
    torch_op, our_op = UNARY[op]
    x = _layouts(device)[layout]
    expected, expected_grads = _grads(torch_op, [x], torch.ones_like(torch_op(x)))
    out, grads = _grads(our_op, [x], torch.ones_like(torch_op(x)))
    _check_like_torch(out, expected)
    _check_like_torch(grads[0], expected_grads[0])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", UNARY)
def test_unary_gradient_follows_the_incoming_gradients_layout_like_torch(op, device):
    torch_op, our_op = UNARY[op]
    x = _layouts(device)["contiguous_4d"]
    grad_out = _layouts(device)["channels_last"]
    _, expected = _grads(torch_op, [x], grad_out)
    _, grads = _grads(our_op, [x], grad_out)
    _check_like_torch(grads[0], expected[0])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("left", "right"), BINARY_INPUTS)
@pytest.mark.parametrize("op", BINARY)
def test_binary_result_and_gradient_strides_match_torch(op, left, right, device):
    torch_op, our_op = BINARY[op]
    a, b = _layouts(device)[left], _layouts(device)[right]
    grad_out = torch.ones_like(torch_op(a, b))
    expected, expected_grads = _grads(torch_op, [a, b], grad_out)
    out, grads = _grads(our_op, [a, b], grad_out)
    _check_like_torch(out, expected)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        _check_like_torch(grad, expected_grad)


SCALAR_FORMS = {
    "x * 2.5": lambda x: x * 2.5,
    "3 * x": lambda x: 3 * x,
    "x - 2": lambda x: x - 2,
    "2.5 - x": lambda x: 2.5 - x,
    "sub(x, 2, alpha=3)": lambda x: torch.sub(x, 2, alpha=3),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["channels_last", "transposed", "sliced"])
@pytest.mark.parametrize("form", SCALAR_FORMS)
def test_scalar_forms_keep_the_layout_like_torch(form, layout, device):
    fn = SCALAR_FORMS[form]
    x = _layouts(device)[layout]
    grad_out = torch.ones_like(fn(x))
    expected, expected_grads = _grads(fn, [x], grad_out)
    with torchext.patch() as mode:
        out, grads = _grads(fn, [x], grad_out)
    assert mode.routed  # the form ran on torchext, not on torch
    _check_like_torch(out, expected)
    _check_like_torch(grads[0], expected_grads[0])


@pytest.mark.parametrize("device", DEVICES)
def test_half_precision_channels_last_product(device):
    a = _layouts(device)["channels_last"].half()
    b = _layouts(device)["contiguous_4d"].half()
    _check_like_torch(torchext.mul(b, a), torch.mul(b, a))
    _check_like_torch(torchext.sin(a), torch.sin(a))


def test_fake_kernels_give_the_strides_the_kernels_give():
    """torch.compile plans memory from the fake kernels: they must agree with the real ones."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    x = _layouts("cpu")
    cl, contiguous, transposed = x["channels_last"], x["contiguous_4d"], x["transposed"]
    ops = torch.ops.torchext
    cases = [
        (ops.sin, (cl,)),
        (ops.cos, (transposed,)),
        (ops.sin_backward, (cl, contiguous)),
        (ops.cos_backward, (contiguous, cl)),
        (ops.mul, (cl, contiguous, torch.float64)),
        (ops.mul, (x["column"], transposed, torch.float64)),
        (ops.mul_scalar, (transposed, 2.0, torch.float64)),
        (ops.sub, (cl, x["channel"], 2, torch.float64)),
        (ops.sub_scalar, (cl, 2, 1, True, torch.float64)),
    ]
    for op, args in cases:
        real = op(*args)
        with FakeTensorMode() as mode:
            fake = op(*(mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args))
        assert (fake.shape, fake.stride()) == (real.shape, real.stride()), op
