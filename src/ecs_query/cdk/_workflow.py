"""The job's state machine: validate the request, plan, run every shard, finalize.

::

    ValidateInput -> ApplyDefaults -> Normalize -> PrepareEnvironment
      -> Plan (ECS task, on-demand) -> ReadSummary (S3 GetObject) -> CheckCommitted
           already committed -> AlreadyCommitted (Succeed)
      -> RunShards (Distributed Map over items.json, MaxConcurrency from the plan)
           ChooseCapacity: time_sensitive -> RunShardOnDemand, else RunShardSpot
           RunShardSpot: capacity errors retried, then -> FallBackToOnDemand
                         task failure -> InspectSpotFailure -> ParseSpotFailure
                           -> ClassifySpotFailure: Spot interruption, exit 75 / 70 / 137 / 143
                              -> FallBackToOnDemand -> RunShardOnDemand
                              exit 65 (user error) -> ShardRejected (Fail, no retry)
      -> Finalize (ECS task, on-demand: merge, publish, commit _manifest.json) -> Committed

Every ECS task gets the job through environment variable overrides; their names are the job
contract's (``ecs_query.spec.Var``). The definition uses only JSONPath, Pass, Choice, Task, Map
and Fail states and the intrinsic functions JsonMerge, Format, JsonToString and StringToJson.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import aws_cdk as cdk
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import aws_stepfunctions_tasks as tasks
from constructs import Construct

from ecs_query.planner import ITEMS_NAME, PLAN_FAILURE_NAME, STAGING_DIR, SUMMARY_NAME
from ecs_query.spec import DEFAULT_TARGET_SHARD_MIB, OutputFormat, Stage, Var

# Where the plan stage writes, relative to the job's output prefix, comes from the planner:
# STAGING_DIR, SUMMARY_NAME, ITEMS_NAME and PLAN_FAILURE_NAME.

# Errors of ecs:runTask that say "not now" rather than "never": capacity shortages and
# throttling surface as AmazonECSException; the others are the service's own retryable faults.
# A RunTask answer with a non-empty Failures list fails a .sync task as AmazonECS.Unknown.
CAPACITY_ERRORS: Final = (
    "ECS.AmazonECSException",
    "ECS.ServerException",
    "ECS.ThrottlingException",
    "ECS.LimitExceededException",
    "AmazonECS.Unknown",
)
# Worker exit codes (ecs_query.errors) and signals that another attempt may cure.
EXIT_USER_ERROR: Final = 65
RETRYABLE_EXIT_CODES: Final = (75, 70, 137, 143)
SPOT_INTERRUPTION: Final = "SpotInterruption"
FALLBACK_STATE: Final = "FallBackToOnDemand"

# The execution input's optional fields and their defaults (the table in docs/construct.md).
_BOOLEAN_FIELDS: Final = ("time_sensitive", "overwrite", "single_task")
_STRING_FIELDS: Final = ("job_id", "merge_sql", "input_format", "output_format")
_REQUIRED_FIELDS: Final = ("sql", "input", "output_prefix")

# The job's environment, in the order the task overrides list it.
JOB_VARIABLES: Final = (
    Var.JOB_ID,
    Var.SQL,
    Var.MERGE_SQL,
    Var.INPUT,
    Var.INPUT_FORMAT,
    Var.TABLES,
    Var.PARAMS,
    Var.OUTPUT,
    Var.OUTPUT_FORMAT,
    Var.TARGET_SHARD_MIB,
    Var.MAX_CONCURRENCY,
    Var.OVERWRITE,
    Var.SINGLE_TASK,
)


@dataclass(frozen=True)
class WorkflowTargets:
    """What the state machine drives: the cluster, the worker and where it may write."""

    cluster: ecs.ICluster
    task_definition: ecs.TaskDefinition
    container: ecs.ContainerDefinition
    security_group: ec2.ISecurityGroup
    subnets: ec2.SubnetSelection
    output_bucket: s3.IBucket
    output_prefix_scope: str | None
    max_concurrency: int
    tolerated_shard_failures: int


def staging_key_pattern(output_prefix_scope: str | None, name: str) -> str:
    """The object keys a plan writes for any job in the scope, as an IAM resource pattern."""
    return f"{output_prefix_scope or ''}*/{STAGING_DIR}/*/{name}"


def build_definition(scope: Construct, targets: WorkflowTargets) -> sfn.IChainable:
    """The whole job, from the execution input to the committed manifest."""
    plan = _run_task(scope, "Plan", targets, stage=Stage.PLAN, spot=False)
    _retry_capacity(plan)
    plan.add_catch(
        _explain_plan_failure(scope, targets),
        errors=[sfn.Errors.TASKS_FAILED],
        result_path="$.error",
    )

    finalize = _run_task(
        scope,
        "Finalize",
        targets,
        stage=Stage.FINALIZE,
        spot=False,
        extra={Var.TOLERATED_FAILURES.env: str(targets.tolerated_shard_failures)},
    )
    _retry_capacity(finalize)
    # Finalize is safe to repeat; one more attempt covers a lost task or a network fault.
    finalize.add_retry(
        errors=[sfn.Errors.TASKS_FAILED], interval=cdk.Duration.seconds(30), max_attempts=1
    )

    check_committed = sfn.Choice(
        scope, "CheckCommitted", comment="A rerun of a committed job has nothing to do."
    )
    check_committed.when(
        sfn.Condition.boolean_equals("$.plan.summary.already_committed", True),
        sfn.Succeed(scope, "AlreadyCommitted"),
    )
    check_committed.otherwise(
        _shard_map(scope, targets).next(finalize).next(sfn.Succeed(scope, "Committed"))
    )

    validate = _validate_input(scope, targets.output_prefix_scope)
    validate.otherwise(
        _apply_defaults(scope)
        .next(_normalize(scope))
        .next(_prepare_environment(scope, targets))
        .next(plan)
        .next(_read_summary(scope, targets))
        .next(check_committed)
    )
    return validate


# ---------------------------------------------------------------------------- input


def _validate_input(scope: Construct, output_prefix_scope: str | None) -> sfn.Choice:
    """Refuse a malformed request before any task starts, naming what is wrong."""

    def invalid(state_id: str, cause: str) -> sfn.Fail:
        return sfn.Fail(scope, state_id, error="InvalidInput", cause=cause)

    def string_field(field: str) -> sfn.Condition:
        path = f"$.{field}"
        return sfn.Condition.and_(sfn.Condition.is_present(path), sfn.Condition.is_string(path))

    def present_but(field: str, check: sfn.Condition) -> sfn.Condition:
        return sfn.Condition.and_(sfn.Condition.is_present(f"$.{field}"), sfn.Condition.not_(check))

    missing = [sfn.Condition.not_(string_field(field)) for field in _REQUIRED_FIELDS]
    wrong_type = [
        *(present_but(f, sfn.Condition.is_boolean(f"$.{f}")) for f in _BOOLEAN_FIELDS),
        *(present_but(f, sfn.Condition.is_string(f"$.{f}")) for f in _STRING_FIELDS),
        present_but("target_shard_mib", sfn.Condition.is_numeric("$.target_shard_mib")),
    ]
    prefix = "$.output_prefix"
    bad_prefix = [
        sfn.Condition.string_equals(prefix, ""),
        sfn.Condition.string_matches(prefix, "/*"),
        sfn.Condition.string_matches(prefix, "*/"),
    ]
    where = "the output bucket"
    if output_prefix_scope is not None:
        bad_prefix.append(
            sfn.Condition.not_(sfn.Condition.string_matches(prefix, f"{output_prefix_scope}*"))
        )
        where = f"the output bucket under '{output_prefix_scope}'"

    choice = sfn.Choice(scope, "ValidateInput", comment="Check the execution input's fields.")
    choice.when(
        sfn.Condition.or_(*missing),
        invalid(
            "RejectMissingField",
            "the execution input needs 'sql', 'input' and 'output_prefix', each a string",
        ),
    )
    choice.when(
        sfn.Condition.or_(*wrong_type),
        invalid(
            "RejectFieldType",
            "'time_sensitive', 'overwrite' and 'single_task' take true or false, "
            "'target_shard_mib' a number, "
            "'job_id', 'merge_sql', 'input_format' and 'output_format' strings",
        ),
    )
    choice.when(
        sfn.Condition.not_(sfn.Condition.string_matches("$.input", "s3://*")),
        invalid("RejectInput", "'input' must be an s3:// location, such as s3://bucket/data/"),
    )
    choice.when(
        sfn.Condition.or_(*bad_prefix),
        invalid(
            "RejectOutputPrefix",
            f"'output_prefix' must be a key prefix in {where}, "
            "without a leading or trailing '/', such as results/daily",
        ),
    )
    return choice


def _apply_defaults(scope: Construct) -> sfn.Pass:
    return sfn.Pass(
        scope,
        "ApplyDefaults",
        comment="Defaults of the optional fields; the job id defaults to the execution name.",
        parameters={
            "defaults": {
                "job_id": sfn.JsonPath.execution_name,
                "merge_sql": "",
                "input_format": "",
                "tables": {},
                "params": {},
                "output_format": OutputFormat.PARQUET.value,
                "target_shard_mib": DEFAULT_TARGET_SHARD_MIB,
                "time_sensitive": False,
                "overwrite": False,
                "single_task": False,
            },
            "request": sfn.JsonPath.entire_payload,
        },
    )


def _normalize(scope: Construct) -> sfn.Pass:
    return sfn.Pass(
        scope,
        "Normalize",
        comment="The request's fields over the defaults.",
        parameters={
            "job": sfn.JsonPath.json_merge(
                sfn.JsonPath.object_at("$.defaults"), sfn.JsonPath.object_at("$.request")
            )
        },
    )


def _prepare_environment(scope: Construct, targets: WorkflowTargets) -> sfn.Pass:
    """The job contract's variables, as every task of this job receives them."""
    job = "$.job"
    bucket = targets.output_bucket.bucket_name
    env = {
        Var.JOB_ID.env: sfn.JsonPath.string_at(f"{job}.job_id"),
        Var.SQL.env: sfn.JsonPath.string_at(f"{job}.sql"),
        Var.MERGE_SQL.env: sfn.JsonPath.string_at(f"{job}.merge_sql"),
        Var.INPUT.env: sfn.JsonPath.string_at(f"{job}.input"),
        Var.INPUT_FORMAT.env: sfn.JsonPath.string_at(f"{job}.input_format"),
        Var.TABLES.env: sfn.JsonPath.json_to_string(sfn.JsonPath.object_at(f"{job}.tables")),
        Var.PARAMS.env: sfn.JsonPath.json_to_string(sfn.JsonPath.object_at(f"{job}.params")),
        Var.OUTPUT.env: sfn.JsonPath.format(
            f"s3://{bucket}/{{}}", sfn.JsonPath.string_at(f"{job}.output_prefix")
        ),
        Var.OUTPUT_FORMAT.env: sfn.JsonPath.string_at(f"{job}.output_format"),
        Var.TARGET_SHARD_MIB.env: sfn.JsonPath.json_to_string(
            sfn.JsonPath.number_at(f"{job}.target_shard_mib")
        ),
        Var.MAX_CONCURRENCY.env: str(targets.max_concurrency),
        Var.OVERWRITE.env: sfn.JsonPath.json_to_string(sfn.JsonPath.object_at(f"{job}.overwrite")),
        Var.SINGLE_TASK.env: sfn.JsonPath.json_to_string(
            sfn.JsonPath.object_at(f"{job}.single_task")
        ),
    }
    assert list(env) == [var.env for var in JOB_VARIABLES]
    return sfn.Pass(
        scope,
        "PrepareEnvironment",
        comment="The job's ECS_QUERY_* variables, passed to every task as overrides.",
        parameters={"job": sfn.JsonPath.object_at(job), "env": env},
    )


