"""Bad rows in CSV and NDJSON: which rows, byte offsets, line numbers and reasons, exactly.

Good rows are compared with polars reading the same file with the bad lines removed; each
bad row must appear exactly once in the ``malformed`` side output, and ``on_error="raise"``
must fail on the first one instead.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import arrowflow as af
from arrowflow.errors import SourceError, WorkerError
from arrowflow.io.files import FileSource
from arrowflow.sources import MALFORMED_SCHEMA

SCHEMA = pl.Schema({"a": pl.Int64, "s": pl.String, "f": pl.Float64})


def expected_malformed(path: Path, bad: list[tuple[int, str]], source: str) -> pl.DataFrame:
    """``bad``: (0-based line index, reason) of each bad line of ``path``."""
    payload = path.read_bytes()
    lines = payload.split(b"\n")
    starts = [0]
    for line in lines[:-1]:
        starts.append(starts[-1] + len(line) + 1)
    return pl.DataFrame(
        {
            "source": [source] * len(bad),
            "file": [str(path)] * len(bad),
            "offset": [starts[i] for i, _ in bad],
            "line": [i + 1 for i, _ in bad],
            "reason": [why for _, why in bad],
            "raw": [lines[i].rstrip(b"\r").decode("utf-8", errors="replace") for i, _ in bad],
        },
        schema=MALFORMED_SCHEMA,
    )


CSV_TEXT = (
    b"a,s,f\n"  # line 1: header
    b"1,x,1.5\n"  # 2
    b"2\n"  # 3: one field
    b"zz,y,2.5\n"  # 4: a is no Int64
    b"4,w,5,6\n"  # 5: four fields
    b"\n"  # 6: blank, not a record
    b'5,"q,""r""",7\n'  # 7: quoted field with separator and quotes
    b"6,v,abc\r\n"  # 8: f is no Float64 (CRLF line)
    b'7,"multi\nline",8\n'  # 9-10: a quoted newline
    b"8,\xff\xfe,9\n"  # 11: not UTF-8
    b"9,z,10"  # 12: last line without a newline
)
CSV_BAD = [
    (2, "expected 3 fields, found 1"),
    (3, "column 'a': cannot parse 'zz' as Int64"),
    (4, "expected 3 fields, found 4"),
    (7, "column 'f': cannot parse 'abc' as Float64"),
    (10, "not valid UTF-8"),
]
CSV_GOOD_LINES = [1, 6, 8, 9, 11]


def check_csv_exactly(path: Path, data: pl.DataFrame, bad: pl.DataFrame, same_rows) -> None:
    good_text = b"\n".join(
        line for i, line in enumerate(CSV_TEXT.split(b"\n")) if i == 0 or i in CSV_GOOD_LINES
    )
    same_rows(data, pl.read_csv(good_text, schema=SCHEMA))
    assert data.height == 4  # lines 9 and 10 are one record
    same_rows(bad, expected_malformed(path, CSV_BAD, "read_csv"))


def test_csv_bad_rows_do_not_depend_on_batch_size(tmp_path: Path, read_all, same_rows) -> None:
    path = tmp_path / "bad.csv"
    path.write_bytes(CSV_TEXT)
    source = FileSource("csv", str(path), schema=SCHEMA)
    whole, whole_bad = read_all(source)
    for batch_size in (1, 2, 3, 100):
        data, bad = read_all(source, batch_size=batch_size)
        same_rows(data, whole)
        same_rows(bad, whole_bad)


def test_csv_on_error_raise_names_line_and_reason(tmp_path: Path, workers: int) -> None:
    path = tmp_path / "bad.csv"
    path.write_bytes(CSV_TEXT)
    stream = af.Flow("csv").read_csv(str(path), schema=SCHEMA, on_error="raise")
    with pytest.raises((SourceError, WorkerError)) as caught:
        stream.collect(workers=workers)
    text = str(caught.value)
    assert "line 3 (byte 14)" in text and "expected 3 fields, found 1" in text and str(path) in text


