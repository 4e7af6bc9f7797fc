"""Checkpoint storage: the layout, the atomic manifest, verification, retention and reading.

Layout under any fsspec URL (DESIGN.md §5)::

    <dir>/chk-00000042/_MANIFEST.json      written last; the checkpoint exists iff it verifies
    <dir>/chk-00000042/sources.json        split offsets of every source
    <dir>/chk-00000042/state/<op>/...      state snapshot files
    <dir>/shared/...                       incremental state files several checkpoints share

The manifest lists every file with its size and sha256, the sinks' staged output, the plan
fingerprint (per operator, so a refused restore can name what changed), and carries a
checksum of its own content. It is written atomically: to a temporary name then renamed on a
local filesystem, or with a single create-if-absent put (``open(path, "xb")``) on object
stores, so a reader never sees half a manifest.

Retention keeps the newest ``keep`` complete checkpoints and deletes older ones, together
with shared files that no kept manifest references; it never deletes the newest complete
checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import fsspec
import polars as pl

from arrowflow.errors import CheckpointError

MANIFEST = "_MANIFEST.json"
SOURCES = "sources.json"
FORMAT_VERSION = 1


def chk_dir(checkpoint_id: int) -> str:
    return f"chk-{checkpoint_id:08d}"


def _digest(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


@dataclass
class Manifest:
    id: int
    time: float
    flow: str
    fingerprint: str
    operators: dict[str, str]
    parallelism: int
    max_parallelism: int
    sources: dict[str, Any]
    state: list[dict[str, Any]]
    sinks: dict[str, list[Any]]
    files: list[dict[str, Any]] = field(default_factory=list)
    final: bool = False

    def to_bytes(self) -> bytes:
        body = {
            "format": FORMAT_VERSION, "id": self.id, "time": self.time, "flow": self.flow,
            "fingerprint": self.fingerprint, "operators": self.operators, "parallelism": self.parallelism,
            "max_parallelism": self.max_parallelism, "sources": self.sources, "state": self.state,
            "sinks": self.sinks, "files": self.files, "final": self.final,
        }
        text = json.dumps(body, sort_keys=True, default=str)
        body["checksum"] = _digest(text.encode())
        return json.dumps(body, sort_keys=True, indent=1, default=str).encode()

    @classmethod
    def from_bytes(cls, payload: bytes) -> Manifest:
        body = json.loads(payload)
        checksum = body.pop("checksum", None)
        if checksum != _digest(json.dumps(body, sort_keys=True, default=str).encode()):
            msg = "manifest checksum does not match its content"
            raise CheckpointError(msg)
        body.pop("format", None)
        return cls(**body)

    def size(self) -> int:
        return sum(int(f["size"]) for f in self.files)


class CheckpointStorage:
    """Checkpoints of one job under one fsspec URL."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None, *, keep: int = 3) -> None:
        if keep < 1:
            msg = f"keep must be at least 1 checkpoint, got {keep}"
            raise CheckpointError(msg)
        self.url = url.rstrip("/")
        try:
            self.fs, self.root = fsspec.core.url_to_fs(self.url, **(storage_options or {}))
        except (ImportError, ValueError) as exc:
            msg = f"cannot open checkpoint storage {url!r}: {exc}"
            raise CheckpointError(msg) from exc
        self.root = self.root.rstrip("/")
        self.keep = keep
        self.storage_options = storage_options

    @property
    def local(self) -> bool:
        protocol = self.fs.protocol
        return "file" in (protocol if isinstance(protocol, tuple) else (protocol,))

    def path(self, relative: str) -> str:
        return f"{self.root}/{relative}"

    def ensure(self) -> None:
        try:
            self.fs.makedirs(self.root, exist_ok=True)
        except OSError as exc:
            msg = f"cannot create the checkpoint directory {self.url!r}: {exc}"
            raise CheckpointError(msg) from exc

    # ------------------------------------------------------------------ writing
    def write_file(self, relative: str, payload: bytes) -> dict[str, Any]:
        path = self.path(relative)
        self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        with self.fs.open(path, "wb") as handle:
            handle.write(payload)
        return {"path": relative, "size": len(payload), "sha256": _digest(payload)}

    def write_manifest(self, manifest: Manifest) -> None:
        """Atomically publish the manifest: the checkpoint exists from this moment on."""
        payload = manifest.to_bytes()
        final = self.path(f"{chk_dir(manifest.id)}/{MANIFEST}")
        if self.fs.exists(final):
            msg = f"checkpoint {manifest.id} already exists in {self.url!r}; two jobs share one checkpoint_dir?"
            raise CheckpointError(msg)
        try:
            if self.local:
                temporary = self.path(f"{chk_dir(manifest.id)}/.{MANIFEST}.{time.time_ns()}")
                with self.fs.open(temporary, "wb") as handle:
                    handle.write(payload)
                self.fs.mv(temporary, final)
            else:
                with self.fs.open(final, "xb") as handle:
                    handle.write(payload)
        except FileExistsError as exc:
            msg = f"checkpoint {manifest.id} was created by someone else in {self.url!r} at the same time"
            raise CheckpointError(msg) from exc

    # ------------------------------------------------------------------ reading
    def checkpoint_ids(self) -> list[int]:
        """Ids of every chk-* directory, complete or not, newest first."""
        if not self.fs.exists(self.root):
            return []
        ids = []
        for entry in self.fs.ls(self.root, detail=False):
            name = entry.rstrip("/").rsplit("/", 1)[-1]
            if name.startswith("chk-") and name[4:].isdigit():
                ids.append(int(name[4:]))
        return sorted(ids, reverse=True)

    def read_manifest(self, checkpoint_id: int, *, verify_files: bool = True) -> Manifest:
        """The manifest of a checkpoint, verified (CheckpointError says what is wrong)."""
        path = self.path(f"{chk_dir(checkpoint_id)}/{MANIFEST}")
        try:
            with self.fs.open(path, "rb") as handle:
                payload = handle.read()
        except FileNotFoundError:
            msg = f"checkpoint {checkpoint_id} has no manifest (it never completed)"
            raise CheckpointError(msg) from None
        try:
            manifest = Manifest.from_bytes(payload)
        except (ValueError, TypeError) as exc:
            msg = f"checkpoint {checkpoint_id}: the manifest is damaged ({exc})"
            raise CheckpointError(msg) from None
        except CheckpointError as exc:
            msg = f"checkpoint {checkpoint_id}: {exc}"
            raise CheckpointError(msg) from None
        if verify_files:
            for entry in manifest.files:
                self._verify(checkpoint_id, entry)
        return manifest

    def _verify(self, checkpoint_id: int, entry: dict[str, Any]) -> None:
        path = self.path(entry["path"])
        try:
            with self.fs.open(path, "rb") as handle:
                payload = handle.read()
        except FileNotFoundError:
            msg = f"checkpoint {checkpoint_id}: file {entry['path']!r} is missing"
            raise CheckpointError(msg) from None
        if len(payload) != int(entry["size"]) or _digest(payload) != entry["sha256"]:
            msg = (f"checkpoint {checkpoint_id}: file {entry['path']!r} is damaged "
                   f"({len(payload)} bytes, expected {entry['size']}; checksum mismatch)")
            raise CheckpointError(msg)

    def latest(self, *, report: bool = True) -> Manifest | None:
        """The newest checkpoint whose manifest and files verify; damaged ones are reported."""
        for checkpoint_id in self.checkpoint_ids():
            try:
                return self.read_manifest(checkpoint_id)
            except CheckpointError as exc:
                if report and "never completed" not in str(exc):
                    warnings.warn(f"skipping checkpoint {checkpoint_id} in {self.url}: {exc}", stacklevel=3)
        return None

    def find(self, checkpoint_id: int) -> Manifest:
        return self.read_manifest(checkpoint_id)

    # ------------------------------------------------------------------ retention
    def prune(self) -> list[int]:
        """Delete all but the newest ``keep`` complete checkpoints (and incomplete ones older
        than the newest complete one); keep every shared file a kept manifest references."""
        complete: list[Manifest] = []
        removed = []
        for checkpoint_id in self.checkpoint_ids():
            if len(complete) >= self.keep or (complete and not self._has_manifest(checkpoint_id)):
                removed.append(checkpoint_id)
                continue
            try:
                complete.append(self.read_manifest(checkpoint_id, verify_files=False))
            except CheckpointError:
                if complete:
                    removed.append(checkpoint_id)
        if not complete:
            return []
        referenced = {entry["path"] for m in complete for entry in m.files}
        for checkpoint_id in removed:
            self.fs.rm(self.path(chk_dir(checkpoint_id)), recursive=True)
        shared = self.path("shared")
        if self.fs.exists(shared):
            for path in self.fs.find(shared):
                relative = path[len(self.root) + 1 :] if path.startswith(self.root) else path
                if relative not in referenced:
                    self.fs.rm(path)
        return removed

    def _has_manifest(self, checkpoint_id: int) -> bool:
        return self.fs.exists(self.path(f"{chk_dir(checkpoint_id)}/{MANIFEST}"))

    # ------------------------------------------------------------------ inspection
    def list(self) -> pl.DataFrame:
        """One row per complete checkpoint: id, time, size, sources, state files, final."""
        rows = []
        for checkpoint_id in self.checkpoint_ids():
            try:
                manifest = self.read_manifest(checkpoint_id, verify_files=False)
            except CheckpointError:
                continue
            rows.append({
                "id": manifest.id,
                "time": manifest.time,
                "size_bytes": manifest.size(),
                "state_files": len(manifest.state),
                "parallelism": manifest.parallelism,
                "final": manifest.final,
                "offsets": json.dumps(manifest.sources, sort_keys=True),
            })
        schema = {"id": pl.Int64, "time": pl.Float64, "size_bytes": pl.Int64, "state_files": pl.Int64,
                  "parallelism": pl.Int64, "final": pl.Boolean, "offsets": pl.String}
        frame = pl.DataFrame(rows, schema=schema)
        return frame.with_columns(pl.from_epoch(pl.col("time"), time_unit="s").alias("time"))


def operator_differences(saved: dict[str, str], current: dict[str, str]) -> list[str]:
    """Human-readable list of operators that differ between two plans."""
    lines = []
    for op in sorted(set(saved) | set(current)):
        if op not in current:
            lines.append(f"{op!r} is in the checkpoint but not in the flow")
        elif op not in saved:
            lines.append(f"{op!r} is new in the flow")
        elif saved[op] != current[op]:
            lines.append(f"{op!r} changed (keys, aggregations, state or schema)")
    return lines