# ---------------------------------------------------------------------------- tasks


def _run_task(
    scope: Construct,
    state_id: str,
    targets: WorkflowTargets,
    *,
    stage: Stage,
    spot: bool,
    extra: dict[str, str] | None = None,
    sized: bool = False,
) -> tasks.EcsRunTask:
    """An ecs:runTask.sync state for one stage, with the job's environment as overrides."""
    environment = [
        tasks.TaskEnvironmentVariable(
            name=var.env, value=sfn.JsonPath.string_at(f"$.env.{var.env}")
        )
        for var in JOB_VARIABLES
    ]
    environment.append(tasks.TaskEnvironmentVariable(name=Var.STAGE.env, value=stage.value))
    for name, value in (extra or {}).items():
        environment.append(tasks.TaskEnvironmentVariable(name=name, value=value))
    capacity = (
        tasks.CapacityProviderOptions.custom(
            [ecs.CapacityProviderStrategy(capacity_provider="FARGATE_SPOT", weight=1)]
        )
        if spot
        else None
    )
    return tasks.EcsRunTask(
        scope,
        state_id,
        integration_pattern=sfn.IntegrationPattern.RUN_JOB,
        cluster=targets.cluster,
        task_definition=targets.task_definition,
        launch_target=tasks.EcsFargateLaunchTarget(
            platform_version=ecs.FargatePlatformVersion.VERSION1_4,
            capacity_provider_options=capacity,
        ),
        container_overrides=[
            tasks.ContainerOverride(container_definition=targets.container, environment=environment)
        ],
        cpu=sfn.JsonPath.string_at("$.cpu") if sized else None,
        memory_mib=sfn.JsonPath.string_at("$.memory") if sized else None,
        security_groups=[targets.security_group],
        subnets=targets.subnets,
        assign_public_ip=False,
        result_path=sfn.JsonPath.DISCARD,
    )


