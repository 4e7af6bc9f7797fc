"""Property tests: whatever the data, the file split and the batch size, a reader returns what
polars reads from the same files, and a writer's files read back in polars as the input."""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
from itertools import pairwise
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import arrowflow as af

EXT = {"parquet": "parquet", "csv": "csv", "ndjson": "ndjson", "ipc": "arrow"}
SCHEMA = pl.Schema(
    {"i": pl.Int64, "f": pl.Float64, "s": pl.String, "t": pl.Datetime("us"), "b": pl.Boolean}
)

# Text that stresses CSV and JSON quoting: separators, quotes, newlines, unicode, empty.
_TEXT = st.text(
    alphabet=st.one_of(
        st.sampled_from([",", '"', "\n", " ", "\t", "{", "}", "\\", "é", "✓", "𝄞"]),
        st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")),
    ),
    max_size=8,
)
_ROW = st.tuples(
    st.none() | st.integers(-(2**63), 2**63 - 1),
    st.none() | st.floats(allow_nan=False, allow_infinity=False),
    st.none() | _TEXT,
    st.none() | st.datetimes(min_value=dt.datetime(1900, 1, 1), max_value=dt.datetime(2200, 1, 1)),
    st.none() | st.booleans(),
)
_SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def frame_of(rows: list[tuple]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=SCHEMA, orient="row")


def write(frame: pl.DataFrame, fmt: str, path: Path, row_group_size: int) -> None:
    if fmt == "parquet":
        frame.write_parquet(path, row_group_size=row_group_size)
    elif fmt == "csv":
        frame.write_csv(path)
    elif fmt == "ndjson":
        frame.write_ndjson(path)
    else:
        frame.write_ipc(path)


def polars_reads(fmt: str, path: Path) -> pl.DataFrame:
    if fmt == "parquet":
        return pl.read_parquet(path)
    if fmt == "csv":
        return pl.read_csv(path, schema=SCHEMA)
    if fmt == "ndjson":
        return pl.read_ndjson(path, schema=SCHEMA)
    return pl.read_ipc(path)


@pytest.mark.parametrize("fmt", list(EXT))
@_SETTINGS
@given(
    rows=st.lists(_ROW, max_size=40),
    cuts=st.lists(st.integers(0, 40), max_size=3),
    row_group_size=st.integers(1, 7),
    batch_size=st.none() | st.integers(1, 9),
    columns=st.sampled_from([None, ["s"], ["b", "i"], ["t", "f", "s"]]),
)
def test_reading_does_not_depend_on_files_groups_or_batches(
    fmt, rows, cuts, row_group_size, batch_size, columns, same_rows
) -> None:
    frame = frame_of(rows)
    bounds = sorted({0, frame.height, *(c for c in cuts if c <= frame.height)})
    folder = Path(tempfile.mkdtemp(prefix="af-prop-"))
    try:
        for index, (low, high) in enumerate(pairwise(bounds)):
            write(
                frame.slice(low, high - low),
                fmt,
                folder / f"part-{index}.{EXT[fmt]}",
                row_group_size,
            )
        if len(bounds) < 2:
            write(frame, fmt, folder / f"part-0.{EXT[fmt]}", row_group_size)
        files = sorted(folder.iterdir())
        expected = pl.concat([polars_reads(fmt, p) for p in files])
        flow = af.Flow("prop")
        stream = getattr(flow, f"read_{fmt}")(
            str(folder), schema=SCHEMA if fmt in ("csv", "ndjson") else None
        )
        if columns is not None:
            stream = stream.select(*columns)
            expected = expected.select(columns)
        same_rows(stream.collect(batch_size=batch_size), expected)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("fmt", list(EXT))
