"""Run options: every knob of a run, in one frozen, validated value.

``flow.run``, ``flow.start``, ``stream.collect``, ``stream.head``,
``arrowflow.testing.collect_all`` and the ``arrowflow run`` command line each build a
:class:`RunOptions` from their keywords (or take one as ``options=``) and hand it down;
the runtime reads nothing else. Every default is written once, here:

>>> from arrowflow.options import RunOptions
>>> options = RunOptions(workers=2, checkpoint_dir="memory://ck", checkpoint_every="10s")
>>> options.max_parallelism, options.restore, options.runner_name
(128, 'latest', 'pool')
>>> RunOptions(workers=0).runner_name
'inprocess'
>>> RunOptions(batch_size=0)
Traceback (most recent call last):
...
arrowflow.errors.PlanError: batch_size must be a positive number of rows, got 0

Three presets hold the defaults of the entry points that differ from ``flow.run``'s:
:data:`COLLECT_DEFAULTS` (``collect``, ``head``, ``collect_all``: in this process, a fresh
start, no progress bar) and :data:`START_DEFAULTS` (``flow.start``: no progress bar, the job
has its own views).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from arrowflow._foundation.keygroups import DEFAULT_MAX_PARALLELISM
from arrowflow.errors import CheckpointError, PlanError
from arrowflow.triggers import resolve_trigger

__all__ = ["COLLECT_DEFAULTS", "DEFAULTS", "START_DEFAULTS", "RunOptions", "options_from"]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class RunOptions:
    """How one run executes: workers, state, checkpoints, batches, restarts.

    Parameters
    ----------
    workers
        Worker processes. ``None`` (default): chosen from the flow and the machine: in this
        process for a flow of polars expressions on a machine of up to two cores (polars
        already uses every core there, and processes would only add the exchange), one per
        core otherwise (a flow with ``map_batches`` or ``process`` functions, more cores);
        ``0``: run in this process (the in-process runner: same results, no processes, a
        debugger stops inside user functions).
    runner
        Name of the runner in the plug-in registry (group ``runner``), e.g. ``"inprocess"``,
        ``"pool"`` or one a package registered. ``None`` (default): ``"inprocess"`` when
        ``workers=0``, else ``"pool"``.
    state
        Where keyed state lives: a backend name (``"memory"``, the default; ``"arrow"``,
        ``"lmdb"``, ``"sql"``), a ``postgresql://`` or ``sqlite://`` URL, or a
        :class:`arrowflow.state.StateBackend` object.
    checkpoint_dir
        Where checkpoints go (any fsspec URL, or a local path). ``None`` (default): no
        checkpoints, and so no restore and no restart.
    checkpoint_every
        When to checkpoint besides the end of the run: a duration (``"10s"``),
        ``af.every_rows(n)`` or a :class:`arrowflow.triggers.Trigger`. Needs
        ``checkpoint_dir``. ``None`` (default): only at the end (and on ``job.checkpoint()``).
    restore
        The checkpoint to resume from: ``"latest"`` (default: the newest complete one, if
        any), a checkpoint id (needs ``checkpoint_dir``), or ``None`` to start fresh.
    batch_size
        Rows per batch read from a source. ``None`` (default): the source's own size in one
        process, 262,144 rows in a pool (small batches keep checkpoint barriers quick).
    max_parallelism
        Key groups keyed state is split into (default 128): the most workers a keyed
        operator can use, fixed for the life of a checkpoint directory. ``None`` is taken as
        the default.
    progress
        A progress bar on standard error (or in Jupyter). ``None`` (default): when standard
        error is a terminal or a notebook runs the flow.
    storage_options
        Options for the fsspec file system of ``checkpoint_dir`` (credentials, endpoint).
    keep_checkpoints
        Complete checkpoints retention keeps (default 3, at least 1).
    max_restarts
        How often a failed run restarts from its newest checkpoint before it fails (default
        3; only with ``checkpoint_dir``; ``ARROWFLOW_RESTARTS`` sets the policy).

    Raises
    ------
    PlanError
        An option of the wrong type or range, or options that need each other
        (``checkpoint_every`` or ``restore=<id>`` without ``checkpoint_dir``).
    CheckpointError
        ``keep_checkpoints`` below 1.
    """

    workers: int | None = None
    runner: str | None = None
    state: Any = "memory"
    checkpoint_dir: str | None = None
    checkpoint_every: Any = None
    restore: str | int | None = "latest"
    batch_size: int | None = None
    max_parallelism: int = DEFAULT_MAX_PARALLELISM
    progress: bool | None = None
    storage_options: dict[str, Any] | None = None
    keep_checkpoints: int = 3
    max_restarts: int = 3

    def __post_init__(self) -> None:
        """Normalize (``max_parallelism=None``, a path as ``checkpoint_dir``) and validate."""
        if self.max_parallelism is None:
            object.__setattr__(self, "max_parallelism", DEFAULT_MAX_PARALLELISM)
        if isinstance(self.checkpoint_dir, os.PathLike):
            object.__setattr__(self, "checkpoint_dir", os.fspath(self.checkpoint_dir))
        self._validate()

    def _validate(self) -> None:
        workers = self.workers
        if workers is not None and (not _is_int(workers) or workers < 0):
            msg = f"workers must be a number of processes (0 runs in this process), got {workers!r}"
            raise PlanError(msg)
        if self.runner is not None and (not isinstance(self.runner, str) or not self.runner):
            msg = f"runner= expects the name of a registered runner (e.g. 'pool'), got {self.runner!r}"
            raise PlanError(msg)
        batch_size = self.batch_size
        if batch_size is not None and (not _is_int(batch_size) or batch_size < 1):
            msg = f"batch_size must be a positive number of rows, got {batch_size!r}"
            raise PlanError(msg)
        groups = self.max_parallelism
        if not _is_int(groups) or groups < 1:
            msg = (
                f"max_parallelism must be a positive number of key groups (default "
                f"{DEFAULT_MAX_PARALLELISM}), got {groups!r}"
            )
            raise PlanError(msg)
        if self.checkpoint_every is not None:
            if self.checkpoint_dir is None:
                msg = "checkpoint_every needs a checkpoint_dir to write the checkpoints to (any fsspec URL)"
                raise PlanError(msg)
            resolve_trigger(self.checkpoint_every)  # a malformed duration fails here, not later
        restore = self.restore
        if restore not in (None, "latest") and not _is_int(restore):
            msg = f"restore= expects 'latest', a checkpoint id or None, got {restore!r}"
            raise PlanError(msg)
        if _is_int(restore) and self.checkpoint_dir is None:
            msg = f"restore={restore} needs the checkpoint_dir that holds checkpoint {restore} (any fsspec URL)"
            raise PlanError(msg)
        if self.checkpoint_dir is not None and not isinstance(self.checkpoint_dir, str):
            msg = f"checkpoint_dir expects an fsspec URL or a path, got {type(self.checkpoint_dir).__name__}"
            raise PlanError(msg)
        if self.progress is not None and not isinstance(self.progress, bool):
            msg = f"progress expects True, False or None (when a terminal shows it), got {self.progress!r}"
            raise PlanError(msg)
        if self.storage_options is not None and not isinstance(self.storage_options, Mapping):
            msg = f"storage_options expects a dict of fsspec options, got {type(self.storage_options).__name__}"
            raise PlanError(msg)
        if not _is_int(self.keep_checkpoints) or self.keep_checkpoints < 1:
            msg = f"keep must be at least 1 checkpoint, got {self.keep_checkpoints!r}"
            raise CheckpointError(msg)
        if not _is_int(self.max_restarts) or self.max_restarts < 0:
            msg = f"max_restarts must be a number of restarts (0: none), got {self.max_restarts!r}"
            raise PlanError(msg)

    @property
    def runner_name(self) -> str:
        """The runner this run uses: ``runner``, or the default for ``workers``."""
        if self.runner is not None:
            return self.runner
        return "inprocess" if self.workers == 0 else "pool"

    def replace(self, **changes: Any) -> RunOptions:
        """A copy with ``changes`` applied (and validated again)."""
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        """The options as keyword arguments, e.g. for ``flow.run(**options.as_dict())``."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