def _retry_capacity(task: tasks.EcsRunTask) -> None:
    """Capacity and API errors: five attempts, exponential backoff from 5 s, full jitter."""
    task.add_retry(
        errors=list(CAPACITY_ERRORS),
        interval=cdk.Duration.seconds(5),
        backoff_rate=2,
        max_attempts=5,
        jitter_strategy=sfn.JitterType.FULL,
    )


def _read_staged_json(
    scope: Construct, construct_id: str, targets: WorkflowTargets, name: str, field: str
) -> tasks.CallAwsService:
    """Read the JSON document ``name`` from the job's staging area into ``$.plan.<field>``."""
    key = sfn.JsonPath.format(
        f"{{}}/{STAGING_DIR}/{{}}/{name}",
        sfn.JsonPath.string_at("$.job.output_prefix"),
        sfn.JsonPath.string_at("$.job.job_id"),
    )
    return tasks.CallAwsService(
        scope,
        construct_id,
        service="s3",
        action="getObject",
        iam_action="s3:GetObject",
        parameters={"Bucket": targets.output_bucket.bucket_name, "Key": key},
        iam_resources=[
            targets.output_bucket.arn_for_objects(
                staging_key_pattern(targets.output_prefix_scope, name)
            )
        ],
        result_selector={field: sfn.JsonPath.string_to_json(sfn.JsonPath.string_at("$.Body"))},
        result_path="$.plan",
    )


