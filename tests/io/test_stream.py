"""Unbounded sources: tailing a file another process writes, and watching a folder.

A writer process appends lines (in bursts, with lines split across writes, a few malformed
lines and a rotation); a job follows the file. The committed rows must be exactly the good
lines written, each once; the malformed side output exactly the bad ones, with their line.
A kill -9 of the job in the middle and a restore lose and repeat nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import polars as pl
import pytest

import arrowflow as af

SCHEMA = {"id": pl.Int64, "user": pl.Int64, "amount": pl.Float64}
BAD = {
    250: b'{"id": 250, "user": "guest", "amount": 1}',
    600: b'{"id": 600, "user": 1, "amount"',
    900: b"[1, 2, 3]",
}

WRITER = textwrap.dedent("""
    import json, os, sys, time
    path, total, rotate_at = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    bad = {250: b'{"id": 250, "user": "guest", "amount": 1}', 600: b'{"id": 600, "user": 1, "amount"',
           900: b"[1, 2, 3]"}
    out = open(path, "ab")
    for i in range(total):
        if i == rotate_at:
            out.close()
            deadline = time.monotonic() + 120
            while not os.path.exists(path + ".rotate") and time.monotonic() < deadline:
                time.sleep(0.02)          # the test says when the job has read the old file
            os.rename(path, path + ".1")  # logrotate: the finished file moves away
            out = open(path, "ab")
        line = bad.get(i) or json.dumps({"id": i, "user": i % 11, "amount": i / 4}).encode()
        line += b"\\n"
        if i % 97 == 0:                   # a line split across two writes
            out.write(line[:7]); out.flush(); time.sleep(0.02); out.write(line[7:])
        else:
            out.write(line)
        if i % 50 == 0:
            out.flush(); time.sleep(0.01)
    out.close()
