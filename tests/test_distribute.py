"""One SELECT split over shards gives the same result as the same SELECT on one DuckDB node.

Each query runs twice over the same rows: once as written over all of them, and once as
``distribute`` splits it, over 1, 3 or 7 Parquet files (one of them empty when there are several):
the shard SQL per file, each output written to Parquet, then the merge SQL over ``partials``.

Names, column order and types must match, and every value must be equal, except floating-point
values, which may differ by a relative 1e-9 (absolute 1e-12 near zero): adding in another order,
or combining variances from shards, moves the last bits. One type differs on purpose: an integer
SUM is a HUGEINT on one node and an exact DECIMAL(38, 0) when split (see ``distribute._exact``).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import duckdb
import pytest

from ecs_query import engine
from ecs_query.distribute import Distribution, Mode, NotDistributableError, distribute
from ecs_query.errors import QueryError
from ecs_query.spec import InputFormat, ParamValue
from tests.distribute_cases import (
    CASES,
    LINEITEM_ROWS,
    LINEITEM_SQL,
    NATION_SQL,
    REFUSALS,
    TPCH_Q1,
    Case,
    Refusal,
)

FLOAT_REL_TOL = 1e-9
FLOAT_ABS_TOL = 1e-12
SHARD_COUNTS = (1, 3, 7)
BROADCAST = ("nation",)
# Single-node type -> the type a split query may return instead: integer SUMs (see above).
SPLIT_TYPES = {"HUGEINT": "DECIMAL(38,0)"}


@dataclass(frozen=True)
class Dataset:
    nation: str
    shards: Mapping[int, Sequence[str]]


@dataclass(frozen=True)
class Result:
    names: list[str]
    types: list[str]
    rows: list[tuple[Any, ...]]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    root = tmp_path_factory.mktemp("distribute")
    con = duckdb.connect()
    con.execute(LINEITEM_SQL)
    con.execute(NATION_SQL)
    nation = root / "nation.parquet"
    con.execute(f"COPY nation TO '{nation}' (FORMAT parquet)")
    # Row number i, recovered from the keys, decides each row's shard.
    con.execute(
        "CREATE VIEW numbered AS "
        "SELECT *, (l_orderkey - 1) * 4 + l_linenumber - 1 AS i FROM lineitem"
    )
    shards: dict[int, list[str]] = {}
    for count in SHARD_COUNTS:
        filled = max(1, count - 1)
        # Three shards interleave rows (every group in every shard); seven take contiguous
        # ranges (groups concentrated in few shards).
        rule = "i % $filled" if count == 3 else f"i * $filled // {LINEITEM_ROWS}"
        files = []
        for index in range(filled):
            path = root / f"{count}-{index}.parquet"
            con.execute(
                f"COPY (SELECT * EXCLUDE (i) FROM numbered WHERE {rule} = $index "
                f"ORDER BY i) TO '{path}' (FORMAT parquet)",
                {"filled": filled, "index": index},
            )
            files.append(str(path))
        if count > 1:
            empty = root / f"{count}-empty.parquet"
            con.execute(f"COPY (SELECT * FROM lineitem LIMIT 0) TO '{empty}' (FORMAT parquet)")
            files.insert(count // 2, str(empty))
        shards[count] = files
    con.close()
    return Dataset(nation=str(nation), shards=shards)


@pytest.fixture(scope="module")
def database(dataset: Dataset) -> Iterator[duckdb.DuckDBPyConnection]:
    """One in-memory DuckDB for the module: opening one costs tens of milliseconds."""
    connection = duckdb.connect()
    engine.create_view(connection, "nation", InputFormat.PARQUET, [dataset.nation])
    yield connection
    connection.close()


@pytest.fixture
def con(database: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """A cursor per test; views ``input`` and ``partials`` are re-pointed as each step needs."""
    cursor = database.cursor()
    yield cursor
    cursor.close()


def _fetch(con: duckdb.DuckDBPyConnection, sql: str, params: Mapping[str, ParamValue]) -> Result:
    bound = engine.bind_params(con, sql, params)
    cursor = engine.run(con, sql, bound)
    description = cursor.description or []
    return Result(
        names=[column[0] for column in description],
        types=[str(column[1]) for column in description],
        rows=cursor.fetchall(),
    )


def _with_view(
    con: duckdb.DuckDBPyConnection, name: str, files: Sequence[str]
) -> duckdb.DuckDBPyConnection:
    con.execute(f'DROP VIEW IF EXISTS "{name}"')
    engine.create_view(con, name, InputFormat.PARQUET, files)
    return con


def _single_node(
    con: duckdb.DuckDBPyConnection, dataset: Dataset, sql: str, params: Mapping[str, ParamValue]
) -> Result:
    return _fetch(_with_view(con, "input", dataset.shards[1]), sql, params)


def _split(
    con: duckdb.DuckDBPyConnection,
    dataset: Dataset,
    distribution: Distribution,
    shards: int,
    params: Mapping[str, ParamValue],
    scratch: Path,
) -> Result:
    """Run the shard SQL once per file, as a worker would, then the merge over the outputs."""
    parts = []
    sql = distribution.shard_sql
    for index, file in enumerate(dataset.shards[shards]):
        _with_view(con, "input", [file])
        part = str(scratch / f"part-{index}.parquet")
        engine.copy_to(con, sql, engine.bind_params(con, sql, params), part, "parquet")
        parts.append(part)
    con.execute("DROP VIEW input")
    _with_view(con, "partials", parts)
    if distribution.merge_sql is None:
        return _fetch(con, "SELECT * FROM partials", {})
    return _fetch(con, distribution.merge_sql, params)


def _row_key(row: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(
        (value is None, round(value, 6) if isinstance(value, float) else value) for value in row
    )


def _assert_same(actual: Result, expected: Result, *, ordered: bool) -> None:
    assert actual.names == expected.names
    for name, got_type, want_type in zip(expected.names, actual.types, expected.types, strict=True):
        allowed = (want_type, SPLIT_TYPES.get(want_type))
        assert got_type in allowed, f"column {name!r}: {got_type} != {want_type}"
    actual_rows = actual.rows if ordered else sorted(actual.rows, key=_row_key)
    expected_rows = expected.rows if ordered else sorted(expected.rows, key=_row_key)
    assert len(actual_rows) == len(expected_rows)
    for number, (got, want) in enumerate(zip(actual_rows, expected_rows, strict=True)):
        for name, value, reference in zip(expected.names, got, want, strict=True):
            where = f"row {number}, column {name!r}"
            if isinstance(reference, float):
                assert isinstance(value, float), where
                assert math.isclose(
                    value, reference, rel_tol=FLOAT_REL_TOL, abs_tol=FLOAT_ABS_TOL
                ), f"{where}: {value!r} != {reference!r}"
            else:
                assert value == reference, f"{where}: {value!r} != {reference!r}"


def _run_both(
    con: duckdb.DuckDBPyConnection, dataset: Dataset, sql: str, shards: int, scratch: Path
) -> tuple[Result, Result]:
    """The split result and the single-node result of ``sql``."""
    distribution = distribute(sql, broadcast_tables=BROADCAST)
    actual = _split(con, dataset, distribution, shards, {}, scratch)
    return actual, _single_node(con, dataset, sql, {})


# ---------------------------------------------------------------------------- the suite


@pytest.mark.parametrize("shards", SHARD_COUNTS, ids=lambda count: f"{count}-shards")
@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_split_query_returns_the_single_node_result(
    case: Case, shards: int, con: duckdb.DuckDBPyConnection, dataset: Dataset, tmp_path: Path
) -> None:
    distribution = distribute(case.sql, broadcast_tables=BROADCAST)
    assert distribution.mode is case.mode
    expected = _single_node(con, dataset, case.sql, case.params)
    assert expected.rows, "a case must return rows, or it proves nothing"

    actual = _split(con, dataset, distribution, shards, case.params, tmp_path)

    _assert_same(actual, expected, ordered=case.ordered)


@pytest.mark.parametrize("refusal", REFUSALS, ids=lambda refusal: refusal.id)
def test_refuses_queries_without_an_exact_split(refusal: Refusal) -> None:
    with pytest.raises(NotDistributableError) as raised:
        distribute(refusal.sql, broadcast_tables=BROADCAST)

    message = str(raised.value)
    assert refusal.fragment in message
    assert "pass --single-task to run the whole input as one task" in message


@pytest.mark.parametrize("refusal", REFUSALS[:4], ids=lambda refusal: refusal.id)
def test_single_task_runs_any_query_as_written(refusal: Refusal) -> None:
    distribution = distribute(refusal.sql + " ;\n", single_task=True)

    assert distribution == Distribution(Mode.SINGLE, refusal.sql, None, distribution.reason)
    assert "--single-task" in distribution.reason


# ---------------------------------------------------------------------------- modes and SQL


def test_row_by_row_query_runs_unchanged_on_every_shard() -> None:
    sql = "SELECT l_orderkey, $tag AS tag FROM input WHERE l_quantity > $min_qty"

    distribution = distribute(f"  {sql};  ")

    assert distribution.mode is Mode.MAP
    assert distribution.shard_sql == sql
    assert distribution.merge_sql is None
    assert distribution.reason.startswith("row by row")


def test_parameters_survive_the_rewrite_in_shard_and_merge() -> None:
    sql = (
        "SELECT l_returnflag, sum(l_quantity) FILTER (WHERE l_tax > $tax) AS qty FROM input "
        "WHERE l_shipdate < $day GROUP BY 1 HAVING count(*) > $min_rows LIMIT $k"
    )

    distribution = distribute(sql)

    assert distribution.merge_sql is not None
    con = duckdb.connect()
    shard = con.extract_statements(distribution.shard_sql)[0].named_parameters
    merge = con.extract_statements(distribution.merge_sql)[0].named_parameters
    assert set(shard) == {"tax", "day"}
    assert set(merge) == {"min_rows", "k"}


def test_top_k_shards_keep_limit_plus_offset_rows() -> None:
    distribution = distribute("SELECT * FROM input ORDER BY l_shipdate LIMIT 10 OFFSET 5")

    assert "LIMIT 15" in distribution.shard_sql
    assert "OFFSET" not in distribution.shard_sql
    assert distribution.merge_sql is not None
    assert distribution.merge_sql.endswith("LIMIT 10 OFFSET 5")


def test_tpch_q1_is_a_two_phase_aggregate_with_a_readable_reason() -> None:
    distribution = distribute(TPCH_Q1)

    assert distribution.mode is Mode.AGGREGATE
    assert distribution.reason == (
        "two-phase aggregate (by 2 keys): each shard computes partial SUM, AVG, COUNT and one "
        "merge combines them, then applies ORDER BY"
    )
    assert "GROUP BY l_returnflag, l_linestatus" in distribution.shard_sql
    assert "ORDER BY" not in distribution.shard_sql


# ---------------------------------------------------------------------------- NULLs and types


def test_avg_of_all_null_group_is_null(
    con: duckdb.DuckDBPyConnection, dataset: Dataset, tmp_path: Path
) -> None:
    sql = (
        "SELECT count(*) AS n, count(l_weight) AS weighed, sum(l_weight) AS total, "
        "avg(l_weight) AS mean, stddev_pop(l_weight) AS spread FROM input "
        "WHERE l_shipmode = 'REG AIR' GROUP BY l_shipmode"
    )

    actual, expected = _run_both(con, dataset, sql, 7, tmp_path)

    assert actual.rows == expected.rows == [(428, 0, None, None, None)]


def test_global_aggregate_over_no_rows_counts_zero_and_sums_null(
    con: duckdb.DuckDBPyConnection, dataset: Dataset, tmp_path: Path
) -> None:
    sql = "SELECT count(*), count_if(l_flag), sum(l_quantity), avg(l_tax) FROM input WHERE false"

    actual, expected = _run_both(con, dataset, sql, 3, tmp_path)

    # COUNT_IF behaves like SUM here: NULL over no rows at all.
    assert actual.rows == expected.rows == [(0, None, None, None)]


def test_variance_of_one_row_groups_is_null_for_samples_and_zero_for_populations(
    con: duckdb.DuckDBPyConnection, dataset: Dataset, tmp_path: Path
) -> None:
    sql = (
        "SELECT var_samp(l_weight), var_pop(l_weight), stddev_samp(l_weight) FROM input "
        "WHERE l_weight IS NOT NULL GROUP BY l_orderkey, l_linenumber"
    )

    actual, expected = _run_both(con, dataset, sql, 3, tmp_path)

    assert set(actual.rows) == set(expected.rows) == {(None, 0.0, None)}


def test_variance_stays_accurate_for_large_values_close_together(
    con: duckdb.DuckDBPyConnection, dataset: Dataset, tmp_path: Path
) -> None:
    # Values near 1e9 spread by about 30: a sum-of-squares formula loses every digit here.
    # The reference is exact rational arithmetic, which one DuckDB node itself only meets
    # to about 2e-9 on this data.
    sql = (
        "SELECT l_returnflag, var_samp(l_weight + 1e9) AS v FROM input "
        "WHERE l_weight IS NOT NULL GROUP BY l_returnflag"
    )
    values = _single_node(con, dataset, "SELECT l_returnflag, l_weight + 1e9 FROM input", {})
    groups: dict[str, list[Fraction]] = {}
    for flag, value in values.rows:
        if value is not None:
            groups.setdefault(flag, []).append(Fraction(value))

    distribution = distribute(sql)
    actual = _split(con, dataset, distribution, 7, {}, tmp_path)

    assert len(actual.rows) == len(groups) == 3
    for flag, variance in actual.rows:
        exact = float(statistics.variance(groups[flag]))
        assert math.isclose(variance, exact, rel_tol=FLOAT_REL_TOL), (flag, variance, exact)


def test_merged_types_match_single_node_duckdb(
    con: duckdb.DuckDBPyConnection, dataset: Dataset, tmp_path: Path
) -> None:
    sql = (
        "SELECT count(*) AS n, count_if(l_flag) AS flagged, sum(l_quantity) AS qty, "
        "avg(l_quantity) AS avg_qty, min(l_shipdate) AS first_day, max(l_comment) AS last, "
        "bool_and(l_flag) AS all_flagged, stddev(l_weight) AS spread FROM input"
    )

    actual, expected = _run_both(con, dataset, sql, 3, tmp_path)

    assert (
        expected.types
        == actual.types
        == [
            "BIGINT",
            "HUGEINT",
            "DECIMAL(38,2)",
            "DOUBLE",
            "DATE",
            "VARCHAR",
            "BOOLEAN",
            "DOUBLE",
        ]
    )


def test_integer_sum_beyond_double_precision_stays_exact(
    con: duckdb.DuckDBPyConnection, dataset: Dataset, tmp_path: Path
) -> None:
    sql = "SELECT sum(l_orderkey * 1000000000000001) AS big FROM input"

    actual, expected = _run_both(con, dataset, sql, 7, tmp_path)

    assert expected.types == ["HUGEINT"]
    assert actual.types == ["DECIMAL(38,0)"]
    assert expected.rows[0][0] > 2**64
    assert actual.rows[0][0] == expected.rows[0][0]


def test_limit_without_order_by_returns_exactly_limit_rows(
    con: duckdb.DuckDBPyConnection, dataset: Dataset, tmp_path: Path
) -> None:
    sql = "SELECT l_orderkey, l_linenumber FROM input LIMIT 7 OFFSET 2"

    actual, expected = _run_both(con, dataset, sql, 7, tmp_path)

    assert len(actual.rows) == len(expected.rows) == 7
    every = _single_node(con, dataset, "SELECT l_orderkey, l_linenumber FROM input", {})
    assert set(actual.rows) <= set(every.rows)


def test_helper_columns_avoid_names_the_query_uses(
    con: duckdb.DuckDBPyConnection, dataset: Dataset, tmp_path: Path
) -> None:
    sql = (
        'SELECT l_returnflag AS "__part_k0", count(*) AS "__part_p1" FROM input '
        'GROUP BY l_returnflag ORDER BY "__part_k0"'
    )

    actual, expected = _run_both(con, dataset, sql, 3, tmp_path)

    _assert_same(actual, expected, ordered=True)


# ---------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("sql", "fragment"),
    [
        ("SELECT 1 FROM input; SELECT 2 FROM input", "one SELECT statement; received 2"),
        ("CREATE TABLE t AS SELECT * FROM input", "received a CREATE"),
        ("SELEC l_orderkey FROM input", "does not parse"),
    ],
    ids=["two_statements", "create_table", "syntax_error"],
)
def test_sql_that_is_not_one_select_is_a_query_error(sql: str, fragment: str) -> None:
    with pytest.raises(QueryError) as raised:
        distribute(sql)

    assert not isinstance(raised.value, NotDistributableError)
    assert fragment in str(raised.value)


def test_unknown_table_is_named_with_how_to_declare_it() -> None:
    with pytest.raises(QueryError, match=r"reads table 'regions'.*--table regions=URI"):
        distribute("SELECT * FROM input JOIN regions USING (r_key)", broadcast_tables=BROADCAST)
