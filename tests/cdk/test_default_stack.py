"""The default QueryProcessingStack, resource by resource: what a user gets with no props."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aws_cdk as cdk
import pytest
from aws_cdk import aws_iam as iam
from aws_cdk.assertions import Match

from ecs_query.cdk import QueryProcessor
from tests.cdk.support import STACK_NAME, Synth, synth


@pytest.fixture(scope="module")
def default(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    def add_submitter(stack: cdk.Stack, processor: QueryProcessor) -> None:
        role = iam.Role(stack, "Submitter", assumed_by=iam.AccountRootPrincipal())
        processor.grant_start_job(role)

    return synth(tmp_path_factory.mktemp("default"), after=add_submitter)


def statements(default: Synth, policy_logical_prefix: str) -> list[dict[str, Any]]:
    policies = {
        logical_id: resource
        for logical_id, resource in default.resources("AWS::IAM::Policy").items()
        if logical_id.startswith(policy_logical_prefix)
    }
    assert len(policies) == 1, sorted(policies)
    document = next(iter(policies.values()))["Properties"]["PolicyDocument"]
    return list(document["Statement"])


def ref(logical_id: str) -> dict[str, Any]:
    return {"Ref": logical_id}


def arn_of(logical_id: str) -> dict[str, Any]:
    return {"Fn::GetAtt": [logical_id, "Arn"]}


def objects_of(logical_id: str, pattern: str = "/*") -> dict[str, Any]:
    return {"Fn::Join": ["", [arn_of(logical_id), pattern]]}


INPUT = "QueryProcessorInputBucket5D1E8AB0"
OUTPUT = "QueryProcessorOutputBucket99BD2063"
ACCESS_LOGS = "QueryProcessorAccessLogsBucket4362FC33"
DATA_KEY = "QueryProcessorDataKey2174CC8B"
MONITORING_KEY = "QueryProcessorMonitoringKey2716A255"
LOG_GROUP = "QueryProcessorLogGroupB3FA7BEA"
TASK_SG = "QueryProcessorTaskSecurityGroup6EF2083C"
ENDPOINT_SG = "QueryProcessorEndpointSecurityGroup3AF07BC1"


# ---------------------------------------------------------------------------- identity


def test_stateful_resources_keep_their_logical_ids(default: Synth) -> None:
    """A changed construct id replaces the resource; for a bucket that can lose data."""
    processor = default.processor
    assert {
        "input bucket": default.logical_id(processor.input_bucket),
        "output bucket": default.logical_id(processor.output_bucket),
        "access logs bucket": default.logical_id(processor.node.find_child("AccessLogsBucket")),
        "log group": default.logical_id(processor.log_group),
        "state machine log group": default.logical_id(processor.state_machine_log_group),
        "flow log group": default.logical_id(processor.node.find_child("FlowLogGroup")),
        "monitoring key": default.logical_id(processor.monitoring_key),
        "data key": default.logical_id(processor.data_key),
        "state machine": default.logical_id(processor.state_machine),
        "cluster": default.logical_id(processor.cluster),
        "vpc": default.logical_id(processor.vpc),
    } == {
        "input bucket": INPUT,
        "output bucket": OUTPUT,
        "access logs bucket": ACCESS_LOGS,
        "log group": LOG_GROUP,
        "state machine log group": "QueryProcessorStateMachineLogGroup752CF557",
        "flow log group": "QueryProcessorFlowLogGroup584A2F08",
        "monitoring key": MONITORING_KEY,
        "data key": DATA_KEY,
        "state machine": "QueryProcessorStateMachineF99D7C38",
        "cluster": "QueryProcessorCluster00BD810D",
        "vpc": "QueryProcessorVpc5D9E57F1",
    }


def test_stateful_resources_are_retained_when_the_stack_is_deleted(default: Synth) -> None:
    for resource_type in ("AWS::S3::Bucket", "AWS::KMS::Key", "AWS::Logs::LogGroup"):
        for logical_id, resource in default.resources(resource_type).items():
            assert resource.get("DeletionPolicy") == "Retain", logical_id
            assert resource.get("UpdateReplacePolicy") == "Retain", logical_id


# ---------------------------------------------------------------------------- network


def test_creates_a_two_az_vpc_with_isolated_subnets_and_no_internet_route(default: Synth) -> None:
    subnets = default.resources("AWS::EC2::Subnet")
    assert len(subnets) == 2
    assert {s["Properties"]["AvailabilityZone"]["Fn::Select"][0] for s in subnets.values()} == {
        0,
        1,
    }
    for subnet in subnets.values():
        assert subnet["Properties"]["MapPublicIpOnLaunch"] is False
    for resource_type in (
        "AWS::EC2::InternetGateway",
        "AWS::EC2::NatGateway",
        "AWS::EC2::EIP",
    ):
        assert default.resources(resource_type) == {}, resource_type
    routes = default.resources("AWS::EC2::Route")
    assert routes == {}


def test_creates_the_endpoints_tasks_need_and_no_others(default: Synth) -> None:
    endpoints = default.resources("AWS::EC2::VPCEndpoint").values()
    services = {}
    for endpoint in endpoints:
        properties = endpoint["Properties"]
        name = json.dumps(properties["ServiceName"])
        services[name.split(".")[-1].rstrip('"]}')] = properties
    assert set(services) == {"s3", "api", "dkr", "logs"}
    assert services["s3"]["VpcEndpointType"] == "Gateway"
    for service in ("api", "dkr", "logs"):
        assert services[service]["VpcEndpointType"] == "Interface"
        assert services[service]["PrivateDnsEnabled"] is True
        assert services[service]["SecurityGroupIds"] == [{"Fn::GetAtt": [ENDPOINT_SG, "GroupId"]}]


def test_task_security_group_allows_only_https_to_endpoints_and_s3(default: Synth) -> None:
    task_group = default.template["Resources"][TASK_SG]["Properties"]
    assert "SecurityGroupEgress" not in task_group
    assert "SecurityGroupIngress" not in task_group
    egress = [
        resource["Properties"]
        for resource in default.resources("AWS::EC2::SecurityGroupEgress").values()
        if resource["Properties"]["GroupId"] == {"Fn::GetAtt": [TASK_SG, "GroupId"]}
    ]
    destinations = sorted(
        (
            rule["IpProtocol"],
            rule["FromPort"],
            rule["ToPort"],
            next(
                iter(
                    sorted(
                        key
                        for key in rule
                        if key.startswith("Destination") or key.startswith("Cidr")
                    )
                )
            ),
        )
        for rule in egress
    )
    assert destinations == [
        ("tcp", 443, 443, "DestinationPrefixListId"),
        ("tcp", 443, 443, "DestinationSecurityGroupId"),
    ]
    prefix_list = next(rule for rule in egress if "DestinationPrefixListId" in rule)
    assert prefix_list["DestinationPrefixListId"]["Fn::GetAtt"][1] == "PrefixLists.0.PrefixListId"


def test_no_security_group_opens_all_traffic_to_the_internet(default: Synth) -> None:
    text = json.dumps(default.template)
    assert '"CidrIp": "0.0.0.0/0"' not in text
    assert '"IpProtocol": "-1"' not in text


def test_endpoints_accept_https_from_tasks_only(default: Synth) -> None:
    default.assertions.resource_properties_count_is(
        "AWS::EC2::SecurityGroupIngress", Match.any_value(), 1
    )
    default.assertions.has_resource_properties(
        "AWS::EC2::SecurityGroupIngress",
        {
            "GroupId": {"Fn::GetAtt": [ENDPOINT_SG, "GroupId"]},
            "SourceSecurityGroupId": {"Fn::GetAtt": [TASK_SG, "GroupId"]},
            "IpProtocol": "tcp",
            "FromPort": 443,
            "ToPort": 443,
        },
    )


def test_looks_up_the_regions_s3_prefix_list_at_deployment(default: Synth) -> None:
    lookup = default.one("Custom::AWS")["Properties"]
    create = json.dumps(lookup["Create"])
    assert "describeManagedPrefixLists" in create
    assert '"Fn::Join": [".", ["com.amazonaws", {"Ref": "AWS::Region"}, "s3"]]' in create


def test_logs_every_flow_of_the_vpc_to_an_encrypted_log_group(default: Synth) -> None:
    default.assertions.has_resource_properties(
        "AWS::EC2::FlowLog",
        {
            "ResourceType": "VPC",
            "TrafficType": "ALL",
            "LogDestinationType": "cloud-watch-logs",
            "LogGroupName": ref("QueryProcessorFlowLogGroup584A2F08"),
        },
    )


# ---------------------------------------------------------------------------- compute


def test_cluster_has_fargate_and_spot_capacity_and_container_insights(default: Synth) -> None:
    default.assertions.has_resource_properties(
        "AWS::ECS::Cluster",
        {"ClusterSettings": [{"Name": "containerInsights", "Value": "enabled"}]},
    )
    default.assertions.has_resource_properties(
        "AWS::ECS::ClusterCapacityProviderAssociations",
        {"CapacityProviders": ["FARGATE", "FARGATE_SPOT"]},
    )


def test_task_definition_is_a_one_vcpu_x86_fargate_task_by_default(default: Synth) -> None:
    default.assertions.has_resource_properties(
        "AWS::ECS::TaskDefinition",
        {
            "Cpu": "1024",
            "Memory": "4096",
            "NetworkMode": "awsvpc",
            "RequiresCompatibilities": ["FARGATE"],
            "RuntimePlatform": {"CpuArchitecture": "X86_64", "OperatingSystemFamily": "LINUX"},
            "EphemeralStorage": Match.absent(),
            "Volumes": [{"Name": "scratch"}],
        },
    )


def test_worker_container_runs_the_worker_command_as_uid_1000_read_only(default: Synth) -> None:
    container = default.container_definition()
    assert container["Name"] == "worker"
    assert container["Command"] == ["worker"]
    assert container["Essential"] is True
    assert container["StopTimeout"] == 120
    assert container["User"] == "1000:1000"
    assert container["ReadonlyRootFilesystem"] is True
    assert container["MountPoints"] == [
        {"ContainerPath": "/tmp", "ReadOnly": False, "SourceVolume": "scratch"}
    ]
    assert "EntryPoint" not in container  # the image's ENTRYPOINT ["ecs-query"]


def test_worker_environment_holds_the_contract_defaults_only(default: Synth) -> None:
    environment = {
        item["Name"]: item["Value"] for item in default.container_definition()["Environment"]
    }
    assert environment == {
        "ECS_QUERY_INPUT_FORMAT": "",
        "ECS_QUERY_MERGE_SQL": "",
        "ECS_QUERY_OUTPUT_FORMAT": "parquet",
        "ECS_QUERY_TARGET_SHARD_MIB": "256",
        "ECS_QUERY_MAX_CONCURRENCY": "100",
        "ECS_QUERY_TOLERATED_FAILURES": "0",
        "ECS_QUERY_OVERWRITE": "false",
    }


def test_worker_logs_go_to_the_encrypted_log_group(default: Synth) -> None:
    logging = default.container_definition()["LogConfiguration"]
    assert logging["LogDriver"] == "awslogs"
    assert logging["Options"]["awslogs-group"] == ref(LOG_GROUP)
    assert logging["Options"]["awslogs-stream-prefix"] == "ecs-query"


def test_image_is_built_from_the_project_dockerfile_for_x86(default: Synth) -> None:
    manifest = json.loads((default.outdir / f"{STACK_NAME}.assets.json").read_text())
    (image,) = manifest["dockerImages"].values()
    source = image["source"]
    assert source["dockerFile"] == "container/Dockerfile"
    assert source["platform"] == "linux/amd64"
    staged = default.outdir / source["directory"]
    files = sorted(str(path.relative_to(staged)) for path in staged.rglob("*") if path.is_file())
    assert "pyproject.toml" in files
    assert "container/Dockerfile" in files
    assert "src/ecs_query/worker.py" in files
    for left_out in (".venv", "node_modules", "tests", ".git", "src/ecs_query/cdk", "cdk.out"):
        assert not any(f == left_out or f.startswith(left_out + "/") for f in files), left_out
    assert not any("__pycache__" in f for f in files)


# ---------------------------------------------------------------------------- storage


@pytest.mark.parametrize(("logical_id", "log_prefix"), [(INPUT, "input/"), (OUTPUT, "output/")])
def test_data_buckets_are_encrypted_private_versioned_and_logged(
    default: Synth, logical_id: str, log_prefix: str
) -> None:
    bucket = default.template["Resources"][logical_id]["Properties"]
    assert bucket["BucketEncryption"] == {
        "ServerSideEncryptionConfiguration": [
            {
                "BucketKeyEnabled": True,
                "ServerSideEncryptionByDefault": {
                    "KMSMasterKeyID": arn_of(DATA_KEY),
                    "SSEAlgorithm": "aws:kms",
                },
            }
        ]
    }
    assert bucket["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    assert bucket["VersioningConfiguration"] == {"Status": "Enabled"}
    assert bucket["LoggingConfiguration"] == {
        "DestinationBucketName": ref(ACCESS_LOGS),
        "LogFilePrefix": log_prefix,
    }


@pytest.mark.parametrize("logical_id", [INPUT, OUTPUT, ACCESS_LOGS])
def test_every_bucket_refuses_requests_without_tls(default: Synth, logical_id: str) -> None:
    default.assertions.has_resource_properties(
        "AWS::S3::BucketPolicy",
        {
            "Bucket": ref(logical_id),
            "PolicyDocument": {
                "Statement": Match.array_with(
                    [
                        Match.object_like(
                            {
                                "Effect": "Deny",
                                "Action": "s3:*",
                                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                            }
                        )
                    ]
                )
            },
        },
    )


def test_access_logs_arrive_through_a_bucket_policy_not_acls(default: Synth) -> None:
    logs_bucket = default.template["Resources"][ACCESS_LOGS]["Properties"]
    assert "AccessControl" not in logs_bucket
    assert logs_bucket["OwnershipControls"] == {
        "Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]
    }
    default.assertions.has_resource_properties(
        "AWS::S3::BucketPolicy",
        {
            "Bucket": ref(ACCESS_LOGS),
            "PolicyDocument": {
                "Statement": Match.array_with(
                    [
                        Match.object_like(
                            {
                                "Effect": "Allow",
                                "Action": "s3:PutObject",
                                "Principal": {"Service": "logging.s3.amazonaws.com"},
                            }
                        )
                    ]
                )
            },
        },
    )


def test_keys_rotate(default: Synth) -> None:
    keys = default.resources("AWS::KMS::Key")
    assert len(keys) == 2
    for key in keys.values():
        assert key["Properties"]["EnableKeyRotation"] is True


def test_task_role_reads_input_and_writes_output_and_nothing_else(default: Synth) -> None:
    assert statements(default, "QueryProcessorTaskDefinitionTaskRoleDefaultPolicy") == [
        {"Action": "s3:GetObject", "Effect": "Allow", "Resource": objects_of(INPUT)},
        {"Action": "s3:ListBucket", "Effect": "Allow", "Resource": arn_of(INPUT)},
        {"Action": "kms:Decrypt", "Effect": "Allow", "Resource": arn_of(DATA_KEY)},
        {
            "Action": [
                "s3:GetObject",
                "s3:PutObject",
                "s3:DeleteObject",
                "s3:AbortMultipartUpload",
            ],
            "Effect": "Allow",
            "Resource": objects_of(OUTPUT),
        },
        {"Action": "s3:ListBucket", "Effect": "Allow", "Resource": arn_of(OUTPUT)},
        {
            "Action": ["kms:Decrypt", "kms:GenerateDataKey"],
            "Effect": "Allow",
            "Resource": arn_of(DATA_KEY),
        },
    ]


def test_no_file_system_by_default(default: Synth) -> None:
    assert default.resources("AWS::EFS::FileSystem") == {}
    assert default.processor.file_system is None


# ---------------------------------------------------------------------------- logs


def test_every_log_group_is_encrypted_with_the_monitoring_key_and_expires(default: Synth) -> None:
    groups = default.resources("AWS::Logs::LogGroup")
    assert len(groups) == 3
    for group in groups.values():
        assert group["Properties"]["KmsKeyId"] == arn_of(MONITORING_KEY)
        assert group["Properties"]["RetentionInDays"] == 30


def test_monitoring_key_lets_cloudwatch_logs_and_alarms_use_it(default: Synth) -> None:
    policy = default.template["Resources"][MONITORING_KEY]["Properties"]["KeyPolicy"]
    services = {
        json.dumps(statement["Principal"].get("Service")): statement
        for statement in policy["Statement"]
        if "Service" in statement["Principal"]
    }
    assert set(services) == {
        json.dumps({"Fn::Join": ["", ["logs.", {"Ref": "AWS::Region"}, ".amazonaws.com"]]}),
        '"cloudwatch.amazonaws.com"',
    }
    alarms = services['"cloudwatch.amazonaws.com"']
    assert alarms["Action"] == ["kms:Decrypt", "kms:GenerateDataKey*"]
    assert alarms["Condition"] == {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}


# ---------------------------------------------------------------------------- monitoring


def test_alarm_topic_is_encrypted_and_tls_only_without_subscribers(default: Synth) -> None:
    default.assertions.has_resource_properties(
        "AWS::SNS::Topic", {"KmsMasterKeyId": arn_of(MONITORING_KEY)}
    )
    default.assertions.has_resource_properties(
        "AWS::SNS::TopicPolicy",
        {
            "PolicyDocument": {
                "Statement": [
                    Match.object_like(
                        {
                            "Effect": "Deny",
                            "Action": "sns:Publish",
                            "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                        }
                    )
                ]
            }
        },
    )
    assert default.resources("AWS::SNS::Subscription") == {}


@pytest.mark.parametrize("metric", ["ExecutionsFailed", "ExecutionsTimedOut"])
def test_alarms_on_failed_and_timed_out_jobs(default: Synth, metric: str) -> None:
    default.assertions.has_resource_properties(
        "AWS::CloudWatch::Alarm",
        {
            "Namespace": "AWS/States",
            "MetricName": metric,
            "Statistic": "Sum",
            "Period": 300,
            "Threshold": 1,
            "ComparisonOperator": "GreaterThanOrEqualToThreshold",
            "TreatMissingData": "notBreaching",
            "AlarmActions": [ref("QueryProcessorAlarmTopic70402AD6")],
        },
    )


def test_counts_spot_fallbacks_from_the_state_machine_log(default: Synth) -> None:
    default.assertions.has_resource_properties(
        "AWS::Logs::MetricFilter",
        {
            "LogGroupName": ref("QueryProcessorStateMachineLogGroup752CF557"),
            "FilterPattern": (
                '{ ($.type = "PassStateEntered") && ($.details.name = "FallBackToOnDemand") }'
            ),
            "MetricTransformations": [
                {"MetricName": "SpotFallbacks", "MetricNamespace": "EcsQuery", "MetricValue": "1"}
            ],
        },
    )


def dashboard_body(default: Synth) -> str:
    body = default.one("AWS::CloudWatch::Dashboard")["Properties"]["DashboardBody"]
    return json.dumps(body)


@pytest.mark.parametrize(
    "expected",
    [
        # Step Functions
        '\\"AWS/States\\",\\"ExecutionsStarted\\"',
        '\\"AWS/States\\",\\"ExecutionsSucceeded\\"',
        '\\"AWS/States\\",\\"ExecutionsFailed\\"',
        '\\"AWS/States\\",\\"ExecutionsTimedOut\\"',
        # the worker's EMF metrics, by stage
        '\\"EcsQuery\\",\\"ShardsSucceeded\\",\\"Stage\\",\\"shard\\"',
        '\\"EcsQuery\\",\\"ShardsFailed\\",\\"Stage\\",\\"shard\\"',
        '\\"EcsQuery\\",\\"RowsOut\\",\\"Stage\\",\\"shard\\"',
        '\\"EcsQuery\\",\\"BytesOut\\",\\"Stage\\",\\"shard\\"',
        '\\"EcsQuery\\",\\"InputBytes\\",\\"Stage\\",\\"shard\\"',
        '\\"EcsQuery\\",\\"ShardDuration\\",\\"Stage\\",\\"shard\\"',
        '\\"EcsQuery\\",\\"JobsCommitted\\",\\"Stage\\",\\"finalize\\"',
        '\\"EcsQuery\\",\\"RowsCommitted\\",\\"Stage\\",\\"finalize\\"',
        '\\"EcsQuery\\",\\"StagesFailed\\",\\"Stage\\",\\"plan\\"',
        '\\"EcsQuery\\",\\"StagesFailed\\",\\"Stage\\",\\"finalize\\"',
        '\\"EcsQuery\\",\\"SpotFallbacks\\"',
        # Container Insights, by cluster
        '\\"ECS/ContainerInsights\\",\\"TaskCount\\",\\"ClusterName\\"',
        '\\"ECS/ContainerInsights\\",\\"CpuUtilized\\",\\"ClusterName\\"',
        '\\"ECS/ContainerInsights\\",\\"MemoryUtilized\\",\\"ClusterName\\"',
    ],
)
def test_dashboard_shows_jobs_shards_and_tasks(default: Synth, expected: str) -> None:
    assert expected in dashboard_body(default)


def test_dashboard_metrics_are_the_ones_the_worker_emits() -> None:
    from ecs_query import logs

    worker = (Path(__file__).resolve().parents[2] / "src/ecs_query/worker.py").read_text()
    assert logs.NAMESPACE == "EcsQuery"
    for name in (
        "ShardsSucceeded",
        "ShardsFailed",
        "RowsOut",
        "BytesOut",
        "InputBytes",
        "ShardDuration",
        "JobsCommitted",
        "RowsCommitted",
        "StagesFailed",
    ):
        assert f'"{name}"' in worker, name


# ---------------------------------------------------------------------------- reuse


def test_stack_outputs_name_what_a_user_needs(default: Synth) -> None:
    outputs = default.template["Outputs"]
    assert {name: output["Value"] for name, output in outputs.items()} == {
        "StateMachineArn": ref("QueryProcessorStateMachineF99D7C38"),
        "InputBucketName": ref(INPUT),
        "OutputBucketName": ref(OUTPUT),
        "ClusterName": ref("QueryProcessorCluster00BD810D"),
        "LogGroupName": ref(LOG_GROUP),
        "DashboardName": ref("QueryProcessorDashboard8C5A877D"),
    }


def test_grant_start_job_allows_starting_and_describing_executions_only(default: Synth) -> None:
    granted = statements(default, "SubmitterDefaultPolicy")
    assert [statement["Action"] for statement in granted] == [
        "states:StartExecution",
        "states:DescribeExecution",
    ]
    assert granted[0]["Resource"] == ref("QueryProcessorStateMachineF99D7C38")
    execution_arn = json.dumps(granted[1]["Resource"])
    assert ":execution:" in execution_arn
    assert "QueryProcessorStateMachineF99D7C38" in execution_arn


def test_public_attributes_expose_the_resources(default: Synth) -> None:
    processor = default.processor
    for name in (
        "cluster",
        "task_definition",
        "container",
        "state_machine",
        "input_bucket",
        "output_bucket",
        "log_group",
        "alarm_topic",
        "dashboard",
        "vpc",
        "task_security_group",
    ):
        assert getattr(processor, name) is not None, name
    assert processor.container.container_name == "worker"