""")


def start_writer(tmp: Path, total: int, rotate_at: int) -> subprocess.Popen:
    script = tmp / "writer.py"
    script.write_text(WRITER)
    return subprocess.Popen(
        [sys.executable, str(script), str(tmp / "app.jsonl"), str(total), str(rotate_at)]
    )


def tail_flow(tmp: Path) -> af.Flow:
    flow = af.Flow("tailing")
    lines = flow.tail(str(tmp / "app.jsonl"), format="ndjson", schema=SCHEMA, poll_interval="50ms")
    lines.write_parquet(str(tmp / "rows"))
    lines.side_output("malformed").write_ndjson(str(tmp / "bad"))
    return flow


def committed(folder: Path, fmt: str = "parquet") -> pl.DataFrame:
    files = sorted(p for p in folder.glob(f"part-*.{fmt}"))
    if not files:
        return pl.DataFrame()
    return pl.concat([pl.read_parquet(f) if fmt == "parquet" else pl.read_ndjson(f) for f in files])


def wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


def check(tmp: Path, total: int, rotate_at: int) -> None:
    good = [i for i in range(total) if i not in BAD]
    rows = committed(tmp / "rows").sort("id")
    assert rows["id"].to_list() == good  # every good line exactly once
    assert rows["amount"].to_list() == [i / 4 for i in good]
    bad = committed(tmp / "bad", "ndjson").sort("line")
    # Line numbers count in the file each line was written to (the rotation starts a new one).
    expected_lines = sorted(i + 1 if i < rotate_at else i - rotate_at + 1 for i in BAD)
    assert bad["line"].to_list() == expected_lines
    assert all("app.jsonl" in f for f in bad["file"].to_list())


@pytest.mark.parametrize("workers", [0, 2])
def test_tail_follows_appends_partial_lines_and_a_rotation(tmp_path: Path, workers: int) -> None:
    total, rotate_at = 1_200, 700
    flow = tail_flow(tmp_path)
    job = flow.start(
        workers=workers, checkpoint_dir=str(tmp_path / "ck"), checkpoint_every="300ms", restore=None
    )
    writer = start_writer(tmp_path, total, rotate_at)
    try:
        wait_for(lambda: caught_up(tmp_path, rotate_at))
        (tmp_path / "app.jsonl.rotate").touch()
        assert writer.wait(60) == 0
        wait_for(lambda: job.progress["rows_in"] >= total - len(BAD))
    finally:
        result = job.stop(savepoint=True)
    assert result.status == "stopped"
    check(tmp_path, total, rotate_at)


def test_kill_9_while_tailing_then_restore(tmp_path: Path) -> None:
    total, rotate_at = 1_500, 1_000
    job_script = tmp_path / "job.py"
    job_script.write_text(
        textwrap.dedent(f"""
        import time, polars as pl, arrowflow as af
        flow = af.Flow("tailing")
        lines = flow.tail({str(tmp_path / "app.jsonl")!r}, format="ndjson",
                          schema={{"id": pl.Int64, "user": pl.Int64, "amount": pl.Float64}}, poll_interval="50ms")
        lines.write_parquet({str(tmp_path / "rows")!r})
        lines.side_output("malformed").write_ndjson({str(tmp_path / "bad")!r})
        job = flow.start(workers=0, checkpoint_dir={str(tmp_path / "ck")!r}, checkpoint_every="100ms", restore=None)
        print("STARTED", flush=True)
        job.wait()
    """)
    )
    writer = start_writer(tmp_path, total, rotate_at)
    victim = subprocess.Popen([sys.executable, str(job_script)], stdout=subprocess.PIPE, text=True)
    assert victim.stdout is not None and victim.stdout.readline().strip() == "STARTED"
    wait_for(lambda: len(list((tmp_path / "rows").glob("part-*"))) >= 1)
    victim.kill()  # SIGKILL mid-stream
    victim.wait(30)
    flow = tail_flow(tmp_path)
    job = flow.start(workers=0, checkpoint_dir=str(tmp_path / "ck"), checkpoint_every="300ms")
    try:
        wait_for(lambda: caught_up(tmp_path, rotate_at))
        (tmp_path / "app.jsonl.rotate").touch()
        assert writer.wait(60) == 0
        wait_for(lambda: caught_up(tmp_path, total - rotate_at))
    finally:
        job.stop(savepoint=True)
    check(tmp_path, total, rotate_at)


def caught_up(tmp: Path, lines: int) -> bool:
    """The newest checkpoint's tail position has reached line ``lines`` of the file now at
    app.jsonl (not of the one rotated away: its line numbers are higher)."""
    from arrowflow._runtime.checkpoints import CheckpointStorage

    manifest = CheckpointStorage(str(tmp / "ck")).latest(report=False)
    if manifest is None:
        return False
    try:
        inode = os.stat(tmp / "app.jsonl").st_ino
    except FileNotFoundError:
        return False  # between the rename and the new file
    positions = manifest.sources["tail"]["positions"]
    return (
        max((p["line"] for p in positions.values() if p.get("inode") == inode), default=-1) >= lines
    )


def test_watch_processes_each_landed_file_once_across_restarts(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()

    def land(number: int) -> pl.DataFrame:
        frame = pl.DataFrame(
            {
                "id": list(range(number * 100, number * 100 + 100)),
                "user": [number] * 100,
                "amount": [1.5] * 100,
            }
        )
        staging = inbox / f".part-{number}.parquet.tmp"
        frame.write_parquet(staging)
        os.rename(staging, inbox / f"part-{number}.parquet")  # lands complete
        return frame

    def flow() -> af.Flow:
        f = af.Flow("watching")
        f.watch(
            str(inbox / "*.parquet"), format="parquet", schema=SCHEMA, poll_interval="100ms"
        ).write_parquet(str(tmp_path / "rows"))
        return f

    land(0)
    job = flow().start(workers=0, checkpoint_dir=str(tmp_path / "ck"), restore=None)
    land(1)
    wait_for(lambda: job.progress["rows_in"] >= 200)
    job.stop(savepoint=True)
    land(2)  # lands while no job runs
    job = flow().start(workers=2, checkpoint_dir=str(tmp_path / "ck"))
    land(3)
    wait_for(lambda: job.progress["rows_in"] >= 200)  # only the two new files
    result = job.stop(savepoint=True)
    assert result.rows_in == 200
    rows = committed(tmp_path / "rows").sort("id")
    assert rows["id"].to_list() == list(range(400))


@pytest.mark.parametrize("workers", [0, 2])
def test_watch_waits_for_a_file_written_in_place(tmp_path: Path, workers: int) -> None:
    """A file created empty and filled later, and files written straight into the folder
    (no rename), are each read once and whole: no CorruptFileError, no row twice."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    flow = af.Flow("in-place")
    flow.watch(str(inbox / "*.parquet"), schema=SCHEMA, poll_interval="50ms").write_parquet(
        str(tmp_path / "rows")
    )
    frames = [
        pl.DataFrame({"id": list(range(i * 1000, i * 1000 + 1000)), "user": [i] * 1000})
        .with_columns(amount=pl.col("id") * 0.5)
        .select(list(SCHEMA))
        for i in range(4)
    ]
    job = flow.start(workers=workers)
    try:
        (inbox / "0.parquet").touch()  # created now, written later (as a slow writer does)
        time.sleep(0.6)  # a dozen listings see the empty file
        for i, frame in enumerate(frames[1:], start=1):
            frame.write_parquet(inbox / f"{i}.parquet")  # straight in, no rename
        # The other files are read while the empty one is still there (a reader that
        # looked at every file of the folder failed on it).
        wait_for(lambda: committed(tmp_path / "rows").height >= 3000)
        frames[0].write_parquet(inbox / "0.parquet")
        # Emitted without checkpoints (every second over an unbounded source).
        wait_for(lambda: committed(tmp_path / "rows").height >= 4000)
        time.sleep(1.5)  # another emission or two: nothing more may come
    finally:
        result = job.stop()
    assert result.malformed == 0
    assert result.restarts == 0
    rows = committed(tmp_path / "rows").sort("id")
    assert rows.equals(pl.concat(frames))


