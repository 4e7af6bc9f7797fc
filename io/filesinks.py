"""File sinks: Parquet, CSV, NDJSON and Arrow IPC part files in a directory, written exactly once.

State and protocol (see :mod:`arrowflow.sinks`):

- Each writer (one per worker and run attempt) buffers rows and writes part files under the
  hidden folder ``<dir>/.staging/`` as
  ``part-<checkpoint>-<worker>-<seq>-<job>-<token>.<ext>``: ``checkpoint`` is the checkpoint
  that will commit the file (or, for a file flushed early, an id between the last one and
  that one, never one that existed when the attempt started), ``job`` is the job's tag (see
  :class:`arrowflow.sinks.JobIdentity`), ``token`` is random per writer, so two runs
  appending to one directory, or a run restored after a crash, never reuse a name.
- ``prepare_commit(n)`` writes what is buffered and returns the names staged since the last
  call. ``commit(n, staged)`` moves each staged file to ``<dir>/<name>``: a rename on a local
  disk, so a reader sees a whole file or none. It is idempotent: a file already moved is
  skipped, so re-running it from a checkpoint's manifest after a crash is safe.
- ``begin()`` (a fresh run) applies ``mode`` to the visible files already there —
  ``overwrite`` deletes the part files of arrowflow's file sinks (names ``part-…``) and
  refuses to run when the folder holds any other visible file (a user's ``notes.txt`` is
  never deleted), ``append`` keeps them, ``error`` refuses to run — and clears staging left
  by an earlier run. On restore from checkpoint ``n`` the runtime first re-runs
  ``commit(n)`` from its manifest, then calls ``recover(n)``, which deletes whatever is still
  staged: files of later checkpoints that never completed, or of a crashed attempt. None of
  them is ever committed.
- ``rollback(n)`` (a restore from ``n`` while later checkpoints committed output: a damaged
  newest checkpoint, or ``restore=<older id>``) deletes the committed part files of this job
  (its tag) whose checkpoint is after ``n``; the replay writes them again, once.
- The runtime holds a lease on the folder for the whole run (``_arrowflow.lock``, see
  :mod:`arrowflow._runtime.lease`): a second job writing into it is refused.

arrowflow and Spark skip names starting with ``_`` or ``.``, so they only ever see committed
files. polars does not skip them, but staged files live in the ``.staging/`` folder, so a
non-recursive glob such as ``pl.read_parquet("out/*.parquet")`` sees committed files only.
"""

from __future__ import annotations

import os
import re
import secrets
from typing import Any

import polars as pl

from arrowflow.errors import SchemaError, SinkError
from arrowflow.io._fs import filesystem, in_memory, is_hidden, memory_hint
from arrowflow.sinks import RolledBack, Sink, SinkWriter

EXTENSIONS = {"parquet": "parquet", "csv": "csv", "ndjson": "ndjson", "ipc": "arrow"}
STAGING = ".staging"
DEFAULT_ROWS_PER_FILE = 2_000_000
MODES = ("overwrite", "append", "error")
# part-<checkpoint>-<worker>-<seq>[-<job tag>]-<token>.<ext>; names without a tag are older.
PART = re.compile(r"^part-(\d{8})-(\d{4})-(\d{5})-(?:([0-9a-f]{8})-)?([0-9a-f]+)\.\w+$")

# Types a text format cannot hold, with what to do instead.
_UNWRITABLE = {
    "csv": (
        lambda t: t.is_nested() or t in (pl.Binary, pl.Object) or isinstance(t, pl.Duration),
        "write Parquet, NDJSON or IPC, or turn it into text first",
    ),
    "ndjson": (
        lambda t: t in (pl.Binary, pl.Object),
        "write Parquet or IPC, or encode it as text first",
    ),
}


def part_checkpoint(name: str) -> int | None:
    """The checkpoint a staged part file belongs to, or None for a name that is not ours."""
    match = PART.match(name)
    return int(match.group(1)) if match else None


def part_job(name: str) -> str | None:
    """The job tag in a part file's name (None: not ours, or written before names had one)."""
    match = PART.match(name)
    return match.group(4) if match else None


#: Codecs each format takes (``compression=``), the first being the default: polars'
#: Parquet default (zstd) and uncompressed IPC, which any Arrow tool maps without decoding.
COMPRESSIONS = {
    "parquet": ("zstd", "lz4", "snappy", "gzip", "brotli", "uncompressed"),
    "ipc": ("uncompressed", "lz4", "zstd"),
}
#: The Parquet codecs that take a ``compression_level``, with its range (as polars).
LEVELS = {"zstd": range(1, 23), "gzip": range(0, 10), "brotli": range(0, 12)}


