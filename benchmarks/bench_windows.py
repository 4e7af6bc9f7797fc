"""W2 and W2-lowcard of docs/benchmarks.md: keyed 60 s tumbling windows, against polars in the same run.

    python benchmarks/bench_windows.py [w2 w2-lowcard] [--rows 10M] [--repeat 3] [--workers 2]

The runner (``run.py``: fresh child process per run, interleaved repeats, medians, peak
memory, outputs checked against polars) runs these contenders:

- ``polars``: ``scan_parquet`` -> ``dt.truncate("60s")`` -> ``group_by(user, window_start)``
  -> count and sum -> Parquet, in one batch with every core;
- ``arrowflow w=N``: ``with_watermark("ts", delay="10s").key_by("user_id")
  .window(af.tumbling("60s")).agg(...)`` -> Parquet, for each ``--workers`` count;
- ``arrowflow w=N ckpt 10s``: the same with checkpoints every 10 s to a local folder (the
  target of issue 6: at least 3M events/s with 2 workers).

``w2-ckpt`` (W3 for windows) runs W2 without checkpoints (its baseline), with checkpoints
every 10 s and every 1 s: the ratios are what checkpoints of the open windows cost.

W2-lowcard keys by ``user_id % 1000`` (1,000 keys, 1.44M windows): the state-update path
rather than window creation. Both engines compute exactly the same windows (the data is out
of order by under 5 s, less than the watermark delay, so no event is late); a contender
whose output differs from polars' is reported WRONG.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import polars as pl

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from jobs import Contender, Job  # noqa: E402


class W2(Job):
    name = "w2"
    description = (
        "W2 keyed event-time windows: 60 s tumbling on ts (watermark delay 10 s), key user_id: "
        "count, sum(amount) -> Parquet"
    )
    sort_by = ("user_id", "window_start")
    modulo: int | None = None

    def contenders(self, workers: list[int | None]) -> list[Contender]:
        found = [Contender("polars", "polars")]
        for w in workers:
            found.append(Contender(f"arrowflow w={'default' if w is None else w}", "arrowflow", w))
            found.append(
                Contender(
                    f"arrowflow w={'default' if w is None else w} ckpt 10s",
                    "arrowflow",
                    w,
                    {"checkpoint_every": "10s"},
                )
            )
        if (
            self.name == "w2" and max(w or 0 for w in workers) > 0
        ):  # the same, writing lz4 part files instead of zstd
            w = max(w or 0 for w in workers)
            found.append(
                Contender(
                    f"arrowflow w={'default' if w is None else w} ckpt 10s lz4",
                    "arrowflow",
                    w,
                    {"checkpoint_every": "10s", "compression": "lz4"},
                )
            )
        return found

    def _keyed(self, frame: Any) -> Any:
        if self.modulo is None:
            return frame
        return frame.with_columns(pl.col("user_id") % self.modulo)

    def run_contender(
        self, contender: Contender, data: dict[str, Path], out: Path
    ) -> dict[str, Any]:
        source = data["parquet"]
        started = time.perf_counter()
        rows_in = pl.scan_parquet(source).select(pl.len()).collect().item()  # metadata only
        if contender.engine == "polars":
            (
                self._keyed(pl.scan_parquet(source).select("ts", "user_id", "amount"))
                .group_by("user_id", pl.col("ts").dt.truncate("60s").alias("window_start"))
                .agg(n=pl.len(), total=pl.col("amount").sum())
                .with_columns(window_end=pl.col("window_start").dt.offset_by("60s"))
                .sink_parquet(out / "part-0.parquet")
            )
            job_s = time.perf_counter() - started
            rows_out = pl.scan_parquet(out / "part-0.parquet").select(pl.len()).collect().item()
            return {"rows_in": rows_in, "rows_out": rows_out, "job_s": job_s}
        import arrowflow as af

        flow = af.Flow(self.name)
        events = flow.read_parquet(str(source)).with_watermark("ts", delay="10s")
        options = dict(contender.options)
        (
            self._keyed(events)
            .key_by("user_id")
            .window(af.tumbling("60s"))
            .agg(n=pl.len(), total=pl.col("amount").sum())
            .write_parquet(str(out), compression=options.pop("compression", "zstd"))
        )
        if "checkpoint_every" in options:
            options["checkpoint_dir"] = str(out / "_checkpoints")
            options["restore"] = None
        result = flow.run(workers=contender.workers, **options)
        windows = result.metrics().filter(pl.col("kind") == "window")
        return {
            "rows_in": result.rows_in,
            "rows_out": result.rows_out,
            "job_s": time.perf_counter() - started,
            "engine_s": result.elapsed_s,
            "checkpoints": len(result.checkpoints),
            "late": int(windows["late"].sum()),
        }

    def read_output(self, out: Path) -> pl.DataFrame:
        frame = super().read_output(out)
        return (
            frame.select("user_id", "window_start", "window_end", "n", "total")
            if frame.height
            else frame
        )


class W2Lowcard(W2):
    name = "w2-lowcard"
    description = "W2-lowcard: W2 keyed by user_id % 1000 (1,000 keys, 1.44M windows)"
    modulo = 1000


class W2Checkpoints(W2):
    """W3 for windows: W2 with checkpoints every 10 s and every 1 s against none.

    A 10M-event W2 run lasts a few seconds, so a 10 s interval may never fire; the 1 s
    contender makes every checkpoint snapshot about a million open windows per worker
    (the write buffer) while the job runs. The baseline is arrowflow without checkpoints.
    """

    name = "w2-ckpt"
    description = (
        "W2 checkpoint cost: W2 with checkpoints every 10 s and every 1 s "
        "against the same job without checkpoints"
    )

    def contenders(self, workers: list[int | None]) -> list[Contender]:
        found = []
        for w in workers:
            found.append(Contender(f"arrowflow w={'default' if w is None else w}", "arrowflow", w))
            for every in ("10s", "1s"):
                found.append(
                    Contender(
                        f"arrowflow w={'default' if w is None else w} ckpt {every}",
                        "arrowflow",
                        w,
                        {"checkpoint_every": every},
                    )
                )
        self.baseline = f"arrowflow w={workers[0]}"
        return found


WINDOW_JOBS: dict[str, Job] = {job.name: job for job in (W2(), W2Lowcard(), W2Checkpoints())}


def main(argv: list[str] | None = None) -> int:
    import run

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-"):
        argv = ["w2", "w2-lowcard", *argv]
    if "--workers" not in argv:
        argv += ["--workers", "2"]
    return run.main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