def test_csv_short_rows_alone_are_caught(tmp_path: Path, read_all) -> None:
    """polars fills a short row with nulls without complaint; the reader must not."""
    path = tmp_path / "short.csv"
    path.write_bytes(b"a,s,f\n1,x,1.5\n2,y\n3,z,\n")
    data, bad = read_all(FileSource("csv", str(path), schema=SCHEMA))
    assert data.to_dicts() == [{"a": 1, "s": "x", "f": 1.5}, {"a": 3, "s": "z", "f": None}]
    assert bad is not None and bad.select("line", "offset", "reason").to_dicts() == [
        {"line": 3, "offset": 14, "reason": "expected 3 fields, found 2"}
    ]


def test_csv_short_rows_in_a_quoted_file_are_caught(tmp_path: Path, read_all, same_rows) -> None:
    path = tmp_path / "quoted.csv"
    path.write_bytes(b'a,s,f\n1,"x,y\nz",1.5\n2,"p"\n3,"q",\n4,"r,""",2\n')
    data, bad = read_all(FileSource("csv", str(path), schema=SCHEMA))
    same_rows(
        data,
        pl.DataFrame(
            {"a": [1, 3, 4], "s": ["x,y\nz", "q", 'r,"'], "f": [1.5, None, 2.0]}, schema=SCHEMA
        ),
    )
    assert bad is not None and bad.select("line", "offset", "reason", "raw").to_dicts() == [
        {"line": 4, "offset": 20, "reason": "expected 3 fields, found 2", "raw": '2,"p"'}
    ]


def test_csv_stray_quote_is_a_literal_character(tmp_path: Path, read_all, same_rows) -> None:
    """A quote inside an unquoted field (5" screen) is text, as Python's csv module reads it;
    polars refuses such a file in strict mode, so the reader takes its slow path for it."""
    import csv

    path = tmp_path / "stray.csv"
    path.write_bytes(b'a,s,f\n1,x,1.5\n2,5" screen,2.5\n3,"q",3.5\n')
    with pytest.raises(pl.exceptions.ComputeError):
        pl.read_csv(path, schema=SCHEMA)
    data, bad = read_all(FileSource("csv", str(path), schema=SCHEMA))
    rows = list(csv.reader(path.read_text().splitlines()))[1:]
    same_rows(
        data, pl.DataFrame([(int(a), s, float(f)) for a, s, f in rows], schema=SCHEMA, orient="row")
    )
    assert bad is None


def test_csv_header_names_the_columns(tmp_path: Path, read_all, same_rows) -> None:
    """Columns are matched by header name, whatever their order in the file."""
    path = tmp_path / "reordered.csv"
    path.write_bytes(b"f,extra,a,s\n1.5,q,1,x\n2.5,r,zz,y\n")
    data, bad = read_all(FileSource("csv", str(path), schema=SCHEMA))
    same_rows(data, pl.DataFrame({"a": [1], "s": ["x"], "f": [1.5]}, schema=SCHEMA))
    assert bad is not None and bad["reason"].to_list() == ["column 'a': cannot parse 'zz' as Int64"]


def test_narrow_and_temporal_types_in_text(tmp_path: Path, read_all) -> None:
    schema = {"n": pl.Int8, "t": pl.Datetime("ms"), "d": pl.Date, "b": pl.Boolean}
    (tmp_path / "x.csv").write_bytes(
        b"n,t,d,b\n1,2024-01-01T00:00:00.5,2024-01-02,true\n300,2024-01-01,2024-01-02,false\n"
        b"2,yesterday,2024-01-02,true\n3,2024-01-01,2024-13-45,true\n4,2024-01-01,2024-01-01,maybe\n"
    )
    data, bad = read_all(FileSource("csv", str(tmp_path / "x.csv"), schema=schema))
    assert data.height == 1 and data.schema == pl.Schema(schema)
    assert bad is not None and bad["reason"].to_list() == [
        "column 'n': cannot parse '300' as Int8",
        "column 't': cannot parse 'yesterday' as Datetime(time_unit='ms', time_zone=None)",
        "column 'd': cannot parse '2024-13-45' as Date",
        "column 'b': cannot parse 'maybe' as Boolean",
    ]
    assert bad["line"].to_list() == [3, 4, 5, 6]


