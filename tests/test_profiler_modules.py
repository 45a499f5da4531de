"""`prof.modules`: self and inclusive figures per module path, the root's row the model's total.

The saved bytes are checked against an independent count: the same model run without the
profiler under `saved_tensors_hooks` and module hooks of the test's own, each saved storage
counted once, for every module on the stack when it was first saved.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from torch import nn
from torch.nn.modules.module import (
    register_module_forward_hook,
    register_module_forward_pre_hook,
)

from profiling import profile
from profiling.export import load_profile
from profiling.tables import MODULE_COLUMNS, module_table


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.linear1(x))  # tanh runs in Block itself


class TinyLM(nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.embed = nn.Linear(4, width)
        self.layers = nn.ModuleList([Block(width), Block(width)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        for layer in self.layers:
            h = layer(h)
        return h.exp()  # exp runs in the root itself


def run_step(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    # outside every module: cos saves `out` (saved first by the root's exp), sin saves cos's
    return model(x).cos().sin().sum()


def saved_bytes_by_module_reference(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    """Bytes of the storages first saved while each module path, or one under it, was on the
    stack ("": none was)."""
    paths = {m: f"TinyLM.{name}" if name else "TinyLM" for name, m in model.named_modules()}
    stack: list[str] = []
    first: dict[int, tuple[int, tuple[str, ...]]] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        first.setdefault(storage.data_ptr(), (storage.nbytes(), tuple(stack)))
        return tensor

    def enter(module: nn.Module, args: tuple) -> None:
        stack.append(paths[module])

    def leave(module: nn.Module, args: tuple, output: object) -> None:
        stack.pop()

    handles = [register_module_forward_pre_hook(enter), register_module_forward_hook(leave)]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = run_step(model, x)  # alive until counted: no storage address is reused
    finally:
        for handle in handles:
            handle.remove()
    def under(path: str, on: tuple[str, ...]) -> bool:  # a ModuleList is never on the stack
        return any(p == path or p.startswith(path + ".") for p in on)

    counts = {path: sum(n for n, on in first.values() if under(path, on))
              for path in paths.values()}
    counts[""] = sum(n for n, on in first.values() if not on)
    del loss
    return counts


@pytest.fixture(scope="module")
def profiled() -> tuple:
    torch.manual_seed(0)
    model, x = TinyLM(), torch.randn(2, 4)
    with profile("cpu") as prof:
        run_step(model, x).backward()
    return prof, model, x


def test_rows_are_the_module_tree_in_call_order(profiled):
    prof = profiled[0]
    modules = prof.modules
    assert list(modules.columns) == MODULE_COLUMNS
    assert modules["module"].tolist() == [
        "TinyLM", "TinyLM.embed", "TinyLM.layers", "TinyLM.layers.0",
        "TinyLM.layers.0.linear1", "TinyLM.layers.1", "TinyLM.layers.1.linear1", ""]
    by_path = modules.set_index("module")
    # the ModuleList never runs a forward: a row for the tree, with no ops of its own
    assert by_path.loc["TinyLM.layers", "self_ops"] == 0
    assert by_path.loc["TinyLM.layers", "inclusive_ops"] > 0


def test_inclusive_figures_are_the_sums_over_each_path_and_those_under_it(profiled):
    prof = profiled[0]
    ops, by_path = prof.ops, prof.modules.set_index("module")
    for path, row in by_path.iterrows():
        own = ops[ops["module"] == path]
        under = ops[(ops["module"] == path) | ops["module"].str.startswith(f"{path}.")] \
            if path else own
        assert row["self_ops"] == len(own) and row["inclusive_ops"] == len(under), path
        for name in ("output_bytes", "saved_bytes", "saved_new_bytes"):
            assert row[f"self_{name}"] == own[name].sum(), (path, name)
            assert row[f"inclusive_{name}"] == under[name].sum(), (path, name)
        assert row["self_peak_bytes"] == (own["peak_bytes"].max() if len(own) else 0)
        assert row["inclusive_peak_bytes"] == under["peak_bytes"].max()
        assert row["self_time_ms"] == pytest.approx(own["time_ms"].sum())
        assert row["inclusive_time_ms"] == pytest.approx(under["time_ms"].sum())


def test_the_roots_inclusive_row_is_the_models_total(profiled):
    prof = profiled[0]
    ops = prof.ops
    model_rows = ops[ops["module"].str.startswith("TinyLM")]
    root = prof.modules.set_index("module").loc["TinyLM"]
    assert root["inclusive_ops"] == len(model_rows) > root["self_ops"] > 0
    assert root["inclusive_saved_bytes"] == model_rows["saved_bytes"].sum()
    assert root["inclusive_time_ms"] == pytest.approx(model_rows["time_ms"].sum())
    assert root["inclusive_peak_bytes"] == model_rows["peak_bytes"].max()
    # the root and "" (outside every module) together are every op; self rows count each once
    outside = prof.modules.set_index("module").loc[""]
    assert root["inclusive_saved_bytes"] + outside["inclusive_saved_bytes"] == \
        ops["saved_bytes"].sum() == prof.modules["self_saved_bytes"].sum()
    assert prof.modules["self_ops"].sum() == len(ops)


def test_saved_bytes_match_an_independent_count_per_module(profiled):
    prof, model, x = profiled
    expected = saved_bytes_by_module_reference(model, x)
    width, batch, float32 = 8, 2, 4
    # by hand: embed saves x and its weight, each linear1 its input and weight, each tanh and
    # the root's exp their outputs, the outside sin the output of cos
    activation = batch * width * float32
    assert expected["TinyLM.layers.0"] == activation + width * width * float32 + activation
    assert expected[""] == activation
    shown = prof.modules.set_index("module")["inclusive_saved_bytes"].to_dict()
    assert shown == expected


def test_the_module_table_is_saved_and_loaded_back(profiled, tmp_path):
    prof = profiled[0]
    folder = prof.save(tmp_path / "run")
    pd.testing.assert_frame_equal(
        pd.read_csv(folder / "modules.csv", keep_default_na=False), prof.modules)
    pd.testing.assert_frame_equal(load_profile(folder).modules, prof.modules)
    root = prof.modules.iloc[0]
    summary = (folder / "summary.md").read_text()
    assert "## Modules: self and inclusive" in summary
    assert f"| TinyLM | {root['self_ops']} | " in summary
    assert "inclusive saved" in (folder / "report.html").read_text()


def test_an_empty_profile_has_an_empty_module_table():
    with profile("cpu") as prof:
        pass
    assert prof.modules.empty and list(prof.modules.columns) == MODULE_COLUMNS
    assert module_table(prof.ops).dtypes["inclusive_time_ms"] == "float64"


def test_compare_diffs_modules_inclusively_so_the_roots_row_is_the_models_change(profiled):
    from profiling.compare import compare_profiles

    prof, model, _ = profiled
    with profile("cpu") as bigger:
        run_step(model, torch.randn(6, 4)).backward()  # 3x the batch
    modules = compare_profiles(prof, bigger).modules.set_index("module")
    for name in ("saved_bytes", "saved_new_bytes"):
        before, after = (p.ops[p.ops["module"].str.startswith("TinyLM")][name].sum()
                         for p in (prof, bigger))
        assert modules.loc["TinyLM", f"{name}_a"] == before
        assert modules.loc["TinyLM", f"{name}_delta"] == after - before != 0
