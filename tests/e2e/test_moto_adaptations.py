"""Each adaptation of moto's interpreter (tests/e2e/moto_adaptations.py) and the Fargate
stand-in, tested on small definitions with a stub container rather than the worker."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.fargate import Capacity, Fault, FaultKind
from tests.e2e.harness import Execution, Orchestration
from tests.e2e.moto_adaptations import (
    EXCEEDED_CAUSE,
    check_moto_version,
    exceeds_tolerance,
)

STUB = Path(__file__).with_name("stub_task.py")
ROLE = "arn:aws:iam::123456789012:role/adaptation-test"


@pytest.fixture
def stub(cloud: Orchestration) -> Iterator[Orchestration]:
    """Tasks run tests/e2e/stub_task.py instead of the worker."""
    saved = cloud.tasks.entrypoint
    cloud.tasks.entrypoint = [sys.executable, str(STUB)]
    yield cloud
    cloud.tasks.entrypoint = saved


def run_definition(
    cloud: Orchestration, definition: Mapping[str, Any], name: str, document: Any = None
) -> Execution:
    arn = cloud.sfn.create_state_machine(
        name=name, definition=json.dumps(definition), roleArn=ROLE
    )["stateMachineArn"]
    execution = cloud.sfn.start_execution(
        stateMachineArn=arn, name=f"{name}-run", input=json.dumps(document or {})
    )["executionArn"]
    return cloud.wait(execution, timeout=60)


def run_task_state(
    cloud: Orchestration, environment: Mapping[str, str], **parameters: Any
) -> dict[str, Any]:
    """A Task state that runs the stack's task definition once and waits for it."""
    settings: dict[str, Any] = {
        "Cluster": cloud.cluster_arn,
        "TaskDefinition": cloud.task_definition_arn.rsplit("/", 1)[-1].split(":")[0],
        "NetworkConfiguration": {"AwsvpcConfiguration": {"Subnets": ["subnet-1"]}},
        "LaunchType": "FARGATE",
        "Overrides": {
            "ContainerOverrides": [
                {
                    "Name": "worker",
                    "Environment": [{"Name": k, "Value": v} for k, v in environment.items()],
                }
            ]
        },
        **parameters,
    }
    settings = {key: value for key, value in settings.items() if value is not None}
    return {
        "Type": "Task",
        "Resource": "arn:aws:states:::ecs:runTask.sync",
        "Parameters": settings,
        "End": True,
    }


def single(state: Mapping[str, Any]) -> dict[str, Any]:
    return {"StartAt": "Run", "States": {"Run": dict(state)}}


# ---------------------------------------------------------------------------- version


def test_refuses_another_moto_version_naming_both_versions() -> None:
    with pytest.raises(RuntimeError, match=r"adapts moto 5\.2\.5.*moto 5\.3\.0 is installed"):
        check_moto_version("5.3.0")
    check_moto_version()


# ---------------------------------------------------------------------------- 1. S3 body


def test_s3_get_object_returns_the_body_as_text_for_string_to_json(cloud: Orchestration) -> None:
    cloud.s3.put_object(Bucket=cloud.output_bucket, Key="probe/summary.json", Body=b'{"n": 3}')
    definition = single(
        {
            "Type": "Task",
            "Resource": "arn:aws:states:::aws-sdk:s3:getObject",
            "Parameters": {"Bucket": cloud.output_bucket, "Key": "probe/summary.json"},
            "ResultSelector": {"text.$": "$.Body", "parsed.$": "States.StringToJson($.Body)"},
            "End": True,
        }
    )

    result = run_definition(cloud, definition, "adapt-s3-body")

    assert result.status == "SUCCEEDED", result.cause
    assert result.output == {"text": '{"n": 3}', "parsed": {"n": 3}}


def test_without_the_adaptation_moto_cannot_parse_the_s3_body(cloud: Orchestration) -> None:
    """The reason for adaptation 1: when this starts to pass unadapted, drop the adaptation."""
    cloud.s3.put_object(Bucket=cloud.output_bucket, Key="probe/raw.json", Body=b'{"n": 3}')
    definition = single(
        {
            "Type": "Task",
            "Resource": "arn:aws:states:::aws-sdk:s3:getObject",
            "Parameters": {"Bucket": cloud.output_bucket, "Key": "probe/raw.json"},
            "ResultSelector": {"parsed.$": "States.StringToJson($.Body)"},
            "End": True,
        }
    )
    cloud.adapted.uninstall()
    try:
        result = run_definition(cloud, definition, "adapt-s3-body-raw")
    finally:
        cloud.adapted.install()

    assert result.status == "FAILED"
    assert "StreamingChecksumBody" in (result.cause or "")


