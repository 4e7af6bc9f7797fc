"""Text sources through real crashes: a job killed with kill -9 at a checkpoint, then restored,
commits every good row and every malformed row exactly once. Positions inside a split (record
counts) are what the restore resumes from, so this is the position protocol end to end."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

import polars as pl
import pytest

SCHEMA = {"id": pl.Int64, "s": pl.String, "x": pl.Float64}

JOB = textwrap.dedent("""
    import json, sys, time
    import polars as pl
    import arrowflow as af

    config = json.loads(sys.argv[1])

    def slow(batch):
        time.sleep(0.02)
        return batch

    schema = {"id": pl.Int64, "s": pl.String, "x": pl.Float64}
    flow = af.Flow("io_crash")
    from_csv = flow.read_csv(config["input"] + "/*.csv", schema=schema)
    from_json = flow.read_ndjson(config["input"] + "/*.ndjson", schema=schema)
    from_csv.union(from_json).map_batches(slow).write_parquet(config["rows"])
    from_csv.side_output("malformed").union(from_json.side_output("malformed")).write_ndjson(config["bad"])
    result = flow.run(workers=config["workers"], checkpoint_dir=config["checkpoints"],
                      checkpoint_every=af.every_rows(7), batch_size=5, restore="latest")
    print("RESULT", json.dumps({"restored_from": result.restored_from}), flush=True)
""")


def job_config(tmp: Path, workers: int) -> dict[str, object]:
    (tmp / "job.py").write_text(JOB)
    return {
        "input": str(tmp / "input"),
        "rows": str(tmp / "rows"),
        "bad": str(tmp / "bad"),
        "checkpoints": str(tmp / "checkpoints"),
        "workers": workers,
    }


def committed(folder: Path, fmt: str) -> pl.DataFrame:
    files = sorted(folder.glob(f"part-*.{fmt}"))
    read = pl.read_parquet if fmt == "parquet" else pl.read_ndjson
    return pl.concat([read(f) for f in files]) if files else pl.DataFrame()


def write_inputs(folder: Path) -> tuple[pl.DataFrame, int]:
    """Two CSV and two NDJSON files with bad lines between good ones; returns the good rows."""
    good, bad_count = [], 0
    for part in range(2):
        csv_lines, json_lines = ["id,s,x"], []
        for i in range(40):
            row_id = part * 1000 + i
            csv_lines.append(f'{row_id},"v,{i}",{i / 2}')
            json_lines.append(json.dumps({"id": row_id + 500, "s": f"w{i}", "x": i / 4}))
            good += [(row_id, f"v,{i}", i / 2), (row_id + 500, f"w{i}", i / 4)]
            if i % 9 == 4:
                csv_lines.append(f"{row_id},short")
                json_lines.append('{"id": "not a number"}')
                bad_count += 2
        (folder / f"in-{part}.csv").write_text("\n".join(csv_lines) + "\n")
        (folder / f"in-{part}.ndjson").write_text("\n".join(json_lines) + "\n")
    return pl.DataFrame(good, schema=SCHEMA, orient="row"), bad_count


@pytest.mark.injects_faults
@pytest.mark.parametrize(("workers", "fault"), [(0, "before_manifest@3"), (2, "after_manifest@2")])
def test_kill_then_restore_commits_each_row_once(
    tmp_path: Path, workers: int, fault: str, same_rows, run_job_script
) -> None:
    allowed = os.environ.get("ARROWFLOW_TEST_WORKERS", "0,1,2").split(",")
    if str(workers) not in allowed:
        pytest.skip(f"ARROWFLOW_TEST_WORKERS={','.join(allowed)} leaves out {workers} workers")
    (tmp_path / "input").mkdir()
    expected, bad_count = write_inputs(tmp_path / "input")
    config = job_config(tmp_path, workers)
    run = run_job_script(tmp_path / "job.py", config, fault)
    if "RESULT" not in run.stdout:
        assert run.returncode != 0, run.stderr[-2000:]
        run = run_job_script(tmp_path / "job.py", config, "")
        assert run.returncode == 0, run.stderr[-3000:]
        assert json.loads(run.stdout.split("RESULT ", 1)[1])["restored_from"] is not None
    rows = committed(tmp_path / "rows", "parquet")
    assert rows["id"].is_duplicated().sum() == 0
    same_rows(rows, expected)
    bad = committed(tmp_path / "bad", "ndjson")
    assert bad.height == bad_count
    assert bad.select("file", "offset").is_duplicated().sum() == 0
    assert set(bad["reason"]) == {
        "expected 3 fields, found 2",
        "column 'id': cannot parse 'not a number' as Int64",
    }


CORRUPT_JOB = textwrap.dedent("""
    import json, sys, time
    import arrowflow as af

    config = json.loads(sys.argv[1])

    def slow(batch):
        time.sleep(0.02)
        return batch

    flow = af.Flow("corrupt_crash")
    events = flow.read_parquet(config["input"] + "/*.parquet", on_corrupt_file="skip")
    events.map_batches(slow).write_parquet(config["rows"])
    events.side_output("malformed").write_ndjson(config["bad"])
    result = flow.run(workers=config["workers"], checkpoint_dir=config["checkpoints"],
                      checkpoint_every=af.every_rows(7), batch_size=5, restore="latest")
    print("RESULT", json.dumps({"restored_from": result.restored_from}), flush=True)
