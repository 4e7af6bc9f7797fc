"""The runtime operators' own contracts, driven directly (the flows that use them are in
tests/arrowflow/test_aggregation.py, tests/e2e/test_emission.py and tests/recovery).

Expected values come from the rules as docs/checkpoints.md states them (aligned barriers,
"Emission"), written out here, not from the engine."""

from __future__ import annotations

import time

import polars as pl
import pytest

from arrowflow._graph.physical import MAIN, Edge, OpSpec
from arrowflow._runtime.operators import Operator, RuntimeContext


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
