"""Plan fingerprints of representative flows, pinned.

A checkpoint records the plan's fingerprint and one per operator; a restore compares them
with the new plan's (docs/checkpoints.md). A refactor of the planner or of the operator
kinds that changed them would make every existing checkpoint look like one of another
flow. The values below were computed on main before operator kinds became classes
(commit a18b9d4); they change only with a deliberate, documented change of what a
checkpoint depends on.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl
import pytest

import arrowflow as af
from arrowflow.testing import CollectingSink

DATA = pl.DataFrame(
    {
        "ts": pl.Series(
            [dt.datetime(2024, 5, 1, 12, 0, s) for s in (1, 7, 15, 31, 42, 58)],
            dtype=pl.Datetime("ms"),
        ),
        "user": ["ann", "bob", "ann", "cy", "bob", "ann"],
        "amount": [10.0, 1.5, 5.0, 7.0, 2.5, 4.0],
        "qty": [1, 2, 3, 4, 5, 6],
    }
)


def _keep_even(batch: pl.DataFrame) -> pl.DataFrame:
    return batch.filter(pl.col("qty") % 2 == 0)


def _running(batch: pl.DataFrame, ctx: af.ProcessContext) -> pl.DataFrame:
    before = ctx.state("n").get(batch).fill_null(0)
    out = batch.select("user", n=before + pl.int_range(1, pl.len() + 1).over("user"))
    ctx.state("n").put(out, pl.col("n"))
    ctx.emit("seen", batch)
    return out


def _stateless_and_agg(tmp_path: Path) -> af.Flow:
    flow = af.Flow("orders")
    (
        flow.from_polars(DATA)
        .filter(pl.col("amount") > 1)
        .with_columns(eur=pl.col("amount") * 0.9)
        .key_by("user")
        .agg(total=pl.col("eur").sum(), n=pl.len(), last=pl.col("qty").last())
        .write_to(CollectingSink())
    )
    return flow


def _windows(tmp_path: Path) -> af.Flow:
    flow = af.Flow("windows")
    timed = flow.from_polars(DATA).with_watermark("ts", delay="5s")
    tumbling = timed.key_by("user").window(af.tumbling("10s")).agg(n=pl.len())
    tumbling.write_to(CollectingSink(), name="per_10s")
    sliding = (
        timed.key_by("user")
        .window(af.sliding("20s", every="10s"), allowed_lateness="2s")
        .agg(total=pl.col("amount").sum(), name="sliding")
    )
    sliding.write_to(CollectingSink(), name="per_20s")
    sliding.side_output("late").write_to(CollectingSink(), name="late_rows")
    (
        timed.key_by("user")
        .window(af.session(gap="15s"))
        .agg(mean=pl.col("amount").mean(), name="sessions")
        .write_to(CollectingSink(), name="per_session")
    )
    return flow


def _process_and_files(tmp_path: Path) -> af.Flow:
    DATA.write_parquet(tmp_path / "in.parquet")
    flow = af.Flow("files")
    src = flow.read_parquet(str(tmp_path / "in.parquet"))
    mapped = src.map_batches(_keep_even).select("user", "qty", "amount")
    both = mapped.union(flow.from_polars(DATA.select("user", "qty", "amount"), name="extra"))
    counted = both.key_by("user").process(
        _running,
        states=[af.ValueState("n", pl.Int64, ttl="1h")],
        side_outputs={"seen": None},
        name="count",
    )
    counted.write_parquet(str(tmp_path / "out"), name="counts")
    counted.side_output("seen").write_csv(str(tmp_path / "seen"))
    src.side_output("malformed").write_ndjson(str(tmp_path / "bad"))
    return flow


FLOWS = {
    "stateless_and_agg": (
        _stateless_and_agg,
        "23c4781615def20c",
        {
            "agg": "b938e4064b340a2a",
            "collecting": "9a9e411e11cce9c5",
            "from_polars": "f109015d4b8edcf4",
        },
    ),
    "windows": (
        _windows,
        "90d88149222cb2d1",
        {
            "from_polars": "f109015d4b8edcf4",
            "late_rows": "a093c5e1db1938c1",
            "per_10s": "c1091d676a1d882c",
            "per_20s": "7a7e6ed4fecf5f8b",
            "per_session": "ffff6cacbfb00035",
            "sessions": "41d5f2af9552c3ce",
            "sliding": "caf1c9926ea4e9bc",
            "window": "d22e9d22c06a4d23",
        },
    ),
    "process_and_files": (
        _process_and_files,
        "265f5bbfdb9d82b2",
        {
            "count": "b3a7d6ee88ff0c49",
            "counts": "7474c15dc5b21ae3",
            "extra": "4d26780838d3944e",
            "read_parquet": "06dfd544b4689cb9",
            "write_csv": "b23d3654054b3e34",
            "write_ndjson": "02ee08dd80b4cdad",
        },
    ),
}


@pytest.mark.parametrize("name", sorted(FLOWS))
def test_fingerprints_of_existing_flows_do_not_change(name: str, tmp_path: Path) -> None:
    build, fingerprint, operators = FLOWS[name]
    plan = build(tmp_path).plan()
    assert (plan.fingerprint, plan.operator_fingerprints) == (fingerprint, operators)


def test_max_parallelism_is_part_of_the_fingerprint(tmp_path: Path) -> None:
    flow = _stateless_and_agg(tmp_path)
    assert flow.plan(max_parallelism=64).fingerprint == "2715e3c54b2759d8"