# ---------------------------------------------------------------------------- 2. ECS


def test_a_task_that_exits_zero_returns_its_stopped_description(stub: Orchestration) -> None:
    state = run_task_state(stub, {"STUB_EXIT": "0", "ECS_QUERY_STAGE": "plan"})
    state["ResultPath"] = "$.task"

    result = run_definition(stub, single(state), "adapt-ecs-ok")

    assert result.status == "SUCCEEDED", result.cause
    task = result.output["task"]
    assert task["LastStatus"] == "STOPPED"
    assert task["StopCode"] == "EssentialContainerExited"
    assert task["Containers"] == [
        {
            "ContainerArn": task["Containers"][0]["ContainerArn"],
            "Name": "worker",
            "TaskArn": task["TaskArn"],
            "LastStatus": "STOPPED",
            "ExitCode": 0,
        }
    ]
    assert task["StartedBy"] == "AWS Step Functions"
    assert task["ClusterArn"] == stub.cluster_arn
    assert task["TaskDefinitionArn"] == stub.task_definition_arn
    assert "CapacityProviderName" not in task


def test_a_task_gets_the_definitions_environment_and_its_overrides_and_logs_to_cloudwatch(
    stub: Orchestration,
) -> None:
    state = run_task_state(
        stub, {"ECS_QUERY_OUTPUT_FORMAT": "csv", "ECS_QUERY_STAGE": "finalize", "EXTRA": "1"}
    )

    result = run_definition(stub, single(state), "adapt-ecs-env")

    assert result.status == "SUCCEEDED", result.cause
    (task,) = stub.tasks.tasks
    printed = json.loads(stub.log_lines(task.log_stream)[0])
    environment = printed["environment"]
    assert printed["argv"] == ["worker"]  # the task definition's Command
    assert environment["ECS_QUERY_OUTPUT_FORMAT"] == "csv"  # an override replaces
    assert environment["ECS_QUERY_MAX_CONCURRENCY"] == "100"  # the definition's default stays
    assert environment["EXTRA"] == "1"
    assert environment["AWS_ENDPOINT_URL"] == stub.endpoint
    assert environment["AWS_ACCESS_KEY_ID"] == "testing"
    assert "PYTHONPATH" not in environment and "VIRTUAL_ENV" not in environment
    assert task.log_stream == f"ecs-query/worker/{task.task_id}"


def test_a_non_zero_exit_fails_the_state_with_the_task_description_as_cause(
    stub: Orchestration,
) -> None:
    state = run_task_state(stub, {"STUB_EXIT": "65", "ECS_QUERY_STAGE": "plan"})

    result = run_definition(stub, single(state), "adapt-ecs-exit")

    assert result.status == "FAILED"
    assert result.error == "States.TaskFailed"
    cause = json.loads(result.cause or "")
    assert cause["LastStatus"] == "STOPPED"
    assert cause["StopCode"] == "EssentialContainerExited"
    assert cause["StoppedReason"] == "Essential container in task exited"
    assert cause["Containers"][0]["ExitCode"] == 65
    (failed,) = result.events("TaskFailed")
    details = failed["taskFailedEventDetails"]
    assert (details["resourceType"], details["resource"]) == ("ecs", "runTask.sync")


def test_a_capacity_provider_strategy_reaches_run_task(stub: Orchestration) -> None:
    state = run_task_state(
        stub,
        {"ECS_QUERY_STAGE": "shard", "ECS_QUERY_SHARD_INDEX": "4"},
        LaunchType=None,
        CapacityProviderStrategy=[{"CapacityProvider": "FARGATE_SPOT", "Weight": 1}],
    )
    state["ResultPath"] = "$.task"

    result = run_definition(stub, single(state), "adapt-ecs-spot")

    assert result.status == "SUCCEEDED", result.cause
    assert result.output["task"]["CapacityProviderName"] == "FARGATE_SPOT"
    (task,) = stub.tasks.tasks
    assert (task.capacity, task.stage, task.shard) == (Capacity.SPOT, "shard", 4)
    assert task.parameters["CapacityProviderStrategy"] == [
        {"CapacityProvider": "FARGATE_SPOT", "Weight": 1}
    ]


def test_a_capacity_fault_fails_run_task_with_ecs_amazon_ecs_exception(stub: Orchestration) -> None:
    stub.tasks.inject(Fault(FaultKind.CAPACITY, stage=None))
    state = run_task_state(stub, {"ECS_QUERY_STAGE": "plan"})

    result = run_definition(stub, single(state), "adapt-ecs-capacity")

    assert result.status == "FAILED"
    assert result.error == "ECS.AmazonECSException"
    assert "Capacity is unavailable at this time" in (result.cause or "")
    assert stub.tasks.tasks == []
    (refusal,) = stub.tasks.refusals
    assert (refusal.state_name, refusal.stage, refusal.capacity) == (
        "Run",
        "plan",
        Capacity.ON_DEMAND,
    )


