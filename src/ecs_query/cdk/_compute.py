"""The ECS side: a Fargate cluster with Spot, the worker task definition and its image."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Final

import aws_cdk as cdk
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecr_assets as ecr_assets
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_efs as efs
from aws_cdk import aws_logs as logs
from constructs import Construct

from ecs_query.cdk._storage import CONTAINER_GID, CONTAINER_UID, EFS_MOUNT_PATH

CONTAINER_NAME: Final = "worker"
COMMAND: Final = ("worker",)
# Fargate Spot gives SIGTERM and two minutes; the worker winds down well within that.
STOP_TIMEOUT: Final = cdk.Duration.seconds(120)
DOCKERFILE: Final = "container/Dockerfile"
SCRATCH_PATH: Final = "/tmp"  # noqa: S108 - a task-local volume, not a shared host /tmp
# Not part of the worker image: the build context is the repository root, so everything but
# the package's sources and build metadata stays out (the root .dockerignore says the same).
IMAGE_EXCLUDES: Final = (
    ".git",
    ".venv",
    ".venv-checkov",
    "node_modules",
    "cdk.out",
    "**/cdk.out",
    ".cache",
    ".demo",
    ".bench",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    "**/__pycache__",
    "*.egg-info",
    "src/*.egg-info",
    "src/ecs_query/cdk",
    "tests",
    "benchmarks",
    "examples",
    "docs",
    "build",
    "dist",
)


def project_root(module: Path | None = None) -> Path | None:
    """The source tree this package was loaded from, when it is one (an editable install):
    the folder three levels above ``src/ecs_query/cdk/``, holding the Dockerfile."""
    path = Path(__file__) if module is None else module
    root = path.resolve().parents[3]
    if (root / DOCKERFILE).is_file() and (root / "pyproject.toml").is_file():
        return root
    return None


def bundled_image_problems(root: Path | None) -> list[str]:
    if root is not None:
        return []
    return [
        f"image: not given, and the worker image is built from {DOCKERFILE} of the project's "
        "source tree, which this installation does not include; pass "
        "image=ecs.ContainerImage.from_registry(...) with a published worker image, or install "
        "the package from a clone of its repository"
    ]


def bundled_image(root: Path, architecture: ecs.CpuArchitecture) -> ecs.ContainerImage:
    """The worker image, built by the CDK CLI from container/Dockerfile at deploy time."""
    platform = (
        ecr_assets.Platform.LINUX_ARM64
        if architecture == ecs.CpuArchitecture.ARM64
        else ecr_assets.Platform.LINUX_AMD64
    )
    return ecs.ContainerImage.from_asset(
        str(root),
        file=DOCKERFILE,
        exclude=list(IMAGE_EXCLUDES),
        platform=platform,
    )


def new_cluster(scope: Construct, vpc: ec2.IVpc) -> ecs.Cluster:
    """FARGATE and FARGATE_SPOT capacity providers, Container Insights on."""
    return ecs.Cluster(
        scope,
        "Cluster",
        vpc=vpc,
        enable_fargate_capacity_providers=True,
        container_insights_v2=ecs.ContainerInsights.ENABLED,
    )


def new_task_definition(
    scope: Construct,
    *,
    cpu: int,
    memory_limit_mib: int,
    ephemeral_storage_gib: int | None,
    cpu_architecture: ecs.CpuArchitecture,
) -> ecs.FargateTaskDefinition:
    task_definition = ecs.FargateTaskDefinition(
        scope,
        "TaskDefinition",
        cpu=cpu,
        memory_limit_mib=memory_limit_mib,
        ephemeral_storage_gib=ephemeral_storage_gib,
        runtime_platform=ecs.RuntimePlatform(
            cpu_architecture=cpu_architecture,
            operating_system_family=ecs.OperatingSystemFamily.LINUX,
        ),
    )
    # The root file system is read-only; scratch files go to a task-local volume on the
    # task's ephemeral storage.
    task_definition.add_volume(name="scratch")
    return task_definition


def add_worker_container(
    task_definition: ecs.FargateTaskDefinition,
    *,
    image: ecs.ContainerImage,
    environment: Mapping[str, str],
    log_group: logs.ILogGroup,
) -> ecs.ContainerDefinition:
    container = task_definition.add_container(
        "Worker",
        container_name=CONTAINER_NAME,
        image=image,
        command=list(COMMAND),
        environment=dict(environment),
        essential=True,
        stop_timeout=STOP_TIMEOUT,
        user=f"{CONTAINER_UID}:{CONTAINER_GID}",
        readonly_root_filesystem=True,
        logging=ecs.LogDrivers.aws_logs(stream_prefix="ecs-query", log_group=log_group),
    )
    container.add_mount_points(
        ecs.MountPoint(source_volume="scratch", container_path=SCRATCH_PATH, read_only=False)
    )
    return container


def mount_file_system(
    task_definition: ecs.FargateTaskDefinition,
    container: ecs.ContainerDefinition,
    *,
    file_system: efs.IFileSystem,
    access_point: efs.IAccessPoint,
) -> None:
    """Mount the access point at /mnt/ecs-query over TLS, authorized by the task role."""
    task_definition.add_volume(
        name="efs",
        efs_volume_configuration=ecs.EfsVolumeConfiguration(
            file_system_id=file_system.file_system_id,
            transit_encryption="ENABLED",
            authorization_config=ecs.AuthorizationConfig(
                access_point_id=access_point.access_point_id, iam="ENABLED"
            ),
        ),
    )
    container.add_mount_points(
        ecs.MountPoint(source_volume="efs", container_path=EFS_MOUNT_PATH, read_only=False)
    )
