"""The report generator: a tiny run of every study, checked against what is known exactly."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from profiling.tables import SAVED_NEW_DEFINITION
from reports import cli, generate, models
from reports.studies import STUDIES
from reports.studies.recomputation import WAYS as RECOMPUTATION_WAYS
from reports.studies.retain_graph import _two_losses
from reports.studies.torchext_vs_torch import LEAST_SQUARES_WAYS
from torchext import examples

FLOAT32 = 4


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    """One tiny run of every study on the CPU (about half a minute)."""
    folder = tmp_path_factory.mktemp("reports")
    assert generate.main(["--device", "cpu", "--size", "tiny", "--out", str(folder)]) == 0
    return folder


def csv(out: Path, study: str, name: str) -> pd.DataFrame:
    return pd.read_csv(out / study / f"{name}.csv")


def test_every_page_opens_with_an_answer_and_its_files_exist(out: Path):
    for study in STUDIES:
        text = (out / f"{study}.md").read_text(encoding="utf-8")
        lines = text.splitlines()
        assert lines[0].startswith("# ")
        answer = lines[2]
        assert answer.startswith("**Answer.** ") and re.search(r"\d", answer), study
        assert "Command: `python -m reports.generate --device cpu --size tiny" in text
        linked = re.findall(r"\]\((" + study + r"/[^)]+)\)", text)
        assert any(p.endswith(".png") for p in linked) and any(p.endswith(".csv") for p in linked)
        for path in linked:
            assert (out / path).is_file(), path
            if path.endswith(".png"):
                assert (out / path).stat().st_size < 300_000


def test_pages_showing_saved_new_define_it_in_the_profilers_words(out: Path):
    definition = " ".join(SAVED_NEW_DEFINITION.split())
    for study in ("retain_graph", "torchext_vs_torch"):
        assert definition in " ".join((out / f"{study}.md").read_text(encoding="utf-8").split())


def test_index_lists_every_study_with_device_versions_and_command(out: Path):
    index = (out / "README.md").read_text(encoding="utf-8")
    assert f"torch {torch.__version__}" in index and "triton " in index
    assert "- Device: cpu, " in index and "- Date: " in index
    assert "- Command: `python -m reports.generate --device cpu --size tiny --out " in index
    for study in STUDIES:
        assert f"]({study}.md)" in index


def test_retained_bytes_are_the_graphs_saved_bytes(out: Path):
    for name in ("depth_batch", "models"):
        frame = csv(out, "retain_graph", name)
        assert (frame.held_after_retain_bytes == frame.graph_saved_bytes).all()
        assert (frame.held_after_plain_bytes == 0).all()
        assert (frame.graph_saved_bytes > 0).all()
    depth = csv(out, "retain_graph", "depth_batch").query("sweep == 'depth'")
    assert depth.held_after_retain_bytes.is_monotonic_increasing


def test_two_losses_same_gradients_and_the_second_backward_error(out: Path):
    losses = csv(out, "retain_graph", "two_losses").set_index("code")
    separate = losses.loc["l1.backward(retain_graph=True); l2.backward()"]
    summed = losses.loc["(l1 + l2).backward()"]
    assert summed.backward_nodes_run < separate.backward_nodes_run
    assert summed.held_after_backward_bytes == 0 < separate.held_after_backward_bytes
    twice = csv(out, "retain_graph", "backward_twice").set_index("code")
    assert twice.loc["l1.backward(); l2.backward()", "result"].startswith(
        "RuntimeError: Trying to backward through the graph a second time")
    assert (twice.drop(index="l1.backward(); l2.backward()").result == "ok").all()


def _max_difference(first, second) -> float:
    return max(float((a - b).abs().max()) for a, b in zip(first, second, strict=True))


def test_two_losses_gradients_are_the_same_as_torch_finds(out: Path):
    """The page's gradient gap between the two ways, against autograd.grad run here."""
    case = models.case("transformer", "tiny", torch.device("cpu"))
    params = list(case.model.parameters())
    l1, l2 = _two_losses(case.model, *case.batch)
    grads_1 = torch.autograd.grad(l1, params, retain_graph=True, materialize_grads=True)
    grads_2 = torch.autograd.grad(l2, params, retain_graph=True, materialize_grads=True)
    summed = torch.autograd.grad(l1 + l2, params)
    gap = _max_difference([a + b for a, b in zip(grads_1, grads_2, strict=True)], summed)
    assert gap < 1e-5
    reported = csv(out, "retain_graph", "two_losses").max_grad_difference
    assert reported.to_numpy() == pytest.approx(gap, abs=1e-6)


