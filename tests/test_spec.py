"""The job contract: a spec survives the trip through environment variables, and every problem
with a bad one is reported at once."""

from __future__ import annotations

import pytest

from ecs_query.errors import JobSpecError
from ecs_query.spec import (
    InputFormat,
    JobSpec,
    OutputFormat,
    Stage,
    TaskContext,
    is_uri,
    parse_param,
    parse_table,
)


def full_spec() -> JobSpec:
    return JobSpec(
        sql="SELECT * FROM input WHERE a > $low",
        input="s3://in/data/",
        output="s3://out/result/",
        input_format=InputFormat.CSV,
        output_format=OutputFormat.CSV,
        tables={"nation": "s3://in/nation/"},
        params={"low": 3, "name": "x'y", "ratio": 0.5, "flag": True, "nothing": None},
        merge_sql="SELECT * FROM partials",
        target_shard_mib=64,
        max_concurrency=7,
        overwrite=True,
        single_task=True,
        job_id="nightly-2026",
    )


def test_spec_round_trips_through_environment() -> None:
    spec = full_spec()
    assert JobSpec.from_env(spec.to_env()) == spec


def test_minimal_spec_round_trips_and_gets_defaults() -> None:
    env = {"ECS_QUERY_SQL": "SELECT 1", "ECS_QUERY_INPUT": "/in", "ECS_QUERY_OUTPUT": "/out"}
    spec = JobSpec.from_env(env)
    assert spec.output_format is OutputFormat.PARQUET
    assert spec.input_format is None
    assert spec.target_shard_mib == 256
    assert JobSpec.from_env(spec.to_env()) == spec


def test_job_id_is_derived_from_the_job_and_stable() -> None:
    a = JobSpec(sql="SELECT 1", input="/in", output="/out")
    b = JobSpec(sql="SELECT 1", input="/in", output="/out")
    c = JobSpec(sql="SELECT 2", input="/in", output="/out")
    assert a.job_id == b.job_id
    assert a.job_id != c.job_id
    assert a.job_id.startswith("job-")


def test_parameter_values_change_the_job_id() -> None:
    a = JobSpec(sql="SELECT $x", input="/in", output="/out", params={"x": 1})
    b = JobSpec(sql="SELECT $x", input="/in", output="/out", params={"x": 2})
    assert a.job_id != b.job_id


def test_every_problem_is_listed_at_once() -> None:
    env = {
        "ECS_QUERY_INPUT": "",
        "ECS_QUERY_OUTPUT_FORMAT": "xml",
        "ECS_QUERY_TARGET_SHARD_MIB": "lots",
        "ECS_QUERY_PARAMS": "[1, 2]",
        "ECS_QUERY_TABLES": '{"input": "s3://b/x"}',
    }
    with pytest.raises(JobSpecError) as caught:
        JobSpec.from_env(env)
    message = str(caught.value)
    assert "7 problems" in message
    assert "ECS_QUERY_SQL: missing" in message
    assert "ECS_QUERY_INPUT: empty" in message
    assert "ECS_QUERY_OUTPUT: missing" in message
    assert "ECS_QUERY_OUTPUT_FORMAT: unknown value 'xml'; use one of: parquet, csv" in message
    assert "ECS_QUERY_TARGET_SHARD_MIB: 'lots' is not a whole number" in message
    assert "ECS_QUERY_PARAMS: expected a JSON object" in message
    # The constructor's own checks are folded in too.
    assert "ECS_QUERY_TABLES: table name 'input' is reserved" in message


def test_reserved_table_name_is_refused() -> None:
    with pytest.raises(JobSpecError, match="table name 'partials' is reserved"):
        JobSpec(sql="SELECT 1", input="/in", output="/out", tables={"partials": "/t"})


def test_bad_identifiers_are_refused() -> None:
    with pytest.raises(JobSpecError) as caught:
        JobSpec(
            sql="SELECT 1",
            input="/in",
            output="/out",
            tables={"1bad": "/t"},
            params={"drop table": 1},
        )
    assert "table name '1bad' is not an SQL identifier" in str(caught.value)
    assert "parameter name 'drop table' is not an identifier" in str(caught.value)


