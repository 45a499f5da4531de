"""A profile records its own thread: another thread training at the same time changes nothing.

Events force the overlap: the other thread is inside one of its modules' forward while the
profiled thread runs its whole step, and then trains (a custom Function, backward, optimizer
steps that create state) before the profiled block ends.
"""

from __future__ import annotations

import threading

import pytest
import torch

from profiling import profile

TIMEOUT_S = 60
COLUMNS = ["op", "phase", "module", "output_bytes", "saved_bytes", "live_bytes", "peak_bytes"]


class Doubled(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * 2

    @staticmethod
    def backward(ctx, grad):
        return grad * 2


class Gate(torch.nn.Module):
    """Holds the other thread inside its forward until the profiled thread's step is done."""

    def __init__(self, inside: threading.Event, release: threading.Event) -> None:
        super().__init__()
        self.inside, self.release = inside, release

    def forward(self, x):
        self.inside.set()
        assert self.release.wait(TIMEOUT_S)
        return x


class OtherModel(torch.nn.Module):
    def __init__(self, gate: Gate) -> None:
        super().__init__()
        self.gate = gate
        self.wide = torch.nn.Linear(64, 256)
        self.out = torch.nn.Linear(256, 1)

    def forward(self, x):
        return self.out(Doubled.apply(torch.relu(self.wide(self.gate(x)))))


def make_profiled():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    optimizer = torch.optim.Adam(model.parameters())
    x = torch.randn(8, 16)
    model(x).square().mean().backward()
    optimizer.step()  # Adam's state exists before the block
    optimizer.zero_grad()
    return model, optimizer, x


def profiled_step(model, optimizer, x) -> None:
    loss = Doubled.apply(model(x)).square().mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()


def profile_alone():
    model, optimizer, x = make_profiled()
    with profile("cpu") as prof:
        profiled_step(model, optimizer, x)
    return prof


def profile_while_another_thread_trains():
    model, optimizer, x = make_profiled()
    started, inside, release, done = (threading.Event() for _ in range(4))
    errors: list[BaseException] = []

    def train_other():
        try:
            assert started.wait(TIMEOUT_S)
            other = OtherModel(Gate(inside, release))
            other_optimizer = torch.optim.SGD(other.parameters(), lr=0.1, momentum=0.9)
            for _ in range(2):
                other(torch.randn(32, 64)).sum().backward()
                other_optimizer.step()  # creates momentum buffers inside the block
            done.set()
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)
            inside.set()
            done.set()

    worker = threading.Thread(target=train_other)
    worker.start()
    try:
        with profile("cpu") as prof:
            started.set()
            assert inside.wait(TIMEOUT_S)  # the other thread is inside Gate.forward now
            profiled_step(model, optimizer, x)
            release.set()
            assert done.wait(TIMEOUT_S)  # it trained while this block ran
    finally:
        release.set()
        worker.join(TIMEOUT_S)
    assert not errors, errors
    return prof


def test_profile_ignores_a_thread_training_concurrently():
    alone = profile_alone()
    shared = profile_while_another_thread_trains()
    assert shared.ops[COLUMNS].equals(alone.ops[COLUMNS])
    assert shared.meta["peak_bytes"] == alone.meta["peak_bytes"]
    assert shared.held_bytes == alone.held_bytes == 0
    assert len(shared.graph.nodes) == len(alone.graph.nodes)
    # the profiled thread's own backward and Function are still recorded
    ops = shared.ops
    assert (ops.phase == "backward").sum() > 0 and (ops.phase == "optimizer").sum() > 0
    assert ops[ops.op == "Doubled"].phase.tolist() == ["forward"]
    assert "DoubledBackward" in set(ops.op)
    assert shared.meta["other_threads"] == ""


def test_a_profile_in_a_worker_thread_sees_only_that_thread():
    """The mirror case: the profile runs in a thread, the main thread works meanwhile."""
    result: dict = {}
    started, finish = threading.Event(), threading.Event()

    def profiled():
        model, optimizer, x = make_profiled()
        with profile("cpu") as prof:
            started.set()
            assert finish.wait(TIMEOUT_S)
            profiled_step(model, optimizer, x)
        result["prof"] = prof

    worker = threading.Thread(target=profiled)
    worker.start()
    assert started.wait(TIMEOUT_S)
    main_model = torch.nn.Linear(64, 64)
    main_model(torch.randn(16, 64)).sum().backward()
    finish.set()
    worker.join(TIMEOUT_S)
    alone = profile_alone()
    assert result["prof"].ops[COLUMNS].equals(alone.ops[COLUMNS])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_report_says_when_another_thread_allocated_during_the_block():
    device = torch.device("cuda", torch.cuda.current_device())
    model = torch.nn.Linear(64, 64).to(device)
    optimizer = torch.optim.Adam(model.parameters())
    x = torch.randn(32, 64, device=device)
    with profile(device) as prof:  # alone: a step (backward on autograd's CUDA thread), and
        # a tensor made from data, which is copied to the GPU before any op shows it
        model(x).square().mean().backward()
        optimizer.step()
        (torch.tensor([1.0, 2.0], device=device) * 2).sum()
    assert prof.meta["other_threads"] == ""

    kept: list[torch.Tensor] = []
    allocate = threading.Thread(target=lambda: kept.append(torch.empty(1 << 20, device=device)))
    with profile(device) as prof:
        y = x * 2
        allocate.start()
        allocate.join(TIMEOUT_S)  # 4 MiB allocated by another thread between two of our ops
        (y + 1).sum()
    note = prof.meta["other_threads"]
    assert "another thread" in note and "process-wide" in note
    assert int(note.split(" bytes")[0].replace(",", "")) >= kept[0].untyped_storage().nbytes()
