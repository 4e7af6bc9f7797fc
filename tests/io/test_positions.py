"""The position protocol: a split reopened at the position reported after batch k yields
batch k+1 next, so a restore neither loses nor repeats a row (good or malformed)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from arrowflow.io.files import FileSource
from arrowflow.sources import MALFORMED_SCHEMA, Source, Split

SCHEMA = pl.Schema({"a": pl.Int64, "s": pl.String})
EMPTY_BAD = pl.DataFrame(schema=MALFORMED_SCHEMA)


def batches(
    source: Source, split: Split, position: int | None, batch_size: int | None
) -> list[tuple[int, pl.DataFrame, pl.DataFrame]]:
    out = []
    for batch in source.open_reader(split, position, batch_size=batch_size).batches():
        data = batch.data if batch.data is not None else pl.DataFrame(schema=source.schema())
        out.append(
            (batch.position, data, batch.malformed if batch.malformed is not None else EMPTY_BAD)
        )
    return out


def joined(
    items: list[tuple[int, pl.DataFrame, pl.DataFrame]], schema: pl.Schema
) -> tuple[pl.DataFrame, pl.DataFrame]:
    data = pl.concat([d for _, d, _ in items]) if items else pl.DataFrame(schema=schema)
    bad = pl.concat([b for _, _, b in items]) if items else EMPTY_BAD
    return data, bad


def check_every_restart_point(source: Source, batch_size: int | None) -> None:
    """Reopening at each reported position yields exactly the rest of the first read."""
    schema = source.schema()
    for split in source.discover_splits():
        first = batches(source, split, None, batch_size)
        positions = [p for p, _, _ in first]
        assert positions == sorted(set(positions)), "positions must increase"
        for k, position in enumerate([0, *positions]):
            again = batches(source, split, position, batch_size)
            rest_data, rest_bad = joined(first[k:], schema)
            again_data, again_bad = joined(again, schema)
            assert_frame_equal(again_data, rest_data)
            assert_frame_equal(again_bad, rest_bad)
            assert [p for p, _, _ in again] == positions[k:]


CSV = b'a,s\n1,x\n2\n3,y\nzz,q\n\n4,"a\nb"\n5,z\n6,w,1\n7,v\n'
NDJSON = b'{"a":1,"s":"x"}\n{"a":\n{"a":3}\n\n[4]\n{"a":5,"s":"z"}\n{"a":"6"}\n{"a":7}\n'


@pytest.mark.parametrize("batch_size", [None, 1, 2, 3])
def test_text_restart_points(tmp_path: Path, batch_size: int | None) -> None:
    (tmp_path / "x.csv").write_bytes(CSV)
    (tmp_path / "x.ndjson").write_bytes(NDJSON)
    for fmt in ("csv", "ndjson"):
        source = FileSource(fmt, str(tmp_path / f"x.{fmt}"), schema=SCHEMA)
        check_every_restart_point(source, batch_size)
        check_every_restart_point(source.with_columns_pruned(["s"]), batch_size)


def test_text_positions_count_records_good_and_bad(tmp_path: Path) -> None:
    (tmp_path / "x.csv").write_bytes(CSV)
    source = FileSource("csv", str(tmp_path / "x.csv"), schema=SCHEMA)
    split = source.discover_splits()[0]
    got = batches(source, split, None, 3)
    # records: 1,x | 2 (bad) | 3,y | zz,q (bad) | 4,"a\nb" | 5,z | 6,w,1 (bad) | 7,v  (the blank line is none)
    assert [p for p, _, _ in got] == [3, 6, 8]
    assert [d["a"].to_list() for _, d, _ in got] == [[1, 3], [4, 5], [7]]
    assert [b["line"].to_list() for _, _, b in got] == [[3], [5], [10]]
    # Positions count the same records whatever is read: reading only "s", record 3 (zz,q)
    # is still bad (every column of the schema is checked), and records 0-2 are still the
    # ones skipped.
    resumed = batches(source.with_columns_pruned(["s"]), split, 3, None)
    assert resumed[0][1]["s"].to_list() == ["a\nb", "z", "v"] and resumed[0][0] == 8
    assert resumed[0][2]["line"].to_list() == [5, 10]


@pytest.mark.parametrize("batch_size", [None, 1, 4, 7])
def test_columnar_restart_points(tmp_path: Path, batch_size: int | None) -> None:
    frame = pl.DataFrame({"a": list(range(23)), "s": [f"r{i}" for i in range(23)]})
    frame.write_parquet(tmp_path / "x.parquet", row_group_size=5)
    frame.write_ipc(tmp_path / "x.arrow")
    for fmt, name in (("parquet", "x.parquet"), ("ipc", "x.arrow")):
        source = FileSource(fmt, str(tmp_path / name))
        check_every_restart_point(source, batch_size)
        check_every_restart_point(source.with_columns_pruned(["s"]), batch_size)


def test_parquet_splits_cover_row_groups_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, read_all, same_rows
) -> None:
    import arrowflow.io.files as files

    frame = pl.DataFrame({"a": list(range(100))})
    frame.write_parquet(tmp_path / "x.parquet", row_group_size=7)
    monkeypatch.setattr(files, "ROWS_PER_SPLIT", 20)
    source = FileSource("parquet", str(tmp_path / "x.parquet"))
    splits = source.discover_splits()
    assert [s.info["row_groups"] for s in splits] == [
        [0, 1, 2],
        [3, 4, 5],
        [6, 7, 8],
        [9, 10, 11],
        [12, 13, 14],
    ]
    assert [s.info["start"] for s in splits] == [0, 21, 42, 63, 84]
    assert len({s.split_id for s in splits}) == len(splits)
    data, _ = read_all(source, batch_size=6)
    assert data["a"].to_list() == list(range(100))
    check_every_restart_point(source, 6)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    lines=st.lists(
        st.sampled_from(["1,x", "2", "zz,y", "", '3,"q\nr"', "4,,", "5,s"]), max_size=30
    ),
    batch_size=st.none() | st.integers(1, 6),
    crash_after=st.integers(0, 30),
)
def test_crash_and_resume_emits_each_record_once(
    tmp_path_factory, lines, batch_size, crash_after
) -> None:
    path = tmp_path_factory.mktemp("resume") / "x.csv"
    path.write_bytes(("a,s\n" + "\n".join(lines) + "\n").encode())
    source = FileSource("csv", str(path), schema=SCHEMA)
    (split,) = source.discover_splits()
    whole = batches(source, split, None, batch_size)
    before = whole[: min(crash_after, len(whole))]
    resume_at = before[-1][0] if before else None
    after = batches(source, split, resume_at, batch_size)
    data, bad = joined(before + after, SCHEMA)
    all_data, all_bad = joined(whole, SCHEMA)
    assert_frame_equal(data, all_data)
    assert_frame_equal(bad, all_bad)
    good_lines = [line for line in lines if line in ("1,x", '3,"q\nr"', "5,s")]
    assert data.height == len(good_lines)
    assert bad.height == sum(line in ("2", "zz,y", "4,,") for line in lines)