def _explain_plan_failure(scope: Construct, targets: WorkflowTargets) -> tasks.CallAwsService:
    """A failed plan (bad SQL, a missing parameter, unreadable input) ends the execution with
    the worker's own error and message, which it leaves in ``plan-failure.json``. Without that
    file (the task was killed), the execution fails with the task's description."""
    read = _read_staged_json(scope, "ReadPlanFailure", targets, PLAN_FAILURE_NAME, "failure")
    read.add_catch(
        sfn.Fail(
            scope,
            "PlanFailed",
            error="PlanFailed",
            cause_path=sfn.JsonPath.string_at("$.error.Cause"),
        ),
        errors=[sfn.Errors.ALL],
        result_path="$.readError",
    )
    read.next(
        sfn.Fail(
            scope,
            "PlanRejected",
            error_path=sfn.JsonPath.string_at("$.plan.failure.error"),
            cause_path=sfn.JsonPath.string_at("$.plan.failure.cause"),
        )
    )
    return read


def _read_summary(scope: Construct, targets: WorkflowTargets) -> tasks.CallAwsService:
    """The plan's summary: shard count, task size, concurrency, already committed or not."""
    read = _read_staged_json(scope, "ReadSummary", targets, SUMMARY_NAME, "summary")
    read.add_retry(
        errors=[sfn.Errors.TASKS_FAILED], interval=cdk.Duration.seconds(2), max_attempts=2
    )
    return read


# ---------------------------------------------------------------------------- shards


def _shard_map(scope: Construct, targets: WorkflowTargets) -> sfn.DistributedMap:
    """One child execution per shard, reading the items the plan wrote."""
    items_key = sfn.JsonPath.format(
        f"{{}}/{STAGING_DIR}/{{}}/{ITEMS_NAME}",
        sfn.JsonPath.string_at("$.job.output_prefix"),
        sfn.JsonPath.string_at("$.job.job_id"),
    )
    tolerated = targets.tolerated_shard_failures
    shards = sfn.DistributedMap(
        scope,
        "RunShards",
        comment="One child execution per shard; the plan caps the concurrency.",
        item_reader=sfn.S3JsonItemReader(bucket=targets.output_bucket, key=items_key),
        item_selector={
            "env": sfn.JsonPath.object_at("$.env"),
            "shard_index": sfn.JsonPath.json_to_string(
                sfn.JsonPath.number_at("$$.Map.Item.Value.shard")
            ),
            "cpu": sfn.JsonPath.string_at("$.plan.summary.cpu"),
            "memory": sfn.JsonPath.string_at("$.plan.summary.memory"),
            "time_sensitive": sfn.JsonPath.string_at("$.job.time_sensitive"),
        },
        max_concurrency_path="$.plan.summary.concurrency",
        # The default (none tolerated) is left out of the definition.
        tolerated_failure_count=tolerated if tolerated > 0 else None,
        result_path=sfn.JsonPath.DISCARD,
    )
    shards.item_processor(_shard_processor(scope, targets))
    return shards


