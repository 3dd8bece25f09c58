"""Split one SELECT over the sharded table ``input`` into a shard SQL and, when needed, a merge.

Users write a single query as if ``input`` were one table. :func:`distribute` reads it with
sqlglot and decides how it runs:

* ``map``: every output row comes from one input row (filters, projections, scalar functions,
  joins with broadcast tables, UNNEST). Each shard runs the query unchanged and the shard
  outputs together are the result.
* ``aggregate``: two phases. Each shard computes a partial result (per-group counts, sums and
  the like, or its own sorted, distinct or first rows); one merge combines the partial results,
  read as the table ``partials``.
* ``single``: with ``single_task=True`` the query runs unchanged as one task over all the input.

A query that needs rows from several shards at once and has no exact two-phase form (window
functions, COUNT(DISTINCT ...), medians, self-joins, ...) raises :class:`NotDistributableError`.
Named parameters (``$name``) are kept as written: the shard and merge SQL bind them later.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

import duckdb
import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError
from sqlglot.tokenizer_core import Token, TokenType

from ecs_query import engine
from ecs_query.errors import QueryError

_DIALECT: Final = "duckdb"
_INPUT: Final = "input"
_PARTIALS: Final = "partials"
_SINGLE_TASK_HINT: Final = "pass --single-task to run the whole input as one task"
# Prefix of the helper columns that carry partial results from the shards to the merge. A longer
# prefix is chosen when the query itself uses names that start with it.
_HELPER_PREFIX: Final = "__part_"

# Aggregates a merge combines with the same function: min of mins, or of bits, and so on.
# Repeated values do not change them, so DISTINCT inside them is allowed as well.
_IDEMPOTENT: Final[tuple[type[exp.Expr], ...]] = (
    exp.Min,
    exp.Max,
    exp.LogicalAnd,
    exp.LogicalOr,
    exp.BitwiseAndAgg,
    exp.BitwiseOrAgg,
    exp.AnyValue,
)
_VARIANCES: Final[dict[type[exp.Expr], tuple[bool, bool]]] = {
    # class: (sample variance, square root)
    exp.Variance: (True, False),
    exp.VariancePop: (False, False),
    exp.Stddev: (True, True),
    exp.StddevSamp: (True, True),
    exp.StddevPop: (False, True),
}
# DuckDB aggregates that sqlglot does not model, by the name written in the query.
_SUM_LIKE_NAMES: Final = frozenset({"fsum", "kahan_sum", "sumkahan", "product"})
_WHOLE_GROUP_REASON: Final = "it needs every value of a group in one place"
_COLLATE_REASON: Final = (
    "partial results travel as Parquet, which keeps no collation, so the merge would compare "
    "values differently"
)
_ORDER_REASON: Final = "its result depends on the order of rows, which shards do not share"
_NOT_MERGEABLE: Final[dict[type[exp.Expr], str]] = {
    exp.ApproxDistinct: (
        "DuckDB cannot write out or merge its HyperLogLog sketch; counting exactly instead would "
        "ship every distinct value to the merge"
    ),
    exp.Median: _WHOLE_GROUP_REASON,
    exp.Quantile: _WHOLE_GROUP_REASON,
    exp.PercentileCont: _WHOLE_GROUP_REASON,
    exp.PercentileDisc: _WHOLE_GROUP_REASON,
    exp.ApproxQuantile: _WHOLE_GROUP_REASON,
    exp.Mode: _WHOLE_GROUP_REASON,
    exp.ArrayAgg: _ORDER_REASON,
    exp.GroupConcat: _ORDER_REASON,
    exp.First: _ORDER_REASON,
    exp.Last: _ORDER_REASON,
    exp.ArgMin: _ORDER_REASON + " when several rows tie",
    exp.ArgMax: _ORDER_REASON + " when several rows tie",
}
# How messages name aggregates whose sqlglot spelling differs from what users write.
_LABELS: Final[dict[type[exp.Expr], str]] = {
    exp.ArrayAgg: "LIST/ARRAY_AGG",
    exp.GroupConcat: "STRING_AGG",
    exp.ApproxDistinct: "APPROX_COUNT_DISTINCT",
    exp.PercentileCont: "QUANTILE_CONT",
    exp.PercentileDisc: "QUANTILE_DISC",
    exp.LogicalAnd: "BOOL_AND",
    exp.LogicalOr: "BOOL_OR",
    exp.Variance: "VAR_SAMP",
    exp.VariancePop: "VAR_POP",
}


class Mode(StrEnum):
    """How a query runs over the shards."""

    MAP = "map"
    """Each shard runs the query as written; the shard outputs together are the result."""
    AGGREGATE = "aggregate"
    """Each shard computes a partial result; one merge over ``partials`` finishes the query."""
    SINGLE = "single"
    """One task runs the query as written over the whole input."""


@dataclass(frozen=True)
class Distribution:
    """How one query runs: the SQL for each shard, and the merge that finishes it, if any."""

    mode: Mode
    shard_sql: str
    """Runs once per shard over the table ``input`` (that shard's files)."""
    merge_sql: str | None
    """Runs once over the table ``partials`` (every shard's output); ``None`` when not needed."""
    reason: str
    """One line on why this mode, for ``ecs-query plan --explain``."""


class NotDistributableError(QueryError):
    """The query is valid SQL but cannot be split over shards with the same result.

    ``construct`` names the part of the query at fault and ``why`` says what goes wrong.
    """

    def __init__(self, construct: str, why: str) -> None:
        self.construct = construct
        self.why = why
        super().__init__(f"{construct} cannot run per shard: {why}; {_SINGLE_TASK_HINT}")


def distribute(
    sql: str, *, single_task: bool = False, broadcast_tables: Collection[str] = ()
) -> Distribution:
    """Decide how ``sql`` runs over shards of ``input`` and write the SQL for each phase.

    ``broadcast_tables`` are the other tables the query may read; every shard reads them
    whole. With ``single_task`` the query is only checked to be one SELECT and runs as written.

    Raises ``QueryError`` when ``sql`` is not exactly one SELECT or reads an unknown table, and
    ``NotDistributableError`` when it is valid but has no exact per-shard form.
    """
    text = sql.strip().rstrip(";").strip()
    with _database().cursor() as con:
        # DuckDB's own parser decides what counts as one SELECT statement.
        engine.single_select(con, text)
        if single_task:
            return Distribution(
                Mode.SINGLE, text, None, "--single-task: one task reads the whole input"
            )
        tree = _parse(text)
        if not isinstance(tree, exp.Select):
            raise _not_select(tree)
        _Analysis(broadcast_tables).check_query(tree)
        distinct = tree.args.get("distinct")
        if distinct is not None and distinct.args.get("on") is not None:
            raise NotDistributableError(
                "SELECT DISTINCT ON",
                "it keeps the first row per key, and each shard would keep its own first row",
            )

        prefix = _helper_prefix(tree)
        grouped = any(tree.args.get(key) is not None for key in ("group", "having"))
        if grouped or any(_is_aggregate(node) for node in _own_scope(tree)):
            return _AggregatePlanner(con, tree, text, prefix).plan()
        if any(tree.args.get(key) is not None for key in ("distinct", "order", "limit", "offset")):
            return _plan_merged_map(tree, prefix, _output_names(con, text))
    return Distribution(
        Mode.MAP,
        text,
        None,
        "row by row: each shard filters and projects its own rows; their outputs are the result",
    )


# ---------------------------------------------------------------------------- reading the SQL


@functools.cache
def _database() -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB used only to parse SQL; each call takes its own cursor from it.

    Kept open because opening a database costs tens of milliseconds. It never reads files.
    """
    return duckdb.connect(config={"enable_external_access": False})


def _parse(text: str) -> exp.Expr:
    try:
        trees = sqlglot.parse(text, read=_DIALECT)
    except SqlglotError as error:
        raise NotDistributableError(
            "this query", f"its structure could not be analysed ({_first_line(error)})"
        ) from error
    if len(trees) != 1 or trees[0] is None:
        raise QueryError(f"SQL must be one SELECT statement; received {len(trees)}")
    return trees[0]


def _not_select(tree: exp.Expr) -> NotDistributableError:
    if isinstance(tree, exp.SetOperation):
        return NotDistributableError(
            f"a {type(tree).__name__.upper()} of several SELECTs",
            "each shard would combine only its own rows, and rows of broadcast tables would "
            "repeat once per shard",
        )
    return NotDistributableError(
        f"a {type(tree).__name__.upper()} query", "only a plain SELECT ... FROM input is split"
    )


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _short(node: exp.Expr, limit: int = 60) -> str:
    text = node.sql(dialect=_DIALECT)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _helper_prefix(tree: exp.Expr) -> str:
    used = [ident.name.lower() for ident in tree.find_all(exp.Identifier)]
    prefix = _HELPER_PREFIX
    while any(name.startswith(prefix) for name in used):
        prefix = "_" + prefix
    return prefix


def _own_scope(select: exp.Select) -> Iterator[exp.Expr]:
    """Nodes that ``select`` itself evaluates.

    Nested queries are yielded but not entered, and the relations in FROM and JOIN (tables,
    derived tables, UNNEST) and the WITH clause are skipped: they are checked on their own.
    """
    skip: set[int] = set()
    from_ = select.args.get("from_")
    if from_ is not None:
        skip.add(id(from_.this))
    for join in select.args.get("joins") or ():
        skip.add(id(join.this))
    stack = [child for key, child in _children(select) if key != "with_"]
    while stack:
        node = stack.pop()
        if id(node) in skip:
            continue
        yield node
        if isinstance(node, (exp.Query, exp.Subquery)):
            continue
        stack.extend(child for _, child in _children(node))


def _children(node: exp.Expr) -> Iterator[tuple[str, exp.Expr]]:
    for key, value in node.args.items():
        values = value if isinstance(value, list) else [value]
        for child in values:
            if isinstance(child, exp.Expr):
                yield key, child


# ---------------------------------------------------------------------------- aggregates


@functools.cache
def _duckdb_functions() -> tuple[frozenset[str], dict[str, tuple[str, ...]]]:
    """DuckDB's aggregate function names, and each macro's definitions."""
    with _database().cursor() as con:
        rows = con.execute(
            "SELECT function_name, function_type, macro_definition FROM duckdb_functions() "
            "WHERE function_type IN ('aggregate', 'macro')"
        ).fetchall()
    aggregates = frozenset(name.lower() for name, kind, _ in rows if kind == "aggregate")
    macros: dict[str, list[str]] = {}
    for name, kind, definition in rows:
        if kind == "macro" and definition:
            macros.setdefault(name.lower(), []).append(definition)
    return aggregates, {name: tuple(texts) for name, texts in macros.items()}


@functools.cache
def _is_aggregate_name(name: str) -> bool:
    """True for DuckDB aggregates, and for macros built on them (``weighted_avg``)."""
    aggregates, macros = _duckdb_functions()
    if name in aggregates:
        return True
    for definition in macros.get(name, ()):
        try:
            body = sqlglot.parse_one(definition, read=_DIALECT)
        except SqlglotError:
            # A macro the rewriter cannot read is treated as an aggregate: refusing to split a
            # query is safe, splitting one wrongly is not.
            return True
        if any(_is_aggregate(node) for node in body.walk()):
            return True
    return False


def _is_aggregate(node: exp.Expr) -> bool:
    if isinstance(node, exp.AggFunc):
        return True
    return isinstance(node, exp.Anonymous) and _is_aggregate_name(node.name.lower())


def _has_aggregate(node: exp.Expr) -> bool:
    return any(_is_aggregate(child) for child in _scope_of(node))


def _scope_of(node: exp.Expr) -> Iterator[exp.Expr]:
    """``node`` and its descendants, without entering nested queries."""
    stack = [node]
    while stack:
        current = stack.pop()
        yield current
        if current is not node and isinstance(current, (exp.Query, exp.Subquery)):
            continue
        stack.extend(child for _, child in _children(current))


def _needs_rows(node: exp.Expr) -> bool:
    """True when ``node`` reads columns or tables, so only a shard can evaluate it."""
    return any(
        isinstance(child, (exp.Column, exp.Star, exp.Query, exp.Subquery, exp.Columns))
        for child in node.walk()
    )


def _label(agg: exp.Expr) -> str:
    if isinstance(agg, exp.Anonymous):
        return agg.name.upper()
    label = _LABELS.get(type(agg))
    if label is not None:
        return label
    return agg.sql_name() if isinstance(agg, exp.Func) else type(agg).__name__.upper()


# ---------------------------------------------------------------------------- where input flows


class _Analysis:
    """Checks that ``input`` is read exactly once, row by row, by the query's main FROM.

    A relation is *sharded* when it reads ``input`` (directly, through a CTE or a derived
    table) and *whole* otherwise: every shard reads a whole relation completely.
    """

    def __init__(self, broadcast_tables: Collection[str]) -> None:
        self._broadcast = {name.lower() for name in broadcast_tables}
        self._cte_bodies: dict[str, exp.Expr] = {}
        self._cte_sharded: dict[str, bool] = {}

    def check_query(self, select: exp.Select) -> None:
        for cte in select.find_all(exp.CTE):
            self._cte_bodies.setdefault(cte.alias_or_name.lower(), cte.this)
        with_ = select.args.get("with_")
        if with_ is not None and with_.args.get("recursive") and self._reads_input(with_):
            raise NotDistributableError(
                "WITH RECURSIVE over input", "each step would see only one shard's rows"
            )
        self._check_scope(select, row_local=False)
        if not self._check_from(select):
            raise NotDistributableError(
                "a query that does not read input in its FROM clause",
                "every shard would return the same rows",
            )

    def _reads_input(self, node: exp.Expr) -> bool:
        return any(self._table_sharded(table) for table in node.find_all(exp.Table))

    def _table_sharded(self, table: exp.Table) -> bool:
        if not isinstance(table.this, exp.Identifier):
            return False  # a table function such as range(10): the same in every shard
        schema = table.db.lower()
        if schema and schema != "main":
            return False  # catalog tables such as information_schema.tables
        name = table.name.lower()
        if name in self._cte_bodies:
            return self._cte_is_sharded(name)
        if name == _INPUT:
            return True
        if name in self._broadcast:
            return False
        known = ", ".join(sorted({_INPUT, *self._broadcast}))
        raise QueryError(
            f"the SQL reads table {table.name!r}, which is neither {_INPUT!r} nor a broadcast "
            f"table (known: {known}); add it with --table {table.name}=URI"
        )

    def _cte_is_sharded(self, name: str) -> bool:
        known = self._cte_sharded.get(name)
        if known is not None:
            return known
        # Marked whole while its body is read, so a recursive reference does not loop.
        self._cte_sharded[name] = False
        body = self._cte_bodies[name]
        sharded = self._reads_input(body)
        if sharded:
            self._check_row_local(body, f"the CTE {name}")
        self._cte_sharded[name] = sharded
        return sharded

    def _check_from(self, select: exp.Select) -> bool:
        """Check the FROM and JOIN clauses; True when they read input (exactly once)."""
        from_ = select.args.get("from_")
        if from_ is None:
            return False
        left = self._relation_sharded(from_.this)
        for join in select.args.get("joins") or ():
            right = self._relation_sharded(join.this)
            if left and right:
                raise NotDistributableError(
                    "a join that reads input on both sides",
                    "each shard holds only part of input, so rows in different shards would "
                    "never meet",
                )
            if left or right:
                _check_join(join, input_on_left=left)
            left = left or right
        return left

    def _relation_sharded(self, relation: exp.Expr) -> bool:
        if isinstance(relation, exp.Table):
            sharded = self._table_sharded(relation)
        elif isinstance(relation, (exp.Subquery, exp.Lateral)):
            sharded = self._reads_input(relation)
            if sharded:
                self._check_row_local(relation.this, "a subquery in FROM")
        elif self._reads_input(relation):
            raise NotDistributableError(
                f"{_short(relation)} in FROM", "it reads input in a way that is not row by row"
            )
        else:
            sharded = False
        if sharded and relation.args.get("pivots"):
            raise NotDistributableError(
                "PIVOT over input", "it aggregates rows from the whole input"
            )
        if sharded and relation.args.get("sample") is not None:
            raise NotDistributableError(
                "a sample of input", "sample sizes would apply to each shard, not to the whole"
            )
        return sharded

    def _check_row_local(self, query: exp.Expr, what: str) -> None:
        """A query inside the main one that reads input must keep rows independent."""
        while isinstance(query, exp.Subquery):
            query = query.this
        if not isinstance(query, exp.Select):
            raise NotDistributableError(
                f"a {type(query).__name__.upper()} over input in {what}",
                "only a plain SELECT that filters and projects input can run per shard",
            )
        self._check_scope(query, row_local=True, what=what)
        self._check_from(query)

    def _check_scope(self, select: exp.Select, *, row_local: bool, what: str = "") -> None:
        for key in ("qualify", "windows"):
            if select.args.get(key):
                raise NotDistributableError(
                    f"{key.upper()} in {what or 'the query'}",
                    "window functions read rows across the whole input",
                )
        if select.args.get("sample") is not None:
            raise NotDistributableError(
                "USING SAMPLE", "sample sizes would apply to each shard, not to the whole"
            )
        for node in _own_scope(select):
            if isinstance(node, exp.Window):
                raise NotDistributableError(
                    f"the window function {_short(node)}",
                    "it reads rows across the whole input, and each shard has only its own",
                )
            if isinstance(node, (exp.Query, exp.Subquery)) and self._reads_input(node):
                raise NotDistributableError(
                    f"the subquery {_short(node)}",
                    "it reads input, and each shard would see only its own part of it",
                )
            if row_local and _is_aggregate(node):
                raise NotDistributableError(
                    f"the aggregate {_short(node)} in {what}",
                    "only the outermost SELECT may aggregate input",
                )
        if not row_local:
            return
        for key in ("group", "having", "distinct", "limit", "offset"):
            if select.args.get(key) is not None:
                raise NotDistributableError(
                    f"{key.upper()} in {what}",
                    "only the outermost SELECT may group, deduplicate or limit input",
                )


def _check_join(join: exp.Join, *, input_on_left: bool) -> None:
    side = (join.side or "").upper()
    kind = (join.kind or "").upper()
    method = str(join.args.get("method") or "").upper()
    if method == "POSITIONAL":
        raise NotDistributableError(
            "POSITIONAL JOIN with input", "row positions restart in every shard"
        )
    if input_on_left:
        keeps_whole = side in ("RIGHT", "FULL")
    else:
        keeps_whole = side in ("LEFT", "FULL") or kind in ("SEMI", "ANTI") or method == "ASOF"
    if keeps_whole:
        written = " ".join(part for part in (method, side, kind) if part) or "INNER"
        raise NotDistributableError(
            f"the {written} JOIN of input with {_short(join.this)}",
            "every shard would emit the broadcast table's rows that do not match its own rows",
        )


# ---------------------------------------------------------------------------- map with a merge


def _plan_merged_map(tree: exp.Select, prefix: str, outputs: list[_Output]) -> Distribution:
    """DISTINCT, ORDER BY, LIMIT and OFFSET without aggregates: shards, then one merge."""
    distinct = tree.args.get("distinct") is not None
    order = tree.args.get("order")
    limit, offset = _limit_and_offset(tree)
    items = list(tree.expressions)

    if distinct and any(isinstance(node, exp.Collate) for item in items for node in item.walk()):
        raise NotDistributableError("SELECT DISTINCT ... COLLATE", _COLLATE_REASON)

    hidden: list[exp.Expr] = []
    merge_order: list[exp.Expr] = []
    for ordered in order.expressions if order is not None else ():
        key = ordered.this
        collation = key.expression if isinstance(key, exp.Collate) else None
        if collation is not None:
            key = key.this
        target = _output_reference(key, items)
        if target is None:
            if distinct:
                raise NotDistributableError(
                    f"ORDER BY {_short(key)} with SELECT DISTINCT",
                    "the sort key must be one of the selected columns",
                )
            name = f"{prefix}s{len(hidden)}"
            hidden.append(exp.alias_(key.copy(), name, quoted=True))
            target = exp.column(name, quoted=True)
        if collation is not None:
            # Parquet keeps no collation, so the merge sorts with it again.
            target = exp.Collate(this=target, expression=collation.copy())
        merged = ordered.copy()
        merged.set("this", target)
        merge_order.append(merged)

    # The shard SQL is written anew, and DuckDB names an unaliased expression after its text,
    # so each one is given the name the query as written would have.
    named = [
        item.copy()
        if output.bare or isinstance(item, exp.Alias) or any(map(_expands_columns, item.walk()))
        else exp.alias_(item.copy(), output.name, quoted=True)
        for item, output in zip(items, outputs, strict=True)
    ]
    shard = tree.copy()
    shard.set("expressions", [*named, *hidden])
    for key in ("order", "limit", "offset"):
        shard.set(key, None)
    if limit is not None:
        # Top-k: a row among the first k + offset overall is among the first k + offset of
        # its own shard, so each shard keeps that many and the merge picks from them.
        shard.set("order", order.copy() if order is not None else None)
        shard.set("limit", exp.Limit(expression=_plus(limit, offset)))

    star = exp.Star(except_=[exp.column(alias.alias, quoted=True) for alias in hidden] or None)
    merge = exp.Select(expressions=[star]).from_(exp.to_table(_PARTIALS))
    if distinct:
        merge.set("distinct", exp.Distinct())
    if merge_order:
        merge.set("order", exp.Order(expressions=merge_order))
    if limit is not None:
        merge.set("limit", exp.Limit(expression=limit.copy()))
    if offset is not None:
        merge.set("offset", exp.Offset(expression=offset.copy()))

    kept = "LIMIT + OFFSET" if offset is not None else "LIMIT"
    if limit is not None and order is not None:
        shard_step = f"keeps its first {kept} rows by the ORDER BY (top-k)"
    elif limit is not None:
        shard_step = f"keeps at most {kept} rows"
    else:
        shard_step = "filters and projects its rows"
    if distinct:
        shard_step = "removes its own duplicates and " + shard_step
    finishing = [
        name
        for name, present in (
            ("DISTINCT", distinct),
            ("ORDER BY", order is not None),
            ("LIMIT", limit is not None),
            ("OFFSET", offset is not None),
        )
        if present
    ]
    reason = f"each shard {shard_step}; one merge applies {', '.join(finishing)} over all of them"
    return Distribution(
        Mode.AGGREGATE, shard.sql(dialect=_DIALECT), merge.sql(dialect=_DIALECT), reason
    )


def _limit_and_offset(tree: exp.Select) -> tuple[exp.Expr | None, exp.Expr | None]:
    limit_node = tree.args.get("limit")
    limit: exp.Expr | None = None
    if isinstance(limit_node, exp.Fetch):
        raise NotDistributableError("FETCH FIRST", "write it as LIMIT to split the query")
    if limit_node is not None:
        options = limit_node.args.get("limit_options")
        if options is not None and (options.args.get("percent") or options.args.get("with_ties")):
            raise NotDistributableError(
                f"LIMIT {_short(limit_node.expression)} PERCENT",
                "a share of each shard is not the same share of the whole",
            )
        limit = limit_node.expression
    offset_node = tree.args.get("offset")
    offset = offset_node.expression if offset_node is not None else None
    return limit, offset


def _plus(limit: exp.Expr, offset: exp.Expr | None) -> exp.Expr:
    if offset is None:
        return limit.copy()
    if _integer(limit) is not None and _integer(offset) is not None:
        return exp.Literal.number(int(limit.name) + int(offset.name))
    return exp.Paren(this=exp.Add(this=exp.Paren(this=limit.copy()), expression=offset.copy()))


def _integer(node: exp.Expr) -> int | None:
    if isinstance(node, exp.Literal) and not node.is_string and node.name.isdigit():
        return int(node.name)
    return None


def _output_reference(key: exp.Expr, items: list[exp.Expr]) -> exp.Expr | None:
    """The merge's reference to the output column that ``key`` sorts by, if it is one."""
    if _integer(key) is not None or not _needs_rows(key):
        # A position (outputs keep theirs in the merge), ORDER BY ALL, or a constant.
        return key.copy()
    if isinstance(key, exp.Column) and not key.table:
        for item in items:
            if isinstance(item, exp.Alias) and item.alias.lower() == key.name.lower():
                return exp.column(item.alias, quoted=True)
            if isinstance(item, exp.Column) and item.name.lower() == key.name.lower():
                return exp.column(item.name, quoted=True)
    for position, item in enumerate(items, start=1):
        if any(map(_expands_columns, item.walk())):
            return None  # positions after a star depend on the input's columns
        if item.unalias() == key:
            return exp.Literal.number(position)
    return None


# ---------------------------------------------------------------------------- output names


@dataclass(frozen=True)
class _Output:
    """The name DuckDB gives one SELECT item, unless it is ``bare``.

    A bare item is a column reference or a star: DuckDB names it from the input's schema (the
    column's spelling there), known only at run time. It is carried through the shards as a
    column, so that DuckDB names it again.
    """

    name: str
    bare: bool


def _output_names(con: duckdb.DuckDBPyConnection, text: str) -> list[_Output]:
    """Output column names exactly as DuckDB derives them from the query text.

    DuckDB's parse (as JSON) says which items are aliased or bare columns. An unaliased
    expression is named by DuckDB's rendering of it, so its text, as written, is parsed again by
    DuckDB to render the same name.
    """
    row = con.execute("SELECT json_serialize_sql($sql)", {"sql": text}).fetchone()
    document: dict[str, Any] = json.loads(row[0]) if row else {"error": True}
    if document.get("error"):
        raise QueryError(f"SQL does not parse: {document.get('error_message', 'unknown error')}")
    node = document["statements"][0]["node"]
    items = node.get("select_list", []) if node.get("type") == "SELECT_NODE" else []
    texts = _select_item_texts(text)
    if not items or len(texts) != len(items):
        raise NotDistributableError(
            "this query", "its output columns could not be matched to the SELECT list"
        )
    outputs = []
    for item, item_text in zip(items, texts, strict=True):
        if item.get("alias"):
            outputs.append(_Output(item["alias"], bare=False))
        elif item.get("class") == "COLUMN_REF":
            outputs.append(_Output(item["column_names"][-1], bare=True))
        elif item.get("class") in ("STAR", "COLUMNS"):
            outputs.append(_Output("", bare=True))
        else:
            outputs.append(_Output(str(duckdb.SQLExpression(item_text)), bare=False))
    return outputs


_NESTING: Final = {
    TokenType.L_PAREN: 1,
    TokenType.L_BRACKET: 1,
    TokenType.L_BRACE: 1,
    TokenType.R_PAREN: -1,
    TokenType.R_BRACKET: -1,
    TokenType.R_BRACE: -1,
}
_AFTER_SELECT_LIST: Final = frozenset(
    {
        TokenType.FROM,
        TokenType.WHERE,
        TokenType.GROUP_BY,
        TokenType.HAVING,
        TokenType.QUALIFY,
        TokenType.WINDOW,
        TokenType.ORDER_BY,
        TokenType.LIMIT,
        TokenType.OFFSET,
        TokenType.FETCH,
        TokenType.UNION,
        TokenType.EXCEPT,
        TokenType.INTERSECT,
        TokenType.SEMICOLON,
    }
)


def _select_item_texts(text: str) -> list[str]:
    """The text of each item in the outermost SELECT list, as written (aliases included).

    Tokens, not characters, are scanned: commas and clause keywords count only outside
    parentheses, brackets and braces, and strings and quoted names are single tokens.
    """
    tokens = sqlglot.tokenize(text, read=_DIALECT)
    depth = 0
    items: list[list[Token]] = []
    previous: Token | None = None
    for token in tokens:
        if not items:
            if depth == 0 and token.token_type == TokenType.SELECT:
                items.append([])
            depth += _NESTING.get(token.token_type, 0)
            continue
        is_distinct_from = previous is not None and previous.token_type == TokenType.DISTINCT
        previous = token
        if depth == 0 and token.token_type in _AFTER_SELECT_LIST and not is_distinct_from:
            break
        if depth == 0 and token.token_type == TokenType.COMMA:
            items.append([])
        elif not (depth == 0 and token.token_type == TokenType.DISTINCT and items == [[]]):
            items[-1].append(token)
        depth += _NESTING.get(token.token_type, 0)
    return [text[group[0].start : group[-1].end + 1] for group in items if group]


# ---------------------------------------------------------------------------- two-phase aggregate


class _AggregatePlanner:
    """Builds the shard and merge SQL of a grouped or global aggregate.

    The shard groups exactly as the query does and emits, per group: the group keys, every
    other grouped expression the outputs need, and partial states of each aggregate. The merge
    groups the partial rows by the keys, combines the states and evaluates the outputs, HAVING,
    ORDER BY and LIMIT as the query wrote them.
    """

    def __init__(
        self, con: duckdb.DuckDBPyConnection, tree: exp.Select, text: str, prefix: str
    ) -> None:
        self._tree = tree
        self._prefix = prefix
        self._items = list(tree.expressions)
        self._outputs = _output_names(con, text)
        if len(self._outputs) != len(self._items):
            raise NotDistributableError(
                "this query", "its output columns could not be matched to the SELECT list"
            )
        # Shard-side columns, each (expression, helper name), and what the merge groups by.
        self._shard_columns: list[exp.Expr] = []
        self._by_sql: dict[str, str] = {}
        self._merge_group: list[exp.Expr] = []
        self._keys: list[tuple[exp.Expr, exp.Expr]] = []
        self._bare: dict[str, exp.Column] = {}
        self._window_means: list[exp.Expr] = []
        self._families: list[str] = []

    # -- building blocks

    def _helper(self, kind: str, expression: exp.Expr) -> exp.Column:
        """A shard column holding ``expression``, shared by every use of the same expression."""
        sql = expression.sql(dialect=_DIALECT)
        name = self._by_sql.get(sql)
        if name is None:
            name = f"{self._prefix}{kind}{len(self._by_sql)}"
            self._by_sql[sql] = name
            self._shard_columns.append(exp.alias_(expression.copy(), name, quoted=True))
        return exp.column(name, quoted=True)

    def _family(self, label: str) -> None:
        if label not in self._families:
            self._families.append(label)

    # -- plan

    def plan(self) -> Distribution:
        tree = self._tree
        group = tree.args.get("group")
        if group is not None and any(
            isinstance(node, (exp.Rollup, exp.Cube, exp.GroupingSets)) for node in group.walk()
        ):
            raise NotDistributableError(
                "GROUPING SETS, ROLLUP or CUBE", "only plain GROUP BY lists are split"
            )
        for item in self._items:
            if any(_expands_columns(node) for node in item.walk()):
                raise NotDistributableError(
                    "SELECT * or COLUMNS(...) in an aggregate query",
                    "its columns are only known from the input's schema; list them",
                )

        keys = self._group_keys(group)
        if any(isinstance(node, exp.Collate) for key in keys for node in key.walk()):
            raise NotDistributableError("GROUP BY ... COLLATE", _COLLATE_REASON)
        lateral = self._lateral_aliases(keys)
        self._ship_bare_columns(lateral)
        for key in keys:
            bare = self._bare.get(_column_id(key)) if isinstance(key, exp.Column) else None
            if bare is not None:
                # The key is also an output column, already carried under its own name.
                self._keys.append((key, exp.column(bare.name, quoted=True)))
                continue
            ref = self._helper("k", key)
            self._keys.append((key, ref))
            self._merge_group.append(ref)

        finals = self._final_outputs()
        having = tree.args.get("having")
        merge_having = (
            self._rewrite(self._substitute_aliases(having.this)) if having is not None else None
        )
        merge_order = self._merge_order(tree.args.get("order"))

        shard = tree.copy()
        for arg in ("having", "order", "limit", "offset", "distinct"):
            shard.set(arg, None)
        shard.set("expressions", [*lateral, *self._shard_columns])
        shard.set("group", exp.Group(expressions=[k.copy() for k in keys]) if keys else None)

        merge = exp.Select(expressions=finals).from_(self._merge_source())
        if self._merge_group:
            merge.set("group", exp.Group(expressions=self._merge_group))
        if merge_having is not None:
            merge.set("having", exp.Having(this=merge_having))
        if merge_order:
            merge.set("order", exp.Order(expressions=merge_order))
        for arg in ("limit", "offset", "distinct"):
            value = tree.args.get(arg)
            if isinstance(value, exp.Fetch):
                raise NotDistributableError("FETCH FIRST", "write it as LIMIT to split the query")
            merge.set(arg, value.copy() if value is not None else None)

        grouping = f"by {len(keys)} key{'s' if len(keys) != 1 else ''}" if keys else "global"
        families = ", ".join(self._families) or "its groups"
        finishing = [
            name
            for name, key in (("HAVING", "having"), ("ORDER BY", "order"), ("LIMIT", "limit"))
            if tree.args.get(key) is not None
        ]
        reason = (
            f"two-phase aggregate ({grouping}): each shard computes partial {families} and one "
            "merge combines them" + (f", then applies {', '.join(finishing)}" if finishing else "")
        )
        return Distribution(
            Mode.AGGREGATE, shard.sql(dialect=_DIALECT), merge.sql(dialect=_DIALECT), reason
        )

    def _group_keys(self, group: exp.Group | None) -> list[exp.Expr]:
        """The grouping expressions, with positions and GROUP BY ALL resolved."""
        if group is None:
            return []
        if group.args.get("all"):
            return [
                item.unalias()
                for item in self._items
                if not _has_aggregate(item) and _needs_rows(item.unalias())
            ]
        keys = []
        for key in group.expressions:
            position = _integer(key)
            if position is None:
                keys.append(key)
                continue
            if not 1 <= position <= len(self._items):
                raise QueryError(
                    f"GROUP BY {position} is out of range; the SELECT list has "
                    f"{len(self._items)} items"
                )
            keys.append(self._items[position - 1].unalias())
        return keys

    def _lateral_aliases(self, keys: list[exp.Expr]) -> list[exp.Expr]:
        """Aliased SELECT items that GROUP BY names, kept in the shard's SELECT list.

        DuckDB resolves a GROUP BY name to an input column first and to a SELECT alias
        otherwise. Which one applies depends on the input's schema, so the shard keeps both the
        name and the alias and lets DuckDB decide exactly as it would on one node.
        """
        named = {
            column.name.lower()
            for key in keys
            for column in key.find_all(exp.Column)
            if not column.table
        }
        lateral: list[exp.Expr] = []
        for item in self._items:
            if not isinstance(item, exp.Alias) or item.alias.lower() not in named:
                continue
            if _has_aggregate(item):
                continue
            inner = item.this
            if isinstance(inner, exp.Column) and inner.name.lower() == item.alias.lower():
                continue
            lateral.append(item.copy())
        return lateral

    def _ship_bare_columns(self, lateral: list[exp.Expr]) -> None:
        """Carry unaliased column outputs to the merge under their own names (see _Output)."""
        aliases = {item.alias.lower() for item in self._items if isinstance(item, exp.Alias)}
        reserved = {item.alias.lower() for item in lateral if isinstance(item, exp.Alias)}
        for item, output in zip(self._items, self._outputs, strict=True):
            if not output.bare or not isinstance(item, exp.Column):
                continue
            name = item.name.lower()
            if name in aliases or name in reserved:
                raise NotDistributableError(
                    f"the output column {item.name}",
                    "it is both a column reference and an alias of another output; give it a "
                    "distinct alias",
                )
            shipped = self._bare.get(_column_id(item))
            if shipped is None and any(c.name.lower() == name for c in self._bare.values()):
                raise NotDistributableError(
                    f"the output column {item.name}",
                    "two different columns of that name are selected; alias one of them",
                )
            if shipped is None:
                self._bare[_column_id(item)] = item
                self._shard_columns.append(item.copy())
                self._merge_group.append(exp.column(item.name, quoted=True))

    def _final_outputs(self) -> list[exp.Expr]:
        finals: list[exp.Expr] = []
        earlier: dict[str, exp.Expr] = {}
        for item, output in zip(self._items, self._outputs, strict=True):
            if output.bare and isinstance(item, exp.Column):
                finals.append(exp.column(item.name, quoted=True))
                continue
            # A later output may name an earlier aggregate's alias (a lateral alias).
            expression = self._substitute_aliases(item.unalias(), earlier)
            finals.append(exp.alias_(self._rewrite(expression), output.name, quoted=True))
            if isinstance(item, exp.Alias) and _has_aggregate(item):
                earlier[item.alias.lower()] = item.this
        return finals

    def _substitute_aliases(
        self, node: exp.Expr, aliases: dict[str, exp.Expr] | None = None
    ) -> exp.Expr:
        """Replace names of SELECT aliases (as HAVING and ORDER BY may use them) by their
        expressions, so the merge evaluates them from partial results."""
        if aliases is None:
            aliases = {
                item.alias.lower(): item.this for item in self._items if isinstance(item, exp.Alias)
            }
        if not aliases:
            return node

        def replace(current: exp.Expr) -> exp.Expr:
            if (
                isinstance(current, exp.Column)
                and not current.table
                and current.name.lower() in aliases
            ):
                return exp.Paren(this=aliases[current.name.lower()].copy())
            return current

        return node.copy().transform(replace)

    def _merge_order(self, order: exp.Order | None) -> list[exp.Expr]:
        if order is None:
            return []
        names = {output.name.lower() for output in self._outputs}
        merged = []
        for ordered in order.expressions:
            key = ordered.this
            if _integer(key) is not None:
                target = key.copy()  # outputs keep their positions in the merge
            elif isinstance(key, exp.Column) and not key.table and key.name.lower() in names:
                target = exp.column(key.name, quoted=True)
            else:
                target = self._rewrite(self._substitute_aliases(key))
            copy = ordered.copy()
            copy.set("this", target)
            merged.append(copy)
        return merged

    def _merge_source(self) -> exp.Expr:
        table = exp.to_table(_PARTIALS)
        if not self._window_means:
            return table
        # Variances combine each shard's (count, mean, M2) around the group's overall mean,
        # which a window over the partial rows of the group provides.
        inner = exp.Select(expressions=[exp.Star(), *self._window_means]).from_(table)
        return exp.Subquery(this=inner, alias=exp.TableAlias(this=exp.to_identifier(_PARTIALS)))

    # -- rewriting outputs over partial results

    def _rewrite(self, expression: exp.Expr) -> exp.Expr:
        """``expression`` over the merge's columns: aggregates become merges of their partial
        states, and grouped expressions come from the shards."""

        def visit(node: exp.Expr) -> exp.Expr:
            if _aggregate_unit(node):
                return self._merge_aggregate(node)
            if isinstance(node, exp.Collate):
                # Parquet keeps no collation, so the merge applies it again.
                return exp.Collate(this=self._rewrite(node.this), expression=node.expression.copy())
            for key, ref in self._keys:
                if _needs_rows(key) and node == key:
                    return ref.copy()
            if isinstance(node, exp.Column) and _column_id(node) in self._bare:
                return exp.column(node.name, quoted=True)
            if not _has_aggregate(node) and _needs_rows(node):
                # Grouped, so the same in every shard for a group: any shard's value will do.
                return exp.AnyValue(this=self._helper("c", node))
            return node

        return expression.copy().transform(visit)

    def _merge_aggregate(self, unit: exp.Expr) -> exp.Expr:
        agg, where = _unwrap_aggregate(unit)
        label = _label(agg)
        if any(isinstance(arg, exp.Order) for _, arg in _children(agg)):
            raise NotDistributableError(
                f"the ordered aggregate {_short(unit)}", "each shard would order only its own rows"
            )
        distinct = any(isinstance(arg, exp.Distinct) for _, arg in _children(agg))

        def filtered(aggregate: exp.Expr) -> exp.Expr:
            if where is None:
                return aggregate
            return exp.Filter(this=aggregate, expression=where.copy())

        if isinstance(agg, _IDEMPOTENT):
            if isinstance(agg, (exp.Min, exp.Max)) and any(
                isinstance(node, exp.Collate) for node in agg.walk()
            ):
                raise NotDistributableError(f"{label} over a COLLATE", _COLLATE_REASON)
            self._family(label)
            return type(agg)(this=self._helper("p", filtered(agg.copy())))
        if distinct:
            raise NotDistributableError(
                f"{label}(DISTINCT ...)",
                "a value can occur in several shards, so distinct values only meet in one task",
            )
        argument = _first_argument(agg)
        if isinstance(agg, exp.Count) or _anonymous_named(agg, "count_star"):
            self._family("COUNT")
            return _count_total(self._helper("p", filtered(agg.copy())))
        if isinstance(agg, exp.CountIf):
            # COUNT_IF returns HUGEINT, which Parquet cannot hold exactly; a shard's count fits
            # a BIGINT and the merge restores the type. Like SUM, it is NULL over no rows.
            self._family("COUNT_IF")
            column = self._helper("p", exp.cast(filtered(agg.copy()), "BIGINT"))
            return exp.cast(exp.Sum(this=column), "HUGEINT")
        if isinstance(agg, exp.Sum):
            self._family("SUM")
            return exp.Sum(this=self._helper("p", _exact(filtered(exp.Sum(this=argument.copy())))))
        if isinstance(agg, exp.Avg) or _anonymous_named(agg, "mean"):
            self._family("AVG")
            total = self._helper("p", _exact(filtered(exp.Sum(this=argument.copy()))))
            count = self._helper("p", filtered(exp.Count(this=argument.copy())))
            return exp.Paren(
                this=exp.Div(
                    this=exp.cast(exp.Sum(this=total), "DOUBLE"),
                    expression=exp.cast(exp.Sum(this=count), "DOUBLE"),
                )
            )
        if isinstance(agg, exp.BitwiseXorAgg):
            self._family(label)
            return exp.BitwiseXorAgg(this=self._helper("p", filtered(agg.copy())))
        if isinstance(agg, exp.Anonymous) and agg.name.lower() in _SUM_LIKE_NAMES:
            self._family(label)
            column = self._helper("p", filtered(agg.copy()))
            return exp.Anonymous(this=agg.name, expressions=[column])
        variance = _VARIANCES.get(type(agg))
        if variance is not None:
            self._family(label)
            count = self._helper("p", filtered(exp.Count(this=argument.copy())))
            # favg sums with Kahan's compensation: the plain avg loses digits of the mean when
            # values are large and close together, and the deviations below depend on them.
            mean = self._helper(
                "p", filtered(exp.Anonymous(this="favg", expressions=[argument.copy()]))
            )
            m2 = self._helper(
                "p",
                exp.Mul(
                    this=filtered(exp.VariancePop(this=argument.copy())),
                    expression=filtered(exp.Count(this=argument.copy())),
                ),
            )
            sample, root = variance
            return self._merge_variance(count, mean, m2, sample=sample, root=root)
        why = _NOT_MERGEABLE.get(type(agg), "it has no exact two-phase form here")
        raise NotDistributableError(f"the aggregate {label}", why)

    def _merge_variance(
        self, count: exp.Column, mean: exp.Column, m2: exp.Column, *, sample: bool, root: bool
    ) -> exp.Expr:
        """Chan et al.'s parallel variance: M2 = sum(M2_i) + sum(n_i * (mean_i - mean)^2).

        Each shard sends its count, mean and M2 (var_pop * count, which DuckDB computes with
        Welford's method), so no sum of squares is ever subtracted from another.
        """
        deviation = exp.Paren(
            this=exp.Sub(this=mean.copy(), expression=self._window_mean(count, mean))
        )
        m2_total = exp.Sum(
            this=exp.Add(
                this=m2.copy(),
                expression=exp.Mul(
                    this=count.copy(),
                    expression=exp.Mul(this=deviation, expression=deviation.copy()),
                ),
            )
        )
        n_total = exp.Sum(this=count.copy())
        divisor: exp.Expr = n_total.copy()
        if sample:
            divisor = exp.Paren(this=exp.Sub(this=divisor, expression=exp.Literal.number(1)))
        # DuckDB: var_samp needs two values, var_pop one; otherwise the result is NULL.
        variance = exp.Case(
            ifs=[
                exp.If(
                    this=exp.GT(this=n_total, expression=exp.Literal.number(1 if sample else 0)),
                    true=exp.Div(this=m2_total, expression=divisor),
                )
            ]
        )
        return exp.Sqrt(this=variance) if root else variance

    def _window_mean(self, count: exp.Column, mean: exp.Column) -> exp.Column:
        """The group's overall mean next to each partial row: sum(n_i * mean_i) / sum(n_i)."""
        name = f"{mean.name}_overall"
        if not any(isinstance(w, exp.Alias) and w.alias == name for w in self._window_means):
            partition = self._merge_group

            def over(this: exp.Expr) -> exp.Window:
                return exp.Window(this=this, partition_by=[p.copy() for p in partition] or None)

            weighted = exp.Sum(this=exp.Mul(this=count.copy(), expression=mean.copy()))
            total = exp.Sum(this=count.copy())
            ratio = exp.Div(this=over(weighted), expression=over(total))
            self._window_means.append(exp.alias_(ratio, name, quoted=True))
        return exp.column(name, quoted=True)


def _exact(total: exp.Expr) -> exp.Expr:
    """A shard SUM that Parquet stores exactly.

    SUM over integers is a HUGEINT, which DuckDB writes to Parquet as DOUBLE, rounding large
    values. Adding a DECIMAL(38, 0) zero makes it an exact DECIMAL(38, 0), and leaves DECIMAL and
    DOUBLE sums as they are, whatever the argument's type.
    """
    zero = exp.cast(exp.Literal.number(0), "DECIMAL(38, 0)")
    return exp.Add(this=total, expression=zero)


def _count_total(column: exp.Column) -> exp.Expr:
    # COALESCE: a global aggregate over no partial rows at all still counts zero.
    total = exp.Coalesce(this=exp.Sum(this=column), expressions=[exp.Literal.number(0)])
    return exp.cast(total, "BIGINT")


def _aggregate_unit(node: exp.Expr) -> bool:
    """An aggregate call, with its FILTER and IGNORE NULLS wrappers."""
    if isinstance(node, exp.Filter):
        return _aggregate_unit(node.this)
    if isinstance(node, (exp.IgnoreNulls, exp.RespectNulls)):
        return _is_aggregate(node.this)
    return _is_aggregate(node)


def _unwrap_aggregate(unit: exp.Expr) -> tuple[exp.Expr, exp.Expr | None]:
    where = None
    if isinstance(unit, exp.Filter):
        where = unit.expression
        unit = unit.this
    while isinstance(unit, (exp.IgnoreNulls, exp.RespectNulls)):
        unit = unit.this
    return unit, where


def _expands_columns(node: exp.Expr) -> bool:
    """``*``, ``t.*`` or ``COLUMNS(...)``: columns only the input's schema can list.

    The ``*`` of ``count(*)`` is not one.
    """
    if isinstance(node, exp.Columns):
        return True
    return isinstance(node, exp.Star) and not isinstance(node.parent, exp.Count)


def _first_argument(agg: exp.Expr) -> exp.Expr:
    arguments: list[exp.Expr] = [] if isinstance(agg, exp.Anonymous) else [agg.this]
    arguments += agg.expressions
    first = next((argument for argument in arguments if argument is not None), None)
    return first if isinstance(first, exp.Expr) else exp.Star()


def _anonymous_named(agg: exp.Expr, name: str) -> bool:
    return isinstance(agg, exp.Anonymous) and agg.name.lower() == name


def _column_id(column: exp.Column) -> str:
    return column.sql(dialect=_DIALECT).lower()
