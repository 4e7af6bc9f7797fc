"""Checkpoint inspection for users.

List a checkpoint directory, read an operator's state as a DataFrame, query the state with
SQL. The job need not run; nothing here writes.

Storage, manifests and their validation are :mod:`arrowflow._runtime.checkpoints`; this module
only reads through :class:`~arrowflow._runtime.checkpoints.CheckpointStorage`, so a damaged or
hostile checkpoint directory is refused here as it is on restore (docs/checkpoints.md).
"""

from __future__ import annotations

import tempfile
import warnings
from typing import Any

import polars as pl

from arrowflow._foundation.sqlguard import check_state_query
from arrowflow._graph.aggregates import combine_partials
from arrowflow._runtime.checkpoints import CheckpointStorage, decode_spec
from arrowflow.errors import CheckpointError
from arrowflow.state import StateFile, StoreContext, resolve_backend

_READERS = {"arrow": "memory", "lmdb": "lmdb"}


def checkpoint_arg(checkpoint: int | None, checkpoint_id: int | None) -> int | None:
    """Return the checkpoint id asked for, by ``checkpoint=`` or the deprecated ``checkpoint_id=``.

    ``checkpoint`` is the name everywhere (the CLI's ``--checkpoint``); the old name still
    works, with a DeprecationWarning.
    """
    if checkpoint_id is None:
        return checkpoint
    if checkpoint is not None and checkpoint != checkpoint_id:
        msg = f"checkpoint={checkpoint!r} and checkpoint_id={checkpoint_id!r} disagree; pass checkpoint= only"
        raise TypeError(msg)
    warnings.warn(
        "checkpoint_id= is deprecated: pass checkpoint= (the name of the CLI's --checkpoint)",
        DeprecationWarning,
        stacklevel=3,  # the user's call of read_state, query_state, job.state…
    )
    return checkpoint_id


def list_checkpoints(url: str, *, storage_options: dict[str, Any] | None = None) -> pl.DataFrame:
    """The checkpoints in a checkpoint directory that a run can restore, one row each.

    Complete ones only, and not those superseded by the restore of an older checkpoint
    (their output was rolled back).

    Columns: ``id``, ``time``, ``size_bytes``, ``state_files``, ``parallelism``, ``final``;
    ``offsets``, a list of one struct per split of every source (``source``, ``split``,
    ``done``, ``offset``: rows read when the position is a row count, ``position``: the
    position as the source keeps it, as JSON), e.g.
    ``listing.explode("offsets").unnest("offsets")``; and ``sources_json``, the manifest's
    source offsets in full (watched files' ages too) as JSON.

    Parameters
    ----------
    url
        The checkpoint directory, any fsspec URL.
    storage_options
        Passed to fsspec (credentials, endpoint).
    """
    return CheckpointStorage(url, storage_options).list()


def query_state(
    url: str,
    sql: str,
    *,
    checkpoint: int | None = None,
    storage_options: dict[str, Any] | None = None,
    checkpoint_id: int | None = None,
) -> pl.DataFrame:
    """Run a polars SQL query over the state in a checkpoint.

    Every operator with state is a table named after its id; quote ids with a dash
    (``SELECT * FROM "agg-2"``). One SELECT over those tables only: statements and table
    functions that read files (``read_csv``…) are refused.

    Parameters
    ----------
    url
        The checkpoint directory, any fsspec URL.
    sql
        One SELECT statement.
    checkpoint
        The id of the checkpoint to read; default: the newest complete one.
    storage_options
        Passed to fsspec (credentials, endpoint).
    checkpoint_id
        Deprecated name of ``checkpoint``.
    """
    checkpoint = checkpoint_arg(checkpoint, checkpoint_id)
    storage = CheckpointStorage(url, storage_options)
    manifest = storage.find(checkpoint) if checkpoint is not None else storage.latest()
    if manifest is None:
        msg = f"no complete checkpoint in {storage.url!r}"
        raise CheckpointError(msg)
    operators = sorted({name.split("/")[0] for name in manifest.stores})
    check_state_query(sql, operators)
    context = pl.SQLContext()
    for operator in operators:
        context.register(
            operator,
            read_state(url, operator, checkpoint=manifest.id, storage_options=storage_options),
        )
    try:
        return context.execute(sql, eager=True)
    # A panic of polars (CAST(n AS DECIMAL(99, 99)) asserts) is a BaseException, no PolarsError.
    except (pl.exceptions.PolarsError, pl.exceptions.PanicException) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        msg = f"state query failed on checkpoint {manifest.id}: {type(exc).__name__}: {reason}"
        raise CheckpointError(msg) from exc


