"""Keyed running aggregation on every state backend and executor equals polars' group_by.

(The ``memory`` backend runs the same comparisons in ``tests/arrowflow/test_aggregation.py``.)
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest

import arrowflow as af
from arrowflow.testing import assert_frame_equal_unordered, collect_all

BACKENDS = ["arrow", "lmdb", "sql", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
def state(request: pytest.FixtureRequest) -> str:
    """A ``state=`` argument: a backend name, or a PostgreSQL URL for the sql backend."""
    if request.param == "postgresql":
        return str(request.getfixturevalue("postgres_url"))
    return str(request.param)


def _events(n: int = 3000, seed: int = 11) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    user = pl.Series(rng.integers(0, 400, n), dtype=pl.Int64).set(
        pl.Series(rng.random(n) < 0.05), None
    )
    return pl.DataFrame(
        {
            "user": user,
            "country": pl.Series(rng.choice(["de", "fr", "ünï", "", "x'y\"z"], n).tolist()),
            "day": pl.Series(
                [dt.date(2024, 1, 1) + dt.timedelta(days=int(d)) for d in rng.integers(0, 5, n)]
            ),
            "ts": pl.Series(rng.integers(0, 10**9, n)).cast(pl.Datetime("ms")),
            # quarters: float sums are exact whatever the order the batches add them in
            "amount": pl.Series(rng.integers(-400, 4000, n) / 4).set(
                pl.Series(rng.random(n) < 0.1), None
            ),
            "qty": pl.Series(rng.integers(-3, 50, n), dtype=pl.Int32),
            "label": pl.Series([f"l{int(r * 100)}" for r in rng.random(n)]).set(
                pl.Series(rng.random(n) < 0.2), None
            ),
            "score": pl.Series([0.0, -0.0, 1.5, 2.25], dtype=pl.Float64).sample(
                n, with_replacement=True, seed=seed
            ),
        }
    )


EVENTS = _events()
AGGS = {
    "n": pl.len(),
    "items": pl.col("amount").count(),
    "total": pl.col("amount").sum(),
    "qty_sum": pl.col("qty").sum(),
    "lowest": pl.col("amount").min(),
    "highest_qty": pl.col("qty").max(),
    "first_label": pl.col("label").min(),
    "latest": pl.col("ts").max(),
    "earliest_day": pl.col("day").min(),
    "avg_qty": pl.col("qty").mean(),
}
KEY_SETS = [["user"], ["country", "day"], ["user", "country"], ["score"]]


def test_keyed_aggregation_matches_polars(state: str, workers: int) -> None:
    stream = af.Flow("per-backend").from_polars(EVENTS, splits=3)
    frames = collect_all(
        *(stream.key_by(*keys).agg(**AGGS) for keys in KEY_SETS),
        workers=workers,
        state=state,
        batch_size=400,
    )
    for keys, got in zip(KEY_SETS, frames, strict=True):
        try:
            assert_frame_equal_unordered(got, EVENTS.group_by(keys).agg(**AGGS), rel_tol=1e-12)
        except AssertionError as exc:
            raise AssertionError(f"state={state!r} key_by{tuple(keys)}: {exc}") from None


def test_many_keys_in_one_batch_and_across_batches(state: str) -> None:
    """Every batch updates most of 20k keys; the state is read and rewritten many times."""
    rng = np.random.default_rng(5)
    n = 60_000
    df = pl.DataFrame({"id": rng.integers(0, 20_000, n), "v": rng.integers(0, 1000, n)})
    aggs = {"n": pl.len(), "total": pl.col("v").sum(), "top": pl.col("v").max()}
    got = (
        af.Flow("many")
        .from_polars(df)
        .key_by("id")
        .agg(**aggs)
        .collect(state=state, batch_size=15_000)
    )
    assert_frame_equal_unordered(got, df.group_by("id").agg(**aggs))
