"""Study 7: torch.compile and activation memory, measured by the profiler on the compiled code.

The same training step eager, compiled with `aot_eager` (AOTAutograd, default partitioner, no
codegen) and with Inductor (min-cut partitioner: it recomputes cheap ops in backward instead of
saving them), on the MLP and the TransformerEncoder LM; then Inductor under
`torch._functorch.config.activation_memory_budget`, which lets the partitioner recompute more.
Each profile runs the compiled graphs themselves (`profiling._compiled`): the saved bytes are
what the compiled graph saved for backward.
"""

from __future__ import annotations

import pandas as pd
import torch

from .. import models
from .._page import MIB, Page, bar_plot, human_bytes, lines_by, ratio
from ._common import Context, compare_ms, measure, peak_bytes, zero_grads

NAME = "compile"
TITLE = "torch.compile: what the compiled graph saves for backward, and what it costs"

BUDGETS = (1.0, 0.5, 0.1)
# tiny (tests): the min-cut partitioner without Inductor's codegen, seconds instead of minutes
MIN_CUT = {"tiny": "aot_eager_decomp_partition", "quick": "inductor", "full": "inductor"}


def ways_of(ctx: Context) -> tuple[str, ...]:
    return ("eager", "aot_eager", MIN_CUT[ctx.size])


def _compiled_case(name: str, ctx: Context, backend: str | None) -> models.Case:
    case = models.case(name, ctx.size, ctx.device)
    if backend is not None:
        case.model = torch.compile(case.model, backend=backend)
    return case


def _measure_case(case: models.Case, ctx: Context) -> tuple[dict, list[torch.Tensor]]:
    """Saved bytes (held by the graph after the forward), step peak and compiled rows of one
    profiled step, after a first step that compiles."""
    case.loss().backward()  # compiles (outside the profile, as a training loop's first step)
    held: dict[str, int] = {}

    def step(prof=None) -> None:
        loss = case.loss()
        if prof is not None:
            held["forward"] = prof.held_bytes
        loss.backward()

    case.model.zero_grad(set_to_none=True)
    prof = measure(step, ctx, (case.model,))
    ops = prof.ops
    grads = [p.grad.clone() for p in case.model.parameters()]
    return {"saved_bytes": held["forward"], "compiled_saved_bytes":
            int(ops[ops.compiled].saved_bytes.sum()), "peak_bytes": peak_bytes(prof),
            "compiled_rows": int(ops.compiled.sum()), "step": step}, grads


def ways_table(ctx: Context) -> pd.DataFrame:
    rows, ways = [], ways_of(ctx)
    for name in ("mlp", "transformer"):
        steps, setups, grads = {}, {}, {}
        torch._dynamo.reset()  # once per model: the ways' compiled code stays for the timing
        for way in ways:
            ctx.note(f"compile: {name}, {way}")
            case = _compiled_case(name, ctx, None if way == "eager" else way)
            row, grads[way] = _measure_case(case, ctx)
            steps[way], setups[way] = row.pop("step"), zero_grads(case.model)
            rows.append({"model": case.name, "way": way, **row})
        times = compare_ms(steps, ctx, setups)
        for row in rows[-len(ways):]:
            row["step_ms"] = times[row["way"]]
            row["max_grad_difference"] = max(float((a - b).abs().max()) for a, b in
                                             zip(grads["eager"], grads[row["way"]], strict=True))
    return pd.DataFrame(rows)


def budget_sweep(ctx: Context) -> pd.DataFrame:
    backend = MIN_CUT[ctx.size]
    rows, steps = [], {}
    for budget in BUDGETS:
        ctx.note(f"compile: activation_memory_budget={budget}")
        torch._dynamo.reset()
        with torch._functorch.config.patch(activation_memory_budget=budget):
            case = _compiled_case("transformer", ctx, backend)
            row, _ = _measure_case(case, ctx)
        steps[budget] = row.pop("step")
        rows.append({"activation_memory_budget": budget, "backend": backend, **row})
    times = compare_ms(steps, ctx)
    for row in rows:
        row["step_ms"] = times[row["activation_memory_budget"]]
    return pd.DataFrame(rows)


