"""Shipping a run to worker processes: the plan is pickled once, the user's functions by value."""

from __future__ import annotations

import sys
from typing import Any

import cloudpickle

from arrowflow._plan import Plan


def _user_modules(plan: Plan) -> list[Any]:
    """Modules of the plan's user functions that a fresh worker process may fail to import
    (a script, a test module imported by path, a notebook): they are shipped by value."""
    import importlib.util
    import sysconfig

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
                if module is None or name == "__main__" or name.split(".")[0] == "arrowflow":
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


def _dumps_by_value(plan: Plan) -> bytes:
    modules = _user_modules(plan)
    for module in modules:
        cloudpickle.register_pickle_by_value(module)
    try:
        return cloudpickle.dumps(plan)
    finally:
        for module in modules:
            cloudpickle.unregister_pickle_by_value(module)