NDJSON_LINES = [
    b'{"a": 1, "s": "x", "f": 1.5}',  # 1
    b'{"a": 2, "s": "y",',  # 2: invalid JSON
    b"[1, 2]",  # 3: not an object
    b'{"a": "zz", "s": "z", "f": 2.5}',  # 4: a is no Int64
    b"   ",  # 5: blank, not a record
    b'{"s": "only s"}',  # 6: missing keys are nulls
    b"null",  # 7: not an object
    b'{"a": 3, "s": "\xff", "f": 1}',  # 8: not UTF-8
    b'{"a": 4, "s": {"nested": true}, "f": 2}',  # 9: an object for a String: its JSON text
    b'{"a": 5, "s": "w", "f": "abc", "extra": 1}',  # 10: f is no Float64
    b'{"a": 6, "s": "\\u00e9\\n", "f": -0.5}\r',  # 11: escapes, CRLF
]
NDJSON_BAD = [
    (1, "invalid JSON"),
    (2, "expected a JSON object, found an array"),
    (3, "column 'a': cannot parse 'zz' as Int64"),
    (6, "expected a JSON object, found null"),
    (7, "not valid UTF-8"),
    (9, "column 'f': cannot parse 'abc' as Float64"),
]


def check_ndjson_exactly(path: Path, data: pl.DataFrame, bad: pl.DataFrame, same_rows) -> None:
    good = b"\n".join(NDJSON_LINES[i] for i in (0, 5, 8, 10))
    same_rows(data, pl.read_ndjson(good, schema=SCHEMA))
    assert data.height == 4
    expected = expected_malformed(path, NDJSON_BAD, "read_ndjson")
    got_reasons = bad.sort("line")["reason"].to_list()
    assert got_reasons[0].startswith("invalid JSON: ")  # Python's json module words the detail
    same_rows(
        bad.with_columns(pl.col("reason").str.replace(r"^invalid JSON: .*", "invalid JSON")),
        expected,
    )


def test_bad_rows_exactly_on_every_executor(tmp_path: Path, workers: int, same_rows) -> None:
    from arrowflow.testing import collect_all

    csv_path, json_path = tmp_path / "bad.csv", tmp_path / "bad.ndjson"
    csv_path.write_bytes(CSV_TEXT)
    json_path.write_bytes(b"\n".join(NDJSON_LINES) + b"\n")
    flow = af.Flow("bad")
    from_csv = flow.read_csv(str(csv_path), schema=SCHEMA)
    from_json = flow.read_ndjson(str(json_path), schema=SCHEMA)
    csv_data, csv_bad, json_data, json_bad = collect_all(
        from_csv,
        from_csv.side_output("malformed"),
        from_json,
        from_json.side_output("malformed"),
        workers=workers,
        batch_size=2,
    )
    check_csv_exactly(csv_path, csv_data, csv_bad, same_rows)
    check_ndjson_exactly(json_path, json_data, json_bad, same_rows)


def test_ndjson_on_error_raise(tmp_path: Path) -> None:
    path = tmp_path / "bad.ndjson"
    path.write_bytes(b'{"a": 1}\n{"a": "x"}\n')
    with pytest.raises(
        SourceError, match=r"line 2 \(byte 9\): column 'a': cannot parse 'x' as Int64"
    ):
        af.Flow("json").read_ndjson(str(path), schema=SCHEMA, on_error="raise").collect()


def test_malformed_rows_name_the_source_operator(tmp_path: Path) -> None:
    (tmp_path / "x.csv").write_bytes(b"a,s,f\n1\n")
    flow = af.Flow("names")
    first = flow.read_csv(str(tmp_path / "x.csv"), schema=SCHEMA)
    second = flow.read_csv(str(tmp_path / "x.csv"), schema=SCHEMA, name="second_reader")
    assert first.side_output("malformed").collect()["source"].to_list() == ["read_csv"]
    assert second.side_output("malformed").collect()["source"].to_list() == ["second_reader"]


