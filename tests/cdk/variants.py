"""Construct configurations the tests synthesize besides the default one."""

from __future__ import annotations

from typing import Any

import aws_cdk as cdk
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_efs as efs
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3

EXISTING_VPC_ID = "vpc-0123456789abcdef0"
EXISTING_SUBNETS = ["subnet-0aaa", "subnet-0bbb"]
EXISTING_FS_SG = "sg-0123456789abcdef0"


def existing_resources(stack: cdk.Stack) -> dict[str, Any]:
    """A VPC, two buckets and a file system that exist outside the stack."""
    vpc = ec2.Vpc.from_vpc_attributes(
        stack,
        "ExistingVpc",
        vpc_id=EXISTING_VPC_ID,
        availability_zones=["us-east-1a", "us-east-1b"],
        private_subnet_ids=EXISTING_SUBNETS,
        private_subnet_names=["Workers"],
    )
    file_system = efs.FileSystem.from_file_system_attributes(
        stack,
        "ExistingFileSystem",
        file_system_id="fs-0123456789abcdef0",
        security_group=ec2.SecurityGroup.from_security_group_id(
            stack, "ExistingFileSystemSg", EXISTING_FS_SG
        ),
    )
    return {
        "vpc": vpc,
        "subnet_selection": ec2.SubnetSelection(subnet_group_name="Workers"),
        "input_bucket": s3.Bucket.from_bucket_name(stack, "ExistingInput", "corp-lake"),
        "output_bucket": s3.Bucket.from_bucket_name(stack, "ExistingOutput", "corp-results"),
        "file_system": file_system,
    }


# Every prop that is not a resource, away from its default.
EXISTING_PROPS: dict[str, Any] = {
    "input_prefixes": ["sales/", "ref/nation/"],
    "output_prefix_scope": "team-a/",
    "cpu": 2048,
    "memory_limit_mib": 8192,
    "ephemeral_storage_gib": 50,
    "cpu_architecture": ecs.CpuArchitecture.ARM64,
    "max_concurrency": 25,
    "tolerated_shard_failures": 3,
    "job_timeout": cdk.Duration.hours(2),
    "log_retention": logs.RetentionDays.ONE_WEEK,
    "alarm_email": "ops@example.com",
}

# A new VPC with NAT instead of endpoints, and a new file system.
NAT_EFS_PROPS: dict[str, Any] = {"nat_gateways": 1, "efs": True}