@pytest.mark.parametrize(
    ("kind", "exit_code", "stop_code"),
    [
        (FaultKind.SPOT_INTERRUPTION, 75, "SpotInterruption"),
        (FaultKind.KILL, 137, "EssentialContainerExited"),
    ],
)
def test_a_mid_stage_fault_stops_the_task_with_its_exit_and_stop_code(
    stub: Orchestration, kind: FaultKind, exit_code: int, stop_code: str
) -> None:
    stub.tasks.inject(Fault(kind, capacity=Capacity.SPOT))
    state = run_task_state(
        stub,
        {"ECS_QUERY_STAGE": "shard", "ECS_QUERY_SHARD_INDEX": "0", "STUB_SLEEP": "30"},
        LaunchType=None,
        CapacityProviderStrategy=[{"CapacityProvider": "FARGATE_SPOT", "Weight": 1}],
    )
    started = time.monotonic()

    result = run_definition(stub, single(state), f"adapt-ecs-{kind.value}")

    assert time.monotonic() - started < 20
    assert result.error == "States.TaskFailed"
    cause = json.loads(result.cause or "")
    assert (cause["StopCode"], cause["Containers"][0]["ExitCode"]) == (stop_code, exit_code)
    (task,) = stub.tasks.tasks
    assert task.fault is kind and task.fault_applied


def test_a_sync_task_retried_after_a_failed_run_runs_again(stub: Orchestration) -> None:
    stub.tasks.inject(Fault(FaultKind.KILL, stage=None))
    state = run_task_state(stub, {"ECS_QUERY_STAGE": "plan", "STUB_SLEEP": "1"})
    state["Retry"] = [
        {"ErrorEquals": ["States.TaskFailed"], "IntervalSeconds": 1, "MaxAttempts": 1}
    ]

    result = run_definition(stub, single(state), "adapt-ecs-retry")

    assert result.status == "SUCCEEDED", f"{result.error}: {result.cause}"
    killed, retried = stub.tasks.tasks
    assert (killed.exit_code, retried.exit_code, retried.attempt) == (137, 0, 2)


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        (
            {"Overrides": {"Cpu": "1024", "Memory": "512"}},
            "No Fargate configuration exists for given values: 1024 CPU, 512 memory",
        ),
        ({"NetworkConfiguration": None}, "Network Configuration must be provided"),
        (
            {"CapacityProviderStrategy": [{"CapacityProvider": "FARGATE_SPOT", "Weight": 1}]},
            "Specifying both a launch type and capacity provider strategy",
        ),
        (
            {
                "Overrides": {
                    "ContainerOverrides": [
                        {"Name": "worker", "Environment": [{"Name": "SQL", "Value": "x" * 9000}]}
                    ]
                }
            },
            "Container Overrides length must be at most 8192",
        ),
    ],
    ids=["task-size", "no-network", "launch-type-and-strategy", "overrides-too-long"],
)
def test_run_task_refuses_what_ecs_refuses(
    stub: Orchestration, parameters: dict[str, Any], message: str, request: pytest.FixtureRequest
) -> None:
    state = run_task_state(stub, {"ECS_QUERY_STAGE": "plan"}, **parameters)

    result = run_definition(stub, single(state), f"adapt-refuse-{request.node.callspec.id}")

    assert result.error == "ECS.InvalidParameterException"
    assert message in (result.cause or "")
    assert stub.tasks.tasks == []


def test_a_task_is_stopped_when_its_execution_stops(stub: Orchestration) -> None:
    state = run_task_state(stub, {"ECS_QUERY_STAGE": "plan", "STUB_SLEEP": "60"})
    arn = stub.sfn.create_state_machine(
        name="adapt-ecs-stop", definition=json.dumps(single(state)), roleArn=ROLE
    )["stateMachineArn"]
    execution = stub.sfn.start_execution(stateMachineArn=arn, name="adapt-ecs-stop-run")[
        "executionArn"
    ]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not (
        stub.tasks.tasks and stub.tasks.stage_started(stub.tasks.tasks[0])
    ):
        time.sleep(0.05)

    stub.sfn.stop_execution(executionArn=execution)

    (task,) = stub.tasks.tasks
    assert task.done.wait(15), "the task's process outlived its execution"
    assert (task.stop_code, task.exit_code) == ("UserInitiated", 75)


# ---------------------------------------------------------------------------- 3. retry waits


