"""Study 4: second derivatives, the lesson's exercise "why does a second derivative cost more?".

A gradient (`torch.autograd.grad`) vs a Hessian-vector product (a gradient with
`create_graph=True`, then the gradient of its dot product with v) on the lesson's functions
written with torchext ops, and on an MLP: saved bytes, peak memory and time.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd
import torch
from torch.nn import functional as F

import torchext as te
from torchext import examples

from .. import models
from .._page import Page, bar_plot, human_bytes, ratio
from ._common import Context, compare_ms, measure, peak_bytes

NAME = "second_derivatives"
TITLE = "Second derivatives: what create_graph=True costs"


class Objective:
    """A scalar function of some parameters, and a direction v for the Hessian-vector product."""

    def __init__(self, name: str, code: str, loss: Callable[[], torch.Tensor],
                 params: list[torch.Tensor], track: tuple = ()) -> None:
        self.name, self.code, self.loss, self.params = name, code, loss, params
        self.track = (*track, *params)
        self.v = [models.normal(*p.shape, device=p.device, seed=7 + i).to(p.dtype)
                  for i, p in enumerate(params)]

    def gradient(self) -> tuple[torch.Tensor, ...]:
        return torch.autograd.grad(self.loss(), self.params)

    def hvp(self, prof=None, held: dict | None = None) -> tuple[torch.Tensor, ...]:
        grads = torch.autograd.grad(self.loss(), self.params, create_graph=True)
        if prof is not None:
            held["after_first_grad"] = prof.held_bytes
        dot = sum((g * v).sum() for g, v in zip(grads, self.v, strict=True))
        if not dot.requires_grad:  # the gradient is constant: the Hessian is zero
            return tuple(torch.zeros_like(p) for p in self.params)
        return torch.autograd.grad(dot, self.params)


LESSON_FEATURES = 16


def lesson_n(ctx: Context) -> int:
    """Vector length for the lesson's functions (small on CPU: Triton's interpreter)."""
    return ctx.pick(tiny=64, quick=4096, full=2**20) if ctx.device.type == "cpu" else 2**20


def lesson_objectives(ctx: Context) -> list[Objective]:
    """The lesson's functions on torchext ops, on vectors of n elements."""
    n, d = lesson_n(ctx), LESSON_FEATURES
    rows = n // 4  # X is the largest tensor: n/4 x 16 = 4n elements
    x = models.normal(n, device=ctx.device, seed=0).requires_grad_()
    a = models.normal(n, device=ctx.device, seed=1).requires_grad_()
    X = models.normal(rows, d, device=ctx.device, seed=2)
    y = models.normal(rows, device=ctx.device, seed=3)
    w = models.normal(d, device=ctx.device, seed=4).requires_grad_()
    return [
        Objective("2·xᵀx", "te.mul(te.dot(x, x), 2)", lambda: te.mul(te.dot(x, x), 2), [x]),
        Objective("sum(x * x)", "te.sum(te.mul(x, x))", lambda: te.sum(te.mul(x, x)), [x]),
        Objective("sum(sin(x))", "te.sum(te.sin(x))", lambda: te.sum(te.sin(x)), [x]),
        Objective("control flow f(a)", "te.sum(examples.f(a))", lambda: te.sum(examples.f(a)),
                  [a]),
        Objective("‖Xw − y‖²", "te.least_squares(X, w, y)", lambda: te.least_squares(X, w, y),
                  [w], (X, y)),
    ]


def mlp_objective(ctx: Context) -> Objective:
    case = models.case("mlp", ctx.size, ctx.device)
    x, labels = case.batch
    params = list(case.model.parameters())
    return Objective("MLP loss", "F.cross_entropy(mlp(x), labels)",
                     lambda: F.cross_entropy(case.model(x), labels), params, (x,))


def compare(objective: Objective, ctx: Context) -> dict:
    ctx.note(f"second_derivatives: {objective.name}")
    grad_prof = measure(lambda p: objective.gradient(), ctx, objective.track)
    held: dict[str, int] = {}
    hvp_prof = measure(lambda p: objective.hvp(p, held), ctx, objective.track)
    times = compare_ms({"grad": objective.gradient, "hvp": objective.hvp}, ctx)
    return {"function": objective.name, "code": objective.code,
            "grad_saved_bytes": int(grad_prof.ops.saved_bytes.sum()),
            "hvp_saved_bytes": int(hvp_prof.ops.saved_bytes.sum()),
            "hvp_saved_by_backward_bytes": int(
                hvp_prof.ops[hvp_prof.ops.phase == "backward"].saved_bytes.sum()),
            "hvp_held_after_first_grad_bytes": held["after_first_grad"],
            "grad_peak_bytes": peak_bytes(grad_prof), "hvp_peak_bytes": peak_bytes(hvp_prof),
            "grad_ms": times["grad"], "hvp_ms": times["hvp"]}


