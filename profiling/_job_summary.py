"""The summary of a torchrun job's profiles, read back from `DIR/rank{R}/`.

One row per rank (peak, saved, held, step time, collectives, DDP bucket bytes, and whether it
ran to the end), the spread of each number across ranks, the collectives per rank, and what
differs between the rank that peaked lowest (A) and highest (B), as `compare` shows it for two
profiles. Written to DIR/ as job_summary.md, job_summary.html, job_ranks.csv, job_spread.csv,
job_collectives.csv, job_compare_{ops,modules}.csv and job_summary.json.
"""

from __future__ import annotations

import html as html_text
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from profiling.compare import ProfileComparison, compare_profiles, comparison_sections
from profiling.export import LoadedProfile, load_profile
from profiling.html import CSS, Section, display_header, html_table, markdown_table
from profiling.tables import format_bytes, json_value

RANK_COLUMNS = ["rank", "status", "peak_bytes", "saved_bytes", "held_bytes", "step_ms",
                "optimizer_steps", "wall_ms", "collectives", "collective_bytes", "ddp_buckets",
                "ddp_bucket_bytes"]
SPREAD_METRICS = ("peak_bytes", "saved_bytes", "held_bytes", "step_ms")
TERMINATED = "RankTerminated"


@dataclass
class RankReport:
    """One rank's folder: its profile, how it ended (rank.json) and its collectives."""

    rank: int
    profile: LoadedProfile
    status: dict
    collectives: pd.DataFrame


def load_rank(folder: str | Path) -> RankReport:
    folder = Path(folder)
    status = json.loads((folder / "rank.json").read_text(encoding="utf-8"))
    collectives = pd.read_csv(folder / "collectives.csv", keep_default_na=False,
                              dtype={"module": str, "dtype": str})
    return RankReport(int(status["rank"]), load_profile(folder), status, collectives)


def is_job_folder(path: str | Path) -> bool:
    """A folder of rank{R}/ reports (what `run --nproc-per-node` and a job's save write)."""
    path = Path(path)
    return path.is_dir() and any(path.glob("rank*/rank.json"))


def ddp_buckets(collectives: pd.DataFrame) -> pd.DataFrame:
    """One row per DDP gradient bucket: its all-reduces and its bytes (those of the last one:
    the reducer may rebuild its buckets after the first iteration)."""
    rows = collectives[collectives["module"].str.startswith("DDP gradient bucket")]
    if rows.empty:
        return pd.DataFrame({"bucket": [], "allreduces": [], "bytes": []}).astype("int64")
    index = rows["module"].str.rsplit(" ", n=1).str[1].astype("int64")
    table = rows.assign(bucket=index).groupby("bucket").agg(
        allreduces=("bytes", "size"), bytes=("bytes", "last"))
    return table.reset_index()


def _error(status: dict) -> str:
    """The rank's own failure ("" when it ran to the end)."""
    if status.get("error"):
        return status["error"]
    return f"exited with code {status['exit_code']}" if status.get("exit_code") else ""


def _first_failure(reports: list[RankReport], launcher_first: int | None) -> int | None:
    """The rank that failed first: torchrun's first failure when known, else the rank whose
    error came first (a rank blocked in a collective only fails once its peer is gone)."""
    failed = [r for r in reports if _error(r.status) and
              not _error(r.status).startswith(TERMINATED)]
    if launcher_first is not None:
        return launcher_first
    if not failed:
        return None
    return min(failed, key=lambda r: (float(r.status.get("ended_at") or 0.0), r.rank)).rank


def _status_text(status: dict, first_failed: int | None) -> str:
    error = _error(status)
    if not error:
        return "ok"
    if int(status["rank"]) == first_failed:
        return f"failed: {error}"
    after = "" if first_failed is None else f" after rank {first_failed} failed"
    if error.startswith(TERMINATED):
        return f"stopped by the launcher{after}"
    return f"raised{after}: {error}"


def _rank_row(report: RankReport, first_failed: int | None) -> dict:
    prof, collectives = report.profile, report.collectives
    ops, meta = prof.ops, prof.meta
    buckets = ddp_buckets(collectives)
    return {
        "rank": report.rank, "status": _status_text(report.status, first_failed),
        "peak_bytes": int(meta.get("peak_bytes") or 0),
        "saved_bytes": int(ops["saved_bytes"].sum()), "held_bytes": int(prof.held_bytes),
        "step_ms": float(meta.get("step_ms", meta.get("wall_ms")) or 0.0),
        "optimizer_steps": int(meta.get("optimizer_steps") or 0),
        "wall_ms": float(meta.get("wall_ms") or 0.0),
        "collectives": len(collectives), "collective_bytes": int(collectives["bytes"].sum()),
        "ddp_buckets": len(buckets), "ddp_bucket_bytes": int(buckets["bytes"].sum()),
    }


