"""Least privilege, read off the synthesized template: what each role may do to which data,
no action wildcards anywhere, and parliament (an IAM policy linter) finding nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from parliament import analyze_policy_string

from tests.cdk.support import Synth, concrete, synth
from tests.cdk.variants import EXISTING_PROPS, existing_resources

READ_ACTIONS = {"s3:GetObject", "s3:ListBucket"}
WRITE_ACTIONS = {"s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"}


@pytest.fixture(scope="module")
def default(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    return synth(tmp_path_factory.mktemp("iam-default"))


@pytest.fixture(scope="module")
def scoped(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    return synth(
        tmp_path_factory.mktemp("iam-scoped"), existing=existing_resources, **EXISTING_PROPS
    )


ACCOUNT = "123456789012"
REGION = "us-east-1"


def _placeholder(logical_id: str, kind: str, attribute: str | None) -> str:
    """What CloudFormation would put for ``Ref`` (attribute None) or ``Fn::GetAtt``."""
    name = logical_id.lower()
    arns = {
        "AWS::KMS::Key": f"arn:aws:kms:{REGION}:{ACCOUNT}:key/{name}",
        "AWS::Logs::LogGroup": f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:{name}:*",
        "AWS::IAM::Role": f"arn:aws:iam::{ACCOUNT}:role/{name}",
        "AWS::S3::Bucket": f"arn:aws:s3:::{name}",
        "AWS::SNS::Topic": f"arn:aws:sns:{REGION}:{ACCOUNT}:{name}",
        "AWS::ECS::Cluster": f"arn:aws:ecs:{REGION}:{ACCOUNT}:cluster/{name}",
        "AWS::ECS::TaskDefinition": f"arn:aws:ecs:{REGION}:{ACCOUNT}:task-definition/{name}:1",
        "AWS::StepFunctions::StateMachine": (
            f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:{name}"
        ),
        "AWS::EFS::FileSystem": (
            f"arn:aws:elasticfilesystem:{REGION}:{ACCOUNT}:file-system/fs-{name}"
        ),
        "AWS::EFS::AccessPoint": (
            f"arn:aws:elasticfilesystem:{REGION}:{ACCOUNT}:access-point/fsap-{name}"
        ),
        "AWS::Lambda::Function": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}",
    }
    if attribute is None:
        # Ref: names for buckets, log groups, roles and keys; ARNs for the rest.
        names = (
            "AWS::S3::Bucket",
            "AWS::Logs::LogGroup",
            "AWS::IAM::Role",
            "AWS::KMS::Key",
            "AWS::ECS::Cluster",
        )
        if kind in names:
            return name
        return arns.get(kind, name)
    if attribute == "Arn" and kind in arns:
        return arns[kind]
    return f"{name}-{attribute.lower()}"


def _resolve(value: Any, kinds: dict[str, str]) -> Any:
    if isinstance(value, list):
        return [_resolve(item, kinds) for item in value]
    if not isinstance(value, dict):
        return value
    if "Ref" in value:
        target = value["Ref"]
        pseudo = {
            "AWS::Partition": "aws",
            "AWS::Region": REGION,
            "AWS::AccountId": ACCOUNT,
            "AWS::URLSuffix": "amazonaws.com",
        }
        return pseudo.get(target) or _placeholder(target, kinds.get(target, ""), None)
    if "Fn::GetAtt" in value:
        target, attribute = value["Fn::GetAtt"]
        return _placeholder(target, kinds.get(target, ""), attribute)
    if "Fn::Join" in value:
        delimiter, parts = value["Fn::Join"]
        return delimiter.join(str(_resolve(part, kinds)) for part in parts)
    if "Fn::Select" in value:
        index, source = value["Fn::Select"]
        items = _resolve(source, kinds)
        return items[int(index)]
    if "Fn::Split" in value:
        delimiter, text = value["Fn::Split"]
        return str(_resolve(text, kinds)).split(delimiter)
    if "Fn::Sub" in value:
        return concrete(value, {})
    return {key: _resolve(item, kinds) for key, item in value.items()}


def policies(result: Synth) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every identity policy in the template: (where it is, the document with placeholders)."""
    kinds = {logical_id: r["Type"] for logical_id, r in result.template["Resources"].items()}
    for logical_id, resource in result.template["Resources"].items():
        properties = resource.get("Properties", {})
        if resource["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            yield logical_id, _resolve(properties["PolicyDocument"], kinds)
        if resource["Type"] == "AWS::IAM::Role":
            for inline in properties.get("Policies", []):
                where = f"{logical_id}/{inline['PolicyName']}"
                yield where, _resolve(inline["PolicyDocument"], kinds)


def allow_statements(result: Synth) -> Iterator[tuple[str, dict[str, Any]]]:
    for where, document in policies(result):
        for statement in document["Statement"]:
            if statement["Effect"] == "Allow":
                yield where, statement


def actions(statement: dict[str, Any]) -> list[str]:
    action = statement["Action"]
    return [action] if isinstance(action, str) else list(action)


def resources(statement: dict[str, Any]) -> list[str]:
    resource = statement["Resource"]
    return [resource] if isinstance(resource, str) else list(resource)


@pytest.mark.parametrize("variant", ["default", "scoped"])
def test_no_policy_grants_an_action_wildcard(variant: str, request: pytest.FixtureRequest) -> None:
    result: Synth = request.getfixturevalue(variant)
    granted = [
        (where, action)
        for where, statement in allow_statements(result)
        for action in actions(statement)
        if action == "*" or action.endswith(":*")
    ]
    assert granted == []
    assert list(policies(result)), "no policies found: the test would prove nothing"


def task_role_statements(result: Synth) -> list[dict[str, Any]]:
    return [
        statement
        for where, statement in allow_statements(result)
        if where.startswith("QueryProcessorTaskDefinitionTaskRole")
    ]


def test_task_role_reads_only_the_input_and_writes_only_the_output(default: Synth) -> None:
    statements = task_role_statements(default)
    s3_grants = [
        (a, r) for s in statements for a in actions(s) if a.startswith("s3:") for r in resources(s)
    ]
    assert s3_grants, "the task role has no S3 grants"
    input_bucket = next(r for a, r in s3_grants if a == "s3:ListBucket" and "input" in r.lower())
    for action, resource in s3_grants:
        assert action in READ_ACTIONS | WRITE_ACTIONS, action
        if action in WRITE_ACTIONS:
            assert "output" in resource.lower(), (action, resource)
            assert not resource.startswith(input_bucket), (action, resource)


def test_scoped_task_role_reads_only_the_input_prefixes(scoped: Synth) -> None:
    statements = task_role_statements(scoped)
    reads = sorted(
        r
        for s in statements
        if "s3:GetObject" in actions(s) and not set(actions(s)) & WRITE_ACTIONS
        for r in resources(s)
    )
    assert reads == ["arn:aws:s3:::corp-lake/ref/nation/*", "arn:aws:s3:::corp-lake/sales/*"]
    writes = sorted(r for s in statements if set(actions(s)) & WRITE_ACTIONS for r in resources(s))
    assert writes == ["arn:aws:s3:::corp-results/team-a/*"]
    listing = [
        s
        for s in statements
        if "s3:ListBucket" in actions(s) and resources(s) == ["arn:aws:s3:::corp-lake"]
    ]
    assert listing, "the task role cannot list the input bucket"
    for statement in listing:
        prefixes = statement["Condition"]["StringLike"]["s3:prefix"]
        assert sorted(prefixes) == ["ref/nation/*", "sales/*"]


# Findings of parliament that are wrong about AWS, each with why.
PARLIAMENT_FALSE_POSITIVES = {
    # DescribeExecution accepts a standard execution ARN or an express one; parliament wants
    # both formats in every statement. This state machine is STANDARD: granting express
    # executions too would only widen the policy.
    ("RESOURCE_MISMATCH", "states:DescribeExecution", "arn:*:states:*:*:express:*:*:*"),
}


def _parliament_findings(document: dict[str, Any]) -> list[tuple[str, Any]]:
    found = []
    for finding in analyze_policy_string(json.dumps(document)).findings:
        details = finding.detail if isinstance(finding.detail, list) else [finding.detail]
        for detail in details:
            key = (
                (finding.issue, detail.get("action"), detail.get("required_format"))
                if isinstance(detail, dict)
                else (finding.issue, detail, None)
            )
            if key not in PARLIAMENT_FALSE_POSITIVES:
                found.append((finding.issue, detail))
    return found


def test_state_machine_watches_only_its_own_clusters_tasks(default: Synth) -> None:
    watching = [
        statement
        for where, statement in allow_statements(default)
        if where.startswith("QueryProcessorStateMachineRole")
        and set(actions(statement)) & {"ecs:StopTask", "ecs:DescribeTasks"}
    ]
    assert len(watching) == 1
    [resource] = resources(watching[0])
    cluster = next(
        k for k, r in default.template["Resources"].items() if r["Type"] == "AWS::ECS::Cluster"
    ).lower()
    assert resource == f"arn:aws:ecs:{REGION}:{ACCOUNT}:task/{cluster}/*"


@pytest.mark.parametrize("variant", ["default", "scoped"])
def test_parliament_finds_nothing_in_any_policy(
    variant: str, request: pytest.FixtureRequest
) -> None:
    result: Synth = request.getfixturevalue(variant)
    findings = [
        (where, finding)
        for where, document in policies(result)
        for finding in _parliament_findings(document)
    ]
    assert findings == []
