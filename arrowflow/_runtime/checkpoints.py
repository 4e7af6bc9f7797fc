"""Checkpoint storage: the layout, the atomic manifest, verification, retention and reading.

Layout under any fsspec URL (the protocol: docs/checkpoints.md)::

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

import base64
import dataclasses
import hashlib
import json
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any, NoReturn

import fsspec
import polars as pl
import pyarrow as pa

from arrowflow._foundation.warn import warn
from arrowflow.errors import CheckpointError
from arrowflow.state import StateFile, StoreSpec

MANIFEST = "_MANIFEST.json"
#: Written into a checkpoint's folder when a run restores an older checkpoint and rolls back
#: the output of the later ones: a superseded checkpoint is never restored again (its output
#: is gone), and retention removes it once a newer checkpoint completes.
SUPERSEDED = "_SUPERSEDED.json"
#: The job's tag, which names its output (``CheckpointStorage.job_tag``).
JOB_FILE = "_JOB.json"
SOURCES = "sources.json"
FORMAT_VERSION = 1
#: A manifest larger than this is damaged (real ones are kilobytes to a few megabytes).
MAX_MANIFEST_BYTES = 256 * 2**20


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
    stores: dict[str, Any] = field(default_factory=dict)  # store name -> encoded StoreSpec

    def to_bytes(self) -> bytes:
        body = {
            "format": FORMAT_VERSION,
            "id": self.id,
            "time": self.time,
            "flow": self.flow,
            "fingerprint": self.fingerprint,
            "operators": self.operators,
            "parallelism": self.parallelism,
            "max_parallelism": self.max_parallelism,
            "sources": self.sources,
            "state": self.state,
            "sinks": self.sinks,
            "files": self.files,
            "final": self.final,
            "stores": self.stores,
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
        manifest = cls(**body)
        manifest.check_types()
        manifest.check_paths()
        return manifest

    def check_types(self) -> None:
        """Refuse a manifest whose fields have the wrong JSON types or impossible values.

        A checksum recomputed over an edited body verifies; what restores, ``read_state`` and
        ``list_checkpoints`` then do with a string where a count belongs, a key-group range
        outside ``[0, max_parallelism)`` or an undecodable store spec would be a raw
        TypeError, or worse, a restore that goes on with the wrong state. So every field is checked here, before anything acts on it.
        """

        def wrong(what: str, value: Any, expected: str) -> NoReturn:
            msg = f"the manifest's {what} is {value!r:.80}, expected {expected}"
            raise CheckpointError(msg)

        def count(what: str, value: Any, low: int) -> int:
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value < 2**63:
                wrong(what, value, f"an integer from {low} to 2**63-1")
            return value

        count("id", self.id, 0)
        if (
            not isinstance(self.time, (int, float))
            or isinstance(self.time, bool)
            or not math.isfinite(self.time)
        ):
            wrong("time", self.time, "a number of seconds")
        for what in ("flow", "fingerprint"):
            if not isinstance(getattr(self, what), str):
                wrong(what, getattr(self, what), "a string")
        if not isinstance(self.final, bool):
            wrong("final", self.final, "true or false")
        count("parallelism", self.parallelism, 1)
        groups = count("max_parallelism", self.max_parallelism, 1)
        if not _str_map(self.operators, str):
            wrong("operators", self.operators, "an object of operator ids to fingerprints")
        if not _str_map(self.sources, dict):
            wrong("sources", self.sources, "an object of source ids to offsets")
        for source, offsets in self.sources.items():
            finished = offsets.get("finished", [])
            if not isinstance(finished, list) or not all(
                isinstance(split, str) for split in finished
            ):
                wrong(f"finished splits of source {source!r}", finished, "a list of split ids")
            for key in ("positions", "mtimes"):
                if not _str_map(offsets.get(key, {}), object):
                    wrong(
                        f"{key} of source {source!r}",
                        offsets.get(key),
                        "an object keyed by split id",
                    )
        if not _str_map(self.sinks, list):
            wrong("sinks", self.sinks, "an object of sink ids to lists of staged output")
        if not isinstance(self.files, list) or not all(
            isinstance(entry, dict) for entry in self.files
        ):
            wrong("files", self.files, "a list of objects")
        for entry in self.files:
            if not {"path", "size", "sha256"} <= set(entry):
                wrong("file entry", entry, "an object with path, size and sha256")
            count(f"size of file {entry['path']!r}", entry["size"], 0)
            if not isinstance(entry["sha256"], str) or not _SHA256.fullmatch(entry["sha256"]):
                wrong(f"sha256 of file {entry['path']!r}", entry["sha256"], "64 hexadecimal digits")
        if not _str_map(self.stores, dict):
            wrong("stores", self.stores, "an object of store names to store specs")
        for name, spec in self.stores.items():
            try:
                decode_spec(spec)
            except Exception as exc:  # any failure to decode means a damaged spec
                wrong(
                    f"spec of store {name!r}",
                    spec,
                    f"a store spec that decodes ({type(exc).__name__}: {exc})",
                )
        keys = {f.name for f in dataclasses.fields(StateFile)}
        if not isinstance(self.state, list) or not all(
            isinstance(entry, dict) for entry in self.state
        ):
            wrong("state", self.state, "a list of objects")
        for entry in self.state:
            if set(entry) != keys:
                wrong("state file entry", entry, f"an object of {', '.join(sorted(keys))}")
            if not isinstance(
                entry["store"], str
            ):  # not always in stores: a window's watermark has no spec
                wrong(f"store of state file {entry['path']!r}", entry["store"], "a store name")
            key_groups = entry["key_groups"]
            if (
                not isinstance(key_groups, list)
                or len(key_groups) != 2
                or not all(isinstance(g, int) and not isinstance(g, bool) for g in key_groups)
                or not 0 <= key_groups[0] <= key_groups[1] <= groups
            ):
                wrong(
                    f"key groups of state file {entry['path']!r}",
                    key_groups,
                    f"[first, stop) with 0 <= first <= stop <= max_parallelism ({groups})",
                )
            if not isinstance(entry["format"], str) or not isinstance(entry["extra"], dict):
                wrong(
                    f"format or extra of state file {entry['path']!r}",
                    entry,
                    "a string format and an object",
                )
            count(f"size of state file {entry['path']!r}", entry["size"], 0)

    def check_paths(self) -> None:
        """Refuse a manifest that names a file outside the layout it belongs to.

        Every file a checkpoint lists (state files, ``sources.json``) lies under its own
        ``chk-<id>/`` folder or under ``shared/``; staged sink output is named by plain file
        names that the sink resolves inside its own folder. A checksum only proves that the
        manifest is whole, not who wrote it: a crafted ``../`` must never reach the filesystem.
        """
        tops = (chk_dir(self.id), "shared")
        try:
            listed = set()
            for entry in self.files:
                _check_layout(entry["path"], tops, "file")
                listed.add(entry["path"])
            for entry in self.state:
                _check_layout(entry["path"], tops, f"state file of store {entry.get('store')!r}")
                if entry["path"] not in listed:
                    msg = (
                        f"state file {entry['path']!r} is not among the files the manifest verifies"
                    )
                    raise CheckpointError(msg)
            for sink, items in self.sinks.items():
                for name in _strings(items):
                    if "/" in name or "\\" in name or "\x00" in name or name in (".", ".."):
                        msg = (
                            f"sink {sink!r} lists staged output {name!r}, which is a path, not a name inside "
                            f"the sink's own folder"
                        )
                        raise CheckpointError(msg)
        except (KeyError, TypeError, AttributeError) as exc:
            msg = f"the manifest's file lists are malformed ({type(exc).__name__}: {exc})"
            raise CheckpointError(msg) from None

    def size(self) -> int:
        return sum(int(f["size"]) for f in self.files)


#: One component of a path a manifest may name: what operator ids, store names and the
#: snapshot files' names are made of (no separators, no drive letters, no escapes).
_COMPONENT = re.compile(r"[A-Za-z0-9_.=+-]+")


def _check_layout(path: Any, tops: tuple[str, ...], what: str) -> None:
    """``path`` must be relative, made of plain components, none ``.`` or ``..``, below one of ``tops``."""
    parts = path.split("/") if isinstance(path, str) else []
    if (
        len(parts) < 2
        or parts[0] not in tops
        or any(part in (".", "..") or not _COMPONENT.fullmatch(part) for part in parts)
    ):
        msg = (
            f"{what} {path!r} is outside the checkpoint's layout: expected a relative path of plain names "
            f"under {' or '.join(t + '/' for t in tops)}"
        )
        raise CheckpointError(msg)


_SHA256 = re.compile(r"[0-9a-f]{64}")


def _str_map(value: Any, kind: type) -> bool:
    """Whether ``value`` is a JSON object of string keys to values of type ``kind``."""
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, kind) for k, v in value.items()
    )


def _strings(value: Any) -> Any:
    """Every string in a JSON value (dict keys and values, list items), depth first."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(key)
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