def _spread(ranks: pd.DataFrame) -> pd.DataFrame:
    rows = []
    if ranks.empty:
        return pd.DataFrame(columns=["metric", "min", "max", "spread", "ratio", "min_rank",
                                     "max_rank"])
    for metric in SPREAD_METRICS:
        values = ranks.set_index("rank")[metric]
        low, high = values.min(), values.max()
        rows.append({"metric": metric, "min": float(low), "max": float(high),
                     "spread": float(high - low),
                     "ratio": float(high / low) if low else float("nan"),
                     "min_rank": int(values.idxmin()), "max_rank": int(values.idxmax())})
    return pd.DataFrame(rows)


@dataclass
class JobSummary:
    """Every rank of a job side by side (see the module docstring)."""

    folder: Path
    world_size: int
    ranks: pd.DataFrame
    spread: pd.DataFrame
    collectives: pd.DataFrame
    failed_rank: int | None = None  # the rank that failed first, if any
    highest_rank: int | None = None
    lowest_rank: int | None = None
    comparison: ProfileComparison | None = None

    @property
    def ok(self) -> bool:
        """Every rank reported and ran to the end."""
        return len(self.ranks) == self.world_size and bool((self.ranks["status"] == "ok").all())

    def _peak_text(self, rank: int) -> str:
        return f"rank {rank}: {format_bytes(self.ranks.set_index('rank').loc[rank, 'peak_bytes'])}"

    def headline(self) -> dict[str, str]:
        lines = {"ranks reported": f"{len(self.ranks)} of {self.world_size}"}
        if self.failed_rank is not None:
            status = self.ranks.set_index("rank").loc[self.failed_rank, "status"]
            lines["failed"] = f"rank {self.failed_rank}: {status.removeprefix('failed: ')}"
        if self.highest_rank is not None:
            lines["highest peak"] = self._peak_text(self.highest_rank)
            lines["lowest peak"] = self._peak_text(self.lowest_rank)
        return lines

    def to_json(self) -> dict:
        def records(frame: pd.DataFrame) -> list[dict]:
            return [{str(k): json_value(v) for k, v in row.items()}
                    for row in frame.to_dict("records")]

        return {"world_size": self.world_size, "ok": self.ok, "failed_rank": self.failed_rank,
                "highest_peak_rank": self.highest_rank, "lowest_peak_rank": self.lowest_rank,
                "ranks": records(self.ranks), "spread": records(self.spread),
                "collectives": records(self.collectives)}


def job_summary(folder: str | Path, launcher_failures: dict[int, str] | None = None,
                world_size: int | None = None, first_failure: int | None = None) -> JobSummary:
    """Read every rank{R}/ report under `folder`. From torchrun, when it launched the job:
    `launcher_failures` (rank -> why) covers ranks that died before writing a report, and
    `first_failure` is the rank it saw fail first."""
    folder = Path(folder)
    reports = sorted((load_rank(f.parent) for f in folder.glob("rank*/rank.json")),
                     key=lambda r: r.rank)
    world = world_size or max((int(r.status["world_size"]) for r in reports), default=0)
    first = _first_failure(reports, first_failure)
    rows = [_rank_row(r, first) for r in reports]
    seen = {r.rank for r in reports}
    for rank, why in sorted((launcher_failures or {}).items()):
        if rank not in seen:  # died before writing its report (killed, or crashed in C++)
            rows.append({"rank": rank, "status": f"failed: {why}, before writing its report"})
    ranks = pd.DataFrame(rows, columns=RANK_COLUMNS).sort_values("rank").reset_index(drop=True)
    frames = [r.collectives.assign(rank=r.rank) for r in reports]
    collectives = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["rank", "op", "phase", "module", "bytes", "time_ms"])
    collectives = collectives.groupby(["rank", "op", "phase", "module"], sort=True).agg(
        calls=("bytes", "size"), bytes=("bytes", "sum"), time_ms=("time_ms", "sum"),
    ).reset_index()
    reported = ranks.dropna(subset=["peak_bytes"])
    summary = JobSummary(folder, world, ranks, _spread(reported), collectives, first)
    if reports:
        by_rank = {r.rank: r.profile for r in reports}
        peaks = reported.set_index("rank")["peak_bytes"]
        summary.highest_rank, summary.lowest_rank = int(peaks.idxmax()), int(peaks.idxmin())
        summary.comparison = compare_profiles(by_rank[summary.lowest_rank],
                                              by_rank[summary.highest_rank])
    return summary


def _shown_ranks(ranks: pd.DataFrame) -> pd.DataFrame:
    shown = ranks.copy()
    shown["status"] = [s if len(s) <= 90 else s[:89] + "…" for s in shown["status"].astype(str)]
    for column in ("step_ms", "wall_ms"):
        shown[column] = [f"{v:.1f}" if pd.notna(v) else "" for v in shown[column]]
    return shown.rename(columns={"step_ms": "step (ms)", "wall_ms": "wall (ms)"})


