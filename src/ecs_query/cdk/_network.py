"""The network the worker tasks run in: a VPC without internet access, and tight security groups.

A new VPC has two AZs and isolated subnets; tasks reach AWS through VPC endpoints: a gateway
endpoint for S3 (free) and interface endpoints for ECR (image pulls) and CloudWatch Logs (the
awslogs driver, which also carries the worker's metrics). Tasks need no STS endpoint: Fargate
hands them task-role credentials over the link-local credentials endpoint. Step Functions
starts tasks through the ECS API from outside the VPC and needs no endpoint either.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import aws_cdk as cdk
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import custom_resources as cr
from constructs import Construct

HTTPS: Final = ec2.Port.tcp(443)
PUBLIC_SUBNETS_WARNING: Final = "ecs-query:publicSubnets"
NFS: Final = ec2.Port.tcp(2049)

# Interface endpoints a Fargate task in an isolated subnet needs (platform 1.4.0): image
# manifest and auth (ecr.api), image layers index (ecr.dkr; the layers come from S3 through
# the gateway endpoint), and the awslogs driver (logs).
_INTERFACE_ENDPOINTS: Final = (
    ("EcrApiEndpoint", ec2.InterfaceVpcEndpointAwsService.ECR),
    ("EcrDockerEndpoint", ec2.InterfaceVpcEndpointAwsService.ECR_DOCKER),
    ("LogsEndpoint", ec2.InterfaceVpcEndpointAwsService.CLOUDWATCH_LOGS),
)


@dataclass(frozen=True)
class Network:
    vpc: ec2.IVpc
    subnets: ec2.SubnetSelection
    task_security_group: ec2.SecurityGroup
    endpoint_security_group: ec2.SecurityGroup | None


def new_vpc(
    scope: Construct,
    *,
    nat_gateways: int,
    flow_log_key: kms.IKey,
    log_retention: logs.RetentionDays,
) -> Network:
    """A two-AZ VPC with flow logs; isolated subnets and endpoints unless NAT is asked for."""
    if nat_gateways == 0:
        subnet_configuration = [
            ec2.SubnetConfiguration(
                name="Isolated", subnet_type=ec2.SubnetType.PRIVATE_ISOLATED, cidr_mask=20
            )
        ]
        subnet_type = ec2.SubnetType.PRIVATE_ISOLATED
    else:
        subnet_configuration = [
            ec2.SubnetConfiguration(name="Public", subnet_type=ec2.SubnetType.PUBLIC, cidr_mask=24),
            ec2.SubnetConfiguration(
                name="Private", subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS, cidr_mask=20
            ),
        ]
        subnet_type = ec2.SubnetType.PRIVATE_WITH_EGRESS
    subnets = ec2.SubnetSelection(subnet_type=subnet_type)
    vpc = ec2.Vpc(
        scope,
        "Vpc",
        max_azs=2,
        nat_gateways=nat_gateways,
        subnet_configuration=subnet_configuration,
        gateway_endpoints={
            "S3Endpoint": ec2.GatewayVpcEndpointOptions(
                service=ec2.GatewayVpcEndpointAwsService.S3, subnets=[subnets]
            )
        },
    )

    # Flow logs: every accepted and rejected flow, to a KMS-encrypted log group.
    flow_logs = logs.LogGroup(
        scope,
        "FlowLogGroup",
        encryption_key=flow_log_key,
        retention=log_retention,
    )
    vpc.add_flow_log(
        "FlowLog",
        destination=ec2.FlowLogDestination.to_cloud_watch_logs(flow_logs),
        traffic_type=ec2.FlowLogTrafficType.ALL,
    )

    task_sg = ec2.SecurityGroup(
        scope,
        "TaskSecurityGroup",
        vpc=vpc,
        description="ecs-query worker tasks: HTTPS to AWS endpoints only",
        allow_all_outbound=False,
    )
    if nat_gateways > 0:
        # AWS APIs are reached through NAT: HTTPS anywhere, nothing else.
        task_sg.add_egress_rule(ec2.Peer.any_ipv4(), HTTPS, "HTTPS to AWS APIs through NAT")
        return Network(vpc, subnets, task_sg, None)

    endpoint_sg = ec2.SecurityGroup(
        scope,
        "EndpointSecurityGroup",
        vpc=vpc,
        description="ecs-query VPC interface endpoints: HTTPS from worker tasks only",
        allow_all_outbound=False,
    )
    for endpoint_id, service in _INTERFACE_ENDPOINTS:
        vpc.add_interface_endpoint(
            endpoint_id,
            service=service,
            subnets=subnets,
            security_groups=[endpoint_sg],
            open=False,
            private_dns_enabled=True,
        )
    endpoint_sg.add_ingress_rule(task_sg, HTTPS, "HTTPS from ecs-query worker tasks")
    task_sg.add_egress_rule(endpoint_sg, HTTPS, "HTTPS to the VPC interface endpoints")
    task_sg.add_egress_rule(
        ec2.Peer.prefix_list(_s3_prefix_list_id(scope)),
        HTTPS,
        "HTTPS to Amazon S3 through the gateway endpoint",
    )
    return Network(vpc, subnets, task_sg, endpoint_sg)


def existing_vpc(
    scope: Construct, *, vpc: ec2.IVpc, subnet_selection: ec2.SubnetSelection | None
) -> Network:
    """The user's VPC: tasks go in its private subnets unless told otherwise.

    Its routes to ECR, CloudWatch Logs and S3 (NAT or endpoints) are the user's; tasks may send
    HTTPS anywhere those routes lead, and nothing else.
    """
    task_sg = ec2.SecurityGroup(
        scope,
        "TaskSecurityGroup",
        vpc=vpc,
        description="ecs-query worker tasks: HTTPS to AWS APIs only",
        allow_all_outbound=False,
    )
    task_sg.add_egress_rule(ec2.Peer.any_ipv4(), HTTPS, "HTTPS to AWS APIs")
    subnets = subnet_selection if subnet_selection is not None else ec2.SubnetSelection()
    selected = vpc.select_subnets(
        availability_zones=subnets.availability_zones,
        one_per_az=subnets.one_per_az,
        subnet_filters=subnets.subnet_filters,
        subnet_group_name=subnets.subnet_group_name,
        subnets=subnets.subnets,
        subnet_type=subnets.subnet_type,
    )
    if selected.has_public:
        cdk.Annotations.of(scope).add_warning_v2(
            PUBLIC_SUBNETS_WARNING,
            "subnet_selection selects public subnets, but tasks get no public IP there and "
            "so no route to ECR, CloudWatch Logs or S3 unless the VPC has endpoints for them; "
            "select private subnets instead",
        )
    return Network(vpc, subnets, task_sg, None)


def _s3_prefix_list_id(scope: Construct) -> str:
    """The id of the region's AWS-managed S3 prefix list, looked up once at deploy time.

    CloudFormation has no attribute for it and a synth-time lookup would tie the stack to one
    account and region, so a small custom resource calls DescribeManagedPrefixLists.
    """
    name = cdk.Fn.join(".", ["com.amazonaws", cdk.Aws.REGION, "s3"])
    call = cr.AwsSdkCall(
        service="EC2",
        action="describeManagedPrefixLists",
        parameters={"Filters": [{"Name": "prefix-list-name", "Values": [name]}]},
        physical_resource_id=cr.PhysicalResourceId.of(name),
        output_paths=["PrefixLists.0.PrefixListId"],
    )
    lookup = cr.AwsCustomResource(
        scope,
        "S3PrefixListLookup",
        on_create=call,
        on_update=call,
        install_latest_aws_sdk=False,
        policy=cr.AwsCustomResourcePolicy.from_sdk_calls(
            resources=cr.AwsCustomResourcePolicy.ANY_RESOURCE
        ),
    )
    return lookup.get_response_field("PrefixLists.0.PrefixListId")
