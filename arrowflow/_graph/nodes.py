"""Nodes of the graph model, and the checks and descriptions of the polars expressions they hold.

A :class:`Node` is one logical operator: its id, its kind, its inputs and its parameters.
The graph that owns the nodes is :class:`arrowflow._graph.graph.Graph`; what a kind means
is its :class:`arrowflow._graph.kinds.OperatorKind`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from arrowflow._graph.aggregates import batch_dependence
from arrowflow.errors import PlanError, SchemaError

_ID = re.compile(r"^[A-Za-z0-9_.\-]+$")


@dataclass(eq=False)
class Node:
    """One logical operator. ``params`` hold its expressions, function, source or sink."""

    id: str
    kind: str
    inputs: list[Node]
    params: dict[str, Any] = field(default_factory=dict)
    side: str | None = None  # for kind == "side_output": which side output of inputs[0]
    # The output schema once computed. Kept on the node, not in a dict keyed by id(node):
    # nodes that are not part of the flow (collect()'s sink) die, and their id is reused.
    schema: pl.Schema | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        return f"Node({self.id!r}, {self.kind})"


def _check_exprs(exprs: Sequence[Any], operator_id: str, what: str) -> list[pl.Expr]:
    checked = []
    for expr in exprs:
        if isinstance(expr, str):
            expr = pl.col(expr)
        if not isinstance(expr, pl.Expr):
            msg = (
                f"operator {operator_id!r}: {what} expects polars expressions such as "
                f"pl.col('amount') > 0, got {type(expr).__name__} {expr!r}"
            )
            raise PlanError(msg)
        checked.append(expr)
    return checked


def _check_batch_independent(exprs: list[pl.Expr], operator_id: str, what: str) -> None:
    """Refuse expressions whose result would depend on how rows are cut into batches."""
    for expr in exprs:
        reason = batch_dependence(expr)
        if reason is not None:
            msg = (
                f"operator {operator_id!r}: {what} cannot use {describe_expr(expr)}: {reason}, so the "
                f"result would depend on batch sizes and worker counts. Aggregate with "
                f".key_by(...).agg(...) instead, or use .map_batches(fn) if a per-batch result is what you want."
            )
            raise PlanError(msg)


def _is_scalar(expr: pl.Expr) -> bool:
    try:
        return expr.meta.is_scalar()
    except pl.exceptions.PolarsError:  # a Python function: polars cannot tell without a schema
        return False


def _polars_schema_error(operator_id: str, exc: Exception) -> SchemaError:
    first = str(exc).strip().splitlines()[0]
    msg = f"operator {operator_id!r}: {first}"
    return SchemaError(msg)


def uses_all_columns(expr: pl.Expr) -> bool:
    """True when an expression may read columns it does not name (wildcards, selectors)."""
    if expr.meta.has_multiple_outputs():
        return True
    text = expr.meta.serialize(format="json")
    return any(word in text for word in ('"Selector"', '"Nth"', '"Wildcard"', '"DtypeColumn"'))


def describe_expr(expr: pl.Expr) -> str:
    text = str(expr)
    return text if len(text) < 80 else text[:77] + "..."


def fingerprint_of(payload: Any) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[
        :16
    ]
