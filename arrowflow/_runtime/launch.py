"""What a runner ships to its workers: a :class:`WorkerSpec`, built into a worker there.

The spec holds the plan, the state backend, the runtime context (where state is restored
from) and the batch options; it is picklable, so a runner that starts processes (the pool,
a Ray runner) sends it once per worker, never per batch. However it is pickled
(``cloudpickle.dumps(spec)``, or Ray pickling an actor's arguments), the user's functions
travel by value when a fresh process could not import their module (a script, a test module
imported by path, a notebook).

Functions by value keep their file: cloudpickle names every code object it ships
``<dynamic-code>``, so an exception raised in a worker would point at no file. The pickler here
ships each code object's real file name, and the source lines of that file once (from
:mod:`linecache`, which also holds notebook cells that are no file), and the worker registers
them in its own :mod:`linecache`: a worker's traceback shows the user's file, line and source
line, as ``python job.py`` would.
"""

from __future__ import annotations

import importlib.util
import io
import linecache
import sys
import sysconfig
import types
from dataclasses import dataclass
from typing import Any

import cloudpickle

from arrowflow._plan import Plan
from arrowflow._runtime.operators import RuntimeContext
from arrowflow._runtime.worker import Worker
from arrowflow.runners import ControlLink, Transport
from arrowflow.state import StateBackend


@dataclass
class WorkerSpec:
    """Everything worker ``index`` of one attempt is built from
    (:class:`arrowflow.runners.WorkerSpec`)."""

    plan: Plan
    backend: StateBackend
    context: RuntimeContext
    parallelism: int
    batch_size: int | None
    max_parallelism: int

    @property
    def flow_name(self) -> str:
        return self.plan.flow_name

    @property
    def exchanges(self) -> list[str]:
        return [op.id for op in self.plan.ops if op.kind == "exchange"]

    def __reduce__(self) -> tuple[Any, tuple[bytes]]:
        fields = (
            self.plan,
            self.backend,
            self.context,
            self.parallelism,
            self.batch_size,
            self.max_parallelism,
        )
        return _spec_from_bytes, (_dumps_by_value(self.plan, fields),)

    def build(
        self, index: int, link: ControlLink, transport: Transport | None, local_dir: str
    ) -> Worker:
        return Worker(
            self.plan,
            index,
            self.parallelism,
            link,
            self.backend,
            batch_size=self.batch_size,
            local_dir=local_dir,
            max_parallelism=self.max_parallelism,
            transport=transport,
            runtime_context=self.context,
        )


def _user_modules(plan: Plan) -> list[Any]:
    """Modules of the plan's user functions that a fresh worker process may fail to import
    (a script, a test module imported by path, a notebook): they are shipped by value."""
    installed = {
        sysconfig.get_paths()[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")
    }
    found = []
    for op in plan.ops:
        for step in [
            *op.params.get("steps", []),
            op.params,
        ]:  # chained functions, a process function
            for fn in (step.get("fn"),):
                name = getattr(fn, "__module__", None)
                module = sys.modules.get(name) if name else None
                if (
                    not name
                    or module is None
                    or name == "__main__"
                    or name.split(".")[0] == "arrowflow"
                ):
                    continue
                path = getattr(module, "__file__", None) or ""
                try:
                    importable = importlib.util.find_spec(name) is not None
                except (ImportError, ValueError):
                    importable = False
                if (
                    not importable or not any(path.startswith(root) for root in installed)
                ) and module not in found:
                    found.append(module)  # once: registering a module twice cannot be undone twice
    return found


def _dumps_by_value(plan: Plan, value: Any) -> bytes:
    """``value`` as cloudpickle bytes, with the modules of ``plan``'s user functions by value."""
    modules = _user_modules(plan)
    for module in modules:
        cloudpickle.register_pickle_by_value(module)
    try:
        with io.BytesIO() as file:
            _Pickler(file).dump(value)
            return file.getvalue()
    finally:
        for module in modules:
            cloudpickle.unregister_pickle_by_value(module)


def _spec_from_bytes(blob: bytes) -> WorkerSpec:
    return WorkerSpec(*cloudpickle.loads(blob))


_SHIPPED = "<dynamic-code>"  # the file name cloudpickle gives every code object it ships


class _Pickler(cloudpickle.Pickler):
    """cloudpickle that keeps a shipped function's file name and ships its source lines once."""

    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file)
        self._sources: set[str] = set()  # files whose lines this pickle already holds

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, types.CodeType) and obj.co_filename != _SHIPPED:
            filename = obj.co_filename
            lines: list[str] = []
            if filename not in self._sources:
                self._sources.add(filename)
                lines = linecache.getlines(filename)
            # cloudpickle's own reducer pickles the renamed copy (nested code objects in its
            # constants, of inner functions and lambdas, come back here with their own name)
            return _code_in_file, (obj.replace(co_filename=_SHIPPED), filename, lines)
        return super().reducer_override(obj)


def _code_in_file(code: types.CodeType, filename: str, lines: list[str]) -> types.CodeType:
    """``code`` named after its file again; the file's source lines registered for tracebacks
    (kept when this process already has them: it can read the same file)."""
    if lines and filename not in linecache.cache:
        linecache.cache[filename] = (sum(map(len, lines)), None, lines, filename)
    return code.replace(co_filename=filename)
