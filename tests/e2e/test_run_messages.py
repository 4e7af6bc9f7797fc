"""What a run did is visible from the user's side: the API's warnings, results and errors,
and the ``arrowflow run`` command's exit code and lines (a subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

import arrowflow as af
from arrowflow._runtime.checkpoints import CheckpointStorage
from arrowflow.errors import CheckpointError, PlanError, WorkerError
from arrowflow.testing import assert_frame_equal_unordered

FINAL = (
    "restored checkpoint {id}, a final one: nothing left to read; pass restore=None to start over"
)


@pytest.fixture
def events(tmp_path: Path) -> Path:
    """Three Parquet files of shuffled events (keys in no order), 7,000 rows in all."""
    folder = tmp_path / "events"
    folder.mkdir()
    rng = np.random.default_rng(1313)
    for part, n in enumerate((3_000, 2_500, 1_500)):
        pl.DataFrame(
            {
                "user": rng.permutation(n) % 97,
                "amount": rng.exponential(20, n).round(2),
                "kind": rng.choice(["buy", "view"], n),
            }
        ).write_parquet(folder / f"part-{part}.parquet")
    return folder


def totals_by_polars(events: Path) -> pl.DataFrame:
    return (
        pl.read_parquet(events / "*.parquet")
        .group_by("user")
        .agg(n=pl.len(), total=pl.col("amount").sum())
    )


def totals_flow(events: Path, out: Path) -> af.Flow:
    flow = af.Flow("totals")
    (
        flow.read_parquet(str(events))
        .key_by("user")
        .agg(n=pl.len(), total=pl.col("amount").sum())
        .write_parquet(str(out))
    )
    return flow


def committed(out: Path) -> pl.DataFrame:
    return pl.read_parquet(out / "*.parquet")


def check_totals(out: Path, events: Path) -> None:
    expected = totals_by_polars(events)
    got = committed(out)
    assert_frame_equal_unordered(
        got.select("user", "n"), expected.select("user", "n").cast(got.select("user", "n").schema)
    )
    joined = got.join(expected, on="user", suffix="_polars")
    assert (
        joined.height == expected.height
        and (joined["total"] - joined["total_polars"]).abs().max() < 1e-6
    )


def test_a_rerun_that_resumes_a_final_checkpoint_says_so(tmp_path: Path, events: Path) -> None:
    checkpoints, out = str(tmp_path / "ck"), tmp_path / "out"
    first = totals_flow(events, out).run(workers=0, checkpoint_dir=checkpoints)
    assert first.rows_in == 7_000 and first.notes == []
    final = first.checkpoints[-1]
    with pytest.warns(UserWarning, match=f"flow 'totals': {FINAL.format(id=final)}"):
        again = totals_flow(events, out).run(workers=0, checkpoint_dir=checkpoints)
    assert again.rows_in == 0 and again.restored_from == final
    assert again.notes == [FINAL.format(id=final)]
    check_totals(out, events)
    fresh = totals_flow(events, out).run(workers=0, checkpoint_dir=checkpoints, restore=None)
    assert fresh.rows_in == 7_000 and fresh.notes == []
    check_totals(out, events)


def test_restore_of_an_id_that_is_not_there_names_the_ones_that_are(
    tmp_path: Path, events: Path
) -> None:
    checkpoints, out = str(tmp_path / "ck"), tmp_path / "out"
    for _ in range(3):  # each fresh run ends with a final checkpoint: 1, 2, 3
        totals_flow(events, out).run(workers=0, checkpoint_dir=checkpoints, restore=None)
    with pytest.raises(CheckpointError) as caught:
        totals_flow(events, out).run(workers=0, checkpoint_dir=checkpoints, restore=999)
    assert str(caught.value) == f"no checkpoint 999 in {checkpoints!r}; it has 1, 2, 3"
    with pytest.raises(
        CheckpointError, match=r"no checkpoint 7 in .*; it has no complete checkpoint"
    ):
        totals_flow(events, out).run(workers=0, checkpoint_dir=str(tmp_path / "empty"), restore=7)


@pytest.mark.parametrize("restore", [5, "5", "newest", True])
def test_restore_without_a_checkpoint_dir_is_an_error(
    tmp_path: Path, events: Path, restore: object
) -> None:
    with pytest.raises(PlanError, match="restore="):
        totals_flow(events, tmp_path / "out").run(workers=0, restore=restore)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ a worker's polars error


# Both pass on the empty batch map_batches learns its output schema from; real rows fail
# with a polars error of several lines (the plan that failed, a context stack, hints).
def missing_column(batch: pl.DataFrame) -> pl.DataFrame:
    return batch.lazy().select("user", "nope").collect() if batch.height else batch


def strict_cast(batch: pl.DataFrame) -> pl.DataFrame:
    return batch.with_columns(pl.col("kind").cast(pl.Int64, strict=True)) if batch.height else batch


@pytest.mark.parametrize(
    ("function", "summary"),
    [
        (
            missing_column,
            'polars.exceptions.ColumnNotFoundError: unable to find column "nope"; valid columns: '
            '["user", "amount", "kind"]',
        ),
        (
            strict_cast,
            "polars.exceptions.InvalidOperationError: conversion from `str` to `i64` failed in column "
            "'kind' for ",
        ),
    ],
)
def test_a_workers_polars_error_is_summarized_by_its_message(
    tmp_path: Path, events: Path, function: object, summary: str
) -> None:
    flow = af.Flow("broken")
    flow.read_parquet(str(events)).map_batches(function).write_parquet(str(tmp_path / "out"))
    with pytest.raises(WorkerError) as caught:
        flow.run(workers=2)
    first = str(caught.value).splitlines()[0]
    assert first.startswith("worker ") and f" failed: {summary}" in first
    assert caught.value.traceback_text.startswith("Traceback") and "--- worker" in str(caught.value)


# ------------------------------------------------------------------ the same from the command line

JOB = """
    import sys
    import polars as pl
    import arrowflow as af

    totals = af.Flow("totals")
    (totals.read_parquet({events!r}).key_by("user").agg(n=pl.len(), total=pl.col("amount").sum())
     .write_parquet("out"))

    broken = af.Flow("broken")
    (broken.read_parquet({events!r}).map_batches(lambda b: b.lazy().select("user", "nope").collect() if b.height else b)
     .write_parquet("broken"))