def test_watch_remembers_a_bounded_set_of_files_across_restarts(tmp_path: Path) -> None:
    """max_file_age: files older than the newest seen minus the age are neither read nor kept
    in the checkpoints' finished set; a restart does not read the forgotten files again."""
    from arrowflow._runtime.checkpoints import CheckpointStorage

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    base = 1_700_000_000.0

    def land(number: int, hour: float) -> None:
        frame = pl.DataFrame(
            {
                "id": list(range(number * 10, number * 10 + 10)),
                "user": [number] * 10,
                "amount": [0.5] * 10,
            }
        )
        staging = inbox / f".part-{number}.tmp"
        frame.write_parquet(staging)
        os.utime(staging, (base + hour * 3600, base + hour * 3600))
        os.rename(staging, inbox / f"part-{number:02d}.parquet")

    def flow() -> af.Flow:
        f = af.Flow("watching-aged")
        f.watch(
            str(inbox / "*.parquet"),
            format="parquet",
            schema=SCHEMA,
            poll_interval="50ms",
            max_file_age="3h",
        ).write_parquet(str(tmp_path / "rows"))
        return f

    def finished() -> list[str]:
        manifest = CheckpointStorage(str(tmp_path / "ck")).latest(report=False)
        assert manifest is not None
        return sorted(Path(s.split("#")[0]).name for s in manifest.sources["watch"]["finished"])

    for number in range(10):
        land(number, hour=number)  # hours 0..9: a fresh start reads them all (as Spark)
    job = flow().start(
        workers=0, checkpoint_dir=str(tmp_path / "ck"), checkpoint_every="100ms", restore=None
    )
    wait_for(lambda: job.progress["rows_in"] >= 100)
    time.sleep(0.5)  # more polls: the finished files older than 9 h - 3 h are forgotten
    job.checkpoint()
    assert finished() == [f"part-{n:02d}.parquet" for n in (6, 7, 8, 9)]
    land(10, hour=2)  # lands late with a time older than the cutoff: skipped
    land(11, hour=20)  # newer than the cutoff: read; then everything before hour 17 is forgotten
    land(
        13, hour=30
    )  # lands in the same poll, 10 h later still: read too (cutoff of before the poll)
    wait_for(lambda: job.progress["rows_in"] >= 120)
    time.sleep(0.5)
    job.checkpoint()
    assert finished() == ["part-13.parquet"]
    job.stop(savepoint=True)

    job = flow().start(workers=2, checkpoint_dir=str(tmp_path / "ck"))  # restored: the same bound
    land(12, hour=31)
    wait_for(lambda: job.progress["rows_in"] >= 10)
    time.sleep(0.5)
    result = job.stop(savepoint=True)
    assert result.rows_in == 10  # neither the old files still in the folder nor part-10
    assert finished() == ["part-12.parquet", "part-13.parquet"]
    rows = committed(tmp_path / "rows").sort("id")
    assert rows["id"].to_list() == [
        i for n in (*range(10), 11, 12, 13) for i in range(n * 10, n * 10 + 10)
    ]


