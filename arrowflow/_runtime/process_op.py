"""The runtime of ``key_by(...).process(fn, states=[...])``: one ProcessOp per worker.

State kept here:

- ``stores``: one :class:`arrowflow.state.KeyedStore` per declared state, named
  ``<operator id>/<state name>`` and opened with the key groups this worker owns; restored
  in ``open`` and written by ``snapshot`` at every checkpoint barrier, like ``AggOp.store``.
  A process function emits as it goes and holds no rows, so a barrier needs no flush.
- ``process_context``: the :class:`arrowflow._process.context.ProcessContext` handed to every call
  of the function, with one handle per state over its store.
- ``now_ms``: the operator's clock, which TTLs are measured against. Processing time (the
  wall clock, never going back), or with ``event_time=`` the largest event time seen so far.
- ``next_sweep_ms``: when the states with a TTL are next scanned for expired entries.

Protocol per batch: copy the batch if it may live in a shared-memory ring, advance the clock,
call ``fn(batch, context)``, check what it returned against the output schema, emit it. Side
outputs are emitted from inside the call (``ctx.emit``), on the operator's named ports.

Why the copy. Behind an exchange, a batch from another worker is a zero-copy view of the
ring it arrived in, and its space is reused once the call returns. Whatever outlives the
call — the rows the function returns (a sink may keep them), the keys and values written
to a heap state backend, anything the function keeps — would then change under it. Polars
offers no cheap deep copy: ``clone``, ``rechunk``, ``pl.DataFrame(batch.to_arrow())``,
gathers and all-true filters keep sharing the buffers (string data at least), so the batch
goes through one Arrow IPC round trip in memory (about 20 ns per row of a five-column batch,
a few percent of a state lookup). A worker that is alone (``parallelism == 1``) receives no
ring batch and copies nothing.

Worked example: 2 workers, ``events.key_by("event_id").process(dedupe, states=[seen])``;
worker 0 reads a batch, keeps the rows of its key groups and sends the others to worker 1;
each ProcessOp copies what arrived through the ring, calls ``dedupe`` with its rows, whose
``ctx.state("seen")`` reads and writes that worker's store ``process/seen``, and emits the
fresh events downstream.
"""

from __future__ import annotations

import time

import polars as pl
import pyarrow as pa

from arrowflow._plan import OpSpec
from arrowflow._process.context import MIN_SWEEP_MS, ProcessContext, ProcessFunction, conform_output
from arrowflow._runtime.operators import Operator, restore_stores, snapshot_stores
from arrowflow.state import KeyedStore, StateBackend, StoreContext


def owned_copy(batch: pl.DataFrame) -> pl.DataFrame:
    """A deep copy of ``batch`` that shares no buffer with it (one Arrow IPC round trip)."""
    table = batch.to_arrow(compat_level=pl.CompatLevel.newest())
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    copied = pa.ipc.open_stream(sink.getvalue()).read_all()
    return pl.DataFrame(pl.from_arrow(copied))


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class ProcessOp(Operator):
    """A keyed process function over its declared states."""

    def __init__(
        self, spec: OpSpec, backend: StateBackend, key_range: range, context: StoreContext
    ) -> None:
        super().__init__(spec)
        self.function: ProcessFunction = spec.params["process"]
        self.backend = backend
        self.key_range = key_range
        self.store_context = context
        self.stores: dict[str, KeyedStore] = {}
        self.process_context: ProcessContext | None = None
        self.copy_input = context.parallelism > 1
        self.now_ms = 0
        ttls = [state.ttl_ms for state in self.function.states if state.ttl_ms is not None]
        self.sweep_every_ms = max(MIN_SWEEP_MS, *ttls) if ttls else None
        self.next_sweep_ms: int | None = None

    def open(self) -> None:
        function = self.function
        key_schema = function.key_schema(function.input_schema)
        for state in function.states:
            spec = state.store_spec(self.id, key_schema, function.max_parallelism)
            self.stores[spec.name] = self.backend.open_store(
                spec, self.key_range, self.store_context
            )
        restore_stores(self.context, dict(self.stores))
        self.process_context = ProcessContext(
            function,
            key_schema,
            self.stores,
            emit=self.emit,
            worker=self.store_context.worker,
            parallelism=self.store_context.parallelism,
            key_range=self.key_range,
        )

    def _advance_clock(self, batch: pl.DataFrame) -> None:
        column = self.function.event_time
        if column is None:
            now = wall_clock_ms()
        else:
            latest = batch.get_column(column).max()
            now = (
                self.now_ms
                if latest is None
                else int(
                    pl.Series([latest], dtype=batch.schema[column])
                    .cast(pl.Datetime("ms"))
                    .dt.epoch("ms")[0]
                )
            )
        self.now_ms = max(self.now_ms, now)

    def process(self, batch: pl.DataFrame, index: int) -> None:
        context = self.process_context
        assert context is not None
        if batch.height == 0:
            return
        if self.copy_input:
            batch = owned_copy(batch)
        self._advance_clock(batch)
        context._begin(batch, self.now_ms)
        out = self.function.fn(batch, context)
        out = conform_output(
            out,
            self.function.output_schema,
            f"operator {self.id!r}: the process function returned",
            "return the same columns and types for every batch, or declare schema= on process()",
        )
        self.emit(out)
        self._maybe_sweep()

    def _maybe_sweep(self) -> None:
        if self.sweep_every_ms is None:
            return
        if self.next_sweep_ms is None:
            self.next_sweep_ms = self.now_ms + self.sweep_every_ms
        elif self.now_ms >= self.next_sweep_ms:
            assert self.process_context is not None
            self.process_context._sweep()
            self.next_sweep_ms = self.now_ms + self.sweep_every_ms

    def snapshot(self, checkpoint_id: int) -> None:
        snapshot_stores(self.context, dict(self.stores), checkpoint_id)

    def close(self) -> None:
        stores, self.stores = self.stores, {}
        for store in stores.values():
            store.close()