def _shard_processor(scope: Construct, targets: WorkflowTargets) -> sfn.IChainable:
    shard_index = {Var.SHARD_INDEX.env: sfn.JsonPath.string_at("$.shard_index")}
    on_demand = _run_task(
        scope,
        "RunShardOnDemand",
        targets,
        stage=Stage.SHARD,
        spot=False,
        extra=shard_index,
        sized=True,
    )
    spot = _run_task(
        scope,
        "RunShardSpot",
        targets,
        stage=Stage.SHARD,
        spot=True,
        extra=shard_index,
        sized=True,
    )
    shard_failed = sfn.Fail(scope, "ShardFailed", error="ShardFailed", cause_path="$.error.Cause")
    shard_rejected = sfn.Fail(
        scope, "ShardRejected", error="ShardUserError", cause_path="$.error.Cause"
    )
    fall_back = sfn.Pass(
        scope,
        FALLBACK_STATE,
        comment="Spot could not finish this shard: run it on on-demand Fargate.",
    ).next(on_demand)

    # On-demand: capacity retries, then one more attempt whatever the exit code, since a
    # Retry cannot see it; a user error costs that one extra task.
    _retry_capacity(on_demand)
    on_demand.add_retry(
        errors=[sfn.Errors.TASKS_FAILED], interval=cdk.Duration.seconds(10), max_attempts=1
    )
    on_demand.add_catch(shard_failed, errors=[sfn.Errors.ALL], result_path="$.error")

    # Spot: capacity retries, then on-demand; a failed task is looked at before deciding.
    _retry_capacity(spot)
    spot.add_catch(fall_back, errors=list(CAPACITY_ERRORS), result_path="$.error")
    classify = _classify_spot_failure(scope, fall_back, shard_rejected, shard_failed)
    inspect = sfn.Choice(
        scope, "InspectSpotFailure", comment="A stopped task's Cause is its description."
    )
    # The worker is the task's only container. Its exit code is read with ArrayGetItem rather
    # than an indexed path: some interpreters (moto's) return a one-element list for
    # "Containers[0]", so the Choice would never match there.
    read_exit_code = sfn.Pass(
        scope,
        "ReadExitCode",
        parameters={
            "container": sfn.JsonPath.array_get_item(
                sfn.JsonPath.list_at("$.failure.task.Containers"), 0
            )
        },
        result_path="$.failure.worker",
    ).next(classify)
    has_containers = sfn.Choice(scope, "HasContainers")
    has_containers.when(
        sfn.Condition.and_(
            sfn.Condition.is_present("$.failure.task.Containers"),
            sfn.Condition.is_present("$.failure.task.Containers[0]"),
        ),
        read_exit_code,
    )
    has_containers.otherwise(classify)
    inspect.when(
        sfn.Condition.string_matches("$.error.Cause", "{*"),
        sfn.Pass(
            scope,
            "ParseSpotFailure",
            parameters={
                "task": sfn.JsonPath.string_to_json(sfn.JsonPath.string_at("$.error.Cause"))
            },
            result_path="$.failure",
        ).next(has_containers),
    )
    inspect.otherwise(shard_failed)
    spot.add_catch(inspect, errors=[sfn.Errors.TASKS_FAILED], result_path="$.error")

    choose = sfn.Choice(scope, "ChooseCapacity", comment="Time-sensitive jobs skip Spot.")
    choose.when(sfn.Condition.boolean_equals("$.time_sensitive", True), on_demand)
    choose.otherwise(spot)
    return choose


def _classify_spot_failure(
    scope: Construct, fall_back: sfn.IChainable, rejected: sfn.Fail, failed: sfn.Fail
) -> sfn.Choice:
    stop_code = "$.failure.task.StopCode"
    exit_code = "$.failure.worker.container.ExitCode"

    def exit_code_is(code: int) -> sfn.Condition:
        # One flat rule per code: a present, numeric exit code equal to it.
        return sfn.Condition.and_(
            sfn.Condition.is_present(exit_code),
            sfn.Condition.is_numeric(exit_code),
            sfn.Condition.number_equals(exit_code, code),
        )

    classify = sfn.Choice(
        scope,
        "ClassifySpotFailure",
        comment="Interrupted or transient: on-demand. User error: stop. Anything else: fail.",
    )
    classify.when(
        sfn.Condition.and_(
            sfn.Condition.is_present(stop_code),
            sfn.Condition.string_equals(stop_code, SPOT_INTERRUPTION),
        ),
        fall_back,
    )
    classify.when(exit_code_is(EXIT_USER_ERROR), rejected)
    for code in RETRYABLE_EXIT_CODES:
        classify.when(exit_code_is(code), fall_back)
    classify.otherwise(failed)
    return classify