"""


def arrowflow(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "arrowflow.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "default"},
        timeout=240,
    )


@pytest.fixture
def job(tmp_path: Path, events: Path) -> Path:
    path = tmp_path / "job.py"
    path.write_text(textwrap.dedent(JOB.format(events=str(events))))
    return path


def test_cli_rerun_after_a_final_checkpoint_says_so(
    tmp_path: Path, events: Path, job: Path
) -> None:
    ran = arrowflow(
        "run", f"{job}:totals", "--checkpoint-dir", "ck", "--workers", "0", cwd=tmp_path
    )
    assert ran.returncode == 0, ran.stderr
    assert "note:" not in ran.stdout
    again = arrowflow(
        "run", f"{job}:totals", "--checkpoint-dir", "ck", "--workers", "0", cwd=tmp_path
    )
    assert again.returncode == 0, again.stderr
    note = "restored checkpoint 1, a final one: nothing left to read; pass --restore none to start over"
    # the summary ends with the notes, then the restarts line
    assert again.stdout.strip().splitlines()[-2:] == [
        f"note: {note}",
        "restarts: none (no worker failed)",
    ]
    assert "restored checkpoint 1, a final one" in again.stderr  # the warning
    check_totals(tmp_path / "out", events)
    fresh = arrowflow(
        "run",
        f"{job}:totals",
        "--checkpoint-dir",
        "ck",
        "--workers",
        "0",
        "--restore",
        "none",
        cwd=tmp_path,
    )
    assert fresh.returncode == 0, fresh.stderr
    assert "note:" not in fresh.stdout and "rows in            7,000" in fresh.stdout
    check_totals(tmp_path / "out", events)


@pytest.mark.parametrize("value", ["5", "latest", "none"])
def test_cli_restore_without_checkpoint_dir_is_a_usage_error(
    tmp_path: Path, job: Path, value: str
) -> None:
    ran = arrowflow("run", f"{job}:totals", "--restore", value, cwd=tmp_path)
    assert ran.returncode == 2
    assert ran.stderr.strip().splitlines() == [
        f"arrowflow run: error: --restore {value} needs --checkpoint-dir, the folder that holds the checkpoints"
    ]
    assert not (tmp_path / "out").exists()


def test_cli_restore_of_a_missing_id(tmp_path: Path, job: Path) -> None:
    assert (
        arrowflow(
            "run", f"{job}:totals", "--checkpoint-dir", "ck", "--workers", "0", cwd=tmp_path
        ).returncode
        == 0
    )
    ran = arrowflow(
        "run", f"{job}:totals", "--checkpoint-dir", "ck", "--restore", "999", cwd=tmp_path
    )
    assert ran.returncode == 1
    assert ran.stderr.strip().splitlines() == [
        "arrowflow run: error: no checkpoint 999 in 'ck'; it has 1"
    ]
    bad = arrowflow(
        "run", f"{job}:totals", "--checkpoint-dir", "ck", "--restore", "newest", cwd=tmp_path
    )
    assert (
        bad.returncode == 2
        and "expected latest, none (start over) or a checkpoint id" in bad.stderr
    )


def test_cli_worker_polars_error_first_line(tmp_path: Path, job: Path) -> None:
    ran = arrowflow("run", f"{job}:broken", "--workers", "2", cwd=tmp_path)
    assert ran.returncode == 1
    first = ran.stderr.strip().splitlines()[0]
    assert first.startswith("arrowflow run: error: worker ")
    assert first.endswith(
        ' failed: polars.exceptions.ColumnNotFoundError: unable to find column "nope"; '
        'valid columns: ["user", "amount", "kind"]'
    )


def test_more_workers_than_cores_warns_and_still_gives_polars_results(
    tmp_path: Path, events: Path
) -> None:
    cores = os.cpu_count() or 1
    flow = af.Flow("crowded")
    stream = (
        flow.read_parquet(str(events)).key_by("user").agg(n=pl.len(), total=pl.col("amount").sum())
    )
    with pytest.warns(UserWarning, match=rf"workers={cores + 1} is more than the {cores} cores"):
        got = stream.collect(workers=cores + 1)
    assert_frame_equal_unordered(got, totals_by_polars(events), check_dtypes=False)


def test_default_worker_count_quiet_and_named_in_help(tmp_path: Path, events: Path) -> None:
    import warnings

    stream = af.Flow("quiet").read_parquet(str(events)).key_by("user").agg(n=pl.len())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default (one per core) never warns
        assert stream.collect().height == 97
    help_text = arrowflow("run", "--help", cwd=tmp_path).stdout
    flat = " ".join(help_text.split())
    assert "default: in this process for a flow of polars expressions on up to 2 cores" in flat
    assert f"{os.cpu_count() or 1} cores on this machine" in flat


def test_the_default_workers_follow_the_flow_and_the_cores(events: Path, tmp_path: Path) -> None:
    """workers=None: a flow of polars expressions runs in this process on up to two cores
    (polars uses them all there; W1 and W2 measured faster so), a flow with a Python function
    on batches in one worker per core (the GIL would serialize them in one process)."""
    cores = os.cpu_count() or 1
    expected = totals_by_polars(events)
    flow = af.Flow("expressions")
    totals = flow.read_parquet(str(events)).key_by("user")
    totals.agg(n=pl.len(), total=pl.col("amount").sum()).write_parquet(str(tmp_path / "a"))
    result = flow.run()
    assert result.workers == (0 if cores <= 2 else cores)
    got = pl.read_parquet(tmp_path / "a")
    assert_frame_equal_unordered(got, expected, check_dtypes=False)
    flow = af.Flow("python")
    rows = flow.read_parquet(str(events)).map_batches(lambda batch: batch)
    rows.key_by("user").agg(n=pl.len(), total=pl.col("amount").sum()).write_parquet(
        str(tmp_path / "b")
    )
    result = flow.run()
    assert result.workers == cores
    got = pl.read_parquet(tmp_path / "b")
    assert_frame_equal_unordered(got, expected, check_dtypes=False)


def test_cli_more_workers_than_cores_says_so_on_stderr(tmp_path: Path, job: Path) -> None:
    cores = os.cpu_count() or 1
    done = arrowflow("run", f"{job}:totals", "--workers", str(cores + 1), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"workers={cores + 1} is more than the {cores} cores" in done.stderr


def test_one_name_for_the_checkpoint_to_read(tmp_path: Path, events: Path) -> None:
    """``checkpoint=`` picks the checkpoint in read_state, query_state and the job's methods,
    as ``--checkpoint`` does in the CLI; ``checkpoint_id=`` still works, with a warning."""
    ckpt = tmp_path / "ckpt"
    flow = totals_flow(events, tmp_path / "out")
    flow.run(
        workers=0, batch_size=1_000, checkpoint_dir=str(ckpt), checkpoint_every=af.every_rows(2_000)
    )
    ids = af.list_checkpoints(str(ckpt))["id"].to_list()
    assert len(ids) >= 2
    first, last = min(ids), max(ids)
    newest = af.read_state(str(ckpt), "agg", checkpoint=last)
    assert_frame_equal_unordered(newest, totals_by_polars(events), check_dtypes=False)
    early = af.read_state(str(ckpt), "agg", checkpoint=first)
    assert early["n"].sum() < newest["n"].sum()
    sql = "SELECT sum(n) AS n FROM agg"
    assert af.query_state(str(ckpt), sql, checkpoint=first).item() == early["n"].sum()
    with pytest.warns(DeprecationWarning, match="checkpoint_id= is deprecated"):
        old = af.read_state(str(ckpt), "agg", checkpoint_id=first)
    assert_frame_equal_unordered(old, early)
    with pytest.raises(TypeError, match="disagree"):
        af.read_state(str(ckpt), "agg", checkpoint=first, checkpoint_id=last)
    cli = arrowflow("state", "query", str(ckpt), sql, "--checkpoint", str(first), cwd=tmp_path)
    assert cli.returncode == 0, cli.stderr
    assert str(early["n"].sum()) in cli.stdout


def test_cli_one_exit_code_rule_for_checkpoint_commands(tmp_path: Path, events: Path) -> None:
    """A missing checkpoint directory is wrong usage (2) for both commands, with one line on
    stderr and no traceback; an existing directory with no checkpoint lists as empty (0)."""
    missing = str(tmp_path / "no-such-dir")
    for args in (("checkpoints", "list", missing), ("state", "query", missing, "SELECT 1")):
        done = arrowflow(*args, cwd=tmp_path)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "no checkpoint directory at" in lines[0], lines
    (tmp_path / "empty").mkdir()
    listed = arrowflow("checkpoints", "list", str(tmp_path / "empty"), cwd=tmp_path)
    assert listed.returncode == 0 and "no complete checkpoint" in listed.stdout
    queried = arrowflow("state", "query", str(tmp_path / "empty"), "SELECT 1", cwd=tmp_path)
    assert queried.returncode == 2 and "no complete checkpoint" in queried.stderr
    # A wrong table or bad SQL on a real checkpoint: one line naming the tables, exit 1.
    ckpt = tmp_path / "ckpt"
    totals_flow(events, tmp_path / "out").run(workers=0, checkpoint_dir=str(ckpt))
    for sql in ("SELECT * FROM nope", "SELEC n FROM agg"):
        bad = arrowflow("state", "query", str(ckpt), sql, cwd=tmp_path)
        assert bad.returncode == 1, bad.stderr
        assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    assert (
        "(tables: 'agg')"
        in arrowflow("state", "query", str(ckpt), "SELECT * FROM nope", cwd=tmp_path).stderr
    )
    usage = arrowflow("checkpoints", "list", "--help", cwd=tmp_path).stdout
    assert "exit codes: 0 done" in " ".join(usage.split())


def test_a_resumed_run_says_so(tmp_path: Path) -> None:
    """A run that starts from an earlier run's checkpoint says which one, in its result and
    in the summary the CLI prints; a fresh run says nothing of the kind."""
    from arrowflow._api.summary import format_summary
    from arrowflow.io.memory import MemorySource
    from arrowflow.testing import CrashAfter, InjectedFault

    rng = np.random.default_rng(16)
    data = pl.DataFrame({"k": rng.permutation(2_000) % 7, "v": rng.integers(0, 100, 2_000)})
    crashing = CrashAfter(MemorySource.from_polars(data, splits=4), rows=900)
    flow = af.Flow("resumable")
    flow.source(crashing).key_by("k").agg(n=pl.len(), total=pl.col("v").sum()).write_parquet(
        str(tmp_path / "out")
    )
    run = {
        "workers": 0,
        "batch_size": 100,
        "checkpoint_dir": str(tmp_path / "ck"),
        "checkpoint_every": af.every_rows(300),
        "progress": False,
    }
    with pytest.raises(InjectedFault):
        flow.run(**run)
    newest = max(af.list_checkpoints(str(tmp_path / "ck"))["id"].to_list())
    resumed = flow.run(**run)
    assert resumed.resumed_from == newest
    assert f"resumed_from={newest}" in repr(resumed)
    assert resumed.notes and resumed.notes[0].startswith(
        f"resumed from checkpoint {newest} of an earlier run (taken "
    )
    assert f"note: resumed from checkpoint {newest}" in format_summary(flow, resumed)
    assert resumed.rows_in < data.height  # the counts are this run's: after the checkpoint
    fresh = flow.run(**{**run, "restore": None})
    assert fresh.resumed_from is None and not fresh.notes
    assert "note: resumed from" not in format_summary(flow, fresh)
    assert "resumed_from" not in repr(fresh)


def test_cli_checkpoints_list_fits_a_terminal_and_json_has_everything(
    tmp_path: Path, events: Path
) -> None:
    ckpt = tmp_path / "ckpt"
    flow = af.Flow("two-sources")
    first = flow.read_parquet(str(events), name="first_source")
    second = flow.read_parquet(str(events), name="second_source_with_a_long_name")
    first.union(second).key_by("user").agg(n=pl.len()).write_parquet(str(tmp_path / "out"))
    flow.run(
        workers=0, batch_size=1_000, checkpoint_dir=str(ckpt), checkpoint_every=af.every_rows(4_000)
    )
    listed = arrowflow("checkpoints", "list", str(ckpt), cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    widest = max(len(line) for line in listed.stdout.splitlines())
    assert widest <= 100, listed.stdout
    assert "6 done, 0 open" in listed.stdout  # the final checkpoint: 3 files per source
    full = arrowflow("checkpoints", "list", str(ckpt), "--json", cwd=tmp_path)
    assert full.returncode == 0, full.stderr
    import json

    records = json.loads(full.stdout)
    manifests = {
        m.id: m for m in map(CheckpointStorage(str(ckpt)).find, [r["id"] for r in records])
    }
    assert len(records) >= 2
    for record in records:
        assert record["offsets"] == manifests[record["id"]].sources
    newest = max(records, key=lambda r: r["id"])
    assert newest["final"] is True  # the last checkpoint of a finished run
    assert all(r["final"] is False for r in records if r is not newest)
    assert set(newest["offsets"]) == {"first_source", "second_source_with_a_long_name"}
    # af.list_checkpoints: the same offsets as struct columns, one row per split.
    frame = af.list_checkpoints(str(ckpt))
    splits = frame.select("id", "offsets").explode("offsets").unnest("offsets")
    for record in records:
        mine = splits.filter(pl.col("id") == record["id"])
        for source, offsets in record["offsets"].items():
            ours = mine.filter(pl.col("source") == source)
            assert sorted(ours.filter("done")["split"]) == sorted(offsets["finished"])
            open_ = dict(ours.filter(~pl.col("done")).select("split", "offset").iter_rows())
            assert open_ == offsets["positions"]


# ---------------------------------------------------------------------- memory:// flows
def test_a_memory_flow_runs_in_this_process_under_the_default_workers() -> None:
    """A flow over memory:// files (sources, sinks, checkpoints) runs in-process when the
    worker count is left to the default, says so, and is refused in one line before anything
    starts when a worker count is asked for (issue 16)."""
    import fsspec
    import numpy as np

    rng = np.random.default_rng(5)
    frame = pl.DataFrame({"user": rng.integers(0, 20, 5_000), "amount": rng.random(5_000)})
    fs = fsspec.filesystem("memory")
    with fs.open("/af-first-hour/in/a.parquet", "wb") as handle:
        frame.write_parquet(handle)

    def build() -> af.Flow:
        flow = af.Flow("in-memory")
        totals = (
            flow.read_parquet("memory://af-first-hour/in/*.parquet")
            .key_by("user")
            .agg(total=pl.col("amount").sum())
        )
        totals.write_parquet("memory://af-first-hour/out")
        return flow

    result = build().run(checkpoint_dir="memory://af-first-hour/ck", restore=None)
    assert result.workers == 0
    assert any("ran in this process (workers=0)" in note for note in result.notes)
    with fs.open(fs.glob("/af-first-hour/out/part-*.parquet")[0], "rb") as handle:
        got = pl.read_parquet(handle)
    expected = frame.group_by("user").agg(total=pl.col("amount").sum())
    assert_frame_equal(got.sort("user"), expected.sort("user"), check_exact=False)
    started = time.perf_counter()
    with pytest.raises(PlanError, match=r"memory://.*cannot run with workers=2") as refused:
        build().run(workers=2, restore=None)
    assert "\n" not in str(refused.value)
    assert time.perf_counter() - started < 1.0  # refused before any worker started
