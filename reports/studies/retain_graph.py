"""Study 1: what `backward(retain_graph=True)` keeps alive, and what to write instead.

(a) bytes held after `backward(retain_graph=True)` vs a plain `backward()`, against MLP depth and
batch, and on each real model; (b) two losses on one trunk: `l1.backward(retain_graph=True);
l2.backward()` vs `(l1 + l2).backward()`; (c) the "backward through the graph a second time"
error, reproduced, and its fixes.
"""

from __future__ import annotations

import pandas as pd
import torch
from torch.nn import functional as F

from profiling.tables import SAVED_NEW_DEFINITION

from .. import models
from .._page import MIB, Page, human_bytes, line_plot, ratio
from ._common import (
    Context,
    compare_ms,
    measure,
    peak_bytes,
    saved_bytes,
    saved_new_bytes,
    zero_grads,
)

NAME = "retain_graph"
TITLE = "retain_graph: what a retained graph costs, and when you do not need it"


def held_after_backward(loss_fn, ctx: Context, retain: bool, track=()) -> dict:
    """Profile one forward + backward; the bytes held by the graph after the backward."""
    held = {}

    def step(prof) -> None:
        loss = loss_fn()
        held["forward"] = prof.held_bytes
        loss.backward(retain_graph=retain)
        held["after"] = prof.held_bytes

    prof = measure(step, ctx, track)
    return {"saved": saved_bytes(prof), "activations": saved_new_bytes(prof),
            "held_forward": held["forward"], "held_after": held["after"], "peak": peak_bytes(prof)}


def _mlp_loss(model, x, labels):
    return lambda: F.cross_entropy(model(x), labels)


def sweep(ctx: Context) -> pd.DataFrame:
    """Held bytes after backward with and without retain_graph, over MLP depth and batch."""
    base = models.SIZES["mlp"][ctx.size]
    depths = ctx.pick(tiny=(1, 2), quick=(2, 4, 8, 16), full=(2, 4, 8, 16, 32))
    batches = ctx.pick(tiny=(4, 8), quick=(16, 64, 256), full=(64, 256, 1024))
    configs = [("depth", d, base["batch"]) for d in depths]
    configs += [("batch", base["depth"], b) for b in batches]
    rows = []
    for axis, depth, batch in configs:
        ctx.note(f"retain_graph: MLP depth {depth}, batch {batch}")
        model = models.build(lambda d=depth: models.MLP(base["in_features"], base["width"], d,
                                                        base["out_features"]), ctx.device)
        x = models.normal(batch, base["in_features"], device=ctx.device)
        labels = models.labels(batch, base["out_features"], ctx.device)
        plain = held_after_backward(_mlp_loss(model, x, labels), ctx, False, (model, x))
        retained = held_after_backward(_mlp_loss(model, x, labels), ctx, True, (model, x))
        rows.append({"sweep": axis, "depth": depth, "batch": batch,
                     "graph_saved_bytes": retained["saved"],
                     "activation_bytes": retained["activations"],
                     "held_after_retain_bytes": retained["held_after"],
                     "held_after_plain_bytes": plain["held_after"],
                     "peak_retain_bytes": retained["peak"], "peak_plain_bytes": plain["peak"]})
    return pd.DataFrame(rows)


def per_model(ctx: Context) -> pd.DataFrame:
    rows = []
    for name in models.MODEL_NAMES:
        ctx.note(f"retain_graph: {name}")
        case = models.case(name, ctx.size, ctx.device)
        params = sum(p.numel() * p.element_size() for p in case.model.parameters())
        plain = held_after_backward(case.loss, ctx, False, (case.model,))
        case.model.zero_grad(set_to_none=True)
        retained = held_after_backward(case.loss, ctx, True, (case.model,))
        rows.append({"model": case.name, "parameter_bytes": params,
                     "graph_saved_bytes": retained["saved"],
                     "held_after_retain_bytes": retained["held_after"],
                     "held_after_plain_bytes": plain["held_after"],
                     "peak_retain_bytes": retained["peak"], "peak_plain_bytes": plain["peak"]})
    return pd.DataFrame(rows)


