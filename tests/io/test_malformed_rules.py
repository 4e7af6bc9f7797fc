"""Which rows are malformed must not depend on how the flow reads them.

A row is malformed when any column of the declared schema fails to parse (or the record is
not well formed), whichever columns the flow uses downstream, whichever executor and batch
size; ``side_output("malformed")`` collected alone finds exactly what a real sink receives.
Expected rows are built from the generated data (which lines were spoiled, and how), and the
good rows are polars reading only the good lines.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import arrowflow as af
from arrowflow.testing import assert_frame_equal_unordered, collect_all

SCHEMA = pl.Schema(
    {"id": pl.Int64, "qty": pl.Int64, "price": pl.Float64, "name": pl.String, "day": pl.Date}
)
HEADER = "id,qty,price,name,day"


def generate_csv(path: Path, rows: int, seed: int) -> tuple[list[str], list[int]]:
    """A CSV file whose ``qty`` column holds a float in about a third of the rows (a wrong
    ``schema=`` type on one column), plus rows with a bad date and short rows. Returns the
    good lines and the 1-based line numbers of the bad ones."""
    rng = random.Random(seed)
    ids = list(range(rows))
    rng.shuffle(ids)  # not conveniently ordered
    good, bad, lines = [], [], [HEADER]
    for number, key in enumerate(ids, start=2):
        qty = str(rng.randint(-50, 50))
        day = f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        name = rng.choice(["ann", "bo", "ç,é", "", "x y"])
        name = f'"{name}"' if "," in name else name
        spoil = rng.random()
        if spoil < 0.33:
            qty = f"{rng.randint(0, 99)}.5"
        elif spoil < 0.36:
            day = "2024-13-40"
        line = f"{key},{qty},{rng.uniform(-1e3, 1e3)!r},{name},{day}"
        if 0.36 <= spoil < 0.38:
            line = f"{key},{qty}"  # a short row
        lines.append(line)
        (bad if spoil < 0.38 else good).append(number if spoil < 0.38 else line)
    path.write_text("\n".join(lines) + "\n")
    return good, bad


def polars_good(good: list[str]) -> pl.DataFrame:
    return pl.read_csv(("\n".join([HEADER, *good]) + "\n").encode(), schema=SCHEMA)


PROJECTIONS = [["id", "name"], ["price"], ["qty"], ["day", "id"], None]


def projected(stream: af.Stream, columns: list[str] | None) -> af.Stream:
    return stream if columns is None else stream.select(*columns)


def test_csv_malformed_rows_do_not_depend_on_projection(
    tmp_path: Path, workers: int, same_rows
) -> None:
    path = tmp_path / "orders.csv"
    good, bad_lines = generate_csv(path, 3000, seed=workers + 11)
    expected = polars_good(good)
    assert 900 < len(bad_lines) < 1300 and expected.height == 3000 - len(bad_lines)
    # In process every projection and two batch sizes; in worker pools (a start costs ~1 s)
    # a projection that leaves the spoiled column out, and the whole frame.
    runs = (
        [(c, b) for c in PROJECTIONS for b in (None, 777)]
        if workers == 0
        else [(PROJECTIONS[0], 777), (None, None)]
    )
    for columns, batch_size in runs:
        flow = af.Flow("projection")
        stream = flow.read_csv(str(path), schema=SCHEMA)
        data, bad = collect_all(
            projected(stream, columns),
            stream.side_output("malformed"),
            workers=workers,
            batch_size=batch_size,
        )
        assert sorted(bad["line"].to_list()) == bad_lines, (
            f"columns {columns}, batch_size {batch_size}"
        )
        same_rows(data, expected.select(columns or SCHEMA.names()))


def test_csv_unread_column_of_the_wrong_type_makes_the_row_malformed(
    tmp_path: Path, read_all
) -> None:
    from arrowflow.io.files import FileSource

    path = tmp_path / "x.csv"
    path.write_bytes(b"a,s,f\n1,x,oops\n2,y,3.5\n")
    source = FileSource("csv", str(path), schema={"a": pl.Int64, "s": pl.String, "f": pl.Float64})
    for reader in (source, source.with_columns_pruned(["a"]), source.with_columns_pruned(["s"])):
        data, bad = read_all(reader)
        assert data.to_dicts() == [
            {c: v for c, v in {"a": 2, "s": "y", "f": 3.5}.items() if c in data.columns}
        ]
        assert bad is not None and bad.select("line", "reason").to_dicts() == [
            {"line": 2, "reason": "column 'f': cannot parse 'oops' as Float64"}
        ]


def test_ndjson_malformed_rows_do_not_depend_on_projection(tmp_path: Path, read_all) -> None:
    from arrowflow.io.files import FileSource

    path = tmp_path / "x.ndjson"
    path.write_bytes(
        b'{"a": 1, "s": "x", "f": "oops"}\n{"a": 2, "s": "y", "f": 3.5}\n{"a": "no", "s": "z"}\n'
    )
    source = FileSource(
        "ndjson", str(path), schema={"a": pl.Int64, "s": pl.String, "f": pl.Float64}
    )
    for reader in (
        source,
        source.with_columns_pruned(["s"]),
        source.with_columns_pruned(["f", "s"]),
    ):
        data, bad = read_all(reader)
        assert data.to_dicts() == [
            {c: v for c, v in {"a": 2, "s": "y", "f": 3.5}.items() if c in data.columns}
        ]
        assert bad is not None and bad.sort("line").select("line", "reason").to_dicts() == [
            {"line": 1, "reason": "column 'f': cannot parse 'oops' as Float64"},
            {"line": 3, "reason": "column 'a': cannot parse 'no' as Int64"},
        ]


@pytest.mark.parametrize("fmt", ["csv", "ndjson"])
def test_string_columns_and_no_column_at_all(tmp_path: Path, fmt: str, read_all) -> None:
    """String columns always parse, so a projection that reads none of the columns still sees
    exactly the malformed records (here: a short CSV row, a JSON line that is no object)."""
    from arrowflow.io.files import FileSource

    path = tmp_path / f"x.{fmt}"
    if fmt == "csv":
        path.write_text("s,t\nx,y\nz\nw,3\n")
    else:
        path.write_text('{"s": "x", "t": "y"}\n[1]\n{"s": "w", "t": 3}\n')
    source = FileSource(fmt, str(path), schema={"s": pl.String, "t": pl.String})
    for columns, rows in (
        ([], [{}, {}]),
        (["s"], [{"s": "x"}, {"s": "w"}]),
        (["t", "s"], [{"t": "y", "s": "x"}, {"t": "3", "s": "w"}]),
    ):
        data, bad = read_all(source.with_columns_pruned(columns))
        assert data.to_dicts() == rows and data.height == 2
        assert bad is not None and bad["line"].to_list() == [3 if fmt == "csv" else 2]


# ---------------------------------------------------------------------------- side output alone
def test_readme_orders_side_output_alone_matches_a_sink(tmp_path: Path, workers: int) -> None:
    """The README's orders.csv: collecting ``malformed`` alone gives what the sink wrote."""
    path = tmp_path / "orders.csv"
    path.write_text("order_id,user_id,amount\n1,17,19.99\n2,42,oops\n3,17,5.00\n4,99\n")
    schema = {"order_id": pl.Int64, "user_id": pl.Int64, "amount": pl.Float64}
    flow = af.Flow("orders")
    orders = flow.read_csv(str(path), schema=schema)
    orders.write_parquet(str(tmp_path / "out"))
    orders.side_output("malformed").write_ndjson(str(tmp_path / "bad"))
    flow.run(workers=workers)
    sunk = pl.read_ndjson(sorted((tmp_path / "bad").glob("*.ndjson"))).sort("line")
    assert sunk["line"].to_list() == [3, 5]

    alone = (
        af.Flow("orders")
        .read_csv(str(path), schema=schema)
        .side_output("malformed")
        .collect(workers=workers)
    )
    assert (
        alone.sort("line").select("line", "offset", "reason", "raw").to_dicts()
        == sunk.select("line", "offset", "reason", "raw").to_dicts()
    )


