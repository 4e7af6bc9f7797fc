"""A restore the run cannot carry out is refused before it changes anything (new-user trial).

Restoring a checkpoint rolls back the output later checkpoints committed. A restore that then
fails (its state files are in a format the run's backend does not read) used to leave the
output rolled back and the directory unusable for the retry; now it is refused first, with
what to do, and the output and checkpoints are as they were.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

import arrowflow as af
from arrowflow.errors import CheckpointError


def events(n: int) -> pl.DataFrame:
    rng = np.random.default_rng(11)
    return pl.DataFrame({"user": rng.integers(0, 40, n), "amount": rng.random(n).round(3)})


def newest_per_key(out: Path) -> pl.DataFrame:
    parts = sorted(out.glob("part-*.parquet"))  # named by checkpoint: oldest first
    frames = [pl.read_parquet(p).with_columns(order=pl.lit(i)) for i, p in enumerate(parts)]
    return pl.concat(frames).sort("order").unique("user", keep="last").drop("order")


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("other", ["memory", "arrow"])
def test_a_restore_with_a_backend_that_cannot_read_the_state_changes_nothing(
    tmp_path: Path, other: str
) -> None:
    frame = events(30_000)
    out, ck = tmp_path / "out", tmp_path / "ck"

    def flow() -> af.Flow:
        f = af.Flow("backend-switch")
        totals = f.from_polars(frame, splits=6).key_by("user")
        totals.agg(n=pl.len(), total=pl.col("amount").sum()).write_parquet(str(out))
        return f

    first = flow().run(
        workers=0,
        state="lmdb",
        checkpoint_dir=str(ck),
        checkpoint_every=af.every_rows(5_000),
        batch_size=1_000,
        keep_checkpoints=10,
    )
    assert len(first.checkpoints) >= 3
    middle = first.checkpoints[1]
    output, checkpoints = snapshot(out), snapshot(ck)
    with pytest.raises(
        CheckpointError,
        match=rf"cannot restore checkpoint {middle} with state='{other}'.*'lmdb'.*Nothing was changed",
    ):
        flow().run(workers=0, state=other, checkpoint_dir=str(ck), restore=middle)
    assert snapshot(out) == output
    assert snapshot(ck).keys() == checkpoints.keys()
    # The backend that wrote it restores it, and the totals are polars' over the same rows.
    with pytest.warns(UserWarning, match="rolled back output of later checkpoints") as warned:
        again = flow().run(workers=0, state="lmdb", checkpoint_dir=str(ck), restore=middle)
    # The warning names the user's line (this file), not a line inside arrowflow.
    assert {w.filename for w in warned} == {__file__}
    assert again.restored_from == middle
    expected = frame.group_by("user").agg(n=pl.len(), total=pl.col("amount").sum())
    got = newest_per_key(out)
    joined = expected.join(got, on="user", suffix="_got")
    assert joined.height == expected.height == got.height
    assert (joined["n"] == joined["n_got"]).all()
    assert ((joined["total"] - joined["total_got"]).abs() < 1e-9).all()