# ---------------------------------------------------------------------- windows over a tailed file
WINDOW_WRITER = textwrap.dedent("""
    import json, os, sys, time
    from datetime import datetime, timedelta
    path, total, rotate_at = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    late = json.loads(sys.argv[4])                # {index: seconds}: an event that arrives late
    bad = {250: b'{"ts": "2026-01-01T00:04:10", "user": "guest", "amount": 1}', 700: b'{"ts": ',
           1300: b'not json'}
    start = datetime(2026, 1, 1)
    out = open(path, "ab")

    def wait(marker):
        deadline = time.monotonic() + 120
        while not os.path.exists(marker) and time.monotonic() < deadline:
            time.sleep(0.02)

    for i in range(total):
        if i == rotate_at:
            out.close()
            wait(path + ".rotate")        # the test says when the job has read the old file
            os.rename(path, path + ".1")
            out = open(path, "ab")
        if str(i) in late:
            out.flush()
            wait(path + f".late-{i}")     # its window has fired: the event is late for sure
            seconds = late[str(i)]
        else:
            seconds = i
        row = {"ts": (start + timedelta(seconds=seconds)).isoformat(), "user": i % 5, "amount": i / 4}
        line = bad.get(i) or json.dumps(row).encode()
        line += b"\\n"
        if i % 97 == 0:                   # a line split across two writes
            out.write(line[:9]); out.flush(); time.sleep(0.02); out.write(line[9:])
        else:
            out.write(line)
        if i % 25 == 0:
            out.flush(); time.sleep(0.01)
    out.close()
""")
WINDOW_BAD = {250, 700, 1300}
WINDOW_FLOW = """
import polars as pl
import arrowflow as af

def window_flow(tmp):
    flow = af.Flow("tailed-windows")
    lines = flow.tail(f"{tmp}/app.jsonl", format="ndjson", poll_interval="50ms",
                      schema={"ts": pl.Datetime("us"), "user": pl.Int64, "amount": pl.Float64})
    windows = (lines.with_watermark("ts", delay="5s").key_by("user").window(af.tumbling("60s"))
               .agg(n=pl.len(), total=pl.col("amount").sum()))
    windows.write_parquet(f"{tmp}/windows")
    windows.side_output("late").write_parquet(f"{tmp}/late")
    lines.side_output("malformed").write_ndjson(f"{tmp}/bad")
    return flow
"""


