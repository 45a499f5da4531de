"""Study 6: torchext's Triton ops vs torch's, in saved bytes per op.

(a) The lesson's examples (`torchext.examples.EXAMPLES`) run as written, on torchext ops, and the
same code on torch ops: the examples call their ops through the module name `te`, which is
pointed at torch's functions for the second run. (b) The least-squares model ‖Xw − y‖²: the fused
`torchext.least_squares` vs the composition `mv`, `sub`, `dot` on torchext ops vs
`((X @ w - y) ** 2).sum()` on torch ops, against the number of rows.
"""

from __future__ import annotations

import contextlib
import types
from unittest import mock

import pandas as pd
import torch

import torchext as te
from profiling.tables import SAVED_NEW_DEFINITION
from torchext import examples

from .. import models
from .._page import Page, human_bytes, lines_by
from ._common import Context, compare_ms, measure, peak_bytes

NAME = "torchext_vs_torch"
TITLE = "torchext vs torch ops: what each op saves for backward"


def _torch_least_squares(X: torch.Tensor, w: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((X @ w - y) ** 2).sum()


# torch's functions under the names the examples call on `te`.
TORCH_OPS = types.SimpleNamespace(
    sin=torch.sin, cos=torch.cos, mul=torch.mul, sub=torch.sub, sum=torch.sum, norm=torch.norm,
    dot=torch.dot, mv=torch.mv, least_squares=_torch_least_squares)


def ops_provider(provider: str):
    """Run the lesson's examples on "torchext" (as written) or on "torch" ops."""
    if provider == "torchext":
        return contextlib.nullcontext()
    return mock.patch.object(examples, "te", TORCH_OPS)


def lesson_examples(ctx: Context) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per example and provider: totals; and per op: calls and saved bytes."""
    totals, per_op = [], []
    for name, example in examples.EXAMPLES.items():
        for provider in ("torchext", "torch"):
            ctx.note(f"torchext_vs_torch: {name} on {provider} ops")
            with ops_provider(provider):
                prof = measure(lambda p, example=example: example(), ctx)
                time_ms = compare_ms({"example": example}, ctx)["example"]
            forward = prof.ops[prof.ops.phase == "forward"]
            totals.append({"example": name, "ops": provider,
                           "forward_ops": len(forward),
                           "saved_bytes": int(forward.saved_bytes.sum()),
                           "saved_new_bytes": int(forward.saved_new_bytes.sum()),
                           "peak_bytes": peak_bytes(prof), "time_ms": time_ms})
            saving = forward[forward.op.str.endswith("Function") | (forward.saved_bytes > 0)]
            for op, rows in saving.groupby("op", sort=False):
                per_op.append({"example": name, "ops": provider, "op": op, "calls": len(rows),
                               "saved_bytes": int(rows.saved_bytes.sum()),
                               "saved_new_bytes": int(rows.saved_new_bytes.sum())})
    return pd.DataFrame(totals), pd.DataFrame(per_op)


LEAST_SQUARES_WAYS = {
    "te.least_squares(X, w, y) (fused)": lambda X, w, y: te.least_squares(X, w, y),
    "te.dot(r, r), r = te.sub(te.mv(X, w), y)": lambda X, w, y: (
        lambda r: te.dot(r, r))(te.sub(te.mv(X, w), y)),
    "((X @ w - y) ** 2).sum() (torch)": _torch_least_squares,
}


def least_squares(ctx: Context) -> pd.DataFrame:
    """Saved bytes and step time of the three ways, against the number of rows n."""
    on_cpu = ctx.device.type == "cpu"
    d = ctx.pick(tiny=8, quick=16, full=64)
    rows_n = ctx.pick(tiny=(32, 64), quick=(256, 1024, 4096),
                      full=(2**10, 2**12, 2**14) if on_cpu else (2**12, 2**15, 2**18))
    rows = []
    for n in rows_n:
        X = models.normal(n, d, device=ctx.device, seed=0)
        y = models.normal(n, device=ctx.device, seed=1)
        w = models.normal(d, device=ctx.device, seed=2).requires_grad_()
        steps, grads = {}, {}
        for way, loss_fn in LEAST_SQUARES_WAYS.items():
            ctx.note(f"torchext_vs_torch: least squares n={n}, {way}")
            held: dict[str, int] = {}

            def step(prof=None, loss_fn=loss_fn, held=held, X=X, w=w, y=y) -> None:
                loss = loss_fn(X, w, y)
                if prof is not None:
                    held["forward"] = prof.held_bytes
                loss.backward()

            w.grad = None
            prof = measure(step, ctx, (X, w, y))
            grads[way] = w.grad.clone()
            forward = prof.ops[prof.ops.phase == "forward"]
            rows.append({"rows": n, "features": d, "way": way,
                         "saved_bytes": int(forward.saved_bytes.sum()),
                         "saved_new_bytes": int(forward.saved_new_bytes.sum()),
                         "held_after_forward_bytes": held["forward"],
                         "peak_bytes": peak_bytes(prof)})
            steps[way] = step
        times = compare_ms(steps, ctx, {way: _clear_grad(w) for way in steps})
        reference = grads["((X @ w - y) ** 2).sum() (torch)"]
        for row in rows[-len(steps):]:
            row["step_ms"] = times[row["way"]]
            row["max_grad_rel_difference"] = float(
                (grads[row["way"]] - reference).abs().max() / reference.abs().max())
    return pd.DataFrame(rows)


def _clear_grad(w: torch.Tensor):
    def setup() -> None:
        w.grad = None
    return setup


def run(ctx: Context) -> Page:
    page = Page(NAME, TITLE, ctx.out)
    totals, per_op = lesson_examples(ctx)
    fits = least_squares(ctx)

    largest = fits[fits.rows == fits.rows.max()].set_index("way")
    fused = largest.iloc[0]
    composed = largest.loc["te.dot(r, r), r = te.sub(te.mv(X, w), y)"]
    torch_way = largest.loc["((X @ w - y) ** 2).sum() (torch)"]
    n, d = int(fused.rows), int(fused.features)
    page.set_answer(
        f"For ‖Xw − y‖² use the fused `torchext.least_squares`: at n = {n} rows and d = {d} "
        f"features its graph adds {human_bytes(fused.saved_new_bytes)} beyond the inputs (its "
        f"d-vector gradient), vs {human_bytes(torch_way.saved_new_bytes)} for torch's "
        f"`((X @ w - y) ** 2).sum()` and {human_bytes(composed.saved_new_bytes)} for the same "
        f"composition on torchext ops (the n-vector residual). On the lesson's examples the "
        f"two kinds of ops saved {_same_saved_summary(totals)}.")

    page.section("(a) The lesson's examples, on torchext ops and on torch ops",
                 "Each example from `torchext.examples` runs once as written (torchext ops) "
                 "and once with its `te` module pointed at torch's functions, under the "
                 "profiler. *Saved* sums `saved_bytes` over the forward ops, *saved new* "
                 f"`saved_new_bytes`: {SAVED_NEW_DEFINITION} The tensors are the lesson's own "
                 "(4 elements for most), so sizes are in bytes.")
    page.table(totals, "examples", unit="B")
    page.text("Per op (rows of ops that are torchext Functions or saved something):")
    page.table(per_op, "examples_per_op", unit="B")

    page.section("(b) The least-squares model ‖Xw − y‖²",
                 "Gradient with respect to `w` only (`X` and `y` are data). The fused op saves "
                 "its inputs (alive anyway) and the d-vector gradient it computed in the same "
                 "pass over X; the compositions save the n-vector residual `Xw − y` (torch's "
                 "`pow` saves it; torchext's `dot` saves both of its inputs, one storage). "
                 "*max grad rel difference*: largest gradient difference to torch's, relative "
                 "to the largest gradient entry.")
    page.table(fits, "least_squares", {"max_grad_rel_difference": ".1e"})
    fig = lines_by(fits, "rows", "way", "saved_new_bytes",
                   f"‖Xw − y‖²: bytes the graph adds vs rows (d = {d})", "rows n",
                   "saved beyond the inputs (KiB)", scale=1 / 1024)
    page.figure(fig, "least_squares_saved", "saved bytes against rows, three ways")
    if ctx.device.type == "cpu":
        page.text("On the CPU, torchext's kernels run through Triton's interpreter: their "
                  "times here measure the interpreter, not the kernels; compare times on a GPU "
                  "run.")
    page.write(ctx.footer)
    return page


def _same_saved_summary(totals: pd.DataFrame) -> str:
    wide = totals.pivot(index="example", columns="ops", values="saved_bytes")
    same = wide[wide.torchext == wide.torch].index.tolist()
    differ = wide[wide.torchext != wide.torch]
    text = f"the same bytes in {len(same)} of {len(wide)}"
    if len(differ):
        text += " (torchext vs torch otherwise: " + ", ".join(
            f"{name} {human_bytes(row.torchext)} vs {human_bytes(row.torch)}"
            for name, row in differ.iterrows()) + ")"
    return text
