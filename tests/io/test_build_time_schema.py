"""A file source learns its schema as the flow is built (a Parquet or IPC footer, the head of
a CSV or NDJSON file), as polars' ``scan_parquet`` does: a misspelled column fails the line
that wrote it, not the run, and the schema taken then is the one the run produces."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest

import arrowflow as af
from arrowflow.errors import SchemaError, SourceError

FRAME = pl.DataFrame(
    {
        "id": [1, 2, 3, 4],
        "amount": [1.5, 2.0, 3.25, 10.0],
        "name": ["a", "b", None, "d"],
        "ok": [True, False, True, None],
        "day": [dt.date(2024, 1, d) for d in (1, 2, 3, 4)],
    }
)
FORMATS = [("parquet", "parquet"), ("csv", "csv"), ("ndjson", "ndjson"), ("ipc", "arrow")]
MISTAKES: dict[str, Callable[[Any], Any]] = {
    "filter": lambda stream: stream.filter(pl.col("amuont") > 1),
    "select": lambda stream: stream.select("id", "amuont"),
    "with_columns": lambda stream: stream.with_columns(cents=pl.col("amuont") * 100),
}


def _write(folder: Path, fmt: str, ext: str) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    getattr(FRAME.slice(0, 2), f"write_{fmt}")(folder / f"a.{ext}")
    getattr(FRAME.slice(2), f"write_{fmt}")(folder / f"b.{ext}")
    return str(folder / f"*.{ext}")


def _polars_read(fmt: str, glob: str) -> pl.DataFrame:
    return getattr(pl, f"read_{fmt}")(glob) if fmt != "ndjson" else pl.read_ndjson(glob)


@pytest.mark.parametrize("step", sorted(MISTAKES))
@pytest.mark.parametrize(("fmt", "ext"), FORMATS)
def test_a_misspelled_column_fails_the_line_that_wrote_it(
    tmp_path: Path, fmt: str, ext: str, step: str
) -> None:
    glob = _write(tmp_path / "in", fmt, ext)
    with pytest.raises(pl.exceptions.ColumnNotFoundError) as polars_error:
        MISTAKES[step](_polars_read(fmt, glob).lazy()).collect()
    assert "amuont" in str(polars_error.value)
    flow = af.Flow("typo")
    stream = getattr(flow, f"read_{fmt}")(glob)  # no schema given: CSV and NDJSON infer it
    with pytest.raises(SchemaError) as caught:
        MISTAKES[step](stream)  # the building line, before any run
    text = str(caught.value)
    assert "amuont" in text and f"operator {step!r}" in text
    assert all(column in text for column in FRAME.columns)  # the columns there are
    assert [node.kind for node in flow.nodes] == ["source"]  # the failed step was not added
    fixed = MISTAKES[step](stream.with_columns(amuont=pl.col("amount")))
    assert fixed.collect(workers=0).height > 0


@pytest.mark.parametrize(("fmt", "ext"), FORMATS)
def test_the_build_time_schema_is_the_one_the_run_produces(
    tmp_path: Path, fmt: str, ext: str
) -> None:
    glob = _write(tmp_path / "in", fmt, ext)
    stream = getattr(af.Flow("same"), f"read_{fmt}")(glob)
    expected = _polars_read(fmt, glob)
    (tmp_path / "in").rename(tmp_path / "away")
    assert stream.schema == expected.schema  # taken as the source was added: no file needed now
    (tmp_path / "away").rename(tmp_path / "in")
    got = stream.collect(workers=0)
    assert got.schema == stream.schema
    assert got.sort("id").equals(expected.sort("id"))
    assert stream.select("amount").collect(workers=1).schema == expected.select("amount").schema


def test_a_large_csv_is_inferred_from_its_head_as_the_run_infers_it(tmp_path: Path) -> None:
    """The head read at build time is the run's: a float far past the first MiB does not widen
    the column (the run reports that row as malformed, as it did before)."""
    ints = pl.DataFrame({"id": range(300_000), "n": range(300_000)})
    path = tmp_path / "big.csv"
    path.write_text(ints.write_csv() + "300000,1.5\n")
    assert path.stat().st_size > 2 << 20
    stream = af.Flow("big").read_csv(str(path))
    assert stream.schema == pl.Schema({"id": pl.Int64, "n": pl.Int64})
    with pytest.raises(SchemaError, match='"nn"'):
        stream.select("nn")
    got = stream.collect(workers=0)
    assert got.schema == stream.schema and got.height == 300_000
    bad = stream.side_output("malformed").collect(workers=0)
    assert bad["reason"].to_list() == ["column 'n': cannot parse '1.5' as Int64"]


def test_a_parquet_file_on_an_fsspec_filesystem(tmp_path: Path) -> None:
    import fsspec

    fs = fsspec.filesystem("memory")
    base = f"/af-build-schema-{tmp_path.name}"
    for name, part in (("a", FRAME.slice(0, 2)), ("b", FRAME.slice(2))):
        with fs.open(f"{base}/{name}.parquet", "wb") as handle:
            part.write_parquet(handle)
    url = f"memory://{base}/*.parquet"
    stream = af.Flow("mem").read_parquet(url, storage_options={})
    with fs.open(f"{base}/a.parquet", "rb") as handle:
        assert stream.schema == pl.read_parquet(handle).schema == FRAME.schema
    with pytest.raises(SchemaError, match="amuont"):
        stream.filter(pl.col("amuont") > 1)
    got = stream.filter(pl.col("amount") > 2).collect(workers=0)
    assert got.sort("id").equals(FRAME.filter(pl.col("amount") > 2))


def test_a_parquet_file_on_s3_with_storage_options(s3: Any) -> None:
    fs, base, options = s3
    with fs.open(f"{base}/in/a.parquet", "wb") as handle:
        FRAME.write_parquet(handle)
    stream = af.Flow("s3").read_parquet(f"{base}/in/", storage_options=options)
    assert stream.schema == FRAME.schema
    with pytest.raises(SchemaError, match="amuont"):
        stream.select("amuont")
    assert stream.collect(workers=0).sort("id").equals(FRAME)


def test_paths_that_name_no_file_yet_are_checked_when_the_flow_runs(tmp_path: Path) -> None:
    """As before: no file when the flow is built, so no schema, and the checks wait for the plan."""
    glob = str(tmp_path / "later" / "*.parquet")
    flow = af.Flow("later")
    typo = flow.read_parquet(glob).filter(pl.col("amuont") > 1)  # nothing to check it against
    with pytest.raises(SourceError, match=r"no such file or directory|matches no file"):
        typo.collect(workers=0)
    _write(tmp_path / "later", "parquet", "parquet")
    with pytest.raises(SchemaError, match="amuont"):
        typo.collect(workers=0)
    assert af.Flow("later").read_parquet(glob).collect(workers=0).sort("id").equals(FRAME)


@pytest.mark.parametrize(("fmt", "ext"), [("parquet", "parquet"), ("ipc", "arrow")])
def test_the_plan_checks_every_file_against_the_schema_taken_when_built(
    tmp_path: Path, fmt: str, ext: str
) -> None:
    glob = _write(tmp_path / "in", fmt, ext)
    flow = af.Flow("replaced")
    stream = getattr(flow, f"read_{fmt}")(glob)
    total = stream.select("id", "amount")
    # a file replaced after the flow was built, with another type for a column the flow reads
    replaced = FRAME.slice(2).with_columns(pl.col("amount").cast(pl.String))
    getattr(replaced, f"write_{fmt}")(tmp_path / "in" / f"b.{ext}")
    with pytest.raises(SchemaError) as caught:
        total.collect(workers=0)
    text = str(caught.value)
    assert "column 'amount' is String" in text and "the schema says Float64" in text
    assert f"b.{ext}" in text
