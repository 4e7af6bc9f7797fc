"""W3 of docs/benchmarks.md: the cost of checkpoints on the 10M-event keyed aggregation.

    python benchmarks/run.py w3 --rows 10000000 --workers 2 --repeat 3

Contenders (each in a fresh process, interleaved, medians; run.py does the timing):

- ``arrowflow w=N`` (the baseline): W1's keyed aggregation with no checkpoints, memory state;
- ``arrowflow w=N ckpt 1s``: the same with a checkpoint every second to a local folder
  (snapshots as Arrow IPC);
- ``arrowflow w=N <backend>`` and ``arrowflow w=N ckpt 1s <backend>``: the same pair for
  ``arrow``, ``lmdb`` (snapshots by LMDB's consistent copy) and ``sql`` (SQLite).

The checkpoint overhead of a backend is its checkpointed run over its own run without
checkpoints, paired round by round (the ``vs own`` column; target: under 1.05), as the
backend's own cost is not a checkpoint's. Each checkpointed
contender also reports how many checkpoints it took, their mean size, and how long reading
the newest one's state back takes (what a restore loads). A running aggregation emits every
key it updated at each checkpoint, so outputs are compared on the newest row per key.
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

#: every state backend (the sql one on embedded SQLite)
STATES = ("memory", "arrow", "lmdb", "sql")


class W3(Job):
    name = "w3"
    description = (
        "W3 checkpoint cost: W1's keyed aggregation (count, sum per user over purchase/add_to_cart) "
        "with checkpoints every 1 s against none"
    )
    sort_by = ("user_id",)
    baseline = "arrowflow"
    kept = ("purchase", "add_to_cart")

    def contenders(self, workers: list[int | None]) -> list[Contender]:
        found = []
        for w in workers:
            for state in STATES:
                suffix = "" if state == "memory" else f" {state}"
                plain = f"arrowflow w={'default' if w is None else w}{suffix}"
                found.append(Contender(plain, "arrowflow", w, {"state": state}))
                found.append(
                    Contender(
                        f"arrowflow w={'default' if w is None else w} ckpt 1s{suffix}",
                        "arrowflow",
                        w,
                        {"every": "1s", "state": state},
                        against=plain,
                    )
                )
        self.baseline = f"arrowflow w={workers[0]}"
        return found

    def run_contender(
        self, contender: Contender, data: dict[str, Path], out: Path
    ) -> dict[str, Any]:
        import arrowflow as af
        from arrowflow._runtime.checkpoints import CheckpointStorage

        started = time.perf_counter()
        flow = af.Flow("w3")
        (
            flow.read_parquet(str(data["parquet"]))
            .filter(pl.col("event_type").is_in(self.kept))
            .key_by("user_id")
            .agg(n=pl.len(), total=pl.col("amount").sum())
            .write_parquet(str(out / "result"))
        )
        options: dict[str, Any] = {
            "workers": contender.workers,
            "state": contender.options.get("state", "memory"),
        }
        every = contender.options.get("every")
        if every:
            options.update(
                checkpoint_dir=str(out / "_checkpoints"), checkpoint_every=every, restore=None
            )
        result = flow.run(**options)
        report: dict[str, Any] = {
            "rows_in": result.rows_in,
            "rows_out": result.rows_out,
            "job_s": time.perf_counter() - started,
            "engine_s": result.elapsed_s,
        }
        if every:
            storage = CheckpointStorage(str(out / "_checkpoints"))
            listing = storage.list()
            loaded = time.perf_counter()
            state = af.read_state(str(out / "_checkpoints"), "agg")
            seconds = list(result.checkpoint_seconds.values())
            report.update(
                checkpoints=len(result.checkpoints),
                mean_checkpoint_bytes=int(listing["size_bytes"].mean()),
                mean_checkpoint_s=round(sum(seconds) / max(1, len(seconds)), 3),
                state_keys=state.height,
                read_state_s=round(time.perf_counter() - loaded, 3),
            )
        return report

    def read_output(self, out: Path) -> pl.DataFrame:
        files = sorted((out / "result").glob("*.parquet"))
        if not files:
            return pl.DataFrame()
        updates = pl.concat([pl.read_parquet(f) for f in files])
        return (
            updates.with_row_index("_emitted")
            .group_by("user_id")
            .last()
            .drop("_emitted")
            .sort(list(self.sort_by))
        )


CHECKPOINT_JOBS = {"w3": W3()}
