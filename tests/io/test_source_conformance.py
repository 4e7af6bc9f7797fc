"""Every built-in source passes the source conformance suite (:mod:`arrowflow.testing.source_conformance`):
Parquet, CSV, NDJSON and IPC files, ``tail`` (NDJSON and CSV), ``watch``, and the in-memory
sources, each against polars reading the same input."""

from __future__ import annotations

import datetime as dt
import io
import os
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from arrowflow.io import files as file_sources
from arrowflow.io.files import FileSource
from arrowflow.io.memory import MemorySource
from arrowflow.io.stream import TailSource, WatchSource
from arrowflow.testing.source_conformance import (
    SourceCase,
    SourceConformance,
    UnboundedSourceConformance,
)

SCHEMA = pl.Schema(
    {"id": pl.Int64, "name": pl.String, "amount": pl.Float64, "at": pl.Datetime("us")}
)


def frame(n: int, start: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(start)
    amount = np.round(rng.exponential(30, n), 2)
    return pl.DataFrame(
        {
            "id": np.arange(start, start + n),
            "name": [f'user {i % 7}, "q"' if i % 5 == 0 else f"u{i % 11}" for i in range(n)],
            "amount": [None if i % 9 == 4 else float(a) for i, a in enumerate(amount)],
            "at": [
                dt.datetime(2024, 1, 1) + dt.timedelta(seconds=int(s))
                for s in rng.integers(0, 10**6, n)
            ],
        },
        schema=SCHEMA,
    )


def write(fmt: str, data: pl.DataFrame, path: Path) -> None:
    if fmt == "parquet":
        data.write_parquet(path, row_group_size=10)
    elif fmt == "csv":
        data.write_csv(path)
    elif fmt == "ndjson":
        data.write_ndjson(path)
    else:
        data.write_ipc(path)


def read(fmt: str, path: Path) -> pl.DataFrame:
    """What polars reads from one file: the reference."""
    if fmt == "parquet":
        return pl.read_parquet(path)
    if fmt == "csv":
        return pl.read_csv(path, schema=SCHEMA)
    if fmt == "ndjson":
        return pl.read_ndjson(path, schema=SCHEMA)
    return pl.read_ipc(path)


def file_case(fmt: str, folder: Path, **options: object) -> SourceCase:
    paths = []
    for part, n in enumerate((45, 0 if fmt in ("csv", "ndjson") else 1, 31)):
        path = folder / f"part-{part}.{ {'ipc': 'arrow'}.get(fmt, fmt) }"
        write(fmt, frame(n, start=part * 1000), path)
        paths.append(path)
    expected = pl.concat([read(fmt, p) for p in paths])
    schema = SCHEMA if fmt in ("csv", "ndjson") else None
    return SourceCase(FileSource(fmt, str(folder), schema=schema, **options), expected)


class TestParquet(SourceConformance):
    @pytest.fixture
    def case(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SourceCase:
        monkeypatch.setattr(
            file_sources, "ROWS_PER_SPLIT", 20
        )  # row-group ranges: several splits a file
        return file_case("parquet", tmp_path)


class TestCsv(SourceConformance):
    @pytest.fixture
    def case(self, tmp_path: Path) -> SourceCase:
        return file_case("csv", tmp_path)


class TestNdjson(SourceConformance):
    @pytest.fixture
    def case(self, tmp_path: Path) -> SourceCase:
        return file_case("ndjson", tmp_path)


class TestIpc(SourceConformance):
    @pytest.fixture
    def case(self, tmp_path: Path) -> SourceCase:
        return file_case("ipc", tmp_path)


class TestFromPolars(SourceConformance):
    @pytest.fixture
    def case(self) -> SourceCase:
        data = frame(90)
        return SourceCase(MemorySource.from_polars(data, splits=4), data)


class TestFromArrow(SourceConformance):
    @pytest.fixture
    def case(self) -> SourceCase:
        data = frame(50, start=7)
        return SourceCase(MemorySource.from_arrow(data.to_arrow(), splits=2), data)


def text(fmt: str, data: pl.DataFrame, *, header: bool) -> bytes:
    out = io.BytesIO()
    if fmt == "csv":
        data.write_csv(out, include_header=header)
    else:
        data.write_ndjson(out)
    return out.getvalue()


@pytest.mark.parametrize("fmt", ["ndjson", "csv"])
class TestTail(UnboundedSourceConformance):
    @pytest.fixture
    def case(self, tmp_path: Path, fmt: str) -> SourceCase:
        path = tmp_path / f"log.{fmt}"
        path.write_bytes(text(fmt, frame(40), header=True))

        def grow(round_: int) -> pl.DataFrame:
            added = frame(17 + round_, start=(round_ + 1) * 1000)
            with open(path, "ab") as handle:
                handle.write(text(fmt, added, header=False))
            return added

        source = TailSource(path, format=fmt, schema=SCHEMA, poll_interval="1ms")
        return SourceCase(source, read(fmt, path), grow=grow)


class TestWatch(UnboundedSourceConformance):
    @pytest.fixture
    def case(self, tmp_path: Path) -> SourceCase:
        folder = tmp_path / "landing"
        folder.mkdir()
        write("parquet", frame(33), folder / "first.parquet")

        def grow(round_: int) -> pl.DataFrame:
            added = frame(12 + round_, start=(round_ + 1) * 1000)
            hidden = folder / f".incoming-{round_}.parquet"
            write("parquet", added, hidden)
            os.rename(hidden, folder / f"landed-{round_}.parquet")  # files appear whole
            return added

        source = WatchSource(str(folder), format="parquet", schema=SCHEMA, poll_interval="1ms")
        return SourceCase(source, pl.read_parquet(folder / "first.parquet"), grow=grow)


def test_watch_leaves_out_what_the_enumerator_forgot(tmp_path: Path) -> None:
    """``not_before`` is given to discover_splits by the enumerator (never set on the source):
    files modified before it are neither listed as splits nor remembered."""
    old, new = tmp_path / "old.parquet", tmp_path / "new.parquet"
    write("parquet", frame(5), old)
    write("parquet", frame(5, start=50), new)
    os.utime(old, (1_000_000, 1_000_000))
    source = WatchSource(str(tmp_path), format="parquet", schema=SCHEMA)
    assert {s.info["url"] for s in source.discover_splits()} == {str(old), str(new)}
    kept = source.discover_splits(not_before=2_000_000)
    assert {s.info["url"] for s in kept} == {str(new)}
    assert not hasattr(source, "not_before")


@pytest.mark.parametrize("fmt", ["csv", "ndjson"])
class TestTextWithBadLines(SourceConformance):
    """Malformed lines between good ones: positions count them too, and they are never repeated
    or lost across a resume (the position rule compares the malformed rows as well)."""

    @pytest.fixture
    def case(self, tmp_path: Path, fmt: str) -> SourceCase:
        good = tmp_path / f"good.{fmt}"
        write(fmt, frame(30), good)
        lines = good.read_bytes().splitlines(keepends=True)
        bad = b"1,2\n" if fmt == "csv" else b'{"id": "not a number"}\n'
        mixed = [
            line
            for i, line in enumerate(lines)
            for line in ((line, bad) if i % 6 == 3 else (line,))
        ]
        folder = tmp_path / "input"
        folder.mkdir()
        (folder / f"mixed.{fmt}").write_bytes(b"".join(mixed))
        return SourceCase(FileSource(fmt, str(folder), schema=SCHEMA), read(fmt, good))
