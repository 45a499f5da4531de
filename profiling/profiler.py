"""`profile()`: what each operator saved for backward, and what memory it cost.

    with profile() as prof:
        loss = model(x).sum()
        loss.backward(retain_graph=True)
    prof.ops          # one row per operator call
    prof.held_bytes   # bytes the recorded graphs hold now

Works for any PyTorch code on any device; it never keeps a tensor alive, and every hook is
removed when the block ends, also when the block raises (the partial profile is kept).
Tables are built when first read, so the block itself only pays for cheap bookkeeping.

What the numbers mean:
- `saved_bytes`: bytes of the storages the op's backward node saved, each storage counted once,
  by the first op that saved it (so the column sums to what the graph saves; a view shares its
  base's storage). `saved_new_bytes`: 'saved new' is the part of the saved bytes in storages
  that an operator allocated inside the profiled block, leaves requiring grad excepted: the
  memory the graph adds. Parameters, tensors made before the block and views of them are saved,
  not saved new. (The same words as `tables.SAVED_NEW_DEFINITION`, which every output shows.)
- `live_bytes`/`peak_bytes`: on CUDA the caching allocator's `memory_allocated` after the op
  and `max_memory_allocated` during it (peak stats are reset at each row: the profiler owns them
  while it runs). The allocator is process-wide, so these include other threads' memory;
  `meta["other_threads"]` says when memory was allocated between this thread's operators.
  Elsewhere, the logical bytes of these storages alive (unique storages, their full size):
  1. from the block's start: every parameter, buffer and gradient of each module whose forward
     runs in the block (the whole model of the outermost module called), and every parameter,
     gradient and state tensor of each optimizer whose `step` runs in it, as it was when first
     seen; plus what `track=` names. The profiler learns of a model or an optimizer when it first
     runs, and then raises the rows recorded before by those bytes: with this, a training
     step's peak equals MemTracker's with `track_external(model, optimizer, inputs)`.
  2. from the operator that creates it: every storage an operator returns.
  3. from the first operator that reads it: any other storage made before the block (e.g. the
     input batch).
  A storage counts until it is freed. Only the profiled thread's modules, optimizers and
  operators count: memory another thread uses is not in these numbers.
- `phase`: "backward" for backward nodes and for the ops autograd's engine runs, else
  "optimizer" for the ops inside any `torch.optim.Optimizer.step` (nested steps too; a step that
  raises ends its phase), else "forward".
- Threads: a profile records the operators, modules and memory of the thread that entered it
  (with the backward passes it starts, which autograd may run on its worker threads); another
  thread training at the same time changes none of its rows, except, on CUDA, the allocator's
  live and peak bytes (see above).
- `time_ms`: host time of the call; on CUDA kernels run asynchronously, so it is launch time
  unless the code synchronizes. A compiled function first called in the block compiles
  there: its first rows include the compile (Inductor compiles a backward at its first
  call), so warm up outside the block to time the compiled code alone.
- A custom `autograd.Function` is one row under its class name (the ops inside it folded in);
  a backward node is one row from its pre-hook to the next node's (see `_recorder`).
- torch.compile'd code runs compiled in the block: a row per compiled graph call and one per
  its backward, `compiled` True, named `CompiledFunction[<function> <compile id>]` and
  `CompiledFunctionBackward[...]`; `meta["compile"]` says what the report must say about it
  (see `_compiled`: what each torch version does, what is not seen).
- `held_bytes` and `lifetimes` follow the saved tensors themselves: a saved tensor is released
  when its graph lets it go (backward without `retain_graph`, or the graph being dropped).

Not seen: tensors a custom Function keeps as plain attributes of `ctx` (not through
`save_for_backward`), saved tensors packed by another `saved_tensors_hooks` inside the block
(e.g. activation checkpointing's), and graphs built by a backward with `create_graph=True`.

Changed by profiling (as by any profiler built on a dispatch mode, MemTracker too): while a
`TorchDispatchMode` is active, PyTorch treats every tensor as subclass-like and skips some
in-place fast paths. For example, backward sums the gradients of a tensor used twice out of
place (`aten::add` instead of `add_`), so such a step can peak a little higher when profiled.
And the profiler's saved-tensor hooks take the place of any set around the block: inside
`torch.autograd.graph.allow_mutation_on_saved_tensors()`, a saved tensor modified in place
fails backward when profiled.
"""