def test_side_output_alone_finds_every_malformed_row(tmp_path: Path, workers: int) -> None:
    path = tmp_path / "big.csv"
    good, bad_lines = generate_csv(path, 5000, seed=3)
    flow = af.Flow("sink")
    stream = flow.read_csv(str(path), schema=SCHEMA)
    stream.select("id").write_parquet(str(tmp_path / "out"))
    stream.side_output("malformed").write_parquet(str(tmp_path / "bad"))
    flow.run(workers=workers, batch_size=1000)
    sunk = pl.read_parquet(tmp_path / "bad" / "*.parquet")
    assert sorted(sunk["line"].to_list()) == bad_lines
    assert sorted(pl.read_parquet(tmp_path / "out" / "*.parquet")["id"].to_list()) == sorted(
        polars_good(good)["id"].to_list()
    )

    alone = (
        af.Flow("alone")
        .read_csv(str(path), schema=SCHEMA)
        .side_output("malformed")
        .collect(workers=workers)
    )
    assert sorted(alone["line"].to_list()) == bad_lines


# ---------------------------------------------------------------------------- NDJSON: deep and huge
def deep(levels: int) -> str:
    """A JSON object whose value ``a`` nests arrays so that the line has ``levels`` levels."""
    return '{"a": ' + "[" * (levels - 1) + "]" * (levels - 1) + "}"


