"""The runtime operators' own contracts, driven directly (the flows that use them are in
tests/arrowflow/test_aggregation.py, tests/e2e/test_emission.py and tests/recovery).

Expected values come from the rules as docs/checkpoints.md states them (aligned barriers,
"Emission"), written out here, not from the engine."""

from __future__ import annotations

import time

import polars as pl
import pytest

from arrowflow._foundation.keygroups import DEFAULT_MAX_PARALLELISM, key_group_range, key_groups
from arrowflow._graph.physical import MAIN, Edge, OpSpec
from arrowflow._runtime.operators import ExchangeOp, Operator, RuntimeContext


@pytest.mark.parametrize(
    ("every", "interval", "checkpoints", "ago", "due"),
    [
        # no emit_every of its own: every commit emits
        (None, None, False, 0.0, True),
        (None, 0.2, False, 0.0, True),
        # with checkpoints always: what an operator holds back is in no snapshot
        (1.0, 0.2, True, 0.0, True),
        (3600.0, None, True, 0.0, True),
        # without: once ``every`` has passed, to within half the run's own interval
        (1.0, 0.2, False, 0.95, True),  # 1.0 - 0.2 / 2 = 0.9 <= 0.95
        (1.0, 0.2, False, 0.85, False),
        (1.0, 0.4, False, 0.85, True),  # 1.0 - 0.2 = 0.8
        (1.0, 0.4, False, 0.75, False),
        # without an interval of the run's own: no slack
        (1.0, None, False, 0.95, False),
        (1.0, None, False, 1.05, True),
        (3600.0, 0.2, False, 10.0, False),
    ],
)
def test_an_own_emit_every_decides_which_commits_emit(
    every: float | None, interval: float | None, checkpoints: bool, ago: float, due: bool
) -> None:
    context = RuntimeContext(storage=object() if checkpoints else None, emit_interval_s=interval)
    assert context.emission_due(every, time.monotonic() - ago) is due


SCHEMA = pl.Schema({"x": pl.Int64})


def rows(*values: int) -> pl.DataFrame:
    return pl.DataFrame({"x": list(values)}, schema=SCHEMA)


class Probe(Operator):
    """An operator of ``inputs`` inputs that logs the batches it processes and its snapshots."""

    def __init__(self, inputs: int) -> None:
        super().__init__(OpSpec("probe", "chain", [Edge(f"in{i}") for i in range(inputs)], SCHEMA))
        self.log: list[tuple[object, ...]] = []

    def process(self, batch: pl.DataFrame, index: int) -> None:
        self.log.append(("batch", index, batch["x"].to_list()))
        self.emit(batch)

    def snapshot(self, checkpoint_id: int) -> None:
        self.log.append(("snapshot", checkpoint_id))


class After(Operator):
    """The operator downstream: logs the batches and barriers it is sent, in order."""

    def __init__(self) -> None:
        super().__init__(OpSpec("after", "chain", [Edge("probe")], SCHEMA))
        self.log: list[tuple[object, ...]] = []

    def receive_barrier(self, checkpoint_id: int, index: int) -> None:
        self.log.append(("barrier", checkpoint_id))

    def receive_watermark(self, value: int, index: int) -> None:
        self.log.append(("watermark", value))

    def process(self, batch: pl.DataFrame, index: int) -> None:
        self.log.append(("batch", batch["x"].to_list()))


def probe(inputs: int) -> tuple[Probe, After]:
    op, after = Probe(inputs), After()
    op.connect(MAIN, after, 0)
    return op, after


