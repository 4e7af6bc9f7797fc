"""The database sink: ``write_database(url, table=...)`` into SQLite or PostgreSQL, exactly once.

Tables it keeps, next to the target table ``T`` in the same database:

- ``_arrowflow_staging_T__<operator id>``: rows written but not yet committed, with three extra columns —
  ``_af_checkpoint`` (the checkpoint that will commit them), ``_af_writer`` (a token unique
  to one writer of one run attempt) and ``_af_seq`` (the row's order within its writer).
- ``_arrowflow_commits (sink, checkpoint_id)``: one row per committed checkpoint; ``sink``
  is the sink's operator id (its ``name=`` when given).
- In ``T`` itself, two bookkeeping columns: ``_af_sink`` (``<sink>@<job tag>``, see
  :class:`arrowflow.sinks.JobIdentity`) and ``_af_epoch`` (the checkpoint that committed
  the row); NULL in rows this sink did not write. A table without them gets them added.
- ``_arrowflow_undo_T__<operator id>`` (``mode="upsert"`` with checkpoints): the row a commit
  overwrote (its before-image, with its own ``_af_sink``/``_af_epoch``) and ``_af_undo``, the
  checkpoint that overwrote it. Kept while a restore can still go back before that
  checkpoint: rows of undo epochs at or below the ``keep``-th newest commit are deleted.
  It costs a second write of each overwritten row: 6 commits of 200k upserted rows into
  SQLite took 5.2 s with it, 2.7 s without (measured with checkpoints off, where none is kept).

Protocol (see :mod:`arrowflow.sinks`):

- ``begin()`` (fresh run, coordinator) creates the tables (typed columns from the stream
  schema, ``PRIMARY KEY`` on ``key`` for ``mode="upsert"``), applies ``mode`` — ``append``
  and ``upsert`` keep the rows already there, ``overwrite`` drops and recreates the table —
  checks an existing table's columns against the stream's, empties staging and forgets the
  commit markers of this sink (a fresh run numbers its checkpoints again).
- Each writer (one per worker, connection opened lazily in the worker) buffers batches. At
  ``prepare_commit(n)`` it bulk-ingests them into staging (ADBC ``adbc_ingest``, one
  transaction) and returns ``{"writer", "checkpoints", "rows"}``. A large buffer is flushed
  early under the next checkpoint's id; ``checkpoints`` lists every id it used.
- ``commit(n, staged)`` runs ONE transaction: if ``(sink, n)`` is in the marker table it does
  nothing (idempotent: a restore re-runs it from the manifest); otherwise it checks that
  every staged row is there, moves them into ``T`` (``INSERT … SELECT``; for upsert
  ``INSERT … ON CONFLICT (key) DO UPDATE`` keeping the newest row per key), deletes them from
  staging and records the marker. A crash anywhere leaves either all of it or none.
- ``recover(n)`` (restore, after ``commit(n)`` was re-run) deletes every row still staged:
  they belong to no complete checkpoint and are never committed.
- ``rollback(n)`` (a restore from ``n`` while later checkpoints committed rows: a damaged
  newest checkpoint, or ``restore=<older id>``) runs ONE transaction: it deletes this job's
  rows of epochs after ``n`` from ``T``; for upsert it puts back, for every key a later epoch
  overwrote, the before-image of the first overwrite after ``n``; it forgets the undo rows
  and commit markers after ``n``. The replay then commits those rows again, once.

Worked example: two workers write 10 and 5 rows before checkpoint 3. Both stage them under
``_af_checkpoint = 3``; the manifest records ``[{"writer": "0-ab12…", "checkpoints": [3],
"rows": 10}, {…, "rows": 5}]``; the coordinator is killed before ``commit(3)``; on restore
``commit(3)`` finds no marker, moves the 15 rows and writes the marker in one transaction;
the replayed input after checkpoint 3 is staged under checkpoint 4 and committed once.

Several sinks may write one table (each has its own staging table and markers, named after
its operator id), but only one run at a time per sink: ``begin()`` of another run of the
same flow clears its staging.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from typing import Any

import polars as pl

from arrowflow._foundation.deps import import_optional
from arrowflow._foundation.sql import (
    PG_NAME_LIMIT,
    Dialect,
    quote,
    redact_url,
    with_connect_timeout,
)
from arrowflow._foundation.sqlite import open_sqlite
from arrowflow.errors import ArrowflowError, SchemaError, SinkError
from arrowflow.sinks import RolledBack, Sink, SinkWriter

MODES = ("append", "upsert", "overwrite")
CHECKPOINT, WRITER, SEQ, RANK = "_af_checkpoint", "_af_writer", "_af_seq", "_af_rank"
ORIGIN, EPOCH, UNDO = "_af_sink", "_af_epoch", "_af_undo"
COMMITS = "_arrowflow_commits"
STAGING_PREFIX = "_arrowflow_staging_"
UNDO_PREFIX = "_arrowflow_undo_"
FLUSH_ROWS = 1_000_000
CONNECT_TIMEOUT_S = 10

# Declared column types that hold the same values, by family: a table a person created with
# VARCHAR or INT8 is as good as the TEXT or BIGINT this sink would have created.
_FAMILIES = {
    "integer": {
        "integer",
        "int",
        "int2",
        "int4",
        "int8",
        "smallint",
        "bigint",
        "tinyint",
        "mediumint",
    },
    "float": {"real", "double precision", "double", "float", "float4", "float8"},
    "text": {"text", "varchar", "character varying", "char", "character", "clob", "string"},
    "boolean": {"boolean", "bool"},
    "binary": {"blob", "bytea"},
    "date": {"date"},
    "timestamp": {"timestamp", "timestamp without time zone"},
    "timestamptz": {"timestamptz", "timestamp with time zone"},
    "numeric": {"numeric", "decimal"},
}


def _family(declared: str) -> str:
    base = declared.strip().lower().split("(")[0].strip()
    for family, names in _FAMILIES.items():
        if base in names:
            return family
    return base


def _quote(identifier: str) -> str:
    return quote(identifier, what="write_database: a table or column name", error=SinkError)


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class DatabaseSink(Sink):
    """Rows of a stream into table ``table`` of a SQLite or PostgreSQL database, exactly once.

    ``url``: ``"sqlite:///relative/file.db"``, ``"sqlite:////absolute/file.db"`` (SQLAlchemy's
    convention) or ``"postgresql://user:password@host:port/database"``.
    ``mode``: ``"append"`` (add rows), ``"upsert"`` (insert or replace by ``key``; the newest
    row of a key wins) or ``"overwrite"`` (drop and recreate the table at the start of a fresh run).

    >>> import shutil, tempfile
    >>> import adbc_driver_sqlite.dbapi as sqlite
    >>> import polars as pl
    >>> import arrowflow as af
    >>> folder = tempfile.mkdtemp()
    >>> flow = af.Flow("totals")
    >>> events = flow.from_polars(pl.DataFrame({"user": [1, 2, 1], "amount": [5.0, 7.0, 1.0]}))
    >>> events.key_by("user").agg(total=pl.col("amount").sum()).write_database(
    ...     f"sqlite:///{folder}/app.db", table="totals", mode="upsert", key=["user"])
    >>> _ = flow.run(workers=0)
    >>> with sqlite.connect(f"{folder}/app.db") as db, db.cursor() as cursor:
    ...     _ = cursor.execute("SELECT user, total FROM totals ORDER BY user")
    ...     cursor.fetchall()
    [(1, 6.0), (2, 7.0)]
    >>> shutil.rmtree(folder)
    """

    kind = "write_database"

    def __init__(
        self,
        url: str,
        *,
        table: str,
        mode: str = "append",
        key: str | list[str] | tuple[str, ...] | None = None,
        name: str | None = None,
    ) -> None:
        if not isinstance(url, str) or not url.startswith(
            ("sqlite:///", "postgresql://", "postgres://")
        ):
            shown = redact_url(url) if isinstance(url, str) else repr(url)
            msg = (
                f"write_database() expects a URL such as 'sqlite:///out/app.db' (relative), "
                f"'sqlite:////tmp/app.db' (absolute) or 'postgresql://user@host:5432/db', got {shown!r}"
            )
            raise SinkError(msg)
        if not isinstance(table, str) or not table or "\x00" in table:
            msg = f"write_database(table=...) expects a table name such as 'per_minute', got {table!r}"
            raise SinkError(msg)
        if mode not in MODES:
            msg = f"write_database(mode=...) must be one of {MODES}, got {mode!r}"
            raise SinkError(msg)
        keys = [key] if isinstance(key, str) else list(key) if key is not None else []
        if not all(isinstance(k, str) and k for k in keys):
            msg = f"write_database(key=...) expects a column name or a list of them, got {key!r}"
            raise SinkError(msg)
        if mode == "upsert" and not keys:
            msg = (
                "write_database(mode='upsert') needs key=[...]: the columns that identify a row, "
                "e.g. key=['user_id']"
            )
            raise SinkError(msg)
        if mode != "upsert" and keys:
            msg = f"write_database(key={keys!r}) is only used with mode='upsert', got mode={mode!r}"
            raise SinkError(msg)
        if len(set(keys)) != len(keys):
            msg = f"write_database(key={keys!r}) names a column twice"
            raise SinkError(msg)
        self.url = url
        self.table = table
        self.mode = mode
        self.key = keys
        self.db_kind = "postgresql" if url.startswith("postgres") else "sqlite"
        if self.db_kind == "postgresql" and len(table.encode()) > PG_NAME_LIMIT:
            msg = (
                f"write_database(table={table!r}): PostgreSQL names are at most {PG_NAME_LIMIT} bytes, "
                f"this one has {len(table.encode())}; give a shorter table name"
            )
            raise SinkError(msg)
        # The sink's identity in the marker table and its staging table's name: the operator
        # id (unique in a flow, stable across restores), set by validate() at plan time.
        self.name = name
        self.sink_name = name or ""
        self.staging = ""
        self.schema: pl.Schema | None = None  # set by validate() at plan time
        self.restored_from = 0

    def describe(self) -> str:
        return f"write_database {redact_url(self.url)!r} table {self.table!r} (mode={self.mode})"

    # ------------------------------------------------------------------ plan time, no I/O
    def validate(self, schema: pl.Schema, operator_id: str) -> None:
        for column in self.key:
            if column not in schema:
                msg = (
                    f"operator {operator_id!r}: write_database(key=...) names the column {column!r}, "
                    f"which the stream does not have; its columns are {list(schema)}"
                )
                raise SchemaError(msg)
        dialect = Dialect(self.db_kind)
        for column, dtype in schema.items():
            if column in (CHECKPOINT, WRITER, SEQ, RANK, ORIGIN, EPOCH, UNDO):
                msg = f"operator {operator_id!r}: the column name {column!r} is reserved by write_database; rename it"
                raise SchemaError(msg)
            try:
                dialect.column_type(column, dtype, "write_database")
            except ArrowflowError as exc:
                msg = (
                    f"operator {operator_id!r}: write_database cannot store the column {column!r} of type "
                    f"{dtype} in a {self.db_kind} table; it stores flat columns (numbers, booleans, strings, "
                    f"binary, dates, times, timestamps, durations, decimals). Flatten or encode it first."
                )
                raise SchemaError(msg) from exc
        self.schema = schema
        self.sink_name = self.name or operator_id
        self.staging = _staging_name(f"{self.table}__{self.sink_name}", self.db_kind)
        self.undo = self.staging.replace(STAGING_PREFIX, UNDO_PREFIX, 1)

    @property
    def origin(self) -> str:
        """What ``_af_sink`` holds in the rows this sink of this job commits."""
        return f"{self.sink_name}@{self.job.tag if self.job is not None else ''}"

    @property
    def undo_floor_name(self) -> str:
        """The marker row whose checkpoint_id says that before-images older than it are gone."""
        return f"{self.sink_name}#undo-floor"

    @property
    def keeps_undo(self) -> bool:
        return self.mode == "upsert" and self.job is not None and self.job.checkpointed

    # ------------------------------------------------------------------ connections
    def sqlite_path(self) -> str:
        path = self.url[len("sqlite://") :]
        return path[1:] if path.startswith("/") else path

    def where(self) -> str:
        return (
            f"PostgreSQL {redact_url(self.url)}"
            if self.db_kind == "postgresql"
            else f"SQLite {self.sqlite_path()!r}"
        )

    def connect(self) -> _Connection:
        """A new connection in autocommit mode (transactions are explicit). Never pickled."""
        if self.db_kind == "postgresql":
            driver = import_optional(
                "adbc_driver_postgresql.dbapi", purpose="write_database on PostgreSQL"
            )
            url = "postgresql://" + self.url.split("://", 1)[1]
            try:
                connection = driver.connect(
                    with_connect_timeout(url, CONNECT_TIMEOUT_S), autocommit=True
                )
            except Exception as exc:
                msg = (
                    f"write_database: the PostgreSQL server at {redact_url(self.url)} did not accept a connection: "
                    f"{_first_line(exc)}. Check that it runs and that the URL's host, port, user, password "
                    f"and database are right."
                )
                raise SinkError(msg) from exc
            return _Connection(self, connection)
        driver = import_optional("adbc_driver_sqlite.dbapi", purpose="write_database on SQLite")
        path = self.sqlite_path()
        try:
            # WAL: the writers stage while the coordinator commits; wait for the lock, never fail.
            connection = open_sqlite(
                driver, path, ("busy_timeout=60000", "journal_mode=WAL", "synchronous=NORMAL")
            )
        except Exception as exc:
            msg = (
                f"write_database: cannot create or open the SQLite database {path!r}: {_first_line(exc)}. "
                f"Give a writable file path, e.g. 'sqlite:///out/app.db' or 'sqlite:////tmp/app.db'."
            )
            raise SinkError(msg) from exc
        return _Connection(self, connection)

    # ------------------------------------------------------------------ coordinator
    def _require_schema(self) -> pl.Schema:
        if self.schema is None:
            msg = "internal: write_database used before validate() gave it the stream's schema"
            raise SinkError(msg)
        return self.schema

    def begin(self) -> None:
        schema = self._require_schema()
        with self.connect() as db:

            def work() -> None:
                if self.mode == "overwrite":
                    db.execute(f"DROP TABLE IF EXISTS {_quote(self.table)}")
                existing = db.table_columns(self.table)
                if existing is None:
                    db.execute(self._create_sql(schema))
                else:
                    self._check_columns(existing, schema)
                    self._add_bookkeeping(db, existing)
                if self.key and existing is not None:
                    # ON CONFLICT needs a unique index on the key; a table we create has its primary key.
                    index = _staging_name(f"{self.table}_key", self.db_kind).replace(
                        STAGING_PREFIX, "_arrowflow_"
                    )
                    cols = ", ".join(_quote(k) for k in self.key)
                    db.execute(
                        f"CREATE UNIQUE INDEX IF NOT EXISTS {_quote(index)} ON {_quote(self.table)} ({cols})"
                    )
                db.execute(f"DROP TABLE IF EXISTS {_quote(self.staging)}")
                db.create_staging(schema)
                db.execute(
                    f"CREATE TABLE IF NOT EXISTS {COMMITS} (sink TEXT NOT NULL, checkpoint_id BIGINT NOT NULL, "
                    f"PRIMARY KEY (sink, checkpoint_id))"
                )
                db.execute(f"DELETE FROM {COMMITS} WHERE sink = {_literal(self.sink_name)}")
                if self.mode == "overwrite":
                    db.execute(f"DROP TABLE IF EXISTS {_quote(self.undo)}")
                    db.execute(
                        f"DELETE FROM {COMMITS} WHERE sink = {_literal(self.undo_floor_name)}"
                    )
                if self.keeps_undo:
                    self._create_undo(db)

            db.transaction("preparing the tables", work)
        self.restored_from = 0

    def _add_bookkeeping(self, db: _Connection, existing: dict[str, str]) -> None:
        """A table created before rows carried their epoch, or by a person: add the columns."""
        for column, declared in ((ORIGIN, "TEXT"), (EPOCH, "BIGINT")):
            if column not in existing:
                db.execute(
                    f"ALTER TABLE {_quote(self.table)} ADD COLUMN {_quote(column)} {declared}"
                )

    def _create_undo(self, db: _Connection) -> None:
        names = ", ".join(_quote(c) for c in [*self._require_schema(), ORIGIN, EPOCH])
        db.execute(
            f"CREATE TABLE IF NOT EXISTS {_quote(self.undo)} AS SELECT {names}, "
            f"CAST(NULL AS BIGINT) AS {UNDO} FROM {_quote(self.table)} WHERE 1 = 0"
        )
        # No index on _af_undo: it cost more at every commit (0.2 s per 200k rows) than the scan
        # of the few checkpoints' rows the table keeps saves in the DELETE that prunes it.

    def _create_sql(self, schema: pl.Schema) -> str:
        dialect = Dialect(self.db_kind)
        columns = [
            f"{_quote(c)} {dialect.column_type(c, t, 'write_database')}" for c, t in schema.items()
        ]
        columns += [f"{_quote(ORIGIN)} TEXT", f"{_quote(EPOCH)} BIGINT"]
        if self.key:
            columns.append(f"PRIMARY KEY ({', '.join(_quote(k) for k in self.key)})")
        return f"CREATE TABLE {_quote(self.table)} ({', '.join(columns)})"

    def _check_columns(self, existing: dict[str, str], schema: pl.Schema) -> None:
        dialect = Dialect(self.db_kind)
        for column, dtype in schema.items():
            expected = dialect.column_type(column, dtype, "write_database")
            if column not in existing:
                msg = (
                    f"write_database: the table {self.table!r} in {self.where()} has no column {column!r}, "
                    f"which the stream has (type {dtype}, stored as {expected}); its columns are "
                    f"{list(existing)}. Add the column, use another table, or mode='overwrite'."
                )
                raise SchemaError(msg)
            if _family(existing[column]) != _family(expected):
                msg = (
                    f"write_database: column {column!r} of the table {self.table!r} in {self.where()} has "
                    f"type {existing[column]}, but the stream's column is {dtype} (stored as {expected}). "
                    f"Cast the column in the flow, use another table, or mode='overwrite'."
                )
                raise SchemaError(msg)

    def recover(self, checkpoint_id: int) -> None:
        schema = self._require_schema()
        self.restored_from = checkpoint_id
        with self.connect() as db:

            def work() -> None:
                if db.table_columns(self.staging) is None:
                    db.create_staging(schema)
                else:
                    db.execute(f"DELETE FROM {_quote(self.staging)}")
                existing = db.table_columns(self.table)
                if existing is not None:
                    self._add_bookkeeping(db, existing)
                if self.keeps_undo and existing is not None:
                    self._create_undo(db)

            db.transaction(f"discarding output staged after checkpoint {checkpoint_id}", work)

    def rollback(self, checkpoint_id: int) -> RolledBack:
        """Delete this job's rows of epochs after ``checkpoint_id``; for upsert, put back the
        rows they overwrote. One transaction."""
        schema = self._require_schema()
        after = int(checkpoint_id)
        mine = f"{_quote(ORIGIN)} = {_literal(self.origin)} AND {_quote(EPOCH)} > {after}"
        table = _quote(self.table)
        counts: dict[int, int] = {}
        with self.connect() as db:

            def work() -> None:
                existing = db.table_columns(self.table)
                if existing is None or EPOCH not in existing:
                    return  # nothing committed with an epoch: nothing of ours to remove
                db.execute(
                    f"SELECT {_quote(EPOCH)}, COUNT(*) FROM {table} WHERE {mine} GROUP BY {_quote(EPOCH)}"
                )
                counts.update({int(epoch): int(n) for epoch, n in db.cursor.fetchall()})
                if self.mode == "upsert" and counts:
                    db.execute(
                        f"SELECT checkpoint_id FROM {COMMITS} WHERE sink = {_literal(self.undo_floor_name)}"
                    )
                    floor = db.scalar()
                    if db.table_columns(self.undo) is None or floor > after:
                        kept = f"only back to checkpoint {floor}" if floor else "not at all"
                        msg = (
                            f"write_database(mode='upsert'): cannot roll the table {self.table!r} in "
                            f"{self.where()} back to checkpoint {checkpoint_id}: rows of later checkpoints "
                            f"overwrote older values, and those are kept {kept}. To go on, restore a "
                            f"checkpoint from {max(floor, 1)} on, or start over with restore=None and "
                            f"mode='overwrite' (the table is rebuilt from the input)."
                        )
                        raise SinkError(msg)
                db.execute(f"DELETE FROM {table} WHERE {mine}")
                if self.mode == "upsert" and db.table_columns(self.undo) is not None:
                    names = ", ".join(_quote(c) for c in [*schema, ORIGIN, EPOCH])
                    keys = ", ".join(_quote(k) for k in self.key)
                    first = (
                        f"SELECT {names}, ROW_NUMBER() OVER (PARTITION BY {keys} ORDER BY {UNDO}) AS {RANK} "
                        f"FROM {_quote(self.undo)} WHERE {UNDO} > {after}"
                    )
                    # The first overwrite after the checkpoint holds the key's value then, unless it
                    # overwrote a row of ours newer than that: the key was inserted later, it stays
                    # deleted. A newer row of another sink on the key stays: DO NOTHING.
                    inserted_later = f"({mine})"
                    db.execute(
                        f"INSERT INTO {table} ({names}) SELECT {names} FROM ({first}) AS first "
                        f"WHERE {RANK} = 1 AND NOT COALESCE({inserted_later}, FALSE) "
                        f"ON CONFLICT ({keys}) DO NOTHING"
                    )
                    db.execute(f"DELETE FROM {_quote(self.undo)} WHERE {UNDO} > {after}")
                db.execute(
                    f"DELETE FROM {COMMITS} WHERE sink = {_literal(self.sink_name)} "
                    f"AND checkpoint_id > {after}"
                )

            db.transaction(
                f"rolling back the rows committed after checkpoint {checkpoint_id}", work
            )
        return RolledBack(
            self.describe(), checkpoint_id, "rows", sum(counts.values()), sorted(counts)
        )

    def open_writer(self, worker: int, parallelism: int, operator_id: str) -> SinkWriter:
        return _DatabaseWriter(self, worker)

    def commit(self, checkpoint_id: int, staged: list[Any]) -> None:
        items = [item for item in _checked_staged(staged, checkpoint_id) if item and item["rows"]]
        if not items:
            return
        schema = self._require_schema()
        condition = " OR ".join(
            f"({WRITER} = {_literal(str(item['writer']))} AND {CHECKPOINT} IN "
            f"({', '.join(str(int(c)) for c in item['checkpoints'])}))"
            for item in items
        )
        expected = sum(int(item["rows"]) for item in items)
        with self.connect() as db:

            def work() -> None:
                db.execute(
                    f"SELECT COUNT(*) FROM {COMMITS} WHERE sink = {_literal(self.sink_name)} "
                    f"AND checkpoint_id = {int(checkpoint_id)}"
                )
                if db.scalar():
                    return  # committed before a crash: commit is idempotent
                db.execute(f"SELECT COUNT(*) FROM {_quote(self.staging)} WHERE {condition}")
                found = db.scalar()
                if found != expected:
                    msg = (
                        f"write_database: checkpoint {checkpoint_id} staged {expected} rows for table "
                        f"{self.table!r} in {self.where()}, but {found} are in {self.staging!r}; something "
                        f"removed staged rows during the run, so they cannot be committed"
                    )
                    raise SinkError(msg)
                if self.keeps_undo:
                    self._save_before_images(db, schema, condition, checkpoint_id)
                db.execute(self._move_sql(schema, condition, checkpoint_id))
                everything = False
                if self.db_kind == "sqlite":
                    # BEGIN IMMEDIATE holds the write lock: no writer can stage rows meanwhile, so
                    # when these are all the staged rows, SQLite's fast whole-table delete is safe.
                    db.execute(f"SELECT COUNT(*) FROM {_quote(self.staging)}")
                    everything = db.scalar() == found
                db.execute(
                    f"DELETE FROM {_quote(self.staging)}"
                    + ("" if everything else f" WHERE {condition}")
                )
                db.execute(
                    f"INSERT INTO {COMMITS} (sink, checkpoint_id) "
                    f"VALUES ({_literal(self.sink_name)}, {int(checkpoint_id)})"
                )

            db.transaction(f"committing checkpoint {checkpoint_id}", work)

    def _save_before_images(
        self, db: _Connection, schema: pl.Schema, condition: str, checkpoint_id: int
    ) -> None:
        """Upsert: keep the rows this commit overwrites, for a rollback to before it; forget
        those no restore can go back before (at or below the ``keep``-th newest commit)."""
        names = [*schema, ORIGIN, EPOCH]
        on = " AND ".join(f"t.{_quote(k)} = s.{_quote(k)}" for k in self.key)
        # Driven by the staged rows, through the table's key index; a key staged twice gives two
        # equal before-images, which the rollback reads as one.
        db.execute(
            f"INSERT INTO {_quote(self.undo)} ({', '.join(_quote(c) for c in names)}, {UNDO}) "
            f"SELECT {', '.join(f't.{_quote(c)}' for c in names)}, {int(checkpoint_id)} "
            f"FROM {_quote(self.staging)} AS s CROSS JOIN {_quote(self.table)} AS t "
            f"WHERE {condition} AND {on}"
        )
        keep = self.job.keep if self.job is not None else 1
        db.execute(
            f"SELECT checkpoint_id FROM {COMMITS} WHERE sink = {_literal(self.sink_name)} "
            f"ORDER BY checkpoint_id DESC LIMIT 1 OFFSET {max(keep - 2, 0)}"
        )
        row = db.cursor.fetchone()
        if row is None:
            return
        floor = int(row[0])
        db.execute(f"DELETE FROM {_quote(self.undo)} WHERE {UNDO} <= {floor}")
        # Remember how far back before-images go: a rollback to before that is refused.
        db.execute(f"DELETE FROM {COMMITS} WHERE sink = {_literal(self.undo_floor_name)}")
        db.execute(
            f"INSERT INTO {COMMITS} (sink, checkpoint_id) VALUES ({_literal(self.undo_floor_name)}, {floor})"
        )

    def _move_sql(self, schema: pl.Schema, condition: str, checkpoint_id: int) -> str:
        names = ", ".join(_quote(c) for c in schema)
        ours = f"{_literal(self.origin)}, {int(checkpoint_id)}"
        target = f"INSERT INTO {_quote(self.table)} ({names}, {_quote(ORIGIN)}, {_quote(EPOCH)}) "
        if self.mode != "upsert":
            return target + f"SELECT {names}, {ours} FROM {_quote(self.staging)} WHERE {condition}"
        keys = ", ".join(_quote(k) for k in self.key)
        newest = (
            f"SELECT {names}, ROW_NUMBER() OVER (PARTITION BY {keys} ORDER BY {CHECKPOINT} DESC, "
            f"{WRITER} DESC, {SEQ} DESC) AS {RANK} FROM {_quote(self.staging)} WHERE {condition}"
        )
        values = [c for c in schema if c not in self.key] + [ORIGIN, EPOCH]
        action = "DO UPDATE SET " + ", ".join(f"{_quote(c)} = excluded.{_quote(c)}" for c in values)
        # "WHERE" before ON CONFLICT also keeps SQLite's parser from reading ON as a join.
        return (
            target + f"SELECT {names}, {ours} FROM ({newest}) AS newest WHERE {RANK} = 1 "
            f"ON CONFLICT ({keys}) {action}"
        )


class _Connection:
    """One ADBC connection and cursor, with explicit transactions that roll back on any error."""

    def __init__(self, sink: DatabaseSink, connection: Any) -> None:
        self.sink = sink
        self.connection = connection
        self.cursor = connection.cursor()

    def __enter__(self) -> _Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for thing in (self.cursor, self.connection):
            try:
                thing.close()
            except Exception:
                pass

    def execute(self, sql: str) -> None:
        self.cursor.execute(sql)

    def scalar(self) -> int:
        row = self.cursor.fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def transaction(self, doing: str, work: Callable[[], None]) -> None:
        begin = "BEGIN IMMEDIATE" if self.sink.db_kind == "sqlite" else "BEGIN"
        try:
            self.cursor.execute(begin)
            work()
            self.cursor.execute("COMMIT")
        except Exception as exc:
            try:
                self.cursor.execute("ROLLBACK")
            except Exception:
                pass
            if isinstance(exc, ArrowflowError):
                raise
            msg = (
                f"write_database: {doing} for table {self.sink.table!r} in {self.sink.where()} failed and "
                f"was rolled back, nothing of it is visible: {_first_line(exc)}"
            )
            raise SinkError(msg) from exc

    def table_columns(self, table: str) -> dict[str, str] | None:
        """Column name -> declared type of ``table``, or None when there is no such table."""
        if self.sink.db_kind == "sqlite":
            self.cursor.execute(f"PRAGMA table_info({_quote(table)})")
            rows = self.cursor.fetchall()
            return {row[1]: str(row[2]) for row in rows} if rows else None
        self.cursor.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            f"WHERE table_schema = current_schema() AND table_name = {_literal(table)} ORDER BY ordinal_position"
        )
        rows = self.cursor.fetchall()
        return {row[0]: str(row[1]) for row in rows} if rows else None

    def create_staging(self, schema: pl.Schema) -> None:
        empty = _for_db(pl.DataFrame(schema=schema), self.sink.db_kind, 0, "", 0)
        self.cursor.adbc_ingest(self.sink.staging, empty, mode="create")
        self.cursor.execute(
            f"CREATE INDEX IF NOT EXISTS {_quote(self.sink.staging + '_ix')} "
            f"ON {_quote(self.sink.staging)} ({WRITER}, {CHECKPOINT})"
        )

    def ingest(self, data: Any) -> None:
        self.cursor.adbc_ingest(self.sink.staging, data, mode="append")


def _for_db(frame: pl.DataFrame, kind: str, checkpoint_id: int, writer: str, first_seq: int) -> Any:
    """The rows as an Arrow table for the staging table: database-ready columns, then ours."""
    dialect = Dialect(kind)
    columns = [dialect.to_db(frame.get_column(c)) for c in frame.columns]
    staged = pl.DataFrame(columns).with_columns(
        pl.lit(checkpoint_id, dtype=pl.Int64).alias(CHECKPOINT),
        pl.lit(writer, dtype=pl.String).alias(WRITER),
        pl.int_range(first_seq, first_seq + frame.height, dtype=pl.Int64).alias(SEQ),
    )
    return staged.to_arrow(compat_level=pl.CompatLevel.oldest())


def _staging_name(table: str, kind: str) -> str:
    name = STAGING_PREFIX + table
    if (
        kind == "postgresql" and len(name.encode()) > PG_NAME_LIMIT - 3
    ):  # room for the index's "_ix"
        # 19 + 27 + 1 + 12 = 59 bytes: the index's "_ix" fits too (PostgreSQL would cut it)
        digest = hashlib.sha256(table.encode()).hexdigest()[:12]
        name = f"{STAGING_PREFIX}{table.encode()[:27].decode(errors='ignore')}_{digest}"
    return name


class _DatabaseWriter(SinkWriter):
    def __init__(self, sink: DatabaseSink, worker: int) -> None:
        self.sink = sink
        self.token = f"{worker}-{secrets.token_hex(6)}"
        self.buffer: list[pl.DataFrame] = []
        self.buffered = 0
        self.seq = 0
        self.staged_rows = 0
        self.staged_ids: list[int] = []
        self.checkpoint = sink.restored_from  # the last checkpoint prepared (or restored)
        self.db: _Connection | None = None  # opened on first use, in the worker process

    def write(self, batch: pl.DataFrame) -> None:
        if not batch.height:
            return
        self.buffer.append(batch)
        self.buffered += batch.height
        if self.buffered >= FLUSH_ROWS:
            self._flush(self.checkpoint + 1)

    def _flush(self, checkpoint_id: int) -> None:
        if not self.buffered:
            return
        frame = (
            pl.concat(self.buffer, how="vertical_relaxed")
            if len(self.buffer) > 1
            else self.buffer[0]
        )
        data = _for_db(frame, self.sink.db_kind, checkpoint_id, self.token, self.seq)
        if self.db is None:
            self.db = self.sink.connect()
        db = self.db
        db.transaction(
            f"staging {frame.height} rows of checkpoint {checkpoint_id}", lambda: db.ingest(data)
        )
        self.buffer, self.buffered = [], 0
        self.seq += frame.height
        self.staged_rows += frame.height
        if checkpoint_id not in self.staged_ids:
            self.staged_ids.append(checkpoint_id)

    def prepare_commit(self, checkpoint_id: int) -> Any:
        self._flush(checkpoint_id)
        self.checkpoint = checkpoint_id
        if not self.staged_rows:
            return None
        staged = {"writer": self.token, "checkpoints": self.staged_ids, "rows": self.staged_rows}
        self.staged_rows, self.staged_ids = 0, []
        return staged

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None


def _checked_staged(staged: Any, checkpoint_id: int) -> list[dict[str, Any] | None]:
    """The writers' staged entries of a checkpoint manifest, checked before use (a manifest may
    be damaged or crafted): each is None or ``{"writer": str, "checkpoints": [int], "rows": int}``."""
    problem = _staged_problem(staged)
    if problem:
        msg = (
            f"write_database: the manifest of checkpoint {checkpoint_id} lists a staged entry that is not "
            f"this sink's ({problem}); the checkpoint is damaged: restore an older one, or start over with "
            f"restore=None"
        )
        raise SinkError(msg)
    return staged


def _staged_problem(staged: Any) -> str | None:
    def whole(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63

    if not isinstance(staged, list):
        return f"expected a list of entries, found {type(staged).__name__}"
    for item in staged:
        if item is None:
            continue
        if not isinstance(item, dict):
            return f"expected an object, found {type(item).__name__}"
        if not isinstance(item.get("writer"), str):
            return "its 'writer' is no string"
        if not whole(item.get("rows")):
            return f"its 'rows' is {item.get('rows')!r}, not a row count"
        checkpoints = item.get("checkpoints")
        if not isinstance(checkpoints, list) or not all(whole(c) for c in checkpoints):
            return f"its 'checkpoints' is {checkpoints!r}, not a list of checkpoint ids"
    return None
