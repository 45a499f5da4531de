"""Shared fixtures: devices to run on, dtypes and the tolerances each dtype is held to."""

from __future__ import annotations

import pytest
import torch

DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

# (atol, rtol) against torch's own op on the same input. Half precision rounds the result once;
# our kernels compute in fp32, torch's CPU kernels sometimes do not, hence a few ulps of slack.
TOLERANCES = {
    torch.float16: (1e-3, 1e-3),
    torch.bfloat16: (1e-2, 1e-2),
    torch.float32: (1e-5, 1e-5),
    torch.float64: (1e-10, 1e-10),
}

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype=None, scale: float = 1.0):
    """Compare at the tolerance of `dtype` (default: `expected.dtype`), loosened by `scale`."""
    atol, rtol = TOLERANCES.get(dtype or expected.dtype, (0.0, 0.0))  # integers: exact
    torch.testing.assert_close(actual, expected, atol=atol * scale, rtol=rtol * scale)


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    return request.param


@pytest.fixture(params=DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def dtype(request) -> torch.dtype:
    return request.param


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
