"""Study 2: `detach()` where it matters: loss accumulation, truncated BPTT, GANs, frozen backbones.

(a) `total += loss` vs `+= loss.item()`/`.detach()` over N iterations, with the leak finder;
(b) an LSTM LM over chunks with the hidden state detached between them or carried (which then
needs `retain_graph=True`); (c) a GAN discriminator step on `fake.detach()` vs `fake`;
(d) a frozen CNN backbone: features detached vs `requires_grad_(False)` vs `no_grad` vs neither.
"""

from __future__ import annotations

import os
import statistics

import pandas as pd
import torch
from torch.nn import functional as F

from profiling import profile

from .. import models
from .._page import MIB, Page, human_bytes, lines_by
from ._common import Context, compare_ms, measure, peak_bytes, zero_grads

NAME = "detach"
TITLE = "detach: the graphs you keep by accident, and how to cut them"

ACCUMULATIONS = {
    "eval loop: total += loss": (False, "graph"),
    "eval loop: total += loss.detach()": (False, "detach"),
    "eval loop: total += loss.item()": (False, "item"),
    "train loop: total += loss": (True, "graph"),
    "train loop: total += loss.item()": (True, "item"),
}


def _accumulate(total, loss: torch.Tensor, how: str):
    if how == "item":
        return total + loss.item()
    return total + (loss.detach() if how == "detach" else loss)


def accumulation(ctx: Context) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Held bytes after each iteration of five loops, and what the leak finder reports."""
    s = models.SIZES["mlp"][ctx.size]
    iterations = ctx.pick(tiny=3, quick=8, full=20)
    per_iteration, summary, leak_rows = [], [], []
    for code, (train, how) in ACCUMULATIONS.items():
        ctx.note(f"detach: {code}")
        model = models.build(lambda: models.MLP(s["in_features"], s["width"], s["depth"],
                                                s["out_features"]), ctx.device)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
        held = []
        with profile(ctx.device, track=(model,)) as prof:
            total_loss = 0.0
            for i in range(iterations):
                x = models.normal(s["batch"], s["in_features"], device=ctx.device, seed=i)
                y = models.labels(s["batch"], s["out_features"], ctx.device, seed=i)
                loss = F.cross_entropy(model(x), y)
                if train:
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                total_loss = _accumulate(total_loss, loss, how)
                del x, y, loss
                held.append(prof.held_bytes)
        # total_loss is still alive here: the leak finder looks for what holds each graph.
        leaks = prof.leaks()
        nodes = prof.graph.nodes
        alive_nodes = int(nodes.alive.sum())
        for row in leaks.itertuples(index=False):
            leak_rows.append({"code": code, "root": row.root, "held_bytes": row.held_bytes,
                              "holder": row.holder.replace(os.getcwd() + os.sep, "")})
        growth = [b - a for a, b in zip(held, held[1:], strict=False)]
        per_iteration += [{"code": code, "iteration": i + 1, "held_bytes": b}
                          for i, b in enumerate(held)]
        summary.append({"code": code, "iterations": iterations,
                        "held_after_loop_bytes": held[-1],
                        "growth_per_iteration_bytes": statistics.median(growth) if growth else 0,
                        "graph_nodes_alive": alive_nodes, "peak_bytes": peak_bytes(prof)})
        del total_loss
    return pd.DataFrame(summary), pd.DataFrame(per_iteration), pd.DataFrame(leak_rows)


def one_step_activations(ctx: Context) -> int:
    """What one eval step's graph saves beyond the parameters: activations and its batch."""
    s = models.SIZES["mlp"][ctx.size]
    model = models.build(lambda: models.MLP(s["in_features"], s["width"], s["depth"],
                                            s["out_features"]), ctx.device)

    def step(prof) -> None:
        x = models.normal(s["batch"], s["in_features"], device=ctx.device)
        y = models.labels(s["batch"], s["out_features"], ctx.device)
        F.cross_entropy(model(x), y)

    return int(measure(step, ctx, (model,)).ops.saved_new_bytes.sum())


