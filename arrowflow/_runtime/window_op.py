"""Runtime operators for event time: the watermark generator and the window aggregations.

**WatermarkOp** passes batches through and sends its watermark (microseconds) downstream when
it advanced. Per split (when it sees its sources directly): it keeps each split's running
maximum, adds each row's split watermark (:data:`SPLIT_WATERMARK`) for the windows, and
sends the minimum over its sources' floors and splits in progress; otherwise, per worker,
``max(ts seen) - delay``. With an idle timeout it sends ``IDLE`` once no data came for that
long (see :mod:`arrowflow._foundation.watermarks`, which has the design and why it is deterministic).

**WindowOp** (tumbling and sliding) keeps, per (keys, window_start):

- a *write buffer*: the partial aggregates of recent batches, combined (one row per window),
  in the worker's heap. Most windows open and fire between two watermarks (W2: nearly every
  event opens its own window, and a minute later it fires), so most never touch the store;
- the *store* (any state backend, key = keys + window_start, value = the partials): the
  buffer is merged into it only when it grows past :data:`BUFFER_ROWS`;
- an *index* of the windows in the store with their end (heap, rebuilt from the store on
  restore): firing filters it instead of scanning the store.

On a watermark ``w``, the windows with ``end + allowed_lateness <= w`` fire: from the buffer
by a filter, from the store by a get and a delete of exactly the due keys; their rows are
emitted, then ``w`` is passed on. An arriving event whose window is at or behind its row's
split watermark, or has already fired that way, goes to the ``late`` port instead. At the
end of the input everything fires.

**SessionWindowOp** merges each batch's sessions (per key, sorted by time, split where the
gap to the previous event is at least ``gap``) with the stored sessions of the same keys
whose intervals overlap, all with vectorized sorts and cumulative maxima; it writes through
to the store on every batch (sessions are rarer than tumbling windows in the hot path). A
session fires once the watermark passes its end + lateness + ``gap``: a row that is not late
then can never touch a fired session, so which sessions form does not depend on timing.

Checkpoints write, per worker, the store through the backend, the write buffer as it is
(one Arrow IPC file, store ``<op>/buffer``, with the key group of every row: a checkpoint
costs one file write however many windows are open, and a restore onto another number of
workers keeps exactly the windows of its key groups), and the operator's watermark in a
small JSON file (``<op>/watermark``); a restored operator never goes below it, so a window
that fired before the checkpoint neither fires again nor reopens. A window may be both in
the store and in the buffer (spilled, then more events); firing combines the two.

Batches are grouped by polars' streaming engine when every aggregate is order-free (about
twice as fast as the in-memory engine on one thread per worker).

Worked example (tumbling 60 s, delay 5 s, one key): events at 12:00:10, 12:00:50, 12:01:20
arrive in one batch: partials for [12:00, 12:01) (n=2) and [12:01, 12:02) (n=1) go to the
buffer; the watermark 12:01:15 follows: [12:00, 12:01) fires from the buffer and [12:01,
12:02) stays. An event at 12:00:30 arriving after that is late: window [12:00, 12:01).
"""

from __future__ import annotations

import json
import time
from typing import Any, Literal

import polars as pl

from arrowflow._foundation.watermarks import IDLE, NO_WATERMARK, SPLIT_WATERMARK, to_micros
from arrowflow._graph.aggregates import ORDERED_KINDS
from arrowflow._graph.windows import WindowAgg
from arrowflow._plan import OpSpec
from arrowflow._runtime.checkpoints import encode_spec
from arrowflow._runtime.operators import Operator, restore_stores, snapshot_stores
from arrowflow.errors import StateError
from arrowflow.state import (
    FOUND,
    KEY_GROUP,
    KeyedStore,
    StateBackend,
    StateFile,
    StoreContext,
    StoreSpec,
    checked_write,
    ipc_bytes,
    join_on_keys,
    read_ipc_bytes,
    read_verified,
)
from arrowflow.windows import WINDOW_END, WINDOW_START

#: Buffered window rows (one per open window) merged into the store once exceeded.
BUFFER_ROWS = 4_000_000
#: Store name (under the operator's id) of the write buffer's snapshot files.
BUFFER_STORE = "buffer"
END = "__end"
START = "__start"


def make_window_op(
    spec: OpSpec, backend: StateBackend, key_range: range, context: StoreContext
) -> Operator:
    """The physical operator of a window aggregation: sessions merge, the other windows not."""
    window: WindowAgg = spec.params["window"]
    if window.is_session:
        return SessionWindowOp(spec, backend, key_range, context)
    return WindowOp(spec, backend, key_range, context)