@_SETTINGS
@given(
    rows=st.lists(_ROW, max_size=40),
    splits=st.integers(1, 4),
    rows_per_file=st.integers(1, 15),
    batch_size=st.none() | st.integers(1, 9),
)
def test_writing_does_not_depend_on_splits_files_or_batches(
    fmt, rows, splits, rows_per_file, batch_size, same_rows
) -> None:
    frame = frame_of(rows)
    folder = Path(tempfile.mkdtemp(prefix="af-prop-"))
    try:
        flow = af.Flow("prop")
        getattr(flow.from_polars(frame, splits=splits), f"write_{fmt}")(
            str(folder / "out"), rows_per_file=rows_per_file
        )
        flow.run(workers=0, batch_size=batch_size)
        files = sorted(p for p in (folder / "out").iterdir() if p.is_file())
        assert all(p.name.startswith("part-") for p in files)
        assert all(polars_reads(fmt, p).height <= rows_per_file for p in files)
        back = (
            pl.concat([polars_reads(fmt, p) for p in files])
            if files
            else pl.DataFrame(schema=SCHEMA)
        )
        expected = polars_reads_own(fmt, frame, folder)
        same_rows(back, expected)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def polars_reads_own(fmt: str, frame: pl.DataFrame, folder: Path) -> pl.DataFrame:
    """What polars gets back from its own file of ``frame`` (the reference for the writer)."""
    path = folder / f"reference.{EXT[fmt]}"
    write(frame, fmt, path, 1000)
    return polars_reads(fmt, path)


@_SETTINGS
@given(values=st.lists(st.none() | _TEXT, max_size=30), batch_size=st.none() | st.integers(1, 5))
def test_one_column_csv_blank_lines_are_nulls(values, batch_size, same_rows) -> None:
    frame = pl.DataFrame({"s": values}, schema={"s": pl.String})
    folder = Path(tempfile.mkdtemp(prefix="af-prop-"))
    try:
        frame.write_csv(folder / "x.csv")
        got = (
            af.Flow("one")
            .read_csv(str(folder / "x.csv"), schema=frame.schema)
            .collect(batch_size=batch_size)
        )
        same_rows(got, pl.read_csv(folder / "x.csv", schema=frame.schema))
        same_rows(got, frame)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


_BAD_LINES = {
    "csv": [b"just one field", b"1,2,3,4,5,6", b",,,not a time,", b"1,,,,maybe"],
    "ndjson": [b"[1]", b'{"t": "not a time"}', b'{"i": "1"', b'{"b": "maybe"}'],
}


@pytest.mark.parametrize("fmt", ["csv", "ndjson"])
@_SETTINGS
@given(rows=st.lists(_ROW, max_size=30), data=st.data(), batch_size=st.none() | st.integers(1, 9))
def test_bad_lines_do_not_change_the_good_rows(
    fmt, rows, data, batch_size, read_all, same_rows
) -> None:
    """Every type, every quoting: the good rows of a file with bad lines are what polars reads
    from the same file without them, and each bad line is reported once."""
    from arrowflow.io.files import FileSource

    frame = frame_of(rows)
    records = [
        frame.slice(i, 1).write_csv(include_header=False).encode()
        if fmt == "csv"
        else frame.slice(i, 1).write_ndjson().encode()
        for i in range(frame.height)
    ]
    inserted = data.draw(
        st.lists(
            st.tuples(st.integers(0, len(records)), st.sampled_from(_BAD_LINES[fmt])), max_size=4
        )
    )
    pieces = list(records)
    for at, line in sorted(inserted, reverse=True):
        pieces.insert(at, line + b"\n")
    header = b"i,f,s,t,b\n" if fmt == "csv" else b""
    folder = Path(tempfile.mkdtemp(prefix="af-prop-"))
    try:
        (folder / f"bad.{fmt}").write_bytes(header + b"".join(pieces))
        (folder / f"good.{fmt}").write_bytes(header + b"".join(records))
        got, bad = read_all(
            FileSource(fmt, str(folder / f"bad.{fmt}"), schema=SCHEMA), batch_size=batch_size
        )
        same_rows(got, polars_reads(fmt, folder / f"good.{fmt}"))
        assert (0 if bad is None else bad.height) == len(inserted)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
