"""Which rows are malformed must not depend on how the flow reads them.

A row is malformed when any column of the declared schema fails to parse (or the record is
not well formed), whichever columns the flow uses downstream, whichever executor and batch
size; ``side_output("malformed")`` collected alone finds exactly what a real sink receives.
Expected rows are built from the generated data (which lines were spoiled, and how), and the
good rows are polars reading only the good lines.
"""

from __future__ import annotations

import random
from pathlib import Path

import polars as pl
import pytest

import arrowflow as af
from arrowflow.testing import collect_all

SCHEMA = pl.Schema({"id": pl.Int64, "qty": pl.Int64, "price": pl.Float64, "name": pl.String, "day": pl.Date})
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


@pytest.mark.parametrize("batch_size", [None, 777])
def test_csv_malformed_rows_do_not_depend_on_projection(tmp_path: Path, workers: int, batch_size, same_rows) -> None:
    path = tmp_path / "orders.csv"
    good, bad_lines = generate_csv(path, 3000, seed=workers + 11)
    expected = polars_good(good)
    assert 900 < len(bad_lines) < 1300 and expected.height == 3000 - len(bad_lines)
    for columns in PROJECTIONS:
        flow = af.Flow("projection")
        stream = flow.read_csv(str(path), schema=SCHEMA)
        data, bad = collect_all(projected(stream, columns), stream.side_output("malformed"),
                                workers=workers, batch_size=batch_size)
        assert sorted(bad["line"].to_list()) == bad_lines, f"columns {columns}"
        same_rows(data, expected.select(columns or SCHEMA.names()))


def test_csv_unread_column_of_the_wrong_type_makes_the_row_malformed(tmp_path: Path, read_all) -> None:
    from arrowflow.io.files import FileSource

    path = tmp_path / "x.csv"
    path.write_bytes(b"a,s,f\n1,x,oops\n2,y,3.5\n")
    source = FileSource("csv", str(path), schema={"a": pl.Int64, "s": pl.String, "f": pl.Float64})
    for reader in (source, source.with_columns_pruned(["a"]), source.with_columns_pruned(["s"])):
        data, bad = read_all(reader)
        assert data.to_dicts() == [{c: v for c, v in {"a": 2, "s": "y", "f": 3.5}.items() if c in data.columns}]
        assert bad is not None and bad.select("line", "reason").to_dicts() == [
            {"line": 2, "reason": "column 'f': cannot parse 'oops' as Float64"}]


def test_ndjson_malformed_rows_do_not_depend_on_projection(tmp_path: Path, read_all) -> None:
    from arrowflow.io.files import FileSource

    path = tmp_path / "x.ndjson"
    path.write_bytes(b'{"a": 1, "s": "x", "f": "oops"}\n{"a": 2, "s": "y", "f": 3.5}\n{"a": "no", "s": "z"}\n')
    source = FileSource("ndjson", str(path), schema={"a": pl.Int64, "s": pl.String, "f": pl.Float64})
    for reader in (source, source.with_columns_pruned(["s"]), source.with_columns_pruned(["f", "s"])):
        data, bad = read_all(reader)
        assert data.to_dicts() == [{c: v for c, v in {"a": 2, "s": "y", "f": 3.5}.items() if c in data.columns}]
        assert bad is not None and bad.sort("line").select("line", "reason").to_dicts() == [
            {"line": 1, "reason": "column 'f': cannot parse 'oops' as Float64"},
            {"line": 3, "reason": "column 'a': cannot parse 'no' as Int64"}]


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

    alone = af.Flow("orders").read_csv(str(path), schema=schema).side_output("malformed").collect(workers=workers)
    assert alone.sort("line").select("line", "offset", "reason", "raw").to_dicts() == \
        sunk.select("line", "offset", "reason", "raw").to_dicts()


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
    assert sorted(pl.read_parquet(tmp_path / "out" / "*.parquet")["id"].to_list()) == \
        sorted(polars_good(good)["id"].to_list())

    alone = af.Flow("alone").read_csv(str(path), schema=SCHEMA).side_output("malformed").collect(workers=workers)
    assert sorted(alone["line"].to_list()) == bad_lines
