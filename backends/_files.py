"""Snapshot file plumbing shared by the backends: names, streamed upload and verified download.

:func:`arrowflow.state.checked_write` and :func:`arrowflow.state.read_verified` hold a whole
file in memory, which is right for heap backends. A store that is larger than memory
(``lmdb``, a big ``sql`` table) streams its snapshot through these helpers instead, in chunks,
hashing as it goes, so the checksum in the manifest is the checksum of what was written.
"""

from __future__ import annotations

import hashlib
import os
import re

import fsspec

from arrowflow.errors import StateError
from arrowflow.state import StateFile

CHUNK = 8 << 20


def range_name(key_groups: range) -> str:
    return f"{key_groups.start:03d}-{key_groups.stop:03d}"


def snapshot_path(checkpoint_id: int, store: str, key_groups: range, suffix: str) -> str:
    """``chk-<n>/state/<store>/<start>-<stop>.<suffix>``, relative to the checkpoint root."""
    return f"chk-{checkpoint_id:08d}/state/{store}/{range_name(key_groups)}.{suffix}"


def safe_component(name: str) -> str:
    """A store name as one path component of a local directory."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def overlapping(files: list[StateFile], key_groups: range) -> list[StateFile]:
    """The files that may hold keys of ``key_groups``."""
    return [
        f for f in files if f.key_groups[0] < key_groups.stop and f.key_groups[1] > key_groups.start
    ]


def upload_file(fs: fsspec.AbstractFileSystem, local_path: str, path: str) -> tuple[int, str]:
    """Copy a local file to ``path`` on ``fs`` in chunks; return (size, sha256 hex)."""
    digest = hashlib.sha256()
    size = 0
    try:
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        with open(local_path, "rb") as source, fs.open(path, "wb") as target:
            while chunk := source.read(CHUNK):
                digest.update(chunk)
                target.write(chunk)
                size += len(chunk)
    except OSError as exc:
        msg = f"cannot write state snapshot file {path!r}: {exc}"
        raise StateError(msg) from exc
    return size, digest.hexdigest()


def download_verified(
    fs: fsspec.AbstractFileSystem, root: str, state_file: StateFile, local_path: str
) -> None:
    """Copy a snapshot file to ``local_path``, checking its size and checksum on the way."""
    path = f"{root}/{state_file.path}"
    digest = hashlib.sha256()
    size = 0
    try:
        with fs.open(path, "rb") as source, open(local_path, "wb") as target:
            while chunk := source.read(CHUNK):
                digest.update(chunk)
                target.write(chunk)
                size += len(chunk)
    except (OSError, FileNotFoundError) as exc:
        msg = f"state file {path!r} of store {state_file.store!r} cannot be read: {exc}"
        raise StateError(msg) from exc
    found = digest.hexdigest()
    if size != state_file.size or found != state_file.sha256:
        os.unlink(local_path)
        msg = (
            f"state file {path!r} does not match its manifest: expected {state_file.size} bytes "
            f"sha256 {state_file.sha256[:12]}…, found {size} bytes sha256 {found[:12]}…"
        )
        raise StateError(msg)
