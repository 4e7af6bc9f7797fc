"""The ``sql`` state backend: keyed state in a relational database table, queryable with plain SQL.

Like Flink's JDBC-backed state, each store is one table in a database reached through ADBC:
SQLite embedded by default (``state="sql"``: a database file in the worker's local
directory), PostgreSQL when given a URL (``state="postgresql://user@host/db"``), or a SQLite
file of your choice (``state="sqlite:///path/state.db"``).

State it keeps, per store, one table (named below) with

- ``__key``: the key columns in the row encoding of :mod:`arrowflow.backends._rowcodec`, the
  primary key. Identity is one binary column so that a key with nulls, or of several
  columns, matches with a plain ``=`` that every database can index, hash and upsert on;
- ``__key_group``: the key's group, so snapshots and rescaling need no rehashing;
- the key columns and the value columns with real SQL types (see :mod:`arrowflow._foundation.sql`);
- ``__nan`` (SQLite, when a key or value column is a float): SQLite stores a NaN ``REAL`` as
  NULL, so bit *i* of this INTEGER says that the row's *i*-th float column is NaN; a SQL reader
  sees NaN as NULL, the store reads it back as NaN (a NaN sum stays NaN, a NaN key and a null
  key stay two keys through snapshots).

For example, in ``sqlite3 state-w0.sqlite``::

    SELECT user_id, "total__sum" FROM "af_agg-3_000_128" ORDER BY "total__sum" DESC LIMIT 10;

Table names: ``<prefix><store>_<first group>_<stop group>``, quoted wherever used. The prefix
is ``af_`` in the worker's own SQLite file; in a database that several jobs may share (a
PostgreSQL or SQLite URL) it is ``af_<8 hex digits of this run>_`` unless ``table_prefix=``
names it. Opening a store replaces a table of the same name; closing drops it unless
``keep_tables=True`` (durable state lives in checkpoints, not here).

Protocol per batch, never a statement per row: ``put`` bulk-ingests the batch into a
temporary table (``adbc_ingest``: COPY on PostgreSQL) and runs one
``INSERT … SELECT … ON CONFLICT ("__key") DO UPDATE``; ``get`` ingests the keys with their
row numbers and runs one ``LEFT JOIN``; ``delete`` one ``DELETE … WHERE "__key" IN (…)``.
Each runs in its own transaction, so a failed batch leaves the table as it was. Rows go in
the primary key's order (a radix sort on the encoded key's first bytes), so that the join
and the upsert walk the index page after page instead of at random. The number of
keys is tracked as rows are inserted and deleted (``count(*)`` is a full scan in SQLite),
helped by the read-modify-write pattern: a ``put`` of exactly the keys of the previous
``get`` already knows which of them exist.

A snapshot is one Arrow IPC file of the table (keys, values, ``__key_group``) — the same
format as the ``memory`` backend, so any backend of the Arrow family restores it; restore
loads the rows of the owned key groups in one transaction.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from typing import Any

import fsspec
import numpy as np
import polars as pl
import pyarrow as pa

from arrowflow._foundation.deps import import_optional
from arrowflow._foundation.sql import (
    PG_NAME_LIMIT,
    Dialect,
    quote,
    redact_url,
    with_connect_timeout,
)
from arrowflow._foundation.sqlite import open_sqlite
from arrowflow.errors import StateError
from arrowflow.state import (
    FOUND,
    KEY_GROUP,
    KeyedStore,
    StateBackend,
    StateFile,
    StoreContext,
    StoreSpec,
)

from ._files import (
    download_verified,
    overlapping,
    safe_component,
    snapshot_path,
    upload_file,
)
from ._rowcodec import RowCodec

KEY = "__key"
ROW = "__i"
#: SQLite keeps a NaN REAL as NULL; this INTEGER column holds, per row, bit i set when float
#: column i (in the store's column order) is NaN, so NaN and null stay two values.
NAN = "__nan"
SCAN_BATCH = 65_536
RESTORE_BATCH = 1_000_000
_RESERVED = {KEY, KEY_GROUP, ROW, NAN}


#: the SQLite driver's statement option for rows per result batch, and the value we set
SQLITE_BATCH_ROWS = "adbc.sqlite.query.batch_rows"
READ_BATCH_ROWS = 65_536


class SqlStore(KeyedStore):
    def __init__(
        self,
        spec: StoreSpec,
        key_groups_owned: range,
        shared: _SharedConnection,
        dialect: Dialect,
        table: str,
        *,
        keep_table: bool,
        scratch: str,
    ) -> None:
        super().__init__(spec, key_groups_owned)
        self.dbapi = import_optional("adbc_driver_manager.dbapi", purpose="the 'sql' state backend")
        self.shared: _SharedConnection | None = shared
        self.cursor = shared.connection.cursor()
        if not dialect.pg:
            # SQLite's driver returns 1,024 rows per batch by default; a snapshot or scan of
            # 100k keys then converts 98 batches one by one (a snapshot took 2.3x the read)
            self.cursor.adbc_statement.set_options(**{SQLITE_BATCH_ROWS: str(READ_BATCH_ROWS)})
        self.scratch = scratch
        serial = shared.serial()
        # temporary tables are per connection, and stores of one worker share it
        self.temp = {use: f"af_{use}_{serial}" for use in ("get", "put", "del")}
        self.dialect = dialect
        self.table = table
        self.quoted = quote(table)
        self.keep_table = keep_table
        self.where = shared.where
        what = f"sql store {spec.name!r}"
        clash = _RESERVED & set(spec.key_columns + spec.value_columns)
        if clash:
            msg = (
                f"{what}: column names {sorted(clash)} are reserved by the sql backend; rename them"
            )
            raise StateError(msg)
        self.key_codec = RowCodec(spec.key_schema, what=f"{what} keys", canonical=True)
        self.column_types = {
            name: dialect.column_type(name, dtype, what)
            for name, dtype in {**spec.key_schema, **spec.value_schema}.items()
        }
        self.columns = [*spec.key_columns, *spec.value_columns]
        # SQLite only (PostgreSQL keeps NaN in DOUBLE PRECISION): the float columns whose NaN
        # the NAN column records, each with its bit. The REAL columns stay queryable as they are.
        schema = {**spec.key_schema, **spec.value_schema}
        floats = [] if dialect.pg else [n for n in self.columns if schema[n].is_float()]
        if len(floats) > 63:
            msg = f"{what}: more than 63 float columns; the sql backend on SQLite keeps at most 63"
            raise StateError(msg)
        self.nan_bits = {name: bit for bit, name in enumerate(floats)}
        self._temp_tables: set[str] = set()
        self._count = 0
        self._last_get: tuple[pa.Array, int] | None = None  # (encoded keys, how many were found)
        self._last_keys: tuple[pl.DataFrame, pa.Array, np.ndarray] | None = None
        self._create_table()

    # ------------------------------------------------------------------------ plumbing

    def _fail(self, doing: str, exc: Exception) -> StateError:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        msg = (
            f"sql store {self.spec.name!r} (table {self.table!r} in {self.where}): {doing} failed "
            f"and was rolled back, the table is unchanged: {first}"
        )
        return StateError(msg)

    def _transaction(self, doing: str, work: Any) -> Any:
        """Run ``work()`` in one transaction; roll back and raise StateError on failure."""
        try:
            self.cursor.execute("BEGIN")
            result = work()
            self.cursor.execute("COMMIT")
            return result
        except self.dbapi.Error as exc:
            try:
                self.cursor.execute("ROLLBACK")
            except self.dbapi.Error:
                pass
            raise self._fail(doing, exc) from exc

    def _ingest_temp(self, name: str, data: pa.Table) -> None:
        """Fill the temporary table ``name`` (one per connection) with ``data``."""
        if name in self._temp_tables:
            self.cursor.execute(f"DELETE FROM {quote(name)}")
            self.cursor.adbc_ingest(name, data, mode="append", temporary=True)
        else:
            self.cursor.execute(f"DROP TABLE IF EXISTS {quote(name)}")
            self.cursor.adbc_ingest(name, data, mode="create", temporary=True)
            self._temp_tables.add(name)

    def _create_table(self) -> None:
        blob = "BYTEA" if self.dialect.pg else "BLOB"
        columns = [
            f"{quote(KEY)} {blob} NOT NULL PRIMARY KEY",
            f"{quote(KEY_GROUP)} INTEGER NOT NULL",
        ]
        columns += [f"{quote(name)} {self.column_types[name]}" for name in self.columns]
        if self.nan_bits:
            columns.append(f"{quote(NAN)} INTEGER NOT NULL")
        unlogged = (
            "UNLOGGED " if self.dialect.pg else ""
        )  # a working copy: checkpoints make it durable
        rowid = " WITHOUT ROWID" if not self.dialect.pg else ""
        statements = [
            f"DROP TABLE IF EXISTS {self.quoted}",
            f"CREATE {unlogged}TABLE {self.quoted} ({', '.join(columns)}){rowid}",
        ]
        if self.dialect.pg:
            comment = (
                f"arrowflow state of store {self.spec.name}, key groups "
                f"[{self.key_groups.start}, {self.key_groups.stop})"
            ).replace("'", "''")
            statements.append(f"COMMENT ON TABLE {self.quoted} IS '{comment}'")

        def work() -> None:
            for statement in statements:
                self.cursor.execute(statement)

        self._transaction("creating the table", work)

    def _encoded_keys(self, keys: pl.DataFrame) -> pa.Array:
        return self.key_codec.encode(keys.select(self.spec.key_columns)).to_arrow()

    def _keys(self, keys: pl.DataFrame) -> tuple[pa.Array, np.ndarray]:
        """The encoded keys, and the order in which the primary key's B-tree holds them.

        Rows go to the database in that order, so that the join and the upsert walk the
        index page after page. A ``put`` of exactly the keys of the last ``get`` reuses it.
        """
        keys = keys.select(self.spec.key_columns)
        last = self._last_keys
        if last is not None and (
            last[0] is keys or (last[0].height == keys.height and last[0].equals(keys))
        ):
            return last[1], last[2]
        encoded = self.key_codec.encode(keys)
        order = encoded.locality_order()
        self._last_keys = (keys, encoded.to_arrow(), order)
        return self._last_keys[1], order

    def _rows_for_db(self, frame: pl.DataFrame, encoded: pa.Array, groups: np.ndarray) -> pa.Table:
        converted = [self.dialect.to_db(frame.get_column(name)) for name in self.columns]
        if self.nan_bits:
            mask = frame.select(
                pl.sum_horizontal(
                    pl.col(name).is_nan().fill_null(False).cast(pl.Int64) * (1 << bit)
                    for name, bit in self.nan_bits.items()
                ).alias(NAN)
            )
            converted.append(mask.get_column(NAN))
        table = pl.DataFrame(
            [pl.Series(KEY, encoded), pl.Series(KEY_GROUP, groups, dtype=pl.Int32), *converted]
        )
        return table.to_arrow()

    def _from_db(self, frame: pl.DataFrame, names: list[str]) -> pl.DataFrame:
        schema = {**self.spec.key_schema, **self.spec.value_schema}
        decoded = pl.DataFrame(
            [self.dialect.from_db(frame.get_column(name), schema[name]) for name in names]
        )
        nan = [(name, self.nan_bits[name]) for name in names if name in self.nan_bits]
        if not nan:
            return decoded
        mask = frame.get_column(NAN).fill_null(0)  # null: a get's key that is absent
        return decoded.with_columns(
            pl.when((mask & (1 << bit)) != 0)
            .then(pl.lit(float("nan"), dtype=schema[name]))
            .otherwise(pl.col(name))
            .alias(name)
            for name, bit in nan
        )

    def _select_list(self, names: list[str], alias: str = "") -> str:
        schema = {**self.spec.key_schema, **self.spec.value_schema}
        prefix = f"{alias}." if alias else ""
        selected = [prefix + self.dialect.select_expr(name, schema[name]) for name in names]
        if any(name in self.nan_bits for name in names):
            selected.append(prefix + quote(NAN))
        return ", ".join(selected)

    # ------------------------------------------------------------------------ KeyedStore

    def get(self, keys: pl.DataFrame) -> pl.DataFrame:
        if keys.height == 0:
            return self.spec.empty_values(0)
        encoded, order = self._keys(keys)
        if self._count == 0:  # nothing stored (a first merge): no round trip to the database
            self._last_get = (encoded, 0)
            return self.spec.empty_values(keys.height)
        request = pa.table(
            {ROW: pa.array(order.astype(np.int64)), KEY: encoded.take(pa.array(order))}
        )
        values = self.spec.value_columns
        select = ", ".join(
            filter(
                None, [f"g.{quote(ROW)}", f"t.{quote(KEY_GROUP)}", self._select_list(values, "t")]
            )
        )
        query = (
            f"SELECT {select} FROM {quote(self.temp['get'])} AS g "
            f"LEFT JOIN {self.quoted} AS t ON t.{quote(KEY)} = g.{quote(KEY)}"
        )

        def work() -> pa.Table:
            self._ingest_temp(self.temp["get"], request)
            self.cursor.execute(query)
            return self.cursor.fetch_arrow_table()

        fetched = pl.from_arrow(self._transaction("reading a batch of keys", work))
        assert isinstance(fetched, pl.DataFrame)
        fetched = fetched.sort(ROW)
        found = fetched.get_column(KEY_GROUP).is_not_null().alias(FOUND)
        self._last_get = (encoded, int(found.sum()))
        return (
            self._from_db(fetched, values).with_columns(found) if values else pl.DataFrame([found])
        )

    def put(self, keys: pl.DataFrame, values: pl.DataFrame) -> None:
        if keys.height == 0:
            return
        encoded, order = self._keys(keys)
        groups = self.spec.key_groups_of(keys)
        rows = self._rows_for_db(
            pl.concat(
                [keys.select(self.spec.key_columns), values.select(self.spec.value_columns)],
                how="horizontal",
            ),
            encoded,
            groups,
        ).take(pa.array(order))
        extra = [NAN] if self.nan_bits else []
        names = ", ".join(quote(name) for name in [KEY, KEY_GROUP, *self.columns, *extra])
        updated = [*self.spec.value_columns, *extra] if self.spec.value_columns else []
        updates = ", ".join(f"{quote(v)} = excluded.{quote(v)}" for v in updated)
        action = f"DO UPDATE SET {updates}" if updates else "DO NOTHING"
        upsert = (
            f"INSERT INTO {self.quoted} ({names}) SELECT {names} FROM {quote(self.temp['put'])} WHERE true "
            f"ON CONFLICT ({quote(KEY)}) {action}"
        )
        known = self._last_get
        existing_query = (
            f"SELECT count(*) FROM {quote(self.temp['put'])} AS p "
            f"JOIN {self.quoted} AS t ON t.{quote(KEY)} = p.{quote(KEY)}"
        )

        def work() -> int:
            self._ingest_temp(self.temp["put"], rows)
            if known is not None and (known[0] is encoded or known[0].equals(encoded)):
                existing = known[1]
            else:
                self.cursor.execute(existing_query)
                existing = int(self.cursor.fetchone()[0])
            self.cursor.execute(upsert)
            return keys.height - existing

        self._last_get = None
        self._count += self._transaction("writing a batch of keys", work)

    def delete(self, keys: pl.DataFrame) -> None:
        if keys.height == 0:
            return
        encoded, order = self._keys(keys)
        request = pa.table({KEY: encoded.take(pa.array(order))})
        condition = f"{quote(KEY)} IN (SELECT {quote(KEY)} FROM {quote(self.temp['del'])})"

        def work() -> int:
            self._ingest_temp(self.temp["del"], request)
            self.cursor.execute(f"SELECT count(*) FROM {self.quoted} WHERE {condition}")
            removed = int(self.cursor.fetchone()[0])
            self.cursor.execute(f"DELETE FROM {self.quoted} WHERE {condition}")
            return removed

        self._last_get = None
        self._count -= self._transaction("deleting a batch of keys", work)

    def scan(self) -> Iterator[pl.DataFrame]:
        # Pages by primary key, each its own query: no cursor stays open between batches,
        # so the caller may write to the store while it iterates.
        last: bytes | None = None
        select = f"SELECT {quote(KEY)}, {self._select_list(self.columns)} FROM {self.quoted}"
        placeholder = "$1" if self.dialect.pg else "?"
        while True:
            if last is None:
                query, params = f"{select} ORDER BY {quote(KEY)} LIMIT {SCAN_BATCH}", None
            else:
                query = f"{select} WHERE {quote(KEY)} > {placeholder} ORDER BY {quote(KEY)} LIMIT {SCAN_BATCH}"
                params = (last,)

            def work(query: str = query, params: Any = params) -> pa.Table:
                self.cursor.execute(query, parameters=params)
                return self.cursor.fetch_arrow_table()

            page = pl.from_arrow(self._transaction("scanning the table", work))
            assert isinstance(page, pl.DataFrame)
            if page.height == 0:
                return
            yield self._from_db(page, self.columns)
            if page.height < SCAN_BATCH:
                return
            last = page.get_column(KEY)[-1]

    def count(self) -> int:
        return self._count

    def snapshot(
        self, fs: fsspec.AbstractFileSystem, root: str, checkpoint_id: int
    ) -> list[StateFile]:
        relative = snapshot_path(checkpoint_id, self.spec.name, self.key_groups, "arrow")
        query = f"SELECT {self._select_list(self.columns)}, {quote(KEY_GROUP)} FROM {self.quoted}"
        schema = (
            pl.DataFrame(
                schema={**self.spec.key_schema, **self.spec.value_schema, KEY_GROUP: pl.Int32}
            )
            .to_arrow()
            .schema
        )
        fd, local = tempfile.mkstemp(prefix="snapshot-", suffix=".arrow", dir=self.scratch)
        os.close(fd)
        entries = 0
        try:

            def work() -> int:
                written = 0
                self.cursor.execute(query)
                reader = self.cursor.fetch_record_batch()
                with pa.OSFile(local, "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
                    for batch in reader:
                        frame = pl.from_arrow(batch)
                        assert isinstance(frame, pl.DataFrame)
                        frame = self._from_db(frame, self.columns).with_columns(
                            frame.get_column(KEY_GROUP).cast(pl.Int32)
                        )
                        writer.write_table(frame.to_arrow().cast(schema))
                        written += frame.height
                return written

            entries = self._transaction("reading the table for a snapshot", work)
            size, digest = upload_file(fs, local, f"{root}/{relative}")
        finally:
            os.unlink(local)
        return [
            StateFile(
                relative,
                size,
                digest,
                self.spec.name,
                (self.key_groups.start, self.key_groups.stop),
                "arrow",
                {"entries": entries},
            )
        ]

    def restore(self, fs: fsspec.AbstractFileSystem, root: str, files: list[StateFile]) -> None:
        wanted = overlapping(files, self.key_groups)
        for state_file in wanted:
            if state_file.format != "arrow":
                msg = (
                    f"sql store {self.spec.name!r} cannot restore {state_file.path!r} of format "
                    f"{state_file.format!r}; it reads Arrow IPC snapshots (memory, arrow, sql backends)"
                )
                raise StateError(msg)
        schema = pl.Schema({**self.spec.key_schema, **self.spec.value_schema})
        with tempfile.TemporaryDirectory(prefix="restore-", dir=self.scratch) as scratch:
            local_files = []
            for number, state_file in enumerate(wanted):
                local = os.path.join(scratch, f"{number}.arrow")
                download_verified(fs, root, state_file, local)
                local_files.append(local)

            def work() -> int:
                loaded = 0
                self.cursor.execute(f"DELETE FROM {self.quoted}")
                for local in local_files:
                    frame = pl.read_ipc(local).filter(
                        pl.col(KEY_GROUP).is_between(
                            self.key_groups.start, self.key_groups.stop - 1
                        )
                    )
                    frame = frame.select([*self.columns, KEY_GROUP]).cast(schema)
                    for part in frame.iter_slices(RESTORE_BATCH):
                        keys = part.select(self.spec.key_columns)
                        rows = self._rows_for_db(
                            part, self._encoded_keys(keys), part.get_column(KEY_GROUP).to_numpy()
                        )
                        self.cursor.adbc_ingest(self.table, rows, mode="append")
                        loaded += part.height
                return loaded

            self._count = self._transaction("restoring the table", work)
            self._last_get = None

    def close(self) -> None:
        shared, self.shared = self.shared, None
        if shared is None:
            return
        try:
            for name in self._temp_tables:
                self.cursor.execute(f"DROP TABLE IF EXISTS {quote(name)}")
            if not self.keep_table:
                self.cursor.execute(f"DROP TABLE IF EXISTS {self.quoted}")
            self.cursor.close()
        except self.dbapi.Error:
            pass  # the database went away: nothing left to release
        finally:
            shared.release()


class _SharedConnection:
    """One connection per database per worker process, shared by that worker's stores.

    Opening a PostgreSQL connection through ADBC costs ~0.1 s (the driver loads the type
    catalogue), and a worker runs its stores one batch at a time, so they take turns on one
    connection. It is closed when the last store using it closes.
    """

    def __init__(self, connection: Any, where: str, release: Any) -> None:
        self.connection = connection
        self.where = where
        self.users = 0
        self._serials = 0
        self._release = release

    def serial(self) -> int:
        self._serials += 1
        return self._serials

    def release(self) -> None:
        self.users -= 1
        if self.users == 0:
            self._release(self)
            self.connection.close()


class SqlBackend(StateBackend):
    """State in tables of a relational database, through ADBC.

    ``url``: None for an SQLite file in each worker's local directory; ``"sqlite:///path"``
    (relative) or ``"sqlite:////path"`` (absolute) for a given SQLite file;
    ``"postgresql://user:password@host:port/database"`` for PostgreSQL.
    ``table_prefix``: the start of every table name (default ``af_``, plus a per-run token in
    a shared database). ``keep_tables``: leave the tables in place when the job ends.
    ``connect_timeout``: seconds to wait for a PostgreSQL server to answer.
    """

    name = "sql"
    restores = ("arrow",)

    def __init__(
        self,
        url: str | None = None,
        *,
        table_prefix: str | None = None,
        keep_tables: bool = False,
        connect_timeout: int = 10,
    ) -> None:
        if url is not None and not url.startswith(("sqlite://", "postgresql://", "postgres://")):
            msg = (
                f"SqlBackend(url=...) expects 'sqlite:///path/to/file.db' or "
                f"'postgresql://user@host:port/database', got {redact_url(url)!r}"
            )
            raise StateError(msg)
        self.url = url
        self.table_prefix = table_prefix
        self.keep_tables = keep_tables
        self.connect_timeout = connect_timeout
        self._connections: dict[str, _SharedConnection] = {}  # this process's, never pickled

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_connections"] = {}
        return state

    @property
    def kind(self) -> str:
        return "postgresql" if self.url and self.url.startswith("postgres") else "sqlite"

    def _sqlite_path(self, context: StoreContext) -> str:
        if self.url is None:
            return os.path.join(context.local_dir, "sql", f"state-w{context.worker}.sqlite")
        # SQLAlchemy's convention: sqlite:///relative/file.db, sqlite:////absolute/file.db
        path = self.url[len("sqlite://") :]
        return path[1:] if path.startswith("/") else path

    def _connect(self, context: StoreContext) -> tuple[Any, str]:
        if self.kind == "postgresql":
            assert self.url is not None
            driver = import_optional(
                "adbc_driver_postgresql.dbapi", purpose="the 'sql' state backend on PostgreSQL"
            )
            url = "postgresql://" + self.url.split("://", 1)[1]
            try:
                connection = driver.connect(
                    with_connect_timeout(url, self.connect_timeout), autocommit=True
                )
                cursor = connection.cursor()
                cursor.execute("SET synchronous_commit TO off")
                cursor.close()
            except Exception as exc:
                first = str(exc).strip().splitlines()[0]
                msg = (
                    f"sql state backend: the PostgreSQL server at {redact_url(self.url)} did not accept a "
                    f"connection: {first}. Check that it runs and that the URL's host, port, "
                    f"user, password and database are right."
                )
                raise StateError(msg) from exc
            return connection, f"PostgreSQL {redact_url(self.url)}"
        driver = import_optional("adbc_driver_sqlite.dbapi", purpose="the 'sql' state backend")
        path = self._sqlite_path(context)
        try:
            # A working copy (checkpoints make state durable): no fsync; WAL so that a failed
            # transaction (e.g. a full disk) rolls back cleanly.
            connection = open_sqlite(
                driver,
                path,
                (
                    "busy_timeout=30000",
                    "journal_mode=WAL",
                    "synchronous=OFF",
                    "temp_store=MEMORY",
                    "cache_size=-65536",
                ),
            )
        except Exception as exc:
            first = str(exc).strip().splitlines()[0]
            msg = (
                f"sql state backend: cannot create or open the SQLite database {path!r}: {first}. "
                f"Give a writable location, e.g. state='sqlite:////tmp/state.db'."
            )
            raise StateError(msg) from exc
        return connection, f"SQLite {path!r}"

    def table_name(self, spec: StoreSpec, key_groups: range, context: StoreContext) -> str:
        if self.table_prefix is not None:
            prefix = self.table_prefix
        elif self.url is None:
            prefix = "af_"
        else:  # a database other runs may share: make the name unique to this run
            token = hashlib.sha1(f"{os.path.abspath(context.local_dir)}".encode()).hexdigest()[:8]
            prefix = f"af_{token}_"
        name = f"{prefix}{safe_component(spec.name)}_{key_groups.start:03d}_{key_groups.stop:03d}"
        if len(name.encode()) > PG_NAME_LIMIT:  # PostgreSQL truncates longer identifiers
            digest = hashlib.sha1(name.encode()).hexdigest()[:8]
            name = name.encode()[: PG_NAME_LIMIT - 9].decode(errors="ignore") + "_" + digest
        return name

    def _acquire(self, context: StoreContext) -> _SharedConnection:
        address = (
            self.url if self.kind == "postgresql" else os.path.abspath(self._sqlite_path(context))
        )
        assert address is not None
        shared = self._connections.get(address)
        if shared is None:
            connection, where = self._connect(context)
            shared = _SharedConnection(
                connection, where, lambda gone: self._connections.pop(address, None)
            )
            self._connections[address] = shared
        shared.users += 1
        return shared

    def open_store(self, spec: StoreSpec, key_groups: range, context: StoreContext) -> KeyedStore:
        shared = self._acquire(context)
        try:
            return SqlStore(
                spec,
                key_groups,
                shared,
                Dialect(self.kind),
                self.table_name(spec, key_groups, context),
                keep_table=self.keep_tables,
                scratch=context.local_dir,
            )
        except BaseException:
            shared.release()
            raise

    def __repr__(self) -> str:
        url = None if self.url is None else redact_url(self.url)
        return f"SqlBackend(url={url!r})"