class CheckpointStorage:
    """Checkpoints of one job under one fsspec URL."""

    def __init__(
        self, url: str, storage_options: dict[str, Any] | None = None, *, keep: int = 3
    ) -> None:
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
        #: The oldest complete checkpoint the last prune() kept: no restart of this run restores
        #: an older one of its own (a damaged newer one is skipped for at most this one).
        self.oldest_kept: int | None = None
        self.storage_options = storage_options

    @property
    def local(self) -> bool:
        protocol = self.fs.protocol
        return "file" in (protocol if isinstance(protocol, tuple) else (protocol,))

    def refresh(self) -> None:
        """Forget fsspec's cached listings: workers write files this process has listed before,
        and an object store's cached "not there" would hide them."""
        self.fs.invalidate_cache()

    def path(self, relative: str) -> str:
        return f"{self.root}/{relative}"

    def job_tag(self) -> str:
        """Names the output of the job of this directory, for every run on it, also once the
        directory is moved or reached by another path (a symlink, another mount): the first
        run writes it into the directory (derived from the URL then, as it was before the
        file existed), later runs read it back. A rollback removes only output with this
        tag, so a tag that changed with the path would leave the moved job's later output in
        place and the replay would write it twice."""
        path = self.path(JOB_FILE)
        if self.fs.exists(path):
            tag = self._small_json_field(0, path, "tag")
            if not isinstance(tag, str) or not re.fullmatch(r"[0-9a-f]{8}", tag):
                msg = (
                    f"the job file {path!r} of checkpoint directory {self.url!r} is damaged "
                    f'(expected {{"tag": "<8 hex digits>"}}); it names the job\'s output for '
                    f"rollbacks: put back a copy, or start over in a new checkpoint_dir"
                )
                raise CheckpointError(msg)
            return tag
        protocol = self.fs.protocol
        name = f"{protocol if isinstance(protocol, str) else protocol[0]}://{self.root}"
        tag = hashlib.sha256(name.encode()).hexdigest()[:8]
        self._write_whole(JOB_FILE, json.dumps({"tag": tag}).encode())
        return tag

    def _write_whole(self, relative: str, payload: bytes) -> None:
        """Write a small file that is there whole or not at all, whatever stops the write (a
        kill, a full disk): on local disk under a temporary name, then renamed; an object
        store's put publishes the object whole by itself. A job file cut short would be
        refused as damaged by every later run."""
        final = self.path(relative)
        try:
            self.fs.makedirs(final.rsplit("/", 1)[0], exist_ok=True)
            if not self.local:
                with self.fs.open(final, "wb") as handle:
                    handle.write(payload)
                return
            temporary = self.path(f".{relative}.{time.time_ns()}")
            try:
                with self.fs.open(temporary, "wb") as handle:
                    handle.write(payload)
                self.fs.mv(temporary, final)
            finally:
                if self.fs.exists(temporary):
                    self.fs.rm(temporary)
        except OSError as exc:
            msg = f"cannot write {final!r} in checkpoint directory {self.url!r}: {exc}"
            raise CheckpointError(msg) from exc

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
            self.fs.makedirs(self.path(chk_dir(manifest.id)), exist_ok=True)
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
        self.refresh()
        if not self.fs.exists(self.root):
            return []
        ids = []
        for entry in self.fs.ls(self.root, detail=False):
            name = entry.rstrip("/").rsplit("/", 1)[-1]
            if (
                name.startswith("chk-") and name[4:].isascii() and name[4:].isdigit()
            ):  # not '²' or '٣'
                ids.append(int(name[4:]))
        return sorted(ids, reverse=True)

    def read_manifest(self, checkpoint_id: int, *, verify_files: bool = True) -> Manifest:
        """The manifest of a checkpoint, verified (CheckpointError says what is wrong)."""
        path = self.path(f"{chk_dir(checkpoint_id)}/{MANIFEST}")
        if verify_files:
            self.refresh()
        try:
            payload = self._read_regular(checkpoint_id, path, MAX_MANIFEST_BYTES)
        except FileNotFoundError:
            msg = f"checkpoint {checkpoint_id} has no manifest (it never completed)"
            raise CheckpointError(msg) from None
        if len(payload) > MAX_MANIFEST_BYTES:
            msg = f"checkpoint {checkpoint_id}: the manifest is damaged (larger than {MAX_MANIFEST_BYTES} bytes)"
            raise CheckpointError(msg)
        try:
            manifest = Manifest.from_bytes(payload)
        except (
            ValueError,
            TypeError,
            RecursionError,
        ) as exc:  # RecursionError: JSON nested too deep
            msg = f"checkpoint {checkpoint_id}: the manifest is damaged ({exc})"
            raise CheckpointError(msg) from None
        except CheckpointError as exc:
            msg = f"checkpoint {checkpoint_id}: {exc}"
            raise CheckpointError(msg) from None
        if manifest.id != checkpoint_id:
            msg = (
                f"checkpoint {checkpoint_id}: its folder holds the manifest of checkpoint {manifest.id!r} "
                f"(copied there?)"
            )
            raise CheckpointError(msg)
        if verify_files:
            for entry in manifest.files:
                self._verify(checkpoint_id, entry)
        return manifest

    def _verify(self, checkpoint_id: int, entry: dict[str, Any]) -> None:
        path = self.path(entry["path"])
        try:
            payload = self._read_regular(checkpoint_id, path, int(entry["size"]))
        except FileNotFoundError:
            msg = f"checkpoint {checkpoint_id}: file {entry['path']!r} is missing"
            raise CheckpointError(msg) from None
        if len(payload) != int(entry["size"]) or _digest(payload) != entry["sha256"]:
            msg = (
                f"checkpoint {checkpoint_id}: file {entry['path']!r} is damaged "
                f"({len(payload)} bytes, expected {entry['size']}; checksum mismatch)"
            )
            raise CheckpointError(msg)

    def _read_regular(self, checkpoint_id: int, path: str, limit: int) -> bytes:
        """At most ``limit + 1`` bytes of ``path``, which must be a regular file, not a symlink:
        arrowflow writes no symlinks, and one to ``/dev/zero``, a FIFO or a file elsewhere
        would be read without end, block, or be read as this checkpoint's."""
        info = self.fs.info(path)
        if info.get("islink") or info.get("type", "file") != "file":
            kind = (
                f"a symlink to {info.get('destination')!r}"
                if info.get("islink")
                else f"a {info.get('type')!r}"
            )
            msg = (
                f"checkpoint {checkpoint_id}: {path!r} is {kind}, not a regular file; a checkpoint folder holds "
                f"only the files arrowflow wrote"
            )
            raise CheckpointError(msg)
        with self.fs.open(path, "rb") as handle:
            return handle.read(limit + 1)

    def latest(self, *, report: bool = True, min_id: int = 0) -> Manifest | None:
        """The newest checkpoint whose manifest and files verify; damaged ones are reported.
        ``min_id``: none older than that (a restart considers only its own run's)."""
        for checkpoint_id in self.checkpoint_ids():
            if checkpoint_id < min_id:
                break
            if self.superseded_by(checkpoint_id) is not None:
                continue  # abandoned by a restore of an older one: its output was rolled back
            try:
                return self.read_manifest(checkpoint_id)
            except CheckpointError as exc:
                if report and "never completed" not in str(exc):
                    warn(f"skipping checkpoint {checkpoint_id} in {self.url}: {exc}")
        return None

    def find(self, checkpoint_id: int) -> Manifest:
        """Checkpoint ``checkpoint_id``, verified; a CheckpointError names the ids there are."""
        ids = self.checkpoint_ids()
        if checkpoint_id not in ids:
            complete = [str(i) for i in reversed(ids) if self._has_manifest(i)]
            msg = (
                f"no checkpoint {checkpoint_id} in {self.url!r}; it has "
                f"{', '.join(complete) if complete else 'no complete checkpoint'}"
            )
            raise CheckpointError(msg)
        by = self.superseded_by(checkpoint_id)
        if by is not None:
            newer = [
                i for i in reversed(ids) if i > checkpoint_id and self.superseded_by(i) is None
            ]
            msg = (
                f"checkpoint {checkpoint_id} in {self.url!r} was superseded: checkpoint {by} was restored "
                f"after it was taken and the output of the checkpoints after {by} was rolled back, so "
                f"restoring it would leave that output missing. Restore {by}"
                + (
                    f" or a checkpoint of the run that followed ({', '.join(map(str, newer))})"
                    if newer
                    else ""
                )
                + ", or restore=None to start over."
            )
            raise CheckpointError(msg)
        return self.read_manifest(checkpoint_id)

    def superseded_by(self, checkpoint_id: int) -> int | str | None:
        """None, or the checkpoint whose restore superseded ``checkpoint_id`` (``"an older
        checkpoint"`` when the marker does not say: it may be damaged, and is obeyed anyway)."""
        path = self.path(f"{chk_dir(checkpoint_id)}/{SUPERSEDED}")
        if not self.fs.exists(path):
            return None
        by = self._small_json_field(checkpoint_id, path, "by")
        if isinstance(by, bool) or not isinstance(by, int) or not 0 <= by < checkpoint_id:
            return "an older checkpoint"
        return by

    def supersede_after(self, checkpoint_id: int) -> list[int]:
        """Mark every checkpoint after ``checkpoint_id`` that has a manifest as superseded,
        newest first; called before a run that restores ``checkpoint_id`` (or starts over, 0)
        rolls back their output, so that no later run restores one of them and finds its output
        gone. A crash part-way leaves the output untouched and the newest unmarked checkpoint
        (one of those or ``checkpoint_id``) consistent with it. Returns the ids marked."""
        later = self.committed_after(checkpoint_id)
        for later_id in reversed(later):
            if self.superseded_by(later_id) is None:
                payload = json.dumps({"by": checkpoint_id, "time": time.time()}).encode()
                self.write_file(f"{chk_dir(later_id)}/{SUPERSEDED}", payload)
        return later

    def _small_json_field(self, checkpoint_id: int, path: str, field_name: str) -> Any:
        """``field_name`` of the small JSON object in ``path`` (a marker or the job file), or
        None when the file is not a regular file, not JSON or lacks it; callers check the type."""
        try:
            return json.loads(self._read_regular(checkpoint_id, path, 4096))[field_name]
        except (CheckpointError, OSError, ValueError, KeyError, TypeError, RecursionError):
            return None

    # ------------------------------------------------------------------ retention
    def prune(self) -> list[int]:
        """Delete all but the newest ``keep`` complete checkpoints (and incomplete ones older
        than the newest complete one); keep every shared file a kept manifest references."""
        complete: list[Manifest] = []
        removed = []
        for checkpoint_id in self.checkpoint_ids():
            restorable = (
                self._has_manifest(checkpoint_id) and self.superseded_by(checkpoint_id) is None
            )
            if len(complete) >= self.keep or (complete and not restorable):
                removed.append(checkpoint_id)
                continue
            if not restorable:
                continue  # incomplete or superseded: removed once a newer one is complete
            try:
                complete.append(self.read_manifest(checkpoint_id, verify_files=False))
            except CheckpointError:
                if complete:
                    removed.append(checkpoint_id)
        if not complete:
            return []
        self.oldest_kept = min(m.id for m in complete)
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

    def committed_after(self, checkpoint_id: int) -> list[int]:
        """Ids newer than ``checkpoint_id`` that have a manifest, valid or not: their sinks may
        have committed output (a commit comes only after its manifest), oldest first."""
        return sorted(
            i for i in self.checkpoint_ids() if i > checkpoint_id and self._has_manifest(i)
        )

    def _has_manifest(self, checkpoint_id: int) -> bool:
        return self.fs.exists(self.path(f"{chk_dir(checkpoint_id)}/{MANIFEST}"))

    # ------------------------------------------------------------------ inspection
    def list(self) -> pl.DataFrame:
        """One row per complete checkpoint that can be restored (not superseded): id, time,
        size, sources, state files, final."""
        rows = []
        for checkpoint_id in self.checkpoint_ids():
            if self.superseded_by(checkpoint_id) is not None:
                continue
            try:
                manifest = self.read_manifest(checkpoint_id, verify_files=False)
            except CheckpointError:
                continue
            rows.append(
                {
                    "id": manifest.id,
                    "time": manifest.time,
                    "size_bytes": manifest.size(),
                    "state_files": len(manifest.state),
                    "parallelism": manifest.parallelism,
                    "final": manifest.final,
                    "offsets": offset_rows(manifest.sources),
                    "sources_json": json.dumps(manifest.sources, sort_keys=True),
                }
            )
        schema: dict[str, Any] = {
            "id": pl.Int64,
            "time": pl.Float64,
            "size_bytes": pl.Int64,
            "state_files": pl.Int64,
            "parallelism": pl.Int64,
            "final": pl.Boolean,
            "offsets": pl.List(OFFSET_ROW),
            "sources_json": pl.String,
        }
        frame = pl.DataFrame(rows, schema=schema)
        return frame.with_columns(pl.from_epoch(pl.col("time"), time_unit="s").alias("time"))