#: ``flow.run``'s defaults, which the command line keeps for every flag left out.
DEFAULTS = RunOptions()
#: ``stream.collect``, ``stream.head`` and ``arrowflow.testing.collect_all``: in this
#: process, a fresh start (collecting keeps no checkpoints), no progress bar.
COLLECT_DEFAULTS = RunOptions(workers=0, restore=None, progress=False)
#: ``flow.start``: like ``flow.run``, without a progress bar (the job has its own views).
START_DEFAULTS = RunOptions(progress=False)

_NAMES = tuple(f.name for f in dataclasses.fields(RunOptions))


def options_from(
    caller: str,
    keywords: Mapping[str, Any],
    *,
    base: RunOptions = DEFAULTS,
    options: RunOptions | None = None,
) -> RunOptions:
    """The options ``caller`` (e.g. ``"flow.run()"``) was given, as a :class:`RunOptions`.

    Parameters
    ----------
    caller
        How the error messages name the entry point.
    keywords
        The run options passed as keywords. Those equal to ``base``'s are taken as left out.
    base
        The defaults of the entry point (:data:`DEFAULTS`, :data:`COLLECT_DEFAULTS`, ...).
    options
        A :class:`RunOptions` passed as ``options=``; then no keyword may differ from
        ``base``'s default (one way to say each option, so none silently wins).

    Raises
    ------
    PlanError
        An unknown keyword, ``options=`` that is no RunOptions, or ``options=`` together
        with keywords.
    """
    unknown = sorted(set(keywords) - set(_NAMES))
    if unknown:
        msg = f"{caller} got unknown options {unknown}; it takes those of flow.run(): {sorted(_NAMES)}"
        raise PlanError(msg)
    changed = {
        name: value
        for name, value in keywords.items()
        if not _same(value, getattr(base, name), name)
    }
    if options is None:
        return base.replace(**changed) if changed else base
    if not isinstance(options, RunOptions):
        msg = f"{caller}: options= expects an arrowflow.RunOptions, got {type(options).__name__}"
        raise PlanError(msg)
    if changed:
        msg = (
            f"{caller} got options= and the keywords {sorted(changed)}: say each option once, e.g. "
            f"options=options.replace({', '.join(f'{k}=...' for k in sorted(changed))})"
        )
        raise PlanError(msg)
    return options


def _same(value: Any, default: Any, name: str) -> bool:
    if name == "max_parallelism" and value is None:
        return default == DEFAULT_MAX_PARALLELISM
    # Identity first: a trigger or a backend object compares by identity anyway.
    return value is default or (type(value) is type(default) and value == default)
