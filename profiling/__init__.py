"""Autograd memory profiler: what each operator saved for backward and what memory it cost.

Works on any PyTorch code (CPU and CUDA); it does not depend on torchext.

    from profiling import profile
    with profile() as prof:
        loss = model(x).sum()
        loss.backward(retain_graph=True)
    prof.ops, prof.graph, prof.held_bytes, prof.lifetimes, prof.leaks(), prof.save("out/run")
"""

from ._graph import AutogradGraph
from .profiler import Profile, profile

__all__ = ["AutogradGraph", "Profile", "profile"]
