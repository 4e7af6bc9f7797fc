"""A worker: one instance of every operator of the plan, and the loop that drives them.

The same class runs inside the calling process (the in-process executor) and inside each
pool process. It keeps no state of its own beyond its operators; it talks to the outside
through two small objects:

- ``link`` (to the coordinator, :class:`arrowflow.runners.ControlLink`): ``next_split(source_id)`` hands out the next split (with
  the position to resume it from and what a per-split watermark needs: its event-time bound,
  the source's floor, its restored running maxima) or ``None`` when the source has no more;
  ``split_done(source_id, split_id)`` reports one finished; ``rows(n)`` reports progress;
  ``poll_command(timeout)`` returns the coordinator's next command (``("checkpoint", n)``
  or ``("exit",)``); ``ack(n, payload)`` and ``finished()`` answer it; ``metrics(rows)``
  sends the operators' counters (about twice a second, for live jobs) and
  ``publish(sink_id, epoch, payload, produced)`` the rows a live-results tap saw (:mod:`arrowflow._api.live`).
- ``transport`` (to other workers, :class:`arrowflow.runners.Transport`; pool only): ``send``/``send_end`` for exchanges, and
  ``poll(worker)`` to deliver what arrived. ``None`` in-process.

The loop alternates between delivering arrived batches and reading one batch per source,
so a worker blocked on a full ring still drains its inputs (no deadlock between two workers
sending to each other).

Checkpoint *n* (docs/checkpoints.md): on the command, the worker records each source's position,
sends barrier *n* down from every source, and pauses its sources until every one of its
operators has taken checkpoint *n* (operators that already finished take it at once); then
it acks with the positions, the state files written and the sinks' staged output, and
resumes. When every operator has finished, the worker says so and keeps answering
checkpoints (the final one commits the output) until the coordinator says ``exit``.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from arrowflow._foundation.deps import import_object
from arrowflow._foundation.faults import fault_point
from arrowflow._foundation.keygroups import DEFAULT_MAX_PARALLELISM, key_group_range
from arrowflow._foundation.watermarks import IDLE, NO_WATERMARK
from arrowflow._graph.aggregates import COMBINED_ROWS
from arrowflow._plan import MAIN, OpSpec, Plan, split_watermark_inputs
from arrowflow._runtime.operators import ChainOp, ExchangeOp, Operator, RuntimeContext, SinkOp
from arrowflow._runtime.splits import WAIT
from arrowflow.runners import ControlLink, Transport
from arrowflow.sinks import SinkWriter
from arrowflow.sources import SourceBatch, Split, SplitReader
from arrowflow.state import StateBackend, StoreContext

#: Seconds between two reports of the operators' counters to the coordinator.
METRICS_INTERVAL_S = 0.5

#: Rows per source batch in a pool when the run does not say: small enough that the other
#: workers, aligning a checkpoint barrier, wait little for the batch in flight here. (In one
#: process a whole split per batch is faster: polars parallelises inside the batch.)
DEFAULT_BATCH_ROWS = 262_144


class SourceOp(Operator):
    """Reads the splits the coordinator hands this worker, one batch per step."""

    def __init__(self, spec: Any, link: ControlLink, batch_size: int | None) -> None:
        super().__init__(spec)
        self.source = spec.params["source"]
        self.link = link
        self.batch_size = batch_size
        self.reader: SplitReader | None = None
        self.iterator: Any = None
        self.split: Split | None = None
        self.positions: dict[str, Any] = {}
        self.exhausted = False
        self.malformed_rows = 0
        self.retry_at = 0.0
        # Watermark operators that keep per-split watermarks over this source's batches.
        self.clocks: list[Any] = []
        # Set by fuse(): the chain and exchange after this source, and their query.
        self.fused: (
            tuple[ChainOp | None, ExchangeOp, Callable[[pl.LazyFrame], pl.LazyFrame]] | None
        ) = None
        self.whole_splits = False

    def fuse(self, chain: ChainOp | None, exchange: ExchangeOp, *, whole_splits: bool) -> None:
        """Run ``chain`` and the combiner of ``exchange`` (a keyed aggregation's partial) as one
        query per batch, inside the reader's scan where it can (:meth:`SplitReader.push_down`):
        polars then reads only what the filters keep, and the chain's rows never materialize.
        ``whole_splits``: the run left the batch size to the engine, so a reader that runs
        the query reads each split as one batch (its result is one row per key). The chain's
        and the exchange's counters stay what they would count unfused."""
        steps = chain.lazy() if chain is not None else (lambda rows: rows)
        partial = getattr(exchange.combiner, "counted_partial_query", None)
        if steps is None or partial is None:
            return
        self.fused = (chain, exchange, lambda rows: partial(steps(rows)))
        self.whole_splits = whole_splits

    def _open_reader(self, split: Split, position: Any) -> SplitReader:
        if self.fused is None:
            return self.source.open_reader(split, position, batch_size=self.batch_size)
        query = self.fused[2]
        if self.whole_splits and self.batch_size is not None:
            reader = self.source.open_reader(split, position, batch_size=None)
            if reader.push_down(query):
                return reader
            reader.close()  # it cannot run the query itself: batches of the usual size then
        reader = self.source.open_reader(split, position, batch_size=self.batch_size)
        reader.push_down(query)
        return reader

    def step(self) -> bool:
        """Read and push one batch. Returns False when there was nothing to do."""
        if self.exhausted:
            return False
        if self.iterator is None:
            if time.monotonic() < self.retry_at:
                return False
            handed = self.link.next_split(self.id)
            if handed == WAIT:  # an unbounded source with nothing new: ask again later
                self.retry_at = time.monotonic() + 0.05
                for clock in self.clocks:
                    clock.source_waiting(self.id)
                if not self.idle:
                    # No split to read (as in Flink, a reader without splits is idle): event
                    # time downstream must not wait for this worker's watermark.
                    self.idle = True
                    self.forward_watermark(IDLE)
                return False
            if handed is None:
                for clock in self.clocks:
                    clock.source_drained(self.id)
                self.exhausted = True
                self.finished = True
                self.end_outputs()
                return True
            assert not isinstance(handed, str)  # WAIT is the one string
            self.split, position, event_time = handed
            for clock in self.clocks:
                clock.split_opened(self.id, self.split.split_id, event_time)
            if self.idle:  # a split to read again: no longer idle (resets the operators between)
                self.idle = False
                self.forward_watermark(NO_WATERMARK)
            # Until its first batch, the split is at the position it was handed out with (a
            # restored offset): a checkpoint taken now must keep that offset, not lose it.
            self.positions[self.split.split_id] = position
            self.reader = self._open_reader(self.split, position)
            self.iterator = iter(self.reader.batches())
        try:
            item = next(self.iterator)
        except StopIteration:
            self._close_reader()
            assert self.split is not None
            for clock in self.clocks:
                clock.split_closed(self.id, self.split.split_id)
            self.link.split_done(self.id, self.split.split_id)
            self.positions.pop(self.split.split_id, None)
            self.split = None
            return True
        assert self.split is not None
        self.positions[self.split.split_id] = item.position
        if item.malformed is not None and item.malformed.height:
            self.malformed_rows += item.malformed.height
            # The reader knows its format, not its operator id: name the source here.
            self.emit(
                item.malformed.with_columns(source=pl.lit(self.id, dtype=pl.String)), "malformed"
            )
        if item.data is None and item.malformed is None:
            return False  # a tailed split with no complete line yet
        if item.data is not None and self.fused is not None:
            self._emit_fused(item)
            return True
        if item.data is not None:
            self.rows_in += item.data.height
            self.batches_in += 1
            # Operators downstream run synchronously up to the next exchange: a per-split
            # watermark learns here which split the batch belongs to.
            self.context.current_split = (self.id, self.split.split_id)
            try:
                self.emit(item.data)
            finally:
                self.context.current_split = None
            return True
        return item.malformed is not None

    def _emit_fused(self, item: SourceBatch) -> None:
        """One batch through the fused chain and combiner, counted as the three operators
        would count it unfused; the exchange routes the partial (or holds it while aligning)."""
        assert self.fused is not None and item.data is not None
        chain, exchange, query = self.fused
        if item.rows_read is not None:  # the reader ran the query
            rows, partial = item.rows_read, item.data
        else:
            rows, partial = item.data.height, query(item.data.lazy()).collect()
        kept = int(partial.get_column(COMBINED_ROWS).sum()) if partial.height else 0
        self.rows_in += rows
        self.batches_in += 1
        if not rows:
            return
        self.rows_out += rows
        if chain is not None:
            chain.rows_in += rows
            chain.batches_in += 1
            chain.rows_out += kept
        if kept:
            exchange.receive_combined(partial, kept)

    def current_positions(self) -> dict[str, Any]:
        """The split in progress and the position after its last emitted batch."""
        if self.split is None:
            return {}
        return {self.split.split_id: self.positions.get(self.split.split_id)}

    def _close_reader(self) -> None:
        if self.reader is not None:
            self.reader.close()
        self.reader = None
        self.iterator = None

    def close(self) -> None:
        self._close_reader()

    def metrics(self) -> dict[str, Any]:
        data = super().metrics()
        data["malformed"] = self.malformed_rows
        return data


@dataclass
class WorkerReport:
    worker: int
    metrics: list[dict[str, Any]] = field(default_factory=list)


def build_operator(spec: OpSpec, resources: dict[str, Any]) -> Operator:
    """The physical operator of ``spec``, in this worker. Called once per operator when the
    worker starts (no table of kinds is needed: a pool worker never saw it).

    Parameters
    ----------
    spec
        The operator's spec. ``spec.operator`` is the ``"module:object"`` its kind names (an
        :class:`Operator` subclass, or a function returning one); it is imported, then called
        with the spec and, by name, each further parameter it declares.
    resources
        What the worker offers those parameters: ``link`` (the coordinator link),
        ``batch_size`` (rows per source batch, None: the reader's choice), ``worker`` (this
        worker's index), ``parallelism`` (the number of workers), ``backend`` (the state
        backend), ``key_range`` (the key groups this worker owns) and ``context`` (the
        :class:`arrowflow.state.StoreContext` of keyed stores).
    """
    module_name, _, attr = spec.operator.partition(":")
    if not module_name or not attr:
        msg = f"internal: no runtime operator for kind {spec.kind!r} ({spec.id!r})"
        raise NotImplementedError(msg)
    factory = import_object(spec.operator)
    wanted = list(inspect.signature(factory).parameters.values())[1:]
    unknown = [p.name for p in wanted if p.name not in resources and p.default is p.empty]
    if unknown:
        msg = (
            f"internal: the operator {spec.operator} of {spec.id!r} asks for {unknown}; a worker "
            f"offers {sorted(resources)}"
        )
        raise NotImplementedError(msg)
    return factory(spec, **{p.name: resources[p.name] for p in wanted if p.name in resources})


class Worker:
    def __init__(
        self,
        plan: Plan,
        index: int,
        parallelism: int,
        link: ControlLink,
        backend: StateBackend,
        *,
        batch_size: int | None,
        local_dir: str,
        max_parallelism: int = DEFAULT_MAX_PARALLELISM,
        transport: Transport | None = None,
        runtime_context: RuntimeContext | None = None,
    ) -> None:
        self.plan = plan
        self.link = link
        self.pending: int | None = None
        self.positions: dict[str, dict[str, Any]] = {}
        self.split_tops: dict[str, dict[str, dict[str, dict[str, int]]]] = {}
        self.rows_unreported = 0
        self.last_rows_report = time.monotonic()
        self.last_metrics_report = 0.0
        self.index = index
        self.parallelism = parallelism
        self.transport = transport
        self.ops: dict[str, Operator] = {}
        self.sources: list[SourceOp] = []
        key_range = key_group_range(index, parallelism, max_parallelism)
        context = StoreContext(local_dir=local_dir, worker=index, parallelism=parallelism)
        # What an operator's constructor may ask for, by parameter name (see build_operator).
        resources = {
            "link": link,
            "batch_size": batch_size or (DEFAULT_BATCH_ROWS if parallelism > 1 else None),
            "worker": index,
            "parallelism": parallelism,
            "backend": backend,
            "key_range": key_range,
            "context": context,
        }
        for spec in plan.ops:
            op = build_operator(spec, resources)
            if isinstance(op, SourceOp):
                self.sources.append(op)
            if isinstance(op, ExchangeOp):
                op.transport = transport
            self.ops[spec.id] = op
        for spec in plan.ops:
            for index_in, edge in enumerate(spec.inputs):
                self.ops[edge.op].connect(edge.port, self.ops[spec.id], index_in)
        self.context = runtime_context or RuntimeContext()
        for op in self.ops.values():
            op.context = self.context
        self.clocks = self._wire_split_watermarks(plan)
        self._fuse_scans(whole_splits=batch_size is None)
        # Operators that act on the passing of time without data (a watermark that goes idle):
        # only those that override the hook are called every turn.
        self.timed = [op for op in self.ops.values() if type(op).tick is not Operator.tick]
        # Every sink writer gets a publisher (live-results taps send rows through it) and is
        # flushed with the metrics; those that may end the run early (``collect(limit=n)``)
        # are asked every turn.
        self.writers: list[SinkWriter] = []
        for op in self.ops.values():
            if isinstance(op, SinkOp):
                op.writer.bind(_Publisher(link, op.id))
                self.writers.append(op.writer)
        self.stoppers = [
            writer for writer in self.writers if type(writer).satisfied is not SinkWriter.satisfied
        ]

    def _wire_split_watermarks(self, plan: Plan) -> list[Any]:
        """Tell each watermark operator that sees its sources directly which they are (it then
        keeps per-split watermarks, :mod:`arrowflow._foundation.watermarks`), and each source its clocks."""
        consumers: dict[str, list[str]] = {}
        for spec in plan.ops:
            for edge in spec.inputs:
                consumers.setdefault(edge.op, []).append(spec.id)
        kinds = {spec.id: spec.kind for spec in plan.ops}
        for spec in plan.ops:  # an exchange in front of a window ships the split watermark along
            if spec.kind == "exchange" and any(
                kinds[c] == "window" for c in consumers.get(spec.id, [])
            ):
                self.ops[spec.id].keeps_split_watermark = True
        clocks = []
        for op_id, sources in split_watermark_inputs(plan).items():
            reach, pending = set(), list(consumers.get(op_id, []))
            while pending:  # is a window downstream? only then is the split watermark attached
                node = pending.pop()
                if node not in reach:
                    reach.add(node)
                    pending.extend(consumers.get(node, []))
            clock = self.ops[op_id]
            # until Operator declares track_splits (the watermark operator's hook)
            clock.track_splits(  # type: ignore[attr-defined]
                {s: self.ops[s].source.bounded for s in sources},  # type: ignore[attr-defined]
                attach=any(kinds[n] == "window" for n in reach),
            )
            for source_id in sources:
                self.ops[source_id].clocks.append(clock)  # type: ignore[attr-defined]
            clocks.append(clock)
        return clocks

    def _fuse_scans(self, *, whole_splits: bool) -> None:
        """Fuse each source whose rows go only through a chain of expressions (or straight)
        into the exchange of a keyed aggregation with a combiner (:meth:`SourceOp.fuse`).
        Not where a per-split watermark sees the source's batches."""
        for source in self.sources:
            consumers = source.outputs.get(MAIN, [])
            if source.clocks or len(consumers) != 1:
                continue
            chain: ChainOp | None = None
            target = consumers[0][0]
            if isinstance(target, ChainOp):
                after = target.outputs.get(MAIN, [])
                if target.inputs_total != 1 or len(after) != 1 or len(target.outputs) != 1:
                    continue
                chain, target = target, after[0][0]
            if (
                isinstance(target, ExchangeOp)
                and target.combiner is not None
                and not target.keeps_split_watermark
            ):
                source.fuse(chain, target, whole_splits=whole_splits)

    def stop_requested(self) -> bool:
        """A writer has all it needs (``collect(limit=n)`` has its n rows): end the run now."""
        return any(writer.satisfied for writer in self.stoppers)

    def open(self) -> None:
        for op in self.ops.values():
            op.open()

    def done(self) -> bool:
        return all(op.finished for op in self.ops.values())

    def run(self) -> WorkerReport:
        """Drive the operators until the coordinator says ``exit``."""
        self.open()
        said_finished = False
        while True:
            command = self.link.poll_command(0.0)
            if command is not None:
                if command[0] == "exit":
                    break
                self.begin_checkpoint(int(command[1]))
            if self.stoppers and self.stop_requested():
                break
            progressed = False
            if self.transport is not None:
                progressed |= self.transport.poll(self)
            if self.pending is None:
                for source in self.sources:
                    before = source.rows_in
                    progressed |= source.step()
                    self.rows_unreported += source.rows_in - before
                for op in self.timed:
                    op.tick()
            else:
                self.try_complete_checkpoint()
            self._report_rows()
            if self.pending is None and not said_finished and self.done():
                self._report_rows(force=True)
                self._report_metrics(force=True)
                self.link.finished()
                said_finished = True
            if not progressed:
                if said_finished or self.transport is None:
                    command = self.link.poll_command(0.02 if said_finished else 0.0005)
                    if command is not None:
                        if command[0] == "exit":
                            break
                        self.begin_checkpoint(int(command[1]))
                else:
                    self.transport.wait(0.05)
        return WorkerReport(self.index, self.metrics())

    def _report_metrics(self, force: bool = False) -> None:
        """Counters of every operator, and what live taps buffered, to the coordinator."""
        now = time.monotonic()
        if not force and now - self.last_metrics_report < METRICS_INTERVAL_S:
            return
        self.last_metrics_report = now
        for writer in self.writers:
            writer.flush()
        self.link.metrics(self.metrics())

    def _report_rows(self, force: bool = False) -> None:
        self._report_metrics()
        now = time.monotonic()
        # In-process the report is a function call: make it at once (row triggers stay exact);
        # across a pipe, at most every 50 ms.
        if self.rows_unreported and (
            force or self.transport is None or now - self.last_rows_report > 0.05
        ):
            self.link.rows(self.rows_unreported)
            self.rows_unreported = 0
            self.last_rows_report = now

    # ------------------------------------------------------------------ checkpoints
    def begin_checkpoint(self, checkpoint_id: int) -> None:
        """Record source positions and send barrier ``checkpoint_id`` down from every source."""
        if self.pending is not None:
            msg = f"internal: checkpoint {checkpoint_id} requested while {self.pending} is in progress"
            raise RuntimeError(msg)
        self._report_rows(force=True)
        self.pending = checkpoint_id
        self.positions[str(checkpoint_id)] = {s.id: s.current_positions() for s in self.sources}
        tops: dict[str, dict[str, dict[str, int]]] = {}
        for clock in self.clocks:
            for source_id, by_split in clock.split_tops().items():
                for split_id, top in by_split.items():
                    tops.setdefault(source_id, {}).setdefault(split_id, {})[clock.id] = top
        self.split_tops[str(checkpoint_id)] = tops
        for source in self.sources:
            source.checkpointed = checkpoint_id
            if not source.exhausted:
                source.forward_barrier(checkpoint_id)
        self.try_complete_checkpoint()

    def try_complete_checkpoint(self) -> None:
        checkpoint_id = self.pending
        if checkpoint_id is None:
            return
        for op in self.ops.values():  # plan order is topological
            if op.finished and op.checkpointed < checkpoint_id:
                op.take_checkpoint(checkpoint_id)
        if any(op.checkpointed < checkpoint_id for op in self.ops.values()):
            return
        files = self.context.state_files.pop(checkpoint_id, [])
        staged = self.context.staged.pop(checkpoint_id, {})
        self.pending = None
        self.link.ack(
            checkpoint_id,
            {
                "positions": self.positions.pop(str(checkpoint_id)),
                "split_tops": self.split_tops.pop(str(checkpoint_id), {}),
                "state": [f.to_json() for f in files],
                "staged": staged,
                "stores": dict(self.context.store_specs),
            },
        )
        fault_point("after_ack")

    def deliver(self, exchange_id: str, batch: pl.DataFrame | None, sender: int) -> None:
        """Called by the transport for every arrived message (``None``: the sender ended)."""
        op = self.ops[exchange_id]
        assert isinstance(op, ExchangeOp)
        if batch is None:
            op.sender_ended(sender)
        else:
            op.deliver(batch, sender)

    def deliver_watermark(self, exchange_id: str, sender: int, value: int) -> None:
        op = self.ops[exchange_id]
        assert isinstance(op, ExchangeOp)
        op.sender_watermark(sender, value)

    def deliver_barrier(self, exchange_id: str, sender: int, checkpoint_id: int) -> None:
        op = self.ops[exchange_id]
        assert isinstance(op, ExchangeOp)
        op.sender_barrier(sender, checkpoint_id)

    def metrics(self) -> list[dict[str, Any]]:
        rows = []
        for op in self.ops.values():
            data = op.metrics()
            data["worker"] = self.index
            rows.append(data)
        return rows

    def close(self) -> None:
        for op in self.ops.values():
            try:
                op.close()
            except Exception:
                pass


class _Publisher:
    """What a live sink writer calls to send rows to the coordinator, tagged by its sink."""

    def __init__(self, link: ControlLink, sink_id: str) -> None:
        self.link = link
        self.sink_id = sink_id

    def __call__(self, epoch: int | None, payload: bytes, produced: int) -> None:
        self.link.publish(self.sink_id, epoch, payload, produced)
