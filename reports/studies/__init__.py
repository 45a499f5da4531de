"""One module per study; each has `NAME`, `TITLE` and `run(ctx) -> Page`."""

STUDIES = ("retain_graph", "detach", "forward_vs_reverse", "second_derivatives",
           "recomputation", "torchext_vs_torch", "compile", "planner")