def _write(
    fmt: str,
    frame: pl.DataFrame,
    handle: Any,
    compression: str | None,
    compression_level: int | None,
) -> None:
    if fmt == "parquet":
        frame.write_parquet(
            handle,
            # one of COMPRESSIONS["parquet"] (checked in FileSink), polars types it as a Literal
            compression=compression,  # type: ignore[arg-type]
            compression_level=compression_level,
            statistics=True,
        )
    elif fmt == "csv":
        frame.write_csv(handle)
    elif fmt == "ndjson":
        frame.write_ndjson(handle)
    else:
        # one of COMPRESSIONS["ipc"] (checked in FileSink), polars types it as a Literal
        frame.write_ipc(handle, compression=compression)  # type: ignore[call-overload]


class FileSink(Sink):
    """Part files of one format in directory ``path`` (any fsspec URL)."""

    def __init__(
        self,
        fmt: str,
        path: str,
        *,
        mode: str = "overwrite",
        storage_options: dict[str, Any] | None = None,
        rows_per_file: int | None = None,
        compression: str | None = None,
        compression_level: int | None = None,
    ) -> None:
        if fmt not in EXTENSIONS:
            msg = f"unknown output format {fmt!r}; expected one of {sorted(EXTENSIONS)}"
            raise SinkError(msg)
        kind = f"write_{fmt}"
        if isinstance(path, os.PathLike):
            path = os.fspath(path)
        if mode not in MODES:
            msg = f"{kind}(mode=...) must be one of {MODES}, got {mode!r}"
            raise SinkError(msg)
        if not isinstance(path, str) or not path.strip("/"):
            msg = f"{kind}() expects a directory path or URL such as 'out/totals', got {path!r}"
            raise SinkError(msg)
        if rows_per_file is not None and (
            isinstance(rows_per_file, bool)
            or not isinstance(rows_per_file, int)
            or rows_per_file < 1
        ):
            msg = f"{kind}(rows_per_file=...) must be a positive number of rows, got {rows_per_file!r}"
            raise SinkError(msg)
        codecs = COMPRESSIONS.get(fmt, ())
        if compression is not None and compression not in codecs:
            allowed = f"one of {codecs}" if codecs else "not set: the format has no compression"
            msg = f"{kind}(compression=...) must be {allowed}, got {compression!r}"
            raise SinkError(msg)
        if codecs and compression is None:
            compression = codecs[0]
        if compression_level is not None:
            levels = LEVELS.get(compression) if fmt == "parquet" else None  # type: ignore[arg-type]
            if (
                levels is None
                or isinstance(compression_level, bool)
                or compression_level not in levels
            ):
                ranges = ", ".join(f"{c} {r.start}-{r.stop - 1}" for c, r in LEVELS.items())
                msg = (
                    f"{kind}(compression_level=...) takes an integer level for Parquet's {ranges} "
                    f"(as polars' write_parquet); got {compression_level!r} with compression={compression!r}"
                )
                raise SinkError(msg)
        self.compression = compression
        self.compression_level = compression_level
        self.format = fmt
        self.kind = kind
        self.path = path.rstrip("/")
        self.mode = mode
        self.storage_options = storage_options
        self.rows_per_file = rows_per_file or DEFAULT_ROWS_PER_FILE
        self.restored_from = 0  # set by recover(): the checkpoint the run resumes after

    def process_local(self) -> str | None:
        return in_memory([self.path], self.kind)

    def describe(self) -> str:
        return f"{self.kind} {self.path!r} (mode={self.mode})"

    def validate(self, schema: pl.Schema, operator_id: str) -> None:
        rule = _UNWRITABLE.get(self.format)
        if rule is None:
            return
        refused, fix = rule
        for name, dtype in schema.items():
            if refused(dtype):
                msg = (
                    f"operator {operator_id!r}: {self.format.upper()} cannot hold the column {name!r} "
                    f"of type {dtype}; {fix}"
                )
                raise SchemaError(msg)

    def _fs(self) -> tuple[Any, str]:
        return filesystem(self.path, self.storage_options, error=SinkError)

    def visible_files(self) -> list[str]:
        """Committed files: every file below the directory whose names are not hidden."""
        fs, root = self._fs()
        try:
            if not fs.exists(root):
                return []
            if not fs.isdir(root):
                msg = f"{self.kind}: {self.path!r} is a file, not a directory; give a directory for the part files"
                raise SinkError(msg)
            return sorted(p for p in fs.find(root) if not is_hidden(p, root))
        except OSError as exc:
            msg = f"{self.kind}: cannot list {self.path!r}: {type(exc).__name__}: {exc}"
            raise SinkError(msg) from exc

    def begin(self) -> None:
        """Fresh run: apply ``mode`` to what the directory already holds; clear old staging."""
        fs, root = self._fs()
        existing = self.visible_files()
        if existing and self.mode == "overwrite":
            foreign = [
                p
                for p in existing
                if p.rsplit("/", 1)[0].rstrip("/") != root.rstrip("/")
                or part_checkpoint(p.rsplit("/", 1)[-1]) is None
            ]
            if foreign:
                shown = ", ".join(
                    repr(p[len(root.rstrip("/")) + 1 :] if p.startswith(root) else p)
                    for p in foreign[:5]
                )
                msg = (
                    f"{self.kind}(mode='overwrite'): {self.path!r} holds {len(foreign)} files that no "
                    f"arrowflow file sink wrote ({shown}{', ...' if len(foreign) > 5 else ''}); overwrite "
                    f"deletes only part files (part-…), never other files. Move them out of the folder, "
                    f"write into another folder, or use mode='append' to keep everything there"
                )
                raise SinkError(msg)
        if existing and self.mode == "error":
            shown = ", ".join(p.rsplit("/", 1)[-1] for p in existing[:3])
            msg = (
                f"{self.kind}: {self.path!r} already holds {len(existing)} files ({shown}"
                f"{', ...' if len(existing) > 3 else ''}); use mode='overwrite' to replace them or "
                f"mode='append' to add to them"
            )
            raise SinkError(msg)
        try:
            if self.mode == "overwrite" and existing:
                fs.rm(existing)
            if fs.exists(f"{root}/{STAGING}"):
                fs.rm(f"{root}/{STAGING}", recursive=True)
            fs.makedirs(f"{root}/{STAGING}", exist_ok=True)
        except OSError as exc:
            msg = f"{self.kind}: cannot prepare the output directory {self.path!r}: {type(exc).__name__}: {exc}"
            raise SinkError(msg) from exc
        self.restored_from = 0

    def recover(self, checkpoint_id: int) -> None:
        """Restored run. The runtime re-ran ``commit`` for ``checkpoint_id`` first, so whatever is
        still staged belongs to no complete checkpoint (a later one that never completed, or
        an attempt that crashed): it is deleted, never committed."""
        self.restored_from = checkpoint_id
        self._drop_staged(create=True)

    def discard_staged(self) -> None:
        """The run failed for good: its staged part files belong to no complete checkpoint."""
        self._drop_staged(create=False)

    def _drop_staged(self, *, create: bool) -> None:
        fs, root = self._fs()
        staging = f"{root}/{STAGING}"
        try:
            if not fs.exists(staging):
                if create:
                    fs.makedirs(staging, exist_ok=True)
                return
            doomed = [
                path
                for path in fs.ls(staging, detail=False)
                if part_checkpoint(path.rstrip("/").rsplit("/", 1)[-1]) is not None
            ]
            if doomed:
                fs.rm(doomed)
        except OSError as exc:
            msg = f"{self.kind}: cannot clean the staging folder of {self.path!r}: {type(exc).__name__}: {exc}"
            raise SinkError(msg) from exc

    def rollback(self, checkpoint_id: int) -> RolledBack:
        """Delete the committed part files of this job whose checkpoint is after ``checkpoint_id``."""
        tag = self.job.tag if self.job is not None else None
        fs, root = self._fs()
        try:
            names = (
                [] if not fs.exists(root) else [p.rstrip("/") for p in fs.ls(root, detail=False)]
            )
            doomed = [
                (p, part_checkpoint(p.rsplit("/", 1)[-1]))
                for p in names
                if tag is not None and part_job(p.rsplit("/", 1)[-1]) == tag
            ]
            doomed = [
                (p, epoch) for p, epoch in doomed if epoch is not None and epoch > checkpoint_id
            ]
            if doomed:
                fs.rm([p for p, _ in doomed])
        except OSError as exc:
            msg = (
                f"{self.kind}: cannot remove the part files in {self.path!r} committed after checkpoint "
                f"{checkpoint_id}: {type(exc).__name__}: {exc}"
            )
            raise SinkError(msg) from exc
        return RolledBack(
            self.describe(),
            checkpoint_id,
            "part files",
            len(doomed),
            sorted({epoch for _, epoch in doomed if epoch is not None}),
        )

    def leases(self) -> list[tuple[str, dict[str, Any] | None]]:
        return [(self.path, self.storage_options)]

    def open_writer(self, worker: int, parallelism: int, operator_id: str) -> SinkWriter:
        return _FileWriter(self, worker)

    def commit(self, checkpoint_id: int, staged: list[Any]) -> None:
        fs, root = self._fs()
        for names in staged:
            for name in names or ():
                if not isinstance(name, str) or part_checkpoint(name) is None:
                    msg = (
                        f"{self.kind}: checkpoint {checkpoint_id} lists {name!r} as staged output of "
                        f"{self.path!r}, which is not one of its part file names; refusing to move it"
                    )
                    raise SinkError(msg)
                source, target = f"{root}/{STAGING}/{name}", f"{root}/{name}"
                try:
                    if fs.exists(source):
                        fs.mv(source, target)
                        continue
                    if fs.exists(target):
                        continue  # committed before a crash: commit is idempotent
                except OSError as exc:
                    msg = f"{self.kind}: cannot commit {source!r} to {target!r}: {type(exc).__name__}: {exc}"
                    raise SinkError(msg) from exc
                msg = (
                    f"{self.kind}: the staged file {source!r} of checkpoint {checkpoint_id} is missing and "
                    f"was never committed; something removed it during the run{memory_hint(self.path)}"
                )
                raise SinkError(msg)


