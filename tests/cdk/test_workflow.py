"""The state machine: its definition, checked by asl-validator and moto's ASL parser, and its
input handling and failure routing run under moto's Step Functions interpreter."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from ecs_query.cdk import _workflow as workflow
from ecs_query.spec import Var
from tests.cdk.support import REPO_ROOT, Synth, states_of, synth

OUTPUT_BUCKET = "QueryProcessorOutputBucket99BD2063"
TASK_SG = "QueryProcessorTaskSecurityGroup6EF2083C"
JOB_VARIABLES = [var.env for var in workflow.JOB_VARIABLES]
CAPACITY_RETRY = {
    "ErrorEquals": [
        "ECS.AmazonECSException",
        "ECS.ServerException",
        "ECS.ThrottlingException",
        "ECS.LimitExceededException",
        "AmazonECS.Unknown",
    ],
    "IntervalSeconds": 5,
    "MaxAttempts": 5,
    "BackoffRate": 2,
    "JitterStrategy": "FULL",
}


@pytest.fixture(scope="module")
def default(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    return synth(tmp_path_factory.mktemp("workflow"))


@pytest.fixture(scope="module")
def definition(default: Synth) -> dict[str, Any]:
    return default.definition(refs={OUTPUT_BUCKET: "output-bucket"})


@pytest.fixture(scope="module")
def states(definition: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return states_of(definition)


# ---------------------------------------------------------------------------- validity


def test_definition_is_valid_amazon_states_language(
    definition: dict[str, Any], tmp_path: Path
) -> None:
    path = tmp_path / "definition.json"
    path.write_text(json.dumps(definition))
    validator = REPO_ROOT / "node_modules" / ".bin" / "asl-validator"
    result = subprocess.run(
        [str(validator), "--json-path", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is valid" in result.stdout


def test_definition_parses_with_motos_interpreter(definition: dict[str, Any]) -> None:
    from moto.stepfunctions.parser.asl.parse.asl_parser import AmazonStateLanguageParser

    program, _ = AmazonStateLanguageParser.parse(json.dumps(definition))
    assert program is not None


def test_state_machine_is_standard_logged_traced_and_times_out_after_six_hours(
    default: Synth, definition: dict[str, Any]
) -> None:
    machine = default.one("AWS::StepFunctions::StateMachine")["Properties"]
    assert machine["StateMachineType"] == "STANDARD"
    assert machine["TracingConfiguration"] == {"Enabled": True}
    assert machine["LoggingConfiguration"]["Level"] == "ALL"
    assert machine["LoggingConfiguration"]["IncludeExecutionData"] is False
    assert definition["TimeoutSeconds"] == 6 * 3600


# ---------------------------------------------------------------------------- flow


def test_job_flows_from_validation_to_commit(
    definition: dict[str, Any], states: dict[str, dict[str, Any]]
) -> None:
    assert definition["StartAt"] == "ValidateInput"
    path = ["ValidateInput"]
    state = states["ValidateInput"]
    while "Next" in state or "Default" in state:
        name = state.get("Next") or state["Default"]
        path.append(name)
        state = states[name]
    assert path == [
        "ValidateInput",
        "ApplyDefaults",
        "Normalize",
        "PrepareEnvironment",
        "Plan",
        "ReadSummary",
        "CheckCommitted",
        "RunShards",
        "Finalize",
        "Committed",
    ]
    assert states["Committed"]["Type"] == "Succeed"
    assert states["CheckCommitted"]["Choices"] == [
        {
            "Variable": "$.plan.summary.already_committed",
            "BooleanEquals": True,
            "Next": "AlreadyCommitted",
        }
    ]


def test_reads_the_plan_summary_from_the_jobs_staging_folder(
    states: dict[str, dict[str, Any]],
) -> None:
    read = states["ReadSummary"]
    assert read["Resource"] == "arn:aws:states:::aws-sdk:s3:getObject"
    assert read["Parameters"] == {
        "Bucket": "output-bucket",
        "Key.$": "States.Format('{}/_ecs_query/{}/summary.json', "
        "$.job.output_prefix, $.job.job_id)",
    }
    assert read["ResultSelector"] == {"summary.$": "States.StringToJson($.Body)"}
    assert read["ResultPath"] == "$.plan"


def test_shards_run_in_a_distributed_map_over_the_plans_items(
    states: dict[str, dict[str, Any]],
) -> None:
    shards = states["RunShards"]
    assert shards["Type"] == "Map"
    assert shards["ItemProcessor"]["ProcessorConfig"] == {
        "Mode": "DISTRIBUTED",
        "ExecutionType": "STANDARD",
    }
    assert shards["ItemReader"] == {
        "Resource": "arn:aws:states:::s3:getObject",
        "ReaderConfig": {"InputType": "JSON"},
        "Parameters": {
            "Bucket": "output-bucket",
            "Key.$": "States.Format('{}/_ecs_query/{}/items.json', "
            "$.job.output_prefix, $.job.job_id)",
        },
    }
    assert shards["MaxConcurrencyPath"] == "$.plan.summary.concurrency"
    assert shards["ResultPath"] is None
    assert "ToleratedFailureCount" not in shards
    assert "ToleratedFailurePercentage" not in shards
    assert shards["ItemSelector"] == {
        "env.$": "$.env",
        "shard_index.$": "States.JsonToString($$.Map.Item.Value.shard)",
        "cpu.$": "$.plan.summary.cpu",
        "memory.$": "$.plan.summary.memory",
        "time_sensitive.$": "$.job.time_sensitive",
    }


# ---------------------------------------------------------------------------- tasks


def overrides(state: Mapping[str, Any]) -> list[dict[str, Any]]:
    (override,) = state["Parameters"]["Overrides"]["ContainerOverrides"]
    assert override["Name"] == "worker"
    return list(override["Environment"])


@pytest.mark.parametrize(
    ("state_name", "stage", "extra"),
    [
        ("Plan", "plan", []),
        ("RunShardSpot", "shard", [{"Name": "ECS_QUERY_SHARD_INDEX", "Value.$": "$.shard_index"}]),
        (
            "RunShardOnDemand",
            "shard",
            [{"Name": "ECS_QUERY_SHARD_INDEX", "Value.$": "$.shard_index"}],
        ),
        ("Finalize", "finalize", [{"Name": "ECS_QUERY_TOLERATED_FAILURES", "Value": "0"}]),
    ],
)
def test_every_task_gets_the_job_environment_and_its_stage(
    states: dict[str, dict[str, Any]], state_name: str, stage: str, extra: list[dict[str, Any]]
) -> None:
    environment = overrides(states[state_name])
    job = [{"Name": name, "Value.$": f"$.env.{name}"} for name in JOB_VARIABLES]
    assert environment == [*job, {"Name": "ECS_QUERY_STAGE", "Value": stage}, *extra]


def test_job_environment_carries_every_contract_variable_a_job_sets() -> None:
    """Everything but the per-task settings."""
    per_task = {
        Var.TOLERATED_FAILURES,
        Var.STAGE,
        Var.SHARD_INDEX,
        Var.PLAN,
        Var.ATTEMPT,
        Var.SPILL_DIR,
        Var.THREADS,
        Var.MEMORY_LIMIT,
        Var.ENDPOINT_URL,
    }
    assert set(workflow.JOB_VARIABLES) == set(Var) - per_task


@pytest.mark.parametrize("state_name", ["Plan", "RunShardSpot", "RunShardOnDemand", "Finalize"])
def test_every_task_waits_for_its_ecs_task_in_the_private_network(
    states: dict[str, dict[str, Any]], state_name: str
) -> None:
    state = states[state_name]
    assert state["Resource"] == "arn:aws:states:::ecs:runTask.sync"
    assert state["ResultPath"] is None
    network = state["Parameters"]["NetworkConfiguration"]["AwsvpcConfiguration"]
    assert network.get("AssignPublicIp", "DISABLED") == "DISABLED"
    assert len(network["Subnets"]) == 2
    assert all("isolatedsubnet" in subnet for subnet in network["Subnets"])
    assert len(network["SecurityGroups"]) == 1
    assert TASK_SG.lower() in network["SecurityGroups"][0]
    assert state["Parameters"]["PlatformVersion"] == "1.4.0"
    assert state["Retry"][0] == CAPACITY_RETRY


def test_spot_shards_use_the_spot_capacity_provider_and_the_plans_task_size(
    states: dict[str, dict[str, Any]],
) -> None:
    spot = states["RunShardSpot"]["Parameters"]
    assert spot["CapacityProviderStrategy"] == [{"CapacityProvider": "FARGATE_SPOT", "Weight": 1}]
    assert "LaunchType" not in spot
    assert spot["Overrides"]["Cpu.$"] == "$.cpu"
    assert spot["Overrides"]["Memory.$"] == "$.memory"


@pytest.mark.parametrize("state_name", ["Plan", "RunShardOnDemand", "Finalize"])
def test_other_tasks_run_on_demand(states: dict[str, dict[str, Any]], state_name: str) -> None:
    parameters = states[state_name]["Parameters"]
    assert parameters["LaunchType"] == "FARGATE"
    assert "CapacityProviderStrategy" not in parameters


def test_time_sensitive_jobs_skip_spot(states: dict[str, dict[str, Any]]) -> None:
    choose = states["ChooseCapacity"]
    assert choose["Choices"] == [
        {"Variable": "$.time_sensitive", "BooleanEquals": True, "Next": "RunShardOnDemand"}
    ]
    assert choose["Default"] == "RunShardSpot"


def test_spot_falls_back_on_capacity_errors_and_inspects_task_failures(
    states: dict[str, dict[str, Any]],
) -> None:
    assert states["RunShardSpot"]["Catch"] == [
        {
            "ErrorEquals": CAPACITY_RETRY["ErrorEquals"],
            "ResultPath": "$.error",
            "Next": "FallBackToOnDemand",
        },
        {
            "ErrorEquals": ["States.TaskFailed"],
            "ResultPath": "$.error",
            "Next": "InspectSpotFailure",
        },
    ]
    assert states["FallBackToOnDemand"] == {
        "Type": "Pass",
        "Comment": "Spot could not finish this shard: run it on on-demand Fargate.",
        "Next": "RunShardOnDemand",
    }


def test_on_demand_retries_once_more_then_fails_the_shard(
    states: dict[str, dict[str, Any]],
) -> None:
    on_demand = states["RunShardOnDemand"]
    assert on_demand["Retry"] == [
        CAPACITY_RETRY,
        {"ErrorEquals": ["States.TaskFailed"], "IntervalSeconds": 10, "MaxAttempts": 1},
    ]
    assert on_demand["Catch"] == [
        {"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "ShardFailed"}
    ]


def test_finalize_retries_once_after_capacity_retries(states: dict[str, dict[str, Any]]) -> None:
    assert states["Finalize"]["Retry"] == [
        CAPACITY_RETRY,
        {"ErrorEquals": ["States.TaskFailed"], "IntervalSeconds": 30, "MaxAttempts": 1},
    ]
    assert len(states["Plan"]["Retry"]) == 1


def test_a_failed_plan_ends_the_execution_with_the_workers_own_error(
    states: dict[str, dict[str, Any]],
) -> None:
    assert states["Plan"]["Catch"] == [
        {"ErrorEquals": ["States.TaskFailed"], "Next": "ReadPlanFailure", "ResultPath": "$.error"}
    ]
    read = states["ReadPlanFailure"]
    assert read["Resource"] == "arn:aws:states:::aws-sdk:s3:getObject"
    assert read["Parameters"]["Key.$"] == (
        "States.Format('{}/_ecs_query/{}/plan-failure.json', $.job.output_prefix, $.job.job_id)"
    )
    assert read["Next"] == "PlanRejected"
    assert states["PlanRejected"] == {
        "Type": "Fail",
        "ErrorPath": "$.plan.failure.error",
        "CausePath": "$.plan.failure.cause",
    }
    # Without the worker's record (the task was killed), the task's description is the cause.
    assert read["Catch"][0]["Next"] == "PlanFailed"
    assert states["PlanFailed"] == {
        "Type": "Fail",
        "Error": "PlanFailed",
        "CausePath": "$.error.Cause",
    }


# ---------------------------------------------------------------------------- IAM


def test_state_machine_role_may_run_the_task_and_read_the_plan_only(default: Synth) -> None:
    (policy,) = (
        resource["Properties"]["PolicyDocument"]["Statement"]
        for logical_id, resource in default.resources("AWS::IAM::Policy").items()
        if logical_id.startswith("QueryProcessorStateMachineRoleDefaultPolicy")
    )
    actions = [statement["Action"] for statement in policy]
    assert actions[:4] == [
        "ecs:RunTask",
        ["ecs:StopTask", "ecs:DescribeTasks"],
        "iam:PassRole",
        ["events:PutTargets", "events:PutRule", "events:DescribeRule"],
    ]
    assert policy[2]["Resource"] == [
        {"Fn::GetAtt": ["QueryProcessorTaskDefinitionTaskRole86C2C578", "Arn"]},
        {"Fn::GetAtt": ["QueryProcessorTaskDefinitionExecutionRoleCB6FEA4F", "Arn"]},
    ]
    reads = [s for s in policy if s["Action"] == "s3:GetObject"]
    assert reads[0]["Resource"] == {
        "Fn::Join": [
            "",
            [{"Fn::GetAtt": [OUTPUT_BUCKET, "Arn"]}, "/*/_ecs_query/*/summary.json"],
        ]
    }
    assert not any("s3:Put" in json.dumps(s["Action"]) for s in policy)
    data_key = {"Fn::GetAtt": ["QueryProcessorDataKey2174CC8B", "Arn"]}
    assert {"Action": "kms:Decrypt", "Effect": "Allow", "Resource": data_key} in policy


# ---------------------------------------------------------------------------- moto runs


@pytest.fixture(scope="module")
def stepfunctions() -> Iterator[Any]:
    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}):  # type: ignore[arg-type]
        yield boto3.client("stepfunctions", region_name="us-east-1")


def excerpt(
    definition: Mapping[str, Any], start: str, keep: list[str], ends: Mapping[str, str]
) -> dict[str, Any]:
    """A runnable definition from some of ``definition``'s states, starting at ``start``.

    Transitions to a state in ``ends`` go to a Pass state of that name that ends the run with
    ``{"reached": <name>}``, so a test sees where the original definition would have gone.
    """
    every = states_of(definition)
    chosen = {name: json.loads(json.dumps(every[name])) for name in keep}
    for name, marker in ends.items():
        chosen[name] = {"Type": "Pass", "Result": {"reached": marker}, "End": True}
    return {"StartAt": start, "States": chosen}


def run(client: Any, definition: Mapping[str, Any], document: Any, name: str) -> dict[str, Any]:
    arn = client.create_state_machine(
        name=name,
        definition=json.dumps(definition),
        roleArn="arn:aws:iam::123456789012:role/test",
    )["stateMachineArn"]
    execution = client.start_execution(
        stateMachineArn=arn, name=f"{name}-run", input=json.dumps(document)
    )["executionArn"]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        described = client.describe_execution(executionArn=execution)
        if described["status"] != "RUNNING":
            return dict(described)
        time.sleep(0.05)
    raise AssertionError(f"{name} did not finish")


INPUT_STATES = [
    "ValidateInput",
    "ApplyDefaults",
    "Normalize",
    "PrepareEnvironment",
    "RejectMissingField",
    "RejectFieldType",
    "RejectInput",
    "RejectOutputPrefix",
]


def test_prepares_the_job_environment_from_a_minimal_request(
    definition: dict[str, Any], stepfunctions: Any
) -> None:
    machine = excerpt(definition, "ValidateInput", INPUT_STATES, {"Plan": "Plan"})
    machine["States"]["PrepareEnvironment"]["Next"] = "Plan"
    request = {"sql": "SELECT 1", "input": "s3://in/data/", "output_prefix": "results/q1"}
    result = run(stepfunctions, machine, request, "minimal")
    assert result["status"] == "SUCCEEDED", result
    # The Pass at "Plan" replaced its input with the marker; read what PrepareEnvironment made.
    history = stepfunctions.get_execution_history(executionArn=result["executionArn"])["events"]
    prepared = next(
        json.loads(event["stateExitedEventDetails"]["output"])
        for event in history
        if event.get("stateExitedEventDetails", {}).get("name") == "PrepareEnvironment"
    )
    assert prepared["env"] == {
        "ECS_QUERY_JOB_ID": "minimal-run",
        "ECS_QUERY_SQL": "SELECT 1",
        "ECS_QUERY_MERGE_SQL": "",
        "ECS_QUERY_INPUT": "s3://in/data/",
        "ECS_QUERY_INPUT_FORMAT": "",
        "ECS_QUERY_TABLES": "{}",
        "ECS_QUERY_PARAMS": "{}",
        "ECS_QUERY_OUTPUT": "s3://output-bucket/results/q1",
        "ECS_QUERY_OUTPUT_FORMAT": "parquet",
        "ECS_QUERY_TARGET_SHARD_MIB": "256",
        "ECS_QUERY_MAX_CONCURRENCY": "100",
        "ECS_QUERY_OVERWRITE": "false",
        "ECS_QUERY_SINGLE_TASK": "false",
    }
    assert prepared["job"]["time_sensitive"] is False


def test_request_fields_override_the_defaults(
    definition: dict[str, Any], stepfunctions: Any
) -> None:
    machine = excerpt(definition, "ValidateInput", INPUT_STATES, {"Plan": "Plan"})
    request = {
        "job_id": "daily-2024-05-01",
        "sql": "s3://in/sql/q.sql",
        "merge_sql": "SELECT sum(n) FROM partials",
        "input": "s3://in/data/",
        "input_format": "csv",
        "tables": {"nation": "s3://in/nation/"},
        "params": {"day": "2024-05-01", "limit": 10},
        "output_prefix": "results/daily",
        "output_format": "csv",
        "target_shard_mib": 512,
        "time_sensitive": True,
        "overwrite": True,
        "single_task": True,
    }
    result = run(stepfunctions, machine, request, "full")
    assert result["status"] == "SUCCEEDED", result
    history = stepfunctions.get_execution_history(executionArn=result["executionArn"])["events"]
    prepared = next(
        json.loads(event["stateExitedEventDetails"]["output"])
        for event in history
        if event.get("stateExitedEventDetails", {}).get("name") == "PrepareEnvironment"
    )
    env = prepared["env"]
    assert env["ECS_QUERY_JOB_ID"] == "daily-2024-05-01"
    assert env["ECS_QUERY_SQL"] == "s3://in/sql/q.sql"
    assert env["ECS_QUERY_MERGE_SQL"] == "SELECT sum(n) FROM partials"
    assert json.loads(env["ECS_QUERY_TABLES"]) == {"nation": "s3://in/nation/"}
    assert json.loads(env["ECS_QUERY_PARAMS"]) == {"day": "2024-05-01", "limit": 10}
    assert env["ECS_QUERY_OUTPUT"] == "s3://output-bucket/results/daily"
    assert env["ECS_QUERY_OUTPUT_FORMAT"] == "csv"
    assert env["ECS_QUERY_INPUT_FORMAT"] == "csv"
    assert env["ECS_QUERY_TARGET_SHARD_MIB"] == "512"
    assert env["ECS_QUERY_OVERWRITE"] == "true"
    assert env["ECS_QUERY_SINGLE_TASK"] == "true"
    assert prepared["job"]["time_sensitive"] is True


@pytest.mark.parametrize(
    ("request_document", "cause"),
    [
        ({"input": "s3://in/x/", "output_prefix": "r"}, "needs 'sql', 'input' and 'output_prefix'"),
        ({"sql": 1, "input": "s3://in/x/", "output_prefix": "r"}, "needs 'sql'"),
        (
            {"sql": "s", "input": "s3://in/x/", "output_prefix": "r", "time_sensitive": "yes"},
            "'time_sensitive', 'overwrite' and 'single_task' take true or false",
        ),
        (
            {"sql": "s", "input": "s3://in/x/", "output_prefix": "r", "single_task": 1},
            "'single_task' take true or false",
        ),
        (
            {"sql": "s", "input": "s3://in/x/", "output_prefix": "r", "target_shard_mib": "64"},
            "'target_shard_mib' a number",
        ),
        ({"sql": "s", "input": "gs://in/x/", "output_prefix": "r"}, "'input' must be an s3://"),
        ({"sql": "s", "input": "s3://in/x/", "output_prefix": "r/"}, "'output_prefix' must be"),
        ({"sql": "s", "input": "s3://in/x/", "output_prefix": "/r"}, "'output_prefix' must be"),
        ({"sql": "s", "input": "s3://in/x/", "output_prefix": ""}, "'output_prefix' must be"),
    ],
)
def test_rejects_a_malformed_request_before_any_task(
    definition: dict[str, Any],
    stepfunctions: Any,
    request_document: dict[str, Any],
    cause: str,
    request: pytest.FixtureRequest,
) -> None:
    machine = excerpt(definition, "ValidateInput", INPUT_STATES, {"Plan": "Plan"})
    name = f"reject-{request.node.callspec.id}".replace("[", "-").replace("]", "")[:60]
    name = "".join(c if c.isalnum() or c == "-" else "-" for c in name)
    result = run(stepfunctions, machine, request_document, name)
    assert result["status"] == "FAILED"
    assert result["error"] == "InvalidInput"
    assert cause in result["cause"]


CLASSIFY_STATES = [
    "InspectSpotFailure",
    "ParseSpotFailure",
    "HasContainers",
    "ReadExitCode",
    "ClassifySpotFailure",
    "ShardRejected",
    "ShardFailed",
]


def task_failure(stop_code: str | None, exit_code: int | None) -> dict[str, Any]:
    """What a Catch puts at $.error when ecs:runTask.sync sees the task stop badly."""
    description: dict[str, Any] = {"LastStatus": "STOPPED", "Containers": [{"Name": "worker"}]}
    if stop_code == "TaskFailedToStart":
        description["Containers"] = []
    if stop_code is not None:
        description["StopCode"] = stop_code
    if exit_code is not None:
        description["Containers"][0]["ExitCode"] = exit_code
    return {"error": {"Error": "States.TaskFailed", "Cause": json.dumps(description)}}


@pytest.mark.parametrize(
    ("stop_code", "exit_code", "outcome"),
    [
        ("SpotInterruption", None, "fallback"),
        ("SpotInterruption", 143, "fallback"),
        ("EssentialContainerExited", 75, "fallback"),
        ("EssentialContainerExited", 70, "fallback"),
        ("EssentialContainerExited", 137, "fallback"),
        ("EssentialContainerExited", 143, "fallback"),
        ("EssentialContainerExited", 65, "ShardUserError"),
        ("EssentialContainerExited", 1, "ShardFailed"),
        ("TaskFailedToStart", None, "ShardFailed"),
        (None, None, "ShardFailed"),
    ],
)
def test_routes_a_failed_spot_task_by_stop_code_and_exit_code(
    definition: dict[str, Any],
    stepfunctions: Any,
    stop_code: str | None,
    exit_code: int | None,
    outcome: str,
) -> None:
    machine = excerpt(
        definition, "InspectSpotFailure", CLASSIFY_STATES, {"FallBackToOnDemand": "fallback"}
    )
    name = f"classify-{stop_code}-{exit_code}"
    result = run(stepfunctions, machine, task_failure(stop_code, exit_code), name)
    if outcome == "fallback":
        assert result["status"] == "SUCCEEDED", result
        assert json.loads(result["output"]) == {"reached": "fallback"}
    else:
        assert result["status"] == "FAILED"
        assert result["error"] == outcome
        assert json.loads(result["cause"])["LastStatus"] == "STOPPED"


def test_a_failure_without_a_task_description_fails_the_shard(
    definition: dict[str, Any], stepfunctions: Any
) -> None:
    machine = excerpt(
        definition, "InspectSpotFailure", CLASSIFY_STATES, {"FallBackToOnDemand": "fallback"}
    )
    failure = {"error": {"Error": "States.TaskFailed", "Cause": "Task timed out"}}
    result = run(stepfunctions, machine, failure, "classify-plain-cause")
    assert result["status"] == "FAILED"
    assert result["error"] == "ShardFailed"
    assert result["cause"] == "Task timed out"
