"""Clear errors: the right exception type, and a message that names the file, the column, what
was expected and what was found, and the likely fix."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

import arrowflow as af
from arrowflow.errors import PlanError, SchemaError, SinkError, SourceError
from arrowflow.io.files import FileSource

FRAME = pl.DataFrame({"a": [1, 2], "s": ["x", "y"]})


def test_missing_file(tmp_path: Path) -> None:
    (tmp_path / "other.parquet").write_bytes(b"")
    flow = af.Flow("missing")
    stream = flow.read_parquet(str(tmp_path / "events.parquet"))  # no file yet: the run says so
    with pytest.raises(SourceError) as caught:
        stream.collect()
    text = str(caught.value)
    assert "no such file or directory" in text and "events.parquet" in text
    assert "other.parquet" in text  # what the folder does hold: the likely typo


def test_glob_matching_nothing(tmp_path: Path) -> None:
    FRAME.write_csv(tmp_path / "a.csv")
    (tmp_path / "_hidden.parquet").write_bytes(b"")
    stream = af.Flow("glob").read_parquet(str(tmp_path / "*.parquet"))
    with pytest.raises(
        SourceError,
        match=r"matches no file \(only hidden names: .*_hidden.parquet\).*holds: .*a\.csv",
    ):
        stream.collect()
    with pytest.raises(SourceError, match="matches no file"):
        af.Flow("glob").read_csv(str(tmp_path / "nope-*.csv"), schema={"a": pl.Int64}).collect()


def test_directory_without_visible_files(tmp_path: Path) -> None:
    (tmp_path / ".staging").mkdir()
    FRAME.write_parquet(tmp_path / ".staging" / "part-0.parquet")
    with pytest.raises(SourceError, match="holds no visible file"):
        af.Flow("dir").read_parquet(str(tmp_path)).collect()


def test_not_a_file_of_the_format(tmp_path: Path) -> None:
    (tmp_path / "x.parquet").write_text("a,b\n1,2\n")
    with pytest.raises(SourceError, match=r"cannot read .*x\.parquet.*valid file of this format"):
        af.Flow("junk").read_parquet(str(tmp_path / "x.parquet")).collect()
    (tmp_path / "x.arrow").write_text("not arrow")
    with pytest.raises(SourceError, match=r"cannot read .*x\.arrow"):
        af.Flow("junk").read_ipc(str(tmp_path / "x.arrow")).collect()


def test_unknown_column_downstream(tmp_path: Path) -> None:
    FRAME.write_parquet(tmp_path / "x.parquet")
    stream = af.Flow("col").read_parquet(str(tmp_path / "x.parquet"))
    with pytest.raises(SchemaError, match="nope"):
        stream.select("nope")  # the footer was read as the source was added


def test_schema_column_missing_from_columnar_file(tmp_path: Path) -> None:
    FRAME.write_parquet(tmp_path / "x.parquet")
    stream = af.Flow("col").read_parquet(
        str(tmp_path / "x.parquet"), schema={"a": pl.Int64, "amount": pl.Float64}
    )
    with pytest.raises(SchemaError, match=r"has no column 'amount'; its columns are \[a, s\]"):
        stream.collect()


@pytest.mark.parametrize(("fmt", "ext"), [("parquet", "parquet"), ("ipc", "arrow")])
def test_schema_mismatch_fails_at_plan_time_naming_both_types(
    tmp_path: Path, fmt: str, ext: str
) -> None:
    good = tmp_path / f"1.{ext}"
    bad = tmp_path / f"2.{ext}"
    getattr(FRAME, f"write_{fmt}")(good)
    getattr(FRAME.with_columns(pl.col("a").cast(pl.String)), f"write_{fmt}")(bad)
    flow = af.Flow("mismatch")
    stream = getattr(flow, f"read_{fmt}")(
        str(tmp_path / f"*.{ext}"), schema={"a": pl.Int64, "s": pl.String}
    )
    stream.write_parquet(str(tmp_path / "out"))
    with pytest.raises(SchemaError) as caught:
        flow.plan()  # plan time: no worker started, no data read
    text = str(caught.value)
    assert "column 'a' is String" in text and "the schema says Int64" in text and str(bad) in text
    assert not (tmp_path / "out").exists()


def test_narrowing_schema_is_refused(tmp_path: Path) -> None:
    FRAME.write_parquet(tmp_path / "x.parquet")
    with pytest.raises(
        SchemaError,
        match=r"column 'a' is Int64 .* the schema says Int32; reading it as Int32 would change values",
    ):
        af.Flow("narrow").read_parquet(
            str(tmp_path / "x.parquet"), schema={"a": pl.Int32}
        ).collect()


def test_inferred_schema_must_hold_in_every_file(tmp_path: Path) -> None:
    FRAME.write_parquet(tmp_path / "1.parquet")
    FRAME.drop("s").write_parquet(tmp_path / "2.parquet")
    with pytest.raises(SchemaError, match=r"2\.parquet' has no column 's'"):
        af.Flow("drift").read_parquet(str(tmp_path)).collect()


def test_csv_header_without_a_schema_column(tmp_path: Path) -> None:
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    stream = af.Flow("hdr").read_csv(
        str(tmp_path / "x.csv"), schema={"a": pl.Int64, "s": pl.String}
    )
    with pytest.raises(
        SchemaError, match=r"has no column 's'; its header is \[a, b\].*has_header=False"
    ):
        stream.collect()


def test_wrong_api_use_fails_when_the_flow_is_built(tmp_path: Path) -> None:
    flow = af.Flow("api")
    with pytest.raises(SourceError, match="on_error"):
        flow.read_csv("x.csv", on_error="ignore")
    with pytest.raises(SourceError, match="separator"):
        flow.read_csv("x.csv", separator=";;")
    with pytest.raises(SourceError, match="expects a path"):
        flow.read_parquet(42)  # type: ignore[arg-type]
    with pytest.raises(SourceError, match="expects a path"):
        flow.read_parquet([])
    with pytest.raises(SchemaError, match="not a polars or pyarrow type"):
        flow.read_csv("x.csv", schema={"a": "int"})
    with pytest.raises(SchemaError, match="CSV cannot hold the column 'l'"):
        flow.read_csv("x.csv", schema={"l": pl.List(pl.Int64)})
    with pytest.raises(SourceError, match="unknown file format"):
        FileSource("xlsx", "x.xlsx")
    with pytest.raises(SinkError, match="mode"):
        flow.from_polars(FRAME).write_parquet(str(tmp_path / "o"), mode="merge")
    with pytest.raises(SinkError, match="rows_per_file"):
        flow.from_polars(FRAME).write_parquet(str(tmp_path / "o"), rows_per_file=0)
    with pytest.raises(SchemaError, match="CSV cannot hold the column 'l'"):
        flow.from_polars(pl.DataFrame({"l": [[1]]})).write_csv(str(tmp_path / "o"))


def test_pyarrow_schema_and_paths_are_accepted(tmp_path: Path, same_rows) -> None:
    import pyarrow as pa

    FRAME.write_csv(tmp_path / "x.csv")
    schema = pa.schema([("a", pa.int32()), ("s", pa.large_string())])
    got = af.Flow("pa").read_csv(tmp_path / "x.csv", schema=schema).collect()
    assert got.schema == pl.Schema({"a": pl.Int32, "s": pl.String})
    same_rows(got, FRAME.with_columns(pl.col("a").cast(pl.Int32)))


def test_memory_paths_need_the_in_process_executor() -> None:
    import fsspec

    fsspec.filesystem("memory").pipe("/af-errors/x.csv", FRAME.write_csv().encode())
    stream = af.Flow("mem").read_csv("memory://af-errors/x.csv", schema=FRAME.schema)
    assert stream.collect(workers=0).height == 2
    with pytest.raises(PlanError, match="worker processes cannot see") as refused:
        stream.collect(workers=1)
    assert "\n" not in str(refused.value)  # one line, before any worker started


def test_unknown_protocol() -> None:
    with pytest.raises(SourceError, match=r"cannot open 'nosuchproto://x'.*check the URL"):
        af.Flow("proto").read_parquet("nosuchproto://x").collect()


def test_memory_sink_with_worker_processes_fails_clearly() -> None:
    flow = af.Flow("memsink")
    flow.from_polars(FRAME).write_parquet("memory://af-errors/out")
    with pytest.raises(PlanError, match=r"write_parquet 'memory://af-errors/out'.*workers=1"):
        flow.run(workers=1)


def test_malformed_rows_nothing_reads_are_said_not_only_counted(tmp_path) -> None:
    """An inferred CSV schema (from the first file) and a later file that does not fit it:
    the row goes to 'malformed'; when nothing reads that side output the run says so."""
    (tmp_path / "1.csv").write_text("a,b\n1,x\n2,y\n")
    (tmp_path / "2.csv").write_text("a,b\n1.5,z\n3,w\n")
    flow = af.Flow("unread")
    flow.read_csv(str(tmp_path / "*.csv")).write_parquet(str(tmp_path / "out"))
    with pytest.warns(UserWarning, match=r"1 malformed row of 'read_csv': nothing reads"):
        result = flow.run(workers=0)
    assert result.malformed == 1 and any("nothing reads" in n for n in result.notes)
    assert pl.read_parquet(tmp_path / "out")["a"].sort().to_list() == [1, 2, 3]
    wired = af.Flow("read")
    rows = wired.read_csv(str(tmp_path / "*.csv"))
    rows.write_parquet(str(tmp_path / "out2"))
    rows.side_output("malformed").write_parquet(str(tmp_path / "bad"))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        result = wired.run(workers=0)
    assert result.malformed == 1 and not result.notes
    assert pl.read_parquet(tmp_path / "bad").height == 1