class _SplitClock:
    """Event time of one split in progress on this worker (see :mod:`arrowflow._foundation.watermarks`)."""

    __slots__ = ("last_data", "lower", "top")

    def __init__(self, lower: int | None, top: int | None) -> None:
        self.lower = lower  # a bound below every event time of the split, when known
        self.top = top  # the running maximum of its event times so far (microseconds)
        self.last_data = time.monotonic()


class _SourceTrack:
    """One upstream source of a per-split watermark: its floor and its splits in progress here."""

    __slots__ = ("bounded", "floor", "splits")

    def __init__(self, bounded: bool) -> None:
        self.bounded = bounded
        # Until the source's first answer (a split, or "wait" for an unbounded one), anything
        # may still come.
        self.floor = NO_WATERMARK
        self.splits: dict[str, _SplitClock] = {}


class WatermarkOp(Operator):
    """Bounded out-of-orderness, per split when it sees its sources directly (the worker
    calls :meth:`track_splits`), else per worker: after each batch, ``max(ts) - delay`` if
    that advanced."""

    def __init__(self, spec: OpSpec) -> None:
        super().__init__(spec)
        self.column = spec.params["column"]
        self.dtype = spec.params["dtype"]
        self.delay_us = spec.params["delay_ms"] * 1000
        idle = spec.params["idle_timeout_ms"]
        self.idle_timeout_s = None if idle is None else idle / 1000
        self.last_data = time.monotonic()
        self.went_idle = 0
        self.tracks: dict[str, _SourceTrack] | None = None  # per-split mode: upstream sources
        self.attach = False  # per-split mode: a window downstream reads SPLIT_WATERMARK

    # ------------------------------------------------------------------ per-split mode
    def track_splits(self, sources: dict[str, bool], *, attach: bool) -> None:
        """Keep per-split watermarks over ``sources`` (id -> bounded); ``attach``: add the
        per-row split watermark to each batch for the windows downstream."""
        self.tracks = {source_id: _SourceTrack(bounded) for source_id, bounded in sources.items()}
        self.attach = attach

    def split_opened(self, source_id: str, split_id: str, event_time: dict[str, Any]) -> None:
        """The source was handed ``split_id`` (with the coordinator's ``event_time`` for it)."""
        assert self.tracks is not None
        track = self.tracks[source_id]
        track.floor = int(event_time["floor"])
        lower = event_time.get("lower") if track.bounded else None
        track.splits[split_id] = _SplitClock(lower, event_time.get("tops", {}).get(self.id))
        self.advance()

    def split_closed(self, source_id: str, split_id: str) -> None:
        assert self.tracks is not None
        self.tracks[source_id].splits.pop(split_id, None)
        self.advance()

    def source_waiting(self, source_id: str) -> None:
        """An unbounded source has nothing to hand this worker now: no pending split holds
        event time back here (a split found later counts once it is handed out)."""
        assert self.tracks is not None
        self.tracks[source_id].floor = IDLE
        self.advance()

    def source_drained(self, source_id: str) -> None:
        """The source has no split left for anyone: it no longer holds event time back."""
        assert self.tracks is not None
        track = self.tracks[source_id]
        track.floor = IDLE
        track.splits.clear()
        self.advance()

    def split_tops(self) -> dict[str, dict[str, int]]:
        """For a checkpoint: source -> split in progress -> its running maximum."""
        return {
            source_id: {
                split_id: clock.top
                for split_id, clock in track.splits.items()
                if clock.top is not None
            }
            for source_id, track in (self.tracks or {}).items()
            if track.splits
        }

    def _idle_split(self, track: _SourceTrack, clock: _SplitClock, now: float) -> bool:
        return (
            not track.bounded
            and self.idle_timeout_s is not None
            and now - clock.last_data >= self.idle_timeout_s
        )

    def advance(self) -> None:
        """Forward the minimum over the sources' floors and their splits' contributions here
        (``max(lower, top - delay)``), if it rose."""
        assert self.tracks is not None
        value, now = IDLE, time.monotonic()
        idle_reached = NO_WATERMARK
        for track in self.tracks.values():
            value = min(value, track.floor)
            for clock in track.splits.values():
                lower = NO_WATERMARK if clock.lower is None else clock.lower
                reached = max(
                    lower, NO_WATERMARK if clock.top is None else clock.top - self.delay_us
                )
                if self._idle_split(track, clock, now):
                    idle_reached = max(idle_reached, reached)
                else:
                    value = min(value, reached)
        if value == IDLE:
            # Only idle splits (if any) are left: as an operator whose inputs are all idle,
            # advance to the highest they reached, so the windows their last rows closed fire.
            value = idle_reached if idle_reached != NO_WATERMARK else IDLE
        if value != IDLE and value > self.watermark:
            self.watermark = value
            self.forward_watermark(value)

    def _split_batch(self, batch: pl.DataFrame, clock: _SplitClock) -> pl.DataFrame:
        """Update the split's running maximum; with ``attach``, add each row's split watermark:
        the running maximum *before* the row, minus the delay (null before the split's first)."""
        ts = to_micros(batch.get_column(self.column), self.dtype)
        top = ts.max()
        if self.attach:
            before = ts.cum_max()
            if before.null_count():
                before = before.forward_fill()  # a null event time does not reset the maximum
            before = before.shift(1)
            if clock.top is not None:
                before = before.fill_null(clock.top).clip(lower_bound=clock.top)
            batch = batch.with_columns((before - self.delay_us).alias(SPLIT_WATERMARK))
        if top is not None and (clock.top is None or top > clock.top):
            clock.top = int(top)
        return batch

    # ------------------------------------------------------------------ both modes
    def open(self) -> None:
        self.last_data = time.monotonic()

    def receive_watermark(self, value: int, index: int) -> None:
        """Watermarks from upstream are replaced by this operator's own; but an idle upstream
        (a source reader with no split to read, like a second worker when one file is
        tailed) makes this operator idle until data comes, so it holds no window back."""
        if value == IDLE and not self.idle:
            self.idle = True
            self.went_idle += 1
            self.forward_watermark(IDLE)

    def process(self, batch: pl.DataFrame, index: int) -> None:
        if self.tracks is not None:
            self._process_split(batch)
            return
        self.emit(batch)
        if not batch.height:
            return
        self.last_data = time.monotonic()
        top = to_micros(batch.get_column(self.column), self.dtype).max()
        if self.idle:
            self.idle = False
            if self.watermark != NO_WATERMARK:
                self.forward_watermark(self.watermark)  # active again
        if top is not None and top - self.delay_us > self.watermark:
            self.watermark = int(top) - self.delay_us
            self.forward_watermark(self.watermark)

    def _process_split(self, batch: pl.DataFrame) -> None:
        assert self.tracks is not None
        current = self.context.current_split
        track = self.tracks.get(current[0]) if current is not None else None
        clock = track.splits.get(current[1]) if track is not None and current is not None else None
        if clock is None:
            # Not a batch of a tracked split (cannot happen on the direct path this mode is
            # chosen for): pass it on without letting it move event time.
            self.emit(batch)
            return
        if batch.height:
            batch = self._split_batch(batch, clock)
            clock.last_data = self.last_data = time.monotonic()
            if self.idle:
                self.idle = False
                if self.watermark != NO_WATERMARK:
                    self.forward_watermark(self.watermark)  # active again
        self.emit(batch)
        self.advance()

    def tick(self) -> None:
        """Called by the worker loop: go idle after ``idle_timeout`` without data (per split
        of an unbounded source in per-split mode)."""
        if self.idle_timeout_s is None or self.idle or self.finished:
            return
        now = time.monotonic()
        if self.tracks is not None:
            self.advance()  # an idle split no longer holds the others back
            clocks = [(t, c) for t in self.tracks.values() for c in t.splits.values()]
            bounded = any(t.bounded and (t.floor != IDLE or t.splits) for t in self.tracks.values())
            if bounded or not clocks or not all(self._idle_split(t, c, now) for t, c in clocks):
                return
        elif now - self.last_data < self.idle_timeout_s:
            return
        self.idle = True
        self.went_idle += 1
        self.forward_watermark(IDLE)

    def metrics(self) -> dict[str, Any]:
        data = super().metrics()
        data["watermark_us"] = self.watermark
        data["went_idle"] = self.went_idle
        return data


