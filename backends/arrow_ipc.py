"""The ``arrow`` state backend: heap state with incremental snapshots, one Arrow IPC file per key group.

Reads and writes work like the ``memory`` backend — a store is one polars DataFrame in the
worker's heap and every get or put is one hash join of the batch against it. What differs is
the snapshot: each key group is written to its own Arrow IPC file, and only the key groups
that changed since the previous snapshot are written again. A job whose updates touch a few
key groups per checkpoint writes a few files per checkpoint.

State it keeps, per store:

- ``table``: key columns, value columns and the key group of each row (``__key_group``),
  computed once when the row is written;
- ``dirty``: one flag per key group, set by ``put``/``delete``/``restore``, cleared by
  ``snapshot``;
- ``files``: for each clean key group that has entries, the file that holds it (from the
  last snapshot or restore) and ``files_root``, the checkpoint root those paths are under.

Snapshot files live outside any one checkpoint, because later checkpoints keep pointing at
them::

    <root>/shared/<store>/<key group:03d>/<checkpoint id:08d>-<random>.arrow

Each holds exactly the entries of one key group: the key and value columns plus
``__key_group``, the same layout as a ``memory`` snapshot, so either backend restores the
other's files, and any Arrow tool reads them. The :class:`StateFile` list of a snapshot names
one file per non-empty key group; a file written by an earlier snapshot is listed again
(``extra["written_by"]`` says which checkpoint wrote it). **Which files a checkpoint needs:
exactly the paths its manifest lists** — those under ``shared/`` may have been written by an
earlier checkpoint, so pruning an old checkpoint may delete a ``shared/`` file only when no
retained manifest lists it. A file name is never reused (checkpoint id plus a random part),
so a file a retained checkpoint references is never overwritten.

Worked example: 128 key groups, checkpoint 1 writes the 128 files; a batch then updates keys
of groups 3 and 70 only; checkpoint 2 writes 2 files and lists those 2 plus the other 126
written by checkpoint 1. A group whose last key was deleted is written as no file at all.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import fsspec
import numpy as np
import polars as pl

from arrowflow.errors import StateError
from arrowflow.state import (
    FOUND,
    KEY_GROUP,
    KeyedStore,
    StateBackend,
    StateFile,
    StoreContext,
    StoreSpec,
    checked_write_many,
    ipc_bytes,
    join_on_keys,
    read_ipc_bytes,
    read_verified,
)

FORMAT = "arrow"


def shared_path(store: str, group: int, checkpoint_id: int) -> str:
    """Where a key group's file goes, relative to the checkpoint root (never reused)."""
    return f"shared/{store}/{group:03d}/{checkpoint_id:08d}-{uuid.uuid4().hex[:12]}.arrow"


