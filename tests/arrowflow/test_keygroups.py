"""Key groups: a stable hash of key values, and the contiguous ranges workers own.

State in a checkpoint is organised by key group, so the hash must never change: not
between processes, runs, machines nor library versions. The golden values below are
literal on purpose. If one of these tests fails, the change breaks every checkpoint
taken before it: don't update the numbers, fix the hash (or version the checkpoint
format and migrate).
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import math
import subprocess
import sys
from decimal import Decimal

import numpy as np
import polars as pl
import pytest

import arrowflow as af
from arrowflow._foundation.keygroups import (
    DEFAULT_MAX_PARALLELISM,
    hash_keys,
    key_group_range,
    key_groups,
    owner_of,
)

INTS = [0, 1, -1, 2, 42, 127, 128, 1000, 2**31 - 1, -(2**31), 2**62, -(2**63), 2**63 - 1]
STRINGS = ["", "a", "b", "ab", "ba", "hello", "Hello", "ü", "日本語", "🙂", "a" * 100, " "]
FLOATS = [0.0, -0.0, 1.0, -1.0, 0.5, 1e300, math.inf, -math.inf, math.nan, 3.14159]
DATES = [dt.date(1970, 1, 1), dt.date(2000, 2, 29), dt.date(2024, 12, 31), None]
TIMES = [dt.datetime(1970, 1, 1), dt.datetime(2024, 3, 1, 12, 30, 15, 123000), None]


def groups(values: list, dtype: pl.DataType | None = None, max_parallelism: int = 128) -> list[int]:
    return key_groups(pl.DataFrame({"k": pl.Series(values, dtype=dtype)}), max_parallelism).tolist()


# ---------------------------------------------------------------- golden values


def test_golden_int_hashes_and_groups() -> None:
    hashes = [f"{h:#018x}" for h in hash_keys(pl.DataFrame({"k": INTS})).tolist()]
    assert hashes == [
        "0x0000000000000000",
        "0x7ab40e090f363a7d",
        "0x4bffd802ebfb15e4",
        "0x52ead7e36ea7fea8",
        "0x97ea87f7e45c00a5",
        "0x5c685fe417b2cd92",
        "0xc4a33b91d904948a",
        "0x1f57513b96f10ce3",
        "0x1c20b14bdc7c2097",
        "0x7f8759998563d291",
        "0x56451be349e0883f",
        "0x1bf8e8c673c45ace",
        "0x72eecd51dbdfc852",
    ]
    assert groups(INTS) == [0, 9, 2, 99, 119, 100, 17, 59, 75, 25, 99, 70, 81]
    assert groups(INTS, max_parallelism=7) == [0, 1, 2, 6, 6, 5, 0, 0, 0, 3, 6, 4, 0]
    assert groups(INTS, max_parallelism=1) == [0] * len(INTS)


def test_golden_string_hashes_and_groups() -> None:
    hashes = [f"{h:#018x}" for h in hash_keys(pl.DataFrame({"k": STRINGS})).tolist()]
    assert hashes == [
        "0x0000000000000000",
        "0xef35212588cff90e",
        "0xcdc6c69939205e19",
        "0x18a397c26977fcd0",
        "0x854deecb969dcf96",
        "0x233234a8ae3ebe00",
        "0x8e9b781d09643a77",
        "0xd64afe9d0584bce5",
        "0x238f80acf61169f3",
        "0xbc9f2c8ad28f3f05",
        "0x5bec2f4b25feb0b5",
        "0xd3bb84888a00fd7f",
    ]
    assert groups(STRINGS) == [0, 37, 25, 66, 75, 40, 29, 29, 44, 10, 75, 8]


def test_golden_float_groups_zero_and_nan_are_one_key_each() -> None:
    assert groups(FLOATS) == [0, 0, 6, 87, 111, 59, 43, 16, 114, 112]
    other_nan = np.frombuffer(
        np.array([0x7FF8000000000001], dtype=np.uint64).tobytes(), dtype=np.float64
    )[0]
    assert math.isnan(other_nan)
    assert groups([math.nan, -math.nan, other_nan]) == [114, 114, 114]
    assert groups([0.0, -0.0, 1.0], dtype=pl.Float32) == [
        0,
        0,
        6,
    ]  # Float32 equals Float64 of the same value


def test_golden_bool_temporal_decimal_and_null_groups() -> None:
    assert groups([True, False, None]) == [9, 0, 57]
    assert groups([None, 5, None], dtype=pl.Int64) == [57, 114, 57]
    assert groups([None, "", "x"]) == [57, 0, 111]
    assert groups(DATES) == [0, 20, 69, 57]
    assert groups(TIMES, dtype=pl.Datetime("ms")) == [0, 52, 57]
    assert groups(TIMES, dtype=pl.Datetime("us")) == [0, 37, 57]
    assert groups(TIMES, dtype=pl.Datetime("us", "UTC")) == [0, 37, 57]
    assert groups([Decimal("1.50"), Decimal("-2.25"), None], dtype=pl.Decimal(10, 2)) == [
        34,
        95,
        57,
    ]
    # scale 0, and the 38 digits a decimal key may have (the hash is of the unscaled integer)
    assert groups([Decimal("7"), Decimal("-12"), None], dtype=pl.Decimal(10, 0)) == [45, 43, 57]
    assert groups(
        [Decimal("9" * 38), Decimal("-" + "9" * 38), Decimal(7)], dtype=pl.Decimal(38, 0)
    ) == [53, 114, 45]
    assert groups([None, None], dtype=pl.Null) == [57, 57]


def test_golden_multi_column_keys() -> None:
    frame = pl.DataFrame({"a": [1, 1, 2, None, None], "b": ["x", "y", "x", "x", None]})
    assert key_groups(frame, 128).tolist() == [13, 72, 52, 19, 96]
    three = pl.DataFrame(
        {"a": [1, 2], "b": [True, False], "c": [dt.date(2024, 1, 1), dt.date(2024, 1, 2)]}
    )
    assert key_groups(three, 128).tolist() == [114, 83]
    # Column order matters: (1, "x") and ("x", 1) are different keys.
    swapped = pl.DataFrame({"b": ["x"], "a": [1]})
    assert key_groups(swapped, 128).tolist() != [13]


# ---------------------------------------------------------------- equal values, equal groups


@pytest.mark.parametrize(
    "dtype", [pl.Int8, pl.Int16, pl.Int32, pl.UInt8, pl.UInt16, pl.UInt32, pl.UInt64]
)
def test_equal_integers_of_any_width_share_a_group(dtype: pl.DataType) -> None:
    values = [0, 1, 2, 42, 100, 127, None]
    assert groups(values, dtype=dtype) == groups(values, dtype=pl.Int64)


def test_string_like_types_hash_as_their_text() -> None:
    values = ["a", "ü", "", None, "hello"]
    expected = groups(values)
    assert groups(values, dtype=pl.Categorical) == expected
    assert groups(values, dtype=pl.Enum(["a", "ü", "", "hello"])) == expected


def test_hash_does_not_depend_on_slicing_chunking_or_batch_neighbours() -> None:
    values = STRINGS * 3 + [None]
    whole = groups(values)
    sliced = pl.Series("k", values).slice(5, 20)
    assert key_groups(pl.DataFrame([sliced])).tolist() == whole[5:25]
    chunked = pl.concat([pl.Series("k", values[:7]), pl.Series("k", values[7:])], rechunk=False)
    assert chunked.n_chunks() == 2
    assert key_groups(pl.DataFrame([chunked])).tolist() == whole
    assert [groups([v])[0] for v in values] == whole
    ints = pl.Series("k", list(range(1000)))
    assert key_groups(pl.DataFrame([ints.slice(500, 10)])).tolist() == groups(list(range(500, 510)))


def test_byte_hash_of_a_sliced_arrow_array_equals_a_fresh_one() -> None:
    """The byte hash reads the offsets buffer itself: an Arrow slice (offset > 0, first
    offset > 0) hashes as the same values copied into a fresh array. polars hands over fresh
    arrays today; this keeps the offset arithmetic right for when it does not."""
    import pyarrow as pa

    from arrowflow._foundation.keygroups import _hash_bytes

    values = STRINGS * 3
    for arrow_type in (pa.string(), pa.large_string(), pa.binary()):
        whole = pa.array(
            [v.encode() if arrow_type == pa.binary() else v for v in values], type=arrow_type
        )
        for start, length in ((5, 20), (1, 1), (0, 3), (len(values) - 4, 4), (7, 0)):
            sliced = whole.slice(start, length)
            fresh = pa.array(sliced.to_pylist(), type=arrow_type)
            assert sliced.offset == start and fresh.offset == 0
            assert _hash_bytes(sliced).tolist() == _hash_bytes(fresh).tolist(), (
                arrow_type,
                start,
                length,
            )


def test_string_view_and_large_string_arrays_agree() -> None:
    import pyarrow as pa

    for arrow_type in (pa.string(), pa.large_string(), pa.string_view()):
        frame = pl.from_arrow(pa.table({"k": pa.array(STRINGS, type=arrow_type)}))
        assert key_groups(frame).tolist() == groups(STRINGS)


@pytest.mark.parametrize(
    ("dtype", "values"),
    [
        (pl.String, ["a", "", None]),
        (pl.Binary, [b"a", b"", None]),
        (pl.Categorical, ["a", "", None]),
        (pl.Int64, [3, None, -1]),
        (pl.Float64, [0.5, None, -0.0]),
        (pl.Boolean, [True, None, False]),
        (pl.Date, [dt.date(2024, 1, 2), None, dt.date(1969, 1, 1)]),
        (pl.Decimal(10, 2), [Decimal("1.25"), None, Decimal("-3.00")]),
    ],
)
def test_an_empty_batch_has_no_key_groups(dtype: pl.DataType, values: list) -> None:
    """Zero rows (an empty batch, a filter that kept nothing) give zero key groups, alone and
    next to another key column, and the rows of a batch that follows are unaffected."""
    empty = pl.DataFrame({"k": pl.Series([], dtype=dtype)})
    for frame in (empty, empty.with_columns(other=pl.Series([], dtype=pl.Int64))):
        got = key_groups(frame, 128)
        assert got.dtype == np.int32 and got.shape == (0,), (dtype, got)
        assert hash_keys(frame).shape == (0,)
    full = pl.DataFrame({"k": pl.Series(values, dtype=dtype)})
    assert key_groups(pl.concat([empty, full]), 128).tolist() == groups(values, dtype=dtype)


@pytest.mark.parametrize(
    "series",
    [
        pl.Series(["a", None]),
        pl.Series([b"a", None]),
        pl.Series([True, None]),
        pl.Series([None, None]),
        pl.Series(["a", None], dtype=pl.Categorical),
        pl.Series(["a", None], dtype=pl.Enum(["a"])),
        pl.Series([Decimal("1.5"), None], dtype=pl.Decimal(5, 1)),
        pl.Series([1.5, None], dtype=pl.Float32),
        pl.Series([1, None], dtype=pl.UInt16),
        pl.Series([dt.time(1), None]),
        pl.Series([dt.timedelta(1), None]),
        pl.Series([dt.date(2024, 1, 1), None]),
        pl.Series([[1], None]),
        pl.Series([{"a": 1}, None]),
        pl.Series([[1, 2], None], dtype=pl.Array(pl.Int64, 2)),
    ],
    ids=lambda s: str(s.dtype),
)
def test_plan_time_key_check_agrees_with_hashing(series: pl.Series) -> None:
    """The plan refuses a key column exactly when hashing it would fail at run time."""
    from arrowflow._foundation.keygroups import is_hashable_key_type

    try:
        key_groups(pl.DataFrame({"k": series}))
        hashable = True
    except af.SchemaError:
        hashable = False
    assert is_hashable_key_type(series.dtype) == hashable
    assert hashable == (series.dtype.base_type() not in (pl.List, pl.Struct, pl.Array))


def test_unhashable_key_type_is_a_schema_error() -> None:
    with pytest.raises(af.SchemaError, match=r"cannot hash key column 'k' of type List"):
        key_groups(pl.DataFrame({"k": [[1], [2]]}))


# ---------------------------------------------------------------- distribution


def test_distribution_over_128_groups_is_roughly_uniform() -> None:
    n = 100_000
    expected = n / DEFAULT_MAX_PARALLELISM
    for keys in (
        pl.DataFrame({"k": np.arange(n)}),  # sequential ids, the common case
        pl.DataFrame({"k": np.arange(n) * 1024}),  # ids with low bits all zero
        pl.DataFrame({"k": [f"user-{i}" for i in range(n)]}),
        pl.DataFrame({"k": np.arange(n) / 7.0}),
        pl.DataFrame({"a": np.arange(n) % 317, "b": np.arange(n) // 317}),
    ):
        counts = np.bincount(key_groups(keys), minlength=DEFAULT_MAX_PARALLELISM)
        assert len(counts) == DEFAULT_MAX_PARALLELISM
        # ~781 per group; a fair hash stays well within +-20% (about 5.6 standard deviations).
        assert counts.min() > 0.8 * expected and counts.max() < 1.2 * expected, (
            keys.columns,
            counts.min(),
            counts.max(),
        )
        chi2 = float(((counts - expected) ** 2 / expected).sum())
        assert chi2 < 200, chi2  # 127 degrees of freedom: p < 1e-4 above ~190


# ---------------------------------------------------------------- ranges and owners


@pytest.mark.parametrize("max_parallelism", [128, 7, 1, 1000])
def test_key_group_ranges_partition_and_owner_of_inverts_them(max_parallelism: int) -> None:
    all_groups = np.arange(max_parallelism)
    for parallelism in range(1, min(max_parallelism, 128) + 1):
        ranges = [key_group_range(w, parallelism, max_parallelism) for w in range(parallelism)]
        assert ranges[0].start == 0 and ranges[-1].stop == max_parallelism
        for before, after in itertools.pairwise(ranges):
            assert before.stop == after.start
        assert all(len(r) >= 1 for r in ranges)  # parallelism <= max_parallelism: nobody idles
        sizes = [len(r) for r in ranges]
        assert max(sizes) - min(sizes) <= 1
        owners = owner_of(all_groups, parallelism, max_parallelism)
        for worker, owned in enumerate(ranges):
            assert (owners[owned.start : owned.stop] == worker).all(), (parallelism, worker)


# ---------------------------------------------------------------- across processes

_CHILD = """
import json, sys, datetime as dt, math
import polars as pl
from arrowflow._foundation.keygroups import hash_keys
frame = pl.DataFrame({
    "i": [0, 1, -1, 2**62, None, 7],
    "s": ["", "a", "日本語", None, "x" * 40, "🙂"],
    "f": [0.0, -0.0, math.nan, 1.5, None, math.inf],
    "d": [dt.date(2024, 1, 1), None, dt.date(1970, 1, 1), dt.date(2000, 2, 29), dt.date(1999, 12, 31), None],
})
json.dump({c: [str(h) for h in hash_keys(frame.select(c)).tolist()] + [str(h) for h in hash_keys(frame).tolist()]
           for c in frame.columns}, sys.stdout)
"""


def test_hash_is_the_same_in_a_fresh_interpreter() -> None:
    """A spawned interpreter with another PYTHONHASHSEED computes the same hashes."""
    import os

    runs = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        child = subprocess.run(
            [sys.executable, "-c", _CHILD], capture_output=True, text=True, check=True, env=env
        )
        runs.append(json.loads(child.stdout))
    namespace: dict = {}
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()) as out:
        exec(compile(_CHILD, "<child>", "exec"), namespace)
    here = json.loads(out.getvalue())
    assert runs[0] == runs[1] == here