def read_state(
    url: str,
    operator: str,
    *,
    checkpoint: int | None = None,
    storage_options: dict[str, Any] | None = None,
    raw: bool = False,
    checkpoint_id: int | None = None,
) -> pl.DataFrame:
    """The state of ``operator`` in a checkpoint, as one polars DataFrame (the job need not run).

    ``url`` is a checkpoint directory (any fsspec URL); ``checkpoint`` the id of the
    checkpoint to read (default: the newest complete one; ``checkpoint_id`` is its deprecated
    name). For a keyed aggregation the partial aggregates are turned into the aggregation's
    values (``raw=True`` keeps the partials); other operators' stores come as stored, with a
    ``__store`` column when the operator has several.
    """
    checkpoint = checkpoint_arg(checkpoint, checkpoint_id)
    storage = CheckpointStorage(url, storage_options)
    manifest = storage.find(checkpoint) if checkpoint is not None else storage.latest()
    if manifest is None:
        msg = f"no complete checkpoint in {storage.url!r}"
        raise CheckpointError(msg)
    names = [n for n in manifest.stores if n == operator or n.startswith(f"{operator}/")]
    if not names:
        known = sorted({n.split("/")[0] for n in manifest.stores})
        msg = f"checkpoint {manifest.id} holds no state of operator {operator!r}; operators with state: {known}"
        raise CheckpointError(msg)
    frames = []
    window_buffer = f"{operator}/buffer"
    if sorted(names) == [operator, window_buffer] and not raw:
        # A window operator: windows in its store and in its write buffer (the newer rows)
        # are one set of partial aggregates; a window may be in both.
        spec = decode_spec(manifest.stores[operator])
        stored = read_state(
            url,
            operator,
            checkpoint=manifest.id,
            storage_options=storage_options,
            raw=True,
        )
        newer_last = pl.col("__store") == "buffer"
        both = stored.sort(newer_last, maintain_order=True)
        state_schema = pl.Schema(
            {c: spec.value_schema[c] for c in spec.value_columns if c != "__n"}
        )
        combined = combine_partials(
            both.select(*spec.key_columns, *state_schema.names()), spec.key_columns, state_schema
        )
        return _decode_partials(combined, spec)
    for name in names:
        spec = decode_spec(manifest.stores[name])
        files = [StateFile.from_json(f) for f in manifest.state if f["store"] == name]
        backend_name = _READERS.get(files[0].format if files else "arrow", "memory")
        with tempfile.TemporaryDirectory(prefix="arrowflow-read-state-") as local:
            backend = resolve_backend(backend_name)
            store = backend.open_store(spec, range(spec.max_parallelism), StoreContext(local, 0, 1))
            try:
                store.restore(storage.fs, storage.root, files)
                parts = [frame.clone() for frame in store.scan()]
            finally:
                store.close()
        frame = (
            pl.concat(parts)
            if parts
            else pl.DataFrame(schema={**spec.key_schema, **spec.value_schema})
        )
        if not raw:
            frame = _decode_partials(frame, spec)
        if len(names) > 1:
            frame = frame.with_columns(pl.lit(name.split("/", 1)[-1]).alias("__store"))
        frames.append(frame)
    return pl.concat(frames, how="diagonal_relaxed")


def _decode_partials(frame: pl.DataFrame, spec: Any) -> pl.DataFrame:
    """Turn a keyed aggregation's partial columns (``total__sum``…) into its values."""
    values = [c for c in spec.value_columns if c != "__n"]
    if not values or not all("__" in c for c in values):
        return frame
    groups: dict[str, dict[str, str]] = {}
    for column in values:
        name, kind = column.rsplit("__", 1)
        groups.setdefault(name, {})[kind] = column
    exprs: list[pl.Expr] = [pl.col(k) for k in spec.key_columns]
    for name, kinds in groups.items():
        if set(kinds) == {"sum", "count"}:
            exprs.append((pl.col(kinds["sum"]) / pl.col(kinds["count"])).alias(name))
        else:
            exprs.append(pl.col(next(iter(kinds.values()))).alias(name))
    return frame.select(exprs)
