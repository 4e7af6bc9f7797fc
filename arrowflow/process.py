"""Keyed process functions: the user-facing names (``KeyedStream.process`` takes them).

The implementation lives in :mod:`arrowflow._process`; this module only names what a user
imports.
"""

from arrowflow._process.context import ProcessContext as ProcessContext
from arrowflow._process.context import ProcessFunction as ProcessFunction
from arrowflow._process.declarations import ListState as ListState
from arrowflow._process.declarations import MapState as MapState
from arrowflow._process.declarations import ValueState as ValueState
from arrowflow._process.handles import ListStateHandle as ListStateHandle
from arrowflow._process.handles import MapStateHandle as MapStateHandle
from arrowflow._process.handles import ValueStateHandle as ValueStateHandle

__all__ = [
    "ListState",
    "ListStateHandle",
    "MapState",
    "MapStateHandle",
    "ProcessContext",
    "ProcessFunction",
    "ValueState",
    "ValueStateHandle",
]
