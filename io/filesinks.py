"""File sinks: Parquet, CSV, NDJSON and Arrow IPC part files in a directory, written exactly once.

Each worker writes its rows to part files under hidden staging names
(``.staging/part-<checkpoint>-<worker>-<seq>.<ext>``) and, at ``prepare_commit``, reports
them. The coordinator's ``commit`` moves each staged file to its visible name
(``part-<checkpoint>-<worker>-<seq>.<ext>``) once the checkpoint is durable. Commit is
idempotent: a file already moved is skipped, so re-running it after a crash is safe.
Readers (arrowflow, polars, Spark) skip names starting with ``_`` or ``.``, so they only
ever see complete, committed files.
"""

from __future__ import annotations

import io as _stdio
from typing import Any

import polars as pl

from arrowflow.errors import SinkError
from arrowflow.io._fs import filesystem, is_hidden
from arrowflow.sinks import Sink, SinkWriter

EXTENSIONS = {"parquet": "parquet", "csv": "csv", "ndjson": "ndjson", "ipc": "arrow"}
STAGING = ".staging"
DEFAULT_ROWS_PER_FILE = 2_000_000
MODES = ("overwrite", "append", "error")


def _encode(fmt: str, frame: pl.DataFrame) -> bytes:
    buffer = _stdio.BytesIO()
    if fmt == "parquet":
        frame.write_parquet(buffer, compression="zstd", statistics=True)
    elif fmt == "csv":
        frame.write_csv(buffer)
    elif fmt == "ndjson":
        frame.write_ndjson(buffer)
    else:
        frame.write_ipc(buffer, compression="uncompressed")
    return buffer.getvalue()


class FileSink(Sink):
    def __init__(self, fmt: str, path: str, *, mode: str = "overwrite",
                 storage_options: dict[str, Any] | None = None, rows_per_file: int | None = None) -> None:
        if fmt not in EXTENSIONS:
            msg = f"unknown output format {fmt!r}; expected one of {sorted(EXTENSIONS)}"
            raise SinkError(msg)
        if mode not in MODES:
            msg = f"write_{fmt}(mode=...) must be one of {MODES}, got {mode!r}"
            raise SinkError(msg)
        if not isinstance(path, str) or not path:
            msg = f"write_{fmt}() expects a directory path or URL, got {path!r}"
            raise SinkError(msg)
        if rows_per_file is not None and rows_per_file < 1:
            msg = f"rows_per_file must be positive, got {rows_per_file}"
            raise SinkError(msg)
        self.format = fmt
        self.kind = f"write_{fmt}"
        self.path = path.rstrip("/")
        self.mode = mode
        self.storage_options = storage_options
        self.rows_per_file = rows_per_file or DEFAULT_ROWS_PER_FILE

    def describe(self) -> str:
        return f"{self.kind} {self.path!r} (mode={self.mode})"

    def validate(self, schema: pl.Schema, operator_id: str) -> None:
        if self.format == "csv":
            nested = [c for c, t in schema.items() if t.is_nested()]
            if nested:
                msg = (f"operator {operator_id!r}: CSV cannot hold the nested column {nested[0]!r} "
                       f"({schema[nested[0]]}); write Parquet, NDJSON or IPC, or flatten it first")
                raise SinkError(msg)

    def _fs(self) -> tuple[Any, str]:
        return filesystem(self.path, self.storage_options)

    def begin(self) -> None:
        """Fresh run: apply ``mode`` to what the directory already holds."""
        fs, root = self._fs()
        try:
            existing = [p for p in fs.find(root) if not is_hidden(p, root)] if fs.exists(root) else []
        except OSError as exc:
            msg = f"{self.kind}: cannot list {self.path!r}: {exc}"
            raise SinkError(msg) from exc
        if existing and self.mode == "error":
            msg = (f"{self.kind}: {self.path!r} already holds {len(existing)} files; "
                   f"use mode='overwrite' to replace them or mode='append' to add to them")
            raise SinkError(msg)
        if self.mode == "overwrite":
            for path in existing:
                fs.rm(path)
        if fs.exists(f"{root}/{STAGING}"):
            fs.rm(f"{root}/{STAGING}", recursive=True)
        try:
            fs.makedirs(f"{root}/{STAGING}", exist_ok=True)
        except OSError as exc:
            msg = f"{self.kind}: cannot create the output directory {self.path!r}: {exc}"
            raise SinkError(msg) from exc

    def recover(self, checkpoint_id: int) -> None:
        """Restored run: staged files of checkpoints after ``checkpoint_id`` were never committed."""
        fs, root = self._fs()
        staging = f"{root}/{STAGING}"
        if not fs.exists(staging):
            fs.makedirs(staging, exist_ok=True)
            return
        for path in fs.ls(staging, detail=False):
            name = path.rsplit("/", 1)[-1]
            try:
                staged_for = int(name.split("-")[1])
            except (IndexError, ValueError):
                continue
            if staged_for > checkpoint_id:
                fs.rm(path)

    def open_writer(self, worker: int, parallelism: int, operator_id: str) -> SinkWriter:
        return _FileWriter(self, worker)

    def commit(self, checkpoint_id: int, staged: list[Any]) -> None:
        fs, root = self._fs()
        for names in staged:
            for name in names:
                source, target = f"{root}/{STAGING}/{name}", f"{root}/{name}"
                if fs.exists(source):
                    try:
                        fs.mv(source, target)
                    except OSError as exc:
                        msg = f"{self.kind}: cannot commit {source!r} to {target!r}: {exc}"
                        raise SinkError(msg) from exc
                elif not fs.exists(target):
                    msg = (f"{self.kind}: staged file {source!r} of checkpoint {checkpoint_id} is missing "
                           f"and was never committed; the output directory was changed during the run")
                    raise SinkError(msg)


class _FileWriter(SinkWriter):
    def __init__(self, sink: FileSink, worker: int) -> None:
        self.sink = sink
        self.worker = worker
        self.buffer: list[pl.DataFrame] = []
        self.buffered = 0
        self.staged: list[str] = []
        self.seq = 0
        self.checkpoint = 0
        self.fs, self.root = sink._fs()

    def write(self, batch: pl.DataFrame) -> None:
        self.buffer.append(batch)
        self.buffered += batch.height
        if self.buffered >= self.sink.rows_per_file:
            self._flush(self.checkpoint + 1)

    def _flush(self, checkpoint_id: int) -> None:
        if not self.buffered:
            return
        frame = pl.concat(self.buffer, how="vertical_relaxed") if len(self.buffer) > 1 else self.buffer[0]
        self.buffer, self.buffered = [], 0
        name = f"part-{checkpoint_id:08d}-{self.worker:04d}-{self.seq:05d}.{EXTENSIONS[self.sink.format]}"
        self.seq += 1
        path = f"{self.root}/{STAGING}/{name}"
        try:
            self.fs.makedirs(f"{self.root}/{STAGING}", exist_ok=True)
            with self.fs.open(path, "wb") as handle:
                handle.write(_encode(self.sink.format, frame))
        except OSError as exc:
            msg = f"{self.sink.kind}: cannot write {path!r}: {exc}"
            raise SinkError(msg) from exc
        self.staged.append(name)

    def prepare_commit(self, checkpoint_id: int) -> Any:
        self._flush(checkpoint_id)
        staged, self.staged = self.staged, []
        self.checkpoint, self.seq = checkpoint_id, 0
        return staged or None
