"""Turn bench_ops CSVs into `reports/performance.md` and its plots; every figure from the CSVs.

    python -m benchmarks.make_report reports/performance/*.csv

Writes the device, versions, dates and the exact commands, the issue's targets each marked met,
missed or not measured (computed here from the rows, never typed in), the bytes-moved model, a
results table per op and a GB/s-vs-size plot per op. CPU smoke-run CSVs may be rendered anywhere
but into the repository's `reports/`: interpreter times are not performance figures.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from benchmarks._harness import CPU_DEVICE_LABEL
from benchmarks._plots import plot_op
from benchmarks._providers import CASES, MODES, PROVIDER_TITLES

REPO_REPORTS = Path(__file__).resolve().parents[1] / "reports"
MET, MISSED, NOT_MEASURED = "met", "missed", "not measured"


@dataclass(frozen=True)
class Thresholds:
    """The issue's targets. The sizes are options so a smoke run can exercise the verdicts."""

    bandwidth_numel: int = 2**24
    bandwidth_frac: float = 0.85
    eager_numel: int = 2**16
    eager_slack: float = 1.05
    ls_shape: str = "65536x1024"
    ls_dtype: str = "fp32"
    ls_vs_eager: float = 1.8
    ls_vs_compile: float = 1.2


@dataclass(frozen=True)
class Target:
    goal: str
    op: str
    measured: str
    verdict: str


def load(paths: Sequence[Path]) -> pd.DataFrame:
    """All rows; a cell measured again (a `--resume` after an error) keeps its latest row."""
    frames = [pd.read_csv(p, dtype={"shape": str}, na_values=["NA"]) for p in paths]
    df = pd.concat(frames, ignore_index=True)
    copies = df.op == "copy"
    rows = df[~copies].drop_duplicates(["op", "mode", "provider", "dtype", "shape"], keep="last")
    return pd.concat([df[copies], rows], ignore_index=True)


def size_text(numel: int, shape: str) -> str:
    if "x" in shape:
        return shape
    exp = math.log2(numel) if numel > 0 else 0.5
    return f"2^{int(exp)}" if exp.is_integer() else str(numel)


def _where(row) -> str:
    return f"{row['mode']}, {row['dtype']}, {size_text(row['numel'], row['shape'])}"


def bandwidth_targets(df: pd.DataFrame, t: Thresholds) -> list[Target]:
    goal = f"≥ {t.bandwidth_frac:.0%} of copy bandwidth at ≥ {size_text(t.bandwidth_numel, '')}"
    ours = df[(df.provider == "torchext") & (df.numel >= t.bandwidth_numel)]
    targets = []
    for case in (c for c in CASES if c.family in ("elementwise", "reduction")):
        for mode in ("fwd", "bwd"):
            rows = ours[(ours.op == case.name) & (ours["mode"] == mode)]
            if rows.empty:
                targets.append(Target(f"{goal} ({mode})", case.name, "no rows", NOT_MEASURED))
                continue
            worst = rows.loc[rows.frac_of_copy.idxmin()]
            ok = worst.frac_of_copy >= t.bandwidth_frac
            measured = f"worst {worst.frac_of_copy:.1%} ({worst.gbps:.4g} GB/s; {_where(worst)})"
            targets.append(Target(f"{goal} ({mode})", case.name, measured, MET if ok else MISSED))
    return targets


def eager_targets(df: pd.DataFrame, t: Thresholds) -> list[Target]:
    goal = (f"no slower than eager by > {t.eager_slack - 1:.0%} at ≥ "
            f"{size_text(t.eager_numel, '')}")  # fmt: skip
    key = ["op", "mode", "dtype", "shape"]
    ours = df[df.provider == "torchext"][[*key, "numel", "ms"]]
    eager = df[df.provider == "eager"][[*key, "ms"]]
    pairs = ours.merge(eager, on=key, suffixes=("", "_eager"))
    pairs = pairs[pairs.numel >= t.eager_numel].assign(ratio=lambda p: p.ms / p.ms_eager)
    targets = []
    for case in CASES:
        rows = pairs[pairs.op == case.name]
        if rows.empty:
            targets.append(Target(goal, case.name, "no rows", NOT_MEASURED))
            continue
        worst = rows.loc[rows.ratio.idxmax()]
        ok = worst.ratio <= t.eager_slack
        measured = f"worst {worst.ratio:.2f}× eager's time ({_where(worst)})"
        targets.append(Target(goal, case.name, measured, MET if ok else MISSED))
    return targets


