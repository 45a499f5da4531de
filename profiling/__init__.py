"""Autograd memory profiler: what each operator saved for backward and what memory it cost.

Works on any PyTorch code (CPU and CUDA); it does not depend on torchext.

    from profiling import profile
    with profile() as prof:
        loss = model(x).sum()
        loss.backward(retain_graph=True)
    prof.ops, prof.graph, prof.held_bytes, prof.lifetimes, prof.leaks(), prof.save("out/run")

    plan = plan_checkpoints(step, model, budget="2GiB")   # which modules to checkpoint
    fit = max_batch(make_step, budget="2GiB", start=8)     # the largest batch that fits

In Jupyter, `%load_ext profiling` adds the `%%memprofile` cell magic (`profiling.magic`).
"""

from typing import Any

from ._graph import AutogradGraph
from ._max_batch import BatchFit, max_batch
from .planner import CheckpointPlan, apply_plan, plan_checkpoints
from .profiler import Profile, profile

__all__ = ["AutogradGraph", "BatchFit", "CheckpointPlan", "Profile", "apply_plan", "max_batch",
           "plan_checkpoints", "profile"]


def load_ipython_extension(ipython: Any) -> None:
    """`%load_ext profiling`: registers the `%%memprofile` cell magic (see `profiling.magic`)."""
    from .magic import load_ipython_extension as load

    load(ipython)