def polars_reads(line: str, schema: dict) -> bool:
    try:
        pl.read_ndjson((line + "\n").encode(), schema=schema)
    except pl.exceptions.PolarsError:
        return False
    return True


def test_a_deeply_nested_line_is_malformed_and_the_job_goes_on(
    tmp_path: Path, workers: int
) -> None:
    path = tmp_path / "deep.ndjson"
    brackets_in_a_string = (
        '{"a": "\\\\\\"' + "[" * 5000 + '", "n": 3}'
    )  # escaped quotes, then brackets: text
    path.write_text(
        "\n".join(['{"n": 1}', deep(20_000), '{"n": 2}', brackets_in_a_string, deep(3_000)]) + "\n"
    )
    schema = {"n": pl.Int64, "a": pl.String}
    flow = af.Flow("deep")
    stream = flow.read_ndjson(str(path), schema=schema)
    data, bad = collect_all(stream.select("n"), stream.side_output("malformed"), workers=workers)
    assert sorted(data["n"].to_list()) == [1, 2, 3]
    assert bad.sort("line").select("line", "reason").to_dicts() == [
        {"line": 2, "reason": "nesting deeper than 1024 levels (20000 found)"},
        {"line": 5, "reason": "nesting deeper than 1024 levels (3000 found)"},
    ]

    with pytest.raises(
        (af.SourceError, af.WorkerError), match=r"line 2 .*nesting deeper than 1024 levels"
    ):
        af.Flow("raise").read_ndjson(str(path), schema=schema, on_error="raise").collect(
            workers=workers
        )


@pytest.mark.parametrize("other_bad_line", [False, True], ids=["fast-path", "slow-path"])
def test_nesting_limit_is_the_readers_whichever_path(
    tmp_path: Path, read_all, other_bad_line: bool
) -> None:
    """1024 levels polars reads, 1025 it refuses: the same lines are good whether the file is
    read in one call (clean file) or line by line (a bad line elsewhere)."""
    from arrowflow.io.files import FileSource

    schema = {"a": pl.String}
    lines = [deep(200), deep(1024), '{"a": "x"}']
    assert all(polars_reads(line, schema) for line in lines) and not polars_reads(
        deep(1025), schema
    )
    path = tmp_path / "limit.ndjson"
    path.write_text("\n".join([*lines, *(["[1]"] if other_bad_line else [])]) + "\n")
    data, bad = read_all(FileSource("ndjson", str(path), schema=schema))
    assert data.equals(pl.read_ndjson("\n".join(lines).encode(), schema=schema))
    assert (bad is not None) == other_bad_line

    path.write_text("\n".join([*lines, deep(1025)]) + "\n")
    data, bad = read_all(FileSource("ndjson", str(path), schema=schema))
    assert data.equals(pl.read_ndjson("\n".join(lines).encode(), schema=schema))
    assert bad is not None and bad["reason"].to_list() == [
        "nesting deeper than 1024 levels (1025 found)"
    ]


BIG = "9" * 400