from __future__ import annotations

import copy
import datetime as _dt
import importlib.metadata
import platform
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

import pandas as pd
import torch

from ._graph import AutogradGraph, build_graph, node_first_savers
from ._launch import user_traceback
from ._leaks import find_leaks
from ._recorder import ROW_FIELDS, Recorder
from ._saved import drop_unpack_frame
from .distributed import (
    RankRecorder,
    collectives_frame,
    cuda_index,
    rank_from_env,
    rank_meta,
    save_rank,
)
from .tables import LIFETIMES_COLUMNS, OPS_COLUMNS, TIMELINE_COLUMNS, module_table

_OPS_DTYPES = {"seq": "int64", "output_bytes": "int64", "saved_bytes": "int64",
               "saved_new_bytes": "int64", "live_bytes": "int64", "peak_bytes": "int64",
               "time_ms": "float64", "op": "str", "phase": "str", "module": "str",
               "input_shapes": "str", "dtype": "str", "device": "str", "compiled": "bool"}


def _default_device() -> torch.device:
    return torch.device("cuda", cuda_index()) if torch.cuda.is_available() \
        else torch.device("cpu")


def without_frames(error: BaseException) -> BaseException:
    """The block's exception as the profile keeps it: the same type and message, without the
    traceback, whose frames' locals would keep the failed step's tensors and graph alive as
    long as the profile (and show as a leak). The exception that propagates is untouched."""
    try:
        kept = copy.copy(error)
    except Exception:  # noqa: BLE001 - a type that cannot be rebuilt from its args
        kept = RuntimeError(f"{type(error).__name__}: {error}")
    kept.__traceback__ = None
    kept.__cause__ = kept.__context__ = None
    return kept


def _shapes_text(shapes: list[tuple[int, ...]]) -> str:
    return ", ".join("[" + ", ".join(map(str, s)) + "]" for s in shapes)


