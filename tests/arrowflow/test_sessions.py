"""Session windows (``af.session(gap)``) at their edges, against polars' sessions: events
exactly ``gap`` apart, in one batch and across batches; sessions that fire only once the
watermark passes their end + gap, not at their last event; an event arriving out of order
that bridges two stored sessions, then a restore from each checkpoint; late events with the
session they missed, from a split watermark and from a per-worker one (the operator driven
directly); and the first/last aggregations sessions refuse.

The operator is ``SessionWindowOp`` in ``arrowflow/_runtime/window_op.py``; what sessions
mean is in ``arrowflow/windows.py``.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

import arrowflow as af
from arrowflow.errors import PlanError
from arrowflow.io.memory import CollectSink
from arrowflow.testing import assert_frame_equal_unordered

START = dt.datetime(2024, 1, 1)
GAP_S = 20


def frame(rows: list[tuple[int, float]], amounts: list[float] | None = None) -> pl.DataFrame:
    """Events (user, seconds after START) in arrival order."""
    return pl.DataFrame(
        {
            "ts": [START + dt.timedelta(seconds=s) for _, s in rows],
            "user": [u for u, _ in rows],
            "amount": amounts if amounts is not None else [float(i % 7) for i in range(len(rows))],
        }
    ).with_columns(pl.col("ts").dt.cast_time_unit("ms"))


def sessions(df: pl.DataFrame, delay: str = "0s", *, lateness: str | None = None) -> af.Flow:
    """The flow: sessions of ``GAP_S`` per user, n and total, and their late events."""
    flow = af.Flow("sessions")
    windowed = (
        flow.from_polars(df, splits=1)
        .with_watermark("ts", delay=delay)
        .key_by("user")
        .window(af.session(f"{GAP_S}s"), allowed_lateness=lateness)
        .agg(n=pl.len(), total=pl.col("amount").sum(), name="sessions")
    )
    windowed.write_to(CollectSink(), name="out")
    windowed.side_output("late").write_to(CollectSink(), name="late")
    return flow


def rows_of(result: af.RunResult, name: str) -> pl.DataFrame:
    parts = result.outputs.get(name) or []
    return pl.concat(parts) if parts else pl.DataFrame()


def check(got: pl.DataFrame, df: pl.DataFrame, polars_sessions: Any) -> None:
    expected = polars_sessions(df, GAP_S)
    got = got.select(expected.columns)
    assert got.select("user", "window_start").is_duplicated().sum() == 0, "a session came out twice"
    assert_frame_equal_unordered(got, expected.cast(got.schema), check_exact=False)


def edge_events(seed: int) -> pl.DataFrame:
    """Six users, each a run of events whose steps are exactly the gap, a millisecond less or
    more, or small; users interleaved (not in time order across users)."""
    rng = np.random.default_rng(seed)
    steps = np.array([GAP_S, GAP_S - 0.001, GAP_S + 0.001, 1.0, 7.5, 0.0, GAP_S])
    per_user = []
    for user in range(6):
        t = np.cumsum(rng.choice(steps, 40)) + rng.integers(0, 30)
        per_user.append([(user, float(s)) for s in t])
    # one user after another in chunks of 5 events, so the batches hold several users
    order = []
    for chunk in range(8):
        for user in rng.permutation(6):
            order.extend(per_user[user][chunk * 5 : (chunk + 1) * 5])
    return frame(order)


@pytest.mark.parametrize("batch_size", [1, 7, None])
def test_events_exactly_a_gap_apart_start_a_new_session(
    batch_size: int | None, polars_sessions: Any
) -> None:
    """An event ``gap`` after the previous one of its key starts a new session (a millisecond
    less does not), whether the two are in one batch (None: one batch per split) or in two
    (the stored session ends exactly where the new one starts)."""
    df = edge_events(seed=3)
    ts = df.sort("user", "ts").with_columns(
        step=pl.col("ts").diff().over("user").dt.total_milliseconds()
    )
    assert ts.filter(pl.col("step") == GAP_S * 1000).height > 20
    flow = sessions(df, delay="1h")  # users interleaved: nothing is late
    result = flow.run(workers=0, batch_size=batch_size)
    check(rows_of(result, "out"), df, polars_sessions)
    assert rows_of(result, "late").height == 0


@pytest.mark.parametrize(("lateness", "fired"), [(0, [80, 140, 140]), (10, [110, 140, 140])])
def test_a_session_fires_once_the_watermark_passes_its_end_not_its_last_event(
    lateness: int, fired: list[int], polars_sessions: Any
) -> None:
    """One-row batches, no delay: after each event the watermark is at that event, so a
    session whose last event the watermark has passed can still grow until the watermark
    reaches its end (last event + gap). It fires, whole, at the first event at or past its
    end + gap + allowed lateness."""
    # sessions [0, 53) (last event 33), [60, 100) (last 80), [110, 130), [140, 160)
    df = frame([(1, s) for s in (0, 5, 12, 31, 33, 60, 61, 80, 110, 140)])
    fired_at: list[int] = []
    seen: list[int] = []

    def tap_in(batch: pl.DataFrame) -> pl.DataFrame:
        seen.extend(batch["ts"].dt.epoch("s").to_list())
        return batch

    def tap_out(batch: pl.DataFrame) -> pl.DataFrame:
        if batch.height:
            fired_at.append(seen[-1])
        return batch

    flow = af.Flow("session-timing")
    windowed = (
        flow.from_polars(df, splits=1)
        .map_batches(tap_in)
        .with_watermark("ts", delay="0s")
        .key_by("user")
        .window(af.session(f"{GAP_S}s"), allowed_lateness=f"{lateness}s")
        .agg(n=pl.len(), total=pl.col("amount").sum())
    )
    windowed.map_batches(tap_out).write_to(CollectSink(), name="out")
    result = flow.run(workers=0, batch_size=1)
    check(rows_of(result, "out"), df, polars_sessions)
    base = int(START.replace(tzinfo=dt.timezone.utc).timestamp())
    # [0, 53) fires once the watermark reaches 53 + gap + lateness: 73 (at the event at 80;
    # firing at its last event, 33, would have cut it short), or 83 (at 110); [60, 100) at
    # 120 or 130 (the event at 140); the other two at the end of the input (the last event
    # read: 140).
    assert [t - base for t in fired_at] == fired


def test_an_event_out_of_order_bridges_two_stored_sessions_and_a_restore_agrees(
    tmp_path: Path, polars_sessions: Any, restores_from_each_checkpoint: Any
) -> None:
    """Events arrive out of order within the delay: one lands between two stored sessions of
    its key and merges them (the later session's entry leaves the store). Restored from each
    checkpoint, the run emits polars' sessions: no stale entry comes back with the restore."""
    rng = np.random.default_rng(11)
    rows: list[tuple[int, float]] = []
    for user in range(5):
        base = int(rng.integers(0, 50))
        # two sessions 30 s apart, then the event between them, then more of either
        rows += [(user, base), (user, base + 30), (user, base + 15), (user, base + 31)]
    noise = [
        (int(u), float(s))
        for u, s in zip(rng.integers(0, 5, 160), rng.uniform(0, 400, 160), strict=True)
    ]
    noise.sort(key=lambda r: r[1] + rng.uniform(-25, 25))  # out of order by up to 50 s
    df = frame(rows + noise)

    def run(folder: Path, **options: Any) -> af.RunResult:
        flow = af.Flow("sessions-bridge")
        (
            flow.from_polars(df, splits=1)
            .with_watermark("ts", delay="2m")  # nothing is late, little fires before the end
            .key_by("user")
            .window(af.session(f"{GAP_S}s"))
            .agg(n=pl.len(), total=pl.col("amount").sum(), name="sessions")
            .write_parquet(str(folder / "out"))
        )
        return flow.run(
            workers=0,
            checkpoint_dir=str(folder / "ck"),
            checkpoint_every=af.every_rows(20),
            batch_size=4,
            keep_checkpoints=20,
            **options,
        )

    def output(folder: Path) -> pl.DataFrame:
        return pl.read_parquet(folder / "out" / "*.parquet")

    for folder, _ in restores_from_each_checkpoint(run, tmp_path, at_least=8):
        check(output(folder), df, polars_sessions)
    check(output(tmp_path / "first"), df, polars_sessions)


def test_late_events_carry_the_session_they_missed(polars_sessions: Any) -> None:
    """One-row batches, a 5 s delay and 2 s of allowed lateness: an event is late when
    ts + gap + lateness is at or behind the watermark before it (the newest earlier event
    minus the delay: the split's watermark; per worker, see the next test). Late
    events go to ``late`` with ``[ts, ts + gap)``; the others are polars' sessions. The
    events include one exactly at that limit (late) and one a millisecond after (not)."""
    rng = np.random.default_rng(5)
    seconds = np.sort(rng.uniform(0, 600, 300))
    rows = [(int(u), float(s)) for u, s in zip(rng.integers(0, 4, 300), seconds, strict=True)]
    # pushed back: these arrive long after their time
    for index in rng.choice(np.arange(20, 300), 25, replace=False):
        user, s = rows[index]
        rows[index] = (user, max(0.0, s - rng.uniform(20, 120)))
    newest = max(s for _, s in rows[:150])
    limit = newest - 5 - GAP_S - 2  # ts + gap + lateness == watermark: late
    rows[150:150] = [(0, limit), (1, limit + 0.001)]
    df = frame(rows)
    flow = sessions(df, delay="5s", lateness="2s")
    result = flow.run(workers=0, batch_size=1)
    epoch = pl.col("ts").dt.epoch("ms")
    marked = df.with_row_index("i").with_columns(
        late=(epoch + (GAP_S + 2) * 1000 <= epoch.cum_max().shift(1) - 5_000).fill_null(False)
    )
    expected_late = marked.filter("late")
    assert expected_late["i"].is_in([150]).any() and not expected_late["i"].is_in([151]).any()
    got_late = rows_of(result, "late")
    assert_frame_equal_unordered(
        got_late.select("ts", "user", "amount", "window_start", "window_end"),
        expected_late.select(
            "ts",
            "user",
            "amount",
            window_start=pl.col("ts"),
            window_end=pl.col("ts") + pl.duration(seconds=GAP_S),
        ),
    )
    check(rows_of(result, "out"), marked.filter(~pl.col("late")).drop("i", "late"), polars_sessions)


@pytest.mark.parametrize("kind", ["first", "last", "first_non_null", "last_non_null"])
def test_session_windows_refuse_first_and_last(kind: str) -> None:
    """Sessions merge out of arrival order (an event joins or bridges sessions stored before
    it), so first/last would pick a row that is not the first or last to arrive: before
    they were refused, a session's last() changed with the batch size. The error says what
    to use instead."""
    value = pl.col("amount")
    expr = {
        "first": value.first(),
        "last": value.last(),
        "first_non_null": value.first(ignore_nulls=True),
        "last_non_null": value.last(ignore_nulls=True),
    }[kind]
    keyed = (
        af.Flow("refused")
        .from_polars(frame([(1, 0), (1, 5)]))
        .with_watermark("ts", delay="0s")
        .key_by("user")
    )
    with pytest.raises(PlanError, match=r"'v' is a first/last aggregation.*use min\(\)/max\(\)"):
        keyed.window(af.session("10s")).agg(v=expr).collect(workers=0)
    # tumbling windows keep arrival order: the same aggregation runs
    got = keyed.window(af.tumbling("60s")).agg(v=expr).collect(workers=0)
    assert got["v"].to_list() == [0.0 if kind.startswith("first") else 1.0]


class _Rows:
    """Stands for the operator after a port: keeps the batches it is sent."""

    def __init__(self) -> None:
        self.batches: list[pl.DataFrame] = []

    def receive(self, batch: pl.DataFrame, index: int) -> None:
        self.batches.append(batch)

    def receive_watermark(self, value: int, index: int) -> None:
        pass

    def rows(self) -> pl.DataFrame:
        return pl.concat(self.batches)


def test_a_per_worker_watermark_makes_rows_behind_a_fired_session_late(tmp_path: Path) -> None:
    """Behind a per-worker watermark (after a window, a process function) rows carry no split
    watermark: the operator's own watermark decides. With 2 s of lateness, a row is late when
    ts + gap + lateness is at or behind it (the row at exactly that limit is, a millisecond
    later is not and starts a session of its own); a row that is not late still merges with a
    stored session it is less than a gap before."""
    from arrowflow._plan import MAIN, build_plan
    from arrowflow._runtime.operators import RuntimeContext
    from arrowflow._runtime.window_op import make_window_op
    from arrowflow.backends.memory import MemoryBackend
    from arrowflow.state import StoreContext

    flow = af.Flow("one-session")
    windowed = (
        flow.from_polars(frame([(1, 0)]), splits=1)
        .with_watermark("ts", delay="0s")
        .key_by("user")
        .window(af.session(f"{GAP_S}s"), allowed_lateness="2s")
        .agg(n=pl.len(), total=pl.col("amount").sum(), name="sessions")
    )
    plan = build_plan(flow, [windowed.node])
    [spec] = [op for op in plan.ops if op.id == "sessions"]
    op = make_window_op(
        spec, MemoryBackend(), range(0, 128), StoreContext(str(tmp_path / "local"), 0, 1)
    )
    op.context = RuntimeContext()
    out, late = _Rows(), _Rows()
    op.connect(MAIN, out, 0)  # type: ignore[arg-type]
    op.connect("late", late, 0)  # type: ignore[arg-type]
    op.open()
    try:
        first = frame([(1, 0), (1, 5), (2, 100)], [1.0, 2.0, 3.0])
        op.receive(first, 0)
        # the watermark (microseconds) at 100 s fires [0, 25) of user 1: 25 + 2 + 20 <= 100
        epoch_us = int(START.replace(tzinfo=dt.timezone.utc).timestamp()) * 1_000_000
        op.receive_watermark(epoch_us + 100 * 1_000_000, 0)
        assert out.rows().select("user", "n").rows() == [(1, 2)]
        second = frame([(1, 78), (1, 78.001), (2, 90)], [4.0, 5.0, 6.0])
        op.receive(second, 0)
        op.finish()
    finally:
        op.close()
    at = [START + dt.timedelta(seconds=s) for s in (0, 78.001, 90)]
    gap = dt.timedelta(seconds=GAP_S)
    expected = pl.DataFrame(
        {
            "user": [1, 1, 2],
            "window_start": at,
            "window_end": [START + dt.timedelta(seconds=s) for s in (25, 98.001, 120)],
            "n": [2, 1, 2],
            "total": [3.0, 5.0, 9.0],
        }
    )
    got = out.rows()
    assert_frame_equal_unordered(
        got.select(expected.columns), expected.cast(got.select(expected.columns).schema)
    )
    missed = late.rows()
    assert missed.select("user", "amount").rows() == [(1, 4.0)]
    assert missed["window_start"].to_list() == [START + dt.timedelta(seconds=78)]
    assert missed["window_end"].to_list() == [START + dt.timedelta(seconds=78) + gap]
