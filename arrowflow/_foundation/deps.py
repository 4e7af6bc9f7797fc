"""Optional dependencies, imported on first use through one helper.

The helper says which ``pip install`` brings a missing one.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

# Optional dependency -> the pip extra that installs it.
_EXTRAS = {
    "adbc_driver_manager": "arrowflow[sql]",
    "adbc_driver_sqlite": "arrowflow[sql]",
    "adbc_driver_postgresql": "arrowflow[sql]",
    "s3fs": "arrowflow[s3]",
    "lmdb": "lmdb",
}


def import_object(target: str) -> Any:
    """The object a ``"module:attr"`` string names (``attr`` may be dotted), importing its module.

    Raises ``ImportError`` when the module cannot be imported and ``AttributeError`` when it
    has no such attribute; callers add what the object was for.
    """
    module_name, _, attr = target.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def import_optional(module: str, *, purpose: str) -> ModuleType:
    """Import an optional dependency, or fail saying which ``pip install`` brings it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        extra = _EXTRAS.get(top, top.replace("_", "-"))
        msg = f"{purpose} needs the package {top!r}, which is not installed; run: pip install '{extra}'"
        raise ImportError(msg) from exc
