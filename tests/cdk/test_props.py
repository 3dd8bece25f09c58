"""QueryProcessor's props: defaults, validation messages, and the small functions behind them.

No synthesis here: every error is raised at construction, before any resource exists.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any, cast, get_type_hints

import aws_cdk as cdk
import pytest
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_efs as efs
from aws_cdk import aws_s3 as s3

from ecs_query import errors, planner
from ecs_query.cdk import (
    PropsError,
    QueryProcessor,
    QueryProcessorProps,
    _compute,
    _findings,
    _validation,
)
from ecs_query.cdk import _workflow as workflow
from ecs_query.cdk.query_processor import container_environment
from ecs_query.spec import JobSpec, Var
from tests.cdk.support import REPO_ROOT


def build(**props: Any) -> QueryProcessor:
    stack = cdk.Stack(cdk.App(), "Props")
    return QueryProcessor(stack, "QueryProcessor", **props)


def imported_vpc(stack: cdk.Stack) -> ec2.IVpc:
    return ec2.Vpc.from_vpc_attributes(
        stack,
        "Existing",
        vpc_id="vpc-0123456789abcdef0",
        availability_zones=["us-east-1a", "us-east-1b"],
        private_subnet_ids=["subnet-0a", "subnet-0b"],
    )


# ---------------------------------------------------------------------------- conflicts


def test_fails_when_vpc_and_nat_gateways_both_given() -> None:
    stack = cdk.Stack(cdk.App(), "Props")
    with pytest.raises(PropsError, match=r"vpc and nat_gateways: both given; .* pass one"):
        QueryProcessor(stack, "QueryProcessor", vpc=imported_vpc(stack), nat_gateways=1)


def test_fails_when_subnet_selection_is_given_without_vpc() -> None:
    with pytest.raises(PropsError, match=r"subnet_selection: given without vpc"):
        build(subnet_selection=ec2.SubnetSelection(subnet_group_name="Private"))


def test_fails_when_file_system_and_efs_both_given() -> None:
    stack = cdk.Stack(cdk.App(), "Props")
    file_system = efs.FileSystem.from_file_system_attributes(
        stack,
        "Fs",
        file_system_id="fs-0123456789abcdef0",
        security_group=ec2.SecurityGroup.from_security_group_id(stack, "FsSg", "sg-0123"),
    )
    with pytest.raises(PropsError, match=r"file_system and efs: both given"):
        QueryProcessor(stack, "QueryProcessor", file_system=file_system, efs=True)


def test_accepts_efs_false_with_an_existing_file_system() -> None:
    stack = cdk.Stack(cdk.App(), "Props")
    file_system = efs.FileSystem.from_file_system_attributes(
        stack,
        "Fs",
        file_system_id="fs-0123456789abcdef0",
        security_group=ec2.SecurityGroup.from_security_group_id(stack, "FsSg", "sg-0123"),
    )
    processor = QueryProcessor(stack, "QueryProcessor", file_system=file_system, efs=False)
    assert processor.file_system is file_system
    assert processor.node.try_find_child("FileSystem") is None


# ---------------------------------------------------------------------------- sizes


def test_fails_when_memory_does_not_fit_cpu_naming_both_and_the_valid_range() -> None:
    with pytest.raises(PropsError) as raised:
        build(cpu=1024, memory_limit_mib=1024)
    message = str(raised.value)
    assert "received cpu=1024 memory_limit_mib=1024" in message
    assert "with cpu 1024 use 2048 to 8192 in steps of 1024 MiB" in message


def test_fails_when_cpu_is_not_a_fargate_size() -> None:
    with pytest.raises(PropsError, match=r"cpu 300 is not a Fargate size; supported cpu units"):
        build(cpu=300, memory_limit_mib=1024)


def test_skips_size_validation_for_unresolved_tokens() -> None:
    stack = cdk.Stack(cdk.App(), "Props")
    cpu = cdk.CfnParameter(stack, "Cpu", type="Number", default=1024).value_as_number
    processor = QueryProcessor(stack, "QueryProcessor", cpu=cast(int, cpu), memory_limit_mib=3)
    assert processor.task_definition is not None


@pytest.mark.parametrize("gib", [20, 201])
def test_fails_when_ephemeral_storage_is_out_of_range(gib: int) -> None:
    pattern = rf"ephemeral_storage_gib: out of range, received {gib}; use 21 to 200 GiB"
    with pytest.raises(PropsError, match=pattern):
        build(ephemeral_storage_gib=gib)


@pytest.mark.parametrize(
    ("props", "pattern"),
    [
        ({"max_concurrency": 0}, r"max_concurrency: out of range, received 0; use 1 to 10000"),
        ({"max_concurrency": 10_001}, r"max_concurrency: out of range, received 10001"),
        ({"tolerated_shard_failures": -1}, r"tolerated_shard_failures: out of range, received -1"),
        ({"nat_gateways": 3}, r"nat_gateways: out of range, received 3; use 0 to 2"),
        (
            {"job_timeout": cdk.Duration.seconds(30)},
            r"job_timeout: out of range, received 30 seconds; use 1 minute to 365 days",
        ),
        ({"job_timeout": cdk.Duration.days(400)}, r"job_timeout: out of range, received 400 days"),
        ({"alarm_email": "ops"}, r"alarm_email: 'ops' is not an email address"),
    ],
)
def test_fails_when_a_limit_is_out_of_range(props: dict[str, Any], pattern: str) -> None:
    with pytest.raises(PropsError, match=pattern):
        build(**props)


# ---------------------------------------------------------------------------- prefixes


@pytest.mark.parametrize(
    ("prefixes", "pattern"),
    [
        ("sales/", r"input_prefixes: expected a list of prefixes, received the string 'sales/'"),
        ([], r"input_prefixes: received an empty list; leave it unset"),
        (["sales"], r"input_prefixes: 'sales' is not a key prefix .* ending in '/'"),
        (["/sales/"], r"input_prefixes: '/sales/' is not a key prefix"),
        (["sales/*/"], r"input_prefixes: 'sales/\*/' is not a key prefix"),
        (["sales//2024/"], r"input_prefixes: 'sales//2024/' is not a key prefix"),
    ],
)
def test_fails_when_an_input_prefix_cannot_scope_permissions(prefixes: Any, pattern: str) -> None:
    with pytest.raises(PropsError, match=pattern):
        build(input_prefixes=prefixes)


def test_fails_when_output_prefix_scope_lacks_its_trailing_slash() -> None:
    with pytest.raises(PropsError, match=r"output_prefix_scope: 'results' is not a key prefix"):
        build(output_prefix_scope="results")


def test_reports_every_problem_at_once() -> None:
    with pytest.raises(PropsError) as raised:
        build(cpu=1024, memory_limit_mib=1024, max_concurrency=0, output_prefix_scope="r")
    assert len(raised.value.problems) == 3
    assert str(raised.value).startswith("invalid QueryProcessor props (3 problems):\n  - ")


def test_props_error_belongs_to_the_project_error_tree() -> None:
    error = PropsError("QueryProcessor", ["x: wrong"])
    assert isinstance(error, errors.EcsQueryError)
    assert isinstance(error, ValueError)
    assert str(error) == "invalid QueryProcessor props (1 problem):\n  - x: wrong"


# ---------------------------------------------------------------------------- image


def test_fails_without_image_when_the_source_tree_is_not_installed(tmp_path: Path) -> None:
    module = tmp_path / "site-packages" / "ecs_query" / "cdk" / "query_processor.py"
    assert _compute.project_root(module) is None
    (problem,) = _compute.bundled_image_problems(None)
    assert problem.startswith("image: not given, and the worker image is built from")
    assert "image=ecs.ContainerImage.from_registry(...)" in problem


def test_finds_the_source_tree_it_is_loaded_from() -> None:
    assert _compute.project_root() == REPO_ROOT


def test_accepts_a_registry_image_without_building_one() -> None:
    from aws_cdk import aws_ecs as ecs

    image = ecs.ContainerImage.from_registry("public.ecr.aws/example/ecs-query:1.0.0")
    processor = build(image=image)
    assert processor.container.image_name == "public.ecr.aws/example/ecs-query:1.0.0"


# ---------------------------------------------------------------------------- API shape


def test_every_prop_is_keyword_only_typed_and_documented_with_its_default() -> None:
    signature = inspect.signature(QueryProcessor.__init__)
    names = [name for name in signature.parameters if name not in {"self", "scope", "id"}]
    assert all(signature.parameters[name].kind is inspect.Parameter.KEYWORD_ONLY for name in names)
    assert all(signature.parameters[name].default is None for name in names)
    docstring = inspect.getdoc(QueryProcessor) or ""
    for name in names:
        entry = re.search(rf":param {name}: (.*?)(?=\n:param|\Z)", docstring, re.S)
        assert entry is not None, f"{name} is not documented"
        assert "Default: " in entry.group(1), f"{name} does not state its default"
        assert "Default: None" not in entry.group(1)


def test_stack_props_name_exactly_the_construct_props() -> None:
    signature = inspect.signature(QueryProcessor.__init__)
    names = {name for name in signature.parameters if name not in {"self", "scope", "id"}}
    assert set(get_type_hints(QueryProcessorProps)) == names


def test_every_prop_appears_in_the_construct_documentation() -> None:
    text = (REPO_ROOT / "docs" / "construct.md").read_text()
    for name in get_type_hints(QueryProcessorProps):
        assert f"`{name}`" in text, f"docs/construct.md does not describe {name}"


# ---------------------------------------------------------------------------- defaults


def test_container_environment_holds_the_contract_defaults_the_worker_parses() -> None:
    environment = container_environment(
        max_concurrency=40, tolerated_shard_failures=2, spill_dir=None
    )
    assert environment == {
        "ECS_QUERY_INPUT_FORMAT": "",
        "ECS_QUERY_MERGE_SQL": "",
        "ECS_QUERY_OUTPUT_FORMAT": "parquet",
        "ECS_QUERY_TARGET_SHARD_MIB": "256",
        "ECS_QUERY_MAX_CONCURRENCY": "40",
        "ECS_QUERY_TOLERATED_FAILURES": "2",
        "ECS_QUERY_OVERWRITE": "false",
    }
    job = {Var.SQL.env: "SELECT 1", Var.INPUT.env: "s3://b/in/", Var.OUTPUT.env: "s3://b/out"}
    spec = JobSpec.from_env({**environment, **job})
    assert spec.merge_sql is None
    assert spec.input_format is None
    assert spec.max_concurrency == 40


def test_container_environment_names_the_spill_folder_when_given() -> None:
    environment = container_environment(
        max_concurrency=1, tolerated_shard_failures=0, spill_dir="/mnt/ecs-query/spill"
    )
    assert environment[Var.SPILL_DIR.env] == "/mnt/ecs-query/spill"


def test_workflow_reads_the_staging_files_the_planner_writes() -> None:
    spec = JobSpec(sql="SELECT 1", input="s3://in/x/", output="s3://out/res/q1", job_id="j-1")
    key_prefix = "res/q1"
    summary = f"{key_prefix}/{planner.STAGING_DIR}/j-1/{planner.SUMMARY_NAME}"
    items = f"{key_prefix}/{planner.STAGING_DIR}/j-1/{planner.ITEMS_NAME}"
    assert planner.summary_uri(spec) == f"s3://out/{summary}"
    assert planner.items_uri(spec) == f"s3://out/{items}"


def test_staging_key_pattern_stays_inside_the_output_scope() -> None:
    assert workflow.staging_key_pattern("results/", "summary.json") == (
        "results/*/_ecs_query/*/summary.json"
    )
    assert workflow.staging_key_pattern(None, "items.json") == "*/_ecs_query/*/items.json"


def test_workflow_exit_codes_are_the_workers() -> None:
    assert workflow.EXIT_USER_ERROR == errors.EXIT_USER_ERROR
    assert errors.EXIT_TRANSIENT in workflow.RETRYABLE_EXIT_CODES
    assert errors.EXIT_INTERNAL_ERROR in workflow.RETRYABLE_EXIT_CODES
    assert errors.EXIT_USER_ERROR not in workflow.RETRYABLE_EXIT_CODES


# ---------------------------------------------------------------------------- findings


@pytest.mark.parametrize(
    ("value", "flat"),
    [
        ("*", "*"),
        ({"Ref": "AWS::Partition"}, "<AWS::Partition>"),
        ({"Fn::GetAtt": ["Bucket1", "Arn"]}, "<Bucket1.Arn>"),
        ({"Fn::Join": ["", [{"Fn::GetAtt": ["B", "Arn"]}, "/*"]]}, "<B.Arn>/*"),
        ({"Fn::Sub": "arn:${AWS::Partition}:s3:::b/*"}, "arn:<AWS::Partition>:s3:::b/*"),
        ({"Fn::Select": [1, ["a", "b"]]}, '{"Fn::Select":[1,["a","b"]]}'),
    ],
)
def test_flattens_references_as_cdk_nag_prints_them(value: object, flat: str) -> None:
    assert _findings.flatten_reference(value) == flat


def test_names_cdk_nag_findings_with_the_plugin_prefix() -> None:
    assert _findings.nag_id("ECS2") == "AwsSolutions::AwsSolutions-ECS2"
    assert _findings.nag_id("IAM5", "Resource::*") == "AwsSolutions::AwsSolutions-IAM5[Resource::*]"


def test_wildcard_resource_ids_follow_the_bucket_they_name() -> None:
    stack = cdk.Stack(cdk.App(), "Props")
    bucket = s3.Bucket(stack, "Data")
    logical = stack.resolve(bucket.node.default_child.logical_id)  # type: ignore[union-attr]
    assert _findings.wildcard_resource(stack, bucket.arn_for_objects("in/*")) == (
        f"AwsSolutions::AwsSolutions-IAM5[Resource::<{logical}.Arn>/in/*]"
    )


def test_prefix_validation_accepts_nested_prefixes() -> None:
    assert _validation.prefix_problems("p", "sales/2024/q1/") == []
    assert _validation.input_prefixes_problems(["a/", "b/c/"]) == []


# ---------------------------------------------------------------------------- advice


def warnings_of(processor: QueryProcessor) -> list[str]:
    return [str(entry.data) for entry in processor.node.metadata if entry.type == "aws:cdk:warning"]


def test_warns_when_tasks_would_run_in_public_subnets() -> None:
    stack = cdk.Stack(cdk.App(), "Props")
    vpc = ec2.Vpc.from_vpc_attributes(
        stack,
        "Existing",
        vpc_id="vpc-0123456789abcdef0",
        availability_zones=["us-east-1a"],
        public_subnet_ids=["subnet-0pub"],
        private_subnet_ids=["subnet-0priv"],
    )
    public = QueryProcessor(
        stack,
        "Public",
        vpc=vpc,
        subnet_selection=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PUBLIC),
    )
    (warning,) = warnings_of(public)
    assert "subnet_selection selects public subnets" in warning
    assert "[ack: ecs-query:publicSubnets]" in warning
    private = QueryProcessor(stack, "Private", vpc=vpc)
    assert warnings_of(private) == []


def test_two_processors_share_a_stack() -> None:
    stack = cdk.Stack(cdk.App(), "Props")
    first = QueryProcessor(stack, "Reporting")
    second = QueryProcessor(stack, "Backfill", nat_gateways=1)
    assert first.state_machine.node.path != second.state_machine.node.path


def test_checkov_skips_are_recorded_once_per_check() -> None:
    stack = cdk.Stack(cdk.App(), "Props")
    bucket = s3.CfnBucket(stack, "Bucket")
    _findings.skip_checkov(bucket, {"CKV_AWS_18": "first reason"})
    _findings.skip_checkov(bucket, {"CKV_AWS_18": "same check again", "CKV_AWS_21": "other"})
    assert bucket.get_metadata("checkov") == {
        "skip": [
            {"id": "CKV_AWS_18", "comment": "same check again"},
            {"id": "CKV_AWS_21", "comment": "other"},
        ]
    }
