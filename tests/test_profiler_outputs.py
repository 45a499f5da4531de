"""The profiler's outputs: the report folder, load/compare, Chrome trace, plots, Markdown, HTML.

Most tests use a hand-made profile (`fake_profile`) whose every number is known, so the files
can be checked exactly; a few use the real profiler on a chain of `sin` ops on 8 elements.
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import stat
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from matplotlib.image import imread

from profiling import html, plots
from profiling.compare import compare_profiles, save_comparison
from profiling.export import load_profile, save_profile
from profiling.tables import (
    LEAKS_COLUMNS,
    LIFETIMES_COLUMNS,
    OPS_COLUMNS,
    TIMELINE_COLUMNS,
    format_bytes,
    freed_by_node,
    lifetime_summary,
    module_totals,
    op_totals,
    top_ops,
)
from profiling.trace import chrome_trace

REPORT_FILES = [
    "ops.csv", "modules.csv", "lifetimes.csv", "timeline.csv", "leaks.csv", "profile.json",
    "summary.md", "trace.json", "graph.dot", "memory.png", "saved_by_op.png", "saved_by_module.png",
    "report.html",
]  # fmt: skip


class FakeGraph(SimpleNamespace):
    def to_dot(self) -> str:
        return 'digraph autograd {\n  n0 [label="SinBackward0\\nsaved 32 B"];\n}\n'


class FakeProfile:
    """What `profiling.profile` returns, built from DataFrames (the contract's columns)."""

    def __init__(self, ops: list[tuple], lifetimes: list[tuple] = (), leaks: list[tuple] = (),
                 held_bytes: int = 0, peak_bytes: int | None = None) -> None:
        self.ops = pd.DataFrame(ops, columns=OPS_COLUMNS).astype(
            {c: "int64" for c in ("seq", "output_bytes", "saved_bytes", "saved_new_bytes",
                                  "live_bytes", "peak_bytes")}
            | {"time_ms": "float64", "compiled": "bool"})
        end_ms = (self.ops["time_ms"].cumsum() + 0.5 * self.ops["seq"]).astype("float64")
        self.timeline = pd.DataFrame({
            "seq": self.ops["seq"], "t_ms": end_ms, "phase": self.ops["phase"],
            "op": self.ops["op"], "live_bytes": self.ops["live_bytes"],
        })
        self.lifetimes = pd.DataFrame(list(lifetimes), columns=LIFETIMES_COLUMNS).astype(
            {"storage_id": "int64", "nbytes": "int64", "saved_seq": "int64",
             "freed_seq": "Int64"})
        self._leaks = pd.DataFrame(list(leaks), columns=LEAKS_COLUMNS).astype(
            {"held_bytes": "int64", "shared_bytes": "int64", "line": "Int64"})
        self.held_bytes = held_bytes
        nodes = pd.DataFrame(
            [(0, "SinBackward0", "enc", 32, 0, True), (1, "SinBackward0", "", 32, 32, False)],
            columns=["node_id", "name", "module", "saved_bytes", "saved_new_bytes", "alive"])
        self.graph = FakeGraph(nodes=nodes, edges=pd.DataFrame({"src": [1], "dst": [0]}))
        peak = int(self.ops["peak_bytes"].max()) if len(self.ops) else 0
        self.meta = {"device": "cpu", "device_name": "test cpu", "torch_version": "2.x",
                     "triton_version": None, "python": "3.11", "started_at": "2026-01-01T00:00",
                     "wall_ms": 12.5, "peak_bytes": peak if peak_bytes is None else peak_bytes,
                     "command": "python fake.py"}

    def leaks(self) -> pd.DataFrame:
        return self._leaks.copy()


def sin_chain_rows() -> list[tuple]:
    """3 sin ops on 8 float32 elements (32 B each), then their backward nodes."""
    f, b = "forward", "backward"
    return [
        (0, "aten::sin", f, "enc", "[8]", "torch.float32", "cpu", 32, 32, 0, 64, 64, 0.5, False),
        (1, "aten::sin", f, "enc", "[8]", "torch.float32", "cpu", 32, 32, 32, 96, 96, 0.25, False),
        (2, "aten::sin", f, "", "[8]", "torch.float32", "cpu", 32, 32, 32, 128, 128, 0.25, False),
        (3, "SinBackward0", b, "", "[8]", "torch.float32", "cpu", 32, 0, 0, 128, 160, 1.0, False),
        (4, "SinBackward0", b, "enc", "[8]", "torch.float32", "cpu", 32, 0, 0, 96, 160, 1.0, False),
        (5, "SinBackward0", b, "enc", "[8]", "torch.float32", "cpu", 32, 0, 0, 64, 128, 1.0, False),
    ]


def fake_profile() -> FakeProfile:
    lifetimes = [
        (0, 32, "aten::sin", 0, "enc", pd.NA, "", ""),
        (1, 32, "aten::sin", 1, "enc", 4, "SinBackward0", "backward"),
        (2, 32, "aten::sin", 2, "", 3, "SinBackward0", "backward"),
    ]
    leaks = [("SinBackward0", 32, 0, "global 'y' in module __main__ (run.py:3)", "y", 3, "")]
    return FakeProfile(sin_chain_rows(), lifetimes, leaks, held_bytes=32)


@pytest.fixture(scope="module")
def saved_fake(tmp_path_factory) -> tuple[FakeProfile, Path]:
    prof = fake_profile()
    return prof, save_profile(prof, tmp_path_factory.mktemp("fake") / "report", top=5)


# ----------------------------------------------------------------------------- aggregates


def test_format_bytes_uses_binary_units():
    assert [format_bytes(n) for n in (0, 96, 1023, 1536, 3 * 2**20, -2048)] == [
        "0 B", "96 B", "1023 B", "1.50 KiB", "3.00 MiB", "-2.00 KiB"]
    assert format_bytes(5 * 2**40) == "5120.00 GiB"


def test_op_and_module_totals_sum_bytes_and_keep_the_highest_peak():
    ops = fake_profile().ops
    totals = op_totals(ops).set_index(["op", "phase"])
    assert totals.loc[("aten::sin", "forward")].to_dict() == {
        "calls": 3, "output_bytes": 96, "saved_bytes": 96, "saved_new_bytes": 64,
        "peak_bytes": 128, "time_ms": 1.0}
    assert totals.loc[("SinBackward0", "backward"), "peak_bytes"] == 160
    modules = module_totals(ops).set_index("module")
    assert modules.loc["enc", "saved_bytes"] == 64 and modules.loc["enc", "calls"] == 4
    assert modules.loc["", "saved_bytes"] == 32
    assert top_ops(ops, 5, "saved_bytes")["op"].tolist() == ["aten::sin"]  # zero rows left out
    assert top_ops(ops, 1, "peak_bytes")["op"].tolist() == ["SinBackward0"]
    assert op_totals(ops.iloc[:0]).empty


def test_lifetime_summary_and_freed_by_node():
    lifetimes = fake_profile().lifetimes
    fates = lifetime_summary(lifetimes).set_index("fate")
    assert fates.loc["freed during backward"].tolist() == [2, 64]
    assert fates.loc["freed after backward"].tolist() == [0, 0]
    assert fates.loc["still alive"].tolist() == [1, 32]
    assert freed_by_node(lifetimes).to_dict("records") == [
        {"freed_by": "SinBackward0", "tensors": 2, "bytes": 64}]
    assert freed_by_node(lifetimes.iloc[:0]).empty


# ----------------------------------------------------------------------------- the folder


def test_save_profile_writes_every_file(saved_fake):
    _, folder = saved_fake
    for name in REPORT_FILES:
        assert (folder / name).stat().st_size > 0, name
    assert (folder / "graph.svg").exists() == (shutil.which("dot") is not None)


def test_the_profiler_builds_its_tables_with_the_contract_columns():
    from profiling import profile

    x = torch.randn(4, requires_grad=True)
    with profile("cpu") as prof:
        x.sin().sum().backward()
    assert list(prof.ops.columns) == OPS_COLUMNS
    assert list(prof.lifetimes.columns) == LIFETIMES_COLUMNS
    assert list(prof.timeline.columns) == TIMELINE_COLUMNS
    assert list(prof.leaks().columns) == LEAKS_COLUMNS


def test_csv_files_have_the_contract_columns_and_values(saved_fake):
    prof, folder = saved_fake
    ops = pd.read_csv(folder / "ops.csv", keep_default_na=False)
    assert list(ops.columns) == OPS_COLUMNS
    assert ops["saved_bytes"].tolist() == [32, 32, 32, 0, 0, 0]
    assert ops["module"].tolist() == prof.ops["module"].tolist()
    assert list(pd.read_csv(folder / "lifetimes.csv").columns) == LIFETIMES_COLUMNS
    assert list(pd.read_csv(folder / "timeline.csv").columns) == TIMELINE_COLUMNS
    leaks = pd.read_csv(folder / "leaks.csv", keep_default_na=False)
    assert leaks.to_dict("records") == [
        {"root": "SinBackward0", "held_bytes": 32, "shared_bytes": 0,
         "holder": "global 'y' in module __main__ (run.py:3)", "name": "y", "line": 3,
         "message": ""}]


def test_profile_json_round_trips_through_load_profile(saved_fake):
    prof, folder = saved_fake
    for path in (folder, folder / "profile.json"):
        loaded = load_profile(path)
        pd.testing.assert_frame_equal(loaded.ops, prof.ops)
        pd.testing.assert_frame_equal(loaded.lifetimes, prof.lifetimes)  # Int64 <NA> kept
        pd.testing.assert_frame_equal(loaded.timeline, prof.timeline)
        pd.testing.assert_frame_equal(loaded.leaks(), prof.leaks())
        pd.testing.assert_frame_equal(loaded.graph.nodes, prof.graph.nodes)
        pd.testing.assert_frame_equal(loaded.graph.edges, prof.graph.edges)
        assert loaded.graph.to_dot() == prof.graph.to_dot()
        assert loaded.meta == prof.meta and loaded.held_bytes == 32
    ops = loaded.ops
    ops.loc[0, "saved_bytes"] = 999  # read-only: only the copy changes
    assert loaded.ops.loc[0, "saved_bytes"] == 32


def test_a_loaded_profile_saves_the_same_profile_json(saved_fake, tmp_path):
    _, folder = saved_fake
    again = load_profile(folder).save(tmp_path / "again")
    first = json.loads((folder / "profile.json").read_text())
    assert json.loads((again / "profile.json").read_text()) == first


def test_load_profile_rejects_missing_and_foreign_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no saved profile"):
        load_profile(tmp_path / "nowhere")
    (tmp_path / "profile.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="not a torchext profile"):
        load_profile(tmp_path)


def test_graph_dot_is_the_graph_text_and_svg_needs_graphviz(saved_fake, tmp_path, monkeypatch):
    prof, folder = saved_fake
    assert (folder / "graph.dot").read_text() == prof.graph.to_dot()
    fake_dot = tmp_path / "bin" / "dot"  # writes the -o file like graphviz would
    fake_dot.parent.mkdir()
    fake_dot.write_text(f"#!{sys.executable}\nimport sys\n"
                        "open(sys.argv[sys.argv.index('-o') + 1], 'w').write('<svg/>')\n")
    fake_dot.chmod(fake_dot.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(fake_dot.parent))
    out = save_profile(prof, tmp_path / "with_dot")
    assert (out / "graph.svg").read_text() == "<svg/>"
    assert "data:image/svg+xml;base64," in (out / "report.html").read_text()
    fake_dot.write_text("#!/bin/sh\necho broken >&2\nexit 3\n")
    with pytest.warns(RuntimeWarning, match="graphviz failed.*broken"):
        out = save_profile(prof, tmp_path / "broken_dot")
    assert not (out / "graph.svg").exists()


# ----------------------------------------------------------------------------- Chrome trace


def _check_trace_schema(trace: dict, prof) -> list[dict]:
    """The Chrome trace JSON object format; returns the op slices."""
    assert trace["displayTimeUnit"] == "ms" and isinstance(trace["traceEvents"], list)
    events = trace["traceEvents"]
    for event in events:
        assert event["ph"] in {"X", "C", "M"} and isinstance(event["name"], str)
        assert isinstance(event["pid"], int)
    metadata = {(e["name"], e["args"].get("name")) for e in events if e["ph"] == "M"}
    assert {("thread_name", "forward"), ("thread_name", "backward")} <= metadata
    assert any(name == "process_name" for name, _ in metadata)
    slices = [e for e in events if e["ph"] == "X"]
    counters = [e for e in events if e["ph"] == "C"]
    assert len(slices) == len(prof.ops) and len(counters) == len(prof.timeline)
    for event in slices:
        assert event["ts"] >= 0 and event["dur"] >= 0 and isinstance(event["tid"], int)
    assert [c["args"]["live_bytes"] for c in counters] == prof.timeline["live_bytes"].tolist()
    for tid in {e["tid"] for e in slices}:  # slices of one track never overlap
        track = sorted((e for e in slices if e["tid"] == tid), key=lambda e: e["ts"])
        for first, second in zip(track, track[1:], strict=False):
            assert first["ts"] + first["dur"] <= second["ts"] + 1e-3
    return slices


def test_trace_json_is_a_valid_chrome_trace(saved_fake):
    prof, folder = saved_fake
    trace = json.loads((folder / "trace.json").read_text())
    slices = _check_trace_schema(trace, prof)
    first = slices[0]  # ends at t_ms = 0.5 ms after it started 0.5 ms earlier
    assert (first["name"], first["ts"], first["dur"], first["tid"]) == ("aten::sin", 0.0, 500.0, 1)
    assert first["args"]["saved_bytes"] == 32 and first["args"]["module"] == "enc"
    assert {e["tid"] for e in slices if e["cat"] == "backward"} == {2}


def test_trace_of_a_real_profile_has_one_slice_per_op_in_order():
    from profiling import profile

    x = torch.randn(8, requires_grad=True)
    with profile() as prof:
        torch.sin(torch.sin(x)).sum().backward()
    slices = _check_trace_schema(chrome_trace(prof), prof)
    assert [e["args"]["seq"] for e in sorted(slices, key=lambda e: e["ts"])] == sorted(
        prof.ops["seq"].tolist())


# ----------------------------------------------------------------------------- documents


def test_summary_md_has_the_tables(saved_fake):
    text = (saved_fake[1] / "summary.md").read_text()
    for heading in ("## Top 5 operators by saved bytes", "## Top 5 operators by peak bytes",
                    "## Modules: self and inclusive", "## Leaks", "## Saved tensor lifetimes"):
        assert heading in text
    assert "| aten::sin | forward | 3 | 96 B | 64 B | 128 B | 1.000 |" in text
    assert "| SinBackward0 | backward | 3 | 0 B | 0 B | 160 B | 3.000 |" in text
    assert "| enc | 4 | 64 B | 64 B | 32 B | 32 B | 160 B | 2.750 | 2.750 |" in text
    assert "| root | held | shared | holder | message |" in text
    assert "| SinBackward0 | 32 B | 0 B | global 'y' in module __main__ (run.py:3) |  |" in text
    assert "| freed during backward | 2 | 64 B |" in text
    assert "- **held by live graphs after the block**: 32 B" in text


def test_markdown_table_aligns_numbers_and_escapes_pipes():
    frame = pd.DataFrame({"op": ["a|b"], "saved_bytes": [2048], "module": [""]})
    assert html.markdown_table(frame) == (
        "| op | saved | module |\n|:---|---:|:---|\n| a\\|b | 2.00 KiB | (no module) |\n")
    assert html.markdown_table(frame.iloc[:0]) == "_(none)_\n"


def test_report_html_is_self_contained_with_tables_and_embedded_plots(saved_fake):
    _, folder = saved_fake
    page = (folder / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page
    assert "<script" not in page and not re.search(r'(src|href)="(http|//)', page)
    assert page.count("<table>") == 6 and "<td>aten::sin</td>" in page
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert sorted(base64.b64decode(i) for i in images) == sorted(
        (folder / f"{name}.png").read_bytes() for name in plots.PLOTS)
    assert "digraph autograd" in page


def test_html_table_escapes_cells():
    table = html.html_table(pd.DataFrame({"op": ["<Function & co>"], "calls": [1]}))
    assert "<td>&lt;Function &amp; co&gt;</td>" in table and '<td class="num">1</td>' in table


def test_plain_and_rich_tables_show_the_same_cells():
    from rich.console import Console

    frame = op_totals(fake_profile().ops)[html.TABLE_COLUMNS]
    text = html.plain_table(frame, "Top")
    lines = text.splitlines()
    assert lines[0] == "Top" and lines[1].split() == ["op", "phase", "calls", "saved", "saved",
                                                      "new", "peak", "time", "(ms)"]
    assert lines[3].split() == ["aten::sin", "forward", "3", "96", "B", "64", "B", "128", "B",
                                "1.000"]
    assert len({len(line) for line in lines[1:3]}) == 1  # header and rule line up
    console = Console(file=io.StringIO(), width=200)
    frame.loc[0, "op"] = "[bold]not markup[/bold]"
    console.print(html.rich_table(frame, "Top [x]"))
    printed = console.file.getvalue()
    assert "[bold]not markup[/bold]" in printed and "96 B" in printed and "Top [x]" in printed


# ----------------------------------------------------------------------------- plots


def test_pngs_are_valid_images(saved_fake):
    for name in plots.PLOTS:
        path = saved_fake[1] / f"{name}.png"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        height, width, _ = imread(path).shape
        assert height > 200 and width > 400


def test_memory_plot_marks_the_peak_and_shades_the_phases():
    fig = plots.memory_figure(fake_profile())
    ax = fig.axes[0]
    assert "MiB" in ax.get_ylabel() and "seq" in ax.get_xlabel()
    assert any(t.get_text() == "peak 160 B\n#3 SinBackward0, phase backward" for t in ax.texts)
    labels = ax.get_legend_handles_labels()[1]
    assert {"forward phase", "backward phase", "peak"} <= set(labels)
    live = [line for line in ax.get_lines() if line.get_label() == "live bytes after the event"]
    assert list(live[0].get_ydata() * 2**20) == [64, 96, 128, 128, 96, 64]


def test_bar_charts_have_units_and_one_bar_per_saving_op():
    prof = fake_profile()
    ax = plots.saved_by_op_figure(prof).axes[0]
    assert ax.get_xlabel() == "bytes saved for backward (B)" and ax.get_title()
    assert [t.get_text() for t in ax.get_yticklabels()] == ["aten::sin"]
    ax = plots.saved_by_module_figure(prof).axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["(no module)", "enc"]
    assert sorted(p.get_width() for p in ax.patches) == [32, 32, 32, 64]  # saved, saved new


def test_plots_of_an_empty_profile_say_so(tmp_path):
    empty = FakeProfile([])
    paths = plots.save_plots(empty, tmp_path)
    assert all(p.stat().st_size > 0 for p in paths.values())
    assert plots.memory_figure(empty).axes[0].texts[0].get_text() == "no operators recorded"
    save_profile(empty, tmp_path / "empty")  # every file still written
    assert load_profile(tmp_path / "empty").ops.empty


# ----------------------------------------------------------------------------- compare


def test_compare_profiles_numbers_are_exact(tmp_path):
    a = fake_profile()
    rows = sin_chain_rows()[1:]  # the first sin (and its saved 32 B) dropped; a new op added
    rows.append((6, "aten::cos", "forward", "dec", "[8]", "torch.float32", "cpu", 32, 32, 32,
                 96, 200, 2.0, False))
    b = FakeProfile(rows, held_bytes=0)
    comparison = compare_profiles(a, b)
    ops = comparison.ops.set_index(["op", "phase"])
    sin = ops.loc[("aten::sin", "forward")]
    assert (sin["calls_a"], sin["calls_b"], sin["calls_delta"]) == (3, 2, -1)
    assert (sin["saved_bytes_a"], sin["saved_bytes_b"], sin["saved_bytes_delta"]) == (96, 64, -32)
    assert sin["saved_bytes_ratio"] == pytest.approx(64 / 96)
    assert sin["saved_new_bytes_delta"] == 0 and sin["peak_bytes_delta"] == 0
    assert sin["time_ms_delta"] == pytest.approx(-0.5)
    cos = ops.loc[("aten::cos", "forward")]
    assert (cos["calls_a"], cos["saved_bytes_b"], cos["peak_bytes_delta"]) == (0, 32, 200)
    assert pd.isna(cos["saved_bytes_ratio"])  # b / 0 is undefined
    # largest |saved delta| first; the tie (32 B each) goes to the larger |peak delta|
    assert comparison.ops["op"].tolist()[:2] == ["aten::cos", "aten::sin"]
    modules = comparison.modules.set_index("module")
    assert modules.loc["enc", "saved_bytes_delta"] == -32
    assert modules.loc["dec", "saved_bytes_a"] == 0 and modules.loc["dec", "calls_b"] == 1
    totals = comparison.totals.set_index("metric")
    assert totals.loc["saved_bytes"].tolist()[:3] == [96.0, 96.0, 0.0]
    assert totals.loc["peak_bytes"].tolist()[:3] == [160.0, 200.0, 40.0]
    assert totals.loc["held_bytes"].tolist() == [32.0, 0.0, -32.0, 0.0]
    assert totals.loc["operators", "ratio"] == 1.0
    # the same numbers from the saved files
    loaded = compare_profiles(load_profile(save_profile(a, tmp_path / "a")),
                              load_profile(save_profile(b, tmp_path / "b")))
    pd.testing.assert_frame_equal(loaded.ops, comparison.ops)
    out = save_comparison(comparison, tmp_path / "cmp")
    assert pd.read_csv(out / "compare_ops.csv")["saved_bytes_delta"].tolist()[:2] == [32, -32]
    assert "| aten::cos | forward | 0 B | 32 B | 32 B |" in (out / "compare.md").read_text()


# ----------------------------------------------------------------------------- real profiler


def test_real_profile_saves_and_loads_back(tmp_path):
    from profiling import profile

    x = torch.randn(8, requires_grad=True)
    with profile() as prof:
        y = torch.sin(torch.sin(torch.sin(x)))
        y.sum().backward(retain_graph=True)
    folder = prof.save(tmp_path / "real")
    loaded = load_profile(folder)
    pd.testing.assert_frame_equal(loaded.ops, prof.ops)
    pd.testing.assert_frame_equal(loaded.lifetimes, prof.lifetimes)
    pd.testing.assert_frame_equal(loaded.graph.nodes, prof.graph.nodes)
    assert loaded.held_bytes == prof.held_bytes == 3 * 8 * 4
    assert loaded.leaks()["held_bytes"].tolist() == [96]
    assert "| aten::sin | forward | 3 | 96 B |" in (folder / "summary.md").read_text()
    del y


class TerminalStream(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_emit_uses_rich_on_a_terminal_and_plain_text_in_a_pipe(monkeypatch):
    frame = op_totals(fake_profile().ops)[html.TABLE_COLUMNS]
    sections = [html.Section("top", "Top ops", frame)]
    for stream, box in ((TerminalStream(), "┃"), (io.StringIO(), "---------")):
        monkeypatch.setattr(sys, "stdout", stream)
        html.emit(sections, None, {"peak memory": "160 B"}, {})
        printed = stream.getvalue()
        assert box in printed and "aten::sin" in printed and "Top ops" in printed
        assert "peak memory" in printed and "160 B" in printed


# ----------------------------------------------------------------------------- layout


def _profiling_imports(module: str) -> set[str]:
    import ast

    tree = ast.parse((Path(__file__).parents[1] / "profiling" / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            name = node.module if node.level == 0 else f"profiling.{node.module}"
            if name == "profiling":  # `from profiling import html, plots`
                found |= {f"profiling.{alias.name}" for alias in node.names}
            elif name.startswith("profiling."):
                found.add(name)
    return found


def test_writers_take_derived_tables_from_tables_and_not_from_each_other():
    assert _profiling_imports("tables") == set()
    for writer in ("html", "plots", "trace", "graph_svg"):
        assert _profiling_imports(writer) <= {"profiling.tables"}, writer
    assert _profiling_imports("compare") <= {"profiling.tables", "profiling.html"}  # its .md
    assert _profiling_imports("_graph") <= {"profiling.tables", "profiling._saved"}
    from profiling import compare, tables

    assert html.format_bytes is plots.format_bytes is compare.format_bytes is tables.format_bytes
    assert plots.module_totals is tables.module_totals
    assert compare.inclusive_module_totals is tables.inclusive_module_totals
