"""Peak memory of a training step agrees with PyTorch's own MemTracker (CPU)."""

from __future__ import annotations

import pytest
import torch

from profiling import profile

mem_tracker = pytest.importorskip("torch.distributed._tools.mem_tracker")


def transformer_step(layer: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     x: torch.Tensor) -> None:
    loss = layer(x).square().mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()


@pytest.mark.parametrize("optimizer_class", [torch.optim.SGD, torch.optim.Adam])
def test_transformer_training_step_peak_matches_memtracker(optimizer_class):
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(d_model=64, nhead=4, dim_feedforward=128,
                                             batch_first=True)
    optimizer = optimizer_class(layer.parameters(), lr=1e-3)
    x = torch.randn(4, 16, 64)
    transformer_step(layer, optimizer, x)  # optimizer state exists before both measurements

    tracker = mem_tracker.MemTracker()
    tracker.track_external(layer, optimizer, x)
    with tracker:
        transformer_step(layer, optimizer, x)
    reference = tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]

    with profile("cpu", track=(layer, optimizer, x)) as prof:
        transformer_step(layer, optimizer, x)
    ours = prof.meta["peak_bytes"]
    assert ours == pytest.approx(reference, rel=0.05)
    assert prof.ops.peak_bytes.max() == ours


def test_model_and_optimizer_counted_when_first_used_without_track():
    """Without `track`, parameters count from the model's first call and optimizer state from
    its step: both are in live_bytes by the time the step runs."""
    torch.manual_seed(0)
    model = torch.nn.Linear(32, 32)
    optimizer = torch.optim.Adam(model.parameters())
    x = torch.randn(8, 32)
    transformer_step(model, optimizer, x)  # creates Adam's state; grads are set to None
    param_bytes = (32 * 32 + 32) * 4
    with profile("cpu") as prof:
        model(x).sum().backward()
        optimizer.step()
    ops = prof.ops
    first = ops.iloc[0]
    assert first.live_bytes - first.output_bytes == param_bytes
    # grads, then Adam's exp_avg and exp_avg_sq (and two step counters) at the step
    step_ops = ops[ops.seq > ops[ops.op == "AccumulateGrad"].seq.max()]
    assert step_ops.live_bytes.min() >= 4 * param_bytes
