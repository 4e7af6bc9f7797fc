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

import io
import json
from dataclasses import dataclass
from typing import Any

import polars as pl

from arrowflow._foundation.keygroups import KEY_TYPES_HINT, is_hashable_key_type
from arrowflow.errors import PlanError, SchemaError
from arrowflow.state import FOUND

ROW_COUNT = "__n"
SUPPORTED = (
    "pl.len()",
    "len",
    "count",
    "sum",
    "min",
    "max",
    "nan_min",
    "nan_max",
    "mean",
    "first",
    "last",
    "first/last(ignore_nulls=True)",
)
_KINDS = {
    "Sum": "sum",
    "Min": "min",
    "Max": "max",
    "Mean": "mean",
    "First": "first",
    "Last": "last",
    "Count": "count",
    "FirstNonNull": "first_non_null",
    "LastNonNull": "last_non_null",
}


#: Aggregate kinds whose result depends on the order the rows arrive in.
ORDERED_KINDS = frozenset({"first", "last", "first_non_null", "last_non_null"})


@dataclass(frozen=True)
class AggTerm:
    """One output column: ``kind`` of ``source`` (None for ``pl.len()``).

    ``kind`` is one of ``len`` (values including nulls), ``count`` (non-null values),
    ``sum``, ``min``, ``max``, ``nan_min``, ``nan_max``, ``mean``, ``first``, ``last``,
    ``first_non_null``, ``last_non_null``.
    """

    name: str
    kind: str
    source: pl.Expr | None


# State column suffix of each order-statistic kind, and how a state column merges by suffix.
_SUFFIX = {
    "sum": "sum",
    "min": "min",
    "max": "max",
    "nan_min": "nanmin",
    "nan_max": "nanmax",
    "first": "first",
    "last": "last",
    "first_non_null": "firstnn",
    "last_non_null": "lastnn",
}
_AGGREGATE = {
    "sum": pl.Expr.sum,
    "min": pl.Expr.min,
    "max": pl.Expr.max,
    "nan_min": pl.Expr.nan_min,
    "nan_max": pl.Expr.nan_max,
    "first": pl.Expr.first,
    "last": pl.Expr.last,
    "first_non_null": lambda e: e.first(ignore_nulls=True),
    "last_non_null": lambda e: e.last(ignore_nulls=True),
}
_MERGE_RULE = {
    "n": "add",
    "count": "add",
    "sum": "add",
    "rows": "add",
    "min": "min",
    "max": "max",
    "nanmin": "nan_min",
    "nanmax": "nan_max",
    "first": "first",
    "last": "last",
    "firstnn": "first_non_null",
    "lastnn": "last_non_null",
}


_US_PER_DAY = 86_400_000_000


def _as_float(source: pl.Expr, input_schema: pl.Schema) -> pl.Expr:
    """``source`` as Float64 for a running mean; temporal values by their physical number."""
    if pl.LazyFrame(schema=input_schema).select(source).collect_schema().dtypes()[0].is_temporal():
        source = source.to_physical()
    return source.cast(pl.Float64)


def _is_date(source: pl.Expr, input_schema: pl.Schema) -> bool:
    return pl.LazyFrame(schema=input_schema).select(source).collect_schema().dtypes()[0] == pl.Date


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
            options = node["Agg"][agg_name]
            if kind == "count" and isinstance(options, dict) and options.get("include_nulls"):
                kind = "len"  # pl.col(x).len(): every value, nulls included
            elif (
                kind in ("min", "max")
                and isinstance(options, dict)
                and options.get("propagate_nans")
            ):
                kind = f"nan_{kind}"
            (source,) = bare.meta.pop()
            _check_row_wise(name, expr, source, operator_id)
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


def _has_nested_aggregation(node: object) -> bool:
    """True when a serialized expression aggregates somewhere (``Agg`` or ``Len`` nodes),
    not counting literals and the per-element expression of ``list.eval``."""
    if isinstance(node, dict):
        if "Eval" in node and isinstance(node["Eval"], dict):
            return _has_nested_aggregation(node["Eval"].get("expr"))
        return any(
            key == "Agg" or (key != "Literal" and _has_nested_aggregation(value))
            for key, value in node.items()
        )
    if isinstance(node, list):
        return any(_has_nested_aggregation(item) for item in node)
    return node == "Len"


def _polars_says(question: str, expr: pl.Expr, *, unknown: bool) -> bool:
    # polars answers some meta questions only once the schema is known (Python functions,
    # list.eval) and raises otherwise; those expressions are elementwise as far as we can tell.
    try:
        return bool(getattr(expr.meta, question)())
    except pl.exceptions.PolarsError:
        return unknown


