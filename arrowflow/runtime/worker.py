"""A worker: one instance of every operator of the plan, and the loop that drives them.

The same class runs inside the calling process (the in-process executor) and inside each
pool process. It keeps no state of its own beyond its operators; it talks to the outside
through two small objects:

- ``link`` (to the coordinator): ``next_split(source_id)`` hands out the next split (and
  the position to resume it from) or ``None`` when the source has no more;
  ``split_done(source_id, split_id)`` reports one finished.
- ``transport`` (to other workers, pool only): ``send``/``send_end`` for exchanges, and
  ``poll(worker)`` to deliver what arrived. ``None`` in-process.

The loop alternates between delivering arrived batches and reading one batch per source,
so a worker blocked on a full ring still drains its inputs (no deadlock between two workers
sending to each other), and ends when every operator has finished.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import polars as pl

from arrowflow.plan import Plan
from arrowflow.runtime.operators import AggOp, ChainOp, ExchangeOp, Operator, SinkOp, UnionOp
from arrowflow.sources import Split, SplitReader
from arrowflow.state import StateBackend, StoreContext
from arrowflow.keygroups import key_group_range


class CoordinatorLink(Protocol):
    def next_split(self, source_id: str) -> tuple[Split, Any] | None: ...

    def split_done(self, source_id: str, split_id: str) -> None: ...


class SourceOp(Operator):
    """Reads the splits the coordinator hands this worker, one batch per step."""

    def __init__(self, spec: Any, link: CoordinatorLink, batch_size: int | None) -> None:
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

    def step(self) -> bool:
        """Read and push one batch. Returns False when there was nothing to do."""
        if self.exhausted:
            return False
        if self.iterator is None:
            handed = self.link.next_split(self.id)
            if handed is None:
                self.exhausted = True
                self.finished = True
                self.end_outputs()
                return True
            self.split, position = handed
            self.reader = self.source.open_reader(self.split, position, batch_size=self.batch_size)
            self.iterator = iter(self.reader.batches())
        try:
            item = next(self.iterator)
        except StopIteration:
            self._close_reader()
            assert self.split is not None
            self.link.split_done(self.id, self.split.split_id)
            self.split = None
            return True
        assert self.split is not None
        self.positions[self.split.split_id] = item.position
        if item.malformed is not None and item.malformed.height:
            self.malformed_rows += item.malformed.height
            # The reader knows its format, not its operator id: name the source here.
            self.emit(item.malformed.with_columns(source=pl.lit(self.id, dtype=pl.String)), "malformed")
        if item.data is not None:
            self.rows_in += item.data.height
            self.batches_in += 1
            self.emit(item.data)
            return True
        return item.malformed is not None

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
    staged: dict[str, Any] = field(default_factory=dict)
    metrics: list[dict[str, Any]] = field(default_factory=list)


class Worker:
    def __init__(self, plan: Plan, index: int, parallelism: int, link: CoordinatorLink,
                 backend: StateBackend, *, batch_size: int | None, local_dir: str,
                 max_parallelism: int = 128, transport: Any = None) -> None:
        self.plan = plan
        self.index = index
        self.parallelism = parallelism
        self.transport = transport
        self.ops: dict[str, Operator] = {}
        self.sources: list[SourceOp] = []
        key_range = key_group_range(index, parallelism, max_parallelism)
        context = StoreContext(local_dir=local_dir, worker=index, parallelism=parallelism)
        for spec in plan.ops:
            op: Operator
            if spec.kind == "source":
                op = SourceOp(spec, link, batch_size)
                self.sources.append(op)
            elif spec.kind == "chain":
                op = ChainOp(spec)
            elif spec.kind == "union":
                op = UnionOp(spec)
            elif spec.kind == "exchange":
                op = ExchangeOp(spec, index, parallelism)
                op.transport = transport
            elif spec.kind == "agg":
                op = AggOp(spec, backend, key_range, context)
            elif spec.kind == "sink":
                op = SinkOp(spec, index, parallelism)
            else:
                msg = f"internal: no runtime operator for kind {spec.kind!r}"
                raise NotImplementedError(msg)
            self.ops[spec.id] = op
        for spec in plan.ops:
            for index_in, edge in enumerate(spec.inputs):
                self.ops[edge.op].connect(edge.port, self.ops[spec.id], index_in)

    def open(self) -> None:
        for op in self.ops.values():
            op.open()

    def done(self) -> bool:
        return all(op.finished for op in self.ops.values())

    def run(self, final_checkpoint: int = 1) -> WorkerReport:
        """Drive the operators until every one has finished; stage the sinks' output."""
        self.open()
        idle_sleep = 0.0005
        while not self.done():
            progressed = False
            if self.transport is not None:
                progressed |= self.transport.poll(self)
            for source in self.sources:
                progressed |= source.step()
            if not progressed:
                if self.transport is not None:
                    self.transport.wait(0.05)
                else:
                    time.sleep(idle_sleep)
        report = WorkerReport(self.index)
        for op in self.ops.values():
            if isinstance(op, SinkOp):
                report.staged[op.id] = op.writer.prepare_commit(final_checkpoint)
        report.metrics = self.metrics()
        return report

    def deliver(self, exchange_id: str, batch: pl.DataFrame | None, sender: int) -> None:
        """Called by the transport for every arrived message (``None``: the sender ended)."""
        op = self.ops[exchange_id]
        assert isinstance(op, ExchangeOp)
        if batch is None:
            op.sender_ended(sender)
        else:
            op.deliver(batch)

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
            except Exception:  # noqa: BLE001 - closing after another error must not hide it
                pass
