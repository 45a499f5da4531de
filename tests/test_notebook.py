"""Jupyter: `%%memprofile` and examples/autograd_memory.ipynb, executed by a real kernel
(nbclient + ipykernel, the `notebook` extra). The rendered HTML tables are checked against
numbers computed here without the profiler (saved_tensors_hooks, hand counts)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

nbformat = pytest.importorskip("nbformat", reason="the notebook extra: pip install '.[notebook]'")
nbclient = pytest.importorskip("nbclient", reason="the notebook extra: pip install '.[notebook]'")
pytest.importorskip("ipykernel", reason="the notebook extra: pip install '.[notebook]'")

from profiling.export import load_profile  # noqa: E402  (after the skips)
from profiling.tables import SAVED_NEW, format_bytes  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "autograd_memory.ipynb"
KERNEL_TIMEOUT_S = 300  # per cell; the kernel imports torch (and Triton) on a loaded machine
N = 256

MAGIC_CELLS = [
    "%load_ext profiling\nimport torch",
    f"%%memprofile --top 3 --out {{out}}\nx = torch.randn({N}, {N}, requires_grad=True)\n"
    "y = (x * x).sum()\ny.backward(retain_graph=True)\nprint('printed by the cell')\nx.shape",
    "%%memprofile\nraise ValueError('raised by the cell')",
    "after = _memprofile.error is None  # the profile of the failing cell was kept",
]


@pytest.fixture(scope="module")
def magic_out(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("memprofile") / "cell"


@pytest.fixture(scope="module")
def executed(magic_out) -> tuple[object, list[dict], int]:
    """The example notebook, then `MAGIC_CELLS`, run in one kernel (a kernel start imports
    torch: seconds). Returns the notebook, each cell's execute_reply, and where MAGIC_CELLS
    start."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    first_magic = len(notebook.cells)
    notebook.cells += [nbformat.v4.new_code_cell(source.replace("{out}", str(magic_out)))
                       for source in MAGIC_CELLS]
    notebook.cells[first_magic + 2].metadata["tags"] = ["raises-exception"]
    replies: dict[int, dict] = {}
    client = nbclient.NotebookClient(
        notebook, timeout=KERNEL_TIMEOUT_S, kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
        on_cell_executed=lambda cell, cell_index, execute_reply: replies.update(
            {cell_index: execute_reply}))
    client.execute()
    return notebook, replies, first_magic


def _html_outputs(cell) -> list[str]:
    return [o["data"]["text/html"] for o in cell.outputs
            if o["output_type"] == "display_data" and "text/html" in o.get("data", {})]


def _table_row(html: str, first_cell: str) -> list[str]:
    """The cells of the first table row whose first cell is `first_cell`."""
    for row in re.findall(r"<tr>(.*?)</tr>", html, flags=re.S):
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row, flags=re.S)
        if cells and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no table row for {first_cell!r}")


def _overview(html: str, label: str) -> str:
    return re.search(rf"<dt>{re.escape(label)}</dt><dd>(.*?)</dd>", html).group(1)


def _saved_storage_bytes(fn) -> int:
    """Bytes of the distinct storages autograd saves while `fn` runs (no profiler)."""
    storages: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


