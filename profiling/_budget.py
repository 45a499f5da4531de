"""Memory budgets: bytes as an int or a string with a unit ("512MiB", "2GiB", "1.5GB").

Binary units (KiB, MiB, GiB, TiB) are powers of 1024, decimal ones (KB, MB, GB, TB) powers of
1000, as `torch.cuda.mem_get_info` and `nvidia-smi` users expect; case and a space before the
unit do not matter.
"""

from __future__ import annotations

import math
import re
import warnings
from typing import Any

UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
         "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_BUDGET = re.compile(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z]*)\s*", re.IGNORECASE)


def parse_budget(budget: int | float | str, what: str = "budget") -> int:
    """The budget in bytes (a float is rounded down); a clear ValueError/TypeError for
    anything else."""
    if isinstance(budget, bool) or not isinstance(budget, (int, float, str)):
        raise TypeError(f"{what} must be bytes (an int) or a string with a unit such as "
                        f"'512MiB', '2GiB' or '1.5GB', not {type(budget).__name__}")
    if isinstance(budget, float):
        if not math.isfinite(budget):
            raise ValueError(f"{what}: {budget!r} is not a finite size")
        budget = int(budget)
    if isinstance(budget, str):
        match = _BUDGET.fullmatch(budget)
        unit = match.group(2).lower() if match else ""
        if match is None or unit not in UNITS and unit != "":
            raise ValueError(f"{what}: cannot read {budget!r}; give bytes or a number with a "
                             f"unit: B, KB, MB, GB, TB, KiB, MiB, GiB, TiB (e.g. '512MiB', "
                             f"'2GiB', '1.5GB')")
        value = float(match.group(1)) * UNITS.get(unit, 1)
        if not math.isfinite(value):
            raise ValueError(f"{what}: {budget!r} is not a finite size")
        budget = int(value)
    if budget <= 0:
        raise ValueError(f"{what} must be positive, got {budget} bytes")
    return budget


def warn_if_peak_is_a_lower_bound(prof: Any, what: str) -> None:
    """A budget decided on a peak the profiler could not see whole would be silently wrong:
    say so (an Inductor graph on the CPU allocates its scratch buffers out of sight)."""
    if prof.meta.get("peak_is_lower_bound"):
        warnings.warn(f"profiling: {what} measured a torch.compile'd (Inductor) step on the CPU, "
                      "whose scratch buffers the profiler cannot see: the measured peaks are "
                      "lower bounds and the real step may exceed the budget; measure on CUDA, "
                      "or the uncompiled model (or backend='aot_eager')",
                      RuntimeWarning, stacklevel=4)
