"""The conformance suite every sink runs: idempotent commit and recovery, against polars.

A sink's test module subclasses :class:`SinkConformance` and provides the ``case`` fixture:
how to make the sink (a fresh description of the same output, as each run attempt has) and
how polars reads what it committed::

    import polars as pl
    import pytest
    from arrowflow.io.filesinks import FileSink
    from arrowflow.testing.sink_conformance import SinkCase, SinkConformance

    class TestParquet(SinkConformance):
        @pytest.fixture
        def case(self, tmp_path):
            return SinkCase(
                make=lambda: FileSink("parquet", str(tmp_path / "out")),
                read=lambda: pl.read_parquet(tmp_path / "out" / "*.parquet"),
            )

The suite drives the protocol of :mod:`arrowflow.sinks` itself, in the order the runtime
does (``validate``, ``attach``, ``begin`` or ``commit`` + ``recover`` + ``rollback``, writers
that ``write`` and ``prepare_commit``, the coordinator's ``commit``), with two writers, the
staged descriptions passed through JSON as a manifest keeps them, and every check compares
what polars reads with the rows written:

- nothing written or staged is visible before ``commit``;
- ``commit`` of an epoch twice (also from a fresh sink object, as a restore does) leaves
  one copy;
- output staged after the restored checkpoint is discarded by ``recover`` and never becomes
  visible, also when its stale description is committed; the replay commits it once;
- ``rollback`` to a checkpoint removes the output of later epochs, idempotently;
- ``discard_staged`` after a failed run leaves the committed output as it was;
- a real process killed with SIGKILL between ``prepare_commit`` and ``commit``: a new
  process commits from the "manifest", recovers, replays, and every row is there once.

The suite needs ``pytest`` (``pip install 'arrowflow[dev]'``).
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from arrowflow.errors import SinkError
from arrowflow.sinks import JobIdentity, Sink
from arrowflow.testing import assert_frame_equal_unordered

__all__ = ["SinkCase", "SinkConformance", "default_batches"]

#: The operator id the suite gives the sink under test.
OPERATOR = "conformance_sink"
#: The job tag of the suite's runs (8 hex digits, as the runtime makes them).
TAG = "c0ffee42"
#: Writers per run attempt, as workers of a pool.
WRITERS = 2


def default_batches(epoch: int, writer: int) -> pl.DataFrame:
    """The rows writer ``writer`` writes before checkpoint ``epoch``: ids unique over the run,
    a string column with commas and quotes, floats with nulls."""
    n = 5 + 3 * epoch + writer
    start = epoch * 10_000 + writer * 1_000
    rng = np.random.default_rng(start)
    return pl.DataFrame(
        {
            "id": np.arange(start, start + n, dtype=np.int64),
            "name": [f'name {i}, "q"' if i % 4 == 0 else f"n{i}" for i in range(n)],
            "amount": [None if i % 5 == 2 else float(v) for i, v in enumerate(rng.random(n))],
        },
        schema={"id": pl.Int64, "name": pl.String, "amount": pl.Float64},
    )


@dataclass
class SinkCase:
    """A sink under test and how to read its committed output.

    Parameters
    ----------
    make : callable
        Returns a fresh sink for the output under test; called once per simulated run
        attempt (the runtime ships a fresh copy of the description to every attempt). The
        sink it returns must pickle: the kill test ships it to the process it kills, as the
        runtime ships sinks to its workers.
    read : callable
        Returns what a reader (polars) sees as committed output, with the input's columns
        and types (bookkeeping columns dropped).
    batches : callable
        ``batches(epoch, writer)``: the rows a writer writes before checkpoint ``epoch``.
    """

    make: Callable[[], Sink]
    read: Callable[[], pl.DataFrame]
    batches: Callable[[int, int], pl.DataFrame] = default_batches


def _job(first_checkpoint: int) -> JobIdentity:
    return JobIdentity(TAG, first_checkpoint, checkpointed=True, keep=3)


def _manifest(staged: list[Any]) -> list[Any]:
    """The staged descriptions as a manifest keeps them: JSON."""
    try:
        return json.loads(json.dumps(staged))
    except (TypeError, ValueError) as exc:
        msg = f"prepare_commit returned {staged!r}, which a checkpoint manifest (JSON) cannot hold: {exc}"
        raise AssertionError(msg) from exc


class _Attempt:
    """One simulated run attempt: a fresh sink, prepared as the runtime prepares it, and its
    writers (one per worker)."""

    def __init__(
        self, case: SinkCase, *, restored: int | None = None, manifest: list[Any] | None = None
    ) -> None:
        self.case = case
        self.sink = case.make()
        self.sink.validate(case.batches(1, 0).schema, OPERATOR)
        self.sink.attach(_job(1 if restored is None else restored + 1))
        if restored is None:
            self.sink.begin()
        else:
            self.sink.commit(restored, manifest or [])
            self.sink.recover(restored)
            self.sink.rollback(restored)
        self.writers = [self.sink.open_writer(w, WRITERS, OPERATOR) for w in range(WRITERS)]

    def stage(self, epoch: int) -> list[Any]:
        """Every writer writes its rows of ``epoch`` (in two batches) and stages them."""
        for index, writer in enumerate(self.writers):
            rows = self.case.batches(epoch, index)
            writer.write(rows.head(rows.height // 2))
            writer.write(rows.tail(rows.height - rows.height // 2))
        return _manifest([writer.prepare_commit(epoch) for writer in self.writers])

    def close(self) -> None:
        for writer in self.writers:
            writer.close()


def _rows(case: SinkCase, epochs: list[int]) -> pl.DataFrame:
    frames = [case.batches(epoch, w) for epoch in epochs for w in range(WRITERS)]
    return pl.concat(frames) if frames else case.batches(1, 0).head(0)


def _check(case: SinkCase, epochs: list[int], when: str) -> None:
    got, expected = case.read(), _rows(case, epochs)
    try:
        assert_frame_equal_unordered(got, expected, check_exact=True)
    except AssertionError as exc:
        msg = f"{when}: the committed output is not the rows of epochs {epochs} once: {exc}"
        raise AssertionError(msg) from None


_KILLED_JOB = textwrap.dedent("""
    import json, os, pickle, signal, sys
    sink, job, batches, operator, writers = pickle.load(open(sys.argv[1], "rb"))
    sink.attach(job)
    sink.begin()
    opened = [sink.open_writer(w, writers, operator) for w in range(writers)]
    for epoch in (1, 2):
        for index, writer in enumerate(opened):
            writer.write(batches[(epoch, index)])
        staged = [writer.prepare_commit(epoch) for writer in opened]
        if epoch == 1:
            sink.commit(1, json.loads(json.dumps(staged)))
    print(json.dumps(staged), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # after staging checkpoint 2, before its commit
""")


class SinkConformance:
    """Subclass and provide the ``case`` fixture (a :class:`SinkCase`)."""

    @pytest.fixture
    def case(self) -> SinkCase:
        pytest.fail(f"{type(self).__name__}: provide a `case` fixture returning a SinkCase")

    def test_nothing_is_visible_before_commit(self, case: SinkCase) -> None:
        attempt = _Attempt(case)
        staged = attempt.stage(1)
        _check(case, [], "written and staged, not committed")
        attempt.sink.commit(1, staged)
        _check(case, [1], "after commit(1)")
        attempt.close()

    def test_commit_twice_leaves_one_copy(self, case: SinkCase) -> None:
        attempt = _Attempt(case)
        first = attempt.stage(1)
        attempt.sink.commit(1, first)
        attempt.sink.commit(1, first)
        second = attempt.stage(2)
        attempt.sink.commit(2, second)
        attempt.close()
        _check(case, [1, 2], "after commit(1) twice and commit(2)")
        # A restore re-runs the commit of the checkpoint it restores, from a fresh sink.
        again = _Attempt(case, restored=2, manifest=second)
        again.sink.commit(2, second)
        again.close()
        _check(case, [1, 2], "after commit(2) re-run by a restore")

    def test_recover_discards_what_was_staged_after_the_checkpoint(self, case: SinkCase) -> None:
        attempt = _Attempt(case)
        attempt.sink.commit(1, attempt.stage(1))
        second = attempt.stage(2)  # checkpoint 2's manifest is durable, its commit never ran
        stale = attempt.stage(3)  # checkpoint 3 never completed
        attempt.close()
        _check(case, [1], "before the restore")
        restored = _Attempt(case, restored=2, manifest=second)
        _check(case, [1, 2], "after the restore re-ran commit(2) and recover(2)")
        try:  # a stale description of checkpoint 3 must never bring its rows back
            restored.sink.commit(3, stale)
        except SinkError:
            pass
        _check(case, [1, 2], "after committing output staged before the restore")
        restored.sink.commit(3, restored.stage(3))  # the replay
        restored.close()
        _check(case, [1, 2, 3], "after the replay of checkpoint 3")

    def test_rollback_removes_later_epochs(self, case: SinkCase) -> None:
        attempt = _Attempt(case)
        manifests = {}
        for epoch in (1, 2, 3):
            manifests[epoch] = attempt.stage(epoch)
            attempt.sink.commit(epoch, manifests[epoch])
        attempt.close()
        _check(case, [1, 2, 3], "before the rollback")
        # Checkpoints 2 and 3 were damaged after their commit: the run restores checkpoint 1.
        restored = _Attempt(case, restored=1, manifest=manifests[1])
        _check(case, [1], "after rollback(1)")
        assert restored.sink.rollback(1) is not None, "a sink that rolls back says what it removed"
        _check(case, [1], "after rollback(1) twice")
        for epoch in (2, 3):
            restored.sink.commit(epoch, restored.stage(epoch))
        restored.close()
        _check(case, [1, 2, 3], "after the replay of checkpoints 2 and 3")

    def test_discard_staged_keeps_the_committed_output(self, case: SinkCase) -> None:
        attempt = _Attempt(case)
        first = attempt.stage(1)
        attempt.sink.commit(1, first)
        attempt.stage(2)
        attempt.close()
        # The run failed for good: the runtime re-commits the newest checkpoint, then discards.
        attempt.sink.commit(1, first)
        attempt.sink.discard_staged()
        _check(case, [1], "after discard_staged")
        fresh = _Attempt(case, restored=1, manifest=first)
        fresh.sink.commit(2, fresh.stage(2))
        fresh.close()
        _check(case, [1, 2], "after a restore and the replay")

    def test_a_process_killed_between_stage_and_commit(
        self, case: SinkCase, tmp_path: Path
    ) -> None:
        sink = case.make()
        sink.validate(case.batches(1, 0).schema, OPERATOR)
        batches = {(e, w): case.batches(e, w) for e in (1, 2) for w in range(WRITERS)}
        payload = tmp_path / "killed-job.pickle"
        payload.write_bytes(pickle.dumps((sink, _job(1), batches, OPERATOR, WRITERS)))
        proc = subprocess.run(
            [sys.executable, "-c", _KILLED_JOB, str(payload)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env={**os.environ, "PYTHONHASHSEED": "0"},
        )
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
        staged = json.loads(proc.stdout.strip().splitlines()[-1])
        _check(case, [1], "after the kill between staging checkpoint 2 and its commit")
        restored = _Attempt(case, restored=2, manifest=staged)
        _check(case, [1, 2], "after the restore of checkpoint 2 in a new process")
        restored.sink.commit(3, restored.stage(3))
        restored.close()
        _check(case, [1, 2, 3], "after the next checkpoint")