class Profile:
    """The result of one `profile()` block (see the module docstring)."""

    def __init__(self, device: torch.device, command: str = "", track: tuple = ()) -> None:
        self._recorder = Recorder(device)
        self._track = track
        self.device = device
        self._command = command
        self._started_at = ""
        self._wall_ms = 0.0
        self._cache: dict[str, object] = {}
        self.error: BaseException | None = None  # what the block raised, without its frames
        self.error_traceback = ""  # its traceback as Python prints it, from the user's frames
        self._rank_recorder: RankRecorder | None = None  # under torchrun (profiling.distributed)

    # ------------------------------------------------------------------ context manager
    def __enter__(self) -> Profile:
        if self._recorder.started:
            raise RuntimeError("profile: a Profile can only be entered once")
        self._started_at = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
        self._start = time.perf_counter()
        rank = rank_from_env()
        self._recorder.start(self._track)
        if rank is not None:
            self._rank_recorder = RankRecorder(self._recorder, rank)
            self._rank_recorder.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is not None:
            drop_unpack_frame(exc)
            self.error_traceback = user_traceback(exc)
            self.error = without_frames(exc)
        try:
            if self._rank_recorder is not None:
                self._rank_recorder.stop()  # its dispatch mode sits above the recorder's
        finally:
            try:
                self._recorder.stop()
            finally:
                self._wall_ms = (time.perf_counter() - self._start) * 1e3
        # returning None lets an exception from the block propagate

    # ------------------------------------------------------------------ attribution
    def _row_saves(self) -> dict[int, list[int]]:
        """row seq -> storage ids it saved first; every saved storage belongs to one row."""
        cached = self._cache.get("row_saves")
        if cached is None:
            rec = self._recorder
            owner: dict[int, int] = {}
            for record in rec.registry.nodes:
                if record.row_seq is None:
                    continue
                for storage_id in record.saved:
                    if owner.get(storage_id, record.row_seq + 1) > record.row_seq:
                        owner[storage_id] = record.row_seq
            for storage_id, entry in rec.ledger.entries.items():
                owner.setdefault(storage_id, entry.pack_seq)  # node not found: pack window
            cached = {}
            for storage_id, seq in owner.items():
                cached.setdefault(seq, []).append(storage_id)
            self._cache["row_saves"] = cached
        return cached  # type: ignore[return-value]

    def _check_finished(self) -> None:
        if not self._recorder.stopped:
            raise RuntimeError("profile: read the results after the `with` block ends")

    # ------------------------------------------------------------------ tables
    @property
    def ops(self) -> pd.DataFrame:
        """One row per operator call (columns: see `OPS_COLUMNS`)."""
        self._check_finished()
        if "ops" not in self._cache:
            entries = self._recorder.ledger.entries
            saves = self._row_saves()
            rows = sorted(self._recorder.rows, key=lambda r: r[0])
            columns = dict(zip(ROW_FIELDS, zip(*rows, strict=True), strict=True)) if rows \
                else {name: () for name in ROW_FIELDS}
            saved, saved_new = [], []
            for seq in columns["seq"]:
                mine = saves.get(seq, ())
                saved.append(sum(entries[s].nbytes for s in mine))
                saved_new.append(sum(entries[s].nbytes for s in mine if entries[s].new))
            columns["saved_bytes"], columns["saved_new_bytes"] = saved, saved_new
            columns["input_shapes"] = [_shapes_text(s) for s in columns["input_shapes"]]
            columns["dtype"] = ["" if d is None else str(d) for d in columns["dtype"]]
            columns["device"] = ["" if d is None else str(d) for d in columns["device"]]
            compiled_rows = self._recorder.compiled.rows
            columns["compiled"] = [seq in compiled_rows for seq in columns["seq"]]
            frame = pd.DataFrame({name: columns[name] for name in OPS_COLUMNS})
            if frame.empty:  # no values to infer the column types from
                frame = frame.astype(_OPS_DTYPES)
            self._cache["ops"] = frame
        return self._cache["ops"]  # type: ignore[return-value]

    @property
    def modules(self) -> pd.DataFrame:
        """One row per module path with self and inclusive figures (see `tables.module_table`)."""
        return module_table(self.ops)

    @property
    def timeline(self) -> pd.DataFrame:
        """Live bytes after each recorded event, in time order."""
        self._check_finished()
        rows = sorted(self._recorder.rows, key=lambda r: r[0])
        frame = pd.DataFrame([(r[0], r[11], r[2], r[1], r[8]) for r in rows],
                             columns=TIMELINE_COLUMNS)
        return frame.astype({"seq": "int64", "t_ms": "float64", "live_bytes": "int64"})

    @property
    def lifetimes(self) -> pd.DataFrame:
        """One row per saved storage: which op saved it, and when the graph released it.

        `freed_*` describe the moment the autograd graph let go of the storage (its last
        saved reference); the storage itself lives on if user code still holds the tensor.
        """
        self._check_finished()
        rows_by_seq = {r[0]: r for r in self._recorder.rows}
        records = []
        for seq, storage_ids in self._row_saves().items():
            row = rows_by_seq.get(seq)
            for storage_id in storage_ids:
                entry = self._recorder.ledger.entries[storage_id]
                records.append((storage_id, entry.nbytes, row[1] if row else "", seq,
                                row[3] if row else "", entry.freed_seq, entry.freed_by,
                                entry.freed_phase))
        frame = pd.DataFrame(sorted(records), columns=LIFETIMES_COLUMNS)
        return frame.astype({"storage_id": "int64", "nbytes": "int64", "saved_seq": "int64",
                             "freed_seq": "Int64"})

    @property
    def graph(self) -> AutogradGraph:
        """The recorded autograd graph (nodes with saved bytes, edges, `to_dot()`)."""
        self._check_finished()
        return build_graph(self._recorder.registry, node_first_savers(self._recorder.registry))

    @property
    def held_bytes(self) -> int:
        """Bytes of saved tensors that the recorded autograd graphs hold right now."""
        return self._recorder.ledger.held_bytes

    def graph_held_bytes(self, tensor: torch.Tensor) -> int:
        """Bytes held by the part of the recorded graph reachable from `tensor.grad_fn`."""
        recorder = self._recorder
        if not recorder.stopped:
            recorder.discover_pending()  # inside the block: the last op's node is not seen yet
        registry = recorder.registry
        node = tensor.grad_fn
        node_id = None if node is None else registry.node_id(node)
        if node_id is None:
            return 0
        return registry.held_bytes(registry.reachable(node_id))

    def leaks(self) -> pd.DataFrame:
        """Graphs still alive that hold saved tensors, largest first: root node, the bytes only
        it holds (rows add up to `held_bytes`), bytes shared with an earlier row, what holds it
        (`hidden[0]` in a local or global of the calling frames, with its line), and a message
        when the graph spans several forward calls (an undetached carried state); see `_leaks`."""
        self._check_finished()
        return find_leaks(self._recorder.registry, self.ops, skip_frames=1)

    @property
    def meta(self) -> dict:
        """Where and when this profile was taken, and its peak memory."""
        device = self.device
        if device.type == "cuda":
            device_name = torch.cuda.get_device_name(device)
        else:
            device_name = platform.processor() or platform.machine() or "cpu"
        try:
            triton_version: str | None = importlib.metadata.version("triton")
        except importlib.metadata.PackageNotFoundError:
            triton_version = None
        rows = self._recorder.rows
        peak = max((r[9] for r in rows), default=0)
        if device.type != "cuda":
            peak = max(peak, self._recorder.storages.peak.get(device, 0))
        return {
            "device": str(device),
            "device_name": device_name,
            "torch_version": torch.__version__,
            "triton_version": triton_version,
            "python": platform.python_version(),
            "started_at": self._started_at,
            "wall_ms": self._wall_ms,
            "peak_bytes": peak,
            "command": self._command,
            **rank_meta(self._rank_recorder, self._wall_ms),
            "other_threads": self._recorder.other_threads_note(),
            "compile": self._recorder.compiled.note,
            "peak_is_lower_bound": self._recorder.compiled.unseen_buffers,
            "error": "" if self.error is None else f"{type(self.error).__name__}: {self.error}",
        }

    @property
    def collectives(self) -> pd.DataFrame:
        """Under torchrun, one row per collective this rank issued (`profiling.distributed`)."""
        return collectives_frame(self._rank_recorder)

    def save(self, path: str | Path) -> Path:
        """Write the report folder (CSV, JSON, Markdown, plots); see `profiling.export`.
        Under torchrun: `path/rank{R}/`, and the job summary in `path`."""
        from .export import save_profile

        if self._rank_recorder is not None:
            return save_rank(self, path)
        return save_profile(self, path)

    def _repr_html_(self) -> str | None:
        """The summary in a notebook (`profiling.magic.profile_html`); none while recording."""
        from .magic import profile_html

        return profile_html(self) if self._recorder.stopped else None

    def _repr_markdown_(self) -> str | None:
        from .magic import profile_markdown

        return profile_markdown(self) if self._recorder.stopped else None

    def __repr__(self) -> str:
        state = "finished" if self._recorder.stopped else "recording"
        return (f"Profile({state}, {len(self._recorder.rows)} ops, "
                f"held_bytes={self.held_bytes})")


