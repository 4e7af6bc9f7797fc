"""fsspec helpers: resolve paths, globs and directories into files; hidden-name rules."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import fsspec

from arrowflow.errors import SourceError

GLOB_CHARS = "*?["


def filesystem(url: str, storage_options: dict[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and the path inside it for a URL or local path."""
    try:
        return fsspec.core.url_to_fs(url, **(storage_options or {}))
    except ImportError as exc:
        protocol = url.split("://", 1)[0]
        hint = {"s3": "pip install 'arrowflow[s3]'"}.get(protocol, f"install the fsspec implementation for {protocol}://")
        msg = f"cannot open {url!r}: {exc}; {hint}"
        raise SourceError(msg) from exc
    except ValueError as exc:
        msg = f"cannot open {url!r}: {exc}"
        raise SourceError(msg) from exc


def is_hidden(path: str, root: str = "") -> bool:
    """True for names starting with '_' or '.' below ``root`` (staging files, markers)."""
    relative = path[len(root):] if root and path.startswith(root) else path.rsplit("/", 1)[-1]
    return any(part.startswith(("_", ".")) for part in relative.strip("/").split("/") if part)


def resolve_files(paths: str | Sequence[str], storage_options: dict[str, Any] | None, *,
                  suffixes: tuple[str, ...] = ()) -> list[str]:
    """Every file the paths name, as full URLs, sorted, hidden files left out.

    A path is a file, a directory (every visible file below it) or a glob. A path that names
    nothing is an error, never an empty input.
    """
    if isinstance(paths, str):
        paths = [paths]
    if not paths:
        msg = "no path given; pass a file, a directory, a glob like 'data/*.parquet' or a URL"
        raise SourceError(msg)
    urls: list[str] = []
    for url in paths:
        if not isinstance(url, str):
            msg = f"paths must be strings or fsspec URLs, got {type(url).__name__} {url!r}"
            raise SourceError(msg)
        fs, path = filesystem(url, storage_options)
        if any(ch in path for ch in GLOB_CHARS):
            found = [p for p in fs.glob(path) if not is_hidden(p) and fs.isfile(p)]
            if not found:
                msg = f"the glob {url!r} matches no file"
                raise SourceError(msg)
        elif fs.isdir(path):
            found = [p for p in fs.find(path) if not is_hidden(p, path)]
            if suffixes:
                found = [p for p in found if p.endswith(suffixes)] or found
            if not found:
                msg = f"the directory {url!r} holds no visible file (names starting with '_' or '.' are skipped)"
                raise SourceError(msg)
        elif fs.exists(path):
            found = [path]
        else:
            msg = f"no such file or directory: {url!r}"
            raise SourceError(msg)
        urls.extend(fs.unstrip_protocol(p) if "://" in url else p for p in sorted(found))
    return urls
