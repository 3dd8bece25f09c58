"""The demo's pieces at a tiny size: Q1 in two stages equals Q1 on one node, and the whole demo
runs, reruns over the same data and replaces its result."""

from __future__ import annotations

import math
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest
from rich.console import Console

from ecs_query import demo, sample

_AVERAGES = {"avg_qty", "avg_price", "avg_disc"}


@pytest.fixture(scope="module")
def lineitem(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return sample.generate_lineitem(tmp_path_factory.mktemp("demo-data"), rows=20_000, files=4)


def run_q1(files: list[Path], sql: str) -> tuple[list[tuple[str, str]], list[tuple[object, ...]]]:
    """Q1 on one node over ``files``: column names and types, then rows."""
    con = duckdb.connect()
    try:
        listing = ", ".join(f"'{file}'" for file in files)
        con.execute(f"CREATE VIEW input AS SELECT * FROM read_parquet([{listing}])")
        relation = con.execute(sql, {"cutoff": demo.CUTOFF} if "$cutoff" in sql else None)
        return _shape(relation), relation.fetchall()
    finally:
        con.close()


def run_two_stage(files: list[Path]) -> tuple[list[tuple[str, str]], list[tuple[object, ...]]]:
    """The shard SQL over each file on its own, then the merge SQL over all partial results."""
    con = duckdb.connect()
    try:
        for index, file in enumerate(files):
            con.execute(f"CREATE OR REPLACE VIEW input AS SELECT * FROM read_parquet('{file}')")
            select = f"SELECT * FROM ({demo.Q1_SHARD_SQL})"
            if index == 0:
                con.execute(f"CREATE TABLE partials AS {select}", {"cutoff": demo.CUTOFF})
            else:
                con.execute(f"INSERT INTO partials {select}", {"cutoff": demo.CUTOFF})
        relation = con.execute(demo.Q1_MERGE_SQL)
        return _shape(relation), relation.fetchall()
    finally:
        con.close()


def _shape(relation: duckdb.DuckDBPyConnection) -> list[tuple[str, str]]:
    return [(column[0], str(column[1])) for column in relation.description or []]


def assert_same_q1(
    expected: tuple[list[tuple[str, str]], list[tuple[object, ...]]],
    actual: tuple[list[tuple[str, str]], list[tuple[object, ...]]],
) -> None:
    """Same columns, types and groups; sums and counts exact, averages to 1e-9 relative."""
    assert actual[0] == expected[0]
    names = [name for name, _ in expected[0]]
    assert len(actual[1]) == len(expected[1]) == 4
    for want, got in zip(expected[1], actual[1], strict=True):
        for name, wanted, value in zip(names, want, got, strict=True):
            if name in _AVERAGES:
                assert isinstance(value, float)
                assert math.isclose(value, wanted, rel_tol=1e-9), name  # type: ignore[arg-type]
            else:
                assert value == wanted, name


def test_two_stage_q1_equals_single_node_q1(lineitem: list[Path]) -> None:
    expected = run_q1(lineitem, demo.Q1_SQL)
    actual = run_two_stage(lineitem)

    assert_same_q1(expected, actual)
    assert [row[:2] for row in expected[1]] == [("A", "F"), ("N", "F"), ("N", "O"), ("R", "F")]
    assert all(isinstance(row[2], Decimal) for row in expected[1])


def test_q1_counts_only_lines_shipped_by_the_cutoff(lineitem: list[Path]) -> None:
    _, rows = run_q1(lineitem, demo.Q1_SQL)
    con = duckdb.connect()
    try:
        [(shipped,)] = con.execute(
            "SELECT count(*) FROM read_parquet($files) WHERE l_shipdate <= DATE '1998-09-02'",
            {"files": [str(f) for f in lineitem]},
        ).fetchall()
    finally:
        con.close()

    assert sum(int(row[-1]) for row in rows) == shipped  # type: ignore[call-overload]
    assert shipped < 20_000


def test_demo_runs_and_reruns_at_tiny_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(demo.ROWS_ENV, "60000")
    console = Console(record=True, width=160)
    arguments = ["--files", "4", "--shards", "2", "--dir", str(tmp_path)]

    assert demo.main(arguments, console=console) == 0
    first = console.export_text()
    result = sorted((tmp_path / "output" / "q1").glob("part-*.parquet"))
    data = sorted((tmp_path / "lineitem").glob("lineitem-*.parquet"))

    assert "Generating 60,000 lineitem rows in 4 Parquet files" in first
    assert "2 shards" in capsys.readouterr().out
    assert len(result) == 1
    assert_same_q1(run_q1(data, demo.Q1_SQL), run_q1(result, "SELECT * FROM input"))
    for step in ("generate", "plan", "shards", "finalize", "total"):
        assert step in first

    written = [path.stat().st_mtime_ns for path in data]
    assert demo.main(arguments, console=console) == 0
    second = console.export_text()

    assert "Reusing 60,000 lineitem rows" in second
    assert "generate (reused)" in second
    assert [path.stat().st_mtime_ns for path in data] == written


def test_rows_from_the_environment_must_be_a_positive_number(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv(demo.ROWS_ENV, "ten")

    with pytest.raises(SystemExit) as exit_info:
        demo.main(["--dir", str(tmp_path)])

    assert exit_info.value.code == 2
    assert "ECS_QUERY_DEMO_ROWS: expected a whole number, received 'ten'" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_target_shard_size_cuts_the_data_into_about_the_asked_shards() -> None:
    mib = 1024 * 1024

    assert demo.target_shard_mib(int(214.5 * mib), 8) == 27
    assert demo.target_shard_mib(100, 8) == 1


def test_job_arguments_pass_the_sql_as_files(tmp_path: Path) -> None:
    paths = demo.DemoPaths(tmp_path)

    arguments = demo.job_arguments(paths, 27)

    sql_file = Path(arguments[arguments.index("--sql") + 1].removeprefix("@"))
    assert sql_file.read_text() == demo.Q1_SQL
    assert "--merge-sql" not in arguments  # the planner splits the one statement itself
    assert arguments[arguments.index("--param") + 1] == "cutoff=1998-09-02"
    assert arguments[arguments.index("--target-shard-mib") + 1] == "27"