@pytest.mark.parametrize(
    ("line", "schema", "reason"),
    [
        (
            '{"a": ' + BIG + ', "b": "x"}',
            {"a": pl.Int64, "b": pl.String},
            "column 'a': the number 999999...9999 (400 digits) does not fit in Int64",
        ),
        (
            '{"b": "x", "a": -' + "1" * 50 + "}",
            {"a": pl.Int32, "b": pl.String},  # serde_json takes it as a float
            "column 'a': the number -11111...1111 (50 digits) does not fit in Int32",
        ),
        (
            '{"a": ' + BIG + ', "b": "x"}',
            {"a": pl.Float64, "b": pl.String},
            "column 'a': the number 999999...9999 (400 digits) is beyond what the JSON reader holds (integers of up to "
            "128 bits, floats up to 1.8e308), so polars cannot read the line, not even as Float64; write it as a JSON "
            "string to keep it",
        ),
        (
            '{"a": 1e400, "b": "x"}',
            {"a": pl.String, "b": pl.String},
            "column 'a': the number 1e400 is beyond what the JSON reader holds (integers of up to 128 bits, floats up to "
            "1.8e308), so polars cannot read the line, not even as String; write it as a JSON string to keep it",
        ),
        (
            '{"b": "x", "extra": ' + BIG + "}",
            {"a": pl.Int64, "b": pl.String},
            "key 'extra' (not in the schema): the number 999999...9999 (400 digits) is beyond what the JSON reader "
            "holds (integers of up to 128 bits, floats up to 1.8e308), so polars cannot read the line",
        ),
    ],
)
def test_a_number_too_big_is_malformed_with_its_column_named(
    tmp_path: Path, read_all, line, schema, reason
) -> None:
    from arrowflow.io.files import FileSource

    assert not polars_reads(
        line, schema
    )  # polars refuses the whole line, whatever the column's type
    path = tmp_path / "big.ndjson"
    path.write_text('{"a": 1, "b": "p"}\n' + line + '\n{"a": 2, "b": "q"}\n')
    data, bad = read_all(FileSource("ndjson", str(path), schema=schema))
    assert data.equals(pl.read_ndjson(b'{"a": 1, "b": "p"}\n{"a": 2, "b": "q"}\n', schema=schema))
    assert bad is not None and bad.select("line", "reason").to_dicts() == [
        {"line": 2, "reason": reason}
    ]


def test_nesting_depth_ignores_brackets_in_strings() -> None:
    from arrowflow.io._ndjson import nesting_depth

    assert nesting_depth(b'{"a": "[[[[[[", "b": [[1]]}', 2) == 3
    assert (
        nesting_depth(b'{"a": "\\\\", "b": [[1]]}', 2) == 3
    )  # an escaped backslash ends the string
    assert nesting_depth(b'{"a": "\\"[[[[[[", "b": 1}', 2) is None  # an escaped quote does not
    assert nesting_depth(b"[" * 10 + b"]" * 10, 9) == 10
    assert nesting_depth(b"[" * 10 + b"]" * 10, 10) is None


# ---------------------------------------------------------------------------- corrupt files
def write_inputs(folder: Path) -> dict[str, list[pl.DataFrame]]:
    """Four files per format (unordered keys), Parquet in row groups of 3 rows; returns each
    file's frame by format, in file order."""
    import gzip

    rng = random.Random(5)
    frames = []
    for index in range(4):
        keys = rng.sample(range(10_000), 10)
        frames.append(pl.DataFrame({"k": keys, "s": [f"v{index}-{k}" for k in keys]}))
    for index, frame in enumerate(frames):
        frame.write_parquet(folder / f"p{index}.parquet", row_group_size=3)
        frame.write_ipc(folder / f"f{index}.arrow")
        frame.write_ipc_stream(folder / f"s{index}.arrows")
        (folder / f"c{index}.csv.gz").write_bytes(gzip.compress(frame.write_csv().encode()))
        (folder / f"j{index}.ndjson.gz").write_bytes(gzip.compress(frame.write_ndjson().encode()))
    return {"parquet": frames, "ipc": frames, "stream": frames, "csv": frames, "ndjson": frames}


def truncate(path: Path) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


