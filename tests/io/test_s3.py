"""s3:// through s3fs against a real S3 API: a local moto_server (see conftest.py)."""

from __future__ import annotations

import polars as pl
import pytest

import arrowflow as af
from arrowflow.errors import SchemaError, SourceError
from arrowflow.testing import collect_all

FRAME = pl.DataFrame(
    {"k": list(range(12)), "s": [f"é{i}" for i in range(12)], "f": [i / 4 for i in range(12)]}
)


def put(fs, url: str, frame: pl.DataFrame, fmt: str, **options) -> None:
    with fs.open(url, "wb") as handle:
        getattr(frame, f"write_{fmt}")(handle, **options)


def test_parquet_row_groups_and_projection(s3, workers: int, same_rows, read_all) -> None:
    fs, base, options = s3
    put(fs, f"{base}/in/a.parquet", FRAME.slice(0, 7), "parquet", row_group_size=2)
    put(fs, f"{base}/in/b.parquet", FRAME.slice(7, 5), "parquet", row_group_size=2)
    flow = af.Flow("s3")
    stream = flow.read_parquet(f"{base}/in/", storage_options=options)
    everything, projected = collect_all(stream, stream.select("s"), workers=workers, batch_size=3)
    same_rows(everything, FRAME)
    same_rows(projected, FRAME.select("s"))
    pruned = stream.node.params["source"].with_columns_pruned(["s"])
    assert [split.info["row_groups"] for split in pruned.discover_splits()] == [
        [0, 1, 2, 3],
        [0, 1, 2],
    ]
    data, _ = read_all(pruned, batch_size=4)
    assert data.columns == ["s"]
    same_rows(data, FRAME.select("s"))


@pytest.mark.parametrize("fmt", ["csv", "ndjson", "ipc"])
def test_other_formats_round_trip(s3, fmt: str, same_rows) -> None:
    fs, base, options = s3
    out = f"{base}/out-{fmt}"
    flow = af.Flow("s3write")
    getattr(flow.from_polars(FRAME, splits=2), f"write_{fmt}")(
        out, storage_options=options, rows_per_file=5
    )
    flow.run(workers=0)
    listed = fs.find(out)
    assert listed and all(p.rsplit("/", 1)[-1].startswith("part-") for p in listed)
    schema = FRAME.schema if fmt in ("csv", "ndjson") else None
    got = getattr(af.Flow("s3read"), f"read_{fmt}")(
        out, storage_options=options, schema=schema
    ).collect()
    same_rows(got, FRAME)
    with fs.open(listed[0], "rb") as handle:  # and polars reads what was written
        payload = handle.read()
    reference = {
        "csv": lambda: pl.read_csv(payload, schema=FRAME.schema),
        "ndjson": lambda: pl.read_ndjson(payload, schema=FRAME.schema),
        "ipc": lambda: pl.read_ipc(payload),
    }[fmt]()
    assert reference.height == 5


def test_parquet_sink_commits_and_appends(s3, same_rows) -> None:
    fs, base, options = s3
    for _ in range(2):
        flow = af.Flow("s3sink")
        flow.from_polars(FRAME, splits=3).write_parquet(
            f"{base}/sink", storage_options=options, mode="append"
        )
        flow.run(workers=0)
    assert not [p for p in fs.find(f"{base}/sink") if "/.staging/" in p]
    same_rows(
        af.Flow("back").read_parquet(f"{base}/sink", storage_options=options).collect(),
        pl.concat([FRAME, FRAME]),
    )


def test_bad_csv_rows_on_s3(s3) -> None:
    fs, base, options = s3
    fs.pipe(f"{base}/bad/x.csv", b"k,s,f\n1,a,0.5\n2,b\n3,c,oops\n4,d,1.5\n")
    stream = af.Flow("s3bad").read_csv(
        f"{base}/bad/*.csv", storage_options=options, schema=FRAME.schema
    )
    data, bad = collect_all(stream, stream.side_output("malformed"))
    assert data["k"].to_list() == [1, 4]
    assert bad.select("line", "offset", "reason").to_dicts() == [
        {"line": 3, "offset": 14, "reason": "expected 3 fields, found 2"},
        {"line": 4, "offset": 18, "reason": "column 'f': cannot parse 'oops' as Float64"},
    ]
    assert bad["file"].to_list() == [f"{base}/bad/x.csv"] * 2


def test_missing_key_and_schema_mismatch(s3) -> None:
    fs, base, options = s3
    with pytest.raises(SourceError, match="no such file or directory"):
        af.Flow("s3missing").read_parquet(
            f"{base}/nothing.parquet", storage_options=options
        ).collect()
    with pytest.raises(SourceError, match="matches no file"):
        af.Flow("s3glob").read_parquet(
            f"{base}/nothing/*.parquet", storage_options=options
        ).collect()
    put(fs, f"{base}/typed/x.parquet", FRAME, "parquet")
    with pytest.raises(SchemaError, match=r"column 'k' is Int64 .* the schema says String"):
        af.Flow("s3schema").read_parquet(
            f"{base}/typed", storage_options=options, schema={"k": pl.String}
        ).collect()
