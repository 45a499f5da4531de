"""Peak memory of a training step agrees with PyTorch's own MemTracker (CPU)."""

from __future__ import annotations

import pytest
import torch

from profiling import profile

FLOAT32 = 4

mem_tracker = pytest.importorskip("torch.distributed._tools.mem_tracker")


def transformer_step(layer: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     x: torch.Tensor) -> None:
    loss = layer(x).square().mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()


class TinyLM(torch.nn.Module):
    """Embedding, a 2-layer TransformerEncoder and a vocabulary head."""

    def __init__(self, vocab: int = 50, width: int = 32) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, width)
        layer = torch.nn.TransformerEncoderLayer(width, 4, 2 * width, batch_first=True)
        self.encoder = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = torch.nn.Linear(width, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(tokens)))


def lm_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
            tokens: torch.Tensor) -> None:
    logits = model(tokens)
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens.flatten())
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()


def convnet() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Dropout(0.25), torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 10))


def convnet_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 images: torch.Tensor) -> None:
    labels = torch.arange(len(images)) % 10
    loss = torch.nn.functional.cross_entropy(model(images), labels)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()


def memtracker_peak(step, *external) -> int:
    """MemTracker's peak for one step, counting the model, optimizer and input from the start."""
    tracker = mem_tracker.MemTracker()
    tracker.track_external(*external)
    with tracker:
        step(*external)
    return tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]


@pytest.mark.parametrize("optimizer_class", [torch.optim.SGD, torch.optim.Adam])
def test_transformer_training_step_peak_matches_memtracker(optimizer_class):
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(d_model=64, nhead=4, dim_feedforward=128,
                                             batch_first=True)
    optimizer = optimizer_class(layer.parameters(), lr=1e-3)
    x = torch.randn(4, 16, 64)
    transformer_step(layer, optimizer, x)  # optimizer state exists before both measurements
    reference = memtracker_peak(transformer_step, layer, optimizer, x)

    with profile("cpu", track=(layer, optimizer, x)) as prof:
        transformer_step(layer, optimizer, x)
    assert prof.meta["peak_bytes"] == reference
    assert prof.ops.peak_bytes.max() == reference


def test_default_accounting_matches_memtracker_on_an_adamw_lm_step():
    """Without `track=`, the model that runs and the optimizer that steps count from the
    block's start (AdamW's moments existed before it): the step peak is MemTracker's."""
    torch.manual_seed(0)
    model = TinyLM()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    tokens = torch.randint(0, 50, (4, 12))
    lm_step(model, optimizer, tokens)  # AdamW's state exists before both measurements
    reference = memtracker_peak(lm_step, model, optimizer, tokens)

    with profile("cpu") as prof:
        lm_step(model, optimizer, tokens)
    assert prof.meta["peak_bytes"] == reference
    assert prof.ops.peak_bytes.max() == reference
    assert prof.timeline.live_bytes.max() <= reference


def test_default_accounting_matches_memtracker_on_an_sgd_momentum_convnet_step():
    torch.manual_seed(0)
    model = convnet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    images = torch.randn(4, 3, 8, 8)
    convnet_step(model, optimizer, images)  # the momentum buffers exist before both
    reference = memtracker_peak(convnet_step, model, optimizer, images)

    with profile("cpu") as prof:
        convnet_step(model, optimizer, images)
    assert prof.meta["peak_bytes"] == reference
    assert prof.ops.peak_bytes.max() == reference


def _nbytes(tensors) -> int:
    return sum(t.untyped_storage().nbytes() for t in tensors)


def test_optimizer_state_seen_at_its_step_counts_from_the_block_start():
    """The profiler first sees SGD's momentum buffers when `step` runs, after the forward and
    backward; they existed all along, so the rows before the step count them too."""
    model = torch.nn.Linear(32, 16)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(8, 32)
    transformer_step(model, optimizer, x)  # creates the momentum buffers; grads set to None
    params = _nbytes(model.parameters())
    momentum = _nbytes(state["momentum_buffer"] for state in optimizer.state.values())
    assert momentum == params
    with profile("cpu") as prof:
        model(x).sum().backward()
        optimizer.step()
    first = prof.ops.iloc[0]  # aten::t of the weight: a view, nothing allocated
    assert first.output_bytes == 0
    assert first.live_bytes == first.peak_bytes == params + momentum
    assert prof.timeline.live_bytes.iloc[0] == params + momentum


