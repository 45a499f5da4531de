"""Study 5: recomputation, `torch.utils.checkpoint` per encoder layer vs none.

Reverse mode keeps every intermediate (O(n) memory in the number of layers); checkpointing keeps
only each layer's input and recomputes the layer's forward during backward. Measured on the
TransformerEncoder LM over its depth: saved bytes, peak memory and step time.
"""

from __future__ import annotations

import pandas as pd
import torch
from torch.utils.checkpoint import checkpoint

from .. import models
from .._page import MIB, Page, axes, human_bytes, lines_by, ratio
from ._common import Context, compare_ms, measure, peak_bytes, zero_grads

NAME = "recomputation"
TITLE = "Recomputation: activation checkpointing, peak memory vs step time"


def checkpointed_layer(layer: torch.nn.Module, h: torch.Tensor, mask: torch.Tensor
                       ) -> torch.Tensor:
    return checkpoint(layer, h, src_mask=mask, use_reentrant=False)


WAYS = {"no checkpointing": None, "checkpoint per layer": checkpointed_layer}


def depth_sweep(ctx: Context) -> pd.DataFrame:
    s = models.SIZES["transformer"][ctx.size]
    rows = []
    for layers in ctx.pick(tiny=(1, 2), quick=(1, 2, 4, 8), full=(2, 4, 8, 16)):
        model = models.build(lambda n=layers: models.TransformerLM(
            s["vocab"], s["d_model"], s["heads"], n, s["seq_len"]), ctx.device)
        ids = models.tokens(s["batch"], s["seq_len"], s["vocab"], ctx.device)
        steps, grads = {}, {}
        for way, block in WAYS.items():
            ctx.note(f"recomputation: {layers} layers, {way}")
            held: dict[str, int] = {}

            def step(prof=None, held=held, block=block, model=model, ids=ids) -> None:
                loss = models.lm_loss(model(ids[:, :-1], block), ids[:, 1:])
                if prof is not None:
                    held["forward"] = prof.held_bytes
                loss.backward()

            model.zero_grad(set_to_none=True)
            prof = measure(step, ctx, (model,))
            grads[way] = [p.grad.clone() for p in model.parameters()]
            rows.append({"layers": layers, "way": way, "saved_bytes": held["forward"],
                         "peak_bytes": peak_bytes(prof)})
            steps[way] = step
        times = compare_ms(steps, ctx, {way: zero_grads(model) for way in steps})
        difference = max(float((a - b).abs().max())
                         for a, b in zip(*grads.values(), strict=True))
        for row in rows[-len(WAYS):]:
            row["step_ms"] = times[row["way"]]
            row["max_grad_difference"] = difference
    return pd.DataFrame(rows)


def run(ctx: Context) -> Page:
    page = Page(NAME, TITLE, ctx.out)
    frame = depth_sweep(ctx)
    deepest = frame[frame.layers == frame.layers.max()].set_index("way")
    plain, ckpt = deepest.loc["no checkpointing"], deepest.loc["checkpoint per layer"]
    page.set_answer(
        f"Checkpointing each layer of the {int(frame.layers.max())}-layer TransformerEncoder LM "
        f"cut the bytes saved for backward from {human_bytes(plain.saved_bytes)} to "
        f"{human_bytes(ckpt.saved_bytes)} ({ratio(plain.saved_bytes, ckpt.saved_bytes):.1f}x) "
        f"and {'lowered' if ckpt.peak_bytes < plain.peak_bytes else 'raised'} the step's peak "
        f"from {human_bytes(plain.peak_bytes)} to {human_bytes(ckpt.peak_bytes)}, for "
        f"{ratio(ckpt.step_ms, plain.step_ms):.2f}x the step time ({ckpt.step_ms:.1f} vs "
        f"{plain.step_ms:.1f} ms): use it when activations, not parameters, fill the memory "
        f"and one extra forward per layer is affordable.")
    page.section("Saved bytes, peak and step time against depth",
                 "One training step (forward, loss, backward). *Saved* is `prof.held_bytes` "
                 "after the forward: with checkpointing only each layer's input is kept, the "
                 "rest is recomputed during backward. *Peak* is the profile's peak over the "
                 "whole step (parameters and gradients included), the recomputed forward "
                 "included. The gradients are the same "
                 "(`max_grad_difference`). `checkpoint(layer, h, src_mask=mask, "
                 "use_reentrant=False)`.")
    page.table(frame, "checkpointing", {"max_grad_difference": ".2e"})
    fig = lines_by(frame, "layers", "way", "saved_bytes",
                   "Bytes saved for backward vs encoder depth", "encoder layers",
                   "saved for backward (MiB)", scale=1 / MIB)
    page.figure(fig, "saved_vs_layers", "saved bytes against depth")
    fig, ax = axes("Peak memory vs step time (each point: one depth)", "step time (ms)",
                   "peak memory (MiB)")
    for way in WAYS:
        part = frame[frame.way == way]
        ax.plot(part.step_ms, part.peak_bytes / MIB, marker="o", label=way)
        for row in part.itertuples():
            ax.annotate(f"{row.layers}L", (row.step_ms, row.peak_bytes / MIB),
                        textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.legend()
    page.figure(fig, "peak_vs_time", "peak memory against step time, per depth")
    page.write(ctx.footer)
    return page