def _shown_spread(spread: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for row in spread.to_dict("records"):
        text = format_bytes if row["metric"].endswith("bytes") else (lambda v: f"{v:.1f} ms")
        rows.append({"metric": display_header(row["metric"]), "min": text(row["min"]),
                     "max": text(row["max"]), "max - min": text(row["spread"]),
                     "max / min": "" if pd.isna(row["ratio"]) else f"{row['ratio']:.3f}",
                     "min rank": row["min_rank"], "max rank": row["max_rank"]})
    return pd.DataFrame(rows)


def job_sections(summary: JobSummary, top: int | None) -> list[Section]:
    """Per rank, the spread, collectives, then lowest (A) vs highest (B) peak rank."""
    sections = [
        Section("ranks", "Ranks", summary.ranks, _shown_ranks(summary.ranks)),
        Section("spread", "Spread across ranks", summary.spread, _shown_spread(summary.spread),
                in_csv=False),
        Section("collectives", "Collectives per rank (bytes each rank sent)",
                summary.collectives),
    ]
    if summary.comparison is not None:
        which = f"rank {summary.lowest_rank} (A, lowest peak) vs rank {summary.highest_rank} " \
            "(B, highest)"
        for section in comparison_sections(summary.comparison, top):
            section.key = f"compare_{section.key}"
            section.title = f"{section.title}: {which}"
            sections.append(section)
    return sections


def _html(summary: JobSummary, sections: list[Section]) -> str:
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             "<title>Job memory profile</title>", f"<style>{CSS}</style></head><body>",
             "<h1>Job memory profile</h1>", '<dl class="overview">',
             *(f"<dt>{html_text.escape(k)}</dt><dd>{html_text.escape(v)}</dd>"
               for k, v in summary.headline().items()), "</dl>"]
    for section in sections:
        parts += [f"<h2>{html_text.escape(section.title)}</h2>",
                  html_table(section.frame if section.shown is None else section.shown)]
    parts.append('<p class="note">Each rank\'s own report: rank{R}/report.html.</p></body></html>')
    return "\n".join(parts) + "\n"


def write_job_summary(folder: str | Path, top: int = 10,
                      launcher_failures: dict[int, str] | None = None,
                      world_size: int | None = None,
                      first_failure: int | None = None) -> JobSummary:
    """Build the job summary of `folder` and write its files there (see the module docs)."""
    summary = job_summary(folder, launcher_failures, world_size, first_failure)
    folder = Path(folder)
    sections = job_sections(summary, top)
    lines = ["# Job memory profile", ""]
    lines += [f"- **{k}**: {v}" for k, v in summary.headline().items()]
    for section in sections:
        table = section.frame if section.shown is None else section.shown
        lines += ["", f"## {section.title}", "", markdown_table(table).rstrip("\n")]
    (folder / "job_summary.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / "job_summary.html").write_text(_html(summary, sections), encoding="utf-8")
    (folder / "job_summary.json").write_text(json.dumps(summary.to_json(), indent=1),
                                             encoding="utf-8")
    for name in ("ranks", "spread", "collectives"):
        getattr(summary, name).to_csv(folder / f"job_{name}.csv", index=False)
    if summary.comparison is not None:
        summary.comparison.ops.to_csv(folder / "job_compare_ops.csv", index=False)
        summary.comparison.modules.to_csv(folder / "job_compare_modules.csv", index=False)
    return summary


# ----------------------------------------------------------------------------- two jobs


def compare_jobs(a: str | Path, b: str | Path) -> tuple[pd.DataFrame, ProfileComparison]:
    """Job A against job B: rank by rank (peak, saved, held, step time: a, b, delta), and
    `compare_profiles` of each job's highest-peak rank (the one that decides whether it fits)."""
    job_a, job_b = job_summary(a), job_summary(b)
    metrics = list(SPREAD_METRICS)
    joined = job_a.ranks[["rank", *metrics]].merge(job_b.ranks[["rank", *metrics]], on="rank",
                                                   how="outer", suffixes=("_a", "_b"))
    columns = ["rank"]
    for metric in metrics:
        joined[f"{metric}_delta"] = joined[f"{metric}_b"] - joined[f"{metric}_a"]
        columns += [f"{metric}_a", f"{metric}_b", f"{metric}_delta"]
    if job_a.highest_rank is None or job_b.highest_rank is None:
        raise ValueError("a job folder without any rank report")
    highest = compare_profiles(load_profile(Path(a) / f"rank{job_a.highest_rank}"),
                               load_profile(Path(b) / f"rank{job_b.highest_rank}"))
    return joined[columns].sort_values("rank").reset_index(drop=True), highest
