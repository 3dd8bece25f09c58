"""``ecs-query run`` and ``plan`` on local files, end to end through the real CLI."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from tests.cli_helpers import ecs_query, make_dataset, query, read_manifest_rows, run_json

GROUP_SQL = "SELECT grp, count(*) AS n, sum(val) AS total FROM input GROUP BY grp"
GROUP_MERGE = (
    "SELECT grp, CAST(sum(n) AS BIGINT) AS n, sum(total) AS total FROM partials GROUP BY grp"
)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data") / "events")


def test_two_stage_query_equals_single_duckdb(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = run_json(
        "--sql",
        GROUP_SQL,
        "--merge-sql",
        GROUP_MERGE,
        "--input",
        str(data),
        "--output",
        str(out),
        "--target-shard-mib",
        "1",
        "--workers",
        "2",
    )
    assert report["shards"] >= 2
    manifest = json.loads((out / "_manifest.json").read_text())
    got = read_manifest_rows(manifest, order_by="grp NULLS FIRST")
    expected = query(
        f"SELECT grp, count(*), sum(val) FROM read_parquet('{data}/*.parquet') "
        "GROUP BY grp ORDER BY grp NULLS FIRST"
    )
    assert got == expected
    assert manifest["rows"] == len(expected) == 6
    assert [entry["path"] for entry in manifest["files"]] == ["part-00000.parquet"]
    # Staging is gone once committed.
    assert sorted(p.name for p in out.iterdir()) == ["_manifest.json", "part-00000.parquet"]


def test_map_only_query_writes_one_file_per_shard(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = run_json(
        "--sql",
        "SELECT id, val * 2 AS doubled FROM input WHERE grp = 1",
        "--input",
        str(data),
        "--output",
        str(out),
        "--target-shard-mib",
        "1",
    )
    manifest = json.loads((out / "_manifest.json").read_text())
    assert len(manifest["files"]) == report["shards"]
    assert [e["path"] for e in manifest["files"]] == [
        f"part-{i:05d}.parquet" for i in range(report["shards"])
    ]
    for entry in manifest["files"]:
        assert Path(entry["uri"]).stat().st_size == entry["bytes"]
    got = read_manifest_rows(manifest, order_by="id")
    expected = query(
        f"SELECT id, val * 2 FROM read_parquet('{data}/*.parquet') WHERE grp = 1 ORDER BY id"
    )
    assert got == expected
    assert manifest["rows"] == len(expected) == sum(e["rows"] for e in manifest["files"])


def test_parameters_are_bound_not_pasted(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_json(
        "--sql",
        "SELECT count(*) AS n FROM input WHERE val > $low AND label = $label",
        "--merge-sql",
        "SELECT CAST(sum(n) AS BIGINT) AS n FROM partials",
        "--param",
        "low=100",
        "--param",
        "label=label-1",
        "--input",
        str(data),
        "--output",
        str(out),
    )
    manifest = json.loads((out / "_manifest.json").read_text())
    expected = query(
        f"SELECT count(*) FROM read_parquet('{data}/*.parquet') "
        "WHERE val > 100 AND label = 'label-1'"
    )
    assert read_manifest_rows(manifest) == expected


def test_injection_through_a_parameter_stays_a_value(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = run_json(
        "--sql",
        "SELECT id FROM input WHERE label = $label",
        "--param",
        "label=x' OR '1'='1",
        "--input",
        str(data),
        "--output",
        str(out),
    )
    assert report["rows"] == 0


def test_missing_parameter_is_named_before_any_shard_runs(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = ecs_query(
        "run",
        "--sql",
        "SELECT * FROM input WHERE val > $low AND grp = $grp",
        "--param",
        "low=1",
        "--input",
        str(data),
        "--output",
        str(out),
    )
    assert result.returncode == 65
    assert "QueryError: SQL uses $grp but no value was given; pass --param grp=VALUE" in (
        result.stderr
    )
    assert not out.exists()


def test_bad_sql_fails_fast_with_the_parser_message(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = ecs_query(
        "run", "--sql", "SELEC id FROM input", "--input", str(data), "--output", str(out)
    )
    assert result.returncode == 65
    assert "QueryError: SQL does not parse: Parser Error: syntax error at or near" in result.stderr
    assert not out.exists()


def test_unknown_column_names_the_column(data: Path, tmp_path: Path) -> None:
    result = ecs_query(
        "run",
        "--sql",
        "SELECT nope FROM input",
        "--input",
        str(data),
        "--output",
        str(tmp_path / "out"),
    )
    assert result.returncode == 65
    assert 'Referenced column "nope" not found' in result.stderr


def test_statements_other_than_select_are_refused(data: Path, tmp_path: Path) -> None:
    result = ecs_query(
        "run", "--sql", "DELETE FROM input", "--input", str(data), "--output", str(tmp_path / "out")
    )
    assert result.returncode == 65
    assert "SQL must be a SELECT" in result.stderr


def test_corrupt_parquet_fails_the_job_naming_the_file(data: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    for source in sorted(data.iterdir())[:3]:
        (bad / source.name).write_bytes(source.read_bytes())
    (bad / "part-9-corrupt.parquet").write_bytes(b"PAR1" + b"\x00garbage" * 500)
    out = tmp_path / "out"
    result = ecs_query(
        "run",
        "--sql",
        "SELECT count(*) AS n FROM input",
        "--input",
        str(bad),
        "--output",
        str(out),
        "--target-shard-mib",
        "1",
    )
    assert result.returncode == 65
    assert "part-9-corrupt.parquet" in result.stderr
    assert not (out / "_manifest.json").exists()


def test_existing_output_needs_overwrite_and_a_rerun_is_a_no_op(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = [
        "--sql",
        GROUP_SQL,
        "--merge-sql",
        GROUP_MERGE,
        "--input",
        str(data),
        "--output",
        str(out),
    ]
    first = run_json(*args)
    assert first["already_committed"] is False

    rerun = run_json(*args)
    assert rerun["already_committed"] is True
    assert rerun["job_id"] == first["job_id"]

    other = ecs_query(
        "run", "--sql", "SELECT id FROM input", "--input", str(data), "--output", str(out)
    )
    assert other.returncode == 65
    assert "OutputExistsError: output" in other.stderr
    assert "already holds a result" in other.stderr
    assert "pass --overwrite" in other.stderr

    replaced = run_json(
        "--sql",
        "SELECT id FROM input WHERE id < 10",
        "--input",
        str(data),
        "--output",
        str(out),
        "--overwrite",
    )
    assert replaced["rows"] == 10
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["job_id"] == replaced["job_id"]
    names = sorted(p.name for p in out.iterdir())
    assert names == ["_manifest.json", *[e["path"] for e in manifest["files"]]]


def test_output_folder_with_foreign_files_is_not_touched(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.csv").write_text("keep me\n")
    result = ecs_query(
        "run", "--sql", "SELECT id FROM input", "--input", str(data), "--output", str(out)
    )
    assert result.returncode == 65
    assert "already holds 1 file(s)" in result.stderr
    assert (out / "precious.csv").read_text() == "keep me\n"


def test_gzip_csv_and_json_lines_inputs(tmp_path: Path) -> None:
    csv_dir = tmp_path / "csv"
    csv_dir.mkdir()
    json_dir = tmp_path / "json"
    json_dir.mkdir()
    for part in range(3):
        rows = [(part * 10 + i, f"n{i}") for i in range(10)]
        with gzip.open(csv_dir / f"p{part}.csv.gz", "wt") as handle:
            handle.write("id,name\n" + "".join(f"{a},{b}\n" for a, b in rows))
        with gzip.open(json_dir / f"p{part}.jsonl.gz", "wt") as handle:
            handle.write("".join(json.dumps({"id": a, "name": b}) + "\n" for a, b in rows))
    for source in (csv_dir, json_dir):
        out = tmp_path / f"out-{source.name}"
        report = run_json(
            "--sql",
            "SELECT id, name FROM input WHERE id % 2 = 0",
            "--input",
            str(source),
            "--output",
            str(out),
        )
        assert report["rows"] == 15
        manifest = json.loads((out / "_manifest.json").read_text())
        assert sorted(read_manifest_rows(manifest)) == [(i, f"n{i % 10}") for i in range(0, 30, 2)]


def test_csv_output_and_a_broadcast_table(data: Path, tmp_path: Path) -> None:
    names = tmp_path / "names.csv"
    names.write_text("grp,name\n0,zero\n1,one\n2,two\n3,three\n4,four\n")
    out = tmp_path / "out"
    run_json(
        "--sql",
        "SELECT n.name, count(*) AS c FROM input i JOIN names n USING (grp) GROUP BY 1",
        "--merge-sql",
        "SELECT name, CAST(sum(c) AS BIGINT) AS c FROM partials GROUP BY 1",
        "--table",
        f"names={names}",
        "--input",
        str(data),
        "--output",
        str(out),
        "--output-format",
        "csv",
    )
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["format"] == "csv"
    assert (out / "part-00000.csv").read_text().startswith("name,c\n")
    expected = query(
        f"SELECT n.name, count(*) FROM read_parquet('{data}/*.parquet') i "
        f"JOIN read_csv_auto('{names}') n USING (grp) GROUP BY 1 ORDER BY 1"
    )
    assert read_manifest_rows(manifest, order_by="name") == expected


def test_sql_from_a_file(data: Path, tmp_path: Path) -> None:
    sql_file = tmp_path / "q.sql"
    sql_file.write_text("-- ids below five\nSELECT id FROM input WHERE id < 5;\n")
    report = run_json(
        "--sql", f"@{sql_file}", "--input", str(data), "--output", str(tmp_path / "out")
    )
    assert report["rows"] == 5


def test_unreadable_sql_file_is_named(data: Path, tmp_path: Path) -> None:
    result = ecs_query(
        "run",
        "--sql",
        "@/nonexistent/q.sql",
        "--input",
        str(data),
        "--output",
        str(tmp_path / "out"),
    )
    assert result.returncode == 65
    assert "--sql '@/nonexistent/q.sql': cannot read /nonexistent/q.sql" in result.stderr


def test_unknown_input_format_flag_is_refused(data: Path, tmp_path: Path) -> None:
    result = ecs_query(
        "run",
        "--sql",
        "SELECT 1",
        "--input",
        str(data),
        "--input-format",
        "xml",
        "--output",
        str(tmp_path / "out"),
    )
    assert result.returncode == 2
    assert "argument --input-format: invalid choice: 'xml'" in result.stderr


def test_missing_input_folder_is_named(tmp_path: Path) -> None:
    result = ecs_query(
        "run",
        "--sql",
        "SELECT * FROM input",
        "--input",
        str(tmp_path / "nothing"),
        "--output",
        str(tmp_path / "out"),
    )
    assert result.returncode == 65
    assert "nothing' does not exist; check the path" in result.stderr


def test_plan_shows_shards_task_size_and_estimate(data: Path) -> None:
    result = ecs_query(
        "plan", "--sql", GROUP_SQL, "--input", str(data), "--target-shard-mib", "1", "--json"
    )
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["shards"] == len(plan["shard_list"]) >= 2
    assert plan["files"] == 6
    assert plan["task_size"] == {"cpu": 512, "memory_mib": 2048, "ephemeral_gib": 21}
    assert plan["estimate"]["region"] == "us-east-1"
    assert plan["estimate"]["prices_as_of"] == "2026-12"
    assert 0 < plan["estimate"]["spot_usd"] < plan["estimate"]["on_demand_usd"]
    assert plan["balance_max_over_mean"] <= 1.5

    table = ecs_query("plan", "--sql", GROUP_SQL, "--input", str(data), "--target-shard-mib", "1")
    assert table.returncode == 0
    assert "task size: 0.5 vCPU, 2 GiB, 21 GiB disk" in table.stdout
    assert "us-east-1 prices as of 2026-12" in table.stdout


def test_run_prints_summary_and_result_preview(data: Path, tmp_path: Path) -> None:
    result = ecs_query(
        "run",
        "--sql",
        GROUP_SQL,
        "--merge-sql",
        GROUP_MERGE,
        "--input",
        str(data),
        "--output",
        str(tmp_path / "out"),
    )
    assert result.returncode == 0, result.stderr
    assert "committed 6 rows in 1 file(s)" in result.stdout
    assert "first 6 of 6 rows" in result.stdout
    assert "shards" in result.stderr  # the progress bar


def test_worker_without_environment_lists_every_missing_variable() -> None:
    result = ecs_query("worker", env={"ECS_QUERY_STAGE": "shard"})
    assert result.returncode == 65
    record = json.loads(result.stdout.splitlines()[0])
    assert record["level"] == "ERROR"
    assert record["error_type"] == "UserError"
    for name in ("ECS_QUERY_SQL", "ECS_QUERY_INPUT", "ECS_QUERY_OUTPUT"):
        assert f"{name}: missing" in record["message"]
    emf = json.loads(result.stdout.splitlines()[1])
    assert emf["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "EcsQuery"
    assert emf["ShardsFailed"] == 1


def test_one_statement_is_split_into_shard_and_merge_sql(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    sql = (
        "SELECT grp, count(*) AS n, avg(val) AS mean, max(label) AS top FROM input "
        "GROUP BY grp ORDER BY grp NULLS FIRST"
    )
    report = run_json(
        "--sql", sql, "--input", str(data), "--output", str(out), "--target-shard-mib", "1"
    )
    assert report["shards"] >= 2
    manifest = json.loads((out / "_manifest.json").read_text())
    got = read_manifest_rows(manifest)
    expected = query(sql.replace("FROM input", f"FROM read_parquet('{data}/*.parquet')"))
    assert [row[:2] + row[3:] for row in got] == [row[:2] + row[3:] for row in expected]
    for mine, theirs in zip(got, expected, strict=True):
        assert mine[2] == pytest.approx(theirs[2], rel=1e-9)


def test_plan_explain_prints_the_shard_and_merge_sql(data: Path) -> None:
    result = ecs_query(
        "plan",
        "--sql",
        "SELECT grp, sum(val) AS s FROM input GROUP BY grp",
        "--input",
        str(data),
        "--explain",
    )
    assert result.returncode == 0, result.stderr
    assert "mode: aggregate" in result.stdout
    assert "shard SQL (per shard, over the table input):" in result.stdout
    assert "merge SQL (once, over the table partials):" in result.stdout
    assert "FROM partials" in result.stdout


def test_sql_that_cannot_be_split_asks_for_single_task(data: Path, tmp_path: Path) -> None:
    sql = "SELECT id, row_number() OVER (ORDER BY id) AS rn FROM input"
    result = ecs_query("run", "--sql", sql, "--input", str(data), "--output", str(tmp_path / "out"))
    assert result.returncode == 65
    assert "NotDistributableError" in result.stderr
    assert "pass --single-task" in result.stderr

    report = run_json(
        "--sql", sql, "--single-task", "--input", str(data), "--output", str(tmp_path / "single")
    )
    assert report["shards"] == 1
    assert report["rows"] == query(f"SELECT count(*) FROM read_parquet('{data}/*.parquet')")[0][0]


def test_a_missing_spill_folder_is_created_and_left_empty(data: Path, tmp_path: Path) -> None:
    spill = tmp_path / "efs" / "spill"
    report = run_json(
        "--sql",
        "SELECT grp, count(*) AS n FROM input GROUP BY grp",
        "--input",
        str(data),
        "--output",
        str(tmp_path / "out"),
        env={"ECS_QUERY_SPILL_DIR": str(spill)},
    )
    assert report["rows"] == 6
    assert spill.is_dir()
    assert list(spill.iterdir()) == []
