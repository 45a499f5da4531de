"""Study: the checkpoint planner (`profiling.plan_checkpoints`) against the naive choices.

For the TransformerEncoder LM, the LSTM LM and the CNN, one Adam training step at budgets of
90%, 70%, 50% and 30% of its unplanned peak: which modules the planner checkpoints, its
predicted peak against the peak measured with the plan, and the step time; beside
"checkpoint every layer" and `torch.utils.checkpoint.checkpoint_sequential` with sqrt(n)
segments, each measured in the same run with the same profiler and timer.
"""

from __future__ import annotations

import functools
import math

import pandas as pd
import torch
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint_sequential

from profiling import apply_plan, plan_checkpoints, profile

from .. import models
from .._page import Page, bar_plot, human_bytes
from ._common import Context, compare_ms

NAME = "planner"
TITLE = "Checkpoint planner: the cheapest checkpoints within a memory budget, measured"
FRACTIONS = (0.9, 0.7, 0.5, 0.3)

# Sizes where activations, not parameters and Adam's state, fill most of the step's memory.
SIZES = {
    "transformer": {"tiny": dict(vocab=32, d_model=16, heads=2, layers=2, seq_len=16, batch=4),
                    "quick": dict(vocab=256, d_model=64, heads=4, layers=4, seq_len=64,
                                  batch=8),
                    "full": dict(vocab=32000, d_model=512, heads=8, layers=8, seq_len=512,
                                 batch=16)},
    "lstm": {"tiny": dict(vocab=32, embed=16, hidden=32, seq_len=32, batch=16),
             "quick": dict(vocab=256, embed=64, hidden=128, seq_len=64, batch=32),
             "full": dict(vocab=32000, embed=512, hidden=1024, seq_len=256, batch=64)},
    "cnn": {"tiny": dict(channels=4, side=16, batch=8),
            "quick": dict(channels=8, side=28, batch=64),
            "full": dict(channels=64, side=28, batch=512)},
}


class Setup:
    """A model, its Adam step, its layers, and the same step through checkpoint_sequential."""

    def __init__(self, name: str, ctx: Context) -> None:
        s, device = SIZES[name][ctx.size], ctx.device
        self.name = name
        if name == "transformer":
            model = models.build(lambda: models.TransformerLM(
                s["vocab"], s["d_model"], s["heads"], s["layers"], s["seq_len"]), device)
            ids = models.tokens(s["batch"], s["seq_len"], s["vocab"], device)
            mask = model.causal_mask[: s["seq_len"], : s["seq_len"]]
            self.title = "TransformerEncoder LM"
            self.layers = [f"encoder.layers.{i}" for i in range(s["layers"])]
            functions = [functools.partial(layer, src_mask=mask) for layer in model.encoder.layers]
            self.loss = lambda: models.lm_loss(model(ids[:, :-1]), ids[:, 1:])
            self.loss_sequential = lambda segments: models.lm_loss(model.head(
                checkpoint_sequential(functions, segments, model.embed(ids[:, :-1]),
                                      use_reentrant=False)), ids[:, 1:])
        elif name == "lstm":
            model = models.build(lambda: models.LSTMLM(s["vocab"], s["embed"], s["hidden"]),
                                 device)
            ids = models.tokens(s["batch"], s["seq_len"], s["vocab"], device)
            self.title = "LSTM LM"
            self.layers = ["embed", "lstm", "head"]
            functions = [model.embed, lambda e: model.lstm(e)[0], model.head]
            self.loss = lambda: models.lm_loss(model(ids[:, :-1])[0], ids[:, 1:])
            self.loss_sequential = lambda segments: models.lm_loss(checkpoint_sequential(
                functions, segments, ids[:, :-1], use_reentrant=False), ids[:, 1:])
        else:
            model = models.build(lambda: models.SmallCNN(s["channels"], s["side"]), device)
            images = models.normal(s["batch"], 1, s["side"], s["side"], device=device)
            targets = models.labels(s["batch"], 10, device)
            self.title = "small CNN"
            self.layers = [f"backbone.{i}" for i in range(len(model.backbone))]
            self.loss = lambda: F.cross_entropy(model(images), targets)
            self.loss_sequential = lambda segments: F.cross_entropy(model.head(
                checkpoint_sequential(model.backbone, segments, images, use_reentrant=False)),
                targets)
        self.model = model
        self.optimizer = torch.optim.Adam(model.parameters(), 1e-3)
        self.segments = max(1, round(math.sqrt(len(self.layers))))

    def step(self, loss=None) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        (loss or self.loss)().backward()
        self.optimizer.step()

    def peak(self, step) -> int:
        """The step's peak, measured as the planner measures it (optimizer state existing)."""
        step()
        with profile(self.model.parameters().__next__().device,
                     track=[self.model, self.optimizer]) as prof:
            step()
        return int(max(prof.meta["peak_bytes"], prof.ops.peak_bytes.max()))