def _chunked_sequence(model: models.LSTMLM, ids: torch.Tensor, chunk: int, detach: bool,
                      prof=None, held: dict | None = None) -> None:
    """One backward per chunk; the state is detached between chunks or carried."""
    state = None
    for start in range(0, ids.shape[1] - 1, chunk):
        logits, state = model(ids[:, start:start + chunk], state)
        loss = models.lm_loss(logits, ids[:, start + 1:start + chunk + 1])
        loss.backward(retain_graph=not detach)
        if detach:
            state = tuple(t.detach() for t in state)
    if prof is not None:
        held["after"] = prof.held_bytes  # the last state is still alive


def truncated_bptt(ctx: Context) -> pd.DataFrame:
    """An LSTM LM over n chunks: state detached between chunks vs carried with retain_graph."""
    s = models.SIZES["lstm"][ctx.size]
    chunk = s["seq_len"]
    model = models.build(lambda: models.LSTMLM(s["vocab"], s["embed"], s["hidden"]), ctx.device)
    rows = []
    for n_chunks in ctx.pick(tiny=(1, 2, 3), quick=(1, 2, 4, 8), full=(1, 2, 4, 8, 16)):
        ids = models.tokens(s["batch"], n_chunks * chunk, s["vocab"], ctx.device)
        steps = {}
        for detach in (True, False):
            ctx.note(f"detach: LSTM, {n_chunks} chunks, detach={detach}")
            held: dict[str, int] = {}
            model.zero_grad(set_to_none=True)
            prof = measure(lambda p, d=detach, h=held, i=ids: _chunked_sequence(
                model, i, chunk, d, p, h), ctx, (model,))
            rows.append({"state between chunks": "detach()" if detach else "carried",
                         "chunks": n_chunks, "sequence_length": n_chunks * chunk,
                         "peak_bytes": peak_bytes(prof), "held_after_bytes": held["after"],
                         "backward_nodes_run": int((prof.ops.phase == "backward").sum())})
            steps[detach] = lambda d=detach, i=ids: _chunked_sequence(model, i, chunk, d)
        times = compare_ms(steps, ctx, {d: zero_grads(model) for d in steps})
        rows[-2]["time_ms"], rows[-1]["time_ms"] = times[True], times[False]
    return pd.DataFrame(rows)


def gan_step(ctx: Context) -> pd.DataFrame:
    """Discriminator step on `fake.detach()` vs `fake`: its graph and backward time."""
    s = models.SIZES["mlp"][ctx.size]
    latent, features = s["in_features"] // 2, s["in_features"]
    generator = models.build(lambda: models.MLP(latent, s["width"], s["depth"], features),
                             ctx.device, seed=1)
    discriminator = models.build(lambda: models.MLP(features, s["width"], s["depth"], 1),
                                 ctx.device, seed=2)
    real = models.normal(s["batch"], features, device=ctx.device, seed=3)
    z = models.normal(s["batch"], latent, device=ctx.device, seed=4)
    ones = torch.ones(s["batch"], 1, device=ctx.device)

    def d_loss(detach: bool):
        fake = generator(z)
        scored = discriminator(fake.detach() if detach else fake)
        loss = (F.binary_cross_entropy_with_logits(discriminator(real), ones)
                + F.binary_cross_entropy_with_logits(scored, 0 * ones))
        return loss, fake

    rows, steps, setups = [], {}, {}
    for detach in (True, False):
        code = "D(fake.detach())" if detach else "D(fake)"
        ctx.note(f"detach: GAN step {code}")
        found: dict[str, int] = {}

        def step(prof, detach=detach, found=found) -> None:
            loss, fake = d_loss(detach)
            found["logged"] = loss.item()  # also lets the profiler register the loss's node
            found["d_graph"] = prof.graph_held_bytes(loss)
            found["all"] = prof.held_bytes
            loss.backward()
            found["generator_grads"] = any(p.grad is not None for p in generator.parameters())
            del fake  # kept until here, as a real GAN keeps it for the generator step

        generator.zero_grad(set_to_none=True)
        discriminator.zero_grad(set_to_none=True)
        prof = measure(step, ctx, (generator, discriminator))
        rows.append({"code": code, "d_loss_graph_bytes": found["d_graph"],
                     "all_graphs_bytes": found["all"],
                     "backward_nodes_run": int((prof.ops.phase == "backward").sum()),
                     "generator_got_grads": found["generator_grads"]})
        pending: dict[str, torch.Tensor] = {}

        def forward(detach=detach, pending=pending) -> None:
            generator.zero_grad(set_to_none=True)
            discriminator.zero_grad(set_to_none=True)
            pending["loss"], pending["fake"] = d_loss(detach)

        steps[code] = lambda pending=pending: pending.pop("loss").backward()
        setups[code] = forward
    times = compare_ms(steps, ctx, setups)
    frame = pd.DataFrame(rows)
    frame["d_backward_ms"] = frame.code.map(times)
    return frame