CASES = {  # reader, glob, the files spoiled and how
    "parquet": ("read_parquet", "p*.parquet"),
    "ipc": ("read_ipc", "f*.arrow"),
    "stream": ("read_ipc", "s*.arrows"),
    "csv": ("read_csv", "c*.csv.gz"),
    "ndjson": ("read_ndjson", "j*.ndjson.gz"),
}
SCHEMA_KS = {"k": pl.Int64, "s": pl.String}


def spoil(folder: Path, case: str) -> dict[int, str]:
    """Spoil files 1 and 2 of a case; returns file index -> a piece of the expected reason."""
    name = {
        "parquet": "p{}.parquet",
        "ipc": "f{}.arrow",
        "stream": "s{}.arrows",
        "csv": "c{}.csv.gz",
        "ndjson": "j{}.ndjson.gz",
    }[case]
    truncate(folder / name.format(1))
    if (
        case == "parquet"
    ):  # file 2: its footer reads, its first page header is garbage (found while reading)
        raw = bytearray((folder / name.format(2)).read_bytes())
        raw[10:60] = b"\xff" * 50
        (folder / name.format(2)).write_bytes(bytes(raw))
        return {1: "corrupt file skipped: ", 2: "corrupt file skipped (row groups 0-3, rows 0-9): "}
    (folder / name.format(2)).write_bytes(b"not a file of this format at all\n" * 20)
    return {1: "corrupt file skipped: ", 2: "corrupt file skipped: "}


@pytest.mark.parametrize("case", sorted(CASES))
def test_corrupt_files_fail_the_job_by_default_naming_the_file(tmp_path: Path, case: str) -> None:
    write_inputs(tmp_path)
    spoil(tmp_path, case)
    method, pattern = CASES[case]
    stream = getattr(af.Flow("fail"), method)(str(tmp_path / pattern), schema=SCHEMA_KS)
    with pytest.raises(
        (af.SourceError, af.WorkerError), match=r"cannot read '.*[/\\][a-z][12]\."
    ) as caught:
        stream.collect()
    assert "on_corrupt_file='skip'" in str(caught.value)


@pytest.mark.parametrize("batch_size", [None, 4])
def test_corrupt_files_are_skipped_and_reported(
    tmp_path: Path, batch_size, workers: int, same_rows
) -> None:
    """Every format in one flow (one run per executor): the good files' rows are polars' reading
    of those files, and each spoiled file is one ``malformed`` row with its file and reason."""
    from arrowflow.sources import MALFORMED_SCHEMA

    frames = write_inputs(tmp_path)
    flow = af.Flow("skip")
    streams, expected = [], {}
    for case in sorted(CASES):
        expected[case] = spoil(tmp_path, case)
        method, pattern = CASES[case]
        schema = (
            SCHEMA_KS if case in ("csv", "ndjson", "stream") else None
        )  # Parquet/IPC: from the file
        stream = getattr(flow, method)(
            str(tmp_path / pattern), schema=schema, on_corrupt_file="skip", name=case
        )
        streams += [stream, stream.side_output("malformed")]
    results = collect_all(*streams, workers=workers, batch_size=batch_size)
    for index, case in enumerate(sorted(CASES)):
        data, bad = results[2 * index], results[2 * index + 1]
        same_rows(data, pl.concat([frames[case][0], frames[case][3]]))
        files = sorted(tmp_path.glob(CASES[case][1]))
        assert bad.schema == MALFORMED_SCHEMA
        assert sorted(bad["file"].to_list()) == [str(files[1]), str(files[2])], case
        for row in bad.to_dicts():
            start = expected[case][files.index(Path(row["file"]))]
            assert row["reason"].startswith(start) and len(row["reason"]) > len(start), (case, row)
            assert (row["source"], row["offset"], row["line"], row["raw"]) == (case, -1, -1, None)


def test_a_reported_corrupt_file_is_not_reported_again_on_resume(tmp_path: Path) -> None:
    from arrowflow.io.files import FileSource

    write_inputs(tmp_path)
    spoil(tmp_path, "parquet")
    source = FileSource("parquet", str(tmp_path / "p*.parquet"), on_corrupt_file="skip")
    for split in source.discover_splits():
        emitted = list(source.open_reader(split, None, batch_size=None).batches())
        if emitted and emitted[-1].malformed is not None:
            assert len(emitted) == 1 and emitted[0].data.height == 0
            resumed = list(
                source.open_reader(split, emitted[-1].position, batch_size=None).batches()
            )
            assert resumed == []


