"""What only the ``sql`` backend promises: state a person can query with plain SQL, safe and
unique table names, and clear errors when the database is not there.

The shared behaviour (same answers as ``memory``) is in ``test_conformance.py``.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import sqlite3
import time
from pathlib import Path

import adbc_driver_postgresql.dbapi as pg
import fsspec
import polars as pl
import pytest
from polars.testing import assert_frame_equal

import arrowflow as af
from arrowflow.backends.lmdb import LmdbBackend
from arrowflow.backends.sql import SqlBackend
from arrowflow.errors import StateError
from arrowflow.state import StoreContext, StoreSpec

SPEC = StoreSpec(
    "agg-1",
    pl.Schema({"user": pl.Int64, "country": pl.String}),
    pl.Schema({"n": pl.Int64, "total": pl.Float64, "last_seen": pl.Datetime("ms"), "day": pl.Date}),
)
KEYS = pl.DataFrame({"user": [1, 2, None], "country": ["de", "fr", "fr"]})
VALUES = pl.DataFrame(
    {
        "n": [3, 1, 2],
        "total": [9.5, 1.0, None],
        "last_seen": [dt.datetime(2024, 5, 1, 12, 30), None, dt.datetime(1999, 12, 31, 23, 59, 59)],
        "day": [dt.date(2024, 5, 1), dt.date(2024, 5, 2), None],
    },
    schema_overrides={"last_seen": pl.Datetime("ms")},
)


def _context(tmp_path: Path, name: str = "w0", worker: int = 0) -> StoreContext:
    local = tmp_path / name
    local.mkdir(exist_ok=True)
    return StoreContext(str(local), worker, 1)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # nothing listens once the socket is closed


def test_sqlite_state_is_a_typed_table_anyone_can_query(tmp_path: Path) -> None:
    store = SqlBackend().open_store(SPEC, range(0, 128), _context(tmp_path))
    try:
        store.put(KEYS, VALUES)
        database = tmp_path / "w0" / "sql" / "state-w0.sqlite"
        with sqlite3.connect(database) as reader:  # the standard library, not arrowflow
            (table,) = [
                row[0]
                for row in reader.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            ]
            assert table == "af_agg-1_000_128"
            declared = {row[1]: row[2] for row in reader.execute(f'PRAGMA table_info("{table}")')}
            assert declared == {
                "__key": "BLOB",
                "__key_group": "INTEGER",
                "user": "INTEGER",
                "country": "TEXT",
                "n": "INTEGER",
                "total": "REAL",
                "last_seen": "TEXT",
                "day": "TEXT",
                "__nan": "INTEGER",  # which float columns are NaN (SQLite keeps NaN as NULL)
            }
            rows = reader.execute(
                f'SELECT "user", country, n, total, last_seen, day FROM "{table}" '
                f"WHERE n > 1 ORDER BY n"
            ).fetchall()
        assert rows == [
            (None, "fr", 2, None, "1999-12-31T23:59:59.000000000", None),
            (1, "de", 3, 9.5, "2024-05-01T12:30:00.000000000", "2024-05-01"),
        ]
    finally:
        store.close()


@pytest.mark.postgres
def test_postgresql_state_is_a_typed_table_anyone_can_query(
    tmp_path: Path, postgres_url: str
) -> None:
    backend = SqlBackend(postgres_url, table_prefix="clicks_")
    store = backend.open_store(SPEC, range(0, 64), _context(tmp_path))
    try:
        store.put(KEYS, VALUES)
        with pg.connect(postgres_url) as connection, connection.cursor() as cursor:
            cursor.execute(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_name = 'clicks_agg-1_000_064' ORDER BY ordinal_position"
            )
            assert cursor.fetchall() == [
                ("__key", "bytea"),
                ("__key_group", "integer"),
                ("user", "bigint"),
                ("country", "text"),
                ("n", "bigint"),
                ("total", "double precision"),
                ("last_seen", "timestamp without time zone"),
                ("day", "date"),
            ]
            cursor.execute(
                'SELECT country, sum(n)::bigint FROM "clicks_agg-1_000_064" GROUP BY country ORDER BY country'
            )
            assert cursor.fetchall() == [("de", 3), ("fr", 3)]
    finally:
        store.close()


@pytest.mark.postgres
def test_names_are_quoted_unique_per_run_and_dropped_at_close(
    tmp_path: Path, postgres_url: str
) -> None:
    hostile = StoreSpec('agg"; DROP TABLE victim; --', SPEC.key_schema, SPEC.value_schema)
    with pg.connect(postgres_url, autocommit=True) as connection, connection.cursor() as cursor:
        cursor.execute("CREATE TABLE victim (x int)")
        try:
            run_a = SqlBackend(postgres_url).open_store(
                hostile, range(0, 128), _context(tmp_path, "a")
            )
            run_b = SqlBackend(postgres_url).open_store(
                hostile, range(0, 128), _context(tmp_path, "b")
            )
            run_a.put(KEYS, VALUES)
            run_b.put(KEYS[:1], VALUES[:1])
            assert (run_a.count(), run_b.count()) == (3, 1)  # two runs, two tables
            cursor.execute(
                "SELECT tablename FROM pg_tables WHERE tablename LIKE '%DROP\\_TABLE\\_victim%'"
            )
            names = sorted(row[0] for row in cursor.fetchall())
            assert len(names) == 2 and all("DROP_TABLE_victim" in name for name in names), names
            run_a.close()
            run_b.close()
            cursor.execute(
                "SELECT count(*) FROM pg_tables WHERE tablename LIKE '%DROP\\_TABLE\\_victim%'"
            )
            assert cursor.fetchone() == (0,)
            cursor.execute("SELECT count(*) FROM victim")  # still there
        finally:
            cursor.execute("DROP TABLE IF EXISTS victim")


@pytest.mark.postgres
def test_keep_tables_leaves_the_state_for_later_queries(tmp_path: Path, postgres_url: str) -> None:
    backend = SqlBackend(postgres_url, table_prefix="kept_", keep_tables=True)
    store = backend.open_store(SPEC, range(0, 128), _context(tmp_path))
    store.put(KEYS, VALUES)
    store.close()
    with pg.connect(postgres_url, autocommit=True) as connection, connection.cursor() as cursor:
        cursor.execute('SELECT count(*) FROM "kept_agg-1_000_128"')
        assert cursor.fetchone() == (3,)
        cursor.execute('DROP TABLE "kept_agg-1_000_128"')


def test_a_postgresql_server_that_does_not_answer_is_a_state_error(tmp_path: Path) -> None:
    url = f"postgresql://alice:s3cret@127.0.0.1:{_closed_port()}/state"
    started = time.perf_counter()
    with pytest.raises(
        StateError,
        match=r"PostgreSQL server at postgresql://alice:\*\*\*@127\.0\.0\.1:\d+/state "
        r"did not accept a connection",
    ) as caught:
        SqlBackend(url).open_store(SPEC, range(0, 128), _context(tmp_path))
    assert "s3cret" not in str(caught.value)
    assert time.perf_counter() - started < 10
    flow = af.Flow("unreachable")
    stream = flow.from_polars(pl.DataFrame({"k": [1, 2]})).key_by("k").agg(n=pl.len())
    with pytest.raises(StateError, match="did not accept a connection"):
        stream.collect(state=url)


def test_an_unparseable_postgresql_url_is_a_state_error_without_its_password(
    tmp_path: Path,
) -> None:
    backend = SqlBackend("postgresql://alice:s3cret@[::1/state")  # the IPv6 host's ] is missing
    assert "s3cret" not in repr(backend)
    with pytest.raises(StateError, match="<unparseable URL> did not accept a connection") as caught:
        backend.open_store(SPEC, range(0, 128), _context(tmp_path))
    assert "s3cret" not in str(caught.value)


@pytest.mark.postgres
def test_a_missing_database_is_a_state_error(tmp_path: Path, postgres_url: str) -> None:
    url = postgres_url.rsplit("/", 1)[0] + "/no_such_database"
    with pytest.raises(
        StateError, match=r'did not accept a connection.*"no_such_database" does not exist'
    ):
        SqlBackend(url).open_store(SPEC, range(0, 128), _context(tmp_path))


def test_a_sqlite_path_that_cannot_be_created_is_a_state_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    backend = SqlBackend(f"sqlite:///{blocker}/state.db")
    with pytest.raises(
        StateError, match=r"cannot create or open the SQLite database .*a-file/state\.db"
    ):
        backend.open_store(SPEC, range(0, 128), _context(tmp_path))


def test_a_url_of_another_kind_is_refused() -> None:
    with pytest.raises(StateError, match=r"expects 'sqlite:///path/to/file.db' or 'postgresql://"):
        SqlBackend("mysql://root:pw@db/state")


def test_reserved_and_nested_columns_are_refused(tmp_path: Path) -> None:
    reserved = StoreSpec("agg-1", pl.Schema({"__key": pl.Int64}), pl.Schema({"n": pl.Int64}))
    with pytest.raises(StateError, match=r"column names \['__key'\] are reserved"):
        SqlBackend().open_store(reserved, range(0, 128), _context(tmp_path))
    nested = StoreSpec(
        "agg-1", pl.Schema({"id": pl.Int64}), pl.Schema({"seen": pl.List(pl.String)})
    )
    with pytest.raises(
        StateError, match=r"column 'seen' has type List\(String\).*'memory', 'arrow' or 'lmdb'"
    ):
        SqlBackend().open_store(nested, range(0, 128), _context(tmp_path))


def test_stores_of_a_worker_share_one_sqlite_file_and_connection(tmp_path: Path) -> None:
    backend = SqlBackend()
    context = _context(tmp_path)
    first = backend.open_store(SPEC, range(0, 128), context)
    second = backend.open_store(
        StoreSpec("agg-2", SPEC.key_schema, SPEC.value_schema), range(0, 128), context
    )
    first.put(KEYS, VALUES)
    second.put(KEYS[:1], VALUES[:1])
    assert first.shared is second.shared  # type: ignore[attr-defined]
    first.close()
    assert second.get(KEYS).get_column("__found").to_list() == [True, False, False]
    second.close()
    with sqlite3.connect(tmp_path / "w0" / "sql" / "state-w0.sqlite") as reader:
        assert reader.execute(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table'"
        ).fetchone() == (0,)


def test_sqlite_urls_follow_sqlalchemy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``sqlite:///relative.db`` and ``sqlite:////absolute.db``; tables named for the run."""
    monkeypatch.chdir(tmp_path)
    for url, path in [
        ("sqlite:///rel/state.db", tmp_path / "rel" / "state.db"),
        (f"sqlite:///{tmp_path}/abs.db", tmp_path / "abs.db"),
    ]:
        store = SqlBackend(url, keep_tables=True).open_store(
            SPEC, range(0, 128), _context(tmp_path)
        )
        store.put(KEYS, VALUES)
        store.close()
        with sqlite3.connect(path) as reader:
            (name,) = reader.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'"
            ).fetchone()
            assert (
                name.startswith("af_")
                and name.endswith("_agg-1_000_128")
                and len(name) == len("af_12345678_agg-1_000_128")
            )
            assert reader.execute(f'SELECT count(*) FROM "{name}"').fetchone() == (3,)