def run(ctx: Context) -> Page:
    page = Page(NAME, TITLE, ctx.out)
    frame = pd.DataFrame([compare(o, ctx) for o in [*lesson_objectives(ctx), mlp_objective(ctx)]])
    frame["saved_ratio"] = frame.hvp_saved_bytes / frame.grad_saved_bytes
    frame["peak_ratio"] = frame.hvp_peak_bytes / frame.grad_peak_bytes
    frame["time_ratio"] = frame.hvp_ms / frame.grad_ms

    mlp = frame.iloc[-1]
    page.set_answer(
        f"A second derivative costs more because the first backward must itself be recorded "
        f"as a graph (`create_graph=True`), whose own saved tensors come on top of the "
        f"forward's: on the MLP a Hessian-vector product saved "
        f"{human_bytes(mlp.hvp_saved_bytes)} vs {human_bytes(mlp.grad_saved_bytes)} for the "
        f"gradient ({mlp.saved_ratio:.1f}x), peaked at {mlp.peak_ratio:.1f}x and took "
        f"{mlp.time_ratio:.1f}x the time. Budget about that for gradient penalties, "
        f"meta-learning and Newton-type steps, and free the first gradients (`del grads`) as "
        f"soon as their product is formed.")
    page.section("Gradient vs Hessian-vector product",
                 "*grad*: `torch.autograd.grad(loss, params)`. *hvp*: `grads = "
                 "torch.autograd.grad(loss, params, create_graph=True)`, then "
                 "`torch.autograd.grad(sum((g * v).sum()), params)`. *Saved* sums `saved_bytes` "
                 "over every recorded op, forward and (for hvp) the recorded backward; *saved "
                 "by backward* is the part the create_graph backward added; *held after first "
                 "grad* is `prof.held_bytes` once `grads` exist. The lesson's functions run on "
                 "torchext ops (their backward is made of differentiable torchext ops); the MLP "
                 "on torch ops.")
    ratios = {"saved_ratio": ".2f", "peak_ratio": ".2f", "time_ratio": ".2f"}
    page.text(f"The lesson's functions on torchext ops (vectors of {lesson_n(ctx)} elements; "
              f"X is {lesson_n(ctx) // 4} x {LESSON_FEATURES}):")
    page.table(frame.iloc[:-1], "grad_vs_hvp_lesson", ratios)
    page.text("The MLP on torch ops (one batch, gradient and product over all parameters):")
    page.table(frame.iloc[-1:], "grad_vs_hvp_mlp", ratios)
    fig = bar_plot(list(frame.function), {"saved (hvp / grad)": list(frame.saved_ratio),
                                          "peak (hvp / grad)": list(frame.peak_ratio),
                                          "time (hvp / grad)": list(frame.time_ratio)},
                   "Cost of a Hessian-vector product relative to a gradient",
                   "ratio hvp / grad (x)", reference=1.0)
    page.figure(fig, "hvp_over_grad", "ratios of hvp to grad: saved bytes, peak, time")
    lesson = frame.iloc[:-1]
    page.text(f"On the lesson's functions the create_graph backward itself saved at most "
              f"{human_bytes(lesson.hvp_saved_by_backward_bytes.max())}: torchext's backward "
              f"Functions save the forward's inputs again, storages the forward already saved "
              f"(counted once). The rest of their extra is what the product `(g * v).sum()` "
              f"saves (`v`). The MLP's backward on torch ops saved "
              f"{human_bytes(mlp.hvp_saved_by_backward_bytes)} of new tensors.")
    linear = frame[frame.function == "control flow f(a)"]
    if len(linear):
        row = linear.iloc[0]
        extra = row.hvp_saved_by_backward_bytes
        page.text(f"The control-flow function is linear in `a` on the branch taken, so its "
                  f"gradient is a constant and its Hessian zero: the create_graph backward "
                  f"saved {human_bytes(extra)} "
                  + ("(a gradient of constants needs no graph), so the product costs no "
                     "second backward" if extra == 0 else
                     "for a second backward that can only return zeros")
                  + f"; it took {ratio(row.hvp_ms, row.grad_ms):.1f}x the gradient's time.")
    page.write(ctx.footer)
    return page