FROZEN_WAYS = ("neither (backbone trains)", "backbone(x).detach()",
               "backbone.requires_grad_(False)", "with torch.no_grad(): backbone(x)")


def frozen_backbone(ctx: Context) -> pd.DataFrame:
    """Training only the head of a CNN, four ways: saved bytes, peak, step time."""
    case = models.case("cnn", ctx.size, ctx.device)
    model, (images, labels) = case.model, case.batch

    def features(way: str) -> torch.Tensor:
        if way == FROZEN_WAYS[3]:
            with torch.no_grad():
                return model.features(images)
        out = model.features(images)
        return out.detach() if way == FROZEN_WAYS[1] else out

    def train_step(way: str, prof=None, found=None) -> None:
        loss = F.cross_entropy(model.head(features(way)), labels)
        if prof is not None:
            found["held"] = prof.held_bytes
        loss.backward()

    def frozen(way: str, flag: bool) -> None:
        if way == FROZEN_WAYS[2]:
            model.backbone.requires_grad_(not flag)

    rows, steps = [], {}
    for way in FROZEN_WAYS:
        ctx.note(f"detach: frozen backbone, {way}")
        found: dict[str, int] = {}
        frozen(way, True)
        model.zero_grad(set_to_none=True)
        prof = measure(lambda p, w=way, f=found: train_step(w, p, f), ctx, (model,))
        frozen(way, False)
        rows.append({"code": way, "held_after_forward_bytes": found["held"],
                     "peak_bytes": peak_bytes(prof),
                     "backward_nodes_run": int((prof.ops.phase == "backward").sum())})

        def timed(way=way) -> None:
            frozen(way, True)
            try:
                train_step(way)
            finally:
                frozen(way, False)

        steps[way] = timed
    times = compare_ms(steps, ctx, {w: zero_grads(model) for w in steps})
    frame = pd.DataFrame(rows)
    frame["step_ms"] = frame.code.map(times)
    return frame


