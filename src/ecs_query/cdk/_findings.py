"""Findings of cdk-nag (AwsSolutions), checkov and cfn-lint that the construct accepts.

Each acknowledgment names one exact finding on the construct that causes it, and says why the
finding is right to accept. IAM5 finding ids embed the policy resource as cdk-nag prints it
(``<Logical.Arn>/*``), so they are computed from the very ARNs the policies were built from:
a changed policy shows up as a new, unacknowledged finding rather than a silently broad pass.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Final

import aws_cdk as cdk
from aws_cdk import aws_iam as iam
from constructs import IConstruct

from ecs_query import planner
from ecs_query.cdk import _scoping, _storage
from ecs_query.cdk import _workflow as workflow

if TYPE_CHECKING:
    from ecs_query.cdk.query_processor import QueryProcessor

NAG_PACK: Final = "AwsSolutions"
# The construct id CDK gives the singleton function behind every AwsCustomResource.
_CUSTOM_RESOURCE_PROVIDER: Final = "AWS679f53fac002430cb0da5b7982bd2287"


def acknowledge(processor: QueryProcessor) -> None:
    """Acknowledge each accepted finding of the processor's resources."""
    _task_role(processor)
    _execution_role(processor)
    _state_machine(processor)
    _task_definition(processor)
    _custom_resource_provider(processor)
    _access_logs_bucket(processor)


# ---------------------------------------------------------------------------- cdk-nag


def nag_id(rule: str, finding: str | None = None) -> str:
    """The acknowledgment id of a cdk-nag finding: ``AwsSolutions::AwsSolutions-IAM5[...]``."""
    detail = f"[{finding}]" if finding is not None else ""
    return f"{NAG_PACK}::{NAG_PACK}-{rule}{detail}"


def flatten_reference(value: object) -> str:
    """A CloudFormation value as cdk-nag prints it in finding ids.

    Strings stay (``${X}`` becomes ``<X>``), Fn::Join joins, Ref becomes ``<Name>``, GetAtt
    ``<Name.Attribute>``, Fn::Sub and Fn::ImportValue show their argument, anything else is
    compact JSON.
    """
    if value is None:
        return ""
    if isinstance(value, str):
        return value.replace("${", "<").replace("}", ">")
    if isinstance(value, dict):
        if "Fn::Join" in value:
            delimiter, items = value["Fn::Join"]
            return str(delimiter).join(flatten_reference(item) for item in items)
        if "Fn::Sub" in value:
            return flatten_reference(value["Fn::Sub"])
        if "Fn::GetAtt" in value:
            name, attribute = value["Fn::GetAtt"]
            return f"<{flatten_reference(name)}.{flatten_reference(attribute)}>"
        if "Fn::ImportValue" in value:
            return flatten_reference(value["Fn::ImportValue"])
        if "Ref" in value:
            return f"<{flatten_reference(value['Ref'])}>"
    return json.dumps(value, separators=(",", ":"))


def wildcard_resource(scope: IConstruct, arn: str) -> str:
    """The IAM5 acknowledgment id for a policy resource ``arn`` that contains a wildcard."""
    resolved = cdk.Stack.of(scope).resolve(arn)
    return nag_id("IAM5", f"Resource::{flatten_reference(resolved)}")


def _ack(scope: IConstruct, ids: Iterable[str], reason: str) -> None:
    cdk.Validations.of(scope).acknowledge(
        *(cdk.Acknowledgment(id=rule_id, reason=reason) for rule_id in ids)
    )


def _default_policy(role: iam.IRole) -> IConstruct | None:
    return role.node.try_find_child("DefaultPolicy")


def _task_role(processor: QueryProcessor) -> None:
    policy = _default_policy(processor.task_definition.task_role)
    if policy is None:
        return
    reads = _storage.object_arns(processor.input_bucket, processor.input_prefixes)
    _ack(
        policy,
        [wildcard_resource(policy, arn) for arn in reads],
        "Jobs choose their input files at run time, so the task role reads any object under "
        "the configured input prefixes (the whole input bucket by default), and nothing else.",
    )
    scope = None if processor.output_prefix_scope is None else [processor.output_prefix_scope]
    writes = _storage.object_arns(processor.output_bucket, scope)
    _ack(
        policy,
        [wildcard_resource(policy, arn) for arn in writes],
        "Each job writes under its own output prefix, chosen at run time: the task role stages, "
        "moves and commits objects under the configured output scope, and nowhere else.",
    )


