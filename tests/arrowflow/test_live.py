"""Watching jobs: job.metrics(), job.results(stream), history, head/collect(limit), progress
bars, the job's HTML view, and checkpoints/state as DataFrames.

Results are checked against polars on the same data; the live results of a job that loses a
worker to kill -9 and restarts must hold every row exactly once.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

import arrowflow as af
from arrowflow._api.live import SETTLED
from arrowflow._runtime.checkpoints import CheckpointStorage
from arrowflow.errors import ArrowflowError, PlanError
from arrowflow.io.files import FileSource
from arrowflow.testing import CollectingSink, assert_frame_equal_unordered


def slow(batch: pl.DataFrame) -> pl.DataFrame:
    time.sleep(0.02)
    return batch


def events(n: int, seed: int = 3) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    return pl.DataFrame(
        {"event_id": np.arange(n), "user": rng.integers(0, 50, n), "amount": rng.random(n)}
    )


def wait_for(condition: Any, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


# ---------------------------------------------------------------------- metrics and results
@pytest.mark.parametrize("workers", [0, 2])
def test_metrics_and_results_of_a_finished_job_match_polars(workers: int) -> None:
    df = events(40_000)
    flow = af.Flow("live")
    big = flow.from_polars(df, splits=8).filter(pl.col("amount") > 0.25)
    per_user = big.key_by("user").agg(n=pl.len(), total=pl.col("amount").sum())
    per_user.write_to(CollectingSink())
    job = flow.start(workers=workers, results=[big])
    result = job.wait(120)
    assert result.status == "finished"

    expected_big = df.filter(pl.col("amount") > 0.25)
    expected = expected_big.group_by("user").agg(n=pl.len(), total=pl.col("amount").sum())
    assert_frame_equal_unordered(job.results(per_user), expected, check_dtypes=False)
    assert_frame_equal_unordered(job.results(big), expected_big)

    metrics = job.metrics()
    rows = {r["operator"]: r for r in metrics.iter_rows(named=True)}
    assert rows[big.flow.nodes[0].id]["rows_in"] == df.height
    assert rows["filter"]["rows_out"] == expected_big.height
    assert rows["agg"]["rows_in"] == expected_big.height
    assert rows["agg"]["rows_out"] == expected.height
    assert not any(op.endswith(".results") for op in rows), "the taps are not the user's operators"
    assert result.rows_out == expected.height  # the sink's rows; taps don't count
    by_worker = job.metrics(by_worker=True)
    assert by_worker.get_column("worker").n_unique() == max(1, workers)


def test_results_of_an_unwatched_stream_say_how_to_ask_for_them() -> None:
    flow = af.Flow("unwatched")
    source = flow.from_polars(events(100))
    middle = source.filter(pl.col("amount") > 0.5)
    middle.select("user").write_to(CollectingSink())
    job = flow.start(workers=0)
    job.wait(60)
    with pytest.raises(ArrowflowError, match=r"results=\[stream"):
        job.results(middle)
    quiet = flow.start(workers=0, results=False)
    quiet.wait(60)
    assert quiet.taps == {} and quiet.metrics().get_column("kind").to_list() == [
        "source",
        "chain",
        "sink",
    ]
    with pytest.raises(PlanError, match="results_limit"):
        flow.start(results_limit=0)
    with pytest.raises(PlanError, match="unknown options"):
        flow.start(worker=2)


def test_results_keep_the_newest_rows_up_to_the_limit() -> None:
    df = events(10_000)
    flow = af.Flow("limited")
    stream = flow.from_polars(df, splits=10)
    stream.write_to(CollectingSink())
    job = flow.start(workers=0, results_limit=1_500, batch_size=700)
    job.wait(60)
    got = job.results(stream)
    assert got.height == 1_500
    # one process reads the splits in order: the newest rows are the last ones
    assert got.get_column("event_id").to_list() == list(range(8_500, 10_000))
    assert job.control.results.count(job.taps[stream.id][0]) == 10_000


@pytest.mark.injects_faults
@pytest.mark.filterwarnings("ignore:.*restarting from the newest checkpoint")
def test_live_results_hold_every_row_once_across_a_kill_9_and_restart(
    tmp_path: Path, worker_pids: Callable[[], list[int]]
) -> None:
    df = events(45_000)  # long enough for 6+ checkpoints, however fast the workers start
    flow = af.Flow("restarting")
    stream = flow.from_polars(df, splits=45).map_batches(slow)
    stream.write_parquet(str(tmp_path / "out"))
    job = flow.start(
        workers=2, checkpoint_dir=str(tmp_path / "ckpt"), checkpoint_every="150ms", batch_size=500
    )
    wait_for(lambda: len(job.progress["checkpoints"]) >= 2, what="two checkpoints")
    wait_for(lambda: job.results(stream).height > 0, what="first live results")
    pids = worker_pids()
    assert len(pids) == 2, pids
    os.kill(pids[1], signal.SIGKILL)
    result = job.wait(180)
    assert result.restarts == 1
    got = job.results(stream)
    assert got.get_column("event_id").n_unique() == got.height, "a row shows twice"
    assert_frame_equal_unordered(got, df)
    written = pl.read_parquet(str(tmp_path / "out" / "*.parquet"))
    assert_frame_equal_unordered(written, df)
    assert job.progress["restarts"] == 1
    results, tap = job.control.results, job.taps[stream.id][0]
    assert results.count(tap) == df.height, "rows produced, counted once across the restart"
    # Epochs before the oldest kept checkpoint (3 are kept) are folded: the record does not
    # grow with the job's checkpoints (one entry each before).
    epochs = [epoch for epoch in results.produced[tap] if epoch != SETTLED]
    assert max(result.checkpoints) > 5 and len(epochs) <= 4, results.produced[tap]


def test_live_counts_stay_exact_when_a_restart_goes_back_to_an_older_checkpoint() -> None:
    """Counts are folded only below the oldest kept checkpoint: a restart that skips damaged
    newer ones still rewinds exactly, and one from scratch starts the count again."""
    from arrowflow._api.live import LiveResults
    from arrowflow._foundation.arrowipc import frame_to_ipc

    def publish(results: LiveResults, epoch: int, n: int) -> None:
        results.add("tap", 0, epoch, frame_to_ipc(pl.DataFrame({"x": range(n)})), n)

    results = LiveResults()
    results.rewind(0)
    for epoch in range(7):  # 10, 11, ..., 16 rows after checkpoints 0..6
        publish(results, epoch, 10 + epoch)
    results.settle(4)  # checkpoints 4, 5 and 6 are kept
    publish(results, 3, 100)  # a late flush of an epoch already folded
    assert results.count("tap") == sum(range(10, 17)) + 100
    assert sorted(results.produced["tap"]) == [SETTLED, 4, 5, 6]
    results.rewind(5)  # 6 was damaged: back to 5, so epochs 5 and 6 are produced again
    assert results.count("tap") == sum(range(10, 15)) + 100
    results.rewind(0)  # every kept checkpoint damaged: from scratch
    assert results.count("tap") == 0


# ---------------------------------------------------------------------- a live streaming job
SCHEMA = {"ts": pl.Datetime("us"), "user": pl.Int64, "amount": pl.Float64}


@pytest.mark.parametrize("workers", [0, 2])
def test_a_live_job_tails_a_file_windows_it_and_shows_late_and_malformed_rows(
    tmp_path: Path, workers: int
) -> None:
    """With 2 workers one reads the only split and the other has none: that one is idle (as
    in Flink), so the windows still fire on the reading worker's watermark."""
    log = tmp_path / "events.jsonl"
    log.write_bytes(b"")
    start = datetime(2026, 1, 1, tzinfo=timezone.utc).replace(tzinfo=None)
    lines: list[dict[str, Any]] = []
    bad = {130: b'{"ts": "not a time", "user": 1, "amount": 2}', 410: b'{"ts": '}
    late_at = {300: 5, 520: 100}  # event i carries the time of event j: far behind the watermark

    def writer() -> None:
        with log.open("ab") as out:
            for i in range(600):
                if i in bad:
                    out.write(bad[i] + b"\n")
                else:
                    j = late_at.get(i, i)
                    if i in late_at:
                        # late for sure: once the window it belongs in has fired (otherwise,
                        # read in one batch with the events before it, it would be on time)
                        out.flush()
                        fired = (start + timedelta(seconds=j // 60 * 60), i % 3)
                        wait_for(
                            lambda fired=fired: (
                                fired
                                in set(
                                    zip(
                                        job.results(windows).get_column("window_start").to_list(),
                                        job.results(windows).get_column("user").to_list(),
                                        strict=True,
                                    )
                                )
                            ),
                            what=f"the window of late event {i} to fire",
                        )
                    row = {
                        "ts": (start + timedelta(seconds=j)).isoformat(),
                        "user": i % 3,
                        "amount": float(i),
                    }
                    lines.append(row)
                    out.write(json.dumps(row).encode() + b"\n")
                if i % 20 == 0:
                    out.flush()
                    time.sleep(0.02)

    flow = af.Flow("tailing-windows")
    raw = flow.tail(str(log), format="ndjson", schema=SCHEMA, poll_interval="50ms")
    windows = (
        raw.with_watermark("ts", delay="10s")
        .key_by("user")
        .window(af.tumbling("60s"))
        .agg(n=pl.len(), total=pl.col("amount").sum())
    )
    windows.write_parquet(str(tmp_path / "windows"))
    late = windows.side_output("late")
    malformed = raw.side_output("malformed")
    job = flow.start(
        workers=workers,
        results=[late, malformed],
        checkpoint_dir=str(tmp_path / "ckpt"),
        checkpoint_every="200ms",
    )
    thread = threading.Thread(target=writer)
    thread.start()
    thread.join()
    # the last good event is at start + 599 s; with a 10 s delay every window ending by 589 s fires
    wait_for(lambda: job.results(windows).height >= 27, what="fired windows")  # 9 windows x 3 users
    wait_for(lambda: job.results(malformed).height == 2, what="malformed rows")
    wait_for(lambda: job.results(late).height == 2, what="late rows")

    def window_metrics() -> dict[str, Any]:
        return job.metrics().filter(pl.col("kind") == "window").row(0, named=True)

    # counters arrive twice a second; the rows may come sooner (with a checkpoint)
    wait_for(lambda: window_metrics()["late"] == 2, what="the late counter")
    window = window_metrics()
    assert window["watermark"] is not None and window["lag_s"] > 0
    # the history is sampled from the same counters: wait until it has seen every good row
    # (on a loaded machine the last sample can trail the rows by one interval)
    wait_for(
        lambda: job.history().height >= 2 and job.history().get_column("rows_in").max() == 598,
        what="the history's rows_in",
    )
    html = job._repr_html_()
    assert "running" in html and "window" in html
    job.stop()
    assert job.status == "stopped"

    frame = pl.DataFrame(
        lines, schema={"ts": pl.String, "user": pl.Int64, "amount": pl.Float64}
    ).with_columns(pl.col("ts").str.to_datetime(time_unit="us"))
    on_time = frame.filter(pl.col("amount").cast(pl.Int64).is_in(list(late_at)).not_())
    expected = (
        on_time.with_columns(window_start=pl.col("ts").dt.truncate("60s"))
        .group_by("user", "window_start")
        .agg(n=pl.len(), total=pl.col("amount").sum())
        .filter(pl.col("window_start") + pl.duration(seconds=60) <= start + timedelta(seconds=589))
    )
    got = job.results(windows)
    fired = got.filter(pl.col("window_end") <= start + timedelta(seconds=589))
    assert_frame_equal_unordered(
        fired.select("user", "window_start", "n", "total"), expected, check_dtypes=False
    )
    assert sorted(job.results(late).get_column("amount").to_list()) == [300.0, 520.0]
    assert sorted(job.results(malformed).get_column("line").to_list()) == [131, 411]
    history = job.history()
    assert history.height >= 2 and history.get_column("rows_in").max() == 598


# ---------------------------------------------------------------------- head / collect(limit)
class CountingFiles(FileSource):
    """A file source that records which splits were opened (this process only)."""

    opened: list[str] = []

    def open_reader(self, split: Any, position: Any, *, batch_size: int | None) -> Any:
        CountingFiles.opened.append(split.split_id)
        return super().open_reader(split, position, batch_size=batch_size)


def test_head_reads_only_as_much_input_as_it_needs(tmp_path: Path) -> None:
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(40):
        events(5_000, seed=i).with_columns(file=pl.lit(i)).write_parquet(
            folder / f"part-{i:03d}.parquet"
        )
    flow = af.Flow("peek")
    CountingFiles.opened.clear()
    stream = flow.source(CountingFiles("parquet", str(folder / "*.parquet")))
    picked = stream.filter(pl.col("amount") > 0.5).with_columns(double=pl.col("amount") * 2)
    head = picked.head(7)
    assert head.height == 7
    assert head.columns == ["event_id", "user", "amount", "file", "double"]
    first = pl.read_parquet(folder / "part-000.parquet").filter(pl.col("amount") > 0.5).head(7)
    assert head.get_column("event_id").to_list() == first.get_column("event_id").to_list()
    assert len(CountingFiles.opened) == 1, CountingFiles.opened

    CountingFiles.opened.clear()
    assert picked.collect(limit=12_000).height == 12_000  # ~2,500 rows per file pass the filter
    assert 4 <= len(CountingFiles.opened) <= 6
    assert picked.collect(limit=0).columns == head.columns
    with pytest.raises(PlanError, match="this process"):
        picked.collect(limit=5, workers=2)


def test_head_of_an_aggregation_reads_everything_and_is_right() -> None:
    df = events(20_000)
    flow = af.Flow("head-agg")
    agg = flow.from_polars(df, splits=4).key_by("user").agg(n=pl.len())
    head = agg.head(5)
    assert head.height == 5
    expected = df.group_by("user").agg(n=pl.len())
    assert head.join(expected, on=["user", "n"], how="semi").height == 5, (
        "every row is a user's total"
    )


# ---------------------------------------------------------------------- progress bars
def test_run_shows_a_progress_bar_when_asked(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    df = events(20_000)
    flow = af.Flow("progress")
    flow.from_polars(df, splits=12).map_batches(slow).write_parquet(str(tmp_path / "out"))
    result = flow.run(workers=0, progress=True)
    assert result.rows_in == 20_000
    err = capfd.readouterr().err
    assert "progress" in err and "12/12" in err and "splits" in err and "20,000 rows" in err

    flow.run(workers=0, progress=False)
    assert capfd.readouterr().err == ""


def test_progress_is_off_by_default_when_nobody_watches(monkeypatch: pytest.MonkeyPatch) -> None:
    from arrowflow._api.progress import wanted

    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv("ARROWFLOW_PROGRESS", "0")
    assert wanted(None) is False
    assert wanted(True) is True
    monkeypatch.delenv("ARROWFLOW_PROGRESS")
    monkeypatch.setenv("CI", "true")
    assert wanted(None) is False


# ---------------------------------------------------------------------- the job's view
def test_job_html_shows_status_operators_checkpoints_and_a_chart(tmp_path: Path) -> None:
    df = events(20_000)
    flow = af.Flow("viewed")
    agg = flow.from_polars(df, splits=20).map_batches(slow).key_by("user").agg(n=pl.len())
    agg.write_to(CollectingSink())
    job = flow.start(workers=0, checkpoint_dir=str(tmp_path / "ckpt"), checkpoint_every="100ms")
    job.wait(120)
    html = job._repr_html_()
    assert "viewed" in html and "finished" in html
    for op in ("from_polars", "map_batches", "agg"):
        assert f">{op}<" in html
    assert "last checkpoint" in html and "<svg" in html and "throughput" in html
    assert ">20,000<" in html  # rows into the agg, formatted

    # The text form (str(job), and the text/plain beside the live view's HTML): the same
    # counts, one aligned line per operator.
    text = str(job)
    assert text.startswith("Job 'viewed': finished") and "last checkpoint" in text
    lines = text.splitlines()
    table = lines[next(i for i, line in enumerate(lines) if line.startswith("operator")) :]
    assert table[0].split()[:4] == ["operator", "kind", "rows_in", "rows_out"]
    rows = {line.split()[0]: line.split() for line in table[1:]}
    assert rows["from_polars"][2] == "20,000" and rows["agg"][2] == "20,000"
    # each checkpoint emits the keys it updated: every user at least once
    assert int(rows["agg"][3].replace(",", "")) >= df["user"].n_unique()

    from arrowflow._api.jobview import status_line

    line = status_line(job)
    assert line.startswith("viewed: finished") and "20,000 rows" in line


def test_watch_in_a_terminal_prints_status_lines_until_the_end() -> None:
    import io

    flow = af.Flow("watched")
    flow.from_polars(events(5_000), splits=10).map_batches(slow).write_to(CollectingSink())
    job = flow.start(workers=0)
    out = io.StringIO()
    result = job.watch(interval=0.05, file=out)
    assert result is not None and result.status == "finished"
    lines = out.getvalue().splitlines()
    assert len(lines) >= 2 and lines[-1].startswith("watched: finished")


# ---------------------------------------------------------------------- checkpoints and state
def test_checkpoints_and_state_as_dataframes_and_sql(tmp_path: Path) -> None:
    df = events(10_000)
    flow = af.Flow("stateful")
    counts = (
        flow.from_polars(df, splits=5)
        .key_by("user")
        .agg(n=pl.len(), total=pl.col("amount").sum(), name="per-user")
    )
    counts.write_parquet(str(tmp_path / "out"))
    ckpt = str(tmp_path / "ckpt")
    job = flow.start(workers=2, state="lmdb", checkpoint_dir=ckpt)
    job.wait(120)
    listing = job.checkpoints()
    assert listing.height >= 1 and listing.get_column("final").to_list()[-1] is True
    on_disk = sorted(
        int(p.parent.name.removeprefix("chk-"))
        for p in (tmp_path / "ckpt").glob("chk-*/_MANIFEST.json")
    )
    assert on_disk  # the manifests written; the listing shows exactly those
    assert sorted(listing.get_column("id").to_list()) == on_disk
    expected = df.group_by("user").agg(n=pl.len(), total=pl.col("amount").sum())
    assert_frame_equal_unordered(job.state("per-user"), expected, check_dtypes=False)
    top = job.query_state('SELECT "user", n FROM "per-user" ORDER BY n DESC, "user" LIMIT 3')
    assert (
        top.to_dicts()
        == expected.sort(["n", "user"], descending=[True, False])
        .head(3)
        .select("user", "n")
        .to_dicts()
    )
    assert af.query_state(ckpt, 'SELECT count(*) AS keys FROM "per-user"').item() == expected.height

    plain = af.Flow("no-ckpt")
    plain.from_polars(df).write_to(CollectingSink())
    bare = plain.start(workers=0)
    bare.wait(60)
    with pytest.raises(ArrowflowError, match="without a checkpoint_dir"):
        bare.checkpoints()


def test_head_of_a_tailed_file_returns_what_is_there_after_the_timeout(tmp_path: Path) -> None:
    log = tmp_path / "few.jsonl"
    log.write_text(
        "".join(json.dumps({"id": i, "user": i % 2, "amount": i / 2}) + "\n" for i in range(3))
    )
    flow = af.Flow("peek-tail")
    lines = flow.tail(
        str(log),
        format="ndjson",
        schema={"id": pl.Int64, "user": pl.Int64, "amount": pl.Float64},
        poll_interval="50ms",
    )
    assert lines.head(2).get_column("id").to_list() == [0, 1]  # enough rows: at once
    started = time.monotonic()
    few = lines.head(10, timeout="1s")
    assert few.get_column("id").to_list() == [0, 1, 2]
    assert time.monotonic() - started >= 1.0
    with pytest.raises(PlanError, match="never end"):
        lines.collect()


@pytest.mark.injects_faults
@pytest.mark.filterwarnings("ignore:.*restarting from the newest checkpoint")
def test_a_restart_goes_back_to_the_checkpoint_the_run_started_from(
    tmp_path: Path, worker_pids: Callable[[], list[int]]
) -> None:
    """A run restored from an older checkpoint (by id) that loses a worker before its own
    first checkpoint restarts from that same checkpoint, not from a newer one of another run."""
    df = events(30_000)
    flow = af.Flow("restarting")
    flow.from_polars(df, splits=30).map_batches(slow).write_parquet(str(tmp_path / "out"))
    first = flow.start(
        workers=0, checkpoint_dir=str(tmp_path / "ckpt"), checkpoint_every="100ms", batch_size=500
    )
    wait_for(lambda: len(first.progress["checkpoints"]) >= 3, what="the first run's checkpoints")
    first.stop()
    oldest = CheckpointStorage(str(tmp_path / "ckpt")).checkpoint_ids()[-1]
    assert oldest < CheckpointStorage(str(tmp_path / "ckpt")).checkpoint_ids()[0]
    job = flow.start(
        workers=2,
        checkpoint_dir=str(tmp_path / "ckpt"),
        checkpoint_every="60s",
        batch_size=500,
        restore=oldest,
    )
    wait_for(lambda: job.progress["rows_in"] > 3_000, what="rows of the second run")
    pids = worker_pids()
    assert len(pids) == 2, pids
    os.kill(pids[1], signal.SIGKILL)
    result = job.wait(180)
    assert result.restarts == 1 and result.restored_from == oldest


@pytest.mark.injects_faults
@pytest.mark.filterwarnings("ignore:.*restarting from the newest checkpoint")
def test_a_restart_never_restores_an_older_runs_checkpoint(
    tmp_path: Path, worker_pids: Callable[[], list[int]]
) -> None:
    """A run started with restore=None in a directory holding another run's checkpoints, that
    loses a worker before its own first checkpoint, restarts from scratch, not from those."""
    df = events(30_000)

    def build(out: str) -> tuple[af.Flow, Any]:
        flow = af.Flow("restarting")
        stream = flow.from_polars(df, splits=30).map_batches(slow)
        stream.write_parquet(out)
        return flow, stream

    flow, _ = build(str(tmp_path / "out1"))
    first = flow.start(
        workers=0, checkpoint_dir=str(tmp_path / "ckpt"), checkpoint_every="100ms", batch_size=500
    )
    wait_for(lambda: len(first.progress["checkpoints"]) >= 2, what="the first run's checkpoints")
    first.stop()
    flow, stream = build(str(tmp_path / "out2"))
    job = flow.start(
        workers=2,
        checkpoint_dir=str(tmp_path / "ckpt"),
        checkpoint_every="60s",
        batch_size=500,
        restore=None,
    )
    wait_for(lambda: job.results(stream).height > 3_000, what="rows of the second run")
    pids = worker_pids()
    assert len(pids) == 2, pids
    os.kill(pids[1], signal.SIGKILL)
    result = job.wait(180)
    assert result.restarts == 1 and result.restored_from is None
    assert_frame_equal_unordered(job.results(stream), df)
    assert_frame_equal_unordered(pl.read_parquet(str(tmp_path / "out2" / "*.parquet")), df)


def test_progress_where_nothing_redraws_is_one_line_at_the_end(tmp_path: Path) -> None:
    """stderr a pipe (nbconvert without widgets, CI logs): no bar refreshed many times over,
    one line at the end."""
    import subprocess
    import sys
    import textwrap

    script = tmp_path / "job.py"
    script.write_text(
        textwrap.dedent(f"""
        import time, polars as pl, arrowflow as af
        df = pl.DataFrame({{"k": list(range(6_000)), "v": [1.0] * 6_000}})
        def slow(batch):
            time.sleep(0.1)
            return batch
        flow = af.Flow("quiet-progress")
        flow.from_polars(df, splits=12).map_batches(slow, schema=df.schema).write_parquet({str(tmp_path / "out")!r})
        flow.run(workers=0, progress=True, checkpoint_dir={str(tmp_path / "ck")!r})
    """)
    )
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]  # splits on \r too
    assert len(lines) == 1, lines
    assert lines[0].startswith("quiet-progress: 12/12 splits, 6,000 rows in "), lines
    assert "rows/s" in lines[0] and "1 checkpoint" in lines[0]


def test_job_metrics_put_what_a_user_reads_first_in_the_first_8_columns(tmp_path: Path) -> None:
    """A notebook shows 8 columns of a wide frame: counts, rows set aside, event-time lag."""
    start = datetime(2024, 1, 1, tzinfo=timezone.utc)
    rng = np.random.default_rng(5)
    seconds = rng.permutation(3_600)
    df = pl.DataFrame(
        {"ts": [start + timedelta(seconds=int(s)) for s in seconds], "k": seconds % 5}
    )
    flow = af.Flow("columns")
    windows = (
        flow.from_polars(df, splits=3)
        .with_watermark("ts", delay="1s")
        .key_by("k")
        .window(af.tumbling("10m"))
        .agg(n=pl.len())
    )
    windows.write_parquet(str(tmp_path / "out"))
    job = flow.start(workers=0)
    job.wait(120)
    metrics = job.metrics()
    assert metrics.columns[:8] == [
        "operator",
        "kind",
        "rows_in",
        "rows_out",
        "malformed",
        "late",
        "lag_s",
        "watermark",
    ]
    assert {"batches_in", "windows_fired", "windows_open"} <= set(metrics.columns[8:])
    window = metrics.filter(pl.col("kind") == "window")
    late = window["late"].item()
    on_time = pl.read_parquet(tmp_path / "out" / "*.parquet")["n"].sum()
    assert late + on_time == df.height  # every row counted once: in a window or late
