"""SQL shared by the ``sql`` state backend and the database sink (``write_database``).

How each polars type is stored in SQLite and PostgreSQL and read back, identifier quoting,
and the URL helpers.

Both keep real typed columns so that a person can query them. Each column has a SQL
type, a conversion applied before bulk ingest (``to_db``) and one applied after a fetch
(``from_db``) so that what comes back equals what went in, bit for bit where the database
allows it. Where a database has no exact type, the choice and its cost are written here:

====================  =========================  ===================================
polars                SQLite                     PostgreSQL
====================  =========================  ===================================
Int8..Int64, UInt8+   INTEGER                    SMALLINT / INTEGER / BIGINT
UInt64                INTEGER (two's complement: values >= 2**63 read as negative in SQL)
Float32 / Float64     REAL (NaN reads as NULL:   REAL / DOUBLE PRECISION
                      SQLite cannot store NaN)
Boolean               INTEGER 0/1                BOOLEAN
String, Categorical   TEXT                       TEXT
Binary                BLOB                       BYTEA
Date                  TEXT 'YYYY-MM-DD'          DATE
Datetime(ms/us)       TEXT ISO 8601 (UTC)        TIMESTAMP / TIMESTAMPTZ
Datetime(ns)          TEXT ISO 8601 (UTC)        BIGINT nanoseconds since the epoch
Duration              INTEGER (its unit)         BIGINT (its unit)
Time                  TEXT 'HH:MM:SS.fffffffff'  BIGINT nanoseconds since midnight
Decimal(p, s)         TEXT                       NUMERIC(p, s)
====================  =========================  ===================================

(PostgreSQL keeps microseconds, so nanosecond timestamps and times are kept as integers.)
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import polars as pl

from arrowflow.errors import ArrowflowError, StateError

_PG_INTS = [
    (pl.Int8, "SMALLINT"),
    (pl.Int16, "SMALLINT"),
    (pl.Int32, "INTEGER"),
    (pl.Int64, "BIGINT"),
    (pl.UInt8, "SMALLINT"),
    (pl.UInt16, "INTEGER"),
    (pl.UInt32, "BIGINT"),
    (pl.UInt64, "BIGINT"),
]
_ISO_NS = "%Y-%m-%dT%H:%M:%S%.9f"
PG_NAME_LIMIT = 63
"""The longest identifier PostgreSQL keeps, in bytes; it truncates longer ones silently."""


def quote(
    identifier: str,
    *,
    what: str = "a SQL identifier",
    error: type[ArrowflowError] = StateError,
) -> str:
    """A SQL identifier in double quotes, safe whatever characters it holds.

    Parameters
    ----------
    identifier
        A table or column name, any characters but NUL.
    what
        What the identifier is, for the error message.
    error
        The error raised for a name with a NUL character (no database can hold one).
    """
    if "\x00" in identifier:
        msg = f"{what} cannot contain a NUL character: {identifier!r}"
        raise error(msg)
    return '"' + identifier.replace('"', '""') + '"'


class Dialect:
    """Type mapping for one database kind: ``"sqlite"`` or ``"postgresql"``."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.pg = kind == "postgresql"

    def unsupported(self, name: str, dtype: pl.DataType, what: str) -> StateError:
        msg = (
            f"{what}: column {name!r} has type {dtype}, which the sql backend cannot keep in a "
            f"table column; it keeps flat columns (numbers, booleans, strings, binary, dates, "
            f"times, timestamps, durations, decimals). Use state='memory', 'arrow' or 'lmdb'."
        )
        return StateError(msg)

    def column_type(self, name: str, dtype: pl.DataType, what: str) -> str:
        if dtype.is_integer():
            for int_type, sql_type in _PG_INTS:
                if dtype == int_type:
                    return sql_type if self.pg else "INTEGER"
            raise self.unsupported(name, dtype, what)
        if dtype.is_float():
            return ("REAL" if dtype == pl.Float32 else "DOUBLE PRECISION") if self.pg else "REAL"
        if dtype == pl.Boolean:
            return "BOOLEAN" if self.pg else "INTEGER"
        if dtype in (pl.String, pl.Categorical) or isinstance(dtype, pl.Categorical | pl.Enum):
            return "TEXT"
        if dtype == pl.Binary:
            return "BYTEA" if self.pg else "BLOB"
        if dtype == pl.Null:
            return "TEXT"
        if dtype == pl.Date:
            return "DATE" if self.pg else "TEXT"
        if isinstance(dtype, pl.Datetime):
            if not self.pg:
                return "TEXT"
            if dtype.time_unit == "ns":
                return "BIGINT"
            return "TIMESTAMPTZ" if dtype.time_zone else "TIMESTAMP"
        if isinstance(dtype, pl.Duration):
            return "BIGINT" if self.pg else "INTEGER"
        if dtype == pl.Time:
            return "BIGINT" if self.pg else "TEXT"
        if isinstance(dtype, pl.Decimal):
            return f"NUMERIC({dtype.precision}, {dtype.scale})" if self.pg else "TEXT"
        raise self.unsupported(name, dtype, what)

    def select_expr(self, name: str, dtype: pl.DataType) -> str:
        """The expression that fetches a column (PostgreSQL's NUMERIC comes back as text)."""
        if self.pg and isinstance(dtype, pl.Decimal):
            return f"{quote(name)}::TEXT AS {quote(name)}"
        return quote(name)

    def to_db(self, series: pl.Series) -> pl.Series:
        """The series as it is ingested into its column."""
        dtype = series.dtype
        if dtype == pl.UInt64:
            return series.reinterpret(signed=True)
        if isinstance(dtype, pl.Categorical | pl.Enum) or dtype == pl.Null:
            return series.cast(pl.String)
        if self.pg:
            if (isinstance(dtype, pl.Datetime) and dtype.time_unit == "ns") or dtype == pl.Time:
                return series.to_physical()
            if isinstance(dtype, pl.Duration):
                return series.to_physical()
            return series
        if dtype.is_float() and dtype != pl.Float64:
            return series.cast(pl.Float64)
        if dtype == pl.Date:
            return series.dt.to_string("%Y-%m-%d")
        if isinstance(dtype, pl.Datetime):
            if dtype.time_zone is not None:
                series = series.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
            return series.dt.cast_time_unit("ns").dt.to_string(_ISO_NS)
        if dtype == pl.Time:
            return series.dt.to_string("%H:%M:%S%.9f")
        if isinstance(dtype, pl.Duration):
            return series.to_physical()
        if isinstance(dtype, pl.Decimal):
            return series.cast(pl.String)
        return series

    def from_db(self, series: pl.Series, dtype: pl.DataType) -> pl.Series:
        """A fetched column back as ``dtype``."""
        if dtype == pl.UInt64:
            return series.cast(pl.Int64).reinterpret(signed=False)
        if dtype == pl.Null:
            return pl.Series(series.name, [None] * series.len(), dtype=pl.Null)
        if isinstance(dtype, pl.Datetime | pl.Duration) and series.dtype.is_integer():
            return series.cast(pl.Int64).cast(dtype)
        if dtype == pl.Time and series.dtype.is_integer():
            return series.cast(pl.Int64).cast(pl.Time)
        if (
            series.dtype == pl.String
            and dtype != pl.String
            and not isinstance(dtype, pl.Categorical | pl.Enum)
        ):
            if dtype == pl.Date:
                return series.str.to_date("%Y-%m-%d")
            if isinstance(dtype, pl.Datetime):
                parsed = series.str.to_datetime(_ISO_NS, time_unit="ns")
                if dtype.time_zone is not None:
                    parsed = parsed.dt.replace_time_zone("UTC").dt.convert_time_zone(
                        dtype.time_zone
                    )
                return parsed.dt.cast_time_unit(dtype.time_unit or "us")
            if dtype == pl.Time:
                return series.str.to_time("%H:%M:%S%.9f")
            return series.cast(dtype)
        if series.dtype != dtype:
            return series.cast(dtype)
        return series


def redact_url(url: str) -> str:
    """The URL without its password, for error messages.

    ``"<unparseable URL>"`` for a URL that :func:`urllib.parse.urlsplit` refuses (an
    unclosed ``[`` of an IPv6 host).
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def with_connect_timeout(url: str, seconds: int) -> str:
    """A libpq URL that gives up connecting after ``seconds`` (its default is to wait forever)."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.setdefault("connect_timeout", str(seconds))
    return urlunsplit(parts._replace(query=urlencode(query)))