def _two_losses(model: models.TransformerLM, ids: torch.Tensor):
    """A next-token loss and an auxiliary penalty on the same encoder output."""
    hidden = model.hidden(ids[:, :-1])
    return models.lm_loss(model.head(hidden), ids[:, 1:]), hidden.pow(2).mean()


TWO_LOSS_WAYS = {
    "l1.backward(retain_graph=True); l2.backward()": "separate",
    "(l1 + l2).backward()": "summed",
}


def two_losses(ctx: Context) -> pd.DataFrame:
    """Peak, held bytes, backward nodes run and step time of the two ways, same gradients."""
    case = models.case("transformer", ctx.size, ctx.device)
    model, (ids,) = case.model, case.batch

    def separate_step():
        l1, l2 = _two_losses(model, ids)
        l1.backward(retain_graph=True)
        l2.backward()
        return l1, l2

    def summed_step():
        l1, l2 = _two_losses(model, ids)
        (l1 + l2).backward()
        return l1, l2

    rows, grads = [], {}
    steps = dict(zip(TWO_LOSS_WAYS, (separate_step, summed_step), strict=True))
    for code, step in steps.items():
        ctx.note(f"retain_graph: {code}")
        model.zero_grad(set_to_none=True)
        held: dict[str, int] = {}

        def profiled(prof, step=step, held=held):
            losses = step()
            held["after"] = prof.held_bytes  # the losses are still in scope here
            del losses

        prof = measure(profiled, ctx, (model,))
        grads[code] = [p.grad.clone() for p in model.parameters()]
        rows.append({"code": code, "peak_bytes": peak_bytes(prof),
                     "held_after_backward_bytes": held["after"],
                     "backward_nodes_run": int((prof.ops.phase == "backward").sum())})
    ctx.note("retain_graph: timing the two ways")
    times = compare_ms(steps, ctx, {code: zero_grads(model) for code in steps})
    first, second = grads.values()
    difference = max(float((a - b).abs().max()) for a, b in zip(first, second, strict=True))
    frame = pd.DataFrame(rows)
    frame["step_ms"] = frame.code.map(times)
    frame["max_grad_difference"] = difference
    return frame


def backward_twice(ctx: Context) -> tuple[pd.DataFrame, str]:
    """The error when the second loss backwards through a freed trunk, and the fixes;
    also the error's full message."""
    case = models.case("transformer", ctx.size, ctx.device)
    model, (ids,) = case.model, case.batch
    ways = {
        "l1.backward(); l2.backward()": (False, False),
        "l1.backward(retain_graph=True); l2.backward()": (True, False),
        "(l1 + l2).backward()": (False, True),
    }
    rows, message = [], ""
    for code, (retain, summed) in ways.items():
        outcome = {}

        def step(prof, retain=retain, summed=summed, outcome=outcome):
            l1, l2 = _two_losses(model, ids)
            if summed:
                (l1 + l2).backward()
                outcome["held"] = prof.held_bytes
                outcome["result"] = "ok"
                return
            l1.backward(retain_graph=retain)
            outcome["held"] = prof.held_bytes
            try:
                l2.backward()
                outcome["result"] = "ok"
            except RuntimeError as error:
                outcome["message"] = str(error)
                outcome["result"] = "RuntimeError: " + str(error).split(" (")[0]

        model.zero_grad(set_to_none=True)
        measure(step, ctx, (model,))
        rows.append({"code": code, "held_after_first_backward_bytes": outcome["held"],
                     "result": outcome["result"]})
        message = outcome.get("message", message)
    return pd.DataFrame(rows), message