def least_squares_targets(df: pd.DataFrame, t: Thresholds) -> list[Target]:
    rows = df[(df.op == "least_squares") & (df["mode"] == "fwd+bwd")
              & (df.dtype == t.ls_dtype) & (df["shape"] == t.ls_shape)]  # fmt: skip
    by = {r.provider: r for r in rows.itertuples()}
    where = f"fwd+bwd, {t.ls_shape} {t.ls_dtype}"
    targets = []
    for other, factor in (("eager", t.ls_vs_eager), ("compile", t.ls_vs_compile)):
        goal = f"≥ {factor}× faster than {PROVIDER_TITLES[other]} ({where})"
        if "torchext" not in by or other not in by:
            targets.append(Target(goal, "least_squares", "no rows", NOT_MEASURED))
            continue
        speedup = by[other].ms / by["torchext"].ms
        measured = f"{speedup:.2f}× ({by['torchext'].ms:.4g} ms vs {by[other].ms:.4g} ms)"
        ok = speedup >= factor
        targets.append(Target(goal, "least_squares", measured, MET if ok else MISSED))
    goal = f"lower peak memory than eager and torch.compile ({where})"
    peaks = {p: by[p].peak_bytes for p in ("torchext", "eager", "compile") if p in by}
    if len(peaks) < 3 or any(pd.isna(v) for v in peaks.values()):
        targets.append(Target(goal, "least_squares", "no peak for all three", NOT_MEASURED))
    else:
        ok = peaks["torchext"] < min(peaks["eager"], peaks["compile"])
        measured = ", ".join(f"{PROVIDER_TITLES[p]} {v / 2**20:.4g} MiB" for p, v in peaks.items())
        targets.append(Target(goal, "least_squares", measured, MET if ok else MISSED))
    return targets


def all_targets(df: pd.DataFrame, t: Thresholds) -> list[Target]:
    return bandwidth_targets(df, t) + eager_targets(df, t) + least_squares_targets(df, t)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def _cell(row) -> str:
    text = f"{row.ms:.4g} ms · {row.gbps:.4g} GB/s ({row.frac_of_copy:.0%})"
    return text if pd.isna(row.peak_bytes) else f"{text} · peak {row.peak_bytes / 2**20:.4g} MiB"


def results_tables(df: pd.DataFrame) -> list[str]:
    """Per op, per mode and dtype: every provider at the largest size measured."""
    lines = []
    for case in CASES:
        rows = df[df.op == case.name]
        if rows.empty:
            continue
        providers = list(dict.fromkeys(rows.provider))
        body = []
        for (mode, dtype), group in rows.groupby(["mode", "dtype"], sort=False):
            largest = group[group.numel == group.numel.max()]  # 65536x1024 and 8192x8192 tie
            for shape, cell_rows in largest.groupby("shape", sort=False):
                cells = {r.provider: _cell(r) for r in cell_rows.itertuples()}
                size = size_text(cell_rows.numel.iloc[0], shape)
                body.append([mode, dtype, size, *(cells.get(p, "—") for p in providers)])
        body.sort(key=lambda r: (MODES.index(r[0]) if r[0] in MODES else 9, r[1]))
        lines += [f"### {case.name}", ""]
        lines += _table(["mode", "dtype", "size", *(PROVIDER_TITLES.get(p, p) for p in providers)],
                        body)
        lines.append("")
    return lines