def test_checkpointing_gradients_are_the_plain_gradients(out: Path):
    """The page's gap between checkpointed and plain gradients, against autograd.grad here."""
    frame = csv(out, "recomputation", "checkpointing")
    s = models.SIZES["transformer"]["tiny"]
    cpu = torch.device("cpu")
    for layers, rows in frame.groupby("layers"):
        model = models.build(lambda n=int(layers): models.TransformerLM(
            s["vocab"], s["d_model"], s["heads"], n, s["seq_len"]), cpu)
        ids = models.tokens(s["batch"], s["seq_len"], s["vocab"], cpu)
        params = list(model.parameters())
        grads = {
            way: torch.autograd.grad(models.lm_loss(model(ids[:, :-1], block), ids[:, 1:]), params)
            for way, block in RECOMPUTATION_WAYS.items()
        }
        gap = _max_difference(*grads.values())
        assert gap < 1e-5
        assert rows.max_grad_difference.to_numpy() == pytest.approx(gap, abs=1e-6)


def test_detach_leak_grows_by_one_graph_per_iteration_and_is_named(out: Path):
    summary = csv(out, "detach", "accumulation").set_index("code")
    leak = summary.loc["eval loop: total += loss"]
    one_graph = leak.one_step_graph_new_bytes
    assert one_graph > 0
    per_iteration = csv(out, "detach", "held_per_iteration")
    held = per_iteration[per_iteration.code == "eval loop: total += loss"].held_bytes.tolist()
    growth = [b - a for a, b in zip(held, held[1:], strict=False)]
    assert growth and all(g == one_graph for g in growth)  # parameters count once, in step 1
    for fixed in ("eval loop: total += loss.detach()", "eval loop: total += loss.item()",
                  "train loop: total += loss.item()"):
        assert summary.loc[fixed, "held_after_loop_bytes"] == 0
        assert summary.loc[fixed, "graph_nodes_alive"] == 0
    # With a backward per step the saved tensors are freed, but the graph nodes stay.
    train = summary.loc["train loop: total += loss"]
    assert train.held_after_loop_bytes == 0 and train.graph_nodes_alive > 0
    leaks = csv(out, "detach", "leaks")
    assert leaks.code.tolist() == ["eval loop: total += loss"]
    assert "'total_loss'" in leaks.holder.item()
    assert leaks.held_bytes.item() == leak.held_after_loop_bytes


def test_detach_bptt_gan_and_frozen_backbone(out: Path):
    bptt = csv(out, "detach", "truncated_bptt")
    cut = bptt[bptt["state between chunks"] == "detach()"]
    carried = bptt[bptt["state between chunks"] == "carried"]
    assert (cut.held_after_bytes == 0).all()
    assert carried.held_after_bytes.is_monotonic_increasing
    assert carried.peak_bytes.iloc[-1] > cut.peak_bytes.iloc[-1]
    gan = csv(out, "detach", "gan_step").set_index("code")
    assert 0 < gan.loc["D(fake.detach())", "d_loss_graph_bytes"] < gan.loc[
        "D(fake)", "d_loss_graph_bytes"]
    assert not gan.loc["D(fake.detach())", "generator_got_grads"]
    assert gan.loc["D(fake)", "generator_got_grads"]
    frozen = csv(out, "detach", "frozen_backbone").set_index("code")
    held = frozen.held_after_forward_bytes
    head_input = held.loc["backbone.requires_grad_(False)"]
    assert held.loc["backbone(x).detach()"] == head_input
    assert held.loc["with torch.no_grad(): backbone(x)"] == head_input
    assert held.loc["neither (backbone trains)"] > head_input


