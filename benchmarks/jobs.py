"""The benchmark jobs. Each one is a :class:`Job`: contenders run in their own process.

A job says which data it needs, which *contenders* run it (an engine plus options: polars,
arrowflow with N workers, arrowflow with checkpoints, ...), which of them is the baseline the
others are divided by, how each contender runs, and how to read back its output so the runner
can check that every contender computed the same answer.

To add a job (W2 windows, channel throughput, checkpoint cost), write a subclass and add it to
:data:`JOBS`; ``run.py`` needs no change. ``run_contender`` runs in a fresh child process and
returns ``{"rows_in": ..., "rows_out": ...}`` (anything else it returns is printed in the JSON
results).
"""

from __future__ import annotations

import glob
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl


@dataclass(frozen=True)
class Contender:
    """One way of running a job: ``engine`` ("polars", "arrowflow", ...) with ``options``."""

    label: str
    engine: str
    workers: int | None = None
    options: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    #: the contender this one is also paired with (its own baseline: W3's run of the same
    #: backend without checkpoints); the table's last column
    against: str | None = None


class Job:
    name = ""
    description = ""
    formats: tuple[str, ...] = ("parquet",)
    baseline = "polars"
    #: columns the output is sorted by before two contenders' outputs are compared
    sort_by: tuple[str, ...] = ()

    def contenders(self, workers: list[int | None]) -> list[Contender]:
        return [
            Contender("polars", "polars"),
            *(
                Contender(f"arrowflow w={'default' if w is None else w}", "arrowflow", w)
                for w in workers
            ),
        ]

    def run_contender(
        self, contender: Contender, data: dict[str, Path], out: Path
    ) -> dict[str, Any]:
        """Run in the child process. ``out`` is an empty directory for the contender's output.

        Returns at least ``rows_in``, ``rows_out`` and ``job_s`` (the job itself, without the
        interpreter start-up and imports the runner's wall time includes).
        """
        raise NotImplementedError

    def read_output(self, out: Path) -> pl.DataFrame:
        """The Parquet files a contender wrote into ``out``, sorted by :attr:`sort_by`."""
        files = sorted(glob.glob(str(out / "*.parquet")))
        if not files:
            return pl.DataFrame()
        return pl.read_parquet(files).sort(list(self.sort_by))

    def compare(self, expected: pl.DataFrame, found: pl.DataFrame) -> str | None:
        """None when ``found`` is the same answer as ``expected``, else what differs."""
        from polars.testing import assert_frame_equal

        try:
            assert_frame_equal(
                expected,
                found,
                check_dtypes=False,
                check_column_order=False,
                rel_tol=1e-9,
                abs_tol=1e-6,
            )
        except AssertionError as exc:
            return str(exc).strip().splitlines()[0]
        return None


class W1(Job):
    """W1, batch aggregation: purchases and cart adds per user, written as Parquet."""

    name = "w1"
    description = (
        "W1 batch aggregation: event_type in (purchase, add_to_cart), "
        "group by user_id: count, sum(amount) -> Parquet"
    )
    sort_by = ("user_id",)
    kept = ("purchase", "add_to_cart")

    def run_contender(
        self, contender: Contender, data: dict[str, Path], out: Path
    ) -> dict[str, Any]:
        source = data["parquet"]
        started = time.perf_counter()
        if contender.engine == "polars":
            (
                pl.scan_parquet(source)
                .filter(pl.col("event_type").is_in(self.kept))
                .group_by("user_id")
                .agg(n=pl.len(), total=pl.col("amount").sum())
                .sink_parquet(out / "part-0.parquet")
            )
            job_s = time.perf_counter() - started
            rows_in = pl.scan_parquet(source).select(pl.len()).collect().item()  # metadata only
            rows_out = pl.scan_parquet(out / "part-0.parquet").select(pl.len()).collect().item()
            return {"rows_in": rows_in, "rows_out": rows_out, "job_s": job_s}
        if contender.engine == "arrowflow":
            import arrowflow as af

            flow = af.Flow("w1")
            (
                flow.read_parquet(str(source))
                .filter(pl.col("event_type").is_in(self.kept))
                .key_by("user_id")
                .agg(n=pl.len(), total=pl.col("amount").sum())
                .write_parquet(str(out))
            )
            result = flow.run(workers=contender.workers, **contender.options)
            return {
                "rows_in": result.rows_in,
                "rows_out": result.rows_out,
                "job_s": time.perf_counter() - started,
                "engine_s": result.elapsed_s,
            }
        msg = f"job {self.name} has no engine {contender.engine!r}"
        raise ValueError(msg)


JOBS: dict[str, Job] = {job.name: job for job in (W1(),)}


def _register_module_jobs() -> None:
    """Jobs defined beside their own benchmark script (bench_windows.py: W2, W2-lowcard)."""
    from bench_checkpoints import CHECKPOINT_JOBS
    from bench_windows import WINDOW_JOBS

    JOBS.update(WINDOW_JOBS)
    JOBS.update(CHECKPOINT_JOBS)


_register_module_jobs()
