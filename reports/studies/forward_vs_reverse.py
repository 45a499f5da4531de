"""Study 3: forward vs reverse mode, the lesson's complexity table measured.

The lesson: reverse mode costs O(n) memory for a chain of n operators because it keeps every
intermediate; forward mode needs O(1) memory but one pass per input. (a) For a chain of k `sin`
ops on a vector: saved bytes, peak and time of one reverse-mode gradient vs one forward-mode
JVP (`torch.func.jvp`), against k, on torch's sin and on torchext's Triton sin. (b) The full
gradient of a function of n inputs: n JVPs vs one backward.
"""

from __future__ import annotations

import pandas as pd
import torch

import torchext

from .. import models
from .._page import MIB, Page, axes, human_bytes, line_plot, log2_ticks, ratio
from ._common import Context, compare_ms, measure, peak_bytes, saved_bytes

NAME = "forward_vs_reverse"
TITLE = "Forward vs reverse mode: O(1) vs O(k) memory, measured"
SINS = {"torch.sin": torch.sin, "torchext.sin": torchext.sin}


def sin_chain(x: torch.Tensor, k: int, sin=torch.sin) -> torch.Tensor:
    for _ in range(k):
        x = sin(x)
    return x


def reverse_gradient(x: torch.Tensor, k: int, sin=torch.sin) -> torch.Tensor:
    """d/dx of sum(sin^k(x)) by one backward: the graph saves every sin's input."""
    x = x.detach().requires_grad_()
    return torch.autograd.grad(sin_chain(x, k, sin).sum(), x)[0]


def forward_derivative(x: torch.Tensor, v: torch.Tensor, k: int, sin=torch.sin) -> torch.Tensor:
    """The directional derivative of sum(sin^k(x)) along v by one JVP: nothing is saved."""
    return torch.func.jvp(lambda t: sin_chain(t, k, sin).sum(), (x,), (v,))[1]


def chain(ctx: Context, sin_name: str) -> pd.DataFrame:
    """Reverse vs forward mode over a chain of k sins on an n-element float32 vector."""
    sin = SINS[sin_name]
    if sin_name == "torchext.sin":  # Triton's interpreter on CPU: keep the tensors small
        n = ctx.pick(tiny=64, quick=1024, full=2**20) if ctx.device.type == "cpu" else 2**20
        ks = ctx.pick(tiny=(1, 2, 4), quick=(1, 2, 4, 8, 16), full=(1, 2, 4, 8, 16, 32, 64))
    else:
        n = ctx.pick(tiny=256, quick=2**16, full=2**22)
        ks = ctx.pick(tiny=(1, 2, 4), quick=(1, 2, 4, 8, 16, 32, 64),
                      full=(1, 2, 4, 8, 16, 32, 64, 128))
    x = models.normal(n, device=ctx.device, seed=0)
    v = models.normal(n, device=ctx.device, seed=1)
    rows = []
    for k in ks:
        ctx.note(f"forward_vs_reverse: {sin_name} chain, k={k}")
        held: dict[str, int] = {}

        def reverse(prof, k=k, held=held) -> None:
            x_ = x.detach().requires_grad_()
            out = sin_chain(x_, k, sin).sum()
            held["forward"] = prof.held_bytes
            torch.autograd.grad(out, x_)

        reverse_prof = measure(reverse, ctx, (x,))
        forward_prof = measure(lambda p, k=k: forward_derivative(x, v, k, sin), ctx, (x, v))
        times = compare_ms({"reverse": lambda k=k: reverse_gradient(x, k, sin),
                            "forward": lambda k=k: forward_derivative(x, v, k, sin)}, ctx)
        rows.append({"op": sin_name, "k": k, "n": n,
                     "reverse_saved_bytes": saved_bytes(reverse_prof),
                     "reverse_held_after_forward_bytes": held["forward"],
                     "reverse_peak_bytes": peak_bytes(reverse_prof),
                     "forward_saved_bytes": saved_bytes(forward_prof),
                     "forward_peak_bytes": peak_bytes(forward_prof),
                     "reverse_ms": times["reverse"], "forward_ms": times["forward"]})
    return pd.DataFrame(rows)


def _summed(model: torch.nn.Module):
    return lambda t: model(t).sum()


def full_gradient(ctx: Context) -> pd.DataFrame:
    """The gradient of an MLP's summed output w.r.t. its n inputs: one backward vs n JVPs."""
    s = models.SIZES["mlp"][ctx.size]
    rows = []
    for n in ctx.pick(tiny=(2, 4), quick=(4, 16, 64, 256), full=(16, 64, 256, 1024)):
        ctx.note(f"forward_vs_reverse: gradient of {n} inputs")
        model = models.build(lambda n=n: models.MLP(n, s["width"], s["depth"], 1), ctx.device)
        model.requires_grad_(False)  # only the input's gradient is wanted
        x = models.normal(n, device=ctx.device)
        basis = torch.eye(n, device=ctx.device)

        f = _summed(model)

        def reverse(x=x, f=f) -> torch.Tensor:
            x_ = x.detach().requires_grad_()
            return torch.autograd.grad(f(x_), x_)[0]

        def forward(x=x, basis=basis, f=f) -> torch.Tensor:
            return torch.stack([torch.func.jvp(f, (x,), (e,))[1] for e in basis])

        agree = torch.allclose(reverse(), forward(), rtol=1e-4, atol=1e-6)
        reverse_prof = measure(lambda p: reverse(), ctx, (model, x))
        forward_prof = measure(lambda p: forward(), ctx, (model, x, basis))
        times = compare_ms({"reverse": reverse, "forward": forward}, ctx)
        rows.append({"inputs": n, "reverse_passes": 1, "forward_passes": n,
                     "reverse_peak_bytes": peak_bytes(reverse_prof),
                     "forward_peak_bytes": peak_bytes(forward_prof),
                     "reverse_ms": times["reverse"], "forward_ms": times["forward"],
                     "gradients_agree": agree})
    return pd.DataFrame(rows)