def test_barriers_align_the_inputs_before_the_snapshot() -> None:
    """An input's rows after its barrier wait until every input has sent it; then the
    operator snapshots once, sends the barrier on, and processes the held rows in order."""
    op, after = probe(2)
    op.receive(rows(1), 0)
    op.receive_barrier(1, 0)
    op.receive(rows(2), 0)  # after input 0's barrier: held
    op.receive(rows(3), 1)  # input 1 is before its barrier: processed
    op.receive(rows(4), 0)  # held, behind 2
    assert op.log == [("batch", 0, [1]), ("batch", 1, [3])]
    assert after.log == [("batch", [1]), ("batch", [3])]
    op.receive_barrier(1, 1)
    assert op.log[2:] == [("snapshot", 1), ("batch", 0, [2]), ("batch", 0, [4])]
    assert after.log[2:] == [("barrier", 1), ("batch", [2]), ("batch", [4])]
    assert op.checkpointed == 1


def test_a_watermark_behind_a_barrier_waits_with_the_rows() -> None:
    """A watermark that an aligned input sends while the operator waits for the others is
    held in order with that input's rows, and counts once the checkpoint is taken (the
    operator's watermark is the lowest of its inputs')."""
    op, after = probe(2)
    op.receive_watermark(5, 0)
    op.receive_watermark(8, 1)
    assert after.log == [("watermark", 5)]
    op.receive_barrier(1, 0)
    op.receive_watermark(20, 0)  # held
    op.receive_watermark(30, 1)  # input 1 is before its barrier: counts, the lowest is still 5
    assert after.log == [("watermark", 5)] and op.watermark == 5
    op.receive_barrier(1, 1)
    assert after.log == [("watermark", 5), ("barrier", 1), ("watermark", 20)]
    assert op.watermark == 20


def test_a_barrier_of_a_checkpoint_taken_is_ignored() -> None:
    """A barrier of the checkpoint just taken, or of an older one, starts no alignment: no
    second snapshot (a second one would stage the sink's output again), no barrier sent,
    no row held. The next checkpoint aligns as the first did."""
    op, after = probe(1)
    op.receive_barrier(3, 0)
    op.receive_barrier(3, 0)
    op.receive_barrier(2, 0)
    op.receive(rows(5), 0)
    assert op.log == [("snapshot", 3), ("batch", 0, [5])]
    assert after.log == [("barrier", 3), ("batch", [5])]
    op.receive_barrier(4, 0)
    assert op.log[-1] == ("snapshot", 4) and after.log[-1] == ("barrier", 4)


def test_an_ended_input_counts_as_aligned() -> None:
    """An input that has ended sends no barrier: it does not hold a checkpoint back, before
    the barrier arrives on the other input or while the operator waits for it."""
    op, after = probe(2)
    op.end_input(1)
    op.receive_barrier(1, 0)
    assert op.log == [("snapshot", 1)] and after.log == [("barrier", 1)]
    op, after = probe(3)
    op.receive_barrier(1, 0)
    op.receive(rows(7), 0)  # held
    op.receive_barrier(1, 2)
    assert op.log == []
    op.end_input(1)  # the last input the checkpoint waited for ends
    assert op.log == [("snapshot", 1), ("batch", 0, [7])]
    assert after.log == [("barrier", 1), ("batch", [7])]


class Wire:
    """What a worker's exchange hands the other workers (the shared-memory transport's calls)."""

    def __init__(self) -> None:
        self.log: list[tuple[object, ...]] = []

    def send(self, target: int, exchange_id: str, batch: pl.DataFrame) -> None:
        self.log.append(("send", target, batch))

    def send_barrier(self, target: int, exchange_id: str, checkpoint_id: int) -> None:
        self.log.append(("barrier", target, checkpoint_id))

    def send_watermark(self, target: int, exchange_id: str, value: int) -> None:
        self.log.append(("watermark", target, value))

    def send_end(self, target: int, exchange_id: str) -> None:
        self.log.append(("end", target))

    def pause(self, sender: int) -> None:
        self.log.append(("pause", sender))

    def resume_all(self) -> None:
        self.log.append(("resume",))


