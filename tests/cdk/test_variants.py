"""QueryProcessor with existing resources, every prop changed, NAT and a new file system."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aws_cdk.assertions import Match

from tests.cdk.support import Synth, states_of, synth
from tests.cdk.variants import (
    EXISTING_FS_SG,
    EXISTING_PROPS,
    EXISTING_SUBNETS,
    NAT_EFS_PROPS,
    existing_resources,
)

TASK_SG = "QueryProcessorTaskSecurityGroup6EF2083C"


@pytest.fixture(scope="module")
def existing(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    return synth(tmp_path_factory.mktemp("existing"), existing=existing_resources, **EXISTING_PROPS)


@pytest.fixture(scope="module")
def nat_efs(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    return synth(tmp_path_factory.mktemp("nat-efs"), **NAT_EFS_PROPS)


def task_role_statements(synthesized: Synth) -> list[dict[str, Any]]:
    (document,) = (
        resource["Properties"]["PolicyDocument"]
        for logical_id, resource in synthesized.resources("AWS::IAM::Policy").items()
        if logical_id.startswith("QueryProcessorTaskDefinitionTaskRoleDefaultPolicy")
    )
    return list(document["Statement"])


def s3_arn(text: str) -> dict[str, Any]:
    return {"Fn::Join": ["", ["arn:", {"Ref": "AWS::Partition"}, f":s3:::{text}"]]}


# ---------------------------------------------------------------------------- existing


def test_creates_no_network_buckets_or_data_key_when_given_existing_ones(
    existing: Synth,
) -> None:
    for resource_type in (
        "AWS::EC2::VPC",
        "AWS::EC2::Subnet",
        "AWS::EC2::VPCEndpoint",
        "AWS::EC2::FlowLog",
        "AWS::S3::Bucket",
        "AWS::EFS::FileSystem",
        "Custom::AWS",
    ):
        assert existing.resources(resource_type) == {}, resource_type
    assert len(existing.resources("AWS::KMS::Key")) == 1
    assert existing.processor.data_key is None
    assert existing.processor.input_bucket.bucket_name == "corp-lake"


def test_tasks_run_in_the_selected_subnets_with_https_egress_only(existing: Synth) -> None:
    definition = existing.definition()
    for name in ("Plan", "RunShardSpot", "RunShardOnDemand", "Finalize"):
        network = states_of(definition)[name]["Parameters"]["NetworkConfiguration"]
        assert network["AwsvpcConfiguration"]["Subnets"] == EXISTING_SUBNETS
    egress = sorted(
        (
            rule["Properties"]["FromPort"],
            json.dumps(rule["Properties"].get("DestinationSecurityGroupId")),
        )
        for rule in existing.resources("AWS::EC2::SecurityGroupEgress").values()
    )
    assert egress == [(2049, '"sg-0123456789abcdef0"')]
    task_group = existing.template["Resources"][TASK_SG]["Properties"]
    assert task_group["SecurityGroupEgress"] == [
        {
            "CidrIp": "0.0.0.0/0",
            "Description": "HTTPS to AWS APIs",
            "FromPort": 443,
            "IpProtocol": "tcp",
            "ToPort": 443,
        }
    ]


def test_reads_only_the_input_prefixes_and_lists_only_them(existing: Synth) -> None:
    statements = task_role_statements(existing)
    assert statements[0] == {
        "Action": "s3:GetObject",
        "Effect": "Allow",
        "Resource": [s3_arn("corp-lake/sales/*"), s3_arn("corp-lake/ref/nation/*")],
    }
    assert statements[1] == {
        "Action": "s3:ListBucket",
        "Condition": {"StringLike": {"s3:prefix": ["sales/*", "ref/nation/*"]}},
        "Effect": "Allow",
        "Resource": s3_arn("corp-lake"),
    }


def test_writes_only_under_the_output_scope(existing: Synth) -> None:
    statements = task_role_statements(existing)
    assert statements[2] == {
        "Action": [
            "s3:GetObject",
            "s3:PutObject",
            "s3:DeleteObject",
            "s3:AbortMultipartUpload",
        ],
        "Effect": "Allow",
        "Resource": s3_arn("corp-results/team-a/*"),
    }
    assert statements[3] == {
        "Action": "s3:ListBucket",
        "Condition": {"StringLike": {"s3:prefix": ["team-a/*"]}},
        "Effect": "Allow",
        "Resource": s3_arn("corp-results"),
    }
    assert not any("kms:" in json.dumps(statement["Action"]) for statement in statements[:4])


def test_rejects_jobs_that_would_write_outside_the_output_scope(existing: Synth) -> None:
    validate = states_of(existing.definition())["ValidateInput"]
    rule = next(c for c in validate["Choices"] if c["Next"] == "RejectOutputPrefix")
    assert {"Not": {"Variable": "$.output_prefix", "StringMatches": "team-a/*"}} in rule["Or"]
    fail = states_of(existing.definition())["RejectOutputPrefix"]
    assert "under 'team-a/'" in fail["Cause"]


def test_state_machine_reads_summaries_only_under_the_output_scope(existing: Synth) -> None:
    (document,) = (
        resource["Properties"]["PolicyDocument"]
        for logical_id, resource in existing.resources("AWS::IAM::Policy").items()
        if logical_id.startswith("QueryProcessorStateMachineRoleDefaultPolicy")
    )
    resources = [s["Resource"] for s in document["Statement"] if s["Action"] == "s3:GetObject"]
    assert s3_arn("corp-results/team-a/*/_ecs_query/*/summary.json") in resources


def test_task_definition_follows_the_size_and_architecture_props(existing: Synth) -> None:
    existing.assertions.has_resource_properties(
        "AWS::ECS::TaskDefinition",
        {
            "Cpu": "2048",
            "Memory": "8192",
            "EphemeralStorage": {"SizeInGiB": 50},
            "RuntimePlatform": {"CpuArchitecture": "ARM64", "OperatingSystemFamily": "LINUX"},
        },
    )


def test_limits_reach_the_worker_and_the_map(existing: Synth) -> None:
    environment = {i["Name"]: i["Value"] for i in existing.container_definition()["Environment"]}
    assert environment["ECS_QUERY_MAX_CONCURRENCY"] == "25"
    assert environment["ECS_QUERY_TOLERATED_FAILURES"] == "3"
    states = states_of(existing.definition())
    assert states["RunShards"]["ToleratedFailureCount"] == 3
    assert states["PrepareEnvironment"]["Parameters"]["env"]["ECS_QUERY_MAX_CONCURRENCY"] == "25"
    finalize = states["Finalize"]["Parameters"]["Overrides"]["ContainerOverrides"][0]
    assert {"Name": "ECS_QUERY_TOLERATED_FAILURES", "Value": "3"} in finalize["Environment"]
    assert existing.definition()["TimeoutSeconds"] == 7200


def test_logs_are_kept_for_the_given_retention(existing: Synth) -> None:
    groups = existing.resources("AWS::Logs::LogGroup").values()
    assert [group["Properties"]["RetentionInDays"] for group in groups] == [7, 7]


def test_subscribes_the_alarm_email(existing: Synth) -> None:
    existing.assertions.has_resource_properties(
        "AWS::SNS::Subscription", {"Protocol": "email", "Endpoint": "ops@example.com"}
    )


def test_mounts_the_existing_file_system_through_a_new_access_point(existing: Synth) -> None:
    existing.assertions.has_resource_properties(
        "AWS::EFS::AccessPoint",
        {
            "FileSystemId": "fs-0123456789abcdef0",
            "PosixUser": {"Uid": "1000", "Gid": "1000"},
            "RootDirectory": {
                "Path": "/ecs-query",
                "CreationInfo": {"OwnerUid": "1000", "OwnerGid": "1000", "Permissions": "750"},
            },
        },
    )
    existing.assertions.has_resource_properties(
        "AWS::EC2::SecurityGroupIngress",
        {
            "GroupId": EXISTING_FS_SG,
            "SourceSecurityGroupId": {"Fn::GetAtt": [TASK_SG, "GroupId"]},
            "FromPort": 2049,
            "ToPort": 2049,
        },
    )


# ---------------------------------------------------------------------------- NAT + EFS


def test_nat_gateways_give_private_subnets_with_egress_and_no_interface_endpoints(
    nat_efs: Synth,
) -> None:
    assert len(nat_efs.resources("AWS::EC2::NatGateway")) == 1
    assert len(nat_efs.resources("AWS::EC2::Subnet")) == 4
    endpoints = nat_efs.resources("AWS::EC2::VPCEndpoint").values()
    assert [endpoint["Properties"]["VpcEndpointType"] for endpoint in endpoints] == ["Gateway"]
    assert nat_efs.resources("Custom::AWS") == {}
    network = states_of(nat_efs.definition())["Plan"]["Parameters"]["NetworkConfiguration"]
    assert all("privatesubnet" in s for s in network["AwsvpcConfiguration"]["Subnets"])
    task_group = nat_efs.template["Resources"][TASK_SG]["Properties"]
    assert task_group["SecurityGroupEgress"] == [
        {
            "CidrIp": "0.0.0.0/0",
            "Description": "HTTPS to AWS APIs through NAT",
            "FromPort": 443,
            "IpProtocol": "tcp",
            "ToPort": 443,
        }
    ]


def test_new_file_system_is_encrypted_and_only_tasks_reach_it(nat_efs: Synth) -> None:
    file_system = nat_efs.one("AWS::EFS::FileSystem")["Properties"]
    assert file_system["Encrypted"] is True
    assert file_system["KmsKeyId"] == {"Fn::GetAtt": ["QueryProcessorDataKey2174CC8B", "Arn"]}
    assert file_system["ThroughputMode"] == "elastic"
    allow, deny = file_system["FileSystemPolicy"]["Statement"]
    assert allow["Principal"] == {
        "AWS": {"Fn::GetAtt": ["QueryProcessorTaskDefinitionTaskRole86C2C578", "Arn"]}
    }
    assert allow["Action"] == ["elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite"]
    assert deny["Effect"] == "Deny"
    assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    nat_efs.assertions.has_resource_properties(
        "AWS::EC2::SecurityGroupIngress",
        {
            "GroupId": {"Fn::GetAtt": ["QueryProcessorFileSystemSecurityGroupE6E6A847", "GroupId"]},
            "SourceSecurityGroupId": {"Fn::GetAtt": [TASK_SG, "GroupId"]},
            "FromPort": 2049,
            "ToPort": 2049,
        },
    )
    nat_efs.assertions.resource_count_is("AWS::EFS::MountTarget", 2)


def test_file_system_keeps_its_logical_id(nat_efs: Synth) -> None:
    assert nat_efs.logical_id(nat_efs.processor.file_system) == "QueryProcessorFileSystem61140F9E"
    assert nat_efs.logical_id(nat_efs.processor.access_point) == "QueryProcessorAccessPoint81A88FE1"


def test_tasks_mount_the_file_system_over_tls_with_iam_and_spill_there(nat_efs: Synth) -> None:
    nat_efs.assertions.has_resource_properties(
        "AWS::ECS::TaskDefinition",
        {
            "Volumes": Match.array_with(
                [
                    {
                        "Name": "efs",
                        "EFSVolumeConfiguration": {
                            "FilesystemId": {"Ref": "QueryProcessorFileSystem61140F9E"},
                            "TransitEncryption": "ENABLED",
                            "AuthorizationConfig": {
                                "AccessPointId": {"Ref": "QueryProcessorAccessPoint81A88FE1"},
                                "IAM": "ENABLED",
                            },
                        },
                    }
                ]
            )
        },
    )
    container = nat_efs.container_definition()
    assert {"ContainerPath": "/mnt/ecs-query", "ReadOnly": False, "SourceVolume": "efs"} in (
        container["MountPoints"]
    )
    environment = {item["Name"]: item["Value"] for item in container["Environment"]}
    assert environment["ECS_QUERY_SPILL_DIR"] == "/mnt/ecs-query/spill"
    actions = [s["Action"] for s in task_role_statements(nat_efs)]
    assert ["elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite"] in actions
