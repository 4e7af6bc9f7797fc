"""Windows at their boundaries: events in the last unit before a window's end, arriving once
the watermark has reached that unit, and events exactly at the end.

With ``delay=0`` and one-row batches the watermark before each row is the largest event time
before it, so which rows count in their window and which are late is known row by row. The
reference is polars over the input in arrival order: ``cum_max`` of the event times gives the
watermark each row meets; a (row, window) pair is late when the window's end plus the allowed
lateness is at or behind it, and every other pair is counted in its window, exactly once.

A window that fires one time unit early (at watermark + 1 µs, or + 1 ms) counts the event at
``end - 1`` that arrives when the watermark is ``end - 1`` in a second emission of the same
window: these tests see that as a window emitted twice and as counts that differ from polars.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import polars as pl
import pytest

import arrowflow as af
from arrowflow._foundation.watermarks import IDLE, NO_WATERMARK
from arrowflow._graph.physical import MAIN, OpSpec
from arrowflow._runtime.operators import Operator
from arrowflow._runtime.window_op import WatermarkOp
from arrowflow.io.memory import CollectSink

KEY = "user"
SIZE_MS = 1_000
PER_MS = {"ms": 1, "us": 1_000, "ns": 1_000_000}


def boundary_events(
    unit: str, *, windows: int = 10, seed: int = 3, epoch_ms: int = 1_700_000_000_000
) -> pl.DataFrame:
    """For each window end E (in the column's unit u), in shuffled order: E-1u twice, E-2u,
    E-1ms, E-1ms+1u and the window's middle; then, shuffled, E, E+1u, E+1ms-1u, E+1ms and again E-1u,
    E-2u, E-1ms (on time or late, depending on where the shuffle put them); keys and amounts
    random."""
    rng = np.random.default_rng(seed)
    one_ms = PER_MS[unit]
    size = SIZE_MS * one_ms
    base = epoch_ms * one_ms // size * size + 7 * size  # a window boundary
    ts: list[int] = []
    for k in range(windows):
        end = base + (k + 1) * size
        before = [end - 1, end - 1, end - 2, end - one_ms, end - one_ms + 1, end - size // 2]
        rng.shuffle(before)
        after = [
            end,
            end - 1,
            end - one_ms,
            end + 1,
            end - 2,
            end + one_ms - 1,
            end + one_ms,
            end - 1,
        ]
        rng.shuffle(after)
        ts += [end - size + int(rng.integers(0, size // 2)), *before, *after]
    n = len(ts)
    return pl.DataFrame(
        {
            "ts": pl.Series(ts, dtype=pl.Int64).cast(pl.Datetime(unit)),
            KEY: rng.integers(0, 3, n),
            "amount": rng.integers(1, 1000, n),
        }
    )


def reference(
    df: pl.DataFrame, unit: str, *, every_ms: int, lateness_ms: int, delay_ms: int = 0
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(windows, late pairs) that one-row batches with ``delay`` must give, from polars alone."""
    one_ms = PER_MS[unit]
    size, every, lateness = SIZE_MS * one_ms, every_ms * one_ms, lateness_ms * one_ms
    # The watermark is kept in microseconds (floored): for nanosecond columns it moves in µs.
    step = max(one_ms // 1000, 1)
    rows = (
        df.with_row_index("arrival")
        .with_columns(t=pl.col("ts").to_physical())
        .with_columns(watermark=(pl.col("t").cum_max().shift(1) // step * step - delay_ms * one_ms))
    )
    pairs = pl.concat(
        [
            rows.with_columns(start=(pl.col("t") // every) * every - j * every)
            for j in range(-(-size // every))
        ]
    ).filter(pl.col("t") < pl.col("start") + size)
    is_late = (pl.col("start") + size + lateness <= pl.col("watermark")).fill_null(False)
    pairs = pairs.with_columns(
        window_start=pl.col("start").cast(pl.Datetime(unit)),
        window_end=(pl.col("start") + size).cast(pl.Datetime(unit)),
    )
    windows = (
        pairs.filter(~is_late)
        .group_by(KEY, "window_start", "window_end")
        .agg(n=pl.len(), total=pl.col("amount").sum())
    )
    late = pairs.filter(is_late).select(*df.columns, "window_start", "window_end")
    return windows, late


def run(
    df: pl.DataFrame,
    spec: af.WindowSpec,
    *,
    workers: int,
    lateness: str | None,
    delay: str = "0s",
    state: str = "memory",
) -> tuple[pl.DataFrame, pl.DataFrame]:
    flow = af.Flow("window-boundaries")
    windowed = (
        flow.from_polars(df, splits=1)
        .with_watermark("ts", delay=delay)
        .key_by(KEY)
        .window(spec, allowed_lateness=lateness)
        .agg(n=pl.len(), total=pl.col("amount").sum(), name="w")
    )
    windowed.write_to(CollectSink(), name="out")
    windowed.side_output("late").write_to(CollectSink(), name="late")
    result = flow.run(workers=workers, batch_size=1, state=state)
    out = pl.concat(result.outputs["out"]) if result.outputs.get("out") else pl.DataFrame()
    late = pl.concat(result.outputs["late"]) if result.outputs.get("late") else pl.DataFrame()
    return out, late


def check(
    got: pl.DataFrame, late: pl.DataFrame, windows: pl.DataFrame, expected_late: pl.DataFrame
) -> None:
    keys = [KEY, "window_start"]
    assert got.select(keys).is_duplicated().sum() == 0, (
        "a window was emitted twice (it fired early)"
    )
    columns = [KEY, "window_start", "window_end", "n", "total"]
    want = windows.select(columns).sort(keys)
    assert got.height == want.height, f"{got.height} windows, polars says {want.height}"
    assert got.select(columns).sort(keys).equals(want.cast(got.select(columns).schema)), (
        "windows differ from polars"
    )
    order = ["ts", KEY, "amount", "window_start"]
    assert late.height == expected_late.height, (
        f"{late.height} late rows, polars says {expected_late.height}"
    )
    if late.height:
        assert (
            late.select(expected_late.columns)
            .sort(order)
            .equals(expected_late.sort(order).cast(late.select(expected_late.columns).schema))
        ), "late rows differ"


@pytest.mark.parametrize("unit", ["ms", "us", "ns"])
@pytest.mark.parametrize(("kind", "every_ms"), [("tumbling", SIZE_MS), ("sliding", 250)])
@pytest.mark.parametrize("lateness_ms", [0, 1])
def test_events_at_end_minus_one_unit_count_and_at_end_fire(
    unit: str, kind: str, every_ms: int, lateness_ms: int
) -> None:
    df = boundary_events(unit)
    check_boundaries(df, unit, kind, every_ms, lateness_ms)


@pytest.mark.parametrize("unit", ["ms", "ns"])
def test_boundaries_before_1970(unit: str) -> None:
    """Negative event times (December 1969): windows still floor towards the past, and the
    watermark of a job that has seen nothing yet is below every one of them."""
    df = boundary_events(unit, windows=12, seed=3, epoch_ms=-30 * 86_400_000)
    assert (df["ts"].to_physical() < 0).all()
    check_boundaries(df, unit, "sliding", 250, 0)


def check_boundaries(
    df: pl.DataFrame, unit: str, kind: str, every_ms: int, lateness_ms: int
) -> None:
    spec = (
        af.tumbling(f"{SIZE_MS}ms")
        if kind == "tumbling"
        else af.sliding(f"{SIZE_MS}ms", every=f"{every_ms}ms")
    )
    windows, expected_late = reference(df, unit, every_ms=every_ms, lateness_ms=lateness_ms)
    # The data must have both sides of the boundary: rows one unit before a window's end that
    # arrive when the watermark is exactly there (still counted) and after it reached the end.
    one_ms = PER_MS[unit]
    size = SIZE_MS * one_ms
    t = df["ts"].to_physical()
    watermark = t.cum_max().shift(1)
    at_edge = (t % size == size - 1) & (watermark == t)
    assert int(at_edge.sum()) >= 5, "no event at end - 1 unit meets a watermark at end - 1"
    assert expected_late.height >= 5, "the data must have late rows"
    got, late = run(df, spec, workers=0, lateness=None if lateness_ms == 0 else f"{lateness_ms}ms")
    check(got, late, windows, expected_late)


@pytest.mark.parametrize("unit", ["ms", "us"])
def test_a_delay_holds_the_watermark_back_by_exactly_that_much(unit: str) -> None:
    """delay=1ms: a row of a window still counts until an event at end + 1ms has been seen
    (the data has events at end + 1ms - 1u and at end + 1ms), and is late after that."""
    delay_ms = 1
    df = boundary_events(unit, seed=4)
    windows, expected_late = reference(df, unit, every_ms=SIZE_MS, lateness_ms=0, delay_ms=delay_ms)
    _, no_delay_late = reference(df, unit, every_ms=SIZE_MS, lateness_ms=0)
    assert 0 < expected_late.height < no_delay_late.height, (
        "the delay must change which rows are late"
    )
    got, late = run(
        df, af.tumbling(f"{SIZE_MS}ms"), workers=0, lateness=None, delay=f"{delay_ms}ms"
    )
    check(got, late, windows, expected_late)


@pytest.mark.parametrize("through_store", [False, True], ids=["buffered", "through-store"])
def test_windows_are_emitted_as_the_watermark_passes_their_end(
    through_store: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Streaming, not only at the end of the input: each window end is reached by its own
    one-row batch here, so the windows reach the next operator in as many batches as there
    are ends, in the order of their ends (the output of a bounded input alone cannot tell a
    window that fired on time from one that waited for the end of the input). The late port
    is not connected and the aggregation reads one column: late rows are only counted."""
    if through_store:
        import arrowflow._runtime.window_op as window_op

        monkeypatch.setattr(window_op, "BUFFER_ROWS", 1)
    df = boundary_events("ms", windows=8, seed=6)
    result, events = tapped_windows("window-emissions", df, SIZE_MS, batch_size=1)
    windows, expected_late = reference(df, "ms", every_ms=SIZE_MS, lateness_ms=0)
    got = pl.concat(result.outputs["out"])
    assert (
        got.sort(KEY, "window_start")
        .select(KEY, "window_start", "n")
        .equals(
            windows.sort(KEY, "window_start")
            .select(KEY, "window_start", "n")
            .cast(got.select(KEY, "window_start", "n").schema)
        )
    )
    metrics = result.metrics().filter(pl.col("kind") == "window")
    assert int(metrics["late"].sum()) == expected_late.height > 0
    # nothing reads the late port: its rows are counted as unconsumed (the run summary's)
    assert int(metrics["unconsumed"].sum()) == expected_late.height
    assert int(metrics["windows_fired"].sum()) == got.height
    # Each window end E comes out right after the first row with an event time >= E, before
    # the next row is read; only the last windows wait for the end of the input.
    assert_fired_on_time(events, windows["window_end"], df["ts"].max())


def assert_fired_on_time(
    events: list[tuple[str, Any]], ends: pl.Series, last: Any, lateness: dt.timedelta | None = None
) -> None:
    """Each window (of end E in ``ends``) came out right after the first input batch whose
    newest event is at or past E plus ``lateness``, before the next batch was read; those
    due only after the last event (``last``) at the end. ``events``: what ``taps`` logged."""
    lateness = lateness or dt.timedelta(0)
    due_at = ends.unique().sort() + lateness
    newest = None
    fired: list[object] = []
    for kind, value in events:
        if kind == "in":
            assert fired == [], f"windows due at {fired} fired late"
            fired = [due for due in due_at if (newest is None or newest < due) and due <= value]
            newest = value if newest is None else max(newest, value)
        elif value + lateness <= last:
            assert value + lateness in fired, f"window end {value} fired at the wrong batch"
            fired.remove(value + lateness)
    assert fired == [], f"windows due at {fired} fired late"


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_windows_of_batches_that_overlap_each_other_fire_as_the_watermark_passes(
    seed: int,
) -> None:
    """Batches of 9 rows, a third of the rows up to 3.5 windows behind the others and every
    fourth batch wholly behind, with an allowed lateness of 3 windows: a batch's window starts may overlap the upper part of a
    buffered chunk, its lower part, or lie inside it, so the write buffer cuts chunks and
    keeps the rest below, above or on both sides of the overlap. A rest given the wrong side
    or too narrow a range is fired early or held back: every window must come out right
    after the batch that moves the watermark past its end plus the lateness, once, with the
    events polars counts (a row is late when the newest event before it is at or past its
    window's end plus the lateness: delay 0)."""
    rng = np.random.default_rng(seed)
    n, batch, lateness = 900, 9, 3 * SIZE_MS
    behind = np.where(rng.random(n) < 0.33, rng.integers(1_000, 3_500, n), 0)
    # every fourth batch wholly from 1.2-2.6 windows back: its range lies inside or below
    # the buffered ones, whose rest is then above or on both sides
    old_batch = (np.arange(n) // batch) % 4 == 3
    behind = np.where(old_batch, np.repeat(rng.integers(1_200, 2_600, n // batch), batch), behind)
    t = (np.arange(n) * 100 - behind).astype(np.int64) + 1_700_000_000_000
    df = pl.DataFrame(
        {
            "ts": pl.Series(t).cast(pl.Datetime("ms")),
            KEY: rng.integers(0, 3, n),
            "amount": rng.integers(1, 1000, n),
        }
    )
    with pytest.warns(UserWarning, match="late rows"):
        result, events = tapped_windows(
            "overlapping-batches", df, SIZE_MS, batch_size=batch, lateness_ms=lateness
        )
    rows = df.with_columns(ms=pl.col("ts").dt.epoch("ms"))
    start = pl.col("ms") // SIZE_MS * SIZE_MS
    judged = rows.with_columns(
        late=(start + SIZE_MS + lateness <= pl.col("ms").cum_max().shift(1)).fill_null(False)
    )
    expected = (
        judged.filter(~pl.col("late"))
        .group_by(KEY, window_start=start.cast(pl.Datetime("ms")))
        .agg(n=pl.len())
    )
    assert judged["late"].sum() > 0, "the data has late rows"
    got = pl.concat(result.outputs["out"]).select(KEY, "window_start", "n")
    assert got.select(KEY, "window_start").is_duplicated().sum() == 0, "a window fired twice"
    assert got.sort(KEY, "window_start").equals(expected.sort(KEY, "window_start").cast(got.schema))
    # Each window end E comes out right after the first batch whose newest event is at or
    # past E plus the lateness, before the next batch is read; the last ones at the end.
    ends = expected.select(pl.col("window_start") + pl.duration(milliseconds=SIZE_MS))
    assert_fired_on_time(
        events, ends.to_series(), df["ts"].max(), dt.timedelta(milliseconds=lateness)
    )


@pytest.mark.parametrize("state", ["memory", "lmdb"])
@pytest.mark.parametrize(
    ("kind", "every_ms", "lateness_ms"), [("tumbling", SIZE_MS, 0), ("sliding", 250, 1)]
)
def test_boundaries_hold_for_windows_kept_in_the_state_store(
    state: str, kind: str, every_ms: int, lateness_ms: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same boundaries when every open window has gone through the state store (a write
    buffer of one row: in process, so the patch reaches the operator), on two backends."""
    import arrowflow._runtime.window_op as window_op

    monkeypatch.setattr(window_op, "BUFFER_ROWS", 1)
    df = boundary_events("us", windows=6, seed=9)
    spec = (
        af.tumbling(f"{SIZE_MS}ms")
        if kind == "tumbling"
        else af.sliding(f"{SIZE_MS}ms", every=f"{every_ms}ms")
    )
    windows, expected_late = reference(df, "us", every_ms=every_ms, lateness_ms=lateness_ms)
    got, late = run(
        df, spec, workers=0, lateness=f"{lateness_ms}ms" if lateness_ms else None, state=state
    )
    check(got, late, windows, expected_late)


def test_boundaries_hold_with_a_worker_process() -> None:
    """The same on a pool of one worker (watermarks cross a ring between reader and window)."""
    df = boundary_events("us", windows=6, seed=8)
    windows, expected_late = reference(df, "us", every_ms=SIZE_MS, lateness_ms=0)
    got, late = run(df, af.tumbling(f"{SIZE_MS}ms"), workers=1, lateness=None)
    check(got, late, windows, expected_late)


@pytest.mark.parametrize("batch_size", [3, 4])
def test_a_batch_of_two_windows_fires_the_due_one_before_the_next_batch(batch_size: int) -> None:
    """In-order events, several a batch: each batch's newest event is exactly the start of
    the next window (its end), so the batch's buffered windows straddle the watermark with
    the due one starting exactly at the firing limit. It must come out before the next batch
    is read, with polars' counts (no event is late: the input is in order)."""
    size_ms, windows = 1_000, 8
    base = 1_700_000_000_000 // size_ms * size_ms
    offsets = [100, 500, 1_000] if batch_size == 3 else [100, 400, 700, 1_000]
    ts = [base + k * size_ms + o for k in range(windows) for o in offsets]
    df = pl.DataFrame(
        {
            "ts": pl.Series(ts, dtype=pl.Int64).cast(pl.Datetime("ms")),
            KEY: [i % 2 for i in range(len(ts))],
        }
    )
    result, events = tapped_windows("window-batches", df, size_ms, batch_size=batch_size)
    expected = (
        df.group_by(KEY, pl.col("ts").dt.truncate(f"{size_ms}ms").alias("window_start"))
        .agg(n=pl.len())
        .sort(KEY, "window_start")
    )
    got = pl.concat(result.outputs["out"]).sort(KEY, "window_start")
    assert got.select(KEY, "window_start", "n").equals(
        expected.cast(got.select(KEY, "window_start", "n").schema)
    )
    assert sum(1 for kind, _ in events if kind == "in") == windows
    # After each batch, the windows that end at or before its newest event, and only those,
    # have come out before the next batch is read; the end of the input fires the rest.
    ends = sorted(set(got["window_end"].to_list()))
    emitted: set[object] = set()
    newest = None
    for kind, value in events:
        if kind == "in":
            if newest is not None:
                due = {end for end in ends if end <= newest}
                assert emitted == due, f"after the batch up to {newest}: {sorted(emitted)}"
            newest = value
        else:
            emitted.add(value)
    assert emitted == set(ends)


@pytest.mark.parametrize(
    ("second_delay", "lag_s"),
    [(None, 0), ("0s", 1), ("1s", 2)],
    ids=["forwarded", "own-watermark", "own-watermark-1s"],
)
def test_a_window_over_a_window_fires_as_the_input_passes_its_end(
    second_delay: str | None, lag_s: int
) -> None:
    """A second window over a window's output (event time: the first window's start) fires
    as the input passes its end, not only at the end of the input, with polars' totals. With
    the first window's forwarded watermark it fires at the first row at its end; with a
    watermark of its own (per worker: its input is a window, not a source) it waits for the
    first window whose start is ``delay`` past its end, which the first row one second past
    that closes."""
    start = dt.datetime(2024, 1, 1)
    df = pl.DataFrame(
        {"ts": pl.datetime_range(start, start + dt.timedelta(seconds=10), "250ms", eager=True)}
    ).with_columns(pl.lit(1).alias(KEY))
    events, tap_in, tap_out = taps()

    flow = af.Flow("window-of-windows")
    second = (
        flow.from_polars(df, splits=1)
        .map_batches(tap_in)
        .with_watermark("ts", delay="0s")
        .key_by(KEY)
        .window(af.tumbling("1s"))
        .agg(n=pl.len())
        .select(KEY, "n", ts=pl.col("window_start"))
    )
    if second_delay is not None:
        second = second.with_watermark("ts", delay=second_delay)
    (
        second.key_by(KEY)
        .window(af.tumbling("2s"))
        .agg(total=pl.col("n").sum())
        .map_batches(tap_out)
        .write_to(CollectSink(), name="out")
    )
    result = flow.run(workers=0, batch_size=1)
    expected = df.group_by(KEY, pl.col("ts").dt.truncate("2s").alias("window_start")).agg(
        total=pl.len()
    )
    got = pl.concat(result.outputs["out"])
    assert (
        got.select(KEY, "window_start", "total")
        .sort("window_start")
        .equals(expected.sort("window_start").cast(got.select(KEY, "window_start", "total").schema))
    )
    # Each end E of the second window comes out right after the row at E + lag.
    lag = dt.timedelta(seconds=lag_s)
    last = df["ts"].max()
    for number, (kind, value) in enumerate(events):
        if kind == "out" and value + lag <= last:
            assert events[number - 1] == ("in", value + lag), events[number - 3 : number + 1]
    assert sum(1 for kind, _ in events if kind == "out") == got.height


def test_an_own_watermark_takes_the_newest_event_of_a_batch() -> None:
    """With a 3 s delay, the row at 6 s fires the first windows of 0, 1 and 2 s in one batch;
    the second window's own watermark (per worker) moves to the newest of their starts, so
    the outer window they close comes out before the next row is read (the oldest start would
    hold it back to the end). Totals: polars' counts over the input."""
    start = dt.datetime(2024, 1, 1)
    ts = [start + dt.timedelta(seconds=s) for s in (0.5, 1.5, 2.5, 6.0, 9.0, 12.0)]
    df = pl.DataFrame({"ts": ts, KEY: [1] * len(ts)})
    events, tap_in, tap_out = taps()

    flow = af.Flow("own-watermark")
    (
        flow.from_polars(df, splits=1)
        .map_batches(tap_in)
        .with_watermark("ts", delay="3s")
        .key_by(KEY)
        .window(af.tumbling("1s"))
        .agg(n=pl.len())
        .select(KEY, "n", ts=pl.col("window_start"))
        .with_watermark("ts", delay="0s")
        .key_by(KEY)
        .window(af.tumbling("2s"))
        .agg(total=pl.col("n").sum())
        .map_batches(tap_out)
        .write_to(CollectSink(), name="out")
    )
    result = flow.run(workers=0, batch_size=1)
    got = pl.concat(result.outputs["out"])
    expected = df.group_by(KEY, pl.col("ts").dt.truncate("2s").alias("window_start")).agg(
        total=pl.len()
    )
    assert (
        got.select(KEY, "window_start", "total")
        .sort("window_start")
        .equals(expected.sort("window_start").cast(got.select(KEY, "window_start", "total").schema))
    )
    # The row at 6 s (watermark 3 s) fires the first windows of 0, 1 and 2 s at once: the
    # second watermark is 2 s, so the outer window [0 s, 2 s) comes out before 9 s is read.
    first_out = next(number for number, (kind, _) in enumerate(events) if kind == "out")
    assert events[first_out] == ("out", start + dt.timedelta(seconds=2))
    assert events[first_out - 1] == ("in", start + dt.timedelta(seconds=6)), events


def tapped_windows(
    name: str, df: pl.DataFrame, size_ms: int, *, batch_size: int, lateness_ms: int = 0
) -> tuple[af.RunResult, list[tuple[str, object]]]:
    """Tumbling ``size_ms`` windows (delay 0) over ``df`` in process, with what went in and
    out in order: ("in", newest ts of a batch read) and ("out", end of a window fired)."""
    events, tap_in, tap_out = taps()

    flow = af.Flow(name)
    (
        flow.from_polars(df, splits=1)
        .map_batches(tap_in)
        .with_watermark("ts", delay="0s")
        .key_by(KEY)
        .window(af.tumbling(f"{size_ms}ms"), allowed_lateness=f"{lateness_ms}ms")
        .agg(n=pl.len(), name="w")
        .map_batches(tap_out)
        .write_to(CollectSink(), name="out")
    )
    return flow.run(workers=0, batch_size=batch_size), events


def taps() -> tuple[list[tuple[str, object]], Any, Any]:
    """What goes in and out of windows, in order (in process, workers=0: a plain list):
    ("in", newest ts of a batch read) by ``tap_in``, ("out", end of a window fired) by
    ``tap_out``; both are map_batches functions that return their batch."""
    events: list[tuple[str, object]] = []

    def tap_in(batch: pl.DataFrame) -> pl.DataFrame:
        if batch.height:
            events.append(("in", batch["ts"].max()))
        return batch

    def tap_out(batch: pl.DataFrame) -> pl.DataFrame:
        events.extend(("out", end) for end in sorted(set(batch["window_end"].to_list())))
        return batch

    return events, tap_in, tap_out


class _WatermarkRecorder(Operator):
    """The operator after a watermark: keeps every watermark it is sent, in order."""

    def __init__(self) -> None:
        super().__init__(OpSpec("after", "chain", [], pl.Schema()))
        self.seen: list[int] = []

    def receive_watermark(self, value: int, index: int) -> None:
        self.seen.append(value)

    def process(self, batch: pl.DataFrame, index: int) -> None:
        pass


class _Clock:
    """The monotonic clock window_op reads, moved by hand (no test waits on real time)."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    import arrowflow._runtime.window_op as window_op

    fake = _Clock()
    monkeypatch.setattr(window_op, "time", fake)
    return fake


def per_worker_watermark(delay_ms: int, idle_ms: int) -> tuple[WatermarkOp, _WatermarkRecorder]:
    """A watermark in per-worker mode (its input is not a source) with ``idle_timeout``."""
    dtype = pl.Datetime("us")
    spec = OpSpec(
        "wm",
        "watermark",
        [],
        pl.Schema({"ts": dtype}),
        params={"column": "ts", "dtype": dtype, "delay_ms": delay_ms, "idle_timeout_ms": idle_ms},
    )
    op, after = WatermarkOp(spec), _WatermarkRecorder()
    op.connect(MAIN, after, 0)
    op.open()
    return op, after


def stamps(ts: list[dt.datetime]) -> pl.DataFrame:
    """A batch of event times, the per-worker watermark's input."""
    return pl.DataFrame({"ts": ts}, schema={"ts": pl.Datetime("us")})


def go_idle(op: WatermarkOp, clock: _Clock, idle_ms: int) -> None:
    clock.now += idle_ms / 1000 * 1.5
    op.tick()


def test_a_per_worker_watermark_back_from_idle_announces_its_watermark_again(
    clock: _Clock,
) -> None:
    """Per worker, ``idle_timeout`` without data makes the watermark idle (IDLE downstream, so
    it holds no window back); the next rows make it active again, and it re-sends the
    watermark it had (also when they do not advance it), once. It can go idle again after.
    Expected values: the newest event time read so far minus the delay (polars)."""
    delay_ms, idle_ms = 250, 30
    op, after = per_worker_watermark(delay_ms, idle_ms)
    start = dt.datetime(2024, 1, 1)
    reads = [
        [start + dt.timedelta(seconds=s) for s in (4, 10, 2)],
        [start + dt.timedelta(seconds=5)],  # after idle, older than the newest: no advance
        [start + dt.timedelta(seconds=7)],  # still no advance, active: nothing sent
        [start + dt.timedelta(seconds=12)],  # after idle again, advances
    ]

    def expected(upto: int) -> int:
        newest = pl.Series([t for read in reads[:upto] for t in read], dtype=pl.Datetime("us"))
        return int(newest.dt.epoch("us").max()) - delay_ms * 1000

    op.receive(stamps(reads[0]), 0)
    assert after.seen == [expected(1)]
    clock.now += idle_ms / 1000 / 2
    op.tick()  # data came half the timeout ago: not idle
    assert after.seen == [expected(1)] and not op.idle
    go_idle(op, clock, idle_ms)
    assert after.seen == [expected(1), IDLE] and op.idle and op.went_idle == 1
    op.receive(stamps(reads[1]), 0)
    assert after.seen == [expected(1), IDLE, expected(2)] and not op.idle
    op.receive(stamps(reads[2]), 0)
    assert after.seen == [expected(1), IDLE, expected(2)]
    go_idle(op, clock, idle_ms)
    assert after.seen[-1] == IDLE and op.went_idle == 2
    op.receive(stamps(reads[3]), 0)
    # back from idle: the old watermark first (active again), then the advance
    assert after.seen[3:] == [IDLE, expected(3), expected(4)]
    assert expected(4) == int(pl.Series([reads[3][0]]).dt.epoch("us")[0]) - delay_ms * 1000


def test_a_per_worker_watermark_idle_before_any_row_sends_no_empty_watermark(
    clock: _Clock,
) -> None:
    """Idle before its first row, a watermark has none to re-send: the first rows send the
    watermark they make and nothing else (never the reserved 'no watermark' value)."""
    op, after = per_worker_watermark(0, 30)
    go_idle(op, clock, 30)
    assert after.seen == [IDLE] and op.idle
    ts = dt.datetime(2024, 1, 1, 0, 0, 3)
    op.receive(stamps([ts]), 0)
    assert after.seen == [IDLE, int(pl.Series([ts]).dt.epoch("us")[0])]
    assert NO_WATERMARK not in after.seen and not op.idle
