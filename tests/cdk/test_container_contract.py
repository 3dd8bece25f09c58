"""The container contract: the worker, started exactly as the synthesized task definition and
state machine would start it, runs a whole job against an S3 endpoint (moto on loopback).

Nothing here is hand-written twice: the command and default environment come from the task
definition in the template; each stage's overrides are read from the state machine's
definition and evaluated over the state data that the definition itself produces (its input
states run under moto's Step Functions interpreter); the staging keys the state machine
reads are computed from its own Key expressions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import boto3
import duckdb
import pytest
from moto import mock_aws

from ecs_query import fargate
from tests.cdk.support import (
    Synth,
    evaluate_format,
    evaluate_parameters,
    override_environment,
    states_of,
    synth,
)
from tests.conftest import write_parquet
from tests.servers import TEST_CREDENTIALS, MotoServer

OUTPUT_BUCKET = "QueryProcessorOutputBucket99BD2063"
SHARD_SQL = "SELECT k, count(*) AS n, sum(v) AS total FROM input WHERE v >= $min_v GROUP BY k"
MERGE_SQL = "SELECT k, sum(n) AS n, sum(total) AS total FROM partials GROUP BY k ORDER BY k"
ROWS_PER_FILE = 90_000


@pytest.fixture(scope="module")
def synthesized(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    return synth(tmp_path_factory.mktemp("contract"))


@pytest.fixture(scope="module")
def buckets(moto_server: MotoServer) -> tuple[str, str]:
    client = boto3.client("s3", endpoint_url=moto_server.endpoint, region_name="us-east-1")
    names = (f"contract-input-{os.getpid()}", f"contract-output-{os.getpid()}")
    for name in names:
        client.create_bucket(Bucket=name)
    return names


@pytest.fixture(scope="module")
def definition(synthesized: Synth, buckets: tuple[str, str]) -> dict[str, Any]:
    return synthesized.definition(refs={OUTPUT_BUCKET: buckets[1]})


def run_input_states(definition: Mapping[str, Any], request: Mapping[str, Any]) -> Any:
    """Run ValidateInput .. PrepareEnvironment under moto; return what Plan would receive."""
    every = states_of(definition)
    names = ["ValidateInput", "ApplyDefaults", "Normalize", "PrepareEnvironment"]
    names += [n for n in every if n.startswith("Reject")]
    machine: dict[str, Any] = {
        "StartAt": "ValidateInput",
        "States": {n: every[n] for n in names},
    }
    prepare = {key: value for key, value in every["PrepareEnvironment"].items() if key != "Next"}
    machine["States"]["PrepareEnvironment"] = {**prepare, "End": True}
    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}):  # type: ignore[arg-type]
        client = boto3.client("stepfunctions", region_name="us-east-1")
        arn = client.create_state_machine(
            name="contract",
            definition=json.dumps(machine),
            roleArn="arn:aws:iam::123456789012:role/test",
        )["stateMachineArn"]
        execution = client.start_execution(
            stateMachineArn=arn, name="contract-job", input=json.dumps(request)
        )["executionArn"]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            described = client.describe_execution(executionArn=execution)
            if described["status"] != "RUNNING":
                break
            time.sleep(0.05)
    assert described["status"] == "SUCCEEDED", described
    return json.loads(described["output"])


def worker(
    synthesized: Synth,
    overrides: Mapping[str, str],
    moto_server: MotoServer,
) -> subprocess.Popen[str]:
    """Start the worker as the container would: its command, its environment, task overrides
    on top (ECS applies overrides over the task definition's values)."""
    container = synthesized.container_definition()
    environment = {item["Name"]: item["Value"] for item in container["Environment"]}
    environment.update(overrides)
    process_env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", "/tmp"),
        **TEST_CREDENTIALS,
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_ENDPOINT_URL": moto_server.endpoint,
        **environment,
    }
    command = [sys.executable, "-m", "ecs_query", *container["Command"]]
    return subprocess.Popen(
        command, env=process_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def finish(process: subprocess.Popen[str], what: str) -> list[dict[str, Any]]:
    output, _ = process.communicate(timeout=180)
    assert process.returncode == 0, f"{what} exited {process.returncode}:\n{output}"
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def data(
    buckets: tuple[str, str], moto_server: MotoServer, tmp_path_factory: pytest.TempPathFactory
) -> list[Path]:
    """Three Parquet files of about 2 MiB each (hard to compress), uploaded to the input."""
    folder = tmp_path_factory.mktemp("contract-data")
    client = boto3.client("s3", endpoint_url=moto_server.endpoint, region_name="us-east-1")
    files = []
    for part in range(3):
        start = part * ROWS_PER_FILE
        path = write_parquet(
            folder / f"part-{part}.parquet",
            f"SELECT i % 7 AS k, (hash(i) % 1000)::BIGINT AS v, md5(i::VARCHAR) AS pad "
            f"FROM range({start}, {start + ROWS_PER_FILE}) t(i)",
        )
        assert path.stat().st_size > 1024 * 1024
        client.upload_file(str(path), buckets[0], f"sales/part-{part}.parquet")
        files.append(path)
    return files


def expected_rows(files: list[Path]) -> list[tuple[Any, ...]]:
    listing = ", ".join(f"'{path}'" for path in files)
    con = duckdb.connect()
    rows = con.execute(
        f"SELECT k, count(*) AS n, sum(v) AS total FROM read_parquet([{listing}]) "
        "WHERE v >= 10 GROUP BY k ORDER BY k"
    ).fetchall()
    con.close()
    return rows


def test_worker_runs_a_job_with_exactly_the_declared_command_and_environment(
    synthesized: Synth,
    definition: dict[str, Any],
    buckets: tuple[str, str],
    data: list[Path],
    moto_server: MotoServer,
    tmp_path: Path,
) -> None:
    input_bucket, output_bucket = buckets
    client = boto3.client("s3", endpoint_url=moto_server.endpoint, region_name="us-east-1")
    states = states_of(definition)
    request = {
        "sql": SHARD_SQL,
        "merge_sql": MERGE_SQL,
        "input": f"s3://{input_bucket}/sales/",
        "params": {"min_v": 10},
        "output_prefix": "results/contract",
        "target_shard_mib": 1,
    }

    # GIVEN the state data the definition prepares for its tasks
    prepared = run_input_states(definition, request)
    assert prepared["env"]["ECS_QUERY_OUTPUT"] == f"s3://{output_bucket}/results/contract"

    # WHEN the plan task runs
    finish(worker(synthesized, override_environment(states["Plan"], prepared), moto_server), "plan")

    # THEN the summary is where ReadSummary looks for it
    read = states["ReadSummary"]["Parameters"]
    assert read["Bucket"] == output_bucket
    summary_key = evaluate_format(read["Key.$"], prepared)
    summary = json.loads(client.get_object(Bucket=output_bucket, Key=summary_key)["Body"].read())
    assert summary["already_committed"] is False
    assert summary["shards"] == 3
    assert fargate.size_problem(int(summary["cpu"]), int(summary["memory"])) is None
    map_input = {**prepared, "plan": {"summary": summary}}

    # WHEN every item the ItemReader would read runs as a Spot shard task, all at once
    reader = states["RunShards"]["ItemReader"]["Parameters"]
    items_key = evaluate_format(reader["Key.$"], map_input)
    items = json.loads(client.get_object(Bucket=output_bucket, Key=items_key)["Body"].read())
    assert [item["shard"] for item in items] == [0, 1, 2]
    shards = []
    for item in items:
        child_input = evaluate_parameters(
            states["RunShards"]["ItemSelector"], map_input, {"Map": {"Item": {"Value": item}}}
        )
        assert (child_input["cpu"], child_input["memory"]) == (summary["cpu"], summary["memory"])
        overrides = override_environment(states["RunShardSpot"], child_input)
        assert overrides["ECS_QUERY_SHARD_INDEX"] == str(item["shard"])
        shards.append(worker(synthesized, overrides, moto_server))
    for index, process in enumerate(shards):
        lines = finish(process, f"shard {index}")
        metrics = [line for line in lines if "_aws" in line]
        assert metrics and metrics[-1]["Stage"] == "shard"
        assert metrics[-1]["ShardsSucceeded"] == 1

    # WHEN finalize runs over the Map's input (the Map discards its own results)
    lines = finish(
        worker(synthesized, override_environment(states["Finalize"], map_input), moto_server),
        "finalize",
    )
    assert any(line.get("JobsCommitted") == 1 for line in lines)

    # THEN the manifest is committed and the result is the query's
    manifest = json.loads(
        client.get_object(Bucket=output_bucket, Key="results/contract/_manifest.json")[
            "Body"
        ].read()
    )
    assert manifest["job_id"] == "contract-job"
    assert manifest["shards"] == 3
    assert manifest["missing_shards"] == []
    expected = expected_rows(data)
    assert manifest["rows"] == len(expected)
    (entry,) = manifest["files"]
    local = tmp_path / "result.parquet"
    client.download_file(output_bucket, f"results/contract/{entry['path']}", str(local))
    con = duckdb.connect()
    rows = con.execute(f"SELECT k, n, total FROM read_parquet('{local}') ORDER BY k").fetchall()
    con.close()
    assert rows == expected

    # AND a rerun of the plan sees the committed job, so the state machine would stop early
    finish(
        worker(synthesized, override_environment(states["Plan"], prepared), moto_server),
        "plan again",
    )
    summary = json.loads(client.get_object(Bucket=output_bucket, Key=summary_key)["Body"].read())
    assert summary["already_committed"] is True
