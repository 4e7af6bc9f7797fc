"""Incremental aggregation: polars aggregate expressions split into mergeable partials.

A keyed running aggregation (and, later, a window) cannot see all rows of a key at once:
rows arrive batch by batch, across workers and restarts. So each named expression such as
``total=pl.col("amount").sum()`` is decomposed into

- *partial* aggregates computed per batch with one vectorized ``group_by`` (``sum``),
- a *merge* of the stored partials with the batch's partials (``old + new``), and
- a *final* expression over the merged partials (``mean = sum / count``).

Only aggregates that merge exactly are accepted; anything else (``n_unique``, ``median``,
an expression over several aggregates) is refused at build time with the list of what is
supported. Every state keeps the hidden row count ``__n`` so that "key seen before" never
depends on a value being non-null.

>>> import polars as pl
>>> agg = IncrementalAgg({"n": pl.len(), "avg": pl.col("v").mean()}, ["k"],
...                      pl.Schema({"k": pl.Int64, "v": pl.Float64}), operator_id="agg")
>>> sorted(agg.state_schema)
['__n', 'avg__count', 'avg__sum', 'n__count']
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import polars as pl

from arrowflow.errors import PlanError, SchemaError
from arrowflow.state import FOUND

ROW_COUNT = "__n"
SUPPORTED = ("pl.len()", "count", "sum", "min", "max", "mean", "first", "last")
_KINDS = {"Sum": "sum", "Min": "min", "Max": "max", "Mean": "mean", "First": "first", "Last": "last", "Count": "count"}


@dataclass(frozen=True)
class AggTerm:
    """One output column: ``kind`` of ``source`` (None for ``len``)."""

    name: str
    kind: str
    source: pl.Expr | None


def _top_node(expr: pl.Expr) -> object:
    return json.loads(expr.meta.undo_aliases().meta.serialize(format="json"))


def parse_term(name: str, expr: pl.Expr, operator_id: str) -> AggTerm:
    """Recognise one aggregate expression, or explain why it is not incremental."""
    if not isinstance(expr, pl.Expr):
        msg = (
            f"operator {operator_id!r}: aggregation {name!r} must be a polars expression such "
            f"as pl.col('amount').sum(), got {type(expr).__name__} {expr!r}"
        )
        raise PlanError(msg)
    node = _top_node(expr)
    bare = expr.meta.undo_aliases()
    if node == "Len":
        return AggTerm(name, "len", None)
    if isinstance(node, dict) and "Agg" in node and isinstance(node["Agg"], dict):
        (agg_name,) = node["Agg"].keys()
        kind = _KINDS.get(agg_name)
        if kind is not None:
            (source,) = bare.meta.pop()
            return AggTerm(name, kind, source)
        shown = agg_name
    else:
        shown = str(expr)
    msg = (
        f"operator {operator_id!r}: aggregation {name!r} = {expr} cannot be computed "
        f"incrementally ({shown}); each aggregation must be one of {', '.join(SUPPORTED)} over "
        f"an expression, e.g. pl.col('amount').sum(). Compute ratios and other combinations "
        f"in a .with_columns() after the aggregation."
    )
    raise PlanError(msg)


def named_aggregations(exprs: tuple[pl.Expr, ...], named: dict[str, pl.Expr], operator_id: str) -> dict[str, pl.Expr]:
    """Positional expressions named by their output name, plus the keyword ones."""
    result: dict[str, pl.Expr] = {}
    for expr in exprs:
        if not isinstance(expr, pl.Expr):
            msg = f"operator {operator_id!r}: expected polars expressions, got {type(expr).__name__} {expr!r}"
            raise PlanError(msg)
        out = expr.meta.output_name(raise_if_undetermined=False)
        if out is None:
            msg = f"operator {operator_id!r}: give the aggregation {expr} a name, e.g. .agg(total={expr})"
            raise PlanError(msg)
        result[out] = expr
    for name, expr in named.items():
        if name in result:
            msg = f"operator {operator_id!r}: two aggregations are named {name!r}"
            raise PlanError(msg)
        result[name] = expr
    if not result:
        msg = f"operator {operator_id!r}: .agg() needs at least one aggregation, e.g. .agg(n=pl.len())"
        raise PlanError(msg)
    return result


class IncrementalAgg:
    """Partial, merge and final expressions for a set of named aggregations."""

    def __init__(
        self,
        named: dict[str, pl.Expr],
        keys: list[str],
        input_schema: pl.Schema,
        *,
        operator_id: str,
    ) -> None:
        self.keys = list(keys)
        self.operator_id = operator_id
        self.terms = [parse_term(name, expr, operator_id) for name, expr in named.items()]
        clash = set(named) & set(keys)
        if clash:
            msg = f"operator {operator_id!r}: aggregation names {sorted(clash)} clash with key columns"
            raise PlanError(msg)
        try:
            self.output_schema = (
                pl.LazyFrame(schema=input_schema).group_by(self.keys).agg(**named).collect_schema()
            )
        except pl.exceptions.ColumnNotFoundError as exc:
            first = str(exc).splitlines()[0]
            msg = f"operator {operator_id!r}: {first}"
            raise SchemaError(msg) from None
        except pl.exceptions.PolarsError as exc:
            first = str(exc).splitlines()[0]
            msg = f"operator {operator_id!r}: the aggregations do not fit the input schema: {first}"
            raise SchemaError(msg) from None
        self.partial_exprs: list[pl.Expr] = [pl.len().cast(pl.Int64).alias(ROW_COUNT)]
        for term in self.terms:
            self.partial_exprs.extend(self._partials(term))
        partial_schema = (
            pl.LazyFrame(schema=input_schema).group_by(self.keys).agg(self.partial_exprs).collect_schema()
        )
        self.key_schema = pl.Schema({k: partial_schema[k] for k in self.keys})
        self.state_schema = pl.Schema({k: v for k, v in partial_schema.items() if k not in self.keys})

    @staticmethod
    def _partials(term: AggTerm) -> list[pl.Expr]:
        src, name = term.source, term.name
        if term.kind == "len":
            return [pl.len().cast(pl.Int64).alias(f"{name}__count")]
        assert src is not None
        if term.kind == "count":
            return [src.count().cast(pl.Int64).alias(f"{name}__count")]
        if term.kind == "mean":
            return [
                src.cast(pl.Float64).sum().alias(f"{name}__sum"),
                src.count().cast(pl.Int64).alias(f"{name}__count"),
            ]
        return [getattr(src, term.kind)().alias(f"{name}__{term.kind}")]

    def partial(self, batch: pl.DataFrame) -> pl.DataFrame:
        """Partial aggregates of one batch: key columns then state columns, one row per key."""
        return batch.group_by(self.keys).agg(self.partial_exprs)

    def merge(self, old: pl.DataFrame, new: pl.DataFrame) -> pl.DataFrame:
        """Merge stored values (``old``, with :data:`FOUND`) with partials of the same keys."""
        found = old.get_column(FOUND)
        both = pl.concat(
            [old.drop(FOUND).rename(lambda c: f"old.{c}"), new.select(self.state_schema.names())],
            how="horizontal",
        ).with_columns(found)
        exprs = []
        for column in self.state_schema.names():
            agg = column.rsplit("__", 1)[-1] if column != ROW_COUNT else "count"
            prev, cur = pl.col(f"old.{column}"), pl.col(column)
            if agg in ("count", "sum"):
                expr = pl.when(pl.col(FOUND)).then(prev + cur).otherwise(cur)
            elif agg == "min":
                expr = pl.min_horizontal(prev, cur)
            elif agg == "max":
                expr = pl.max_horizontal(prev, cur)
            elif agg == "first":
                expr = pl.when(pl.col(FOUND)).then(prev).otherwise(cur)
            else:  # last
                expr = cur
            exprs.append(expr.cast(self.state_schema[column]).alias(column))
        return both.select(exprs)

    def combine(self, partials: pl.DataFrame) -> pl.DataFrame:
        """Merge partial rows that share a key (e.g. from several batches) into one row per key."""
        exprs = []
        for column in self.state_schema.names():
            agg = column.rsplit("__", 1)[-1] if column != ROW_COUNT else "count"
            col = pl.col(column)
            expr = {"count": col.sum(), "sum": col.sum(), "min": col.min(), "max": col.max(),
                    "first": col.first(), "last": col.last()}[agg]
            exprs.append(expr.cast(self.state_schema[column]).alias(column))
        return partials.group_by(self.keys, maintain_order=True).agg(exprs)

    def final_exprs(self) -> list[pl.Expr]:
        exprs: list[pl.Expr] = [pl.col(k) for k in self.keys]
        for term in self.terms:
            name = term.name
            if term.kind in ("len", "count"):
                expr = pl.col(f"{name}__count")
            elif term.kind == "mean":
                count = pl.col(f"{name}__count")
                expr = pl.when(count > 0).then(pl.col(f"{name}__sum") / count)
            else:
                expr = pl.col(f"{name}__{term.kind}")
            exprs.append(expr.cast(self.output_schema[name]).alias(name))
        return exprs

    def finalize(self, keys_and_state: pl.DataFrame) -> pl.DataFrame:
        """Output rows (keys, then aggregates in the user's order) from merged state rows."""
        return keys_and_state.select(self.final_exprs())