class _FileWriter(SinkWriter):
    def __init__(self, sink: FileSink, worker: int) -> None:
        self.sink = sink
        self.worker = worker
        self.token = secrets.token_hex(4)
        self.buffer: list[pl.DataFrame] = []
        self.buffered = 0
        self.staged: list[str] = []
        self.seq = 0
        # The last checkpoint prepared (or restored, or the newest id when the attempt began):
        # a file flushed early is named after the next one, newer than any existing checkpoint.
        floor = sink.job.first_checkpoint - 1 if sink.job is not None else 0
        self.checkpoint = max(sink.restored_from, floor)
        self.tag = f"{sink.job.tag}-" if sink.job is not None else ""
        self.fs, self.root = sink._fs()

    def write(self, batch: pl.DataFrame) -> None:
        if not batch.height:
            return
        self.buffer.append(batch)
        self.buffered += batch.height
        if self.buffered >= self.sink.rows_per_file:
            self._flush(self.checkpoint + 1)

    def _flush(self, checkpoint_id: int) -> None:
        if not self.buffered:
            return
        frame = (
            pl.concat(self.buffer, how="vertical_relaxed")
            if len(self.buffer) > 1
            else self.buffer[0]
        )
        self.buffer, self.buffered = [], 0
        limit = self.sink.rows_per_file
        for offset in range(0, frame.height, limit):
            name = (
                f"part-{checkpoint_id:08d}-{self.worker:04d}-{self.seq:05d}-{self.tag}{self.token}."
                f"{EXTENSIONS[self.sink.format]}"
            )
            self.seq += 1
            path = f"{self.root}/{STAGING}/{name}"
            try:
                self.fs.makedirs(f"{self.root}/{STAGING}", exist_ok=True)
                with self.fs.open(path, "wb") as handle:
                    _write(
                        self.sink.format,
                        frame.slice(offset, limit),
                        handle,
                        self.sink.compression,
                        self.sink.compression_level,
                    )
            except (OSError, pl.exceptions.PolarsError) as exc:
                # A full disk: polars' Parquet writer reports the OSError as a ComputeError.
                # Whatever was written of the file is no part file: remove it.
                self._remove_partial(path)
                msg = f"{self.sink.kind}: cannot write {path!r}: {type(exc).__name__}: {exc}"
                raise SinkError(msg) from exc
            self.staged.append(name)

    def _remove_partial(self, path: str) -> None:
        try:
            if self.fs.exists(path):
                self.fs.rm(path)
        except OSError:
            pass  # the write's own error says more; the next run's begin/recover clears staging

    def prepare_commit(self, checkpoint_id: int) -> Any:
        self._flush(checkpoint_id)
        staged, self.staged = self.staged, []
        self.checkpoint, self.seq = checkpoint_id, 0
        return staged or None
