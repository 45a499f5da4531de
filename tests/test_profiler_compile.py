"""torch.compile'd code under the profiler: it runs compiled, and its graph calls are rows.

The references are torch's own: Dynamo's compile counters, the backend being called, the node
types autograd builds, and saved-tensor counts taken by `saved_tensors_hooks` outside the
profiler. Backends: `aot_eager` (AOTAutograd, no codegen) and `aot_eager_decomp_partition`
(AOTAutograd with Inductor's min-cut partitioner, which recomputes cheap ops instead of saving
them), both fast on the CPU.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend
from torch._dynamo.utils import counters
from torch.autograd.function import Function

import profiling._compiled as compiled_module
import torchext
from profiling import profile
from profiling._compiled import compiled_code_support
from reports.models import MLP

pytestmark = pytest.mark.skipif(bool(compiled_code_support()), reason=compiled_code_support())


def saved_storage_bytes(fn, *args) -> tuple[torch.Tensor, int]:
    """`fn(*args)` and the bytes of the distinct storages autograd saved for its backward,
    counted by saved-tensor hooks outside any profiler."""
    storages: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = fn(*args)
    return out, sum(storages.values())


def compiled_rows(prof):
    return prof.ops[prof.ops.compiled]


def test_a_new_shape_compiles_inside_the_block_with_the_same_backend():
    torch._dynamo.reset()
    backend = CompileCounterWithBackend("aot_eager")
    model = torch.compile(MLP(8, 16, 2, 4), backend=backend)
    model(torch.randn(3, 8)).sum().backward()
    assert backend.frame_count == 1
    frames_before = counters["frames"]["total"]
    with profile("cpu") as prof:
        model(torch.randn(3, 8)).sum().backward()  # compiled outside: no recompile
        assert backend.frame_count == 1
        model(torch.randn(5, 8)).sum().backward()  # a new shape: compiled here
    assert backend.frame_count == 2
    # Dynamo compiled that one frame in the block, none of the profiler's
    assert counters["frames"]["total"] == frames_before + 1
    assert compiled_rows(prof).phase.tolist() == ["forward", "backward"] * 2


def test_compiled_module_rows_are_compiled_and_its_backward_row_is_the_compiled_backward():
    torch._dynamo.reset()
    model = torch.compile(MLP(8, 16, 2, 4), backend="aot_eager")
    x = torch.randn(3, 8)
    loss = model(x).sum()
    node_types = {type(fn).__name__ for fn, _ in loss.grad_fn.next_functions}
    assert node_types == {"CompiledFunctionBackward"}  # what autograd runs for the graph
    with profile("cpu") as prof:
        model(x).sum().backward()
    ops = prof.ops
    forward, backward = compiled_rows(prof).itertuples()
    assert forward.op.startswith("CompiledFunction[MLP.forward ") and forward.phase == "forward"
    assert backward.op == "CompiledFunctionBackward" + forward.op[len("CompiledFunction"):]
    assert backward.phase == "backward" and forward.module == backward.module == "MLP"
    # the graph's aten ops are inside its row; the eager ops around it keep theirs
    assert not ops.op.str.startswith("aten::addmm").any()
    assert not ops.op.str.contains("AddmmBackward").any()
    assert {"aten::sum", "SumBackward0"} <= set(ops[~ops.compiled].op)
    assert str(ops.dtypes["compiled"]) == "bool"


def test_compiled_rows_survive_the_json_and_csv_round_trip(tmp_path):
    import pandas as pd

    from profiling.export import load_profile

    torch._dynamo.reset()
    compiled = torch.compile(lambda x: torch.sin(x).sum(), backend="aot_eager")
    x = torch.randn(4, requires_grad=True)
    compiled(x).backward()
    with profile("cpu") as prof:
        compiled(x).backward()
    folder = prof.save(tmp_path / "run")
    loaded = load_profile(folder)
    pd.testing.assert_frame_equal(loaded.ops, prof.ops)
    from_csv = pd.read_csv(folder / "ops.csv")
    assert from_csv.compiled.tolist() == prof.ops.compiled.tolist()
    assert prof.ops.compiled.sum() == 2 and loaded.meta["compile"] == prof.meta["compile"]
    slices = [e for e in json.loads((folder / "trace.json").read_text())["traceEvents"]
              if e["ph"] == "X"]
    assert [e["args"]["compiled"] for e in slices] == prof.ops.compiled.tolist()


def test_compiled_saved_bytes_equal_an_independent_count_where_eager_saves_more():
    torch._dynamo.reset()

    def f(x):
        return torch.sin(torch.sin(x)).sum()  # eager saves x and sin(x): min-cut recomputes

    compiled = torch.compile(f, backend="aot_eager_decomp_partition")
    x = torch.randn(64, requires_grad=True)
    out, eager_saved = saved_storage_bytes(f, x)
    out.backward()
    out, compiled_saved = saved_storage_bytes(compiled, x)
    out.backward()
    assert compiled_saved < eager_saved
    with profile("cpu") as prof:
        compiled(x).backward()
    assert prof.ops.saved_bytes.sum() == compiled_rows(prof).saved_bytes.sum() == compiled_saved
    freed_by = f"CompiledFunctionBackward[{f.__qualname__} "
    assert prof.lifetimes.freed_by.str.startswith(freed_by).all()
    assert prof.held_bytes == 0


def test_fullgraph_is_one_graph_and_a_graph_break_two_with_the_eager_part_between():
    torch._dynamo.reset()

    @torch._dynamo.disable
    def eager_part(h):
        return h * 3

    def broken_fn(x):
        return eager_part(torch.sin(x)).cos().sum()

    full = torch.compile(lambda x: torch.sin(x).cos().sum(), backend="aot_eager",
                         fullgraph=True)
    broken = torch.compile(broken_fn, backend="aot_eager")
    x = torch.randn(16, requires_grad=True)
    with profile("cpu") as prof_full:
        full(x).backward()
    with profile("cpu") as prof_broken:
        loss = broken(x)
        loss.backward()
    assert compiled_rows(prof_full).phase.tolist() == ["forward", "backward"]
    ops = prof_broken.ops
    forwards = ops[ops.phase == "forward"]
    # graph, the eager mul between, graph, and backward()'s ones_like
    assert forwards.compiled.tolist() == [True, False, True, False]
    assert forwards.op.iloc[1] == "aten::mul.Tensor"
    names = forwards.op[forwards.compiled].tolist()
    assert names[0].startswith(f"CompiledFunction[{broken_fn.__qualname__} ")
    assert "torch_dynamo_resume_in_broken_fn" in names[1]  # the graph after the break
    assert len(compiled_rows(prof_broken)) == 4  # two graphs, forward and backward each


def test_a_compiled_torchext_op():
    torch._dynamo.reset()
    compiled = torch.compile(lambda x: torchext.sin(x).sum(), backend="aot_eager")
    x = torch.randn(8, requires_grad=True)
    out, expected_saved = saved_storage_bytes(compiled, x)
    out.backward()
    expected_grad, x.grad = x.grad, None
    with profile("cpu") as prof:
        compiled(x).backward()
    assert torch.allclose(x.grad, expected_grad)
    assert compiled_rows(prof).phase.tolist() == ["forward", "backward"]
    assert prof.ops.saved_bytes.sum() == expected_saved > 0


def global_state() -> dict:
    from torch._inductor.output_code import CompiledFxGraph
    from torch.nn.modules import module
    from torch.optim import optimizer

    return {
        "apply": Function.__dict__["apply"],
        "module hooks": (dict(module._global_forward_pre_hooks),
                         dict(module._global_forward_hooks)),
        "optimizer hooks": dict(optimizer._global_optimizer_pre_hooks),
        "compile callbacks": (list(torch._dynamo.callback_handler.start_callbacks),
                              list(torch._dynamo.callback_handler.end_callbacks)),
        "dispatch modes": torch._C._len_torch_dispatch_stack(),
        "saved tensor hooks": torch._C._autograd._top_saved_tensors_default_hooks(True),
        "warning filters": list(warnings.filters),
        "inductor graph call": CompiledFxGraph.__dict__["__call__"],
        "storage resize": torch.UntypedStorage.resize_,
        "compiled classes": [(cls.__dict__["forward"], cls.__dict__["backward"])
                             for cls in Function.__subclasses__()
                             if cls.__name__ == "CompiledFunction"],
    }


def test_no_hook_or_mode_is_left_after_the_block_also_when_compiled_code_raises():
    from torch._dynamo.backends.common import aot_autograd

    torch._dynamo.reset()
    failing = {"now": False}

    def fw_compiler(gm, example_inputs):
        def run(*args):
            if failing["now"]:
                raise RuntimeError("the compiled graph failed")
            return gm(*args)
        return run

    compiled = torch.compile(lambda x: torch.sin(x).sum(),
                             backend=aot_autograd(fw_compiler=fw_compiler))
    x = torch.randn(4, requires_grad=True)
    compiled(x).backward()
    mismatched = torch.compile(lambda a, b: a @ b, backend="aot_eager")
    before = global_state()
    failing["now"] = True
    with pytest.raises(RuntimeError, match="the compiled graph failed"):
        with profile("cpu") as prof:
            compiled(x)  # raises inside the compiled graph's forward
    assert global_state() == before
    assert compiled_rows(prof).op.str.startswith("CompiledFunction[").tolist() == [True]
    with pytest.raises(RuntimeError), profile("cpu"):
        mismatched(torch.randn(2, 3), torch.randn(4, 5))  # raises while Dynamo compiles
    assert global_state() == before


def test_where_torch_cannot_compile_under_the_profiler_it_says_so_once(monkeypatch, tmp_path):
    torch._dynamo.reset()
    backend = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(lambda x: torch.sin(x).sum(), backend=backend)
    x = torch.randn(4, requires_grad=True)
    compiled(x).backward()
    monkeypatch.setattr(compiled_module, "compiled_code_support", lambda: "torch 2.8 cannot")
    monkeypatch.setattr(compiled_module, "_warned_eager", False)
    with pytest.warns(RuntimeWarning, match="ran EAGERLY.*torch 2.8 cannot"):
        with profile("cpu") as prof:
            compiled(x).backward()
    assert backend.frame_count == 1  # compiled outside; inside, its code ran eagerly
    assert not prof.ops.compiled.any() and "aten::sin" in set(prof.ops.op)
    assert "EAGERLY" in prof.meta["compile"]
    assert "EAGERLY" in (prof.save(tmp_path / "run") / "summary.md").read_text()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per process: no second warning
        with profile("cpu") as again:
            compiled(x).backward()
    assert "EAGERLY" in again.meta["compile"]


def test_held_bytes_and_the_leak_finder_cover_a_compiled_graph():
    torch._dynamo.reset()
    compiled = torch.compile(lambda x: torch.sin(torch.sin(x)).sum(),
                             backend="aot_eager_decomp_partition")
    x = torch.randn(32, requires_grad=True)
    compiled(x).backward()
    kept, expected = saved_storage_bytes(compiled, x)  # its graph stays alive, unused
    del kept
    with profile("cpu") as prof:
        kept_loss = compiled(x)  # never backpropagated: the compiled graph holds its saves
    assert prof.held_bytes == expected > 0
    leaks = prof.leaks()
    assert len(leaks) == 1 and leaks.root.iloc[0].startswith("CompiledFunctionBackward[")
    assert leaks.held_bytes.iloc[0] == expected
    assert "kept_loss" in leaks.holder.iloc[0]
    del kept_loss
    assert prof.held_bytes == 0
    assert prof.lifetimes.freed_phase.tolist() == ["after"]


@pytest.mark.parametrize("way", ["eager", "aot_eager"])
def test_compile_study_saved_bytes_match_a_count_outside_the_profiler(tmp_path, way):
    from reports.studies import _common
    from reports.studies import compile as study

    torch._dynamo.reset()
    ctx = _common.Context(device="cpu", size="tiny", out=tmp_path)
    case = study._compiled_case("mlp", ctx, None if way == "eager" else way)
    row, _ = study._measure_case(case, ctx)
    _, expected = saved_storage_bytes(case.loss)
    assert row["saved_bytes"] == expected > 0
    assert row["compiled_rows"] == (0 if way == "eager" else 2)


def test_an_inductor_inference_graph_is_one_compiled_row_with_its_output():
    """Without grad, AOTAutograd runs Inductor's graph without a CompiledFunction, and its
    kernels are unseen by the dispatcher: it is one `CompiledGraph[...]` row."""
    torch._dynamo.reset()
    model = torch.compile(MLP(8, 16, 2, 4))  # Inductor
    x = torch.randn(3, 8)
    with torch.no_grad():
        expected = model(x)  # compiled outside the block
    before = global_state()
    with profile("cpu") as prof, torch.no_grad():
        y = model(x)
    torch.testing.assert_close(y, expected)
    ops = prof.ops
    assert len(ops) == 1 and ops.compiled.all()
    assert ops.op[0].startswith("CompiledGraph[MLP.forward ") and ops.module[0] == "MLP"
    assert ops.output_bytes[0] == y.untyped_storage().nbytes()  # what the graph returned
    assert global_state() == before



@torch.library.custom_op("profiling_test::twice", mutates_args=())
def twice(x: torch.Tensor) -> torch.Tensor:
    return x * 2


twice.register_fake(lambda x: torch.empty_like(x))
twice.register_autograd(lambda ctx, grad: grad * 2)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("backend", ["inductor", "aot_eager"])
@pytest.mark.parametrize("requires_grad", [True, False], ids=["training", "inference"])
def test_which_compiled_graphs_run_without_the_profilers_mode(requires_grad, backend, device,
                                                               monkeypatch):
    # On CUDA, and for Inductor anywhere, the graph's own ops run as they do unprofiled (no
    # Python dispatch, no mode slow path); an aot_eager graph on the CPU runs under the mode,
    # whose storages are the memory there. The eager call after the graph reaches the profiler
    # in every case. Counted where torch hands each op to the mode: its __torch_dispatch__.
    from profiling._dispatch import OpDispatcher

    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    torch._dynamo.reset()
    compiled = torch.compile(lambda x: twice(x.sin()) + 1, backend=backend)
    x = torch.randn(8, requires_grad=requires_grad, device=device)
    compiled(x)
    handed = []
    dispatch = OpDispatcher.__torch_dispatch__

    def counting_dispatch(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN202
        handed.append(str(func))
        return dispatch(self, func, types, args, kwargs)

    prof = profile(device)  # installs the mode's handler: count around that one
    monkeypatch.setattr(OpDispatcher, "__torch_dispatch__", counting_dispatch)
    with prof:
        twice(compiled(x))  # the graph calls twice (an extern kernel), then an eager call
    # (an aot_eager graph without grad runs as aten ops, with no CompiledFunction to hook)
    graph_unseen = backend == "inductor" or (device == "cuda" and requires_grad)
    assert handed.count("profiling_test.twice.default") == (1 if graph_unseen else 2)
    rows = prof.ops
    if backend == "inductor" or requires_grad:  # aot_eager without grad: aten ops, no row
        assert rows.compiled.sum() == 1
        assert rows.op.iloc[0].startswith("CompiledFunction[" if requires_grad
                                          else "CompiledGraph[")
    assert any("twice" in op for op in rows.op[~rows.compiled])  # the eager call's row


def test_a_compiled_graph_whose_first_output_has_no_gradient_keeps_its_backward_row():
    torch._dynamo.reset()
    compiled = torch.compile(lambda x: (x.argmax(), (x.sin() * x).sum()), backend="aot_eager")
    x = torch.randn(64, requires_grad=True)
    compiled(x)
    with profile("cpu") as prof:
        _, loss = compiled(x)
        loss.backward()  # the graph's node is reached by nothing else made in the block
    assert torch.allclose(x.grad, x.detach().sin() + x.detach() * x.detach().cos())
    rows = compiled_rows(prof)
    assert [op.partition("[")[0] for op in rows.op] == ["CompiledFunction",
                                                         "CompiledFunctionBackward"]


def test_a_compiled_backward_whose_forward_ran_before_the_block_keeps_its_ops_in_sight():
    # No node of that graph is found in the block, so there is no row to measure it from
    # outside: its ops stay rows of their own, as for any graph made before the block.
    torch._dynamo.reset()
    compiled = torch.compile(lambda x: (x.sin() * x).sum(), backend="aot_eager")
    x = torch.randn(64, requires_grad=True)
    loss = compiled(x)
    with profile("cpu") as prof:
        loss.backward()
    assert torch.allclose(x.grad, x.detach().sin() + x.detach() * x.detach().cos())
    backward_ops = set(prof.ops.op[prof.ops.phase == "backward"])
    assert {"aten::cos", "aten::sin"} <= backward_ops  # d(x sin x)/dx = sin x + x cos x
    assert not prof.ops.compiled.any()


def test_a_graph_is_named_in_the_blocks_where_its_forward_ran_whatever_ran_before():
    # Graph names are cached across blocks; a node of a graph whose forward ran before this
    # block stays a plain node row here, whether or not an earlier block ran that graph.
    torch._dynamo.reset()
    compiled = torch.compile(lambda x: x.sin() * x, backend="aot_eager")
    x = torch.randn(64, requires_grad=True)
    with profile("cpu") as earlier:
        compiled(x).sum().backward()
    assert compiled_rows(earlier).op.str.startswith("CompiledFunctionBackward[").sum() == 1
    h = compiled(x)
    with profile("cpu") as prof:
        h.sum().backward()
    assert not prof.ops.compiled.any()
    assert "CompiledFunctionBackward" in set(prof.ops.op)


def test_an_aot_eager_steps_peak_on_the_cpu_equals_memtrackers():
    # aot_eager runs the graph's aten ops, which the profiler sees on the CPU: its step's peak
    # is exact, the same as MemTracker's on this MLP (whose compiled program allocates as eager)
    from torch.distributed._tools.mem_tracker import MemTracker

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(),
                                torch.nn.Linear(128, 10))
    x = torch.randn(32, 64)

    def step(module):
        module(x).pow(2).mean().backward()
        for parameter in model.parameters():
            parameter.grad = None

    tracker = MemTracker()
    tracker.track_external(model, x)
    with tracker:
        step(model)
    expected = tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager")
    step(compiled)
    with profile("cpu", track=[model, x]) as prof:
        step(compiled)
    assert prof.ops.compiled.sum() == 2
    assert prof.ops.peak_bytes.max() == expected
    assert not prof.meta["peak_is_lower_bound"]


def test_a_compiled_submodule_and_an_aot_eager_inference_graph_keep_the_models_paths():
    # torch.compile(block) in place of a submodule is named by its place; the FX graph that
    # aot_eager runs as a module without grad (`<lambda>`) is no model of its own
    torch.manual_seed(0)
    model = MLP(8, 16, 2, 4)
    model.net[2] = torch.compile(model.net[2], backend="aot_eager")
    x = torch.randn(3, 8)
    model(x).sum().backward()
    with profile("cpu") as prof:
        model(x).sum().backward()
        with torch.no_grad():
            model(x)
    modules = set(prof.ops.module) - {""}
    assert "MLP.net.2" in modules
    assert not any("_orig_mod" in m or "<lambda>" in m for m in modules)
    assert all(m == "MLP" or m.startswith("MLP.") for m in set(prof.modules.module) - {""})


def test_an_inductor_backward_whose_forward_ran_before_the_block_is_a_compiled_backward_row():
    torch._dynamo.reset()
    compiled = torch.compile(lambda x: (x.sin() * x).sum(), backend="inductor")
    x = torch.randn(64, requires_grad=True)
    compiled(x).backward()
    loss = compiled(x)
    x.grad = None
    with profile("cpu") as prof:
        loss.backward()
    assert torch.allclose(x.grad, x.detach().sin() + x.detach() * x.detach().cos())
    rows = compiled_rows(prof)
    assert list(rows.op) == ["CompiledFunctionBackward[graph]"]
    assert list(rows.phase) == ["backward"]


def test_a_compiled_optimizer_step_is_in_the_optimizer_phase_with_its_state_from_the_start():
    # torch.compile(optimizer.step) compiles away the step's pre-hooks and profiler markers:
    # its row still belongs to the optimizer phase, and Adam's state counts from the block's
    # start, as with the eager step (whose accounting equals MemTracker's elsewhere)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(8, 16)
    torch._dynamo.reset()
    compiled_step = torch.compile(optimizer.step)

    def step(stepper):
        model(x).pow(2).mean().backward()
        stepper()
        optimizer.zero_grad()

    step(compiled_step)
    with profile("cpu") as eager:
        step(optimizer.step)
    with profile("cpu") as compiled:
        step(compiled_step)
    rows = compiled_rows(compiled)
    assert len(rows) == 1 and rows.op.iloc[0].startswith("CompiledGraph[Adam.step")
    assert rows.phase.iloc[0] == "optimizer"
    assert compiled.ops.live_bytes.iloc[0] == eager.ops.live_bytes.iloc[0]


def test_a_profile_inside_another_leaves_the_outer_ones_warning_filter():
    # torch warns at each call of a compiled module while global module hooks exist; each
    # profile filters that warning for its block, and an inner block's end must not take the
    # outer block's filter with it
    torch._dynamo.reset()
    model = torch.compile(torch.nn.Linear(4, 4), backend="aot_eager")
    x = torch.randn(2, 4)
    model(x)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with profile("cpu"):
            with profile("cpu"):
                model(x)
            model(x)  # the outer profile's hooks are still set
    assert not [w for w in caught if "global hooks" in str(w.message)]