def test_memprofile_cell_shows_the_summary_and_behaves_like_the_cell(executed, magic_out):
    notebook, replies, first = executed
    profiled, failing, after = notebook.cells[first + 1: first + 4]
    # the cell's own output, then its last value, as without the magic
    assert [o["output_type"] for o in profiled.outputs][:2] == ["stream", "execute_result"]
    assert profiled.outputs[0]["text"] == "printed by the cell\n"
    assert profiled.outputs[1]["data"]["text/plain"] == f"torch.Size([{N}, {N}])"
    [summary] = _html_outputs(profiled)
    x = torch.randn(N, N, requires_grad=True)
    saved = _saved_storage_bytes(lambda: (x * x).sum())  # mul saves x twice: one storage
    assert saved == N * N * 4
    assert _overview(summary, "held by live graphs after the block") == format_bytes(saved)
    # op, phase, calls, saved, saved new, peak: x is a leaf (saved, not new); the peak is x
    # and the product, x * x
    mul_row = _table_row(summary, "aten::mul.Tensor")
    assert mul_row[1:6] == ["forward", "1", format_bytes(saved), "0 B", format_bytes(2 * saved)]
    assert 'src="data:image/png;base64,' in summary  # the memory plot, embedded
    assert load_profile(magic_out).held_bytes == saved  # --out saved the report folder
    # an exception: the same error output and a failed cell, and no frame of ours
    [error] = [o for o in failing.outputs if o["output_type"] == "error"]
    assert (error["ename"], error["evalue"]) == ("ValueError", "raised by the cell")
    assert not any("profiling" in line for line in error["traceback"])
    assert replies[first + 2]["content"]["status"] == "error"
    assert replies[first + 3]["content"]["status"] == "ok" and not after.outputs
    assert len(_html_outputs(failing)) == 1  # the partial profile is still shown


def test_autograd_memory_notebook_shows_what_retain_graph_holds_and_detach_cuts(executed):
    notebook, replies, first = executed
    code = [i for i in range(first) if notebook.cells[i].cell_type == "code"]
    statuses = {notebook.cells[i].get("id"): replies[i]["content"]["status"] for i in code}
    assert statuses.pop("backward-twice") == "error"  # the lesson's RuntimeError
    assert set(statuses.values()) == {"ok"}
    by_id = {cell.get("id"): cell for cell in notebook.cells[:first]}
    n = 1024  # the notebook's vector length: 4 KiB per float32 vector
    [retained] = _html_outputs(by_id["retain-graph"])
    # y = sum(x * x) keeps x (saved twice by mul, one storage) until the graph is freed
    assert _overview(retained, "held by live graphs after the block") == format_bytes(n * 4)
    [detached] = _html_outputs(by_id["detach"])
    # z = u * x saves u and x and its backward frees them; y's graph (its saved x) is held
    # by y; u = y.detach() shares y's storage, made in the cell: the saved new bytes
    assert _overview(detached, "held by live graphs after the block") == format_bytes(n * 4)
    assert _overview(detached, SAVED_NEW) == format_bytes(n * 4)
    assert _overview(detached, "saved for backward") == format_bytes(2 * n * 4)
    assert by_id["repr-numbers"].outputs[0]["data"]["text/plain"] == f"({n * 4}, {n * 4}, True)"
    assert "Autograd memory profile" in by_id["repr"].outputs[0]["data"]["text/html"]
    committed = nbformat.read(NOTEBOOK, as_version=4)  # committed with its outputs
    for cell in committed.cells:
        if cell.cell_type == "code" and cell.source.startswith("%%memprofile"):
            assert _html_outputs(cell), f"cell {cell.get('id')} has no summary: run the notebook"


def test_memprofile_options_fail_as_ipython_usage_errors():
    from IPython.core.error import UsageError

    from profiling.magic import _parse

    assert _parse("--top 3 --out out/cell") == (3, "out/cell")
    for line, message in (("--top 0", "at least 1"), ("--top x", "invalid int"),
                          ("--bogus", "unrecognized arguments: --bogus")):
        with pytest.raises(UsageError, match=message):
            _parse(line)


def test_a_profile_renders_in_a_notebook_only_once_finished():
    from profiling import profile

    x = torch.randn(16, requires_grad=True)
    with profile() as prof:
        assert prof._repr_html_() is None and prof._repr_markdown_() is None  # recording
        y = (x * x).sum()
        y.backward(retain_graph=True)
    held = format_bytes(_saved_storage_bytes(lambda: (x * x).sum()))
    assert f"<dt>held by live graphs after the block</dt><dd>{held}</dd>" in prof._repr_html_()
    assert f"**held by live graphs after the block**: {held}" in prof._repr_markdown_()