def test_a_parameter_read_before_its_module_runs_counts_from_the_block_start():
    model = torch.nn.Linear(16, 4)
    x = torch.randn(2, 16)
    with profile("cpu") as prof:
        torch.ones(3)  # row 0: before any of the model is seen (freed at once)
        model.weight * 2  # row 1: the weight is seen here first, as an input (freed at once)
        model(x)  # the model runs: its weight and bias existed since the start
    ops = prof.ops
    params = _nbytes(model.parameters())
    assert ops.live_bytes.tolist()[:2] == [params + 3 * FLOAT32, params + 16 * 4 * FLOAT32]
    assert ops.peak_bytes.tolist()[:2] == ops.live_bytes.tolist()[:2]


def test_optimizer_parameters_and_gradients_count_from_the_start_without_a_forward():
    """A block that only steps: the optimizer's parameters, gradients and state count."""
    model = torch.nn.Linear(8, 8)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 8)).sum().backward()
    optimizer.step()  # creates the state; the gradients stay
    state = [v for s in optimizer.state.values() for v in s.values()
             if isinstance(v, torch.Tensor)]
    expected = _nbytes(model.parameters()) + _nbytes(p.grad for p in model.parameters()) \
        + _nbytes(state)
    with profile("cpu") as prof:
        optimizer.step()
    assert prof.ops.live_bytes.iloc[0] == expected
    assert prof.meta["peak_bytes"] >= expected


@pytest.mark.parametrize("foreach", [False, True])
def test_state_an_optimizer_creates_inside_the_block_counts_from_its_creation(foreach):
    """Adam's first step here creates its state (the `step` counters without an op the profiler
    sees): none of it existed at the block's start, so the first row counts the parameters only,
    also after a second step has shown the optimizer again."""
    model = torch.nn.Linear(4, 4)
    optimizer = torch.optim.Adam(model.parameters(), foreach=foreach)
    with profile("cpu") as prof:
        for _ in range(2):
            model(torch.randn(2, 4)).sum().backward()
            optimizer.step()
            optimizer.zero_grad()
    first = prof.ops.iloc[0]
    assert first.live_bytes - first.output_bytes == _nbytes(model.parameters())


def _resizing_step() -> tuple[torch.Tensor, torch.Tensor]:
    """Storages resized in place, as FSDP2 frees and re-allocates its unsharded parameters."""
    a = torch.randn(128, 128)
    y = a * 2
    a.untyped_storage().resize_(0)  # 64 KiB freed outside the dispatcher
    b = torch.randn(64, 64)
    y.untyped_storage().resize_(FLOAT32 * 256 * 256)  # grown to 256 KiB
    return (b + 1).sum(), y


def _wrapper_subclass_step() -> torch.Tensor:
    two = pytest.importorskip("torch.testing._internal.two_tensor")
    pair = two.TwoTensor(torch.randn(64, 64), torch.randn(64, 64))
    return (pair * 2).sum()


@pytest.mark.parametrize("step", [_resizing_step, _wrapper_subclass_step])
def test_resized_storages_and_wrapper_subclasses_count_as_memtracker_counts_them(step):
    """`UntypedStorage.resize_` bypasses the dispatcher, and a wrapper subclass's own storage
    stands at its logical size while its inner tensors hold the bytes (DTensor, TwoTensor)."""
    reference = mem_tracker.MemTracker()
    with reference:
        result = step()
    del result
    with profile() as prof:
        result = step()  # kept alive to the block's end, as in the reference
    assert prof.meta["peak_bytes"] == (
        reference.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"])
    del result


def test_resize_is_put_back_after_the_block_also_when_it_raises():
    resize = torch.UntypedStorage.resize_
    with pytest.raises(ValueError, match="in the block"):
        with profile():
            assert torch.UntypedStorage.resize_ is not resize  # watched inside
            raise ValueError("in the block")
    assert torch.UntypedStorage.resize_ is resize