def render(df: pd.DataFrame, t: Thresholds, csvs: Sequence[Path], md: Path, plots: dict,
           command: str, notes: str = "") -> str:  # fmt: skip
    copy = df[df.op == "copy"]
    on_cpu = df.device.eq(CPU_DEVICE_LABEL).any()
    lines = ["# torchext performance", "",
             f"Generated by `{command}` from the CSV rows; do not edit by hand.", ""]
    if on_cpu:
        lines += ["> **Not performance figures.** These rows come from a CPU smoke run through "
                  "Triton's interpreter; they only show that the benchmark runs.", ""]
    env = [["device", ", ".join(f"{n} ({d})" for d, n in
                                 df[["device", "device_name"]].drop_duplicates().values)],
           ["torch", ", ".join(df.torch.astype(str).unique())],
           ["triton", ", ".join(df.triton.astype(str).unique())],
           ["date", ", ".join(sorted(df.date.unique()))],
           ["copy bandwidth (dst.copy_(src), bytes read + written)",
            ", ".join(f"{g:.4g} GB/s" for g in copy.gbps) or "not measured"],
           ["benchmark command(s)", "<br>".join(f"`{c}`" for c in df.command.unique())],
           ["CSV", ", ".join(f"`{_rel(p, md)}`" for p in csvs)]]  # fmt: skip
    lines += _table(["", ""], env) + [""]
    targets = all_targets(df, t)
    counts = {v: sum(x.verdict == v for x in targets) for v in (MET, MISSED, NOT_MEASURED)}
    lines += ["## Targets", "",
              f"{counts[MET]} met, {counts[MISSED]} missed, {counts[NOT_MEASURED]} not measured. "
              "GB/s counts the least bytes each op must move (table below) over the median time.",
              ""]  # fmt: skip
    lines += _table(["target", "op", "measured", "verdict"],
                    [[x.goal, x.op, x.measured, f"**{x.verdict}**"] for x in targets])
    lines += ["", "## Bytes moved per mode (n elements; scalars ignored)", ""]
    lines += _table(["op", "family", *MODES],
                    [[c.name, c.family, *(c.bytes_formula[m] for m in MODES)] for c in CASES])
    lines += ["", "## Results at the largest size measured", ""] + results_tables(df)
    if notes:
        lines += ["## Notes on the results (written by whoever ran them)", "", notes.strip(), ""]
    lines += ["## Achieved bandwidth vs size", ""]
    lines += [f"![{op}]({_rel(path, md)})" for op, path in plots.items()]
    return "\n".join(lines) + "\n"


def _rel(path: Path, md: Path) -> str:
    return Path(os.path.relpath(path.resolve(), md.resolve().parent)).as_posix()


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m benchmarks.make_report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("csv", nargs="+", type=Path, help="bench_ops CSV file(s)")
    p.add_argument("--md", type=Path, default=REPO_REPORTS / "performance.md")
    p.add_argument("--plots-dir", type=Path, default=REPO_REPORTS / "performance")
    d = Thresholds()
    p.add_argument("--notes", type=Path, default=None,
                   help="Markdown file, e.g. the reasons for missed targets, included verbatim")
    p.add_argument("--bandwidth-numel", type=int, default=d.bandwidth_numel)
    p.add_argument("--eager-numel", type=int, default=d.eager_numel)
    p.add_argument("--ls-shape", default=d.ls_shape)
    args = p.parse_args(argv)

    df = load(args.csv)
    on_cpu = df.device.eq(CPU_DEVICE_LABEL).any()
    if on_cpu and (_inside(args.md, REPO_REPORTS) or _inside(args.plots_dir, REPO_REPORTS)):
        raise SystemExit("make_report: these rows come from the CPU interpreter; they are not "
                         f"performance figures and must not go into {REPO_REPORTS}")
    t = Thresholds(bandwidth_numel=args.bandwidth_numel, eager_numel=args.eager_numel,
                   ls_shape=args.ls_shape)  # fmt: skip
    args.plots_dir.mkdir(parents=True, exist_ok=True)
    plots = {}
    for case in CASES:
        if (df.op == case.name).any():
            plots[case.name] = plot_op(df, case.name, args.plots_dir / f"{case.name}.png")
    command = shlex.join(["python", "-m", "benchmarks.make_report", *argv])
    args.md.parent.mkdir(parents=True, exist_ok=True)
    notes = args.notes.read_text() if args.notes else ""
    args.md.write_text(render(df, t, args.csv, args.md, plots, command, notes))
    print(f"wrote {args.md} and {len(plots)} plot(s) in {args.plots_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