def test_reverse_mode_saves_k_inputs_forward_mode_stays_flat(out: Path):
    for name in ("chain_torch", "chain_torchext"):
        chain = csv(out, "forward_vs_reverse", name)
        assert (chain.reverse_saved_bytes == chain.k * chain.n * FLOAT32).all(), name
        assert (chain.reverse_held_after_forward_bytes == chain.reverse_saved_bytes).all()
        assert (chain.forward_saved_bytes == 0).all()
    torch_chain = csv(out, "forward_vs_reverse", "chain_torch")
    assert torch_chain[torch_chain.k >= 2].forward_peak_bytes.nunique() == 1
    assert torch_chain.reverse_peak_bytes.is_monotonic_increasing
    gradient = csv(out, "forward_vs_reverse", "full_gradient")
    assert (gradient.forward_passes == gradient.inputs).all()


def test_full_gradient_agreement_is_what_torch_func_finds(out: Path):
    """The page's `gradients_agree` against jacrev and jacfwd of the same MLP, run here."""
    gradient = csv(out, "forward_vs_reverse", "full_gradient")
    s = models.SIZES["mlp"]["tiny"]
    cpu = torch.device("cpu")
    for n, agree in zip(gradient.inputs, gradient.gradients_agree, strict=True):
        n = int(n)
        model = models.build(lambda n=n: models.MLP(n, s["width"], s["depth"], 1), cpu)
        x = models.normal(n, device=cpu)

        def summed(t, model=model):
            return model(t).sum()

        reverse, forward = torch.func.jacrev(summed)(x), torch.func.jacfwd(summed)(x)
        torch.testing.assert_close(forward, reverse, rtol=1e-4, atol=1e-6)
        assert bool(agree) == torch.allclose(forward, reverse, rtol=1e-4, atol=1e-6)


def test_double_backward_saves_more_than_single(out: Path):
    frame = pd.concat([csv(out, "second_derivatives", "grad_vs_hvp_lesson"),
                       csv(out, "second_derivatives", "grad_vs_hvp_mlp")]).set_index("function")
    mlp = frame.loc["MLP loss"]
    assert mlp.hvp_saved_bytes > mlp.grad_saved_bytes
    assert mlp.hvp_saved_by_backward_bytes > 0 and mlp.hvp_held_after_first_grad_bytes > 0
    assert (frame.hvp_saved_bytes >= frame.grad_saved_bytes).all()
    # sin's double backward: torchext's backward Function re-saves x, already saved.
    sin = frame.loc["sum(sin(x))"]
    assert sin.hvp_saved_by_backward_bytes < sin.grad_saved_bytes


def test_checkpointing_lowers_saved_bytes(out: Path):
    frame = csv(out, "recomputation", "checkpointing")
    wide = frame.pivot(index="layers", columns="way", values="saved_bytes")
    assert (wide["checkpoint per layer"] < wide["no checkpointing"]).all()


def test_fused_least_squares_saves_less_than_the_compositions(out: Path):
    fits = csv(out, "torchext_vs_torch", "least_squares")
    for n, rows in fits.groupby("rows"):
        saved_new = rows.set_index("way").saved_new_bytes
        fused = saved_new.loc["te.least_squares(X, w, y) (fused)"]
        assert fused == rows.features.iloc[0] * FLOAT32  # its gradient, a d-vector
        assert saved_new.loc["((X @ w - y) ** 2).sum() (torch)"] == n * FLOAT32  # the residual
        assert fused < saved_new.loc["te.dot(r, r), r = te.sub(te.mv(X, w), y)"]
    totals = csv(out, "torchext_vs_torch", "examples")
    assert set(totals.example) == set(examples.EXAMPLES)
    assert set(totals.ops) == {"torchext", "torch"}
    per_op = csv(out, "torchext_vs_torch", "examples_per_op")
    assert "LeastSquaresFunction" in set(per_op.op) and "aten::pow.Tensor_Scalar" in set(per_op.op)