def run(ctx: Context) -> Page:
    page = Page(NAME, TITLE, ctx.out)
    depth_batch = sweep(ctx)
    on_models = per_model(ctx)
    losses = two_losses(ctx)
    twice, error = backward_twice(ctx)

    biggest = on_models.loc[on_models.held_after_retain_bytes.idxmax()]
    separate, summed = losses.iloc[0], losses.iloc[1]
    by_depth = depth_batch[depth_batch.sweep == "depth"]
    shallow, deep = by_depth.iloc[0], by_depth.iloc[-1]
    page.set_answer(
        f"`backward(retain_graph=True)` keeps every tensor the graph saved alive until the "
        f"loss is dropped: {human_bytes(biggest.held_after_retain_bytes)} on the "
        f"{biggest.model} ({ratio(biggest.held_after_retain_bytes, biggest.parameter_bytes):.1f}x "
        f"its parameters), and on an MLP {human_bytes(shallow.held_after_retain_bytes)} at "
        f"depth {shallow.depth} but {human_bytes(deep.held_after_retain_bytes)} at depth "
        f"{deep.depth}, while a plain `backward()` leaves "
        f"{human_bytes(biggest.held_after_plain_bytes)}. For two losses write "
        f"`(l1 + l2).backward()`, not `l1.backward(retain_graph=True); l2.backward()`: one "
        f"backward pass ({summed.backward_nodes_run} backward nodes instead of "
        f"{separate.backward_nodes_run}), {summed.step_ms:.1f} vs {separate.step_ms:.1f} ms per "
        f"step, peak {human_bytes(summed.peak_bytes)} vs {human_bytes(separate.peak_bytes)}, "
        f"the same gradients.")

    page.section("(a) Memory held after backward",
                 "Each MLP step is profiled twice, once with `loss.backward(retain_graph=True)` "
                 "and once with `loss.backward()`; *held after* is `prof.held_bytes` read right "
                 "after the backward while `loss` is still in scope, *graph saved* is the sum "
                 "of `saved_bytes` over the forward ops (parameters included, each storage "
                 f"once), *activations* its `saved_new_bytes`: {SAVED_NEW_DEFINITION}")
    page.table(depth_batch, "depth_batch")
    for axis in ("depth", "batch"):
        part = depth_batch[depth_batch.sweep == axis]
        fig = line_plot(part, axis, {"backward(retain_graph=True)": "held_after_retain_bytes",
                                     "backward()": "held_after_plain_bytes"},
                        f"Held after backward vs MLP {axis}", f"MLP {axis}",
                        "bytes held after backward (MiB)", scale=1 / MIB,
                        logx=axis == "batch")
        page.figure(fig, f"held_vs_{axis}", f"held bytes after backward against MLP {axis}")
    page.text("On each real model (one training step at this run's size):")
    page.table(on_models, "models")

    page.section("(b) Two losses on one trunk",
                 "A next-token loss `l1` and an auxiliary penalty `l2 = hidden.pow(2).mean()` "
                 "on the same TransformerEncoder output. *Backward nodes run* counts the "
                 "backward rows the profiler recorded: the separate backwards walk the encoder "
                 "twice. *Held after backward* is read while `l1` and `l2` are still alive: "
                 "the retained part of `l1`'s graph that `l2.backward()` never visits stays.")
    page.table(losses, "two_losses", {"max_grad_difference": ".2e"})

    page.section("(c) \"Trying to backward through the graph a second time\"",
                 "Calling `l2.backward()` after a plain `l1.backward()` fails as soon as it "
                 "reaches the encoder, whose saved tensors the first backward already freed:")
    page.code(f"RuntimeError: {error}")
    page.table(twice, "backward_twice")
    page.text("The fix depends on why you backward twice. Two losses on one forward: sum them "
              "and backward once (table (b)). A state carried across steps, such as an RNN "
              "hidden state: `detach()` it between steps (see the detach study). "
              "`retain_graph=True` is for when you really need a second pass through the same "
              "graph, such as several `autograd.grad` calls; it keeps the bytes in table (a) "
              "alive until the last reference to the loss goes.")
    page.write(ctx.footer)
    return page
