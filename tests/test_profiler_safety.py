"""The profiler adds no memory and leaves no hook behind, also when the profiled code raises."""

from __future__ import annotations

import gc
import json
import weakref

import pytest
import torch
from torch.autograd.function import Function
from torch.nn.modules import module as nn_module
from torch.optim import optimizer as optimizer_module

from profiling import profile

GLOBAL_MODULE_HOOKS = [name for name in dir(nn_module) if name.startswith("_global_")
                       and name.endswith("hooks")]


def global_hook_counts() -> dict[str, int]:
    counts = {name: len(getattr(nn_module, name)) for name in GLOBAL_MODULE_HOOKS}
    counts["optimizer_pre"] = len(optimizer_module._global_optimizer_pre_hooks)
    counts["optimizer_post"] = len(optimizer_module._global_optimizer_post_hooks)
    return counts


def assert_no_hooks_left(before: dict[str, int]) -> None:
    assert global_hook_counts() == before
    assert torch._C._len_torch_dispatch_stack() == 0
    assert torch._C._autograd._top_saved_tensors_default_hooks(False) is None
    assert "__wrapped__" not in Function.__dict__["apply"].__func__.__dict__


def alive_storages() -> dict[int, int]:
    """Address -> bytes of the storage of every tensor the garbage collector can see, and of
    their gradients (a `.grad` has no Python object, so no gc entry, until first read)."""
    gc.collect()
    storages = {}
    for obj in gc.get_objects():
        if type(obj) in (torch.Tensor, torch.nn.Parameter):
            for tensor in (obj, obj.grad if obj.is_leaf else None):
                if tensor is not None:
                    storage = tensor.untyped_storage()
                    storages[storage._cdata] = storage.nbytes()
    return storages


def bytes_new_since(before: dict[int, int]) -> int:
    """Bytes of the storages alive now that were not alive at `before` (other tests' garbage
    being freed in between does not count)."""
    return sum(n for address, n in alive_storages().items() if address not in before)


def training_step(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    loss = model(x).square().mean()
    loss.backward()
    return loss.detach()


def test_live_bytes_after_block_unchanged_and_no_hook_left():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 8))
    x = torch.randn(16, 32)
    training_step(model, x)  # grads exist before, so both runs end in the same state
    hooks_before = global_hook_counts()
    before = alive_storages()
    unprofiled = training_step(model, x)
    unprofiled_new = bytes_new_since(before)
    del unprofiled
    before = alive_storages()
    with profile("cpu") as prof:
        profiled = training_step(model, x)
    assert bytes_new_since(before) == unprofiled_new == 4  # the detached loss only
    assert_no_hooks_left(hooks_before)
    assert len(prof.ops) > 0 and profiled.shape == ()


def test_profiler_does_not_keep_intermediates_alive():
    x = torch.randn(1000, requires_grad=True)
    with profile("cpu") as prof:
        y = x.exp()
        storage_of_y = weakref.ref(y.untyped_storage())
        z = y.sin().sum()
        z.backward()
        del y, z
        freed_inside = storage_of_y() is None
    assert freed_inside
    assert prof.held_bytes == 0


class Boom(Exception):
    pass


def test_exception_inside_block_removes_hooks_keeps_partial_profile():
    hooks_before = global_hook_counts()
    model = torch.nn.Linear(8, 8)
    x = torch.randn(4, 8, requires_grad=True)
    before = alive_storages()
    with pytest.raises(Boom):
        with profile("cpu") as prof:
            loss = model(x).relu().sum()
            loss.backward(retain_graph=True)
            raise Boom
    assert_no_hooks_left(hooks_before)
    ops = prof.ops
    assert "aten::addmm" in set(ops.op) and "AddmmBackward0" in set(ops.op)
    assert prof.error is not None and isinstance(prof.error, Boom)
    assert prof.held_bytes > 0  # `loss` (still referenced) keeps its retained graph
    del loss
    assert prof.held_bytes == 0
    model.weight.grad = model.bias.grad = x.grad = None  # what backward created, on purpose
    assert bytes_new_since(before) == 0