class _WindowBase(Operator):
    """Store, index of stored windows with their ends, watermark persistence, firing."""

    keeps_split_watermark = True  # it decides lateness with it

    def __init__(
        self, spec: OpSpec, backend: StateBackend, key_range: range, context: StoreContext
    ) -> None:
        super().__init__(spec)
        self.window: WindowAgg = spec.params["window"]
        self.agg = self.window.agg
        self.keys = self.agg.keys  # user keys + window_start
        self.user_keys = self.window.keys
        self.backend = backend
        self.key_range = key_range
        self.store_context = context
        self.store: KeyedStore | None = None
        self.index = pl.DataFrame(schema={**self.window.key_schema, END: pl.Int64})
        self.late_rows = 0
        self.fired = 0

    def store_spec(self) -> StoreSpec:
        return StoreSpec(
            self.id,
            self.window.key_schema,
            self.window.state_schema,
            max_parallelism=self.spec.params["max_parallelism"],
            group_columns=tuple(self.user_keys),
        )

    # ------------------------------------------------------------------ lifecycle
    def open(self) -> None:
        self.store = self.backend.open_store(self.store_spec(), self.key_range, self.store_context)
        restore_stores(self.context, {"": self.store})
        if self.context.restore_root is not None and self.context.storage is not None:
            frames = [
                frame.select([*self.keys, *self._end_source()]) for frame in self.store.scan()
            ]
            if frames:
                self.index = self._with_end(pl.concat(frames)).select(self.index.columns)
            self.watermark = self._restored_watermark()

    def _end_source(self) -> list[str]:
        return [WINDOW_END] if self.window.is_session else []

    def _with_end(self, frame: pl.DataFrame) -> pl.DataFrame:
        """``frame`` (keys + window_start [+ window_end]) with the physical window end."""
        if self.window.is_session:
            return frame.with_columns(pl.col(WINDOW_END).to_physical().alias(END))
        return frame.with_columns(
            (pl.col(WINDOW_START).to_physical() + self.window.size).alias(END)
        )

    def _watermark_store(self) -> str:
        return f"{self.id}/watermark"

    def _restored_watermark(self) -> int:
        storage, root = self.context.storage, self.context.restore_root
        assert storage is not None and root is not None  # open() restores only when both are set
        values = []
        for state_file in self.context.files_for(self._watermark_store()):
            low, high = state_file.key_groups
            if high <= self.key_range.start or low >= self.key_range.stop:
                continue
            values.append(
                _watermark_of(
                    read_verified(storage.fs, root, state_file),
                    state_file.path,
                    self.id,
                )
            )
        return min(values) if values else NO_WATERMARK

    def snapshot(self, checkpoint_id: int) -> None:
        snapshot_stores(self.context, {"": self.store}, checkpoint_id)
        storage = self.context.storage
        if storage is None:
            return
        relative = (
            f"chk-{checkpoint_id:08d}/state/{self.id}/watermark-"
            f"{self.key_range.start:03d}-{self.key_range.stop:03d}.json"
        )
        payload = json.dumps({"watermark": self.watermark, "operator": self.id}).encode()
        size, digest = checked_write(storage.fs, f"{storage.root}/{relative}", payload)
        self.context.state_files.setdefault(checkpoint_id, []).append(
            StateFile(
                relative,
                size,
                digest,
                self._watermark_store(),
                (self.key_range.start, self.key_range.stop),
                "json",
            )
        )

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None

    # ------------------------------------------------------------------ event time
    def on_watermark(self, value: int) -> None:
        self.fire(self.window.to_units(value))
        self.forward_watermark(value)

    def finish(self) -> None:
        self.fire(None)

    def take_due(self, limit: int | None) -> list[pl.DataFrame]:
        """Remove and return the stored windows with ``end <= limit`` (None: all), as frames
        of keys, window_start then the state columns."""
        assert self.store is not None
        due = self.index if limit is None else self.index.filter(pl.col(END) <= limit)
        if not due.height:
            return []
        self.index = self.index.clear() if limit is None else self.index.filter(pl.col(END) > limit)
        keys = due.select(self.keys)
        values = self.store.get(keys).drop(FOUND)
        self.store.delete(keys)
        return [pl.concat([keys, values], how="horizontal")]

    def emit_fired(self, frame: pl.DataFrame) -> None:
        if not frame.height:
            return
        self.fired += frame.height
        out = self.agg.finalize(frame)
        if self.window.is_session:
            end = frame.get_column(WINDOW_END)
        else:
            end = (frame.get_column(WINDOW_START).to_physical() + self.window.size).cast(
                self.window.dtype
            )
        self.emit(out.insert_column(len(self.user_keys) + 1, end.alias(WINDOW_END)))

    def emit_late(self, late: pl.DataFrame) -> None:
        """``late``: input rows with the physical ``__start`` (and ``__end``) of the missed window."""
        if not late.height:
            return
        self.late_rows += late.height
        if not self.outputs.get("late"):
            # Nobody reads ``late``: the plan pruned the columns only it needs; just count.
            self.emit(late, "late")
            return
        dtype = self.window.dtype
        self.emit(
            late.with_columns(
                pl.col(START).cast(dtype).alias(WINDOW_START),
                pl.col(END).cast(dtype).alias(WINDOW_END),
            ).select(self.window.late_schema.names()),
            "late",
        )

    def split_late_rows(
        self, frame: pl.DataFrame, end: pl.Expr, fired: pl.Expr | None
    ) -> tuple[pl.DataFrame, pl.DataFrame] | None:
        """(late rows, the others) of ``frame``, or None when none is late. A row is late when
        its window ``end`` + allowed lateness is at or behind its split watermark
        (:data:`SPLIT_WATERMARK`, microseconds), or when ``fired`` (its window already fired
        here). One pass for the mask; the frame is split only when some row is late."""
        conditions = [] if fired is None else [fired]
        if SPLIT_WATERMARK in frame.columns:
            split_limit = (
                pl.col(SPLIT_WATERMARK) * self.window.per_ms // 1000
            )  # in the column's unit
            conditions.append(end + self.window.lateness <= split_limit)
        if not conditions:
            return None
        mask = frame.select(pl.any_horizontal(conditions).fill_null(False)).to_series()
        if not mask.any():
            return None
        return frame.filter(mask), frame.filter(~mask)

    def fire(self, limit: int | None) -> None:
        raise NotImplementedError

    def metrics(self) -> dict[str, Any]:
        data = super().metrics()
        data["late"] = self.late_rows
        data["windows_fired"] = self.fired
        data["windows_open"] = self.index.height
        data["watermark_us"] = self.watermark
        return data