def _execution_role(processor: QueryProcessor) -> None:
    role = processor.task_definition.execution_role
    policy = None if role is None else _default_policy(role)
    if policy is None:
        return
    _ack(
        policy,
        [nag_id("IAM5", "Resource::*")],
        "ecr:GetAuthorizationToken, which ECS needs to pull the worker image from ECR, has no "
        "resource-level permissions; the image actions themselves name the repository.",
    )


def _state_machine(processor: QueryProcessor) -> None:
    machine = processor.state_machine
    policy = _default_policy(machine.role)
    if policy is not None:
        _ack(
            policy,
            [nag_id("IAM5", "Resource::*")],
            "Actions without resource-level permissions, generated by CDK: the CloudWatch Logs "
            "delivery actions for state machine logging and the X-Ray tracing actions.",
        )
        tasks = _scoping.scope_task_actions(policy, processor.cluster)
        _ack(
            policy,
            [wildcard_resource(policy, tasks)],
            "ecs:DescribeTasks and ecs:StopTask on the tasks of this construct's cluster: the "
            "state machine watches and stops the tasks it starts, whose ids are new each run.",
        )
        _ack(
            policy,
            [wildcard_resource(policy, _task_family_arn(processor))],
            "ecs:RunTask on any revision of this construct's task definition family, as CDK "
            "grants it for ecs:runTask.sync; a new revision must not break running jobs.",
        )
        staged = {
            planner.SUMMARY_NAME: "the plan summary",
            planner.PLAN_FAILURE_NAME: "why a job's plan failed",
        }
        for name, what in staged.items():
            arn = processor.output_bucket.arn_for_objects(
                workflow.staging_key_pattern(processor.output_prefix_scope, name)
            )
            _ack(
                policy,
                [wildcard_resource(policy, arn)],
                f"Reads {what}, which the plan task writes under each job's output prefix; the "
                "prefix and job id are chosen per execution.",
            )
        _ack(
            policy,
            [wildcard_resource(policy, _item_reader_arn(processor))],
            "The Distributed Map's ItemReader reads each job's items.json under a job-specific "
            "key; CDK grants s3:GetObject on the output bucket's objects for it. Read-only.",
        )
    map_policy = machine.node.try_find_child("DistributedMapPolicy")
    if map_policy is not None:
        execution_arns = [
            cdk.Fn.join(
                "",
                [
                    f"arn:{cdk.Aws.PARTITION}:states:{cdk.Aws.REGION}:{cdk.Aws.ACCOUNT_ID}"
                    ":execution:",
                    cdk.Fn.select(6, cdk.Fn.split(":", machine.state_machine_arn)),
                    suffix,
                ],
            )
            for suffix in (":*", "/*:*")
        ]
        _ack(
            map_policy,
            [wildcard_resource(map_policy, arn) for arn in execution_arns],
            "A Distributed Map runs each shard as a child execution of this state machine: it "
            "must describe, stop and redrive executions of this state machine only.",
        )
    policy_resource = None if policy is None else policy.node.default_child
    if isinstance(policy_resource, cdk.CfnResource):
        skip_checkov(
            policy_resource,
            {
                "CKV_AWS_111": "The unconstrained write actions are the CloudWatch Logs delivery "
                "actions and the X-Ray actions, neither of which supports resource-level "
                "permissions.",
            },
        )
    machine_resource = machine.node.default_child
    if isinstance(machine_resource, cdk.CfnResource):
        # CDK adds an explicit DependsOn on the role's policy (and the role) so that the
        # state machine never starts without its permissions; cfn-lint calls it redundant.
        ignore_cfn_lint(machine_resource, ["W3005"])


def _item_reader_arn(processor: QueryProcessor) -> str:
    """The resource CDK's S3JsonItemReader grants s3:GetObject on: every object, by name."""
    return f"arn:{cdk.Aws.PARTITION}:s3:::{processor.output_bucket.bucket_name}/*"


