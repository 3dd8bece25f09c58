"""Queries for the distribution suite, and the data they run on.

``lineitem`` is a TPC-H-like table built by DuckDB SQL alone, so every run sees the same rows.
NULLs are sprinkled over most columns; every ``REG AIR`` row has a NULL ``l_weight`` (a group
whose values are all NULL); ``l_shipmode`` holds ``AIR`` and ``air`` (case-sensitive groups);
``nation`` lacks the keys 20 to 24 that ``l_nationkey`` uses (unmatched join rows).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ecs_query.distribute import Mode
from ecs_query.spec import ParamValue

LINEITEM_ROWS = 3000

LINEITEM_SQL = f"""
CREATE TABLE lineitem AS
SELECT
    (i // 4 + 1)::BIGINT AS l_orderkey,
    (i % 4 + 1)::INTEGER AS l_linenumber,
    ((i * 7919) % 2000 + 1)::INTEGER AS l_partkey,
    CASE WHEN i % 17 = 0 THEN NULL ELSE ((i * 31) % 50 + 1)::DECIMAL(15, 2) END AS l_quantity,
    ((i * 104729) % 9000000 / 100 + 900)::DECIMAL(15, 2) AS l_extendedprice,
    (i % 11 / 100)::DECIMAL(15, 2) AS l_discount,
    (i % 9 / 100)::DECIMAL(15, 2) AS l_tax,
    ['R', 'A', 'N'][i % 3 + 1] AS l_returnflag,
    CASE WHEN i % 5 < 2 THEN 'F' ELSE 'O' END AS l_linestatus,
    DATE '1992-01-01' + ((i * 37) % 2500)::INTEGER AS l_shipdate,
    ['AIR', 'air', 'MAIL', 'RAIL', 'SHIP', 'TRUCK', 'REG AIR'][i % 7 + 1] AS l_shipmode,
    CASE WHEN i % 7 = 6 OR i % 13 = 0 THEN NULL ELSE 1000.125 + (i * 0.37) % 100 END
        AS l_weight,
    (i % 25)::INTEGER AS l_nationkey,
    CASE WHEN i % 19 = 0 THEN NULL ELSE 'comment ' || ((i * 13) % 97) END AS l_comment,
    CASE WHEN i % 23 = 0 THEN NULL ELSE i % 4 = 0 END AS l_flag,
    ['t' || (i % 3), 't' || (i % 5)][1:i % 3] AS l_tags
FROM range({LINEITEM_ROWS}) AS r(i)
"""

NATION_SQL = """
CREATE TABLE nation AS
SELECT n::INTEGER AS n_nationkey, 'NATION ' || n AS n_name, (n % 5)::INTEGER AS n_regionkey
FROM range(20) AS r(n)
"""

TPCH_Q1 = """
SELECT
    l_returnflag,
    l_linestatus,
    sum(l_quantity) AS sum_qty,
    sum(l_extendedprice) AS sum_base_price,
    sum(l_extendedprice * (1 - l_discount)) AS sum_disc_price,
    sum(l_extendedprice * (1 - l_discount) * (1 + l_tax)) AS sum_charge,
    avg(l_quantity) AS avg_qty,
    avg(l_extendedprice) AS avg_price,
    avg(l_discount) AS avg_disc,
    count(*) AS count_order
FROM input
WHERE l_shipdate <= DATE '1998-12-01' - INTERVAL 90 DAY
GROUP BY l_returnflag, l_linestatus
ORDER BY l_returnflag, l_linestatus
"""

TPCH_Q6 = """
SELECT sum(l_extendedprice * l_discount) AS revenue
FROM input
WHERE l_shipdate >= DATE '1994-01-01'
  AND l_shipdate < DATE '1994-01-01' + INTERVAL 1 YEAR
  AND l_discount BETWEEN 0.06 - 0.01 AND 0.06 + 0.01
  AND l_quantity < 24
"""


@dataclass(frozen=True)
class Case:
    """A query that must give the same result split over shards as on one node.

    ``ordered`` says the ORDER BY fixes the order of every row, so rows are compared in order.
    """

    id: str
    sql: str
    mode: Mode
    ordered: bool = False
    params: Mapping[str, ParamValue] = field(default_factory=dict)


CASES = [
    # -- row by row
    Case(
        "filter_and_project",
        "SELECT l_orderkey, l_linenumber, l_extendedprice * (1 - l_discount) AS net, "
        "upper(l_comment) FROM input WHERE l_shipdate >= DATE '1995-01-01'",
        Mode.MAP,
    ),
    Case(
        "star_with_parameter",
        "SELECT * FROM input WHERE l_quantity > $min_qty AND l_shipmode = $mode",
        Mode.MAP,
        params={"min_qty": 40, "mode": "AIR"},
    ),
    Case(
        "broadcast_inner_join",
        "SELECT l.l_orderkey, l.l_linenumber, n.n_name FROM input AS l "
        "JOIN nation AS n ON l.l_nationkey = n.n_nationkey",
        Mode.MAP,
    ),
    Case(
        "broadcast_left_join_keeps_unmatched_input_rows",
        "SELECT l_orderkey, l_linenumber, n_name FROM input "
        "LEFT JOIN nation ON l_nationkey = n_nationkey",
        Mode.MAP,
    ),
    Case(
        "broadcast_table_first_with_right_join",
        "SELECT n_name, l_orderkey, l_linenumber FROM nation "
        "RIGHT JOIN input ON l_nationkey = n_nationkey",
        Mode.MAP,
    ),
    Case(
        "broadcast_semi_and_asof_joins",
        "SELECT l_orderkey, l_linenumber, n_name FROM input "
        "SEMI JOIN nation AS regional ON l_nationkey = regional.n_nationkey "
        "AND regional.n_regionkey = 2 "
        "ASOF JOIN nation ON l_nationkey >= n_nationkey",
        Mode.MAP,
    ),
    Case(
        "unnest_lists",
        "SELECT l_orderkey, l_linenumber, unnest(l_tags) AS tag FROM input",
        Mode.MAP,
    ),
    Case(
        "cte_and_subquery_over_broadcast_table",
        "WITH recent AS (SELECT * FROM input WHERE l_shipdate > DATE '1996-01-01') "
        "SELECT l_orderkey, l_linenumber, l_shipdate FROM recent "
        "WHERE l_nationkey IN (SELECT n_nationkey FROM nation WHERE n_regionkey = 1)",
        Mode.MAP,
    ),
    # -- row by row, finished by a merge
    Case(
        "order_by_without_limit",
        "SELECT l_orderkey, l_linenumber, l_shipdate FROM input "
        "WHERE l_returnflag = 'R' ORDER BY l_shipdate DESC, l_orderkey, l_linenumber",
        Mode.AGGREGATE,
        ordered=True,
    ),
    Case(
        "top_k_with_offset",
        "SELECT l_orderkey, l_linenumber, l_extendedprice FROM input "
        "ORDER BY l_extendedprice DESC, l_orderkey, l_linenumber LIMIT 10 OFFSET 5",
        Mode.AGGREGATE,
        ordered=True,
    ),
    Case(
        "top_k_by_unselected_expression_nulls_first",
        "SELECT l_orderkey, l_linenumber FROM input "
        "ORDER BY l_quantity * (1 - l_discount) NULLS FIRST, l_orderkey DESC, l_linenumber "
        "LIMIT $k OFFSET $skip",
        Mode.AGGREGATE,
        ordered=True,
        params={"k": 12, "skip": 3},
    ),
    Case(
        "order_by_collation",
        "SELECT l_orderkey, l_linenumber, l_shipmode FROM input WHERE l_orderkey < 60 "
        "ORDER BY l_shipmode COLLATE NOCASE DESC, l_orderkey, l_linenumber",
        Mode.AGGREGATE,
        ordered=True,
    ),
    Case(
        "select_distinct",
        "SELECT DISTINCT l_returnflag, l_linestatus, l_shipmode FROM input",
        Mode.AGGREGATE,
    ),
    Case(
        "select_distinct_top_k_by_position",
        "SELECT DISTINCT l_shipmode, l_linestatus FROM input ORDER BY 1, 2 DESC LIMIT 5",
        Mode.AGGREGATE,
        ordered=True,
    ),
    # -- two-phase aggregates
    Case("tpch_q1", TPCH_Q1, Mode.AGGREGATE, ordered=True),
    Case("tpch_q6", TPCH_Q6, Mode.AGGREGATE),
    Case(
        "global_aggregate_over_no_rows_returns_one_row",
        "SELECT count(*), count(l_quantity), sum(l_quantity), avg(l_weight), min(l_shipdate), "
        "bool_or(l_flag), stddev(l_weight) FROM input WHERE l_orderkey < 0",
        Mode.AGGREGATE,
    ),
    Case(
        "all_null_group",
        "SELECT l_shipmode, count(*), count(l_weight) AS weighed, sum(l_weight), "
        "avg(l_weight) AS avg_weight, min(l_weight), var_samp(l_weight) "
        "FROM input GROUP BY l_shipmode",
        Mode.AGGREGATE,
    ),
    Case(
        "one_group_per_row",
        "SELECT l_orderkey, l_linenumber, count(*) AS n, sum(l_quantity) AS qty, "
        "var_samp(l_weight) AS v_samp, var_pop(l_weight) AS v_pop "
        "FROM input GROUP BY l_orderkey, l_linenumber",
        Mode.AGGREGATE,
    ),
    Case(
        "variance_family",
        "SELECT l_returnflag, var_samp(l_weight), var_pop(l_weight), variance(l_extendedprice), "
        "stddev_samp(l_weight), stddev_pop(l_extendedprice), stddev(l_quantity) "
        "FROM input GROUP BY l_returnflag",
        Mode.AGGREGATE,
    ),
    Case(
        "filter_clauses",
        "SELECT l_linestatus, count(*) FILTER (WHERE l_discount > 0.05) AS discounted, "
        "sum(l_quantity) FILTER (WHERE l_returnflag = 'R') AS returned_qty, "
        "avg(l_weight) FILTER (WHERE l_flag) AS flagged_weight, "
        "stddev_pop(l_weight) FILTER (WHERE l_shipmode <> 'AIR') AS spread, "
        "count_if(l_tax > 0.04) AS taxed FROM input GROUP BY l_linestatus",
        Mode.AGGREGATE,
    ),
    Case(
        "aggregates_inside_expressions",
        "SELECT l_returnflag, sum(l_quantity) / count(*) AS per_row, round(avg(l_weight), 2), "
        "sum(l_extendedprice * (1 - l_discount)), max(l_shipdate) - min(l_shipdate) AS span, "
        "l_returnflag || '-' || count(*) AS label, sum(l_partkey) * $factor AS scaled "
        "FROM input GROUP BY l_returnflag",
        Mode.AGGREGATE,
        params={"factor": 3},
    ),
    Case(
        "group_by_expression",
        "SELECT year(l_shipdate) AS y, count(*) AS n, sum(l_tax) AS tax "
        "FROM input GROUP BY year(l_shipdate) ORDER BY y",
        Mode.AGGREGATE,
        ordered=True,
    ),
    Case(
        "group_by_alias_having_and_parameter",
        "SELECT date_trunc('month', l_shipdate) AS month, count(*) AS n FROM input "
        "GROUP BY month HAVING n > $min_rows ORDER BY month",
        Mode.AGGREGATE,
        ordered=True,
        params={"min_rows": 30},
    ),
    Case(
        "group_by_position_and_all",
        "SELECT l_linestatus, l_shipmode, max(l_comment) FROM input GROUP BY ALL ORDER BY 1, 2",
        Mode.AGGREGATE,
        ordered=True,
    ),
    Case(
        "group_by_positions",
        "SELECT lower(l_shipmode) AS mode, l_linestatus, count(*) FROM input GROUP BY 1, 2",
        Mode.AGGREGATE,
    ),
    Case(
        "group_by_column_shadowed_by_alias",
        "SELECT upper(l_shipmode) AS l_shipmode, count(*) AS n FROM input GROUP BY l_shipmode",
        Mode.AGGREGATE,
    ),
    Case(
        "having_and_order_by_aggregates_not_selected",
        "SELECT l_shipmode FROM input GROUP BY l_shipmode "
        "HAVING sum(l_quantity) > 100 ORDER BY avg(l_extendedprice) DESC, l_shipmode",
        Mode.AGGREGATE,
        ordered=True,
    ),
    Case(
        "dates_strings_and_booleans",
        "SELECT min(l_shipdate), max(l_shipdate), min(l_comment), max(l_returnflag), "
        "bool_and(l_flag), bool_or(l_flag), bit_or(l_linenumber), any_value(l_linestatus) "
        "FILTER (WHERE l_linestatus = 'F') FROM input",
        Mode.AGGREGATE,
    ),
    Case(
        "broadcast_join_aggregate_top_k",
        "SELECT n.n_name, sum(l_extendedprice) AS revenue, count(*) AS lines "
        "FROM input JOIN nation AS n ON l_nationkey = n.n_nationkey "
        "GROUP BY n.n_name ORDER BY revenue DESC, n.n_name LIMIT 5",
        Mode.AGGREGATE,
        ordered=True,
    ),
    Case(
        "integer_and_double_sums",
        "SELECT l_linenumber, sum(l_partkey) AS parts, sum(l_weight) AS weight, "
        "avg(l_partkey) AS avg_part, product(l_linenumber) FILTER (WHERE l_orderkey < 5) AS prod "
        "FROM input GROUP BY l_linenumber",
        Mode.AGGREGATE,
    ),
    Case(
        "cte_and_derived_table_feeding_aggregate",
        "WITH priced AS (SELECT *, l_extendedprice * (1 - l_discount) AS net FROM input) "
        "SELECT l_returnflag, sum(net) AS net, min(DISTINCT l_linestatus) AS first_status "
        "FROM (SELECT * FROM priced WHERE l_tax > 0) AS taxed GROUP BY ALL",
        Mode.AGGREGATE,
    ),
    Case(
        "less_common_mergeable_aggregates",
        "SELECT l_returnflag, mean(l_tax), fsum(l_weight), kahan_sum(l_weight), "
        "bit_xor(l_linenumber), bit_and(l_linenumber), max(DISTINCT l_shipmode) "
        "FROM input GROUP BY l_returnflag",
        Mode.AGGREGATE,
    ),
    Case(
        "alias_of_aggregate_reused_in_select_and_order_by",
        "SELECT l_returnflag, sum(l_quantity) AS total, total / count(*) AS per_row "
        "FROM input GROUP BY ALL ORDER BY total DESC",
        Mode.AGGREGATE,
        ordered=True,
    ),
    Case(
        "grouped_subquery_over_broadcast_table",
        "SELECT l_nationkey, (SELECT n_name FROM nation WHERE n_nationkey = l_nationkey) AS name, "
        "count(*) FROM input GROUP BY l_nationkey HAVING l_nationkey <> 3",
        Mode.AGGREGATE,
    ),
    Case(
        "generated_names_of_casts_lambdas_and_parameters",
        "SELECT l_returnflag, max(l_weight::DECIMAL(10,3)), "
        "min(date_diff('day', DATE '1992-01-01', l_shipdate)), "
        "max(len([x || '!' FOR x IN l_tags])), count(*) > $n, NOT (sum(l_tax) > 1) "
        "FROM input GROUP BY 1",
        Mode.AGGREGATE,
        params={"n": 900},
    ),
    Case(
        "column_names_keep_schema_spelling",
        "SELECT L_RETURNFLAG, Count(*), SUM(L_Quantity) FROM input GROUP BY l_returnflag",
        Mode.AGGREGATE,
    ),
    Case(
        "boolean_and_list_group_keys",
        "SELECT l_flag, l_tags, count(*), sum(l_tax) FROM input GROUP BY ALL",
        Mode.AGGREGATE,
    ),
    Case(
        "order_by_all_top_k",
        "SELECT l_orderkey, l_linenumber FROM input ORDER BY ALL DESC LIMIT 4",
        Mode.AGGREGATE,
        ordered=True,
    ),
    Case(
        "distinct_over_groups",
        "SELECT DISTINCT l_linestatus, count(*) > 0 AS nonempty FROM input GROUP BY l_linestatus",
        Mode.AGGREGATE,
    ),
]


@dataclass(frozen=True)
class Refusal:
    """A query that cannot run per shard, and a fragment its error message must contain."""

    id: str
    sql: str
    fragment: str


REFUSALS = [
    Refusal(
        "window_function",
        "SELECT l_orderkey, row_number() OVER (ORDER BY l_orderkey) FROM input",
        "window function",
    ),
    Refusal(
        "qualify",
        "SELECT * FROM input QUALIFY row_number() OVER (PARTITION BY l_orderkey) = 1",
        "QUALIFY",
    ),
    Refusal("count_distinct", "SELECT count(DISTINCT l_partkey) FROM input", "COUNT(DISTINCT"),
    Refusal("sum_distinct", "SELECT sum(DISTINCT l_quantity) FROM input", "SUM(DISTINCT"),
    Refusal("median", "SELECT median(l_quantity) FROM input", "MEDIAN"),
    Refusal(
        "quantile",
        "SELECT l_returnflag, quantile_cont(l_quantity, 0.9) FROM input GROUP BY 1",
        "QUANTILE_CONT",
    ),
    Refusal("string_agg", "SELECT string_agg(l_comment, ',') FROM input", "STRING_AGG"),
    Refusal("list", "SELECT list(l_orderkey) FROM input", "LIST"),
    Refusal(
        "approx_count_distinct",
        "SELECT approx_count_distinct(l_partkey) FROM input",
        "HyperLogLog",
    ),
    Refusal(
        "self_join",
        "SELECT a.l_orderkey FROM input AS a JOIN input AS b ON a.l_orderkey = b.l_orderkey",
        "reads input on both sides",
    ),
    Refusal(
        "self_join_through_cte",
        "WITH c AS (SELECT * FROM input) SELECT * FROM c JOIN input USING (l_orderkey)",
        "reads input on both sides",
    ),
    Refusal(
        "union_of_input_with_itself",
        "SELECT l_orderkey FROM input UNION ALL SELECT l_orderkey FROM input",
        "UNION",
    ),
    Refusal(
        "subquery_aggregating_input",
        "SELECT * FROM input WHERE l_quantity > (SELECT avg(l_quantity) FROM input)",
        "subquery",
    ),
    Refusal(
        "aggregate_of_aggregated_input",
        "SELECT count(*) FROM (SELECT l_orderkey, count(*) FROM input GROUP BY 1) AS per_order",
        "only the outermost SELECT may aggregate",
    ),
    Refusal(
        "right_join_keeping_broadcast_rows",
        "SELECT * FROM input RIGHT JOIN nation ON l_nationkey = n_nationkey",
        "RIGHT JOIN",
    ),
    Refusal(
        "full_join",
        "SELECT * FROM nation FULL JOIN input ON l_nationkey = n_nationkey",
        "FULL",
    ),
    Refusal(
        "rollup",
        "SELECT l_returnflag, count(*) FROM input GROUP BY ROLLUP (l_returnflag)",
        "ROLLUP",
    ),
    Refusal(
        "distinct_on",
        "SELECT DISTINCT ON (l_orderkey) * FROM input ORDER BY l_orderkey, l_shipdate",
        "DISTINCT ON",
    ),
    Refusal(
        "limit_inside_cte",
        "WITH few AS (SELECT * FROM input LIMIT 10) SELECT * FROM few",
        "LIMIT in the CTE few",
    ),
    Refusal("broadcast_table_only", "SELECT * FROM nation", "does not read input"),
    Refusal(
        "ordered_aggregate",
        "SELECT sum(l_quantity ORDER BY l_shipdate) FROM input",
        "ordered aggregate",
    ),
    Refusal(
        "star_in_aggregate_query",
        "SELECT *, count(*) FROM input GROUP BY ALL",
        "SELECT *",
    ),
    Refusal(
        "distinct_with_unselected_sort_key",
        "SELECT DISTINCT l_returnflag FROM input ORDER BY l_shipdate",
        "ORDER BY l_shipdate with SELECT DISTINCT",
    ),
    Refusal("limit_percent", "SELECT * FROM input LIMIT 10%", "PERCENT"),
    Refusal(
        "aggregate_macro_in_row_by_row_position",
        "SELECT weighted_avg(l_quantity, l_tax) FROM input",
        "WEIGHTED_AVG",
    ),
    Refusal(
        "group_by_collation",
        "SELECT l_shipmode COLLATE NOCASE AS mode, count(*) FROM input GROUP BY 1",
        "COLLATE",
    ),
    Refusal(
        "columns_expression_in_aggregate",
        "SELECT max(COLUMNS('l_.*price')) FROM input",
        "COLUMNS",
    ),
]