class _Chunk:
    """Buffered windows from one or more batches: one row per window, and a physical range
    ``[low, high]`` that holds all their starts (it may be wider, never narrower: a range
    known from where the rows came saves two passes over them). Keys are unique across all
    chunks."""

    __slots__ = ("frame", "high", "low")

    def __init__(self, frame: pl.DataFrame, bounds: tuple[int, int] | None = None) -> None:
        self.frame = frame
        if bounds is None:
            starts = frame.get_column(WINDOW_START).to_physical()
            bounds = int(starts.min()), int(starts.max())  # type: ignore[arg-type]
        self.low, self.high = bounds


class WindowOp(_WindowBase):
    """Tumbling and sliding windows (see the module docstring).

    The write buffer is a list of chunks, one per batch, tagged with their range of window
    starts. A batch's partials are combined only with the rows of chunks whose starts fall in
    the overlap of the two ranges (a minute or two at a batch boundary), so inserting costs
    about the batch's size however much is buffered; firing takes whole chunks whose range is
    due, and filters only the one or two that straddle the watermark.
    """

    def __init__(
        self, spec: OpSpec, backend: StateBackend, key_range: range, context: StoreContext
    ) -> None:
        super().__init__(spec, backend, key_range, context)
        self.chunks: list[_Chunk] = []
        self.buffered = 0
        # polars' streaming engine groups a batch about twice as fast as the in-memory one
        # (one thread per worker); first/last depend on row order, so they keep the latter.
        order_free = all(term.kind not in ORDERED_KINDS for term in self.agg.terms)
        self.engine: Literal["streaming", "in-memory"] = "streaming" if order_free else "in-memory"
        self.buffer_spec = StoreSpec(
            f"{self.id}/{BUFFER_STORE}",
            self.window.key_schema,
            self.window.state_schema,
            max_parallelism=self.spec.params["max_parallelism"],
            group_columns=tuple(self.user_keys),
        )

    # ------------------------------------------------------------------ checkpoints
    def open(self) -> None:
        super().open()
        restored = self._restored_buffer()
        if restored is not None and restored.height:
            self.chunks = [_Chunk(restored)]
            self.buffered = restored.height

    def snapshot(self, checkpoint_id: int) -> None:
        # The store's snapshot holds the windows flushed before (rare: see BUFFER_ROWS); the
        # write buffer, which holds nearly every open window, is written as it is, one Arrow
        # IPC file per worker with the key group of every row (so a restore onto another
        # number of workers keeps exactly its own windows). A window may be in both: the
        # restored operator combines them as it would have (``flush`` and ``fire``).
        super().snapshot(checkpoint_id)
        storage = self.context.storage
        if storage is None:
            return
        frames = [c.frame for c in self.chunks]
        if frames:
            buffer = pl.concat(frames, how="vertical") if len(frames) > 1 else frames[0]
        else:
            buffer = pl.DataFrame(schema={**self.window.key_schema, **self.window.state_schema})
        groups = self.buffer_spec.key_groups_of(buffer)
        frame = buffer.with_columns(pl.Series(KEY_GROUP, groups, dtype=pl.Int32))
        relative = (
            f"chk-{checkpoint_id:08d}/state/{self.id}/{BUFFER_STORE}-"
            f"{self.key_range.start:03d}-{self.key_range.stop:03d}.arrow"
        )
        size, digest = checked_write(storage.fs, f"{storage.root}/{relative}", ipc_bytes(frame))
        if self.buffer_spec.name not in self.context.store_specs:
            self.context.store_specs[self.buffer_spec.name] = encode_spec(self.buffer_spec)
        self.context.state_files.setdefault(checkpoint_id, []).append(
            StateFile(
                relative,
                size,
                digest,
                self.buffer_spec.name,
                (self.key_range.start, self.key_range.stop),
                "arrow",
            )
        )

    def _restored_buffer(self) -> pl.DataFrame | None:
        """The buffered windows of the restored checkpoint whose key group this worker owns."""
        storage = self.context.storage
        if self.context.restore_root is None or storage is None:
            return None
        low, high = self.key_range.start, self.key_range.stop
        schema = {**self.window.key_schema, **self.window.state_schema}
        frames = []
        for state_file in self.context.files_for(self.buffer_spec.name):
            if state_file.key_groups[1] <= low or state_file.key_groups[0] >= high:
                continue
            frame = read_ipc_bytes(read_verified(storage.fs, self.context.restore_root, state_file))
            frames.append(
                frame.filter(pl.col(KEY_GROUP).is_between(low, high - 1)).select(list(schema))
            )
        if not frames:
            return None
        return pl.concat(frames, how="vertical").cast(schema)  # type: ignore[arg-type]

    def process(self, batch: pl.DataFrame, index: int) -> None:
        assigned = self.window.assign(batch)
        # Late: the window is behind the row's split watermark (its end + lateness at or
        # behind it), or it already fired here (on bounded input with per-split watermarks
        # the first implies the second; see arrowflow._foundation.watermarks).
        fired = None
        if self.watermark != NO_WATERMARK:
            limit = self.window.to_units(self.watermark) - self.window.size - self.window.lateness
            fired = pl.col(START) <= limit
        late = self.split_late_rows(assigned, pl.col(START) + self.window.size, fired)
        if late is not None:
            rows, assigned = late
            self.emit_late(rows.with_columns((pl.col(START) + self.window.size).alias(END)))
        if SPLIT_WATERMARK in assigned.columns:
            assigned = assigned.drop(SPLIT_WATERMARK)
        if not assigned.height:
            return
        self._buffer(self._partial(assigned))

    def _partial(self, assigned: pl.DataFrame) -> _Chunk:
        """The batch's partial aggregates per (keys, window_start), as a chunk.

        One integer key (the common case, and W2's) and a window start packed into one
        int64 group twice as fast as the two columns; the key and start are then unpacked
        arithmetically. Other keys, nulls, or ranges too wide to pack take the general path.
        """
        key_dtype = self.window.key_schema[self.user_keys[0]] if len(self.user_keys) == 1 else None
        if key_dtype is not None and key_dtype.is_integer() and assigned.height > 1024:
            raw = pl.col(self.user_keys[0])
            slot = pl.col(START) // self.window.every
            low_key, high_key, low_slot, high_slot, nulls = assigned.select(
                raw.min().alias("a"),
                raw.max().alias("b"),
                slot.min().alias("c"),
                slot.max().alias("d"),
                raw.null_count().alias("e"),
            ).row(0)
            key = raw.cast(pl.Int64)  # a UInt64 above the Int64 range takes the general path
            if (
                nulls == 0
                and high_key < 2**63
                and high_key - low_key < 2**31
                and high_slot - low_slot < 2**31
            ):
                packed = ((slot - low_slot) * 2**32 + (key - low_key)).alias("__packed")
                code = pl.col("__packed")
                grouped = (
                    assigned.lazy()
                    .group_by(packed)
                    .agg(self.agg.partial_exprs)
                    .select(
                        ((code % 2**32) + low_key).cast(key_dtype).alias(self.user_keys[0]),
                        (((code // 2**32) + low_slot) * self.window.every)
                        .cast(self.window.dtype)
                        .alias(WINDOW_START),
                        *self.agg.state_schema.names(),
                    )
                    .collect(engine=self.engine)
                )
                return _Chunk(
                    grouped, (low_slot * self.window.every, high_slot * self.window.every)
                )
        return _Chunk(
            assigned.lazy()
            .with_columns(pl.col(START).cast(self.window.dtype).alias(WINDOW_START))
            .group_by(self.keys)
            .agg(self.agg.partial_exprs)
            .collect(engine=self.engine)
        )

    def _buffer(self, chunk: _Chunk) -> None:
        partial = chunk.frame
        start = pl.col(WINDOW_START).to_physical()
        taken: list[pl.DataFrame] = []
        overlaps: list[tuple[int, int]] = []
        kept: list[_Chunk] = []
        for old in self.chunks:
            low, high = max(old.low, chunk.low), min(old.high, chunk.high)
            if low > high:
                kept.append(old)
                continue
            inside = start.is_between(low, high)
            rows = old.frame.filter(inside)
            if rows.height:
                taken.append(rows)
                overlaps.append((low, high))
                rest = old.frame.filter(~inside)
                if rest.height:
                    # Outside [low, high]: below it when the overlap reaches old's top, above
                    # it when it reaches old's bottom, else on both sides.
                    kept.append(
                        _Chunk(
                            rest,
                            (old.low, low - 1)
                            if high >= old.high
                            else (high + 1, old.high)
                            if low <= old.low
                            else (old.low, old.high),
                        )
                    )
            else:
                kept.append(old)
        if taken:
            shared = pl.any_horizontal([start.is_between(low, high) for low, high in overlaps])
            combined = self.agg.combine(pl.concat([*taken, partial.filter(shared)], how="vertical"))
            fresh = partial.filter(~shared)
            chunk = _Chunk(
                pl.concat([fresh, combined], how="vertical") if fresh.height else combined,
                (chunk.low, chunk.high),
            )  # the overlaps lie inside the batch's range
        kept.append(chunk)
        if len(kept) > 256:  # key-disjoint: concatenating is enough
            kept = [_Chunk(pl.concat([c.frame for c in kept], how="vertical"))]
        self.chunks = kept
        self.buffered = sum(c.frame.height for c in kept)
        if self.buffered > BUFFER_ROWS:
            self.flush()

    def flush(self) -> None:
        chunks, self.chunks, self.buffered = self.chunks, [], 0
        if not chunks:
            return
        assert self.store is not None
        buffer = (
            pl.concat([c.frame for c in chunks], how="vertical")
            if len(chunks) > 1
            else chunks[0].frame
        )
        if self.index.height:
            known = join_on_keys(buffer, self.index.select(self.keys), self.keys, "semi")
            fresh = join_on_keys(buffer, self.index.select(self.keys), self.keys, "anti")
        else:
            known, fresh = buffer.clear(), buffer
        if known.height:
            keys = known.select(self.keys)
            self.store.put(keys, self.agg.merge(self.store.get(keys), known))
        if fresh.height:
            keys = fresh.select(self.keys)
            self.store.put(keys, fresh.select(self.agg.state_schema.names()))
            self.index = pl.concat([self.index, self._with_end(keys)], how="vertical")

    def fire(self, limit: int | None) -> None:
        due: list[pl.DataFrame] = []
        if limit is None:
            due = [c.frame for c in self.chunks]
            self.chunks = []
        else:
            start_limit = limit - self.window.size - self.window.lateness
            kept = []
            for chunk in self.chunks:
                if chunk.high <= start_limit:
                    due.append(chunk.frame)
                elif chunk.low > start_limit:
                    kept.append(chunk)
                else:
                    is_due = pl.col(WINDOW_START).to_physical() <= start_limit
                    due.append(chunk.frame.filter(is_due))
                    kept.append(_Chunk(chunk.frame.filter(~is_due), (start_limit + 1, chunk.high)))
            self.chunks = kept
        self.buffered = sum(c.frame.height for c in self.chunks)
        buffered = pl.concat(due, how="vertical") if len(due) > 1 else (due[0] if due else None)
        stored = self.take_due(None if limit is None else limit - self.window.lateness)
        if stored and buffered is not None and buffered.height:
            # A window may be both in the store (flushed before) and in the buffer (newer events).
            both = join_on_keys(buffered, stored[0].select(self.keys), self.keys, "semi")
            if both.height:
                only = join_on_keys(buffered, stored[0].select(self.keys), self.keys, "anti")
                self.emit_fired(self.agg.combine(pl.concat([stored[0], both], how="vertical")))
                self.emit_fired(only)
                return
        for frame in [*stored, *([buffered] if buffered is not None else [])]:
            self.emit_fired(frame)


class SessionWindowOp(_WindowBase):
    """Session windows, merged per key in the store (see the module docstring)."""

    def process(self, batch: pl.DataFrame, index: int) -> None:
        assert self.store is not None
        window, keys = self.window, self.user_keys
        ts = pl.col(window.time_column).to_physical()
        frame = batch
        fired = None
        if self.watermark != NO_WATERMARK:
            limit = window.to_units(self.watermark) - window.gap - window.lateness
            fired = ts <= limit
        late = self.split_late_rows(frame, ts + window.gap, fired)
        if late is not None:
            rows, frame = late
            self.emit_late(rows.with_columns(ts.alias(START), (ts + window.gap).alias(END)))
        if SPLIT_WATERMARK in frame.columns:
            frame = frame.drop(SPLIT_WATERMARK)
        if not frame.height:
            return
        ordered = frame.sort([*keys, window.time_column])
        same_key = pl.all_horizontal([pl.col(k).eq_missing(pl.col(k).shift(1)) for k in keys])
        starts = ~same_key.fill_null(False) | ((ts - ts.shift(1)) >= window.gap).fill_null(True)
        ordered = ordered.with_columns(
            pl.when(starts)
            .then(ts)
            .otherwise(None)
            .forward_fill()
            .cast(window.dtype)
            .alias(WINDOW_START)
        )
        partial = ordered.group_by(self.keys, maintain_order=True).agg(
            [*self.agg.partial_exprs, (ts.max() + window.gap).alias(END)]
        )
        self._merge(partial)

    def _merge(self, partial: pl.DataFrame) -> None:
        assert self.store is not None
        keys, dtype = self.user_keys, self.window.dtype
        state = self.agg.state_schema.names()
        parts = [partial.select([*self.keys, *state, END])]
        touched = (
            join_on_keys(self.index, partial.select(keys).unique(), keys, "semi")
            if self.index.height
            else self.index
        )
        if touched.height:
            stored_keys = touched.select(self.keys)
            values = self.store.get(stored_keys)
            parts.insert(
                0,
                pl.concat(
                    [stored_keys, values.select(state), touched.select(END)], how="horizontal"
                ),
            )
            self.store.delete(stored_keys)
            self.index = join_on_keys(self.index, stored_keys, self.keys, "anti")
        both = pl.concat(parts, how="vertical").sort([*keys, WINDOW_START], maintain_order=True)
        start = pl.col(WINDOW_START).to_physical()
        previous_end = pl.col(END).cum_max().shift(1).over(keys)  # key_by() takes >= 1 column
        opens = previous_end.is_null() | (start >= previous_end)
        both = both.with_columns(
            pl.when(opens)
            .then(start)
            .otherwise(None)
            .forward_fill()
            .cast(dtype)
            .alias(WINDOW_START)
        )
        merged = self.agg.combine(both.drop(END))
        ends = both.group_by(self.keys, maintain_order=True).agg(pl.col(END).max())
        merged = join_on_keys(merged, ends, self.keys, "left", maintain_order="left")
        new_keys = merged.select(self.keys)
        values = merged.select(pl.col(END).cast(dtype).alias(WINDOW_END), *state)
        self.store.put(new_keys, values)
        self.index = pl.concat([self.index, merged.select([*self.keys, END])], how="vertical")

    def fire(self, limit: int | None) -> None:
        # A gap later than the session's end + lateness: a row that is not late (its ts + gap
        # + lateness beyond its split watermark, which is at or above this watermark) then
        # lies at or after the end of every fired session, so it can never touch one, and
        # which sessions form does not depend on when the watermark came.
        due = None if limit is None else limit - self.window.lateness - self.window.gap
        for frame in self.take_due(due):
            self.emit_fired(frame.select([*self.keys, *self.window.state_schema.names()]))


def _watermark_of(payload: bytes, path: str, operator_id: str) -> int:
    """The watermark a window operator's checkpoint file holds, checked before use: a file
    read back from a checkpoint may be damaged or crafted."""
    try:
        value = json.loads(payload)["watermark"]
    except (ValueError, KeyError, TypeError, RecursionError):
        value = None
    if isinstance(value, bool) or not isinstance(value, int) or not -(2**63) <= value < 2**63:
        msg = (
            f"window {operator_id!r}: the watermark file {path!r} of the restored checkpoint holds no "
            f'watermark (expected {{"watermark": <int64>}}); the checkpoint is damaged: restore an '
            f"older one, or start over with restore=None"
        )
        raise StateError(msg)
    return value
