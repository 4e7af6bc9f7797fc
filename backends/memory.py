"""The ``memory`` state backend: the reference implementation every other backend must match.

A store is one polars DataFrame in the worker's heap (key columns, then value columns).
Reads and writes are hash joins of a whole batch of keys against it — one vectorized
operation per batch. A snapshot is one Arrow IPC file with every entry and its key group.
"""

from __future__ import annotations

from collections.abc import Iterator

import fsspec
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
    checked_write,
    ipc_bytes,
    join_on_keys,
    read_ipc_bytes,
    read_verified,
)


class MemoryStore(KeyedStore):
    def __init__(self, spec: StoreSpec, key_groups_owned: range) -> None:
        super().__init__(spec, key_groups_owned)
        self.table = pl.DataFrame(schema={**spec.key_schema, **spec.value_schema})
        self._chunks = 0

    def get(self, keys: pl.DataFrame) -> pl.DataFrame:
        if self.table.height == 0:
            return self.spec.empty_values(keys.height)
        joined = join_on_keys(
            keys,
            self.table.with_columns(pl.lit(True).alias(FOUND)),
            self.spec.key_columns,
            "left",
            maintain_order="left",
        )
        return joined.select([*self.spec.value_columns, pl.col(FOUND).fill_null(False)])

    def put(self, keys: pl.DataFrame, values: pl.DataFrame) -> None:
        rows = pl.concat([keys, values.select(self.spec.value_columns)], how="horizontal")
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
        if self.table.height:
            self.table = join_on_keys(
                self.table, keys.select(self.spec.key_columns), self.spec.key_columns, "anti"
            )

    def scan(self) -> Iterator[pl.DataFrame]:
        if self.table.height:
            yield self.table

    def count(self) -> int:
        return self.table.height

    def snapshot(
        self, fs: fsspec.AbstractFileSystem, root: str, checkpoint_id: int
    ) -> list[StateFile]:
        groups = self.spec.key_groups_of(self.table)
        frame = self.table.with_columns(pl.Series(KEY_GROUP, groups, dtype=pl.Int32))
        relative = (
            f"chk-{checkpoint_id:08d}/state/{self.spec.name}/"
            f"{self.key_groups.start:03d}-{self.key_groups.stop:03d}.arrow"
        )
        size, digest = checked_write(fs, f"{root}/{relative}", ipc_bytes(frame))
        return [
            StateFile(
                relative,
                size,
                digest,
                self.spec.name,
                (self.key_groups.start, self.key_groups.stop),
                "arrow",
            )
        ]

    def restore(self, fs: fsspec.AbstractFileSystem, root: str, files: list[StateFile]) -> None:
        frames = []
        for state_file in files:
            if (
                state_file.key_groups[1] <= self.key_groups.start
                or state_file.key_groups[0] >= self.key_groups.stop
            ):
                continue
            if state_file.format != "arrow":
                msg = (
                    f"memory store {self.spec.name!r} cannot restore {state_file.path!r} of format "
                    f"{state_file.format!r}; it reads Arrow IPC snapshots (the 'memory', 'arrow' and "
                    f"'sql' backends write them)"
                )
                raise StateError(msg)
            frame = read_ipc_bytes(
                read_verified(fs, root, state_file), f"state file {state_file.path!r}"
            )
            frames.append(
                frame.filter(
                    pl.col(KEY_GROUP).is_between(self.key_groups.start, self.key_groups.stop - 1)
                )
            )
        columns = [*self.spec.key_columns, *self.spec.value_columns]
        if frames:
            self.table = (
                pl.concat(frames)
                .select(columns)
                .cast(pl.Schema(dict(self.spec.key_schema) | dict(self.spec.value_schema)))
            )
        else:
            self.table = pl.DataFrame(schema={**self.spec.key_schema, **self.spec.value_schema})


class MemoryBackend(StateBackend):
    """State in the worker's heap. Fast, bounded by memory; snapshots as Arrow IPC."""

    name = "memory"
    restores = ("arrow",)

    def open_store(self, spec: StoreSpec, key_groups: range, context: StoreContext) -> KeyedStore:
        return MemoryStore(spec, key_groups)

    def __repr__(self) -> str:
        return "MemoryBackend()"