def test_exception_inside_module_forward_and_backward_unwinds():
    class Fails(torch.nn.Module):
        def forward(self, x):
            raise Boom

    class FailsInBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            raise Boom

    hooks_before = global_hook_counts()
    with pytest.raises(Boom), profile("cpu"):
        torch.nn.Sequential(torch.nn.Identity(), Fails())(torch.randn(2))
    assert_no_hooks_left(hooks_before)
    x = torch.randn(3, requires_grad=True)
    with pytest.raises(Boom), profile("cpu") as prof:
        FailsInBackward.apply(x).sum().backward()
    assert_no_hooks_left(hooks_before)
    assert "FailsInBackward" in set(prof.ops.op)


def test_node_hooks_removed_backward_after_block_records_nothing():
    x = torch.randn(100, requires_grad=True)
    with profile("cpu") as prof:
        loss = x.sin().cos().sum()
    rows = len(prof._recorder.rows)
    loss.backward()  # a pre-hook left on a node would add a row
    assert len(prof._recorder.rows) == rows
    assert prof.held_bytes == 0
    # released after the block, by a backward pass the profiler no longer watches
    assert set(prof.lifetimes.freed_phase) == {"backward"}


def test_results_need_the_block_to_end_and_a_profile_runs_once():
    with profile("cpu") as prof:
        with pytest.raises(RuntimeError, match="after the `with` block"):
            prof.ops  # noqa: B018
    with pytest.raises(RuntimeError, match="only be entered once"), prof:
        pass


def test_finished_profile_is_freed_by_reference_counting():
    """No reference cycle outlives the block: a profile nobody holds is freed at once, not left
    (rows, nodes, storages) for the garbage collector to walk on every later collection."""

    class Double(Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, grad):
            return grad * 2

    model = torch.nn.Linear(8, 8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    gc.collect()
    gc.disable()
    try:
        with profile("cpu") as prof:
            loss = Double.apply(model(torch.randn(4, 8))).relu().sum()
            loss.backward(retain_graph=True)
            optimizer.step()
        assert len(prof.ops) > 0 and prof.held_bytes > 0
        recorder = weakref.ref(prof._recorder)
        del prof
        assert recorder() is None
        del loss  # the retained graph, released after its profile is gone
    finally:
        gc.enable()


def test_the_kept_error_holds_no_frame_so_no_graph_of_the_failed_step():
    # The traceback's frames (backward's, the hook's) would keep the failed step's graph alive
    # as long as the profile, and the leak finder would report it. The profile keeps the type,
    # message and traceback text; the exception the caller catches keeps its traceback.
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    x = torch.randn(4, 8)

    def fail(grad):
        raise ValueError("boom in backward")

    def failing_step():
        out = model(x)
        out.register_hook(fail)
        out.sum().backward()

    with pytest.raises(ValueError) as caught:
        with profile("cpu") as prof:
            failing_step()
    assert caught.value.__traceback__ is not None  # the caller's exception is untouched
    del caught  # the caller lets go of its exception: nothing else holds the failed step
    gc.collect()
    assert type(prof.error) is ValueError and str(prof.error) == "boom in backward"
    assert prof.error.__traceback__ is None
    assert "in fail" in prof.error_traceback and "boom in backward" in prof.error_traceback
    assert prof.held_bytes == 0 and prof.leaks().empty
    assert prof.meta["error"] == "ValueError: boom in backward"


def test_a_saved_report_says_the_block_raised(tmp_path):
    with pytest.raises(Boom):
        with profile("cpu") as prof:
            torch.ones(3) * 2
            raise Boom("midway")
    folder = prof.save(tmp_path / "run")
    assert "the block raised**: Boom: midway (a partial profile" in (
        folder / "summary.md").read_text()
    assert json.loads((folder / "profile.json").read_text())["meta"]["error"] == "Boom: midway"


def test_track_takes_one_module_as_memtracker_does_and_rejects_what_holds_no_tensor():
    model = torch.nn.Linear(64, 64)
    x = torch.randn(4, 64)
    peaks = []
    for track in (model, [model]):
        with profile("cpu", track=track) as prof:
            model(x).sum()
        peaks.append(prof.meta["peak_bytes"])
    assert peaks[0] == peaks[1] >= (64 * 64 + 64) * 4  # the parameters count from the start
    with pytest.raises(TypeError, match="track takes modules, optimizers, tensors"):
        profile("cpu", track=[1, 2])
    with pytest.raises(TypeError, match="track must be"):
        profile("cpu", track="model")
    with pytest.raises(TypeError, match="command must be a str"):
        profile("cpu", command=5)