def exchange(worker: int, parallelism: int) -> tuple[ExchangeOp, After, Wire]:
    spec = OpSpec(
        "ex",
        "exchange",
        [Edge("up")],
        SCHEMA,
        params={"keys": ["x"], "max_parallelism": DEFAULT_MAX_PARALLELISM},
    )
    op, after, wire = ExchangeOp(spec, worker, parallelism), After(), Wire()
    op.transport = wire
    op.connect(MAIN, after, 0)
    return op, after, wire


def owned(frame: pl.DataFrame, worker: int, parallelism: int) -> pl.Series:
    """Which rows have a key group in the worker's range (the stores' key_group_range)."""
    groups = key_group_range(worker, parallelism, DEFAULT_MAX_PARALLELISM)
    return pl.Series(key_groups(frame.select("x"), DEFAULT_MAX_PARALLELISM)).is_in(list(groups))


def test_an_exchange_routes_rows_to_the_workers_owning_their_key_groups() -> None:
    """Each row goes to the worker whose stores hold its key group, once, in input order;
    rows another worker routed here are passed on and counted there, not here."""
    op, after, wire = exchange(0, 2)
    batch = pl.DataFrame({"x": list(range(200))}, schema=SCHEMA)
    op.receive(batch, 0)
    mine = owned(batch, 0, 2)
    sent = [entry for entry in wire.log if entry[0] == "send"]
    assert [entry[1] for entry in sent] == [1]
    assert sent[0][2].equals(batch.filter(~mine))
    assert after.log == [("batch", batch.filter(mine)["x"].to_list())]
    op.deliver(rows(7, 9), 1)
    assert after.log[-1] == ("batch", [7, 9])
    metrics = op.metrics()
    assert (metrics["rows_in"], metrics["rows_out"], metrics["batches_in"]) == (
        200,
        200,  # what it sent away plus what it kept: every input row once
        1,
    )


def test_an_exchange_aligns_its_senders_before_the_snapshot() -> None:
    """Worker 0's own barrier goes to every other worker first; its own rows after that
    barrier wait (rows for other workers go on: they hold them), and worker 1's ring is
    paused once its barrier arrives; with every sender aligned the barrier goes downstream,
    the rings resume and the held rows follow, in order."""
    op, after, wire = exchange(0, 3)
    op.receive_barrier(1, 0)
    assert wire.log == [("barrier", 1, 1), ("barrier", 2, 1)]
    first = pl.DataFrame({"x": list(range(100))}, schema=SCHEMA)
    op.receive(first, 0)
    assert after.log == []  # worker 0's own share is held
    assert (
        sum(entry[2].height for entry in wire.log if entry[0] == "send")
        == first.filter(~owned(first, 0, 3)).height
    )
    op.deliver(rows(1), 1)  # worker 1's rows from before its barrier
    op.sender_barrier(1, 1)
    assert ("pause", 1) in wire.log and ("resume",) not in wire.log
    assert after.log == [("batch", [1])]
    op.sender_barrier(2, 1)
    assert after.log[1:] == [
        ("barrier", 1),
        ("batch", first.filter(owned(first, 0, 3))["x"].to_list()),
    ]
    assert wire.log[-1] == ("resume",) and ("pause", 2) in wire.log
    assert op.checkpointed == 1
    op.end_input(0)
    assert ("end", 1) in wire.log and ("end", 2) in wire.log


def test_an_exchange_keeps_passing_its_own_rows_until_its_own_barrier() -> None:
    """Another worker's barrier first: this worker's own rows from before its barrier still
    go on at once (they belong to the checkpoint), and only its rows after it wait."""
    op, after, _ = exchange(0, 2)
    op.sender_barrier(1, 1)
    batch = pl.DataFrame({"x": list(range(60))}, schema=SCHEMA)
    op.receive(batch, 0)
    mine = batch.filter(owned(batch, 0, 2))["x"].to_list()
    assert after.log == [("batch", mine)]
    op.receive_barrier(1, 0)
    assert after.log == [("batch", mine), ("barrier", 1)]