def test_least_squares_gradients_are_the_closed_form_and_the_page_reports_their_gap(out: Path):
    """Each way's gradient, recomputed here, is 2Xᵀ(Xw − y) (fp64); the page's relative gap
    between each way and torch's is the gap between the gradients recomputed here."""
    fits = csv(out, "torchext_vs_torch", "least_squares")
    cpu = torch.device("cpu")
    d = int(fits.features.iloc[0])
    for n, rows in fits.groupby("rows"):
        X = models.normal(n, d, device=cpu, seed=0)
        y = models.normal(n, device=cpu, seed=1)
        w = models.normal(d, device=cpu, seed=2)
        closed_form = 2 * X.double().T @ (X.double() @ w.double() - y.double())
        grads = {}
        for way, loss_fn in LEAST_SQUARES_WAYS.items():
            w_ = w.clone().requires_grad_()
            loss_fn(X, w_, y).backward()
            grads[way] = w_.grad
            scale = closed_form.abs().max().item()
            torch.testing.assert_close(w_.grad.double(), closed_form, rtol=1e-5, atol=1e-6 * scale)
        reference = grads["((X @ w - y) ** 2).sum() (torch)"]
        for way, reported in rows.set_index("way").max_grad_rel_difference.items():
            gap = float((grads[way] - reference).abs().max() / reference.abs().max())
            assert reported == pytest.approx(gap, abs=1e-6), way


def test_cli_report_runs_only_the_study_asked(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "rich.progress", None)  # the plain counter
    flush_calls = []
    set_flush_denormal = torch.set_flush_denormal
    monkeypatch.setattr(torch, "set_flush_denormal",
                        lambda mode: flush_calls.append(mode) or set_flush_denormal(mode))
    code = cli.main(["report", "--device", "cpu", "--size", "tiny", "--only", "recomputation",
                     "--out", str(tmp_path)])
    assert code == 0
    assert sorted(p.name for p in tmp_path.glob("*.md")) == ["README.md", "recomputation.md"]
    assert "[1/1] recomputation" in capsys.readouterr().err
    index = (tmp_path / "README.md").read_text(encoding="utf-8")
    assert "- Command: `torchext-profile report --device cpu --size tiny --only" in index
    assert flush_calls == [True, False]  # on for the studies, back to torch's default after
    assert "- Subnormal floats flushed to zero" in index


def test_cli_report_help_and_usage_errors(capsys):
    assert cli.main(["report", "--help"]) == 0
    assert "usage: torchext-profile report" in capsys.readouterr().out
    assert cli.main(["report", "--only", "nonsense"]) == 2


def test_cuda_without_cuda_is_a_clear_error(tmp_path: Path, capsys):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here: asking for it is not an error")
    assert generate.main(["--device", "cuda", "--out", str(tmp_path)]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


@pytest.mark.cuda
def test_tiny_run_on_cuda_keeps_the_exact_numbers(tmp_path: Path):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    assert generate.main(["--device", "cuda", "--size", "tiny", "--only", "retain_graph",
                          "--only", "forward_vs_reverse", "--out", str(tmp_path)]) == 0
    held = csv(tmp_path, "retain_graph", "depth_batch")
    assert (held.held_after_retain_bytes == held.graph_saved_bytes).all()
    assert (held.held_after_plain_bytes == 0).all()
    chain = csv(tmp_path, "forward_vs_reverse", "chain_torch")
    assert (chain.reverse_saved_bytes == chain.k * chain.n * FLOAT32).all()
    assert "- Device: cuda, " in (tmp_path / "README.md").read_text(encoding="utf-8")