class ArrowStore(KeyedStore):
    def __init__(self, spec: StoreSpec, key_groups_owned: range) -> None:
        super().__init__(spec, key_groups_owned)
        self.columns = [*spec.key_columns, *spec.value_columns]
        self.table = self._empty()
        self.dirty = np.zeros(spec.max_parallelism, dtype=bool)
        self.files: dict[int, StateFile] = {}
        self.files_root: str | None = None
        self._chunks = 0

    def _empty(self) -> pl.DataFrame:
        return pl.DataFrame(
            schema={**self.spec.key_schema, **self.spec.value_schema, KEY_GROUP: pl.Int32}
        )

    def _groups(self, keys: pl.DataFrame) -> np.ndarray:
        return self.spec.key_groups_of(keys)

    def _mark(self, groups: np.ndarray) -> None:
        self.dirty |= np.bincount(groups, minlength=self.spec.max_parallelism).astype(bool)

    def get(self, keys: pl.DataFrame) -> pl.DataFrame:
        if self.table.height == 0:
            return self.spec.empty_values(keys.height)
        joined = join_on_keys(
            keys.select(self.spec.key_columns),
            self.table.drop(KEY_GROUP).with_columns(pl.lit(True).alias(FOUND)),
            self.spec.key_columns,
            "left",
            maintain_order="left",
        )
        return joined.select([*self.spec.value_columns, pl.col(FOUND).fill_null(False)])

    def put(self, keys: pl.DataFrame, values: pl.DataFrame) -> None:
        if keys.height == 0:
            return
        groups = self._groups(keys)
        self._mark(groups)
        rows = pl.concat(
            [
                keys.select(self.spec.key_columns),
                values.select(self.spec.value_columns),
                pl.DataFrame({KEY_GROUP: groups}),
            ],
            how="horizontal",
        )
        if self.table.height:
            kept = join_on_keys(
                self.table, keys.select(self.spec.key_columns), self.spec.key_columns, "anti"
            )
            rows = pl.concat([kept, rows], how="vertical")
        self.table = rows
        self._chunks += 1
        if self._chunks > 16:
            self.table = self.table.rechunk()
            self._chunks = 0

    def delete(self, keys: pl.DataFrame) -> None:
        if keys.height == 0 or self.table.height == 0:
            return
        self._mark(self._groups(keys))
        self.table = join_on_keys(
            self.table, keys.select(self.spec.key_columns), self.spec.key_columns, "anti"
        )

    def scan(self) -> Iterator[pl.DataFrame]:
        if self.table.height:
            yield self.table.drop(KEY_GROUP)

    def count(self) -> int:
        return self.table.height

    def snapshot(
        self, fs: fsspec.AbstractFileSystem, root: str, checkpoint_id: int
    ) -> list[StateFile]:
        if root != self.files_root:  # earlier files are under another root: write everything
            self.files.clear()
            self.dirty[:] = True
        owned = np.zeros_like(self.dirty)
        owned[self.key_groups.start : self.key_groups.stop] = True
        changed = np.flatnonzero(self.dirty & owned)
        if len(changed):
            rows = self.table.filter(pl.col(KEY_GROUP).is_in(changed.tolist()))
            parts = (
                rows.partition_by(KEY_GROUP, as_dict=True, maintain_order=False)
                if rows.height
                else {}
            )
            for group in changed.tolist():
                self.files.pop(group, None)
            written = [
                (int(group), part, shared_path(self.spec.name, int(group), checkpoint_id))
                for (group,), part in parts.items()
            ]
            checks = checked_write_many(
                fs, [(f"{root}/{relative}", ipc_bytes(part)) for _, part, relative in written]
            )
            for (group, part, relative), (size, digest) in zip(written, checks, strict=True):
                self.files[group] = StateFile(
                    relative,
                    size,
                    digest,
                    self.spec.name,
                    (group, group + 1),
                    FORMAT,
                    {"written_by": checkpoint_id, "entries": part.height},
                )
        self.dirty[:] = False
        self.files_root = root
        return [self.files[group] for group in sorted(self.files)]

    def restore(self, fs: fsspec.AbstractFileSystem, root: str, files: list[StateFile]) -> None:
        start, stop = self.key_groups.start, self.key_groups.stop
        frames = []
        reusable: dict[int, StateFile] = {}
        for state_file in files:
            first, last = state_file.key_groups
            if last <= start or first >= stop:
                continue
            if state_file.format != FORMAT:
                msg = (
                    f"arrow store {self.spec.name!r} cannot restore {state_file.path!r} of format "
                    f"{state_file.format!r}; it reads Arrow IPC snapshots (the 'memory' and 'arrow' backends)"
                )
                raise StateError(msg)
            frame = read_ipc_bytes(
                read_verified(fs, root, state_file), f"state file {state_file.path!r}"
            )
            frames.append(frame.filter(pl.col(KEY_GROUP).is_between(start, stop - 1)))
            if last - first == 1:  # a file of exactly one owned group can be referenced again
                reusable[first] = state_file
        if frames:
            schema = pl.Schema(
                dict(self.spec.key_schema) | dict(self.spec.value_schema) | {KEY_GROUP: pl.Int32}
            )
            self.table = pl.concat(frames).select([*self.columns, KEY_GROUP]).cast(schema).rechunk()
        else:
            self.table = self._empty()
        self.files = reusable
        self.files_root = root
        self.dirty[:] = True
        self.dirty[list(reusable)] = False


class ArrowBackend(StateBackend):
    """Heap state, snapshotted incrementally to one Arrow IPC file per changed key group."""

    name = "arrow"
    restores = (FORMAT,)

    def open_store(self, spec: StoreSpec, key_groups: range, context: StoreContext) -> KeyedStore:
        return ArrowStore(spec, key_groups)

    def __repr__(self) -> str:
        return "ArrowBackend()"
