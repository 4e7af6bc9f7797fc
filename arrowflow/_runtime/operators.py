"""Runtime operators: the objects a worker builds from a physical plan and pushes batches through.

Every worker builds one instance of every operator in the plan and wires them as the plan's
edges say. Execution is push-based and synchronous inside a worker: a source reads a batch
and calls ``receive`` on its consumers, which compute and call ``receive`` on theirs, down
to an exchange (which hands rows to the worker that owns their key group) or a sink.

State kept here:

- ``ended`` input count per operator: an operator finishes (flushes, emits what it holds)
  when every input edge has ended; the end then travels on along every output edge, side
  outputs included. An exchange's downstream ends when every sending worker has ended.
- row and batch counts per operator, reported as the run's metrics.

Side outputs are ports other than ``main``: rows emitted to a port nobody consumes are
counted in ``unconsumed`` (never dropped silently).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from arrowflow._foundation.faults import fault_point
from arrowflow._foundation.keygroups import key_groups, owner_of
from arrowflow._foundation.watermarks import IDLE, NO_WATERMARK, SPLIT_WATERMARK, Watermark
from arrowflow._graph.aggregates import COMBINED_ROWS, IncrementalAgg
from arrowflow._plan import MAIN, OpSpec
from arrowflow._runtime.checkpoints import encode_spec
from arrowflow.errors import PlanError, SchemaError
from arrowflow.sinks import SinkWriter
from arrowflow.state import FOUND, KeyedStore, StateBackend, StateFile, StoreContext, StoreSpec


@dataclass
class RuntimeContext:
    """What a worker gives its operators: where snapshots go, and what a checkpoint collected."""

    storage: Any = None  # CheckpointStorage, or None when the run keeps no checkpoints
    emit_interval_s: float | None = None  # the run's commits that emit (Plan.emission_interval)
    restore_root: str | None = None
    restore_files: list[StateFile] = field(default_factory=list)
    state_files: dict[int, list[StateFile]] = field(default_factory=dict)
    staged: dict[int, dict[str, Any]] = field(default_factory=dict)
    store_specs: dict[str, Any] = field(default_factory=dict)  # name -> encoded StoreSpec
    # (source id, split id) of the batch a source is emitting, while it is being emitted
    current_split: tuple[str, str] | None = None

    def files_for(self, store: str) -> list[StateFile]:
        return [f for f in self.restore_files if f.store == store]

    def emission_due(self, every: float | None, last: float) -> bool:
        """Whether an operator (or sink) with its own ``emit_every`` of ``every`` seconds,
        which last emitted at ``last`` (``time.monotonic()``), emits at this commit.

        At a checkpoint always: what it holds back is in no snapshot, so a restore would
        lose it. Without checkpoints when ``every`` has passed, to within half the run's
        own interval (barriers do not arrive to the microsecond).
        """
        if every is None or self.storage is not None:
            return True
        slack = (self.emit_interval_s or 0.0) / 2
        return time.monotonic() - last >= every - slack


class Operator:
    """Base runtime operator: wiring, end of input, barrier alignment and metrics.

    Barriers (checkpoint *n*) arrive on each input in order with the data. Once an input has
    delivered barrier *n*, its later batches are held back until every input that has not
    ended delivered it too (alignment); then the operator takes its checkpoint
    (:meth:`snapshot`), forwards the barrier on every output, and replays what it held.

    Watermarks (:mod:`arrowflow._foundation.watermarks`) arrive the same way and are held back with the
    batches while an input aligns. The operator's watermark is the minimum over its inputs
    that have not ended and are not idle; when it advances, :meth:`on_watermark` runs (a
    window fires there) and passes it on.

    Batches from a per-split watermark may carry the internal column :data:`SPLIT_WATERMARK`
    (each row's split watermark, for the windows downstream); operators that do not pass it
    on (``keeps_split_watermark`` False: sinks, keyed operators, user functions) never see it.
    """

    #: Passes :data:`SPLIT_WATERMARK` on to a window downstream (else it is dropped on receipt).
    keeps_split_watermark = False

    def __init__(self, spec: OpSpec) -> None:
        self.spec = spec
        self.id = spec.id
        self.outputs: dict[str, list[tuple[Operator, int]]] = {}
        self.inputs_total = len(spec.inputs)
        self.ended: set[int] = set()
        self.finished = False
        self.rows_in = 0
        self.rows_out = 0
        self.batches_in = 0
        self.unconsumed: dict[str, int] = {}
        self.context = RuntimeContext()
        self.aligning: int | None = None
        self.aligned: set[int] = set()
        self.held: list[tuple[Any, int]] = []  # batches and Watermarks, in arrival order
        self.checkpointed = 0
        self.input_watermarks: dict[int, int] = {}  # input -> the highest watermark it sent
        self.idle_inputs: set[int] = set()
        self.unaligned: set[int] = set()  # back from idle, still behind self.watermark
        self.watermark = NO_WATERMARK
        self.idle = False

    def connect(self, port: str, consumer: Operator, index: int) -> None:
        self.outputs.setdefault(port, []).append((consumer, index))

    def open(self) -> None:
        """Called once in the worker before the first batch (after a restore: state loaded here)."""

    def tick(self) -> None:
        """Act on the passing of time without data (a watermark going idle after a timeout).

        Called by the worker loop in the worker process, once per turn while its sources are
        not paused for a checkpoint: about every millisecond when idle, after each source
        batch when busy. The worker skips operators that keep this default (which does
        nothing), so overriding it costs a call per turn. Must never block or sleep, and
        must be cheap when there is nothing to do (compare a clock, return); it may emit
        rows and forward watermarks as ``receive`` does.
        """

    def receive(self, batch: pl.DataFrame, index: int) -> None:
        if not self.keeps_split_watermark and SPLIT_WATERMARK in batch.columns:
            batch = batch.drop(SPLIT_WATERMARK)
        if self.aligning is not None and index in self.aligned:
            self.held.append((batch, index))
            return
        self.rows_in += batch.height
        self.batches_in += 1
        self.process(batch, index)

    def process(self, batch: pl.DataFrame, index: int) -> None:
        raise NotImplementedError

    def emit(self, batch: pl.DataFrame, port: str = MAIN) -> None:
        if batch.height == 0:
            return
        consumers = self.outputs.get(port)
        if port == MAIN:
            self.rows_out += batch.height
        if not consumers:
            if port != MAIN:
                self.unconsumed[port] = self.unconsumed.get(port, 0) + batch.height
            return
        for consumer, index in consumers:
            consumer.receive(batch, index)

    # ------------------------------------------------------------------ checkpoints
    def receive_barrier(self, checkpoint_id: int, index: int) -> None:
        if checkpoint_id <= self.checkpointed:
            return
        self.aligning = checkpoint_id
        self.aligned.add(index)
        self._maybe_aligned()

    def _maybe_aligned(self) -> None:
        if self.aligning is None or len(self.aligned | self.ended) < self.inputs_total:
            return
        checkpoint_id = self.aligning
        self.aligning, self.aligned = None, set()
        self.take_checkpoint(checkpoint_id)
        self.forward_barrier(checkpoint_id)
        held, self.held = self.held, []
        for item, index in held:
            if isinstance(item, Watermark):  # the base path: an exchange already sent it on
                Operator.receive_watermark(self, item.value, index)
            else:
                self.replay(item, index)

    def replay(self, batch: pl.DataFrame, index: int) -> None:
        self.receive(batch, index)

    def take_checkpoint(self, checkpoint_id: int) -> None:
        self.checkpointed = checkpoint_id
        self.snapshot(checkpoint_id)

    def snapshot(self, checkpoint_id: int) -> None:
        """Checkpoint hook: emit what must precede the barrier, write state, stage output."""

    def forward_barrier(self, checkpoint_id: int) -> None:
        for consumers in self.outputs.values():
            for consumer, index in consumers:
                consumer.receive_barrier(checkpoint_id, index)

    # ------------------------------------------------------------------ watermarks
    def receive_watermark(self, value: int, index: int) -> None:
        """Watermark ``value`` (or :data:`IDLE`) from input ``index``, in order with its batches."""
        if self.aligning is not None and index in self.aligned:
            self.held.append((Watermark(value), index))
            return
        if value == IDLE:
            self.idle_inputs.add(index)
            self.unaligned.add(index)
        else:
            self.idle_inputs.discard(index)
            self.input_watermarks[index] = max(
                value, self.input_watermarks.get(index, NO_WATERMARK)
            )
            if index in self.unaligned and self.input_watermarks[index] >= self.watermark:
                self.unaligned.discard(index)
        self.combine_watermarks()

    def combine_watermarks(self) -> None:
        """The operator's watermark from its inputs', as Flink's watermark valve does it.

        Each input keeps its last watermark apart from whether it is idle. The watermark is
        the lowest over inputs that are active and *aligned*; an input that comes back from
        idle behind the operator's watermark is aligned again once it catches up (its rows
        meanwhile may be late; they cannot pull the watermark back). When every input is
        idle, the watermark first advances to the highest any of them reached: the windows
        that input's rows closed fire even though the input went idle right after.
        """
        live = [i for i in range(self.inputs_total) if i not in self.ended]
        if not live:
            return  # every input ended: finish() acts as the watermark +infinity
        active = [i for i in live if i not in self.idle_inputs]
        if not active:
            reached = max(self.input_watermarks.get(i, NO_WATERMARK) for i in live)
            if reached > self.watermark:
                self.watermark = reached
                self.on_watermark(reached)
            if not self.idle:
                self.idle = True
                self.forward_watermark(IDLE)
            return
        if self.idle:
            self.idle = False
            if self.watermark != NO_WATERMARK:
                self.forward_watermark(self.watermark)  # active again, at the watermark it had
        aligned = [
            self.input_watermarks.get(i, NO_WATERMARK) for i in active if i not in self.unaligned
        ]
        if not aligned:
            return
        value = min(aligned)
        if value > self.watermark:
            self.watermark = value
            self.on_watermark(value)

    def on_watermark(self, value: int) -> None:
        """The watermark advanced to ``value``: act on it (a window fires), then pass it on."""
        self.forward_watermark(value)

    def forward_watermark(self, value: int) -> None:
        for consumers in self.outputs.values():
            for consumer, index in consumers:
                consumer.receive_watermark(value, index)

    # ------------------------------------------------------------------ end of input
    def end_input(self, index: int) -> None:
        self.ended.add(index)
        self._maybe_aligned()
        if len(self.ended) < self.inputs_total:
            self.combine_watermarks()  # an ended input no longer holds event time back
        if len(self.ended) >= self.inputs_total and not self.finished:
            self.finished = True
            self.finish()
            self.end_outputs()

    def end_outputs(self) -> None:
        for consumers in self.outputs.values():
            for consumer, index in consumers:
                consumer.end_input(index)

    def finish(self) -> None:
        """All inputs ended: flush what the operator holds (it may still ``emit``)."""

    def close(self) -> None:
        """Release resources; called once, also after an error."""

    def metrics(self) -> dict[str, Any]:
        return {
            "operator": self.id,
            "kind": self.spec.kind,
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "batches_in": self.batches_in,
            "unconsumed": sum(self.unconsumed.values()),
        }


def _lazy_steps(lazy: pl.LazyFrame, steps: list[dict[str, Any]]) -> pl.LazyFrame:
    """The expression steps (filter, select, with_columns) applied to ``lazy``, in order."""
    for step in steps:
        if step["kind"] == "filter":
            lazy = lazy.filter(*step["predicates"])
        elif step["kind"] == "select":
            lazy = lazy.select(step["exprs"])
        else:
            lazy = lazy.with_columns(step["exprs"])
    return lazy


def _compile_steps(steps: list[dict[str, Any]]) -> Callable[[pl.DataFrame], pl.DataFrame]:
    """Fuse consecutive expression steps into one lazy query per batch."""
    stages: list[Callable[[pl.DataFrame], pl.DataFrame]] = []
    pending: list[dict[str, Any]] = []

    def flush() -> None:
        if not pending:
            return
        group = list(pending)
        pending.clear()

        def run_lazy(frame: pl.DataFrame, _group: list[dict[str, Any]] = group) -> pl.DataFrame:
            return _lazy_steps(frame.lazy(), _group).collect()

        stages.append(run_lazy)

    for step in steps:
        if step["kind"] == "map_batches":
            flush()
            stages.append(_checked_function(step))
        else:
            pending.append(step)
    flush()

    def run(frame: pl.DataFrame) -> pl.DataFrame:
        for stage in stages:
            frame = stage(frame)
        return frame

    return run


def _checked_function(step: dict[str, Any]) -> Callable[[pl.DataFrame], pl.DataFrame]:
    fn, op_id, schema = step["fn"], step["id"], step["schema"]

    def call(frame: pl.DataFrame) -> pl.DataFrame:
        out = fn(frame)
        if not isinstance(out, pl.DataFrame):
            msg = f"operator {op_id!r}: the map_batches function returned {type(out).__name__}, expected a polars DataFrame"
            raise PlanError(msg)
        if out.schema != schema:
            names_match = sorted(out.columns) == sorted(schema.names())
            # Only all-null columns may differ in type (polars infers them as Null).
            types_match = names_match and all(
                out.schema[name] == dtype or out.schema[name] == pl.Null
                for name, dtype in schema.items()
            )
            if not types_match:
                differences = [
                    f"{name}: expected {schema.get(name, 'no such column')}, got {out.schema.get(name, 'missing')}"
                    for name in dict.fromkeys([*schema.names(), *out.columns])
                    if schema.get(name) != out.schema.get(name)
                ]
                msg = (
                    f"operator {op_id!r}: the map_batches function returned a batch that does not match its "
                    f"output schema ({'; '.join(differences)}); return the same columns and types for every "
                    f"batch, or declare schema= on map_batches"
                )
                raise SchemaError(msg)
            out = out.select([pl.col(name).cast(dtype) for name, dtype in schema.items()])
        return out

    return call


class ChainOp(Operator):
    """Fused stateless operators.

    Filters and ``with_columns`` keep each row's :data:`SPLIT_WATERMARK` with it. A ``select``
    that keeps the row count gets it back row by row; after a ``map_batches`` (which may
    reorder rows) or a ``select`` that changes the count, every row gets the batch's lowest
    (the split watermark of its first row: conservative, never later than a row's own).
    """

    keeps_split_watermark = True

    def __init__(self, spec: OpSpec) -> None:
        super().__init__(spec)
        steps = spec.params["steps"]
        self.run = _compile_steps(steps)
        self.keeps_rows = all(step["kind"] in ("filter", "with_columns") for step in steps)
        self.stepwise = [(step["kind"], _compile_steps([step])) for step in steps]
        self.steps = steps

    def lazy(self) -> Callable[[pl.LazyFrame], pl.LazyFrame] | None:
        """The chain as one lazy query (row-wise: the planner refuses expressions that depend
        on other rows of a batch), or None when a step runs a Python function on batches."""
        if any(step["kind"] == "map_batches" for step in self.steps):
            return None
        return lambda lazy: _lazy_steps(lazy, self.steps)

    def process(self, batch: pl.DataFrame, index: int) -> None:
        if self.keeps_rows or SPLIT_WATERMARK not in batch.columns:
            self.emit(self.run(batch))
        else:
            self.emit(self._run_with_split_watermark(batch))

    def _run_with_split_watermark(self, frame: pl.DataFrame) -> pl.DataFrame:
        for kind, run in self.stepwise:
            if kind in ("filter", "with_columns"):
                frame = run(frame)
                continue
            marks = frame.get_column(SPLIT_WATERMARK)
            out = run(frame.drop(SPLIT_WATERMARK))
            if kind == "select" and out.height == frame.height:
                frame = out.with_columns(marks)
            else:
                frame = out.with_columns(pl.lit(marks.min(), dtype=pl.Int64).alias(SPLIT_WATERMARK))
        return frame


class UnionOp(Operator):
    keeps_split_watermark = True

    def process(self, batch: pl.DataFrame, index: int) -> None:
        self.emit(batch)


OWNER = "__owner"


class ExchangeOp(Operator):
    """Hash exchange: rows go to the worker owning their key group.

    Its inputs, for alignment and end of input, are the *sending workers*: itself (its local
    upstream) and, in a pool, every other worker through ``transport``. A sender that has
    delivered barrier *n* is held back — the transport stops reading its ring, and our own
    local share is held here — until every sender delivered it or ended.
    """

    def __init__(self, spec: OpSpec, worker: int, parallelism: int) -> None:
        super().__init__(spec)
        self.keys = spec.params["keys"]
        self.max_parallelism = spec.params["max_parallelism"]
        self.worker = worker
        self.parallelism = parallelism
        self.inputs_total = parallelism
        self.transport: Any = None
        # A combiner (the keyed aggregation's IncrementalAgg) pre-aggregates each batch before
        # it is hashed: one row per key goes over the exchange instead of every input row.
        self.combiner: Any = spec.params.get("combiner")

    def receive(self, batch: pl.DataFrame, index: int) -> None:
        if not self.keeps_split_watermark and SPLIT_WATERMARK in batch.columns:
            batch = batch.drop(SPLIT_WATERMARK)
        self.rows_in += batch.height
        self.batches_in += 1
        if self.combiner is not None:
            if not batch.height:
                return
            batch = self.combiner.counted_partial(batch)
        self._route(batch)

    def receive_combined(self, partial: pl.DataFrame, rows: int) -> None:
        """The combiner's partial of ``rows`` input rows, computed upstream (a source that ran
        the chain and the partial aggregate in its scan, :meth:`SourceOp.fuse`)."""
        self.rows_in += rows
        self.batches_in += 1
        self._route(partial)

    def _route(self, batch: pl.DataFrame) -> None:
        if self.parallelism == 1:
            self._local(batch)
            return
        owners = owner_of(
            key_groups(batch.select(self.keys), self.max_parallelism),
            self.parallelism,
            self.max_parallelism,
        )
        parts = batch.with_columns(pl.Series(OWNER, owners, dtype=pl.Int32)).partition_by(
            OWNER, as_dict=True, include_key=False, maintain_order=True
        )
        for (target,), part in parts.items():
            if target == self.worker:
                self._local(part)
            else:
                self.rows_out += part.height
                self.transport.send(target, self.id, part)

    def _local(self, part: pl.DataFrame) -> None:
        if self.aligning is not None and self.worker in self.aligned:
            self.held.append((part, self.worker))
        else:
            self.emit(part)

    def replay(self, batch: pl.DataFrame, index: int) -> None:
        self.emit(batch)

    def deliver(self, batch: pl.DataFrame, sender: int) -> None:
        """A batch another worker routed here (never after its barrier: its ring is paused)."""
        self.emit(batch)
        self.rows_out -= batch.height  # counted once, by the worker that sent it

    def receive_barrier(self, checkpoint_id: int, index: int) -> None:
        # From our local upstream: pass it to every other worker, then count ourselves.
        if self.transport is not None:
            for target in range(self.parallelism):
                if target != self.worker:
                    self.transport.send_barrier(target, self.id, checkpoint_id)
        super().receive_barrier(checkpoint_id, self.worker)

    def receive_watermark(self, value: int, index: int) -> None:
        # From our local upstream: pass it to every other worker, then count ourselves.
        if self.transport is not None:
            for target in range(self.parallelism):
                if target != self.worker:
                    self.transport.send_watermark(target, self.id, value)
        super().receive_watermark(value, self.worker)

    def sender_watermark(self, sender: int, value: int) -> None:
        super().receive_watermark(value, sender)

    def sender_barrier(self, sender: int, checkpoint_id: int) -> None:
        if self.transport is not None:
            self.transport.pause(sender)
        super().receive_barrier(checkpoint_id, sender)

    def forward_barrier(self, checkpoint_id: int) -> None:
        super().forward_barrier(checkpoint_id)
        if self.transport is not None:
            self.transport.resume_all()

    def end_input(self, index: int) -> None:
        # Our own upstream ended: tell every other worker, then count ourselves as a sender.
        if self.transport is not None:
            for target in range(self.parallelism):
                if target != self.worker:
                    self.transport.send_end(target, self.id)
        self.sender_ended(self.worker)

    def sender_ended(self, sender: int) -> None:
        super().end_input(sender)


#: Partial-aggregate rows an AggOp gathers before merging them into its store.
PARTIAL_ROWS = 1_000_000
#: Keys an AggOp reads back from its store per emitted batch.
EMIT_ROWS = 1_000_000
#: Updated keys whose merged values an AggOp keeps for its next emission (beyond that it
#: reads them back from the store, so a store larger than memory stays out of the heap).
EMIT_CACHE_ROWS = 2_000_000
#: The list of keys updated since the last emission is deduplicated once it holds more than
#: 4 x max(COMPACT_DIRTY_ROWS, keys in the store) rows: a key merged again and again between
#: emissions (a long emit_every) keeps its memory bounded by the store's key count.
COMPACT_DIRTY_ROWS = 1_000_000


class AggOp(Operator):
    """Keyed running aggregation over a state store."""

    def __init__(
        self, spec: OpSpec, backend: StateBackend, key_range: range, context: StoreContext
    ) -> None:
        super().__init__(spec)
        self.agg: IncrementalAgg = spec.params["agg"]
        self.backend = backend
        self.key_range = key_range
        self.store_context = context
        self.store: KeyedStore | None = None
        # Keys updated since the last emission; while ``dirty_values`` is True each frame also
        # holds the keys' merged state (what was put), so emitting needs no store read.
        self.dirty: list[pl.DataFrame] = []
        self.dirty_rows = 0
        self.dirty_values = True
        # True from open until the first emission when the store opened empty (no restored
        # state): every key in the store is then one updated since the last emission, so once
        # the updates outgrow the cache an emission scans the store instead of tracking keys
        # (a 10M-key batch run kept a 10M-row key list and deduplicated it at the end).
        self.all_keys_dirty = False
        self.emit_by_scan = False
        self.partials: list[pl.DataFrame] = []
        self.partial_rows = 0
        self.emit_every_s: float | None = spec.params.get("emit_every_s")
        self.last_emission = time.monotonic()
        # Its exchange sends partial aggregates (ExchangeOp.combiner), not input rows.
        self.combined: bool = bool(spec.params.get("combined"))

    def store_spec(self) -> StoreSpec:
        return StoreSpec(
            self.id,
            self.agg.key_schema,
            self.agg.state_schema,
            max_parallelism=self.spec.params["max_parallelism"],
        )

    def open(self) -> None:
        self.store = self.backend.open_store(self.store_spec(), self.key_range, self.store_context)
        restore_stores(self.context, {"": self.store})
        self.all_keys_dirty = self.store.count() == 0

    def process(self, batch: pl.DataFrame, index: int) -> None:
        # Pre-aggregate each batch now (the batch itself may not be kept: behind an exchange it
        # is a view of a shared-memory ring), and merge the partials into the store in large
        # groups: one store read and write per ~PARTIAL_ROWS keys instead of one per batch.
        if self.combined:  # partials from the exchange: count the input rows they stand for
            self.rows_in += int(batch.get_column(COMBINED_ROWS).sum()) - batch.height
            partial = batch.drop(COMBINED_ROWS)
        else:
            partial = self.agg.partial(batch)
        self.partials.append(partial)
        self.partial_rows += partial.height
        if self.partial_rows >= PARTIAL_ROWS:
            self.merge_partials()

    def merge_partials(self) -> None:
        assert self.store is not None
        if not self.partials:
            return
        partials, self.partials, self.partial_rows = self.partials, [], 0
        partial = self.agg.combine(pl.concat(partials)) if len(partials) > 1 else partials[0]
        keys = partial.select(self.agg.keys)
        merged = self.agg.merge(self.store.get(keys), partial).select(self.agg.state_schema.names())
        self.store.put(keys, merged)
        if self.emit_by_scan:
            return
        self.dirty_rows += keys.height
        if self.dirty_values and self.dirty_rows > EMIT_CACHE_ROWS and self.all_keys_dirty:
            self.dirty, self.dirty_rows, self.emit_by_scan = [], 0, True
            return
        if self.dirty_values and self.dirty_rows > EMIT_CACHE_ROWS:
            self.dirty = [frame.select(self.agg.keys) for frame in self.dirty]
            self.dirty_values = False
        self.dirty.append(
            pl.concat([keys, merged], how="horizontal") if self.dirty_values else keys
        )
        if self.dirty_rows > 4 * max(COMPACT_DIRTY_ROWS, self.store.count()):
            unique = pl.concat(self.dirty).unique(self.agg.keys, keep="last")
            self.dirty, self.dirty_rows = [unique], unique.height

    def emit_updates(self) -> None:
        """Emit the current value of every key updated since the last emission: the values
        the merges put, kept while they are few, else read back from the store."""
        assert self.store is not None
        self.merge_partials()
        self.all_keys_dirty = False
        if self.emit_by_scan:
            self.emit_by_scan = False
            self._emit_store()
            return
        if not self.dirty:
            return
        dirty = self.dirty[0]
        if len(self.dirty) > 1:  # a key merged twice: its last merge holds its current value
            dirty = pl.concat(self.dirty).unique(self.agg.keys, keep="last", maintain_order=True)
        cached = self.dirty_values
        self.dirty, self.dirty_rows, self.dirty_values = [], 0, True
        # In slices, so a store larger than memory (lmdb, sql) is never read into the heap whole.
        for offset in range(0, dirty.height, EMIT_ROWS):
            chunk = dirty.slice(offset, EMIT_ROWS)
            if not cached:
                chunk = pl.concat([chunk, self.store.get(chunk).drop(FOUND)], how="horizontal")
            self.emit(self.agg.finalize(chunk))

    def _emit_store(self) -> None:
        """Emit every key of the store, read by its scan in slices of about ``EMIT_ROWS``."""
        assert self.store is not None
        pending: list[pl.DataFrame] = []
        rows = 0
        for frame in self.store.scan():
            for offset in range(0, frame.height, EMIT_ROWS):
                part = frame.slice(offset, EMIT_ROWS)
                pending.append(part)
                rows += part.height
                if rows >= EMIT_ROWS:
                    self.emit(self.agg.finalize(pl.concat(pending)))
                    pending, rows = [], 0
        if pending:
            self.emit(self.agg.finalize(pl.concat(pending)))

    def finish(self) -> None:
        self.emit_updates()

    def snapshot(self, checkpoint_id: int) -> None:
        # Emission semantics: every key updated since the last emission is emitted before the
        # barrier, so the sink stages it in the same checkpoint as the state that produced it.
        # Without checkpoints an emit_every of its own may hold the updates for a later commit.
        if self.context.emission_due(self.emit_every_s, self.last_emission):
            self.emit_updates()
            self.last_emission = time.monotonic()
        snapshot_stores(self.context, {"": self.store}, checkpoint_id)

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None


class SinkOp(Operator):
    def __init__(self, spec: OpSpec, worker: int, parallelism: int) -> None:
        super().__init__(spec)
        self.writer: SinkWriter = spec.params["sink"].open_writer(worker, parallelism, spec.id)
        self.emit_every_s: float | None = spec.params["sink"].emit_every_s
        self.last_emission = time.monotonic()

    def process(self, batch: pl.DataFrame, index: int) -> None:
        self.writer.write(batch)

    def snapshot(self, checkpoint_id: int) -> None:
        # The end of input (the final commit) takes everything; an emit_every of the sink's
        # own may keep its rows written but unstaged until a later commit.
        if not self.finished and not self.context.emission_due(
            self.emit_every_s, self.last_emission
        ):
            return
        self.last_emission = time.monotonic()
        staged = self.writer.prepare_commit(checkpoint_id)
        self.context.staged.setdefault(checkpoint_id, {})[self.id] = staged

    def close(self) -> None:
        self.writer.close()


def snapshot_stores(
    context: RuntimeContext, stores: dict[str, KeyedStore | None], checkpoint_id: int
) -> None:
    """Write every store's snapshot to the checkpoint storage (no-op without storage)."""
    if context.storage is None:
        return
    files = context.state_files.setdefault(checkpoint_id, [])
    for store in stores.values():
        if store is not None:
            if store.spec.name not in context.store_specs:
                context.store_specs[store.spec.name] = encode_spec(store.spec)
            files.extend(store.snapshot(context.storage.fs, context.storage.root, checkpoint_id))
            fault_point("during_snapshot")


def restore_stores(context: RuntimeContext, stores: dict[str, KeyedStore | None]) -> None:
    """Load every store from the restored checkpoint's files (no-op on a fresh run)."""
    if context.restore_root is None or context.storage is None:
        return
    for store in stores.values():
        if store is not None:
            store.restore(
                context.storage.fs, context.restore_root, context.files_for(store.spec.name)
            )