def batch_dependence(expr: pl.Expr) -> str | None:
    """Why the value ``expr`` gives a row depends on the other rows of its batch, or None.

    A stream cuts rows into batches arbitrarily (any batch size, split and worker count), so
    an aggregate (``pl.col("v").sum()``, ``pl.len()``), a sort, shift, cumulative, ``unique``,
    ``head`` or window (``.over()``) expression would give a different answer per cut.
    Row-wise maps, casts, ``when/then``, ``filter`` and ``drop_nulls`` are fine.
    """
    if _has_nested_aggregation(json.loads(expr.meta.serialize(format="json"))):
        return "it contains an aggregation, which would see one batch at a time"
    return _row_dependence(expr)


_OTHER_ROWS = (
    "it depends on other rows (a sort, shift, diff, cumulative, rank, quantile bins, unique, "
    "head/slice, sample or window expression), which would see one batch at a time"
)


def _separable(expr: pl.Expr) -> bool | None:
    """polars' ``is_row_separable`` of the top node; None where it needs a schema to tell."""
    try:
        return bool(expr.meta.is_row_separable())
    except pl.exceptions.PolarsError:
        return None


def _without_selectors(expr: pl.Expr) -> pl.Expr:
    """``expr`` with each selector (``cs.numeric()``, ``pl.all()``, ``pl.col(pl.Int64)``) in
    place of one column: polars judges no node above a selector without a schema, and which
    columns it picks does not change whether a node depends on other rows."""
    text = expr.meta.serialize(format="json")
    if '"Selector"' not in text:
        return expr

    def replaced(node: Any) -> Any:
        if isinstance(node, dict):
            if set(node) == {"Selector"}:
                return {"Column": "_af_selected"}
            return {key: replaced(value) for key, value in node.items()}
        if isinstance(node, list):
            return [replaced(item) for item in node]
        return node

    try:
        return pl.Expr.deserialize(
            io.StringIO(json.dumps(replaced(json.loads(text)))), format="json"
        )
    except (pl.exceptions.PolarsError, ValueError):
        return expr


def _row_dependence(expr: pl.Expr) -> str | None:
    """Why a node anywhere in ``expr`` depends on other rows, or None.

    polars' ``meta.is_row_separable`` judges the top node only (``(c.rank() < 10)`` is
    "separable" because ``<`` is), so every node is asked, down to the columns. A node polars
    cannot judge without a schema is judged by its serialized form: a Python function
    (``map_batches``) counts as row-wise only when it was declared so (``is_elementwise=True``,
    and ``map_elements``), ``list.eval`` looks inside each list only, and a cumulative eval
    sees the whole batch; a node that polars cannot judge because of one of those below it
    is judged by its inputs, and one it cannot judge by itself is refused.
    """
    stack = [_without_selectors(expr)]
    while stack:
        node = stack.pop()
        separable = _separable(node)
        try:
            inputs = node.meta.pop()
        except pl.exceptions.PolarsError:
            inputs = []
        if separable is None:
            serialized = json.loads(node.meta.serialize(format="json"))
            kind, top = (
                next(iter(serialized.items()))
                if isinstance(serialized, dict) and len(serialized) == 1
                else (None, None)
            )
            if kind == "AnonymousFunction":
                options = top.get("options", {}) if isinstance(top, dict) else {}
                if "ROW_SEPARABLE" not in str(options.get("flags", "")):
                    return (
                        "it calls a Python function on whole batches (map_batches), which would "
                        "see one batch at a time; pass is_elementwise=True if it works row by row, "
                        "or use .map_batches() on the stream"
                    )
            elif kind == "Eval":
                if not isinstance(top, dict) or top.get("variant") != "List":
                    return _OTHER_ROWS  # cumulative_eval: each row sees the rows before it
                # list.eval: the evaluation sees one list at a time; only its input matters
                inputs = [i for i in inputs if '"Element"' not in i.meta.serialize(format="json")]
            elif inputs and all(_separable(i) is not None for i in inputs):
                return _OTHER_ROWS  # polars cannot judge the node itself (bin_quantiles)
            # (a leaf polars cannot judge without a schema, a selector, picks columns)
            # else: a node above one of those (an alias, a cast): its inputs decide
        elif not separable:
            return _OTHER_ROWS
        stack.extend(inputs)
    return None


