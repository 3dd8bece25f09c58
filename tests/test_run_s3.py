"""``ecs-query run`` against an S3 endpoint: a moto server on 127.0.0.1 that the tests start."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ecs_query import planner
from ecs_query.errors import InputError
from tests.cli_helpers import ecs_query, make_dataset, query, run_json
from tests.servers import MotoServer

SQL = "SELECT grp, count(*) AS n, sum(val) AS total FROM input GROUP BY grp"
MERGE = "SELECT grp, CAST(sum(n) AS BIGINT) AS n, sum(total) AS total FROM partials GROUP BY grp"


@pytest.fixture(scope="module")
def local_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("s3data") / "events")


def upload(s3: Any, bucket: str, prefix: str, folder: Path) -> None:
    for file in sorted(folder.iterdir()):
        s3.upload_file(str(file), bucket, f"{prefix}{file.name}")


def test_query_reads_and_writes_s3(
    s3: Any, bucket: str, moto_server: MotoServer, local_data: Path, tmp_path: Path
) -> None:
    upload(s3, bucket, "events/", local_data)
    report = run_json(
        "--sql",
        SQL,
        "--merge-sql",
        MERGE,
        "--input",
        f"s3://{bucket}/events/",
        "--output",
        f"s3://{bucket}/results/q1",
        "--endpoint-url",
        moto_server.endpoint,
        "--target-shard-mib",
        "1",
    )
    assert report["shards"] >= 2
    manifest = json.loads(
        s3.get_object(Bucket=bucket, Key="results/q1/_manifest.json")["Body"].read()
    )
    assert manifest["job_id"] == report["job_id"]
    [entry] = manifest["files"]
    assert entry["uri"] == f"s3://{bucket}/results/q1/part-00000.parquet"
    local_copy = tmp_path / "result.parquet"
    s3.download_file(bucket, "results/q1/part-00000.parquet", str(local_copy))
    assert local_copy.stat().st_size == entry["bytes"]
    got = query(f"SELECT * FROM '{local_copy}' ORDER BY grp NULLS FIRST")
    expected = query(
        f"SELECT grp, count(*), sum(val) FROM read_parquet('{local_data}/*.parquet') "
        "GROUP BY grp ORDER BY grp NULLS FIRST"
    )
    assert got == expected
    keys = sorted(
        o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="results/")["Contents"]
    )
    assert keys == ["results/q1/_manifest.json", "results/q1/part-00000.parquet"]


def test_endpoint_from_the_sdk_variable(
    s3: Any, bucket: str, moto_server: MotoServer, local_data: Path
) -> None:
    upload(s3, bucket, "in/", local_data)
    report = run_json(
        "--sql",
        "SELECT id FROM input WHERE id % 1000 = 0",
        "--input",
        f"s3://{bucket}/in/",
        "--output",
        f"s3://{bucket}/out/",
        env={"AWS_ENDPOINT_URL": moto_server.endpoint},
    )
    assert (
        report["rows"]
        == query(
            f"SELECT count(*) FROM read_parquet('{local_data}/*.parquet') WHERE id % 1000 = 0"
        )[0][0]
    )


def test_missing_bucket_is_named(moto_server: MotoServer, tmp_path: Path) -> None:
    result = ecs_query(
        "run",
        "--sql",
        "SELECT * FROM input",
        "--input",
        "s3://no-such-bucket-here/data/",
        "--output",
        str(tmp_path / "out"),
        "--endpoint-url",
        moto_server.endpoint,
    )
    assert result.returncode == 65
    assert "bucket in 's3://no-such-bucket-here/data/' does not exist" in result.stderr


def test_empty_prefix_is_named(
    s3: Any, bucket: str, moto_server: MotoServer, tmp_path: Path
) -> None:
    s3.put_object(Bucket=bucket, Key="other/x.parquet", Body=b"x")
    result = ecs_query(
        "run",
        "--sql",
        "SELECT * FROM input",
        "--input",
        f"s3://{bucket}/missing/",
        "--output",
        str(tmp_path / "out"),
        "--endpoint-url",
        moto_server.endpoint,
    )
    assert result.returncode == 65
    assert f"input 's3://{bucket}/missing/' holds no objects; check the prefix" in result.stderr


def test_prefix_without_slash_does_not_match_longer_names(
    s3: Any, bucket: str, moto_server: MotoServer
) -> None:
    s3.put_object(Bucket=bucket, Key="day1/a.csv", Body=b"x\n1\n")
    s3.put_object(Bucket=bucket, Key="day10/b.csv", Body=b"x\n2\n")
    files, _ = planner.list_inputs(f"s3://{bucket}/day1", None, moto_server.endpoint)
    assert [f.uri for f in files] == [f"s3://{bucket}/day1/a.csv"]


def test_listing_follows_pagination_past_one_thousand_objects(
    s3: Any, bucket: str, moto_server: MotoServer
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def put(index: int) -> None:
        s3.put_object(Bucket=bucket, Key=f"many/f{index:05d}.csv", Body=b"x\n1\n")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, range(1005)))
    files, _ = planner.list_inputs(f"s3://{bucket}/many/", None, moto_server.endpoint)
    assert len(files) == 1005
    assert files[-1].uri == f"s3://{bucket}/many/f01004.csv"


def test_glob_over_s3_keys(s3: Any, bucket: str, moto_server: MotoServer) -> None:
    for key in ("logs/2026/a.csv", "logs/2026/b.json", "logs/2025/c.csv"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"x\n1\n")
    files, found = planner.list_inputs(f"s3://{bucket}/logs/*/*.csv", None, moto_server.endpoint)
    assert [f.uri for f in files] == [
        f"s3://{bucket}/logs/2025/c.csv",
        f"s3://{bucket}/logs/2026/a.csv",
    ]
    assert found.value == "csv"


def test_missing_object_error_is_an_input_error(
    moto_server: MotoServer, s3: Any, bucket: str
) -> None:
    from ecs_query.storage import S3Store

    with pytest.raises(InputError, match="does not exist"):
        S3Store(moto_server.endpoint).read_bytes(f"s3://{bucket}/nope.json")