def _task_family_arn(processor: QueryProcessor) -> str:
    """The ARN pattern CDK's EcsRunTask grants ecs:RunTask on: the family, any revision."""
    parts = cdk.Fn.split(":", processor.task_definition.task_definition_arn)
    name = cdk.Fn.split("/", cdk.Fn.select(5, parts))
    return cdk.Fn.join(
        "",
        [
            "arn:",
            cdk.Fn.select(1, parts),
            ":",
            cdk.Fn.select(2, parts),
            ":",
            cdk.Fn.select(3, parts),
            ":",
            cdk.Fn.select(4, parts),
            ":",
            cdk.Fn.select(0, name),
            "/",
            cdk.Fn.select(1, name),
            ":*",
        ],
    )


def _task_definition(processor: QueryProcessor) -> None:
    _ack(
        processor.task_definition,
        [nag_id("ECS2")],
        "The environment holds the job contract's non-secret defaults (formats, limits, spill "
        "folder); each job's values arrive as overrides, and credentials come from the task "
        "role, never from variables.",
    )


def _custom_resource_provider(processor: QueryProcessor) -> None:
    lookup = processor.node.try_find_child("S3PrefixListLookup")
    if lookup is None:
        return
    policy = lookup.node.try_find_child("CustomResourcePolicy")
    if policy is not None:
        _ack(
            policy,
            [nag_id("IAM5", "Resource::*")],
            "ec2:DescribeManagedPrefixLists has no resource-level permissions; the lookup reads "
            "the id of the region's S3 prefix list once, at deployment.",
        )
    provider = cdk.Stack.of(processor).node.try_find_child(_CUSTOM_RESOURCE_PROVIDER)
    if provider is None:
        return
    role = provider.node.try_find_child("ServiceRole")
    if role is not None:
        _ack(
            role,
            [
                nag_id(
                    "IAM4",
                    "Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
                    "AWSLambdaBasicExecutionRole",
                )
            ],
            "CDK's provider function for AwsCustomResource uses the AWS managed policy that "
            "only lets it write its own logs.",
        )
    function = provider.node.default_child
    if isinstance(function, cdk.CfnResource):
        skip_checkov(
            function,
            {
                "CKV_AWS_115": "Runs once per deployment, started by CloudFormation only; no "
                "concurrency to reserve.",
                "CKV_AWS_116": "Invoked synchronously by CloudFormation, which reports and "
                "retries failures; there is nothing for a dead-letter queue to hold.",
                "CKV_AWS_117": "Calls the EC2 API only; placing it in the isolated VPC would "
                "need an EC2 endpoint for a once-per-deployment lookup.",
            },
        )
    if isinstance(function, cdk.CfnResource):
        # CDK makes the function depend on its role explicitly as well as through GetAtt.
        ignore_cfn_lint(function, ["W3005"])


def _access_logs_bucket(processor: QueryProcessor) -> None:
    bucket = processor.node.try_find_child("AccessLogsBucket")
    if bucket is None:
        return
    _ack(
        bucket,
        [nag_id("S1")],
        "This is the server access log target of the data buckets; logging it too would "
        "need another bucket with the same question.",
    )
    resource = bucket.node.default_child
    if isinstance(resource, cdk.CfnResource):
        skip_checkov(
            resource,
            {"CKV_AWS_18": "The access log target itself; its own access logs would loop."},
        )


# ---------------------------------------------------------------------------- checkov, cfn-lint


def skip_checkov(resource: cdk.CfnResource, reasons: dict[str, str]) -> None:
    """Record checkov skips in the resource's metadata, where checkov reads them."""
    existing = resource.get_metadata("checkov") or {}
    skips = [skip for skip in existing.get("skip", []) if skip["id"] not in reasons]
    skips += [{"id": check, "comment": comment} for check, comment in reasons.items()]
    resource.add_metadata("checkov", {"skip": skips})


def ignore_cfn_lint(resource: cdk.CfnResource, rules: list[str]) -> None:
    """Rules that cfn-lint should not apply to this resource (resource-level metadata)."""
    existing = resource.get_metadata("cfn-lint") or {}
    ignored = list(existing.get("config", {}).get("ignore_checks", []))
    resource.add_metadata("cfn-lint", {"config": {"ignore_checks": sorted({*ignored, *rules})}})