def _with(names: list[str], setup: Setup):
    def step() -> None:
        with apply_plan(setup.model, names):
            setup.step()
    return step


def measure_model(name: str, ctx: Context) -> pd.DataFrame:
    setup = Setup(name, ctx)
    ctx.note(f"planner: {setup.title}, unplanned and naive")
    sequential = functools.partial(setup.step, lambda: setup.loss_sequential(setup.segments))
    steps = {"no checkpointing": setup.step,
             "checkpoint every layer": _with(setup.layers, setup),
             f"checkpoint_sequential, {setup.segments} segments": sequential}
    rows = [{"model": setup.title, "strategy": way, "budget_bytes": None,
             "modules": ", ".join(setup.layers) if way == "checkpoint every layer" else
             f"{len(setup.layers)} layers in {setup.segments} segments" if "segments" in way
             else "", "predicted_bytes": None, "peak_bytes": setup.peak(step)}
            for way, step in steps.items()]
    baseline = rows[0]["peak_bytes"]
    for fraction in FRACTIONS:
        budget = int(baseline * fraction)
        way = f"planner, {fraction:.0%} budget"
        ctx.note(f"planner: {setup.title}, {way}")
        row = {"model": setup.title, "strategy": way, "budget_bytes": budget}
        try:
            plan = plan_checkpoints(setup.step, setup.model, budget, repeat=ctx.reps)
        except ValueError as exc:
            if "floor is" not in str(exc):
                raise
            floor = int(str(exc).split("the floor is ")[1].split(" bytes")[0])
            rows.append(row | {"modules": f"below the floor ({human_bytes(floor)})",
                               "predicted_bytes": floor, "peak_bytes": None})
            continue
        steps[way] = _with(plan.modules, setup)
        rows.append(row | {"modules": ", ".join(plan.modules) or "(none)",
                           "predicted_bytes": plan.predicted_peak,
                           "peak_bytes": setup.peak(steps[way]),
                           "planner_measured_bytes": plan.measured_peak,
                           "max_grad_difference": plan.max_grad_diff})
    ctx.note(f"planner: {setup.title}, step times")
    times = compare_ms(steps, ctx)
    frame = pd.DataFrame(rows)
    frame["step_ms"] = frame.strategy.map(times)
    frame["time_ratio"] = frame.step_ms / times["no checkpointing"]
    fits = frame.budget_bytes.notna() & (frame.peak_bytes <= frame.budget_bytes)
    frame["fits"] = fits.where(frame.budget_bytes.notna() & frame.peak_bytes.notna(), None)
    return frame


