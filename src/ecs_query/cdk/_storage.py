"""Where jobs read and write: S3 buckets, their keys and permissions, and the optional EFS.

New buckets are KMS-encrypted with the construct's data key (S3 Bucket Keys keep KMS request
costs low), TLS-only, private, versioned, and log their access to a logs bucket. Task-role
permissions are written out by hand rather than with ``grant_read``: reads are limited to the
input prefixes, writes to the output scope, and ``s3:ListBucket`` carries an ``s3:prefix``
condition so that listing is scoped as tightly as reading.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import aws_cdk as cdk
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_efs as efs
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from constructs import Construct

from ecs_query.cdk._network import NFS

# The container user of the bundled image; the access point maps every client to it.
CONTAINER_UID: Final = 1000
CONTAINER_GID: Final = 1000
EFS_ROOT: Final = "/ecs-query"
EFS_MOUNT_PATH: Final = "/mnt/ecs-query"
EFS_SPILL_DIR: Final = f"{EFS_MOUNT_PATH}/spill"

# Reading: objects and the listing of their prefix. Writing: the worker stages attempt files,
# moves them into place (copy + delete) and commits a manifest, all under the output prefix.
_READ_OBJECT_ACTIONS: Final = ("s3:GetObject",)
_WRITE_OBJECT_ACTIONS: Final = (
    "s3:GetObject",
    "s3:PutObject",
    "s3:DeleteObject",
    "s3:AbortMultipartUpload",
)


def new_key(scope: Construct, construct_id: str, description: str) -> kms.Key:
    """A customer managed key with yearly rotation, kept when the stack is deleted."""
    return kms.Key(
        scope,
        construct_id,
        description=description,
        enable_key_rotation=True,
        removal_policy=cdk.RemovalPolicy.RETAIN,
    )


def new_access_logs_bucket(scope: Construct) -> s3.Bucket:
    """The target of the data buckets' server access logs (S3-managed keys: a log target
    cannot use SSE-KMS)."""
    return s3.Bucket(
        scope,
        "AccessLogsBucket",
        encryption=s3.BucketEncryption.S3_MANAGED,
        enforce_ssl=True,
        block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
        object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
        versioned=True,
        removal_policy=cdk.RemovalPolicy.RETAIN,
    )


def new_data_bucket(
    scope: Construct, construct_id: str, *, key: kms.IKey, access_logs: s3.IBucket, log_prefix: str
) -> s3.Bucket:
    """An input or output bucket: encrypted, TLS-only, private, versioned, access-logged."""
    return s3.Bucket(
        scope,
        construct_id,
        encryption=s3.BucketEncryption.KMS,
        encryption_key=key,
        bucket_key_enabled=True,
        enforce_ssl=True,
        block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
        object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
        versioned=True,
        server_access_logs_bucket=access_logs,
        server_access_logs_prefix=log_prefix,
        removal_policy=cdk.RemovalPolicy.RETAIN,
    )


def object_arns(bucket: s3.IBucket, prefixes: Sequence[str] | None) -> list[str]:
    """Object ARNs under each prefix, or every object of the bucket when prefixes is None."""
    if prefixes is None:
        return [bucket.arn_for_objects("*")]
    return [bucket.arn_for_objects(f"{prefix}*") for prefix in prefixes]


def grant_read_prefixes(
    grantee: iam.IGrantable, bucket: s3.IBucket, prefixes: Sequence[str] | None
) -> None:
    """Read-only access: GetObject under the prefixes and ListBucket limited to them."""
    _grant_prefixes(grantee, bucket, prefixes, _READ_OBJECT_ACTIONS)
    if bucket.encryption_key is not None:
        grantee.grant_principal.add_to_principal_policy(
            iam.PolicyStatement(actions=["kms:Decrypt"], resources=[bucket.encryption_key.key_arn])
        )


def grant_write_prefix(grantee: iam.IGrantable, bucket: s3.IBucket, prefix: str | None) -> None:
    """Read and write under the output prefix: stage, move, delete, commit."""
    prefixes = None if prefix is None else [prefix]
    _grant_prefixes(grantee, bucket, prefixes, _WRITE_OBJECT_ACTIONS)
    if bucket.encryption_key is not None:
        grantee.grant_principal.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["kms:Decrypt", "kms:GenerateDataKey"],
                resources=[bucket.encryption_key.key_arn],
            )
        )


def _grant_prefixes(
    grantee: iam.IGrantable,
    bucket: s3.IBucket,
    prefixes: Sequence[str] | None,
    actions: Sequence[str],
) -> None:
    principal = grantee.grant_principal
    principal.add_to_principal_policy(
        iam.PolicyStatement(actions=list(actions), resources=object_arns(bucket, prefixes))
    )
    listing = iam.PolicyStatement(actions=["s3:ListBucket"], resources=[bucket.bucket_arn])
    if prefixes is not None:
        listing.add_condition("StringLike", {"s3:prefix": [f"{p}*" for p in prefixes]})
    principal.add_to_principal_policy(listing)


def new_file_system(
    scope: Construct,
    *,
    vpc: ec2.IVpc,
    subnets: ec2.SubnetSelection,
    key: kms.IKey,
    client: iam.IRole,
) -> efs.FileSystem:
    """An encrypted, elastic-throughput file system whose mount targets only tasks can reach,
    and whose policy lets only ``client`` mount and write, over TLS, through a mount target."""
    policy = iam.PolicyDocument(
        statements=[
            iam.PolicyStatement(
                sid="WorkerTasksOnly",
                principals=[iam.ArnPrincipal(client.role_arn)],
                actions=["elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite"],
                conditions={"Bool": {"elasticfilesystem:AccessedViaMountTarget": "true"}},
            ),
            iam.PolicyStatement(
                sid="TlsOnly",
                effect=iam.Effect.DENY,
                principals=[iam.AnyPrincipal()],
                actions=["*"],
                conditions={"Bool": {"aws:SecureTransport": "false"}},
            ),
        ]
    )
    security_group = ec2.SecurityGroup(
        scope,
        "FileSystemSecurityGroup",
        vpc=vpc,
        description="ecs-query file system: NFS from worker tasks only",
        allow_all_outbound=False,
    )
    return efs.FileSystem(
        scope,
        "FileSystem",
        vpc=vpc,
        vpc_subnets=subnets,
        encrypted=True,
        kms_key=key,
        security_group=security_group,
        throughput_mode=efs.ThroughputMode.ELASTIC,
        performance_mode=efs.PerformanceMode.GENERAL_PURPOSE,
        file_system_policy=policy,
        removal_policy=cdk.RemovalPolicy.RETAIN,
    )


def new_access_point(scope: Construct, file_system: efs.IFileSystem) -> efs.AccessPoint:
    """The only way tasks see the file system: as uid/gid 1000, rooted at /ecs-query."""
    return efs.AccessPoint(
        scope,
        "AccessPoint",
        file_system=file_system,
        path=EFS_ROOT,
        create_acl=efs.Acl(
            owner_uid=str(CONTAINER_UID), owner_gid=str(CONTAINER_GID), permissions="750"
        ),
        posix_user=efs.PosixUser(uid=str(CONTAINER_UID), gid=str(CONTAINER_GID)),
    )


def allow_nfs_from(file_system: efs.IFileSystem, task_security_group: ec2.ISecurityGroup) -> None:
    """NFS from the task security group to the file system, and nothing else."""
    task_security_group.connections.allow_to(
        file_system, NFS, "NFS from ecs-query worker tasks to the file system"
    )
