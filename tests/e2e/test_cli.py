"""The ``arrowflow`` command, used as a user would: a subprocess, its exit code, what it prints,
and the files it wrote, checked against polars computing the same thing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import polars as pl
import pytest

from arrowflow.demo import BROKEN_LINES, SCHEMA
from arrowflow.testing import assert_frame_equal_unordered

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
DEMO_ROWS = 200_000


def arrowflow_command() -> list[str]:
    """The installed console script next to this interpreter (else ``python -m arrowflow.cli``)."""
    script = Path(sys.executable).with_name("arrowflow")
    return [str(script)] if script.exists() else [sys.executable, "-m", "arrowflow.cli"]


def arrowflow(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*arrowflow_command(), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=240,
    )


def shopping_totals_by_polars(data: Path) -> pl.DataFrame:
    """What the demo flow computes, by polars over the same files (broken lines left out)."""
    lines = (data / "mobile" / "uploads.ndjson").read_text().splitlines()
    good = "\n".join(line for line in lines if line not in BROKEN_LINES) + "\n"
    mobile = pl.read_ndjson(good.encode(), schema=SCHEMA)
    events = pl.concat([pl.read_parquet(data / "web" / "*.parquet"), mobile])
    bought = pl.col("event_type") == "purchase"
    return (
        events.filter(pl.col("event_type").is_in(["add_to_cart", "purchase"]))
        .group_by("user_id")
        .agg(
            cart_adds=(~bought).sum(),
            purchases=bought.sum(),
            revenue_eur=pl.when(bought).then(pl.col("amount") * 0.92).otherwise(0.0).sum(),
            first_seen=pl.col("ts").min(),
            last_seen=pl.col("ts").max(),
        )
    )


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """``arrowflow demo --rows 200000 --dir tmp`` run once for the module."""
    cwd = tmp_path_factory.mktemp("demo")
    done = arrowflow("demo", "--rows", str(DEMO_ROWS), "--dir", "tmp", cwd=cwd)
    return cwd / "tmp", done


def test_demo_exits_0_and_says_what_it_did(
    demo: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    root, done = demo
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert f"{DEMO_ROWS:,} clickstream events" in out
    assert "rows in" in out and f"{DEMO_ROWS:,}" in out
    assert "rows out" in out and "rows/s" in out
    assert f"malformed  {len(BROKEN_LINES):>13,}" in out
    assert str(Path("tmp") / "out" / "per_user") in out
    assert "top users by revenue" in out and "revenue_eur" in out
    assert "Traceback" not in done.stderr
    # What it suggests can be done without the demo's source: no flow object to call .run on.
    assert "flow.run(" not in out
    assert "arrowflow run job.py --state lmdb --checkpoint-dir" in out
    # The late events are counted (the committed output) and explained.
    late_files = list((root / "out" / "late").glob("*.ndjson"))
    late = pl.read_ndjson(late_files).height if late_files else 0
    assert f"late events: {late:,} in " in out
    assert "the watermark waits 5 s" in out or "behind the newest event" in out
    # a restart would hide a crash: the last line says there was none
    assert out.strip().splitlines()[-1] == "restarts: none (no worker failed)"
    assert out.count("restarts: ") == 1


def test_demo_output_equals_polars(demo: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    root, done = demo
    assert done.returncode == 0, done.stderr
    result = pl.read_parquet(root / "out" / "per_user" / "*.parquet")
    assert_frame_equal_unordered(
        result, shopping_totals_by_polars(root / "data"), check_dtypes=False
    )
    # only committed files are visible; the staging folder is hidden
    assert all(
        not p.name.startswith((".", "_")) for p in (root / "out" / "per_user").glob("*.parquet")
    )


def test_demo_sets_the_broken_lines_aside(
    demo: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    root, done = demo
    assert done.returncode == 0, done.stderr
    malformed = pl.scan_ndjson(root / "out" / "malformed" / "*.ndjson").collect()
    assert sorted(malformed["raw"].to_list()) == sorted(BROKEN_LINES)
    assert malformed["file"].str.ends_with("uploads.ndjson").all()
    assert malformed["reason"].str.len_chars().min() > 0


def test_demo_reuses_its_data_and_gives_the_same_answer_with_two_workers(
    demo: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    root, first = demo
    assert first.returncode == 0, first.stderr
    before = pl.read_parquet(root / "out" / "per_user" / "*.parquet")
    again = arrowflow(
        "demo", "--rows", str(DEMO_ROWS), "--dir", str(root), "--workers", "2", cwd=root.parent
    )
    assert again.returncode == 0, again.stderr
    assert "reusing the data" in again.stdout
    assert "2 worker processes" in again.stdout
    assert_frame_equal_unordered(pl.read_parquet(root / "out" / "per_user" / "*.parquet"), before)


@pytest.mark.parametrize("target", ["hourly_revenue.py", "hourly_revenue.py:flow"])
def test_run_example(demo: tuple[Path, subprocess.CompletedProcess[str]], target: str) -> None:
    root, done = demo
    assert done.returncode == 0, done.stderr
    ran = arrowflow(
        "run", str(EXAMPLES / target), cwd=root.parent, env={"ARROWFLOW_DEMO_DIR": str(root)}
    )
    assert ran.returncode == 0, ran.stderr
    assert "flow 'hourly-revenue' finished" in ran.stdout
    web_rows = (
        pl.scan_parquet(root / "data" / "web" / "*.parquet").select(pl.len()).collect().item()
    )
    assert f"{web_rows:,}" in ran.stdout
    expected = (
        pl.read_parquet(root / "data" / "web" / "*.parquet")
        .filter(pl.col("event_type").is_in(["add_to_cart", "purchase"]))
        .group_by(pl.col("ts").dt.truncate("1h").alias("hour"), "event_type")
        .agg(events=pl.len(), amount=pl.col("amount").sum(), biggest=pl.col("amount").max())
    )
    found = pl.read_parquet(root / "out" / "hourly_revenue" / "*.parquet")
    assert_frame_equal_unordered(found, expected, check_dtypes=False)


def test_run_with_workers_and_batch_size(
    demo: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    root, done = demo
    assert done.returncode == 0, done.stderr
    ran = arrowflow(
        "run",
        str(EXAMPLES / "clean_uploads.py:flow"),
        "--workers",
        "2",
        "--batch-size",
        "5000",
        cwd=root.parent,
        env={"ARROWFLOW_DEMO_DIR": str(root)},
    )
    assert ran.returncode == 0, ran.stderr
    assert "2 worker processes" in ran.stdout
    quarantine = pl.scan_ndjson(root / "out" / "uploads_quarantine" / "*.ndjson").collect()
    assert sorted(quarantine["raw"].to_list()) == sorted(BROKEN_LINES)
    clean = pl.read_parquet(root / "out" / "uploads_clean" / "*.parquet")
    lines = (root / "data" / "mobile" / "uploads.ndjson").read_text().splitlines()
    assert clean.height == len(lines) - len(BROKEN_LINES)


# ---------------------------------------------------------------------------- run: job files
def write_job(folder: Path, body: str, name: str = "job.py") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(body))
    return path


TWO_FLOWS = """
    import polars as pl
    import arrowflow as af

    numbers = pl.DataFrame({"k": [1, 2, 1, 3], "v": [1.0, 2.0, 3.0, 4.0]})

    totals = af.Flow("totals")
    totals.from_polars(numbers).key_by("k").agg(total=pl.col("v").sum()).write_parquet("out/totals")

    doubled = af.Flow("doubled")
    doubled.from_polars(numbers).with_columns(v=pl.col("v") * 2).write_csv("out/doubled")

    if __name__ == "__main__":
        raise SystemExit("the __main__ block must not run under arrowflow run")