def _check_row_wise(name: str, expr: pl.Expr, source: pl.Expr, operator_id: str) -> None:
    """Refuse an aggregated expression whose value for a row depends on other rows.

    Batches split a key's rows arbitrarily, so ``pl.col("v").shift().sum()``, a sort, a
    cumulative sum, ``unique()``, ``head()``, a window or a nested aggregation would give a
    different answer per batch split. Row-wise maps, filters and ``drop_nulls`` are fine.
    """
    if _polars_says("is_scalar", source, unknown=False):
        reason: str | None = "it aggregates a constant, which has no value per row"
    else:
        reason = batch_dependence(source)
    if reason is not None:
        msg = (
            f"operator {operator_id!r}: aggregation {name!r} = {expr} cannot be computed incrementally: "
            f"{reason}. Aggregate a row-wise expression (column arithmetic, casts, .filter(), "
            f".drop_nulls()) with one of {', '.join(SUPPORTED)}; compute the rest in a .with_columns() "
            f"before key_by or after the aggregation."
        )
        raise PlanError(msg)


def named_aggregations(
    exprs: tuple[pl.Expr, ...], named: dict[str, pl.Expr], operator_id: str
) -> dict[str, pl.Expr]:
    """Positional expressions named by their output name, plus the keyword ones."""
    result: dict[str, pl.Expr] = {}
    for expr in exprs:
        if not isinstance(expr, pl.Expr):
            msg = f"operator {operator_id!r}: expected polars expressions, got {type(expr).__name__} {expr!r}"
            raise PlanError(msg)
        if expr.meta.has_multiple_outputs():
            msg = (
                f"operator {operator_id!r}: {expr} aggregates several columns at once; give each "
                f"its own name, e.g. .agg(a_sum=pl.col('a').sum(), b_sum=pl.col('b').sum())"
            )
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