def test_snapshots_and_restores_leave_no_files_or_descriptors_behind(tmp_path: Path) -> None:
    """Twenty checkpoints and restores: the worker's local directory holds the sqlite file
    only, the process has as many open files as before, and each snapshot's manifest entry
    counts the rows its file holds (read back with polars)."""
    backend = SqlBackend()
    store = backend.open_store(SPEC, range(0, 128), _context(tmp_path))
    restored = backend.open_store(SPEC, range(0, 128), _context(tmp_path, "w1"))
    store.put(KEYS, VALUES)
    fs = fsspec.filesystem("file")
    local = [tmp_path / "w0", tmp_path / "w1"]
    before = [sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) for folder in local]
    descriptors = len(os.listdir("/proc/self/fd"))
    for checkpoint in range(1, 21):
        (state_file,) = store.snapshot(fs, str(tmp_path / "ckpt"), checkpoint)
        restored.restore(fs, str(tmp_path / "ckpt"), [state_file])
        written = pl.read_ipc(tmp_path / "ckpt" / state_file.path)
        assert state_file.extra["entries"] == written.height == KEYS.height
    assert len(os.listdir("/proc/self/fd")) == descriptors
    after = [sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) for folder in local]
    assert after == before
    assert_frame_equal(
        pl.concat(list(restored.scan())).sort("user"),
        pl.concat([KEYS, VALUES], how="horizontal").sort("user"),
    )
    store.close()
    restored.close()


def test_a_snapshot_file_of_another_format_is_a_state_error(tmp_path: Path) -> None:
    lmdb = LmdbBackend().open_store(SPEC, range(0, 128), _context(tmp_path, "l"))
    lmdb.put(KEYS, VALUES)
    fs = fsspec.filesystem("file")
    files = lmdb.snapshot(fs, str(tmp_path / "ckpt"), 1)
    store = SqlBackend().open_store(SPEC, range(0, 128), _context(tmp_path))
    with pytest.raises(StateError, match=r"cannot restore .* of format 'lmdb'"):
        store.restore(fs, str(tmp_path / "ckpt"), files)
    store.close()