""")


@pytest.mark.parametrize(
    ("workers", "fault"),
    [pytest.param(0, "before_manifest@3", marks=pytest.mark.soak), (2, "after_manifest@2")],
)
def test_corrupt_files_are_reported_once_across_a_kill(
    tmp_path: Path, workers: int, fault: str, same_rows, run_job_script
) -> None:
    """Parquet files skipped as corrupt (one found at plan time, one while reading) are each
    reported once and the good files' rows committed once, through a kill -9 and a restore."""
    allowed = os.environ.get("ARROWFLOW_TEST_WORKERS", "0,1,2").split(",")
    if str(workers) not in allowed:
        pytest.skip(f"ARROWFLOW_TEST_WORKERS={','.join(allowed)} leaves out {workers} workers")
    folder = tmp_path / "input"
    folder.mkdir()
    frames = []
    for part in range(6):
        ids = [(part * 7919 + i * 104729) % 100_003 for i in range(20)]  # not in order
        frame = pl.DataFrame({"id": ids, "s": [f"p{part}-{i}" for i in ids]})
        frame.write_parquet(folder / f"in-{part}.parquet", row_group_size=6)
        frames.append(frame)
    raw = (folder / "in-1.parquet").read_bytes()
    (folder / "in-1.parquet").write_bytes(raw[: len(raw) // 2])  # no footer: found at plan time
    spoiled = bytearray((folder / "in-4.parquet").read_bytes())
    spoiled[10:60] = b"\xff" * 50  # the footer reads, the first page header does not: found reading
    (folder / "in-4.parquet").write_bytes(bytes(spoiled))

    script = tmp_path / "job.py"
    script.write_text(CORRUPT_JOB)
    config = {
        "input": str(folder),
        "rows": str(tmp_path / "rows"),
        "bad": str(tmp_path / "bad"),
        "checkpoints": str(tmp_path / "checkpoints"),
        "workers": workers,
    }

    def run(faults: str) -> subprocess.CompletedProcess[str]:
        return run_job_script(script, config, faults)

    proc = run(fault)
    assert "RESULT" not in proc.stdout and proc.returncode != 0, "the fault did not fire"
    proc = run("")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.split("RESULT ", 1)[1])["restored_from"] is not None
    rows = committed(tmp_path / "rows", "parquet")
    same_rows(rows, pl.concat([frames[i] for i in (0, 2, 3, 5)]))
    bad = committed(tmp_path / "bad", "ndjson").sort("file")
    assert bad["file"].to_list() == [str(folder / "in-1.parquet"), str(folder / "in-4.parquet")]
    assert bad["reason"].str.starts_with("corrupt file skipped").all()
