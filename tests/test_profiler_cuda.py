"""On CUDA, per-op live/peak bytes are the caching allocator's own numbers."""

from __future__ import annotations

import pytest
import torch

from profiling import profile

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def run_steps(a: torch.Tensor, b: torch.Tensor, measure: bool) -> list[int]:
    """Single-aten-op steps; with `measure`, the allocator's peak during each."""
    steps = [
        lambda: torch.sin(a),
        lambda: torch.mm(b, b),
        lambda: torch.cat([a, a]),
        lambda: a.sum(),
        lambda: torch.softmax(b, dim=1),
    ]
    peaks, keep = [], []
    for step in steps:
        if measure:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        keep.append(step())
        if measure:
            peaks.append(torch.cuda.max_memory_allocated())
    return peaks


def test_per_op_peak_equals_caching_allocator_peak():
    device = torch.device("cuda", torch.cuda.current_device())
    a = torch.randn(1 << 20, device=device, requires_grad=True)
    b = torch.randn(512, 512, device=device, requires_grad=True)
    run_steps(a, b, measure=False)  # warm up: cuBLAS workspace, kernels
    expected = run_steps(a, b, measure=True)
    with profile(device) as prof:
        run_steps(a, b, measure=False)
    ops = prof.ops
    assert len(ops) == len(expected)
    assert ops.peak_bytes.tolist() == expected
    assert (ops.live_bytes <= ops.peak_bytes).all()
    assert set(ops.device) == {str(device)}


def test_cuda_training_step_saved_and_held_bytes():
    device = torch.device("cuda", torch.cuda.current_device())
    n, k = 1 << 16, 4
    x = torch.randn(n, device=device, requires_grad=True)
    with profile(device) as prof:
        y = x
        for _ in range(k):
            y = torch.sin(y)
        loss = y.sum()
        loss.backward(retain_graph=True)
        retained = prof.held_bytes
        loss.backward()
    assert retained == k * n * 4
    assert prof.held_bytes == 0
    assert prof.ops.saved_bytes.sum() == k * n * 4
    assert prof.meta["peak_bytes"] >= k * n * 4