def _answer(frame: pd.DataFrame) -> str:
    planned = frame[frame.strategy.str.startswith("planner") & frame.peak_bytes.notna()]
    error = (planned.predicted_bytes - planned.peak_bytes).abs() / planned.peak_bytes
    parts = [f"Over {len(planned)} planned steps of the three models the predicted peak was "
             f"within {error.max():.1%} of the measured one (median {error.median():.1%}), and "
             f"{int(planned.fits.eq(True).sum())} of {len(planned)} plans fit their budget"]
    below = frame[frame.strategy.str.startswith("planner") & frame.peak_bytes.isna()]
    if len(below):
        parts.append(f"{len(below)} budgets were below what any module checkpoint reaches "
                     f"(the planner said so, naming the floor, instead of running)")
    comparisons = []
    for model, part in frame.groupby("model", sort=False):
        every = part[part.strategy == "checkpoint every layer"].iloc[0]
        fitting = part[part.fits.eq(True)]
        if len(fitting):
            # the tightest budget met, preferring one that peaks no higher than checkpointing
            # every layer
            cheaper = fitting[fitting.peak_bytes <= every.peak_bytes]
            best = (cheaper if len(cheaper) else fitting).sort_values("budget_bytes").iloc[0]
            comparisons.append(
                f"{model}: at its {best.strategy.split(', ')[1]} the planner peaked at "
                f"{human_bytes(best.peak_bytes)} for x{best.time_ratio:.2f} the step time, "
                f"where checkpointing every layer peaked at {human_bytes(every.peak_bytes)} "
                f"for x{every.time_ratio:.2f}")
        else:
            plain = part[part.strategy == "no checkpointing"].iloc[0]
            sequential = part[part.strategy.str.startswith("checkpoint_sequential")].iloc[0]
            floor = part[part.strategy.str.startswith("planner")].predicted_bytes.min()
            comparisons.append(
                f"{model}: every budget was below the floor of {human_bytes(floor)} (unplanned "
                f"{human_bytes(plain.peak_bytes)}); checkpointing every layer peaked at "
                f"{human_bytes(every.peak_bytes)}, checkpoint_sequential at "
                f"{human_bytes(sequential.peak_bytes)}")
    return "; ".join(parts) + ". " + ". ".join(comparisons) + "." if comparisons else \
        "; ".join(parts) + "."


def _peaks_figure(frame: pd.DataFrame):
    """Measured peak per strategy and model, over the model's unplanned peak."""
    models = list(dict.fromkeys(frame.model))
    kinds = [k for k in dict.fromkeys(frame.strategy.str.split(",").str[0]
                                      .where(~frame.strategy.str.startswith("planner"),
                                             frame.strategy))
             if k != "no checkpointing"]
    groups = {}
    for kind in kinds:
        values = []
        for model in models:
            part = frame[frame.model == model]
            plain = part[part.strategy == "no checkpointing"].peak_bytes.iloc[0]
            row = part[part.strategy.str.startswith(kind)]
            values.append(float(row.peak_bytes.iloc[0]) / plain if len(row) else float("nan"))
        groups[kind] = values
    return bar_plot(models, groups, "Step peak with each checkpointing strategy",
                    "measured peak / unplanned peak", reference=1.0)


def run(ctx: Context) -> Page:
    page = Page(NAME, TITLE, ctx.out)
    frame = pd.concat([measure_model(name, ctx) for name in ("transformer", "lstm", "cnn")],
                      ignore_index=True)
    page.set_answer(_answer(frame))
    page.section(
        "Plans, predictions and measurements",
        "One Adam step (zero_grad, forward, cross-entropy, backward, step) per model. "
        "*Budget* is a fraction of the step's unplanned peak; *predicted* is the planner's "
        "prediction for the modules it chose (for a budget below the floor: the floor); "
        "*peak* is measured here, with `profile(track=[model, optimizer])` after a warm-up "
        "step, for every strategy alike (`planner_measured` is the planner's own "
        "measurement). *Every layer* checkpoints each layer module with the same wrapper the "
        "planner uses (`checkpoint(..., use_reentrant=False)`); `checkpoint_sequential` runs "
        "the layers in round(sqrt(n)) segments and, as torch does, leaves the last segment "
        "unchecked. Step times are medians over interleaved runs; `time_ratio` is against no "
        "checkpointing. The planner's gradients equal the unplanned step's "
        "(`max_grad_difference`).")
    shown = frame.drop(columns=["planner_measured_bytes"], errors="ignore")
    page.table(shown, "plans", {"time_ratio": ".2f", "max_grad_difference": ".1e"})
    page.csv(frame, "plans_raw", "All columns, the planner's own measurement included")
    page.figure(_peaks_figure(frame), "peaks",
                "measured peak of each strategy, as a fraction of the unplanned peak "
                "(no bar: a budget below the floor, not run)")
    page.write(ctx.footer)
    return page