def _growth(frame: pd.DataFrame, column: str) -> str:
    first, last = frame.iloc[0], frame.iloc[-1]
    return (f"{human_bytes(first[column])} at k = {first.k} and "
            f"{human_bytes(last[column])} at k = {last.k}")


def run(ctx: Context) -> Page:
    page = Page(NAME, TITLE, ctx.out)
    torch_chain = chain(ctx, "torch.sin")
    triton_chain = chain(ctx, "torchext.sin")
    inputs = full_gradient(ctx)

    last = torch_chain.iloc[-1]
    widest = inputs.iloc[-1]
    page.set_answer(
        f"Reverse mode's memory grows with the chain: one gradient through k sin ops on "
        f"{last.n} floats saved {_growth(torch_chain, 'reverse_saved_bytes')} (k·n·4 bytes) "
        f"and peaked at {human_bytes(last.reverse_peak_bytes)} at k = {last.k}, while one "
        f"forward-mode JVP saved {human_bytes(torch_chain.forward_saved_bytes.max())} and its "
        f"peak never exceeded {human_bytes(torch_chain.forward_peak_bytes.max())} for any k. "
        f"But forward mode needs a pass per "
        f"input: the full gradient of {widest.inputs} inputs took {widest.forward_ms:.1f} ms as "
        f"{widest.inputs} JVPs vs {widest.reverse_ms:.1f} ms as one backward "
        f"({ratio(widest.forward_ms, widest.reverse_ms):.0f}x), so use reverse mode for "
        f"gradients of a loss and forward mode (`torch.func.jvp`) for few inputs or when the "
        f"graph does not fit.")

    page.section("The lesson's table, measured",
                 "| | compute | memory | measured here |\n|---|---|---|---|\n"
                 "| reverse mode | O(n) for all gradients | O(n): every intermediate kept | "
                 "`reverse_saved` grows linearly in k |\n"
                 "| forward mode | O(n) per input direction | O(1) | `forward_peak` flat in k; "
                 "n JVPs for n inputs |")
    page.section("(a) A chain of k sin ops: one gradient, both modes",
                 "Reverse: `torch.autograd.grad(sin^k(x).sum(), x)`; forward: "
                 "`torch.func.jvp(lambda t: sin^k(t).sum(), (x,), (v,))` with `x` not requiring "
                 "grad. *Saved* is the sum of `saved_bytes` over the forward ops, *held after "
                 "forward* is `prof.held_bytes` before the backward, *peak* the profile's peak "
                 "(the inputs `x`, `v` included).")
    page.table(torch_chain, "chain_torch")
    for frame, label in ((torch_chain, "torch.sin"), (triton_chain, "torchext.sin")):
        fig = line_plot(frame, "k", {"reverse mode: saved for backward": "reverse_saved_bytes",
                                     "reverse mode: peak": "reverse_peak_bytes",
                                     "forward mode (jvp): peak": "forward_peak_bytes"},
                        f"Memory of one derivative vs chain length ({label}, n={frame.n.iloc[0]})",
                        "chain length k (ops)", "memory (MiB)", scale=1 / MIB)
        page.figure(fig, f"memory_vs_k_{label.split('.')[0]}", f"memory against k, {label}")
    fig = line_plot(torch_chain, "k", {"reverse mode": "reverse_ms", "forward mode (jvp)":
                                       "forward_ms"},
                    "Time of one derivative vs chain length (torch.sin)", "chain length k (ops)",
                    "time (ms)")
    page.figure(fig, "time_vs_k", "time against k")
    t_last = triton_chain.iloc[-1]
    page.text(f"The same chain on torchext's Triton `sin` (n = {t_last.n}): reverse mode saved "
              f"{_growth(triton_chain, 'reverse_saved_bytes')}; forward mode saved "
              f"{human_bytes(triton_chain.forward_saved_bytes.max())} and peaked at "
              f"{_growth(triton_chain, 'forward_peak_bytes')}.")
    page.table(triton_chain, "chain_torchext")

    page.section("(b) All n partial derivatives: n JVPs vs one backward",
                 "The gradient of `mlp(x).sum()` with respect to its n inputs (the MLP's "
                 "weights frozen): reverse mode gets all of it from one backward, forward mode "
                 "needs one JVP per input direction (`torch.func.jvp` with each basis vector).")
    page.table(inputs, "full_gradient")
    fig, ax = axes("Full gradient of n inputs: time", "inputs n", "time (ms)")
    ax.plot(inputs.inputs, inputs.reverse_ms, marker="o", label="reverse: 1 backward")
    ax.plot(inputs.inputs, inputs.forward_ms, marker="o", label="forward: n JVPs")
    log2_ticks(ax, inputs.inputs)
    ax.set_yscale("log")
    ax.legend()
    page.figure(fig, "time_vs_inputs", "time of the full gradient against the number of inputs")
    page.write(ctx.footer)
    return page
