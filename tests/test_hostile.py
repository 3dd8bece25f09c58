"""Hostile or broken input: the worker's DuckDB is locked to the job's own inputs, parameters
are values, and bad files are named."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from tests.cli_helpers import ecs_query, make_dataset, run_json
from tests.servers import MotoServer


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("hostile") / "events", files=2, rows_per_file=1000)


def refused(data: Path, tmp_path: Path, sql: str, *extra: str) -> str:
    out = tmp_path / "out"
    result = ecs_query("run", "--sql", sql, "--input", str(data), "--output", str(out), *extra)
    assert result.returncode == 65, result.stdout + result.stderr
    assert not (out / "_manifest.json").exists()
    return result.stderr


@pytest.mark.parametrize(
    ("sql", "fragment"),
    [
        ("SELECT * FROM read_csv('/etc/passwd')", 'Cannot access file "/etc/passwd"'),
        ("SELECT * FROM read_text('/etc/hostname')", 'Cannot access file "/etc/hostname"'),
        ("SELECT * FROM glob('/root/*')", "file system operations are disabled"),
        (
            "SELECT * FROM input UNION ALL SELECT * FROM read_parquet('s3://other-bucket/x.parquet')",
            'Cannot access file "s3://other-bucket/x.parquet"',
        ),
        ("SELECT * FROM input WHERE current_setting('enable_external_access')", ""),
    ],
    ids=["local-file", "read-text", "glob", "other-bucket", "external-access-is-off"],
)
def test_sql_cannot_reach_outside_the_job(
    data: Path, tmp_path: Path, sql: str, fragment: str
) -> None:
    if not fragment:
        # Reading a setting is harmless; what matters is that the job still only sees input.
        report = run_json("--sql", sql, "--input", str(data), "--output", str(tmp_path / "o"))
        assert report["rows"] == 0
        return
    # One task skips the shard planner's own refusal, so DuckDB's lock-down is what refuses.
    stderr = refused(data, tmp_path, sql, "--single-task")
    assert fragment in stderr


@pytest.mark.parametrize(
    "sql",
    [
        "ATTACH '/tmp/evil.db' AS evil",
        "COPY (SELECT 1) TO '/tmp/evil.csv'",
        "INSTALL spatial",
        "LOAD httpfs",
        "SET enable_external_access = true",
        "SELECT 1; SELECT 2",
        "CREATE TABLE t AS SELECT * FROM input",
    ],
)
def test_statements_other_than_one_select_are_refused(data: Path, tmp_path: Path, sql: str) -> None:
    stderr = refused(data, tmp_path, sql)
    assert "SQL must be" in stderr
    assert not Path("/tmp/evil.csv").exists()


def test_merge_sql_is_locked_down_too(data: Path, tmp_path: Path) -> None:
    stderr = refused(
        data,
        tmp_path,
        "SELECT count(*) AS n FROM input",
        "--merge-sql",
        "SELECT * FROM read_csv('/etc/passwd')",
    )
    assert 'Cannot access file "/etc/passwd"' in stderr


def test_settings_cannot_be_changed_inside_a_select(data: Path, tmp_path: Path) -> None:
    # A CTE cannot smuggle a SET, and the configuration is locked anyway.
    stderr = refused(data, tmp_path, "WITH x AS (SET threads = 64) SELECT 1")
    assert "QueryError" in stderr


def test_sql_injection_through_a_parameter_finds_nothing(data: Path, tmp_path: Path) -> None:
    report = run_json(
        "--sql",
        "SELECT id FROM input WHERE label = $label",
        "--param",
        "label='; DROP TABLE input; --",
        "--input",
        str(data),
        "--output",
        str(tmp_path / "out"),
    )
    assert report["rows"] == 0


def test_files_whose_schemas_disagree_name_the_file(data: Path, tmp_path: Path) -> None:
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for source in sorted(data.iterdir()):
        (mixed / source.name).write_bytes(source.read_bytes())
    import duckdb

    duckdb.connect().execute(
        f"COPY (SELECT 'text' AS id, 1 AS other) TO '{mixed / 'part-9-odd.parquet'}' "
        "(FORMAT parquet)"
    )
    stderr = refused(mixed, tmp_path, "SELECT id FROM input", "--target-shard-mib", "1000")
    assert "part-9-odd.parquet" in stderr


def test_truncated_gzip_names_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "gz"
    folder.mkdir()
    body = "id,name\n" + "".join(f"{i},name-{i}\n" for i in range(50_000))
    whole = gzip.compress(body.encode())
    (folder / "a.csv.gz").write_bytes(gzip.compress(b"id,name\n1,x\n"))
    (folder / "b.csv.gz").write_bytes(whole[: len(whole) // 2])
    stderr = refused(folder, tmp_path, "SELECT count(*) AS n FROM input")
    assert "b.csv.gz" in stderr


def test_csv_with_thousands_of_columns_is_read(tmp_path: Path) -> None:
    folder = tmp_path / "wide"
    folder.mkdir()
    columns = 3000
    header = ",".join(f"c{i}" for i in range(columns))
    rows = "".join(",".join(str(r + i) for i in range(columns)) + "\n" for r in range(10))
    (folder / "wide.csv").write_text(header + "\n" + rows)
    out = tmp_path / "out"
    report = run_json(
        "--sql",
        "SELECT sum(c2999) AS s, count(*) AS n FROM input",
        "--input",
        str(folder),
        "--output",
        str(out),
    )
    assert report["rows"] == 1
    manifest = json.loads((out / "_manifest.json").read_text())
    import duckdb

    got = duckdb.connect().execute(f"SELECT * FROM '{manifest['files'][0]['uri']}'").fetchall()
    assert got == [(sum(r + 2999 for r in range(10)), 10)]


def test_other_buckets_are_refused_on_s3(
    s3: Any, bucket: str, moto_server: MotoServer, data: Path, tmp_path: Path
) -> None:
    for file in sorted(data.iterdir()):
        s3.upload_file(str(file), bucket, f"in/{file.name}")
    s3.create_bucket(Bucket=f"{bucket}-secret")
    s3.put_object(Bucket=f"{bucket}-secret", Key="s.csv", Body=b"secret\n42\n")
    result = ecs_query(
        "run",
        "--single-task",
        "--sql",
        f"SELECT * FROM read_csv('s3://{bucket}-secret/s.csv')",
        "--input",
        f"s3://{bucket}/in/",
        "--output",
        f"s3://{bucket}/out/",
        "--endpoint-url",
        moto_server.endpoint,
    )
    assert result.returncode == 65
    assert f'Cannot access file "s3://{bucket}-secret/s.csv"' in result.stderr