def test_every_file_corrupt(tmp_path: Path) -> None:
    (tmp_path / "a.parquet").write_bytes(b"nope")
    (tmp_path / "b.parquet").write_bytes(b"nope either")
    flow = af.Flow("none")
    with pytest.raises(
        af.SourceError, match=r"no file of .* can be read, so there is no schema to take"
    ):
        flow.read_parquet(str(tmp_path / "*.parquet"), on_corrupt_file="skip").collect()
    stream = af.Flow("schema").read_parquet(
        str(tmp_path / "*.parquet"), schema=SCHEMA_KS, on_corrupt_file="skip"
    )
    data, bad = collect_all(stream, stream.side_output("malformed"))
    assert data.height == 0 and data.schema == pl.Schema(SCHEMA_KS)
    assert sorted(bad["file"].to_list()) == [
        str(tmp_path / "a.parquet"),
        str(tmp_path / "b.parquet"),
    ]


@pytest.mark.parametrize("method", ["read_parquet", "read_ipc", "read_csv", "read_ndjson"])
def test_on_corrupt_file_is_checked_when_the_flow_is_built(tmp_path: Path, method: str) -> None:
    with pytest.raises(
        af.SourceError, match=r"on_corrupt_file=\.\.\.\) must be 'fail' .* or 'skip' .* got 'skipp'"
    ):
        getattr(af.Flow("typo"), method)(
            str(tmp_path / "nothing-read-yet"), on_corrupt_file="skipp"
        )


_TEXT = st.text(alphabet=st.sampled_from(list('[]{}"\\ab\n')), max_size=8)
_JSON = st.recursive(
    st.none() | st.integers() | _TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=30,
)


def _depth(value: object) -> int:
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    return 0


@settings(max_examples=300, deadline=None)
@given(value=_JSON, limit=st.integers(0, 6))
def test_nesting_depth_equals_the_structures_depth(value: object, limit: int) -> None:
    """On any JSON text (strings full of brackets, quotes and backslashes), the numpy measure
    is the depth of the structure it encodes."""
    from arrowflow.io._ndjson import nesting_depth

    depth = _depth(value)
    assert nesting_depth(json.dumps(value).encode(), limit) == (depth if depth > limit else None)


def test_corrupt_parquet_files_are_skipped_under_an_event_time_window(
    tmp_path: Path, workers: int
) -> None:
    """A Parquet file skipped as corrupt at plan time has no footer to bound its split's event
    time: the watermark's split bounds pass it over (reading its footer failed the plan), and
    the windows over the good files equal polars'."""
    from datetime import datetime

    rng = np.random.default_rng(11)
    frames = []
    for number in range(3):
        n = 3_000
        ts = pl.datetime_range(datetime(2024, 1, 1), datetime(2024, 1, 1, 1), "1s", eager=True)
        frame = pl.DataFrame({"ts": ts.sample(n, seed=number).sort(), "k": rng.integers(0, 5, n)})
        frame.write_parquet(tmp_path / f"p{number}.parquet", row_group_size=1_000)
        frames.append(frame)
    (tmp_path / "p9.parquet").write_bytes(b"PAR1 not a parquet file")
    flow = af.Flow("corrupt-windows")
    events = flow.read_parquet(str(tmp_path / "*.parquet"), on_corrupt_file="skip")
    windows = (
        events.with_watermark("ts", delay="5s")
        .key_by("k")
        .window(af.tumbling("10m"))
        .agg(n=pl.len())
    )
    got, bad, late = collect_all(
        windows, events.side_output("malformed"), windows.side_output("late"), workers=workers
    )
    assert late.height == 0  # each file is sorted by time: nothing is late within its own split
    expected = (
        pl.concat(frames)
        .group_by("k", pl.col("ts").dt.truncate("10m").alias("window_start"))
        .agg(n=pl.len())
    )
    assert_frame_equal_unordered(got.select("k", "window_start", "n"), expected, check_dtypes=False)
    assert bad["file"].to_list() == [str(tmp_path / "p9.parquet")]
