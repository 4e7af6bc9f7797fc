"""write_database: rows land once, on SQLite and on a real PostgreSQL, whatever the executor.

The protocol is driven directly for the unit tests (stage, commit twice, recover, a commit
that fails half-way), and through ``flow.run`` for the round trips; every check compares
what the database holds with polars computing the same thing. Crash tests are in
``tests/recovery/test_database_recovery.py``.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

import arrowflow as af
from arrowflow.errors import SchemaError, SinkError
from arrowflow.io import DatabaseSink

_names = itertools.count()


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    from arrowflow.testing.state_conformance import temporary_postgres

    with temporary_postgres() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database URL: a fresh SQLite file, or the module's PostgreSQL (tables named uniquely)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/app.db"
    return request.getfixturevalue("postgres")


def table_name(base: str = "t") -> str:
    return f"{base}_{next(_names)}"


def connect(url: str):
    if url.startswith("sqlite"):
        import adbc_driver_sqlite.dbapi as sqlite

        return sqlite.connect(url[len("sqlite:///") :])
    import adbc_driver_postgresql.dbapi as pg

    return pg.connect(url)


def sql(url: str, statement: str) -> list[tuple]:
    with connect(url) as connection, connection.cursor() as cursor:
        cursor.execute(statement)
        rows = cursor.fetchall() if cursor.description else []
        connection.commit()
        return rows


def read_table(url: str, table: str) -> pl.DataFrame:
    quoted = '"' + table.replace('"', '""') + '"'
    with connect(url) as connection, connection.cursor() as cursor:
        cursor.execute(f"SELECT * FROM {quoted}")
        frame = pl.from_arrow(cursor.fetch_arrow_table())
    # write_database's bookkeeping columns (which sink and checkpoint committed a row) are not data.
    return frame.drop([c for c in frame.columns if c in ("_af_sink", "_af_epoch")])


def sorted_by(frame: pl.DataFrame, *keys: str) -> pl.DataFrame:
    return frame.sort(list(keys) or frame.columns)


EVENTS = pl.DataFrame(
    {
        "event_id": list(range(3000)),
        "user_id": [i % 37 for i in range(3000)],
        "amount": [float(i % 101) / 4 for i in range(3000)],
        "kind": [["click", "view", "buy"][i % 3] for i in range(3000)],
    }
)


def begun_sink(
    url: str, table: str, schema: pl.Schema = EVENTS.schema, **options: object
) -> DatabaseSink:
    """A sink validated for ``schema`` and begun on ``table``, as the coordinator starts it."""
    sink = DatabaseSink(url, table=table, **options)
    sink.validate(schema, "sink")
    sink.begin()
    return sink


def staged_sink(
    url: str, table: str, frames: list[pl.DataFrame], **options: object
) -> tuple[DatabaseSink, list]:
    """A sink begun on ``table`` and one staged description per frame, checkpoints 1, 2, …"""
    sink = DatabaseSink(url, table=table, **options)
    sink.validate(frames[0].schema, "sink")
    sink.begin()
    writer = sink.open_writer(0, 1, "sink")
    staged = []
    for checkpoint_id, frame in enumerate(frames, start=1):
        writer.write(frame)
        staged.append(writer.prepare_commit(checkpoint_id))
    writer.close()
    return sink, staged


# ---------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("workers", [0, 2])
def test_append_and_upsert_equal_polars(db: str, workers: int) -> None:
    rows, totals = table_name("rows"), table_name("totals")
    flow = af.Flow("db")
    events = flow.from_polars(EVENTS, splits=4)
    events.write_database(db, table=rows)
    (
        events.key_by("user_id")
        .agg(n=pl.len(), total=pl.col("amount").sum())
        .write_database(db, table=totals, mode="upsert", key=["user_id"])
    )
    flow.run(workers=workers)
    assert_frame_equal(sorted_by(read_table(db, rows), "event_id"), EVENTS)
    expected = EVENTS.group_by("user_id").agg(n=pl.len(), total=pl.col("amount").sum())
    got = sorted_by(read_table(db, totals), "user_id")
    assert_frame_equal(got, sorted_by(expected, "user_id"), check_dtypes=False)


def test_types_round_trip(db: str) -> None:
    frame = pl.DataFrame(
        {
            "i": pl.Series([1, None, -3], dtype=pl.Int32),
            "f": [1.5, None, -2.25],
            "s": ["a", "é'\"", None],
            "b": [True, False, None],
            "d": [dt.date(2024, 2, 29), None, dt.date(1970, 1, 1)],
            "ts": [dt.datetime(2024, 1, 1, 12, 30, 1, 123456), None, dt.datetime(1999, 12, 31)],
        }
    )
    table = table_name("types")
    flow = af.Flow("types")
    flow.from_polars(frame).write_database(db, table=table)
    flow.run(workers=0)
    from arrowflow._foundation.sql import Dialect

    dialect = Dialect("postgresql" if db.startswith("postgres") else "sqlite")
    got = read_table(db, table)
    got = pl.DataFrame([dialect.from_db(got.get_column(c), t) for c, t in frame.schema.items()])
    assert_frame_equal(sorted_by(got, "f"), sorted_by(frame, "f"))


def test_modes_across_runs(db: str) -> None:
    table = table_name("modes")
    part = EVENTS.head(10)

    def run(mode: str) -> None:
        flow = af.Flow("modes")
        flow.from_polars(part).write_database(db, table=table, mode=mode)
        flow.run(workers=0)

    run("append")
    run("append")
    assert read_table(db, table).height == 20  # a fresh run appends to what is there
    run("overwrite")
    assert_frame_equal(sorted_by(read_table(db, table), "event_id"), part)


def test_two_sinks_into_one_table(db: str) -> None:
    table = table_name("shared")
    flow = af.Flow("shared")
    events = flow.from_polars(EVENTS, splits=2)
    events.filter(pl.col("kind") == "buy").write_database(db, table=table)
    events.filter(pl.col("kind") != "buy").write_database(db, table=table)
    flow.run(workers=2)
    assert_frame_equal(sorted_by(read_table(db, table), "event_id"), EVENTS)


def test_table_name_that_needs_quoting(db: str) -> None:
    table = table_name('odd "name"; DROP TABLE x --')
    flow = af.Flow("quoting")
    flow.from_polars(EVENTS.head(5)).write_database(db, table=table, mode="upsert", key="event_id")
    flow.run(workers=0)
    assert_frame_equal(sorted_by(read_table(db, table), "event_id"), EVENTS.head(5))


# ---------------------------------------------------------------------------- the protocol


def test_nothing_is_visible_before_commit_and_commit_is_idempotent(db: str) -> None:
    table = table_name("idem")
    sink, staged = staged_sink(db, table, [EVENTS.head(100), EVENTS.slice(100, 50)])
    assert staged[0] == {"writer": staged[0]["writer"], "checkpoints": [1], "rows": 100}
    assert read_table(db, table).height == 0  # staged rows are not in the table
    sink.commit(1, [staged[0]])
    sink.commit(1, [staged[0]])  # re-run from the manifest after a crash: no second insert
    assert_frame_equal(sorted_by(read_table(db, table), "event_id"), EVENTS.head(100))
    sink.commit(2, [staged[1]])
    sink.commit(2, [staged[1]])
    assert_frame_equal(sorted_by(read_table(db, table), "event_id"), EVENTS.head(150))
    assert read_table(db, sink.staging).height == 0


@pytest.mark.parametrize(
    "entry",
    [
        "part-00000001.parquet",
        {"writer": 5, "checkpoints": [1], "rows": 100},
        {"writer": "w", "checkpoints": ["1); DROP TABLE t; --"], "rows": 100},
        {"writer": "w", "checkpoints": 1, "rows": 100},
        {"writer": "w", "checkpoints": [1], "rows": "100"},
        {"writer": "w", "checkpoints": [-1], "rows": 100},
        {"writer": "w", "checkpoints": [2**63], "rows": 100},
        {"writer": "w", "checkpoints": [1], "rows": 2**63},
        {"writer": "w", "checkpoints": [True], "rows": 100},
        {"writer": "w", "checkpoints": [1, "2"], "rows": 100},
        {"writer": "w", "checkpoints": [1]},
    ],
)
def test_a_crafted_staged_entry_is_a_clear_error_and_commits_nothing(
    tmp_path: Path, entry: Any
) -> None:
    """Staged entries come back from a checkpoint manifest, which may be crafted with a valid
    checksum: each is checked before use (raw ValueError/AttributeError/KeyError before)."""
    db = f"sqlite:///{tmp_path}/app.db"
    table = table_name("crafted")
    sink, staged = staged_sink(db, table, [EVENTS.head(100)])
    with pytest.raises(
        SinkError, match=r"lists a staged entry that is not this sink's .*the checkpoint is damaged"
    ):
        sink.commit(1, [entry])
    assert read_table(db, table).height == 0
    sink.commit(1, [staged[0]])  # the real entry still commits
    assert read_table(db, table).height == 100


@pytest.mark.parametrize(
    "staged",
    [
        {"writer": "w", "checkpoints": [1], "rows": 100},  # an entry, not a list of them
        "[]",
        [None, {"writer": 5, "checkpoints": [1], "rows": 100}],  # checked past a None
    ],
)
def test_a_crafted_staged_list_is_a_clear_error(tmp_path: Path, staged: Any) -> None:
    db = f"sqlite:///{tmp_path}/app.db"
    table = table_name("crafted_list")
    sink, _ = staged_sink(db, table, [EVENTS.head(10)])
    with pytest.raises(SinkError, match=r"lists a staged entry that is not this sink's"):
        sink.commit(1, staged)
    assert read_table(db, table).height == 0


def test_a_staged_entry_of_no_rows_commits_nothing(tmp_path: Path) -> None:
    """An entry with 0 rows (and ids from 0 up) is well formed: it commits nothing, and the
    real entry beside it commits its rows."""
    db = f"sqlite:///{tmp_path}/app.db"
    table = table_name("no_rows")
    sink, staged = staged_sink(db, table, [EVENTS.head(40)])
    entry = {"writer": "w", "checkpoints": [0, 1, 2**63 - 1], "rows": 0}  # ids up to int64's
    sink.commit(1, [entry, staged[0]])
    assert_frame_equal(sorted_by(read_table(db, table), "event_id"), EVENTS.head(40))


def test_recover_discards_what_no_complete_checkpoint_holds(db: str) -> None:
    table = table_name("recover")
    sink, staged = staged_sink(
        db, table, [EVENTS.head(10), EVENTS.slice(10, 10), EVENTS.slice(20, 10)]
    )
    sink.commit(1, [staged[0]])
    # Crash after checkpoint 3 was staged but before its manifest: restore from 1.
    sink.commit(1, [staged[0]])
    sink.recover(1)
    assert read_table(db, sink.staging).height == 0
    assert_frame_equal(sorted_by(read_table(db, table), "event_id"), EVENTS.head(10))
    # The replay stages checkpoint 2 again with a new writer and commits it once.
    writer = sink.open_writer(0, 1, "sink")
    writer.write(EVENTS.slice(10, 20))
    again = writer.prepare_commit(2)
    writer.close()
    sink.commit(2, [again])
    assert_frame_equal(sorted_by(read_table(db, table), "event_id"), EVENTS.head(30))


def test_an_aborted_checkpoint_is_carried_into_the_next_commit(db: str) -> None:
    table = table_name("carried")
    first = pl.DataFrame({"k": [1, 2], "v": ["old", "old"]})
    second = pl.DataFrame({"k": [2, 3, 3], "v": ["new", "x", "newest"]})
    sink, staged = staged_sink(db, table, [first, second], mode="upsert", key=["k"])
    sink.commit(2, staged)  # checkpoint 1 was aborted: its staged rows come with checkpoint 2
    expected = pl.DataFrame({"k": [1, 2, 3], "v": ["old", "new", "newest"]})
    assert_frame_equal(sorted_by(read_table(db, table), "k"), expected)


def test_a_failing_commit_leaves_no_partial_rows(db: str) -> None:
    table = table_name("fails")
    sql(
        db,
        f'CREATE TABLE "{table}" (event_id BIGINT, user_id BIGINT, amount DOUBLE PRECISION, kind TEXT, '
        f"extra TEXT NOT NULL)",
    )
    sink, staged = staged_sink(db, table, [EVENTS.head(10)])
    with pytest.raises(
        SinkError, match=r"committing checkpoint 1 .* rolled back, nothing of it is visible"
    ):
        sink.commit(1, staged)
    assert read_table(db, table).height == 0
    assert read_table(db, sink.staging).height == 10  # still staged, for a retry
    assert not sql(db, f"SELECT * FROM _arrowflow_commits WHERE sink = '{table}'")


def test_a_connection_stays_usable_after_a_failed_transaction(db: str) -> None:
    """A transaction that fails is rolled back on its connection: nothing of it is visible,
    and the next transaction on that connection (a writer's next flush) starts cleanly."""
    table = table_name("after_failure")
    sql(db, f'CREATE TABLE "{table}" (x BIGINT NOT NULL)')
    sink = DatabaseSink(db, table=table)

    def fails() -> None:
        db_.execute(f'INSERT INTO "{table}" VALUES (1)')
        db_.execute(f'INSERT INTO "{table}" VALUES (NULL)')  # NOT NULL: the statement fails

    with sink.connect() as db_:
        with pytest.raises(SinkError, match="failed and was rolled back, nothing of it is visible"):
            db_.transaction("inserting", fails)
        assert sql(db, f'SELECT COUNT(*) FROM "{table}"')[0][0] == 0
        db_.transaction("inserting again", lambda: db_.execute(f'INSERT INTO "{table}" VALUES (2)'))
        assert sql(db, f'SELECT x FROM "{table}"') == [(2,)]


def test_staging_tables_are_named_as_documented_and_fit_postgres_names(db: str) -> None:
    """The staging table is ``_arrowflow_staging_<table>__<sink>`` (the module's docs), also
    for a long name on SQLite; on PostgreSQL, whose names stop at 63 bytes, a name that
    would not fit (with its index's ``_ix``) is shortened with a hash, and the rows land."""
    short = table_name("short")
    sink = DatabaseSink(db, table=short)
    sink.validate(EVENTS.schema, "sink")
    assert sink.staging == f"_arrowflow_staging_{short}__sink"
    long = table_name("long_" + "x" * 36)  # 44 bytes: with the prefix and sink, over 63
    sink = DatabaseSink(db, table=long)
    sink.validate(EVENTS.schema, "sink")
    documented = f"_arrowflow_staging_{long}__sink"
    if db.startswith("postgresql"):
        assert sink.staging != documented and len(sink.staging.encode()) <= 60
        assert sink.staging.startswith("_arrowflow_staging_long_xxx")
    else:
        assert sink.staging == documented
    # the edge: a staging name of 60 bytes is kept, one of 61 shortened (on PostgreSQL)
    for length, kept in ((35, True), (36, not db.startswith("postgresql"))):
        edge = table_name("edge").ljust(length, "y")
        sink = DatabaseSink(db, table=edge)
        sink.validate(EVENTS.schema, "sink")
        assert (sink.staging == f"_arrowflow_staging_{edge}__sink") is kept, (length, sink.staging)
    flow = af.Flow("long-name")
    flow.from_polars(EVENTS.head(50)).write_database(db, table=long, name="sink")
    flow.run(workers=0)
    assert_frame_equal(sorted_by(read_table(db, long), "event_id"), EVENTS.head(50))


def test_early_flushes_are_staged_for_the_checkpoint_they_belong_to(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer stages rows as its buffer fills (FLUSH_ROWS), before the checkpoint that
    commits them is prepared: they belong to the next checkpoint (1 in a fresh run, N + 1
    after recover(N)), the manifest's entry lists only that one, and rows a writer stages for
    checkpoint 2 before checkpoint 1 commits stay out of checkpoint 1's commit."""
    from arrowflow.io import database

    monkeypatch.setattr(database, "FLUSH_ROWS", 10)
    table = table_name("early")
    sink = begun_sink(db, table)
    writer = sink.open_writer(0, 1, "sink")
    staged_after = []
    for offset, length in ((0, 4), (4, 6), (10, 9), (19, 6)):
        writer.write(EVENTS.slice(offset, length))
        staged_after.append(read_table(db, sink.staging).height)
    assert staged_after == [0, 10, 10, 25]  # a flush once 10 rows are buffered, not before
    first = writer.prepare_commit(1)
    assert first == {"writer": first["writer"], "checkpoints": [1], "rows": 25}
    writer.write(EVENTS.slice(25, 12))  # checkpoint 2's rows, staged before commit(1)
    sink.commit(1, [first])
    assert_frame_equal(sorted_by(read_table(db, table), "event_id"), EVENTS.head(25))
    second = writer.prepare_commit(2)
    assert second == {"writer": first["writer"], "checkpoints": [2], "rows": 12}
    sink.commit(2, [second])
    writer.close()
    assert_frame_equal(sorted_by(read_table(db, table), "event_id"), EVENTS.head(37))
    # A resumed run: its writers' early rows belong to the checkpoint after the restored one.
    sink.recover(2)
    writer = sink.open_writer(0, 1, "sink")
    writer.write(EVENTS.slice(37, 10))
    third = writer.prepare_commit(3)
    writer.close()
    assert third == {"writer": third["writer"], "checkpoints": [3], "rows": 10}
    sink.commit(3, [third])
    assert_frame_equal(sorted_by(read_table(db, table), "event_id"), EVENTS.head(47))


def test_upsert_keeps_the_newest_row_of_a_key_across_a_writers_flushes(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One writer stages a key in several flushes before one checkpoint: the commit keeps
    the row it was given last (polars: the last row per key in arrival order)."""
    from arrowflow.io import database

    monkeypatch.setattr(database, "FLUSH_ROWS", 3)
    table = table_name("newest")
    rng = np.random.default_rng(11)
    batches = [
        pl.DataFrame({"k": rng.integers(0, 4, size=2), "v": rng.normal(size=2).round(3)})
        for _ in range(9)
    ]
    sink = begun_sink(db, table, batches[0].schema, mode="upsert", key=["k"])
    writer = sink.open_writer(0, 1, "sink")
    for batch in batches:
        writer.write(batch)
    sink.commit(1, [writer.prepare_commit(1)])
    writer.close()
    expected = pl.concat(batches).group_by("k", maintain_order=True).last()
    assert_frame_equal(sorted_by(read_table(db, table), "k"), sorted_by(expected, "k"))


def test_closed_writers_leave_no_connection_open(db: str) -> None:
    """Each writer opens its connection on its first flush and closes it in close(): twenty
    writers, kept alive (as a worker keeps its operators), leave no descriptor behind."""
    import os

    table = table_name("closed")
    sink = begun_sink(db, table)
    writers = []
    before = len(os.listdir("/proc/self/fd"))
    for number in range(20):
        writer = sink.open_writer(number, 20, "sink")
        writer.write(EVENTS.slice(number * 5, 5))
        sink.commit(number + 1, [writer.prepare_commit(number + 1)])
        writer.close()
        writers.append(writer)
    writers.append(sink.open_writer(20, 21, "sink"))  # one that never wrote
    writers[-1].close()
    assert len(os.listdir("/proc/self/fd")) == before
    assert_frame_equal(sorted_by(read_table(db, table), "event_id"), EVENTS.head(100))


def test_a_writer_with_nothing_staged_is_no_entry_of_the_commit(db: str) -> None:
    """Workers without rows at a checkpoint stage nothing (None in the manifest): the commit
    takes the others' rows, once."""
    table = table_name("idle_writer")
    sink = begun_sink(db, table)
    busy, idle = sink.open_writer(0, 2, "sink"), sink.open_writer(1, 2, "sink")
    busy.write(EVENTS.head(30))
    staged = [idle.prepare_commit(1), busy.prepare_commit(1)]
    assert staged[0] is None
    sink.commit(1, staged)
    sink.commit(2, [idle.prepare_commit(2), busy.prepare_commit(2)])  # nothing new anywhere
    busy.close()
    idle.close()
    assert_frame_equal(sorted_by(read_table(db, table), "event_id"), EVENTS.head(30))


def test_appending_to_a_table_a_person_created_adds_the_bookkeeping_columns(db: str) -> None:
    """A table made by hand (or before rows carried their checkpoint) gets write_database's
    two bookkeeping columns on the first run; its own rows stay, with NULL in them."""
    table = table_name("by_hand")
    sql(
        db,
        f'CREATE TABLE "{table}" (event_id BIGINT, user_id BIGINT, amount DOUBLE PRECISION, kind TEXT)',
    )
    sql(db, f"""INSERT INTO "{table}" VALUES (-1, 5, 2.5, 'theirs'), (-2, 6, 0.5, 'theirs')""")
    theirs = pl.DataFrame(
        {"event_id": [-2, -1], "user_id": [6, 5], "amount": [0.5, 2.5], "kind": ["theirs"] * 2}
    )
    flow = af.Flow("by-hand")
    flow.from_polars(EVENTS.head(40)).write_database(db, table=table)
    flow.run(workers=0)
    bookkeeping = sql(db, f'SELECT _af_sink, _af_epoch FROM "{table}"')  # the columns exist
    assert len(bookkeeping) == 42
    got = sorted_by(read_table(db, table), "event_id")
    assert_frame_equal(got, pl.concat([theirs, EVENTS.head(40)]), check_dtypes=False)
    assert sql(db, f'SELECT COUNT(*) FROM "{table}" WHERE _af_sink IS NULL')[0][0] == 2


# ---------------------------------------------------------------------------- bad input


def test_wrong_use_fails_when_the_flow_is_built(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/a.db"
    flow = af.Flow("bad")
    events = flow.from_polars(EVENTS)
    with pytest.raises(SinkError, match="needs key="):
        events.write_database(url, table="t", mode="upsert")
    with pytest.raises(SinkError, match="only used with mode='upsert'"):
        events.write_database(url, table="t", key="user_id")
    with pytest.raises(SinkError, match=r"mode=\.\.\.\) must be one of"):
        events.write_database(url, table="t", mode="merge")
    with pytest.raises(SinkError, match="expects a URL such as"):
        events.write_database("mysql://x/y", table="t")
    with pytest.raises(SinkError, match="table name"):
        events.write_database(url, table="")
    with pytest.raises(SchemaError, match="'nope', which the stream does not have"):
        events.write_database(url, table="t", mode="upsert", key=["nope"])
    nested = flow.from_polars(pl.DataFrame({"xs": [[1, 2]]}))
    with pytest.raises(SchemaError, match="column 'xs' of type List"):
        nested.write_database(url, table="t")


def test_an_existing_table_of_other_types_is_refused(db: str) -> None:
    table = table_name("typed")
    sql(
        db,
        f'CREATE TABLE "{table}" (event_id BIGINT, user_id TEXT, amount DOUBLE PRECISION, kind TEXT)',
    )
    flow = af.Flow("typed")
    flow.from_polars(EVENTS).write_database(db, table=table)
    with pytest.raises(
        SchemaError,
        match=r"column 'user_id' .* has type (TEXT|text), but the stream's column is Int64",
    ):
        flow.run(workers=0)
    sql(db, f'DROP TABLE "{table}"')
    sql(db, f'CREATE TABLE "{table}" (event_id BIGINT, user_id BIGINT)')
    with pytest.raises(SchemaError, match="has no column 'amount'"):
        flow.run(workers=0)
    assert read_table(db, table).height == 0


def test_a_server_that_does_not_answer(tmp_path: Path) -> None:
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    flow = af.Flow("down")
    flow.from_polars(EVENTS).write_database(f"postgresql://u:secret@127.0.0.1:{port}/db", table="t")
    with pytest.raises(SinkError, match="did not accept a connection") as info:
        flow.run(workers=0)
    assert "secret" not in str(info.value)


def test_a_postgres_table_name_too_long() -> None:
    with pytest.raises(SinkError, match="at most 63 bytes"):
        DatabaseSink("postgresql://u@127.0.0.1/db", table="x" * 64)


def test_a_sqlite_file_that_cannot_be_opened(tmp_path: Path) -> None:
    (tmp_path / "a-directory.db").mkdir()
    flow = af.Flow("unopenable")
    flow.from_polars(EVENTS).write_database(f"sqlite:///{tmp_path}/a-directory.db", table="t")
    with pytest.raises(SinkError, match="cannot create or open the SQLite database"):
        flow.run(workers=0)


def test_workers_opening_one_sqlite_database_at_once_wait_for_each_other(tmp_path: Path) -> None:
    """Workers open the coordinator's (WAL) database at the same moment: each connection's
    setup meets the others' locks and must wait (busy timeout set before any other pragma),
    never fail. Without the fix about 1 opening in 20 failed with 'database is locked'."""
    import sqlite3
    import threading

    failures: list[Exception] = []
    for attempt in range(60):
        path = tmp_path / f"app-{attempt}.db"
        setup = sqlite3.connect(path)  # what the coordinator's begin() leaves: a WAL database
        setup.execute("PRAGMA journal_mode=WAL")
        setup.execute("CREATE TABLE t (x INTEGER)")
        setup.commit()
        setup.close()
        sink = DatabaseSink(f"sqlite:///{path}", table="t")
        barrier = threading.Barrier(3)

        def open_once(sink: DatabaseSink = sink, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            try:
                with sink.connect() as db:
                    db.execute("CREATE TABLE IF NOT EXISTS u (x INTEGER)")
            except Exception as exc:  # any error, not only the expected kind, fails the test
                failures.append(exc)

        threads = [threading.Thread(target=open_once) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert not failures, failures[0]


# ---------------------------------------------------------------------------- rollback to a checkpoint


def test_rollback_removes_this_jobs_rows_of_later_checkpoints(db: str) -> None:
    from arrowflow.sinks import JobIdentity

    table = table_name("rollback")
    # Another job appended to the table earlier, with the same sink name: its rows stay.
    other = DatabaseSink(db, table=table)
    other.validate(EVENTS.schema, "sink")
    other.attach(JobIdentity("0000aaaa", 1, True))
    other.begin()
    writer = other.open_writer(0, 1, "sink")
    writer.write(EVENTS.slice(2000, 500))
    other.commit(5, [writer.prepare_commit(5)])
    writer.close()

    sink = DatabaseSink(db, table=table)
    sink.validate(EVENTS.schema, "sink")
    sink.attach(JobIdentity("0000bbbb", 1, True))
    sink.begin()
    writer = sink.open_writer(0, 1, "sink")
    chunks = [
        EVENTS.slice(0, 300),
        EVENTS.slice(300, 200),
        EVENTS.slice(500, 400),
        EVENTS.slice(900, 100),
    ]
    for checkpoint_id, chunk in enumerate(chunks, start=1):
        writer.write(chunk)
        sink.commit(checkpoint_id, [writer.prepare_commit(checkpoint_id)])
    writer.close()
    # Restore from 2 with 3 and 4 committed (their manifests damaged): their 500 rows go.
    sink.commit(2, [])
    sink.recover(2)
    done = sink.rollback(2)
    assert (done.count, done.epochs, done.what) == (500, [3, 4], "rows")
    expected = pl.concat([EVENTS.slice(2000, 500), EVENTS.slice(0, 500)])
    assert_frame_equal(
        sorted_by(read_table(db, table), "event_id"), sorted_by(expected, "event_id")
    )
    assert sink.rollback(2).count == 0  # idempotent
    assert sorted(
        r[0] for r in sql(db, "SELECT checkpoint_id FROM _arrowflow_commits WHERE sink = 'sink'")
    ) == [1, 2]


def test_rollback_of_upsert_puts_back_the_values_later_checkpoints_overwrote(db: str) -> None:
    from arrowflow.sinks import JobIdentity

    table = table_name("rollback_upsert")
    sink = DatabaseSink(db, table=table, mode="upsert", key=["user_id"])
    schema = pl.Schema({"user_id": pl.Int64, "total": pl.Float64})
    sink.validate(schema, "sink")
    sink.attach(JobIdentity("0000cccc", 1, True, keep=3))
    sink.begin()
    rng = np.random.default_rng(7)
    states = []  # the table polars says each checkpoint leaves
    updates = []
    current = pl.DataFrame(schema=schema)
    writer = sink.open_writer(0, 1, "sink")
    for checkpoint_id in range(1, 6):
        users = rng.choice(60, size=25, replace=False)
        update = pl.DataFrame(
            {"user_id": users, "total": rng.normal(size=25).round(3)}, schema=schema
        )
        updates.append(update)
        writer.write(update)
        sink.commit(checkpoint_id, [writer.prepare_commit(checkpoint_id)])
        current = pl.concat(
            [current.filter(~pl.col("user_id").is_in(update["user_id"].implode())), update]
        )
        states.append(current)
    writer.close()
    assert_frame_equal(sorted_by(read_table(db, table), "user_id"), sorted_by(states[4], "user_id"))
    # The before-images kept: of the commits after the oldest checkpoint a restore may pick
    # (keep=3: 3), each key's row as the commit before it left it (polars); older ones pruned.
    kept = pl.concat(
        [
            states[c - 2]
            .filter(pl.col("user_id").is_in(updates[c - 1]["user_id"].implode()))
            .with_columns(pl.lit(c, dtype=pl.Int64).alias("_af_undo"))
            for c in (4, 5)
        ]
    )
    assert_frame_equal(
        sorted_by(read_table(db, sink.undo), "_af_undo", "user_id"),
        sorted_by(kept, "_af_undo", "user_id"),
        check_dtypes=False,
    )
    # keep=3: checkpoints 3, 4, 5 can be restored. Back to 3: the values of 3 come back exactly,
    # keys that 4 and 5 inserted go.
    done = sink.rollback(3)
    assert done.epochs == [4, 5]
    assert_frame_equal(sorted_by(read_table(db, table), "user_id"), sorted_by(states[2], "user_id"))
    # Before-images before checkpoint 3 are no longer kept: going further back is refused.
    with pytest.raises(
        SinkError,
        match=r"cannot roll the table .* back to checkpoint 1.*kept only back to "
        r"checkpoint 3.*restore=None and mode='overwrite'",
    ):
        sink.rollback(1)
    assert_frame_equal(sorted_by(read_table(db, table), "user_id"), sorted_by(states[2], "user_id"))