@pytest.mark.parametrize("jitter", ["NONE", "FULL"])
def test_retry_waits_follow_the_backoff_and_are_recorded_but_scaled(
    stub: Orchestration, jitter: str
) -> None:
    stub.tasks.inject(Fault(FaultKind.CAPACITY, stage=None, times=3))
    state = run_task_state(stub, {"ECS_QUERY_STAGE": "plan"})
    state["Retry"] = [
        {
            "ErrorEquals": ["ECS.AmazonECSException"],
            "IntervalSeconds": 5,
            "BackoffRate": 2,
            "MaxAttempts": 3,
            "JitterStrategy": jitter,
        }
    ]
    started = time.monotonic()

    result = run_definition(stub, single(state), f"adapt-retry-{jitter.lower()}")

    assert result.status == "SUCCEEDED", result.cause
    assert time.monotonic() - started < 10  # 35 s of waits, scaled down
    waits = stub.adapted.waits_for("Run")
    assert [wait.nominal_seconds for wait in waits] == [5, 10, 20]
    assert [wait.retry for wait in waits] == [1, 2, 3]
    if jitter == "NONE":
        assert [wait.seconds for wait in waits] == [5, 10, 20]
    else:
        assert all(0 <= w.seconds < w.nominal_seconds for w in waits)
    assert len(stub.tasks.refusals) == 3 and len(stub.tasks.tasks) == 1


# ---------------------------------------------------------------------------- 4. Map Run


def failing_map(tolerated: int | None) -> dict[str, Any]:
    """A Distributed Map over five items whose item 2 fails."""
    processor = {
        "ProcessorConfig": {"Mode": "DISTRIBUTED", "ExecutionType": "STANDARD"},
        "StartAt": "Check",
        "States": {
            "Check": {
                "Type": "Choice",
                "Choices": [{"Variable": "$.n", "NumericEquals": 2, "Next": "Reject"}],
                "Default": "Accept",
            },
            "Accept": {"Type": "Pass", "End": True},
            "Reject": {"Type": "Fail", "Error": "ItemRejected", "Cause": "item 2 is bad"},
        },
    }
    state: dict[str, Any] = {
        "Type": "Map",
        "ItemsPath": "$.items",
        "ItemProcessor": processor,
        "MaxConcurrency": 2,
        "End": True,
    }
    if tolerated is not None:
        state["ToleratedFailureCount"] = tolerated
    return {"StartAt": "Items", "States": {"Items": state}}


def test_a_failed_child_fails_the_distributed_map_with_the_threshold_error(
    cloud: Orchestration,
) -> None:
    items = {"items": [{"n": n} for n in range(5)]}

    result = run_definition(cloud, failing_map(None), "adapt-map-fails", items)

    assert result.status == "FAILED"
    assert (result.error, result.cause) == (
        "States.ExceedToleratedFailureThreshold",
        EXCEEDED_CAUSE,
    )
    assert [event["type"] for event in result.history][-3:] == [
        "MapRunFailed",
        "MapStateFailed",
        "ExecutionFailed",
    ]
    children = sorted(cloud.adapted.children, key=lambda child: child.index)
    assert [child.status for child in children] == ["SUCCEEDED"] * 2 + ["FAILED"] + [
        "SUCCEEDED"
    ] * 2
    assert (children[2].error, children[2].cause) == ("ItemRejected", "item 2 is bad")


def test_a_tolerated_failure_leaves_the_distributed_map_succeeded(cloud: Orchestration) -> None:
    items = {"items": [{"n": n} for n in range(5)]}

    result = run_definition(cloud, failing_map(1), "adapt-map-tolerates", items)

    assert result.status == "SUCCEEDED", result.cause


def test_without_the_adaptation_moto_ignores_failed_children(cloud: Orchestration) -> None:
    """The reason for adaptation 4: when this starts to fail, drop the adaptation."""
    items = {"items": [{"n": n} for n in range(5)]}
    cloud.adapted.uninstall()
    try:
        result = run_definition(cloud, failing_map(None), "adapt-map-raw", items)
    finally:
        cloud.adapted.install()

    assert result.status == "SUCCEEDED"


@pytest.mark.parametrize(
    ("failed", "total", "count", "percentage", "exceeded"),
    [
        (0, 10, 0, 0.0, False),
        (1, 10, 0, 0.0, True),
        (2, 10, 2, 0.0, False),
        (3, 10, 2, 0.0, True),
        (1, 10, 0, 10.0, False),
        (2, 10, 0, 10.0, True),
        (3, 10, 5, 20.0, True),
    ],
)
def test_tolerance_rule_fails_when_either_given_limit_is_exceeded(
    failed: int, total: int, count: int, percentage: float, exceeded: bool
) -> None:
    assert exceeds_tolerance(failed, total, count, percentage) is exceeded
