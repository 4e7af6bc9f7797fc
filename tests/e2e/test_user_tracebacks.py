"""A user's function that raises inside ``map_batches`` or ``process`` shows in the error the
user sees with its own file, line number and source line: in this process (``workers=0``), from
a pool worker (``workers=2``, the function shipped by value), through the public API, ``python
job.py`` and ``arrowflow run``, and from a notebook cell (no file: the cell's name and source)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from arrowflow.errors import WorkerError

JOB = textwrap.dedent(
    """\
    import sys

    import arrowflow as af
    import polars as pl

    DATA = sys.argv[3] if __name__ == "__main__" else {data!r}


    def threshold(batch: pl.DataFrame) -> pl.Series:
        return batch["amount"] > 50


    def check_amounts(batch: pl.DataFrame) -> pl.DataFrame:
        if threshold(batch).any():
            raise ValueError(f"amount too big in a batch of {{batch.height}} rows")
        return batch


    def check_per_user(batch: pl.DataFrame, ctx) -> pl.DataFrame:
        big = batch.filter(pl.col("amount") > 50)
        if big.height:
            raise ValueError(f"user {{big['user'][0]}} spent too much")
        return batch


    mapped = af.Flow("mapped")
    mapped.read_parquet(DATA).map_batches(check_amounts).write_parquet({out!r} + "/mapped")

    processed = af.Flow("processed")
    (
        processed.read_parquet(DATA)
        .key_by("user")
        .process(check_per_user)
        .write_parquet({out!r} + "/processed")
    )

    if __name__ == "__main__":
        flow = {{"mapped": mapped, "processed": processed}}[sys.argv[1]]
        flow.run(workers=int(sys.argv[2]), progress=False)
    """
)

RAISES = {
    "mapped": 'raise ValueError(f"amount too big in a batch of {batch.height} rows")',
    "processed": "raise ValueError(f\"user {big['user'][0]} spent too much\")",
}


@pytest.fixture
def job(tmp_path: Path) -> Path:
    """The job file, and the data it reads: amounts up to 99, so each flow's function raises."""
    data = tmp_path / "events.parquet"
    frame = pl.DataFrame({"user": [i % 7 for i in range(200)], "amount": list(range(100)) * 2})
    frame.write_parquet(data)
    assert frame.filter(pl.col("amount") > 50).height > 0  # the condition the job raises on
    path = tmp_path / "user_job.py"
    path.write_text(JOB.format(data=str(data), out=str(tmp_path / "out")))
    return path


def raise_line(job: Path, flow: str) -> int:
    lines = job.read_text().splitlines()
    return next(n for n, line in enumerate(lines, 1) if line.strip() == RAISES[flow])


def assert_names_the_user_frame(text: str, job: Path, flow: str, function: str) -> None:
    frame = f'File "{job}", line {raise_line(job, flow)}, in {function}'
    assert frame in text, text
    after = text[text.index(frame) + len(frame) :].splitlines()
    assert after[1].strip() == RAISES[flow], text  # the source line under the frame
    assert "<dynamic-code>" not in text, text


@pytest.fixture
def loaded(job: Path) -> Iterator[dict[str, Any]]:
    """The job imported by its path, as a test runner or a loader would: not importable by
    name in a fresh worker process, so its functions travel by value."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("user_job_by_path", job)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield vars(module)
    finally:
        del sys.modules[spec.name]


FLOWS = [("mapped", "check_amounts"), ("processed", "check_per_user")]


@pytest.mark.parametrize(("flow", "function"), FLOWS)
def test_the_api_names_the_users_file_and_line(
    job: Path, loaded: dict[str, Any], workers: int, flow: str, function: str
) -> None:
    chosen = loaded[flow]
    with pytest.raises((ValueError, WorkerError)) as caught:
        chosen.run(workers=workers, progress=False)
    text = "".join(traceback.format_exception(caught.value))
    assert "spent too much" in text or "amount too big" in text, text
    assert_names_the_user_frame(text, job, flow, function)


def run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=180, check=False)


def arrowflow_command() -> list[str]:
    script = Path(sys.executable).with_name("arrowflow")
    return [str(script)] if script.exists() else [sys.executable, "-m", "arrowflow.cli"]


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize(("flow", "function"), FLOWS)
def test_arrowflow_run_names_the_users_file_and_line(
    job: Path, workers: int, flow: str, function: str
) -> None:
    done = run(
        [*arrowflow_command(), "run", f"{job}:{flow}", "--workers", str(workers), "--no-progress"],
        job.parent,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert_names_the_user_frame(done.stderr, job, flow, function)


@pytest.mark.parametrize("workers", [0, 2])
def test_python_job_py_names_the_users_file_and_line(job: Path, workers: int) -> None:
    """Functions of ``__main__`` (a script run with ``python job.py``) go by value too."""
    data = str(job.parent / "events.parquet")
    done = run([sys.executable, str(job), "mapped", str(workers), data], job.parent)
    assert done.returncode == 1, done.stdout + done.stderr
    assert_names_the_user_frame(done.stderr, job, "mapped", "check_amounts")


@pytest.mark.timeout(300)
def test_a_notebook_cell_shows_its_name_and_source_from_a_worker(
    job: Path, tmp_path: Path, this_kernel: Any
) -> None:
    """A notebook's function has no file a worker could read: the cell's source goes with it."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    data = str(job.parent / "events.parquet")
    define = textwrap.dedent(
        """\
        import polars as pl

        def check(batch):
            if (batch["amount"] > 50).any():
                raise ValueError("too big in a cell")
            return batch
        """
    )
    run_it = textwrap.dedent(
        f"""\
        import traceback
        import arrowflow as af
        from arrowflow.errors import WorkerError

        flow = af.Flow("cell")
        flow.read_parquet({data!r}).map_batches(check).write_parquet({str(tmp_path / "o")!r})
        try:
            flow.run(workers=2, progress=False)
        except WorkerError as exc:
            print("".join(traceback.format_exception(exc)))
        """
    )
    notebook = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell(define), nbformat.v4.new_code_cell(run_it)]
    )
    manager = this_kernel
    client = nbclient.NotebookClient(
        notebook, timeout=120, km=manager, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    text = "".join(out.get("text", "") for out in notebook.cells[1].outputs)
    assert "worker" in text and "too big in a cell" in text, text
    frame = next(line for line in text.splitlines() if line.strip().endswith(", in check"))
    assert ", line 5, in check" in frame and "<dynamic-code>" not in text, text
    after = text.splitlines()[text.splitlines().index(frame) + 1]
    assert after.strip() == 'raise ValueError("too big in a cell")', text
