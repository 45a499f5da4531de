"""The op timeline as a Chrome trace (trace.json) that Perfetto and chrome://tracing open."""

from __future__ import annotations

from typing import Any

from profiling.tables import json_value

TRACE_PID = 1
TRACE_THREADS = {"forward": 1, "backward": 2, "optimizer": 3}
_OTHER_THREAD = 4


def chrome_trace(prof: Any) -> dict:
    """The op timeline as a Chrome trace (JSON object format) that Perfetto and chrome://tracing
    open: one complete ("X") slice per op on its phase's track, with ts/dur in µs, and
    a counter ("C") track of live bytes after each recorded event."""
    ops, timeline = prof.ops, prof.timeline
    end_ms = dict(zip(timeline["seq"].tolist(), timeline["t_ms"].tolist(), strict=True))
    events: list[dict] = [
        _metadata("process_name", {"name": f"torchext profile ({prof.meta.get('device', '')})"}),
    ]
    threads = {**TRACE_THREADS, "other": _OTHER_THREAD}
    for name, tid in threads.items():
        events.append(_metadata("thread_name", {"name": name}, tid))
        events.append(_metadata("thread_sort_index", {"sort_index": tid}, tid))
    for row in ops.itertuples(index=False):
        duration_us = max(float(row.time_ms) * 1000.0, 0.0)
        end_us = float(end_ms.get(row.seq, 0.0)) * 1000.0
        events.append({
            "name": str(row.op), "cat": str(row.phase), "ph": "X",
            "ts": round(max(end_us - duration_us, 0.0), 3), "dur": round(duration_us, 3),
            "pid": TRACE_PID, "tid": TRACE_THREADS.get(row.phase, _OTHER_THREAD),
            "args": {
                "seq": int(row.seq), "module": str(row.module),
                "input_shapes": str(row.input_shapes), "dtype": str(row.dtype),
                "saved_bytes": int(row.saved_bytes), "saved_new_bytes": int(row.saved_new_bytes),
                "live_bytes": int(row.live_bytes), "peak_bytes": int(row.peak_bytes),
                "compiled": bool(getattr(row, "compiled", False)),
            },
        })
    for row in timeline.itertuples(index=False):
        events.append({
            "name": "live memory", "ph": "C", "ts": round(float(row.t_ms) * 1000.0, 3),
            "pid": TRACE_PID, "args": {"live_bytes": int(row.live_bytes)},
        })
    other = {k: json_value(v) for k, v in dict(prof.meta).items()}
    return {"traceEvents": events, "displayTimeUnit": "ms", "otherData": other}


def _metadata(name: str, args: dict, tid: int = 0) -> dict:
    return {"name": name, "ph": "M", "pid": TRACE_PID, "tid": tid, "args": args}
