"""The pieces of a physical plan, as plain data: operators (:class:`OpSpec`) and their edges.

Operator kinds (:mod:`arrowflow._graph.kinds`) plan a logical node into these; the planner
(:mod:`arrowflow._plan`) collects them into a :class:`arrowflow._plan.Plan`; the runtime
builds one physical operator per :class:`OpSpec` in every worker. Everything here is
serialized once per worker with cloudpickle, so it holds data (expressions, sources, sinks,
user functions) and names the runtime's classes by string, never by reference.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import polars as pl

#: The port of an operator's main output (the others are its side outputs).
MAIN = "main"


@dataclass(frozen=True)
class Edge:
    """Input edge of an operator: output ``port`` (``main`` or a side-output name) of ``op``."""

    op: str
    port: str = MAIN


@dataclass
class OpSpec:
    """One physical operator. ``steps`` are the logical operators fused into it.

    ``operator`` is the ``"module:object"`` the worker imports and calls to build it (a
    :class:`arrowflow._runtime.operators.Operator` subclass or a function returning one);
    ``stateful``: it keeps state that checkpoints restore, so its parameters are part of the
    plan's fingerprint.
    """

    id: str
    kind: str  # source | chain | union | exchange | agg | watermark | window | process | sink
    inputs: list[Edge]
    schema: pl.Schema
    steps: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    operator: str = ""
    stateful: bool = False


__all__ = ["MAIN", "Edge", "OpSpec"]