def profile(device: str | torch.device | None = None, *, command: str = "",
            track: Iterable[object] | torch.nn.Module | torch.optim.Optimizer | torch.Tensor = (),
            ) -> Profile:
    """Profile the code in a `with` block.

    `device` is the device whose memory `live_bytes`/`peak_bytes` report: on CUDA the caching
    allocator's numbers, elsewhere the logical bytes of the tensor storages alive. Default:
    the current CUDA device if CUDA is available, else the CPU. Saved bytes, `held_bytes` and
    lifetimes cover every device either way.

    Logical accounting (see the module docstring for exactly what counts) already counts the
    models that run and the optimizers that step from the block's start; `track` (modules,
    optimizers, tensors) counts other storages that existed before the block from its start,
    like `MemTracker.track_external`. `command` is recorded in `meta`.
    """
    if not isinstance(command, str):
        raise TypeError(f"profile(): command must be a str, not {type(command).__name__}")
    if isinstance(track, (torch.Tensor, torch.nn.Module, torch.optim.Optimizer)):
        track = (track,)  # one thing to track, as MemTracker.track_external(model) takes it
    if isinstance(track, (str, bytes)) or not isinstance(track, Iterable):
        raise TypeError("profile(): track must be a module, an optimizer, a tensor, or an "
                        f"iterable of them, not {type(track).__name__}")
    track = tuple(track)
    for item in track:
        if not isinstance(item, (torch.Tensor, torch.nn.Module, torch.optim.Optimizer,
                                 list, tuple, dict)):
            raise TypeError("profile(): track takes modules, optimizers, tensors and lists, "
                            f"tuples or dicts of them, not {type(item).__name__}")
    device = _default_device() if device is None else torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", cuda_index())  # under torchrun: the rank's (LOCAL_RANK)
    return Profile(device, command=command, track=track)