# ---------------------------------------------------------------------------- properties
_GOOD = st.tuples(
    st.none() | st.integers(-(2**63), 2**63 - 1),
    st.none() | st.text(alphabet=st.sampled_from(list('ab, "\n\té✓{}[]:')), max_size=6),
    st.none() | st.floats(allow_nan=False, allow_infinity=False),
)
_BAD_CSV = {
    b"1": "expected 3 fields, found 1",
    b"1,x,2.5,9": "expected 3 fields, found 4",
    b"zz,x,2.5": "column 'a': cannot parse 'zz' as Int64",
    b"1,x,abc": "column 'f': cannot parse 'abc' as Float64",
    b'1,"x,y"': "expected 3 fields, found 2",
    b"\xff,x,1": "not valid UTF-8",
    b"": None,
}
_BAD_JSON = {
    b'{"a":': "invalid JSON",
    b"7": "expected a JSON object, found a number",
    b'"s"': "expected a JSON object, found a string",
    b'{"a": 1.5}': "column 'a': cannot parse '1.5' as Int64",
    b'{"f": [1]}': "column 'f': cannot parse '[1]' as Float64",
    b"\t ": None,
    b'{"s": ' + b"[" * 1099 + b"]" * 1099 + b"}": "nesting deeper than 1024 levels (1100 found)",
    b'{"a": '
    + b"9" * 400
    + b"}": "column 'a': the number 999999...9999 (400 digits) does not fit in Int64",
}


@pytest.mark.parametrize("fmt", ["csv", "ndjson"])
@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(good=st.lists(_GOOD, max_size=25), data=st.data(), batch_size=st.none() | st.integers(1, 7))
def test_injected_bad_rows_are_found_exactly_once(
    fmt, good, data, batch_size, tmp_path_factory, read_all, same_rows
) -> None:
    frame = pl.DataFrame(good, schema=SCHEMA, orient="row")
    bad_table = _BAD_CSV if fmt == "csv" else _BAD_JSON
    records = [
        frame.slice(i, 1).write_csv(include_header=False).encode()
        if fmt == "csv"
        else frame.slice(i, 1).write_ndjson().encode()
        for i in range(frame.height)
    ]
    inserted = data.draw(
        st.lists(
            st.tuples(st.integers(0, len(records)), st.sampled_from(sorted(bad_table))), max_size=6
        )
    )
    pieces: list[tuple[bytes, str | None]] = [(r, None) for r in records]
    for at, line in sorted(inserted, reverse=True):
        pieces.insert(at, (line + b"\n", bad_table[line] or "blank"))
    header = b"a,s,f\n" if fmt == "csv" else b""
    payload = header + b"".join(p for p, _ in pieces)
    path = tmp_path_factory.mktemp("inject") / f"x.{fmt}"
    path.write_bytes(payload)

    got, bad = read_all(FileSource(fmt, str(path), schema=SCHEMA), batch_size=batch_size)

    expected_good = (
        pl.concat(
            [
                pl.read_csv(header + r, schema=SCHEMA)
                if fmt == "csv"
                else pl.read_ndjson(r, schema=SCHEMA)
                for r in records
            ]
        )
        if records
        else pl.DataFrame(schema=SCHEMA)
    )
    same_rows(got, expected_good)
    offset, rows = len(header), []
    for piece, why in pieces:
        if why not in (None, "blank"):
            line = payload[:offset].count(b"\n") + 1
            rows.append(
                {
                    "offset": offset,
                    "line": line,
                    "reason": why,
                    "raw": piece.rstrip(b"\n").decode("utf-8", errors="replace"),
                }
            )
        offset += len(piece)
    got_bad = (bad if bad is not None else pl.DataFrame(schema=MALFORMED_SCHEMA)).select(
        "offset", "line", "reason", "raw"
    )
    got_bad = got_bad.with_columns(
        pl.col("reason").str.replace(r"^invalid JSON: .*", "invalid JSON")
    )
    same_rows(got_bad, pl.DataFrame(rows, schema=got_bad.schema))


def test_reasons_describe_json_the_way_python_does() -> None:
    with pytest.raises(ValueError, match="Expecting value"):
        json.loads(b'{"a":')
