"""The sample lineitem generator: deterministic bytes, TPC-H types and value rules, and an
``ensure`` that regenerates only when the data set on disk does not match."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import duckdb
import pytest

from ecs_query import sample


def digest(paths: list[Path]) -> str:
    hasher = hashlib.sha256()
    for path in paths:
        hasher.update(path.name.encode())
        hasher.update(path.read_bytes())
    return hasher.hexdigest()


def query(paths: list[Path], sql: str) -> list[tuple[object, ...]]:
    con = duckdb.connect()
    try:
        listing = ", ".join(f"'{path}'" for path in paths)
        con.execute(f"CREATE VIEW lineitem AS SELECT * FROM read_parquet([{listing}])")
        return con.execute(sql).fetchall()
    finally:
        con.close()


@pytest.fixture(scope="module")
def lineitem(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return sample.generate_lineitem(tmp_path_factory.mktemp("lineitem"), rows=20_000, files=3)


def test_same_arguments_give_byte_identical_files(lineitem: list[Path], tmp_path: Path) -> None:
    again = sample.generate_lineitem(tmp_path, rows=20_000, files=3)

    assert [path.name for path in again] == [
        "lineitem-00000.parquet",
        "lineitem-00001.parquet",
        "lineitem-00002.parquet",
    ]
    assert digest(again) == digest(lineitem)


def test_the_file_count_only_decides_where_rows_are_cut(
    lineitem: list[Path], tmp_path: Path
) -> None:
    one_file = sample.generate_lineitem(tmp_path, rows=20_000, files=1)

    # Rows are unique (order key, line number), so equal counts and sums of row hashes mean
    # equal contents.
    contents = "SELECT count(*), sum(CAST(hash(lineitem) AS HUGEINT)) FROM lineitem"
    assert query(one_file, contents) == query(lineitem, contents)


def test_another_seed_gives_other_values(lineitem: list[Path], tmp_path: Path) -> None:
    other = sample.generate_lineitem(tmp_path, rows=20_000, files=3, seed=1)

    ordered = "SELECT l_partkey, l_shipdate FROM lineitem ORDER BY l_orderkey, l_linenumber"
    assert query(other, ordered) != query(lineitem, ordered)


def test_rows_are_split_evenly_across_files(lineitem: list[Path]) -> None:
    counts = [query([path], "SELECT count(*) FROM lineitem")[0][0] for path in lineitem]

    assert counts == [6_666, 6_667, 6_667]


def test_columns_have_tpch_types(lineitem: list[Path]) -> None:
    described = query(lineitem, "SELECT column_name, column_type FROM (DESCRIBE lineitem)")

    assert described == [
        ("l_orderkey", "BIGINT"),
        ("l_partkey", "BIGINT"),
        ("l_suppkey", "BIGINT"),
        ("l_linenumber", "INTEGER"),
        ("l_quantity", "DECIMAL(15,2)"),
        ("l_extendedprice", "DECIMAL(15,2)"),
        ("l_discount", "DECIMAL(15,2)"),
        ("l_tax", "DECIMAL(15,2)"),
        ("l_returnflag", "VARCHAR"),
        ("l_linestatus", "VARCHAR"),
        ("l_shipdate", "DATE"),
        ("l_commitdate", "DATE"),
        ("l_receiptdate", "DATE"),
        ("l_shipinstruct", "VARCHAR"),
        ("l_shipmode", "VARCHAR"),
        ("l_comment", "VARCHAR"),
    ]


def test_values_follow_tpch_rules(lineitem: list[Path]) -> None:
    broken = query(
        lineitem,
        """
        SELECT
            count(*) FILTER (WHERE l_quantity NOT BETWEEN 1 AND 50),
            count(*) FILTER (WHERE l_discount NOT BETWEEN 0 AND 0.10),
            count(*) FILTER (WHERE l_tax NOT BETWEEN 0 AND 0.08),
            count(*) FILTER (WHERE l_shipdate NOT BETWEEN DATE '1992-01-02' AND DATE '1998-12-01'),
            count(*) FILTER (WHERE l_receiptdate <= l_shipdate),
            count(*) FILTER (WHERE l_returnflag IN ('R', 'A') AND l_shipdate > DATE '1995-06-17'),
            count(*) FILTER (WHERE l_returnflag NOT IN ('R', 'A', 'N')),
            count(*) FILTER (WHERE l_linestatus <> CASE WHEN l_shipdate <= DATE '1995-06-17'
                                                        THEN 'F' ELSE 'O' END),
            count(*) FILTER (WHERE l_linenumber NOT BETWEEN 1 AND 7),
            count(*) FILTER (WHERE length(l_comment) NOT BETWEEN 5 AND 44)
        FROM lineitem
        """,
    )

    assert broken == [(0,) * 10]


def test_q1_finds_the_four_tpch_groups(lineitem: list[Path]) -> None:
    groups = query(
        lineitem,
        "SELECT DISTINCT l_returnflag, l_linestatus FROM lineitem ORDER BY ALL",
    )

    assert groups == [("A", "F"), ("N", "F"), ("N", "O"), ("R", "F")]


def test_row_groups_hold_122880_rows(tmp_path: Path) -> None:
    [path] = sample.generate_lineitem(tmp_path, rows=130_000, files=1)

    groups = query(
        [path],
        f"SELECT DISTINCT row_group_id, row_group_num_rows, compression "
        f"FROM parquet_metadata('{path}') WHERE column_id = 0 ORDER BY row_group_id",
    )

    assert groups == [(0, 122_880, "ZSTD"), (1, 7_120, "ZSTD")]


def test_ensure_reuses_a_matching_data_set(tmp_path: Path) -> None:
    first = sample.ensure_lineitem(tmp_path, rows=1_000, files=2)
    written = [path.stat().st_mtime_ns for path in first]

    second = sample.ensure_lineitem(tmp_path, rows=1_000, files=2)

    assert second == first
    assert [path.stat().st_mtime_ns for path in second] == written
    marker = json.loads((tmp_path / sample.MARKER_NAME).read_text())
    assert marker["arguments"] == {"rows": 1_000, "files": 2, "seed": 0, "version": 1}


def test_ensure_replaces_a_data_set_made_with_other_arguments(tmp_path: Path) -> None:
    sample.ensure_lineitem(tmp_path, rows=1_000, files=4)
    unrelated = tmp_path / "notes.txt"
    unrelated.write_text("kept")

    paths = sample.ensure_lineitem(tmp_path, rows=1_000, files=2)

    assert sorted(p.name for p in tmp_path.glob("lineitem-*")) == [p.name for p in paths]
    assert query(paths, "SELECT count(*) FROM lineitem") == [(1_000,)]
    assert unrelated.read_text() == "kept"
    assert sample.lineitem_is_current(tmp_path, rows=1_000, files=2)
    assert not sample.lineitem_is_current(tmp_path, rows=1_000, files=4)


def test_ensure_regenerates_a_damaged_file(tmp_path: Path) -> None:
    paths = sample.ensure_lineitem(tmp_path, rows=1_000, files=2)
    expected = digest(paths)
    paths[1].write_bytes(b"truncated")

    assert not sample.lineitem_is_current(tmp_path, rows=1_000, files=2)
    assert digest(sample.ensure_lineitem(tmp_path, rows=1_000, files=2)) == expected


def test_ensure_regenerates_when_the_marker_is_missing(tmp_path: Path) -> None:
    sample.generate_lineitem(tmp_path, rows=1_000, files=2)

    assert not sample.lineitem_is_current(tmp_path, rows=1_000, files=2)
    sample.ensure_lineitem(tmp_path, rows=1_000, files=2)
    assert sample.lineitem_is_current(tmp_path, rows=1_000, files=2)


@pytest.mark.parametrize(
    ("rows", "files", "seed", "message"),
    [
        (0, 1, 0, "rows: expected 1 or more, received 0"),
        (10, 0, 0, "files: expected 1 to rows (10), received 0"),
        (10, 11, 0, "files: expected 1 to rows (10), received 11"),
        (10, 1, -1, "seed: expected 0 or more, received -1"),
    ],
)
def test_rejects_arguments_out_of_range(
    tmp_path: Path, rows: int, files: int, seed: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        sample.generate_lineitem(tmp_path, rows=rows, files=files, seed=seed)
    assert not list(tmp_path.iterdir())