def run(ctx: Context) -> Page:
    page = Page(NAME, TITLE, ctx.out)
    ways = ways_table(ctx)
    sweep = budget_sweep(ctx)
    lm = ways[ways.model == "TransformerEncoder LM"].set_index("way")
    mlp = ways[ways.model == "MLP"].set_index("way")
    low, full = sweep.iloc[-1], sweep.iloc[0]
    cut = MIN_CUT[ctx.size]

    def versus(frame: pd.DataFrame, label: str) -> str:
        compiled, eager = frame.loc[cut].saved_bytes, frame.loc["eager"].saved_bytes
        word = ("less than" if compiled < eager else "more than" if compiled > eager
                else "the same as")
        return (f"{human_bytes(compiled)} on the {label}, {word} eager's {human_bytes(eager)} "
                f"(compiled/eager {ratio(compiled, eager):.2f})")

    smaller = [m for m, f in (("LM", lm), ("MLP", mlp))
               if f.loc[cut].saved_bytes < f.loc["eager"].saved_bytes]
    verdict = (f"compiling alone cut activation memory on {' and '.join(smaller)}"
               if smaller else "compiling alone did not cut activation memory here")
    page.set_answer(
        f"Compiled with `{cut}`, the graph saved for backward "
        f"{versus(lm, 'TransformerEncoder LM')}, and {versus(mlp, 'MLP')}; `aot_eager`, "
        f"which partitions without recomputing, saved "
        f"{human_bytes(lm.loc['aot_eager'].saved_bytes)} and "
        f"{human_bytes(mlp.loc['aot_eager'].saved_bytes)}. So {verdict}; "
        f"`torch._functorch.config.activation_memory_budget` "
        f"{'does' if low.saved_bytes < full.saved_bytes else 'did not either'}: from "
        f"{full.activation_memory_budget:g} to {low.activation_memory_budget:g} it took the "
        f"LM's saved bytes from {human_bytes(full.saved_bytes)} to "
        f"{human_bytes(low.saved_bytes)}, at {ratio(low.step_ms, full.step_ms):.2f}x the step "
        f"time ({low.step_ms:.1f} vs {full.step_ms:.1f} ms).")
    page.section(
        f"Eager, aot_eager and {cut}",
        "One training step (forward, loss, backward) after a first step that compiled. "
        "*Saved* is `prof.held_bytes` after the forward: the storages the graph holds for "
        "backward, each once; for the compiled ways these are what the compiled graph saved "
        "(`compiled_saved_bytes` is the part saved by the profile's `compiled` rows; the rest "
        "is what the eager loss after the graph saves). *Peak* is the "
        "profile's peak over the step, parameters and gradients included. For `eager` and "
        "`aot_eager` it is exact; for `inductor` on the CPU it is a lower bound "
        "(`meta['peak_is_lower_bound']`): the profiler does not see the buffers Inductor "
        "allocates and frees inside its graphs (CUDA's allocator does), so a lower inductor "
        "peak here does not show that compiling lowered it. *Step* is the median unprofiled "
        "step; the gradients match eager's (`max_grad_difference`).")
    page.table(ways, "ways", {"max_grad_difference": ".2e"})
    names = list(dict.fromkeys(ways.model))
    fig = bar_plot(names, {way: [float(ways[(ways.model == n) & (ways.way == way)].saved_bytes
                                       .iloc[0]) / MIB for n in names] for way in ways_of(ctx)},
                   "Bytes saved for backward", "saved for backward (MiB)")
    page.figure(fig, "saved_by_way", "saved bytes per way and model")
    page.section(
        "Activation memory budget",
        "The TransformerEncoder LM compiled under `torch._functorch.config.patch("
        f"activation_memory_budget=b)` with `{sweep.backend.iloc[0]}`: 1.0 saves what the "
        "min-cut partitioner finds cheapest in time, lower values make it recompute more "
        "in backward to save less.")
    page.table(sweep, "budget")
    fig = lines_by(sweep.assign(series="saved"), "activation_memory_budget", "series",
                   "saved_bytes", "Saved bytes against activation_memory_budget",
                   "activation_memory_budget", "saved for backward (MiB)", scale=1 / MIB)
    page.figure(fig, "saved_vs_budget", "saved bytes against the budget")
    page.write(ctx.footer)
    return page