#: Input rows per key of a combined partial (internal column; never in state or output).
COMBINED_ROWS = "__af_combined_rows"


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
            msg = (
                f"operator {operator_id!r}: aggregation names {sorted(clash)} clash with key columns "
                f"{self.keys}; name the aggregation differently, e.g. .agg({sorted(clash)[0]}_count=...)"
            )
            raise PlanError(msg)
        for key in self.keys:
            dtype = input_schema.get(key)
            if dtype is not None and not is_hashable_key_type(dtype):
                msg = f"operator {operator_id!r}: cannot key by column {key!r} of type {dtype}; {KEY_TYPES_HINT}"
                raise SchemaError(msg)
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
        # polars' mean of dates is a Datetime("us"): the mean in days, scaled (in that order,
        # so that the rounding matches polars to the microsecond).
        self._date_means = {
            t.name
            for t in self.terms
            if t.kind == "mean" and t.source is not None and _is_date(t.source, input_schema)
        }
        self.partial_exprs: list[pl.Expr] = [pl.len().cast(pl.Int64).alias(ROW_COUNT)]
        for term in self.terms:
            self.partial_exprs.extend(self._partials(term, input_schema))
        partial_schema = (
            pl.LazyFrame(schema=input_schema)
            .group_by(self.keys)
            .agg(self.partial_exprs)
            .collect_schema()
        )
        self.key_schema = pl.Schema({k: partial_schema[k] for k in self.keys})
        self.state_schema = pl.Schema(
            {k: v for k, v in partial_schema.items() if k not in self.keys}
        )

    @staticmethod
    def _partials(term: AggTerm, input_schema: pl.Schema) -> list[pl.Expr]:
        src, name = term.source, term.name
        if term.kind == "len":
            counted = pl.len() if src is None else src.len()
            return [counted.cast(pl.Int64).alias(f"{name}__count")]
        assert src is not None
        if term.kind == "count":
            return [src.count().cast(pl.Int64).alias(f"{name}__count")]
        if term.kind == "mean":
            return [
                _as_float(src, input_schema).sum().alias(f"{name}__sum"),
                src.count().cast(pl.Int64).alias(f"{name}__count"),
            ]
        suffix = _SUFFIX[term.kind]
        partials = [_AGGREGATE[term.kind](src).alias(f"{name}__{suffix}")]
        if term.kind in ("first", "last") and not src.meta.is_length_preserving():
            # A filtered input may have no value in a batch: its first/last there is a
            # placeholder null, which must not hide (or replace) a real value of another batch.
            partials.append(src.len().cast(pl.Int64).alias(f"{name}__rows"))
        return partials

    def partial(self, batch: pl.DataFrame) -> pl.DataFrame:
        """Partial aggregates of one batch: key columns then state columns, one row per key."""
        return batch.group_by(self.keys).agg(self.partial_exprs)

    def counted_partial(self, batch: pl.DataFrame) -> pl.DataFrame:
        """:meth:`partial` with :data:`COMBINED_ROWS`, the input rows of each key, last: what
        a combiner sends, so the operator still counts the rows it aggregates."""
        return self.counted_partial_query(batch.lazy()).collect()

    def counted_partial_query(self, rows: pl.LazyFrame) -> pl.LazyFrame:
        """:meth:`counted_partial` as a lazy query: what a source runs inside its scan."""
        return rows.group_by(self.keys).agg(
            *self.partial_exprs, pl.len().cast(pl.Int64).alias(COMBINED_ROWS)
        )

    @property
    def combined_schema(self) -> pl.Schema:
        """The schema of :meth:`counted_partial`."""
        return pl.Schema(
            [*self.key_schema.items(), *self.state_schema.items(), (COMBINED_ROWS, pl.Int64)]
        )

    def _rows_column(self, column: str) -> str | None:
        rows = f"{column.rsplit('__', 1)[0]}__rows"
        return rows if rows in self.state_schema else None

    def merge(self, old: pl.DataFrame, new: pl.DataFrame) -> pl.DataFrame:
        """Merge stored values (``old``, with :data:`FOUND`) with partials of the same keys."""
        found = old.get_column(FOUND)
        both = pl.concat(
            [old.drop(FOUND).rename(lambda c: f"old.{c}"), new.select(self.state_schema.names())],
            how="horizontal",
        ).with_columns(found)
        exprs = []
        for column in self.state_schema.names():
            rule = _MERGE_RULE[column.rsplit("__", 1)[-1]]
            prev, cur = pl.col(f"old.{column}"), pl.col(column)
            rows = self._rows_column(column)
            if rule == "add":
                expr = pl.when(pl.col(FOUND)).then(prev + cur).otherwise(cur)
            elif rule == "min":
                expr = pl.min_horizontal(prev, cur)
            elif rule == "max":
                expr = pl.max_horizontal(prev, cur)
            elif rule in ("nan_min", "nan_max"):
                either = (
                    pl.min_horizontal(prev, cur)
                    if rule == "nan_min"
                    else pl.max_horizontal(prev, cur)
                )
                expr = pl.when(prev.is_nan() | cur.is_nan()).then(float("nan")).otherwise(either)
            elif rule == "first":
                seen = (
                    pl.col(FOUND) if rows is None else pl.col(FOUND) & (pl.col(f"old.{rows}") > 0)
                )
                expr = pl.when(seen).then(prev).otherwise(cur)
            elif rule == "last":
                expr = cur if rows is None else pl.when(pl.col(rows) > 0).then(cur).otherwise(prev)
            elif rule == "first_non_null":
                expr = pl.coalesce(prev, cur)
            else:  # last_non_null
                expr = pl.coalesce(cur, prev)
            exprs.append(expr.cast(self.state_schema[column]).alias(column))
        return both.select(exprs)

    def combine(self, partials: pl.DataFrame) -> pl.DataFrame:
        """Merge partial rows that share a key (e.g. from several batches, in arrival order)
        into one row per key."""
        return combine_partials(partials, self.keys, self.state_schema)

    def final_exprs(self) -> list[pl.Expr]:
        exprs: list[pl.Expr] = [pl.col(k) for k in self.keys]
        for term in self.terms:
            name = term.name
            if term.kind in ("len", "count"):
                expr = pl.col(f"{name}__count")
            elif term.kind == "mean":
                count = pl.col(f"{name}__count")
                expr = pl.when(count > 0).then(pl.col(f"{name}__sum") / count)
                if name in self._date_means:
                    expr = expr * _US_PER_DAY
            else:
                expr = pl.col(f"{name}__{_SUFFIX[term.kind]}")
            exprs.append(expr.cast(self.output_schema[name]).alias(name))
        return exprs

    def finalize(self, keys_and_state: pl.DataFrame) -> pl.DataFrame:
        """Output rows (keys, then aggregates in the user's order) from merged state rows."""
        return keys_and_state.select(self.final_exprs())


def combine_partials(
    partials: pl.DataFrame, keys: list[str], state_schema: pl.Schema
) -> pl.DataFrame:
    """Merge partial-aggregate rows (columns ``<name>__<kind>``) that share ``keys``, in row
    order, into one row per key: what :meth:`IncrementalAgg.combine` does, from the state's
    schema alone (``read_state`` uses it on a checkpoint, without the flow)."""
    exprs = []
    for column in state_schema.names():
        rule = _MERGE_RULE[column.rsplit("__", 1)[-1]]
        col = pl.col(column)
        rows = f"{column.rsplit('__', 1)[0]}__rows"
        if rows in state_schema and rule in ("first", "last"):
            col = col.filter(pl.col(rows) > 0)
        expr = {
            "add": col.sum(),
            "min": col.min(),
            "max": col.max(),
            "nan_min": col.nan_min(),
            "nan_max": col.nan_max(),
            "first": col.first(),
            "last": col.last(),
            "first_non_null": col.first(ignore_nulls=True),
            "last_non_null": col.last(ignore_nulls=True),
        }[rule]
        exprs.append(expr.cast(state_schema[column]).alias(column))
    return partials.group_by(keys, maintain_order=True).agg(exprs)