#: One split of one source in a checkpoint (``list_checkpoints``' ``offsets`` column):
#: ``offset`` is the split's position when it is a row count (files), ``position`` the
#: position as the source keeps it (JSON: a tailed file's byte offset, line and inode).
OFFSET_ROW = pl.Struct(
    {
        "source": pl.String,
        "split": pl.String,
        "done": pl.Boolean,
        "offset": pl.Int64,
        "position": pl.String,
    }
)


def offset_rows(sources: dict[str, Any]) -> list[dict[str, Any]]:
    """A manifest's source offsets as rows of :data:`OFFSET_ROW`: every finished split (done,
    no position) and every split in progress with its position, by source then split."""
    rows: list[dict[str, Any]] = []
    for source in sorted(sources):
        offsets = sources[source]
        for split in sorted(offsets.get("finished", [])):
            rows.append(
                {"source": source, "split": split, "done": True, "offset": None, "position": None}
            )
        for split, position in sorted(offsets.get("positions", {}).items()):
            whole = isinstance(position, int) and not isinstance(position, bool)
            offset = position if whole else None
            if isinstance(position, dict) and isinstance(position.get("offset"), int):
                offset = position["offset"]
            rows.append(
                {
                    "source": source,
                    "split": split,
                    "done": False,
                    "offset": offset,
                    "position": json.dumps(position, sort_keys=True, default=str),
                }
            )
    return rows


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


# ---------------------------------------------------------------------- store specs


def encode_spec(spec: Any) -> dict[str, Any]:
    """A StoreSpec as JSON: schemas as base64 Arrow IPC schema messages."""

    def schema_bytes(schema: pl.Schema) -> str:
        return base64.b64encode(
            pl.DataFrame(schema=schema).to_arrow().schema.serialize().to_pybytes()
        ).decode()

    return {
        "name": spec.name,
        "key_schema": schema_bytes(spec.key_schema),
        "value_schema": schema_bytes(spec.value_schema),
        "max_parallelism": spec.max_parallelism,
        "ttl_ms": spec.ttl_ms,
    }


def decode_spec(data: dict[str, Any]) -> StoreSpec:
    def schema_of(text: str) -> pl.Schema:
        arrow = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text)))
        return pl.DataFrame(arrow.empty_table()).schema

    return StoreSpec(
        data["name"],
        schema_of(data["key_schema"]),
        schema_of(data["value_schema"]),
        max_parallelism=data["max_parallelism"],
        ttl_ms=data.get("ttl_ms"),
    )