def test_output_equal_to_input_is_refused() -> None:
    with pytest.raises(JobSpecError, match="is also the input"):
        JobSpec(sql="SELECT 1", input="s3://b/p/", output="s3://b/p")


def test_unsupported_scheme_is_refused() -> None:
    with pytest.raises(JobSpecError, match="unsupported scheme in 'gs://b/p'"):
        JobSpec(sql="SELECT 1", input="gs://b/p", output="/out")


def test_invalid_json_in_params_names_the_position() -> None:
    env = {
        "ECS_QUERY_SQL": "SELECT 1",
        "ECS_QUERY_INPUT": "/in",
        "ECS_QUERY_OUTPUT": "/out",
        "ECS_QUERY_PARAMS": '{"a": ',
    }
    with pytest.raises(JobSpecError, match=r"ECS_QUERY_PARAMS: not valid JSON \(Expecting value"):
        JobSpec.from_env(env)


def test_empty_merge_sql_means_none() -> None:
    env = {
        "ECS_QUERY_SQL": "SELECT 1",
        "ECS_QUERY_INPUT": "/in",
        "ECS_QUERY_OUTPUT": "/out",
        "ECS_QUERY_MERGE_SQL": "",
        "ECS_QUERY_INPUT_FORMAT": "",
    }
    spec = JobSpec.from_env(env)
    assert spec.merge_sql is None
    assert spec.input_format is None


def test_task_context_defaults_to_shard_stage_and_needs_an_index() -> None:
    with pytest.raises(JobSpecError, match="ECS_QUERY_SHARD_INDEX: missing"):
        TaskContext.from_env({})
    context = TaskContext.from_env({"ECS_QUERY_SHARD_INDEX": "4", "ECS_QUERY_THREADS": "2"})
    assert context.stage is Stage.SHARD
    assert context.shard_index == 4
    assert context.threads == 2


def test_task_context_reads_the_sdk_endpoint_variable() -> None:
    context = TaskContext.from_env(
        {"ECS_QUERY_STAGE": "plan", "AWS_ENDPOINT_URL": "http://127.0.0.1:5000"}
    )
    assert context.stage is Stage.PLAN
    assert context.endpoint_url == "http://127.0.0.1:5000"


def test_task_context_lists_every_problem() -> None:
    with pytest.raises(JobSpecError) as caught:
        TaskContext.from_env(
            {
                "ECS_QUERY_STAGE": "reduce",
                "ECS_QUERY_SHARD_INDEX": "-1",
                "ECS_QUERY_THREADS": "0",
                "ECS_QUERY_ATTEMPT": "../x",
            }
        )
    message = str(caught.value)
    assert "ECS_QUERY_STAGE: unknown value 'reduce'" in message
    assert "ECS_QUERY_SHARD_INDEX: -1 is negative" in message
    assert "ECS_QUERY_THREADS: 0; use 1 or more" in message
    assert "ECS_QUERY_ATTEMPT: '../x' is not a valid attempt id" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("low=3", ("low", 3)),
        ("ratio=0.25", ("ratio", 0.25)),
        ("flag=true", ("flag", True)),
        ("day=1998-09-02", ("day", "1998-09-02")),
        ('code="007"', ("code", "007")),
        ("name=O'Brien", ("name", "O'Brien")),
        ("empty=", ("empty", "")),
        ("list=[1,2]", ("list", "[1,2]")),
    ],
)
def test_cli_parameters_keep_json_scalars_and_fall_back_to_strings(
    text: str, expected: tuple[str, object]
) -> None:
    assert parse_param(text) == expected


def test_parameter_without_equals_sign_is_refused() -> None:
    with pytest.raises(JobSpecError, match="--param 'low': expected NAME=VALUE"):
        parse_param("low")


def test_table_without_equals_sign_is_refused() -> None:
    with pytest.raises(JobSpecError, match="expected NAME=URI"):
        parse_table("nation")


@pytest.mark.parametrize(
    ("text", "uri"),
    [
        ("s3://b/q.sql", True),
        ("/abs/q.sql", True),
        ("file:///q.sql", True),
        ("SELECT * FROM input", False),
        ("/* comment */ SELECT 1", False),
    ],
)
def test_sql_locations_are_told_apart_from_sql_text(text: str, uri: bool) -> None:
    assert is_uri(text) is uri