"""


def test_run_picks_the_named_flow(tmp_path: Path) -> None:
    job = write_job(tmp_path, TWO_FLOWS)
    ran = arrowflow("run", f"{job}:totals", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert "flow 'totals' finished" in ran.stdout and "rows in" in ran.stdout
    found = pl.read_parquet(tmp_path / "out" / "totals" / "*.parquet")
    assert_frame_equal_unordered(found, pl.DataFrame({"k": [1, 2, 3], "total": [4.0, 2.0, 4.0]}))
    assert not (tmp_path / "out" / "doubled").exists()


def test_run_with_several_flows_and_no_name_is_a_usage_error(tmp_path: Path) -> None:
    job = write_job(tmp_path, TWO_FLOWS)
    ran = arrowflow("run", str(job), cwd=tmp_path)
    assert ran.returncode == 2
    assert "several flows" in ran.stderr and "totals" in ran.stderr and "doubled" in ran.stderr
    assert "Traceback" not in ran.stderr


def test_run_unknown_flow_name_lists_the_flows(tmp_path: Path) -> None:
    job = write_job(tmp_path, TWO_FLOWS)
    ran = arrowflow("run", f"{job}:nope", cwd=tmp_path)
    assert ran.returncode == 2
    assert "no Flow named 'nope'" in ran.stderr and "totals" in ran.stderr


def test_run_file_without_flows(tmp_path: Path) -> None:
    job = write_job(tmp_path, "x = 1\n")
    ran = arrowflow("run", str(job), cwd=tmp_path)
    assert ran.returncode == 2
    assert "defines no arrowflow Flow" in ran.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["run", "missing.py"],
        ["run"],
        ["run", "job.py", "--workers", "-1"],
        ["run", "job.py", "--batch-size", "0"],
        ["run", "job.py", "--frobnicate"],
        ["explode"],
        [],
    ],
)
def test_usage_errors_exit_2(tmp_path: Path, args: list[str]) -> None:
    write_job(tmp_path, TWO_FLOWS)
    ran = arrowflow(*args, cwd=tmp_path)
    assert ran.returncode == 2, ran.stdout + ran.stderr
    assert "usage:" in ran.stderr or "no such job file" in ran.stderr
    assert "Traceback" not in ran.stderr


def test_arrowflow_error_exits_1_with_its_message_and_no_traceback(tmp_path: Path) -> None:
    job = write_job(
        tmp_path,
        """
        import polars as pl
        import arrowflow as af

        flow = af.Flow("broken")
        flow.read_parquet("no/such/folder/*.parquet").write_parquet("out")
    """,
    )
    ran = arrowflow("run", str(job), cwd=tmp_path)
    assert ran.returncode == 1
    assert "matches no file" in ran.stderr
    assert "Traceback" not in ran.stderr


def test_build_time_error_in_the_job_exits_1(tmp_path: Path) -> None:
    job = write_job(
        tmp_path,
        """
        import polars as pl
        import arrowflow as af

        flow = af.Flow("typo")
        flow.from_polars(pl.DataFrame({"amount": [1.0]})).filter(pl.col("amuont") > 0).write_parquet("out")
    """,
    )
    ran = arrowflow("run", str(job), cwd=tmp_path)
    assert ran.returncode == 1
    assert "amuont" in ran.stderr and "Traceback" not in ran.stderr


def test_job_file_exception_shows_its_traceback(tmp_path: Path) -> None:
    job = write_job(tmp_path, "raise ValueError('the job file itself is broken')\n")
    ran = arrowflow("run", str(job), cwd=tmp_path)
    assert ran.returncode == 1
    assert "Traceback" in ran.stderr and "the job file itself is broken" in ran.stderr


def test_checkpoint_flags_are_passed_to_flow_run(tmp_path: Path) -> None:
    job = write_job(tmp_path, TWO_FLOWS)
    ran = arrowflow(
        "run",
        f"{job}:totals",
        "--checkpoint-dir",
        str(tmp_path / "ckpt"),
        "--checkpoint-every",
        "10s",
        "--restore",
        "latest",
        cwd=tmp_path,
    )
    if ran.returncode == 1:  # checkpoints not built yet: the engine's own clear error
        assert "checkpoint" in ran.stderr and "Traceback" not in ran.stderr
    else:
        assert ran.returncode == 0, ran.stderr
        assert "flow 'totals' finished" in ran.stdout


def test_functions_in_the_job_file_reach_worker_processes(tmp_path: Path) -> None:
    """A pool worker cannot import the job file by name: its functions travel by value."""
    write_job(tmp_path, "def bonus(amount):\n    return amount * 10\n", name="helpers.py")
    job = write_job(
        tmp_path,
        """
        import polars as pl
        import arrowflow as af
        from helpers import bonus

        def add_bonus(frame: pl.DataFrame) -> pl.DataFrame:
            return frame.with_columns(bonus=bonus(pl.col("v")))

        flow = af.Flow("bonus")
        data = pl.DataFrame({"k": list(range(100)), "v": [float(i) for i in range(100)]})
        flow.from_polars(data, splits=4).map_batches(add_bonus).write_parquet("out")
    """,
    )
    ran = arrowflow("run", str(job), "--workers", "2", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    found = pl.read_parquet(tmp_path / "out" / "*.parquet")
    assert found.height == 100
    assert (found["bonus"] == found["v"] * 10).all()


def test_a_run_in_a_clone_of_the_repository_uses_the_installed_package(tmp_path: Path) -> None:
    """The README's first command runs in the clone: its ./arrowflow folder (the source tree,
    which has no arrowflow.io) must not be what the pool's forkserver preloads."""
    clone = tmp_path / "clone"
    (clone / "arrowflow").mkdir(parents=True)
    (clone / "arrowflow" / "__init__.py").write_text(
        'raise RuntimeError("imported the folder ./arrowflow, not the installed package")\n'
    )
    frame = pl.DataFrame({"user": [i % 7 for i in range(3_000)], "amount": [1.5] * 3_000})
    frame.write_parquet(tmp_path / "in.parquet")
    job = tmp_path / "job.py"
    job.write_text(
        "import arrowflow as af, polars as pl\n"
        "flow = af.Flow('clone')\n"
        f"totals = flow.read_parquet({str(tmp_path / 'in.parquet')!r}).key_by('user')\n"
        "totals.agg(total=pl.col('amount').sum()).write_parquet("
        f"{str(tmp_path / 'out')!r})\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "ARROWFLOW_START_METHOD"}
    done = subprocess.run(
        [*arrowflow_command(), "run", str(job), "--workers", "2"],
        cwd=clone,
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    expected = frame.group_by("user").agg(total=pl.col("amount").sum())
    assert_frame_equal_unordered(pl.read_parquet(tmp_path / "out"), expected)


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--checkpoint-dir", "ck", "--checkpoint-every", "banana"], "cannot read 'banana'"),
        (["--state", "nosuch"], "unknown state backend 'nosuch'"),
        (["--workers", "-1"], "workers"),
    ],
)
def test_a_wrong_flag_value_is_wrong_usage(tmp_path: Path, flags: list[str], says: str) -> None:
    """One rule (--help): a wrong flag value exits 2, like an unknown flag (new-user trial)."""
    job = tmp_path / "job.py"
    job.write_text(
        "import arrowflow as af, polars as pl\n"
        "flow = af.Flow('flags')\n"
        f"flow.from_polars(pl.DataFrame({{'a': [1, 2]}})).write_parquet({str(tmp_path / 'o')!r})\n"
    )
    done = arrowflow("run", str(job), *flags, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert says in done.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("workers", ["0", "2"])
def test_ctrl_c_exits_130_with_worker_processes_too(tmp_path: Path, workers: str) -> None:
    job = tmp_path / "job.py"
    job.write_text(
        "import time\n"
        "import arrowflow as af, polars as pl\n"
        "def slow(batch):\n"
        "    time.sleep(0.2)\n"
        "    return batch\n"
        "flow = af.Flow('long')\n"
        "rows = flow.from_polars(pl.DataFrame({'a': list(range(100_000))}), splits=50)\n"
        f"rows.map_batches(slow).write_parquet({str(tmp_path / 'o')!r})\n"
    )
    process = subprocess.Popen(
        [*arrowflow_command(), "run", str(job), "--workers", workers, "--batch-size", "100"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob("o/*")) and time.monotonic() < deadline:
        time.sleep(0.05)  # running: its output folder has staging files
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
