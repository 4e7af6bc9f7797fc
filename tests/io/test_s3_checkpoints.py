"""Checkpoints on an object store: s3fs against a real moto_server on loopback.

The manifest commit on an object store is a single create-if-absent put (``open(path, "xb")``):
a second create of the same manifest must be refused, so two writers can never both
"complete" one checkpoint.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import polars as pl
import pytest

import arrowflow as af
from arrowflow._runtime.checkpoints import CheckpointStorage, Manifest
from arrowflow.errors import CheckpointError


def _manifest(checkpoint_id: int) -> Manifest:
    return Manifest(
        id=checkpoint_id,
        time=0.0,
        flow="f",
        fingerprint="x",
        operators={},
        parallelism=1,
        max_parallelism=128,
        sources={},
        state=[],
        sinks={},
        files=[],
    )


def test_manifest_create_if_absent_on_s3(s3: tuple[Any, str, dict[str, Any]]) -> None:
    fs, url, options = s3
    storage = CheckpointStorage(f"{url}/ck", options)
    assert not storage.local
    storage.write_manifest(_manifest(1))
    with pytest.raises(CheckpointError, match=r"already exists|at the same time"):
        storage.write_manifest(_manifest(1))
    # The put itself refuses a second create, even when the existence check is skipped.
    with pytest.raises(FileExistsError):
        with fs.open(f"{storage.root}/chk-00000001/_MANIFEST.json", "xb") as handle:
            handle.write(b"{}")
    assert storage.latest().id == 1


@pytest.mark.parametrize("workers", [0, 2])
def test_a_job_checkpoints_to_s3_and_its_output_is_exact(
    s3: tuple[Any, str, dict[str, Any]], workers: int
) -> None:
    fs, url, options = s3
    rng = np.random.default_rng(5)
    df = pl.DataFrame({"user": rng.integers(0, 300, 20_000), "amount": rng.random(20_000)})
    flow = af.Flow("s3job")

    def paced(batch: pl.DataFrame) -> pl.DataFrame:
        time.sleep(0.02)  # the run outlasts a few row-count checkpoints, whatever the start-up
        return batch

    rows = flow.from_polars(df, splits=8).map_batches(paced)
    totals = rows.key_by("user").agg(n=pl.len(), total=pl.col("amount").sum())
    totals.write_parquet(f"{url}/out", storage_options=options)
    result = flow.run(
        workers=workers,
        state="arrow",
        checkpoint_dir=f"{url}/ck",
        storage_options=options,
        checkpoint_every=af.every_rows(6_000),  # 3 + the final one: 128 S3 files each
        batch_size=1_000,
    )
    assert len(result.checkpoints) >= 2
    files = sorted(
        p for p in fs.find(f"{url}/out".removeprefix("s3://")) if "/." not in p and "/_" not in p
    )
    updates = pl.concat([pl.read_parquet(fs.open(p, "rb").read()) for p in files])
    latest = updates.with_row_index("_i").group_by("user").last().drop("_i").sort("user")
    expected = df.group_by("user").agg(n=pl.len(), total=pl.col("amount").sum()).sort("user")
    assert latest.select("user", "n").equals(expected.select("user", "n"))
    assert (latest["total"] - expected["total"]).abs().max() < 1e-9
    storage = CheckpointStorage(f"{url}/ck", options)
    newest = storage.latest()
    assert newest is not None and newest.final and newest.id == result.checkpoints[-1]
    state = af.read_state(f"{url}/ck", "agg", storage_options=options).sort("user")
    assert state.select("user", "n").equals(expected.select("user", "n"))
