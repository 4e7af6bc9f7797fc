"""Every file reader and writer against polars on the same data, on every executor."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl
import polars.selectors as cs
import pytest

import arrowflow as af
from arrowflow.testing import collect_all

FORMATS = ["parquet", "csv", "ndjson", "ipc"]
EXT = {"parquet": "parquet", "csv": "csv", "ndjson": "ndjson", "ipc": "arrow"}

FRAME = pl.DataFrame(
    {
        "i": [1, None, -3, 2**62, 0, 7, None, 9],
        "f": [1.5, None, -0.0, 1e300, 2.25, float("nan"), 3.0, None],
        "s": [
            "plain",
            "",
            None,
            'comma, and "quotes"',
            "multi\nline",
            "ünïcødé ✓",
            "  spaces  ",
            "x",
        ],
        "t": [
            dt.datetime(2024, 1, 1, 0, 0, 0, 123456),
            None,
            dt.datetime(1970, 1, 1),
            dt.datetime(2024, 2, 29, 23, 59, 59),
            dt.datetime(2030, 6, 1, 12),
            dt.datetime(2024, 1, 1),
            None,
            dt.datetime(1999, 12, 31, 23, 59, 59, 999999),
        ],
        "b": [True, False, None, True, False, True, None, False],
        "d": [
            dt.date(2024, 1, 2),
            None,
            dt.date(1970, 1, 1),
            dt.date(2000, 2, 29),
            dt.date(2024, 1, 2),
            None,
            dt.date(1, 1, 1),
            dt.date(9999, 12, 31),
        ],
    },
    schema={
        "i": pl.Int64,
        "f": pl.Float64,
        "s": pl.String,
        "t": pl.Datetime("us"),
        "b": pl.Boolean,
        "d": pl.Date,
    },
)


def round_tripped(fmt: str, frame: pl.DataFrame = FRAME) -> pl.DataFrame:
    """What polars itself gets back from writing ``frame`` as ``fmt``: JSON has no NaN."""
    if fmt == "ndjson":
        return frame.with_columns(cs.float().fill_nan(None))
    return frame


def write_with_polars(
    frame: pl.DataFrame, fmt: str, path: Path, *, row_group_size: int = 3
) -> None:
    if fmt == "parquet":
        frame.write_parquet(path, row_group_size=row_group_size)
    elif fmt == "csv":
        frame.write_csv(path)
    elif fmt == "ndjson":
        frame.write_ndjson(path)
    else:
        frame.write_ipc(path)


def read_with_polars(fmt: str, path: str | Path, schema: pl.Schema) -> pl.DataFrame:
    if fmt == "parquet":
        return pl.read_parquet(path)
    if fmt == "csv":
        return pl.read_csv(path, schema=schema)
    if fmt == "ndjson":
        return pl.read_ndjson(path, schema=schema)
    return pl.read_ipc(path)


def visible_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and not any(part.startswith(("_", ".")) for part in p.relative_to(folder).parts)
    )


def test_readers_match_polars(tmp_path: Path, workers: int, same_rows) -> None:
    """Every format in one flow (one run per executor): 3 files, several row groups each."""
    flow = af.Flow("read")
    streams, expected = [], []
    for fmt in FORMATS:
        folder = tmp_path / fmt
        folder.mkdir()
        for index, (start, length) in enumerate([(0, 3), (3, 1), (4, 4)]):
            write_with_polars(
                FRAME.slice(start, length),
                fmt,
                folder / f"part-{index}.{EXT[fmt]}",
                row_group_size=2,
            )
        expected.append(
            pl.concat([read_with_polars(fmt, p, FRAME.schema) for p in sorted(folder.iterdir())])
        )
        schema = FRAME.schema if fmt in ("csv", "ndjson") else None
        streams.append(getattr(flow, f"read_{fmt}")(str(folder / f"*.{EXT[fmt]}"), schema=schema))

    results = collect_all(*streams, workers=workers, batch_size=3)

    for fmt, got, reference in zip(FORMATS, results, expected, strict=True):
        same_rows(got, reference)
        same_rows(got, round_tripped(fmt))


def test_writers_output_reads_back_in_polars(tmp_path: Path, workers: int, same_rows) -> None:
    flow = af.Flow("write")
    rows = flow.from_polars(FRAME, splits=3)
    for fmt in FORMATS:
        getattr(rows, f"write_{fmt}")(str(tmp_path / fmt), rows_per_file=3)
    result = flow.run(workers=workers)

    assert result.rows_out == len(FORMATS) * FRAME.height
    for fmt in FORMATS:
        files = visible_files(tmp_path / fmt)
        assert files and all(
            p.name.startswith("part-") and p.suffix == f".{EXT[fmt]}" for p in files
        )
        back = pl.concat([read_with_polars(fmt, p, FRAME.schema) for p in files])
        same_rows(back, round_tripped(fmt))


@pytest.mark.parametrize("fmt", FORMATS)
def test_projection_reads_only_the_needed_columns(tmp_path: Path, fmt: str, same_rows) -> None:
    write_with_polars(FRAME, fmt, tmp_path / f"x.{EXT[fmt]}")
    schema = FRAME.schema if fmt in ("csv", "ndjson") else None
    flow = af.Flow("projection")
    stream = getattr(flow, f"read_{fmt}")(str(tmp_path), schema=schema)
    picked = stream.filter(pl.col("i") > 0).select("s", doubled=pl.col("f") * 2)

    plan = flow.plan(outputs=[picked.node])
    assert plan.sources[0].params["columns"] == ["i", "f", "s"]
    assert plan.sources[0].params["source"].schema().names() == ["i", "f", "s"]
    expected = round_tripped(fmt).filter(pl.col("i") > 0).select("s", doubled=pl.col("f") * 2)
    same_rows(picked.collect(), expected)


@pytest.mark.parametrize("fmt", FORMATS)
def test_no_column_read_still_counts_rows(tmp_path: Path, fmt: str, read_all) -> None:
    write_with_polars(FRAME, fmt, tmp_path / f"x.{EXT[fmt]}", row_group_size=3)
    schema = FRAME.schema if fmt in ("csv", "ndjson") else None
    source = getattr(af.Flow("count"), f"read_{fmt}")(str(tmp_path), schema=schema).node.params[
        "source"
    ]
    data, bad = read_all(source.with_columns_pruned([]), batch_size=3)
    assert data.shape == (FRAME.height, 0)
    assert bad is None


def test_text_schema_orders_and_subsets_columns(tmp_path: Path, same_rows) -> None:
    frame = FRAME.filter(pl.col("i").is_null() | (pl.col("i") < 2**31))
    frame.write_csv(tmp_path / "x.csv")
    frame.write_ndjson(tmp_path / "x.ndjson")
    wanted = {"s": pl.String, "i": pl.Int32}
    expected = frame.select("s", pl.col("i").cast(pl.Int32))
    flow = af.Flow("subset")
    for fmt in ("csv", "ndjson"):
        got = getattr(flow, f"read_{fmt}")(str(tmp_path / f"x.{fmt}"), schema=wanted).collect()
        assert got.schema == pl.Schema(wanted)
        same_rows(got, expected)
    same_rows(
        expected, pl.read_csv(tmp_path / "x.csv", schema_overrides={"i": pl.Int32}).select("s", "i")
    )


def test_columnar_schema_widens_losslessly(tmp_path: Path, same_rows) -> None:
    frame = pl.DataFrame(
        {
            "a": [1, 2, None],
            "f": [1.5, None, 2.5],
            "t": [dt.datetime(2024, 1, 1), None, dt.datetime(2024, 1, 2)],
        },
        schema={"a": pl.Int32, "f": pl.Float32, "t": pl.Datetime("ms")},
    )
    frame.write_parquet(tmp_path / "x.parquet")
    frame.write_ipc(tmp_path / "x.arrow")
    wanted = {"t": pl.Datetime("us"), "a": pl.Int64, "f": pl.Float64}
    for fmt, ext in (("parquet", "parquet"), ("ipc", "arrow")):
        got = getattr(af.Flow("widen"), f"read_{fmt}")(
            str(tmp_path / f"x.{ext}"), schema=wanted
        ).collect()
        assert got.schema == pl.Schema(wanted)
        same_rows(got, frame.select([pl.col(c).cast(t) for c, t in wanted.items()]))


def test_csv_options_separator_and_no_header(tmp_path: Path, same_rows) -> None:
    frame = FRAME.select("i", "s", "f")
    (tmp_path / "x.tsv").write_bytes(frame.write_csv(separator="\t", include_header=False).encode())
    got = (
        af.Flow("tsv")
        .read_csv(str(tmp_path / "x.tsv"), has_header=False, separator="\t", schema=frame.schema)
        .collect()
    )
    expected = pl.read_csv(
        tmp_path / "x.tsv", has_header=False, separator="\t", schema=frame.schema
    )
    same_rows(got, expected)
    same_rows(got, frame)


def test_inferred_schemas_match_polars(tmp_path: Path, same_rows) -> None:
    frame = FRAME.select("i", "f", "s", "b")
    frame.write_csv(tmp_path / "x.csv")
    frame.write_ndjson(tmp_path / "x.ndjson")
    flow = af.Flow("infer")
    got_csv = flow.read_csv(str(tmp_path / "x.csv")).collect()
    got_json = flow.read_ndjson(str(tmp_path / "x.ndjson")).collect()
    same_rows(got_csv, pl.read_csv(tmp_path / "x.csv"))
    same_rows(got_json, pl.read_ndjson(tmp_path / "x.ndjson"))


def test_compressed_csv(tmp_path: Path, same_rows) -> None:
    import gzip

    frame = FRAME.select("i", "s")
    (tmp_path / "x.csv.gz").write_bytes(gzip.compress(frame.write_csv().encode()))
    got = af.Flow("gz").read_csv(str(tmp_path), schema=frame.schema).collect()
    same_rows(got, frame)


def test_timezones_and_time_units_in_text(tmp_path: Path, same_rows) -> None:
    frame = pl.DataFrame(
        {
            "utc": pl.Series([dt.datetime(2024, 1, 1, 12, tzinfo=dt.timezone.utc), None]).cast(
                pl.Datetime("us", "UTC")
            ),
            "paris": pl.Series([dt.datetime(2024, 7, 1, 12, tzinfo=dt.timezone.utc), None]).cast(
                pl.Datetime("ms", "Europe/Paris")
            ),
            "ns": pl.Series([dt.datetime(2024, 1, 1, 0, 0, 0, 1), None]).cast(pl.Datetime("ns")),
        }
    )
    frame.write_csv(tmp_path / "x.csv")
    frame.write_ndjson(tmp_path / "x.ndjson")
    for fmt in ("csv", "ndjson"):
        got = getattr(af.Flow("tz"), f"read_{fmt}")(
            str(tmp_path / f"x.{fmt}"), schema=frame.schema
        ).collect()
        same_rows(got, read_with_polars(fmt, tmp_path / f"x.{fmt}", frame.schema))
        same_rows(got, frame)


def test_empty_files_give_no_rows(tmp_path: Path) -> None:
    schema = {"a": pl.Int64, "s": pl.String}
    (tmp_path / "empty.csv").write_bytes(b"")
    (tmp_path / "header.csv").write_bytes(b"a,s\n")
    (tmp_path / "empty.ndjson").write_bytes(b"\n\n")
    pl.DataFrame(schema=schema).write_parquet(tmp_path / "empty.parquet")
    pl.DataFrame(schema=schema).write_ipc(tmp_path / "empty.arrow")
    flow = af.Flow("empty")
    for fmt, pattern in (
        ("csv", "*.csv"),
        ("ndjson", "*.ndjson"),
        ("parquet", "*.parquet"),
        ("ipc", "*.arrow"),
    ):
        got = getattr(flow, f"read_{fmt}")(str(tmp_path / pattern), schema=schema).collect()
        assert got.shape == (0, 2) and got.schema == pl.Schema(schema), fmt


def test_ipc_stream_format_and_memory_filesystem(tmp_path: Path, same_rows) -> None:
    import fsspec

    FRAME.write_ipc_stream(tmp_path / "x.arrow")
    got = (
        af.Flow("stream").read_ipc(str(tmp_path / "x.arrow")).select("s", "i").collect(batch_size=3)
    )
    same_rows(got, pl.read_ipc_stream(tmp_path / "x.arrow").select("s", "i"))
    fs = fsspec.filesystem("memory")
    fs.pipe("/af-roundtrip/x.arrow", (tmp_path / "x.arrow").read_bytes())
    with fs.open("/af-roundtrip/y.parquet", "wb") as handle:
        FRAME.write_parquet(handle, row_group_size=3)
    flow = af.Flow("memory")
    same_rows(flow.read_ipc("memory://af-roundtrip/x.arrow").collect(), FRAME)
    same_rows(
        flow.read_parquet("memory://af-roundtrip/y.parquet").select("t").collect(batch_size=2),
        FRAME.select("t"),
    )
