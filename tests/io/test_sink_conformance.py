"""Every built-in sink passes the sink conformance suite (:mod:`arrowflow.testing.sink_conformance`):
Parquet, CSV, NDJSON and IPC part files, and write_database on SQLite and on a real PostgreSQL,
each read back by polars (or the database driver) and compared with the rows written."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

from arrowflow.io import DatabaseSink
from arrowflow.io.filesinks import FileSink
from arrowflow.testing.sink_conformance import SinkCase, SinkConformance, default_batches

SCHEMA = default_batches(1, 0).schema
_tables = itertools.count()


def read_parts(fmt: str, folder: Path) -> pl.DataFrame:
    """The committed part files, as polars reads them (hidden staging left out)."""
    files = sorted(folder.glob("part-*"))
    if not files:
        return pl.DataFrame(schema=SCHEMA)
    if fmt == "parquet":
        return pl.concat([pl.read_parquet(f) for f in files])
    if fmt == "ipc":
        return pl.concat([pl.read_ipc(f) for f in files])
    if fmt == "csv":
        return pl.concat([pl.read_csv(f, schema=SCHEMA) for f in files])
    return pl.concat([pl.read_ndjson(f, schema=SCHEMA) for f in files])


@pytest.mark.parametrize("fmt", ["parquet", "csv", "ndjson", "ipc"])
class TestFileSinks(SinkConformance):
    @pytest.fixture
    def case(self, tmp_path: Path, fmt: str) -> SinkCase:
        out = tmp_path / "out"
        return SinkCase(make=lambda: FileSink(fmt, str(out)), read=lambda: read_parts(fmt, out))


def read_table(url: str, table: str) -> pl.DataFrame:
    if url.startswith("sqlite"):
        import adbc_driver_sqlite.dbapi as driver

        target = url[len("sqlite:///") :]
    else:
        import adbc_driver_postgresql.dbapi as driver

        target = url
    with driver.connect(target) as connection, connection.cursor() as cursor:
        cursor.execute(f'SELECT * FROM "{table}"')
        frame = pl.DataFrame(pl.from_arrow(cursor.fetch_arrow_table()))
    # write_database's bookkeeping (which sink and checkpoint committed a row) is not data.
    return frame.drop("_af_sink", "_af_epoch", strict=False).cast(dict(SCHEMA))


def database_case(url: str) -> SinkCase:
    table = f"conformance_{next(_tables)}"
    return SinkCase(
        make=lambda: DatabaseSink(url, table=table), read=lambda: read_table(url, table)
    )


class TestSqlite(SinkConformance):
    @pytest.fixture
    def case(self, tmp_path: Path) -> SinkCase:
        return database_case(f"sqlite:///{tmp_path}/app.db")


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    from arrowflow.testing.state_conformance import temporary_postgres

    with temporary_postgres() as url:
        yield url


@pytest.mark.postgres
class TestPostgres(SinkConformance):
    @pytest.fixture
    def case(self, postgres: str) -> SinkCase:
        return database_case(postgres)