def test_tailed_windows_late_and_malformed_rows_survive_a_kill_9(tmp_path: Path) -> None:
    """Another process appends (partial lines, a rotation, malformed and late lines) while a
    job windows the file; the job is killed with -9 mid-way and restored. The committed
    windows, late rows and malformed rows equal the reference: nothing lost, nothing twice."""
    from datetime import datetime, timedelta

    total, rotate_at = 1_500, 1_000
    late = {400: 50, 1200: 300}  # event 400 carries 00:00:50 (window [0, 60)), 1200 00:05:00
    (tmp_path / "windowflow.py").write_text(WINDOW_FLOW)
    sys.path.insert(0, str(tmp_path))
    try:
        from windowflow import window_flow  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(tmp_path))
    job_script = tmp_path / "job.py"
    job_script.write_text(
        textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        from windowflow import window_flow
        job = window_flow({str(tmp_path)!r}).start(workers=2, checkpoint_dir={str(tmp_path / "ck")!r},
                                                    checkpoint_every="100ms", restore=None)
        print("STARTED", flush=True)
        job.wait()
    """)
    )
    (tmp_path / "writer.py").write_text(WINDOW_WRITER)
    log = str(tmp_path / "app.jsonl")
    writer = subprocess.Popen(
        [
            sys.executable,
            str(tmp_path / "writer.py"),
            log,
            str(total),
            str(rotate_at),
            json.dumps({str(k): v for k, v in late.items()}),
        ]
    )
    start = datetime(2026, 1, 1)

    def window_committed(user: int, seconds: int) -> bool:
        windows = committed(tmp_path / "windows")
        return (
            windows.height > 0
            and windows.filter(
                (pl.col("user") == user)
                & (pl.col("window_start") == start + timedelta(seconds=seconds))
            ).height
            == 1
        )

    victim = subprocess.Popen([sys.executable, str(job_script)], stdout=subprocess.PIPE, text=True)
    try:
        assert victim.stdout is not None and victim.stdout.readline().strip() == "STARTED"
        wait_for(lambda: window_committed(400 % 5, 0))
        Path(log + ".late-400").touch()
        wait_for(lambda: committed(tmp_path / "late").height == 1)  # the late row, committed
        wait_for(lambda: window_committed(0, 540))  # ~600 lines read: kill it mid-way
    finally:
        victim.kill()  # SIGKILL
        victim.wait(30)

    job = window_flow(tmp_path).start(
        workers=2, checkpoint_dir=str(tmp_path / "ck"), checkpoint_every="200ms"
    )
    try:
        wait_for(lambda: caught_up(tmp_path, rotate_at))
        Path(log + ".rotate").touch()
        wait_for(lambda: window_committed(1200 % 5, 300) and job.progress["rows_in"] > 0)
        Path(log + ".late-1200").touch()
        assert writer.wait(60) == 0
        wait_for(lambda: caught_up(tmp_path, total - rotate_at))
    finally:
        writer.kill()
        result = job.stop(savepoint=True)
    assert result.restored_from is not None

    # The reference, from what the writer wrote.
    events = (
        pl.DataFrame({"i": range(total)})
        .filter(~pl.col("i").is_in(list(WINDOW_BAD)))
        .with_columns(
            ts=pl.lit(start)
            + pl.duration(seconds=pl.col("i").replace_strict(late, default=pl.col("i"))),
            user=pl.col("i") % 5,
            amount=pl.col("i") / 4,
        )
    )
    on_time = events.filter(~pl.col("i").is_in(list(late)))
    last_watermark = start + timedelta(seconds=total - 1 - 5)
    expected = (
        on_time.with_columns(window_start=pl.col("ts").dt.truncate("60s"))
        .group_by("user", "window_start")
        .agg(n=pl.len(), total=pl.col("amount").sum())
        .filter(pl.col("window_start") + pl.duration(seconds=60) <= last_watermark)
    )
    windows = committed(tmp_path / "windows")
    assert windows.select("user", "window_start").is_duplicated().sum() == 0, (
        "a window was committed twice"
    )
    got = windows.select("user", "window_start", "n", "total").sort("user", "window_start")
    want = expected.sort("user", "window_start")
    assert got.select("user", "window_start", "n").equals(
        want.select("user", "window_start", "n").cast(
            got.select("user", "window_start", "n").schema
        )
    )
    assert (got["total"] - want["total"]).abs().max() < 1e-9
    late_rows = committed(tmp_path / "late").sort("ts")
    assert late_rows["amount"].to_list() == [400 / 4, 1200 / 4]
    assert late_rows["window_start"].to_list() == [start, start + timedelta(seconds=300)]
    bad = committed(tmp_path / "bad", "ndjson").sort("line")
    assert bad["line"].to_list() == sorted(
        i + 1 if i < rotate_at else i - rotate_at + 1 for i in WINDOW_BAD
    )


@pytest.mark.parametrize("workers", [2, 4])
def test_watched_file_closes_its_windows_when_every_reader_goes_idle(
    tmp_path: Path, workers: int
) -> None:
    """One file lands; the reader that reads it goes idle right after (its split ended), as
    do the others (no split at all). The windows its rows closed must still fire: with every
    input idle, an operator advances to the highest watermark its inputs reached (as Flink)."""
    from datetime import datetime, timedelta

    inbox = tmp_path / "in"
    inbox.mkdir()
    flow = af.Flow("idle-readers")
    lines = flow.watch(
        str(inbox), schema={"ts": pl.Datetime("us"), "host": pl.String}, poll_interval="100ms"
    )
    windows = (
        lines.with_watermark("ts", delay="30s")
        .key_by("host")
        .window(af.tumbling("1m"))
        .agg(n=pl.len())
    )
    windows.write_parquet(str(tmp_path / "out"))
    job = flow.start(workers=workers)
    try:
        time.sleep(0.5)
        ts = [datetime(2026, 1, 1, 10) + timedelta(seconds=i) for i in range(600)]
        pl.DataFrame({"ts": ts, "host": ["h1"] * 600}).write_parquet(inbox / ".h1.parquet")
        os.rename(inbox / ".h1.parquet", inbox / "h1.parquet")
        # the watermark reaches 10:09:29: the nine windows up to 10:09 fire, the last stays open
        wait_for(lambda: job.results(windows).height == 9, timeout=30)
    finally:
        job.stop()
    got = job.results(windows).sort("window_start")
    assert got["n"].to_list() == [60] * 9
    assert got["window_start"].to_list() == [
        datetime(2026, 1, 1, 10, minute) for minute in range(9)
    ]


def test_a_watched_file_finished_between_two_acks_stays_finished(tmp_path: Path) -> None:
    """Worker 0 acks checkpoint 1, then finishes a file, then worker 1 acks: the file belongs
    to checkpoint 2 (its rows came after worker 0's barrier) and must be listed finished there,
    or a restore from checkpoint 2 reads it again."""
    from arrowflow._runtime.checkpoints import CheckpointStorage
    from arrowflow._runtime.coordinator import JobCoordinator

    inbox = tmp_path / "in"
    inbox.mkdir()
    for name in ("a", "b"):
        pl.DataFrame({"id": [1, 2]}).write_parquet(inbox / f"{name}.parquet")
    flow = af.Flow("acks")
    flow.watch(str(inbox), schema={"id": pl.Int64}).write_parquet(str(tmp_path / "out"))
    plan = flow.plan()
    source = plan.sources[0].id
    storage = CheckpointStorage(str(tmp_path / "ck"))
    storage.ensure()
    coordinator = JobCoordinator(
        plan, 2, storage=storage, trigger=None, restored=None, max_parallelism=128
    )
    coordinator.enumerator.discover()
    split, _ = coordinator.next_split(source, 0)
    empty = {"positions": {}, "state": [], "staged": {}}
    coordinator.request_checkpoint()
    assert coordinator.poll() == 1
    coordinator.ack(0, 1, dict(empty))
    coordinator.split_done(source, split.split_id, 0)  # after worker 0's barrier
    coordinator.ack(1, 1, dict(empty))
    assert split.split_id not in storage.read_manifest(1).sources[source]["finished"]
    coordinator.request_checkpoint()
    assert coordinator.poll() == 2
    coordinator.ack(0, 2, dict(empty))
    coordinator.ack(1, 2, dict(empty))
    assert split.split_id in storage.read_manifest(2).sources[source]["finished"]


def _slowly(frame: pl.DataFrame) -> pl.DataFrame:
    time.sleep(0.15)
    return frame


def test_a_restore_reads_the_rest_of_an_old_backlog(tmp_path: Path) -> None:
    """A fresh start reads every file however old (as Spark); a crash in the middle of that
    backlog and a restore must read the rest of it, not drop the files older than the age
    bound that were found but not finished yet."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    base = 1_700_000_000.0
    for number in range(10):  # hours 0..9; with max_file_age 3 h only 6..9 are "recent"
        path = inbox / f"part-{number:02d}.parquet"
        pl.DataFrame(
            {
                "id": list(range(number * 10, number * 10 + 10)),
                "user": [number] * 10,
                "amount": [0.5] * 10,
            }
        ).write_parquet(path)
        os.utime(path, (base + number * 3600, base + number * 3600))

    def flow() -> af.Flow:
        f = af.Flow("backlog")
        (
            f.watch(
                str(inbox / "*.parquet"),
                format="parquet",
                schema=SCHEMA,
                poll_interval="50ms",
                max_file_age="3h",
            )
            .map_batches(_slowly)
            .write_parquet(str(tmp_path / "rows"))
        )
        return f

    job = flow().start(workers=0, checkpoint_dir=str(tmp_path / "ck"), batch_size=10, restore=None)
    wait_for(lambda: job.progress["rows_in"] >= 30)
    job.checkpoint()
    wait_for(lambda: len(job.progress["checkpoints"]) >= 1)
    job.stop()  # no savepoint: as a crash, the rest comes from the checkpoint
    before = committed(tmp_path / "rows").height
    assert 0 < before < 60, before  # the checkpoint came with old files still to read
    job = flow().start(workers=0, checkpoint_dir=str(tmp_path / "ck"), batch_size=10)
    try:
        wait_for(lambda: job.progress["rows_in"] >= 100 - before, timeout=30)
        time.sleep(0.5)  # more polls: nothing else may come
    finally:
        job.stop(savepoint=True)
    rows = committed(tmp_path / "rows").sort("id")
    assert rows["id"].to_list() == list(range(100))