def run(ctx: Context) -> Page:
    page = Page(NAME, TITLE, ctx.out)
    summary, per_iteration, leaks = accumulation(ctx)
    one_step = one_step_activations(ctx)
    summary["one_step_graph_new_bytes"] = one_step
    bptt = truncated_bptt(ctx)
    gan = gan_step(ctx)
    frozen = frozen_backbone(ctx)

    leak = summary.iloc[0]
    item = summary.set_index("code").loc["eval loop: total += loss.item()"]
    train = summary.set_index("code").loc["train loop: total += loss"]
    named = leaks[leaks.code == leak.code]
    holder = named.holder.iloc[0] if len(named) else "nothing"
    longest = bptt.sequence_length.max()
    at_longest = bptt[bptt.sequence_length == longest].set_index("state between chunks")
    cut, carried = at_longest.loc["detach()"], at_longest.loc["carried"]
    page.set_answer(
        f"Accumulate logged losses with `loss.item()` or `loss.detach()`: without a backward "
        f"in the loop, `total += loss` kept {human_bytes(leak.growth_per_iteration_bytes)} more "
        f"alive each iteration ({human_bytes(leak.held_after_loop_bytes)} after "
        f"{leak.iterations} iterations; the leak finder names {holder}), `.item()` "
        f"{human_bytes(item.held_after_loop_bytes)}. Detach an RNN's state between chunks: at "
        f"{longest} tokens the LSTM LM peaked at {human_bytes(cut.peak_bytes)} and took "
        f"{cut.time_ms:.0f} ms with `detach()`, vs {human_bytes(carried.peak_bytes)} and "
        f"{carried.time_ms:.0f} ms carrying the state with `retain_graph=True`.")

    page.section("(a) Accumulating the loss: the training-loop leak",
                 f"An MLP ({leak.iterations} iterations, a new batch each), five loops. "
                 "*Held* is `prof.held_bytes` after each iteration: the bytes of saved tensors "
                 "that autograd graphs still hold. *Graph nodes alive* counts the recorded "
                 "backward nodes still referenced when the loop ends.")
    page.table(summary, "accumulation")
    page.text(f"One eval step's graph saves {human_bytes(one_step)} beyond the parameters "
              f"(activations and the batch, `saved_new_bytes` of a single profiled step); "
              f"`total += loss` grows by {human_bytes(leak.growth_per_iteration_bytes)} per "
              f"iteration: every iteration's graph stays alive through `total_loss`. The "
              f"parameters are saved once and shared by all of them. In the training loop the "
              f"backward already freed each graph's saved tensors, so `total += loss` holds "
              f"{human_bytes(train.held_after_loop_bytes)} of them, but "
              f"{int(train.graph_nodes_alive)} graph nodes stay alive (and with them the loss "
              f"history): still a leak, of host memory.")
    fig = lines_by(per_iteration, "iteration", "code", "held_bytes",
                   "Bytes held by autograd graphs during the loop", "iteration",
                   "held by graphs (MiB)", scale=1 / MIB)
    page.figure(fig, "held_per_iteration", "held bytes after each iteration, per loop")
    page.csv(per_iteration, "held_per_iteration", "Held bytes after each iteration")
    page.text("What `prof.leaks()` reports after the loops (graphs still alive, largest first):")
    page.table(leaks, "leaks")

    page.section("(b) Truncated BPTT: detach the LSTM state between chunks",
                 "An LSTM LM reads a sequence in chunks of "
                 f"{models.SIZES['lstm'][ctx.size]['seq_len']} tokens with a backward per "
                 "chunk. Without `detach()`, the second chunk's backward reaches the first "
                 "chunk's freed graph and raises, so the state can only be carried with "
                 "`retain_graph=True`: every backward then walks all earlier chunks again and "
                 "the whole history stays in memory.")
    page.table(bptt, "truncated_bptt")
    for column, unit, label in (("peak_bytes", 1 / MIB, "peak memory (MiB)"),
                                ("time_ms", 1.0, "time for the sequence (ms)")):
        fig = lines_by(bptt, "sequence_length", "state between chunks", column,
                       f"LSTM LM: {label.split(' (')[0]} vs sequence length",
                       "sequence length (tokens)", label, scale=unit,
                       labels={"carried": "carried, retain_graph=True"})
        page.figure(fig, f"bptt_{column.split('_')[0]}", f"LSTM {label} against length")

    page.section("(c) GAN discriminator step: `fake.detach()`",
                 "The discriminator loss on generated samples. *D loss graph* is the part of "
                 "the graph reachable from the discriminator loss "
                 "(`prof.graph_held_bytes(d_loss)`); *all graphs* includes the generator's, "
                 "which `fake` keeps for the generator step either way. Without `detach()` the "
                 "discriminator's backward also runs through the generator, fills its `.grad` "
                 "with gradients of the wrong loss, and frees the graph the generator step "
                 "needs.")
    page.table(gan, "gan_step")

    page.section("(d) Frozen backbone",
                 "Training only the classifier head of the small CNN. `detach()` still builds "
                 "the backbone's graph and drops it right after; `requires_grad_(False)` and "
                 "`no_grad()` never build it.")
    page.table(frozen, "frozen_backbone")
    page.write(ctx.footer)
    return page
