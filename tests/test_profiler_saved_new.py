"""One definition of 'saved new': the same words in every output, and the number follows them."""

from __future__ import annotations

import html as html_escaping
from pathlib import Path

import torch

import profiling.profiler
from profiling import plots, profile
from profiling.tables import SAVED_NEW, SAVED_NEW_DEFINITION

FLOAT32 = 4
ROOT = Path(__file__).resolve().parents[1]


def words(text: str) -> str:
    return " ".join(text.split())


def test_saved_new_counts_what_ops_allocated_in_the_block_except_leaves_requiring_grad():
    n = 16
    weight = torch.randn(n, requires_grad=True)  # a parameter: saved, not new
    batch = torch.randn(n)  # made before the block: saved, not new
    base = torch.randn(2 * n)
    view_of_old = base[n:]  # a view of a tensor made before the block: saved, not new
    with profile("cpu") as prof:
        made_here = torch.randn(n)  # allocated by an op in the block: new
        leaf_here = torch.randn(n, requires_grad=True)  # a leaf requiring grad: not new
        s = weight.sin()  # saves weight
        y = weight * batch  # saves batch (the factor of the one input requiring grad)
        z = view_of_old * weight  # saves the view: base's storage
        e = leaf_here.exp()  # saves its result: allocated here, not a leaf: new
        m = made_here * weight  # saves made_here: new
        loss = (s + y + z + e + m).sum()
    ops = prof.ops
    assert ops["saved_new_bytes"].sum() == 2 * n * FLOAT32  # exp's result and made_here
    # every saved storage once: weight, batch, base (whole storage), exp's result, made_here
    assert ops["saved_bytes"].sum() == (n + n + 2 * n + n + n) * FLOAT32
    by_op = ops.groupby("op")["saved_new_bytes"].sum()
    assert by_op["aten::exp"] == n * FLOAT32
    del loss


def test_every_output_shows_the_one_definition(tmp_path):
    x = torch.randn(8, requires_grad=True)
    with profile("cpu") as prof:
        y = x.sin().sin()
    folder = prof.save(tmp_path / "run")
    definition = words(SAVED_NEW_DEFINITION)
    assert definition in words(profiling.profiler.__doc__)
    assert definition in words((folder / "summary.md").read_text())
    assert html_escaping.escape(definition) in words((folder / "report.html").read_text())
    for figure in (plots.saved_by_op_figure(prof), plots.saved_by_module_figure(prof)):
        assert words(figure.get_supxlabel()) == definition
        assert SAVED_NEW in figure.axes[0].get_legend_handles_labels()[1]
    del y


def test_no_other_wording_of_saved_new_is_left():
    """The wordings the outputs used before (the report pages show the constant: tested on
    the generated pages in test_reports.py)."""
    for stale in ("not a view of a tensor already alive", "not a view of a live tensor",
                  "not an input or leaf alive anyway", "not a parameter or the input",
                  "created inside the block that are not leaves"):
        for folder in ("profiling", "reports/studies"):
            for path in (ROOT / folder).rglob("*.py"):
                assert stale not in words(path.read_text()), (stale, path)
