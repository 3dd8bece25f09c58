"""``QueryProcessor``: SQL jobs over S3 as sharded DuckDB tasks on Fargate and Fargate Spot."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, TypedDict

import aws_cdk as cdk
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_efs
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sns as sns
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from ecs_query.cdk import _compute, _findings, _monitoring, _network, _storage, _validation
from ecs_query.cdk import _workflow as workflow
from ecs_query.spec import DEFAULT_MAX_CONCURRENCY, DEFAULT_TARGET_SHARD_MIB, OutputFormat, Var

DEFAULT_CPU: Final = 1024
DEFAULT_MEMORY_LIMIT_MIB: Final = 4096
DEFAULT_NAT_GATEWAYS: Final = 0
DEFAULT_JOB_TIMEOUT: Final = cdk.Duration.hours(6)
DEFAULT_LOG_RETENTION: Final = logs.RetentionDays.ONE_MONTH
DEFAULT_TOLERATED_SHARD_FAILURES: Final = 0
_S3_ACCESS_LOGS_POLICY_FLAG: Final = "@aws-cdk/aws-s3:serverAccessLogsUseBucketPolicy"
_MAX_NAT_GATEWAYS: Final = 2  # one per AZ of the new VPC
_MAX_JOB_TIMEOUT_S: Final = 365 * 24 * 3600  # a standard execution runs at most a year


class QueryProcessorProps(TypedDict, total=False):
    """The keyword arguments of ``QueryProcessor``, for code that passes them along
    (``QueryProcessingStack``). Each is documented on ``QueryProcessor``."""

    vpc: ec2.IVpc
    subnet_selection: ec2.SubnetSelection
    nat_gateways: int
    input_bucket: s3.IBucket
    input_prefixes: Sequence[str]
    output_bucket: s3.IBucket
    output_prefix_scope: str
    image: ecs.ContainerImage
    cpu: int
    memory_limit_mib: int
    ephemeral_storage_gib: int
    cpu_architecture: ecs.CpuArchitecture
    efs: bool
    file_system: aws_efs.IFileSystem
    max_concurrency: int
    tolerated_shard_failures: int
    job_timeout: cdk.Duration
    log_retention: logs.RetentionDays
    alarm_email: str


class QueryProcessor(Construct):
    """Runs SQL jobs over data in S3 as sharded DuckDB tasks on Fargate Spot, with fallback to
    on-demand Fargate, orchestrated by a Step Functions state machine.

    Each execution of ``state_machine`` is one job: its input names the SQL, the input data and
    the output prefix (see docs/construct.md). Many jobs share one construct.

    :param vpc: The VPC to run tasks in. Default: - a new VPC with two AZs and isolated
        subnets, VPC endpoints for S3, ECR and CloudWatch Logs, and flow logs.
    :param subnet_selection: Where in ``vpc`` tasks run; only with ``vpc``. Default: - the
        VPC's private subnets (with egress if it has any, else isolated).
    :param nat_gateways: NAT gateways of the new VPC; only without ``vpc``. Default: 0 -
        isolated subnets, with interface endpoints instead of NAT.
    :param input_bucket: An existing bucket that jobs read. Default: - a new bucket
        (KMS-encrypted, TLS-only, private, versioned, access-logged).
    :param input_prefixes: The key prefixes of ``input_bucket`` jobs may read, each ending in
        '/'. Default: - the whole input bucket.
    :param output_bucket: An existing bucket that jobs write. Default: - a new bucket, like the
        input bucket.
    :param output_prefix_scope: The key prefix of ``output_bucket`` under which jobs may write,
        ending in '/'; every job's ``output_prefix`` must start with it. Default: - the whole
        output bucket.
    :param image: The worker image; it must run ``ecs-query worker``, as uid 1000, with
        ``/tmp`` declared as a volume. Default: - built from container/Dockerfile by the CDK
        CLI at deploy time.
    :param cpu: The task's cpu units when a job's plan does not size it (plan and finalize).
        Default: 1024 (1 vCPU).
    :param memory_limit_mib: The task's memory for plan and finalize, one of Fargate's pairs
        with ``cpu``. Default: 4096.
    :param ephemeral_storage_gib: Each task's local disk, 21 to 200 GiB. Default: - 20 GiB,
        Fargate's included storage.
    :param cpu_architecture: X86_64 or ARM64. Default: - X86_64.
    :param efs: Create an encrypted EFS file system mounted at /mnt/ecs-query, where tasks
        spill. Default: false - tasks spill to their ephemeral storage.
    :param file_system: An existing EFS file system to mount at /mnt/ecs-query instead of a new
        one. Default: - no file system, unless ``efs`` is true.
    :param max_concurrency: The most shards of one job that run at once. Default: 100.
    :param tolerated_shard_failures: Shards a job may lose and still commit the rest.
        Default: 0 - any lost shard fails the job.
    :param job_timeout: How long one job may run. Default: 6 hours.
    :param log_retention: How long task, state machine and flow logs are kept.
        Default: one month.
    :param alarm_email: An address subscribed to the alarm topic. Default: - no subscription.
    """

    #: The ECS cluster, with FARGATE and FARGATE_SPOT capacity providers.
    cluster: ecs.Cluster
    task_definition: ecs.FargateTaskDefinition
    #: The worker container of ``task_definition``.
    container: ecs.ContainerDefinition
    #: One execution per job.
    state_machine: sfn.StateMachine
    input_bucket: s3.IBucket
    output_bucket: s3.IBucket
    #: The worker's log group (JSON lines and EMF metrics).
    log_group: logs.LogGroup
    #: The state machine's log group (every state transition, without job data).
    state_machine_log_group: logs.LogGroup
    #: The mounted file system, or None when tasks spill to their own disk.
    file_system: aws_efs.IFileSystem | None
    access_point: aws_efs.AccessPoint | None
    alarm_topic: sns.Topic
    dashboard: cw.Dashboard
    vpc: ec2.IVpc
    task_security_group: ec2.SecurityGroup
    #: The input prefixes jobs may read, or None for the whole input bucket.
    input_prefixes: tuple[str, ...] | None
    #: The prefix jobs may write under, or None for the whole output bucket.
    output_prefix_scope: str | None
    #: Encrypts the log groups and the alarm topic.
    monitoring_key: kms.Key
    #: Encrypts the new buckets and the new file system; None when there are none.
    data_key: kms.Key | None

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        vpc: ec2.IVpc | None = None,
        subnet_selection: ec2.SubnetSelection | None = None,
        nat_gateways: int | None = None,
        input_bucket: s3.IBucket | None = None,
        input_prefixes: Sequence[str] | None = None,
        output_bucket: s3.IBucket | None = None,
        output_prefix_scope: str | None = None,
        image: ecs.ContainerImage | None = None,
        cpu: int | None = None,
        memory_limit_mib: int | None = None,
        ephemeral_storage_gib: int | None = None,
        cpu_architecture: ecs.CpuArchitecture | None = None,
        efs: bool | None = None,
        file_system: aws_efs.IFileSystem | None = None,
        max_concurrency: int | None = None,
        tolerated_shard_failures: int | None = None,
        job_timeout: cdk.Duration | None = None,
        log_retention: logs.RetentionDays | None = None,
        alarm_email: str | None = None,
    ) -> None:
        super().__init__(scope, id)
        # What the construct requires, whatever the app's flags: new buckets deliver access
        # logs through a bucket policy (the logs bucket has ACLs disabled).
        self.node.set_context(_S3_ACCESS_LOGS_POLICY_FLAG, True)

        # Resolve defaults in one place; None always means "not given".
        cpu = DEFAULT_CPU if cpu is None else cpu
        memory_limit_mib = (
            DEFAULT_MEMORY_LIMIT_MIB if memory_limit_mib is None else memory_limit_mib
        )
        cpu_architecture = (
            ecs.CpuArchitecture.X86_64 if cpu_architecture is None else cpu_architecture
        )
        create_file_system = False if efs is None else efs
        max_concurrency = DEFAULT_MAX_CONCURRENCY if max_concurrency is None else max_concurrency
        tolerated_shard_failures = (
            DEFAULT_TOLERATED_SHARD_FAILURES
            if tolerated_shard_failures is None
            else tolerated_shard_failures
        )
        job_timeout = DEFAULT_JOB_TIMEOUT if job_timeout is None else job_timeout
        log_retention = DEFAULT_LOG_RETENTION if log_retention is None else log_retention

        # Validate everything before creating anything; report every problem at once.
        problems = [
            *_validation.conflict_problems(
                "vpc", vpc is not None, "nat_gateways", nat_gateways is not None
            ),
            *_validation.requires_problems(
                "subnet_selection", subnet_selection is not None, "vpc", vpc is not None
            ),
            *_validation.conflict_problems(
                "file_system", file_system is not None, "efs", create_file_system
            ),
            *_validation.task_size_problems(cpu, memory_limit_mib),
            *_validation.ephemeral_storage_problems(ephemeral_storage_gib),
            *_validation.max_concurrency_problems(max_concurrency),
            *_validation.range_problems(
                "tolerated_shard_failures", tolerated_shard_failures, 0, 10_000
            ),
            *_validation.duration_problems("job_timeout", job_timeout, 60, _MAX_JOB_TIMEOUT_S),
            *_validation.email_problems(alarm_email),
        ]
        if nat_gateways is not None:
            problems += _validation.range_problems(
                "nat_gateways", nat_gateways, 0, _MAX_NAT_GATEWAYS, "one per AZ of the new VPC"
            )
        if input_prefixes is not None:
            problems += _validation.input_prefixes_problems(input_prefixes)
        if output_prefix_scope is not None:
            problems += _validation.prefix_problems("output_prefix_scope", output_prefix_scope)
        root = _compute.project_root() if image is None else None
        if image is None:
            problems += _compute.bundled_image_problems(root)
        if problems:
            raise _validation.PropsError("QueryProcessor", problems)
        nat_gateways = DEFAULT_NAT_GATEWAYS if nat_gateways is None else nat_gateways
        self.input_prefixes = None if input_prefixes is None else tuple(input_prefixes)
        self.output_prefix_scope = output_prefix_scope
        if image is None:
            assert root is not None, "checked with the other props"
            image = _compute.bundled_image(root, cpu_architecture)

        # Keys: one for logs and alarms, one for data at rest when this construct stores any.
        self.monitoring_key = _storage.new_key(
            self, "MonitoringKey", "ecs-query: log groups and the alarm topic"
        )
        _allow_monitoring_services(self.monitoring_key)
        needs_data_key = input_bucket is None or output_bucket is None or create_file_system
        self.data_key = (
            _storage.new_key(self, "DataKey", "ecs-query: buckets and file system")
            if needs_data_key
            else None
        )

        # Network: a new isolated VPC, or the user's.
        if vpc is None:
            network = _network.new_vpc(
                self,
                nat_gateways=nat_gateways,
                flow_log_key=self.monitoring_key,
                log_retention=log_retention,
            )
        else:
            network = _network.existing_vpc(self, vpc=vpc, subnet_selection=subnet_selection)
        self.vpc = network.vpc
        self.task_security_group = network.task_security_group

        # Buckets: existing ones as given, new ones secured and access-logged.
        access_logs = (
            _storage.new_access_logs_bucket(self)
            if input_bucket is None or output_bucket is None
            else None
        )
        self.input_bucket = (
            self._new_bucket("InputBucket", access_logs, "input/")
            if input_bucket is None
            else input_bucket
        )
        self.output_bucket = (
            self._new_bucket("OutputBucket", access_logs, "output/")
            if output_bucket is None
            else output_bucket
        )

        # Logs.
        self.log_group = logs.LogGroup(
            self, "LogGroup", encryption_key=self.monitoring_key, retention=log_retention
        )
        self.state_machine_log_group = logs.LogGroup(
            self,
            "StateMachineLogGroup",
            encryption_key=self.monitoring_key,
            retention=log_retention,
        )

        # Compute: the cluster, the task definition and the worker container.
        self.cluster = _compute.new_cluster(self, self.vpc)
        self.task_definition = _compute.new_task_definition(
            self,
            cpu=cpu,
            memory_limit_mib=memory_limit_mib,
            ephemeral_storage_gib=ephemeral_storage_gib,
            cpu_architecture=cpu_architecture,
        )
        mounts_file_system = create_file_system or file_system is not None
        environment = container_environment(
            max_concurrency=max_concurrency,
            tolerated_shard_failures=tolerated_shard_failures,
            spill_dir=_storage.EFS_SPILL_DIR if mounts_file_system else None,
        )
        self.container = _compute.add_worker_container(
            self.task_definition, image=image, environment=environment, log_group=self.log_group
        )
        task_role = self.task_definition.task_role
        _storage.grant_read_prefixes(task_role, self.input_bucket, input_prefixes)
        _storage.grant_write_prefix(task_role, self.output_bucket, output_prefix_scope)

        # Optional shared file system for spilling.
        self.file_system = None
        self.access_point = None
        if mounts_file_system:
            self._mount_file_system(file_system, network)

        # Orchestration.
        targets = workflow.WorkflowTargets(
            cluster=self.cluster,
            task_definition=self.task_definition,
            container=self.container,
            security_group=self.task_security_group,
            subnets=network.subnets,
            output_bucket=self.output_bucket,
            output_prefix_scope=output_prefix_scope,
            max_concurrency=max_concurrency,
            tolerated_shard_failures=tolerated_shard_failures,
        )
        states = Construct(self, "Workflow")
        self.state_machine = sfn.StateMachine(
            self,
            "StateMachine",
            definition_body=sfn.DefinitionBody.from_chainable(
                workflow.build_definition(states, targets)
            ),
            state_machine_type=sfn.StateMachineType.STANDARD,
            timeout=job_timeout,
            tracing_enabled=True,
            logs=sfn.LogOptions(
                destination=self.state_machine_log_group,
                level=sfn.LogLevel.ALL,
                include_execution_data=False,
            ),
        )
        if self.output_bucket.encryption_key is not None:
            self.state_machine.add_to_role_policy(
                iam.PolicyStatement(
                    actions=["kms:Decrypt"],
                    resources=[self.output_bucket.encryption_key.key_arn],
                )
            )

        # Monitoring.
        self.alarm_topic = _monitoring.new_alarm_topic(self, self.monitoring_key, alarm_email)
        _monitoring.add_alarms(self, self.state_machine, self.alarm_topic)
        spot_fallbacks = _monitoring.count_spot_fallbacks(self, self.state_machine_log_group)
        self.dashboard = _monitoring.new_dashboard(
            self,
            state_machine=self.state_machine,
            cluster=self.cluster,
            spot_fallbacks=spot_fallbacks,
        )

        # Findings of cdk-nag and checkov that are accepted, each with its reason.
        _findings.acknowledge(self)

    def grant_start_job(self, grantee: iam.IGrantable) -> iam.Grant:
        """Let ``grantee`` start jobs (executions) and follow them (DescribeExecution)."""
        grant = self.state_machine.grant_start_execution(grantee)
        self.state_machine.grant_execution(grantee, "states:DescribeExecution")
        return grant

    # ------------------------------------------------------------------------ helpers

    def _new_bucket(
        self, construct_id: str, access_logs: s3.IBucket | None, log_prefix: str
    ) -> s3.Bucket:
        assert self.data_key is not None and access_logs is not None
        return _storage.new_data_bucket(
            self, construct_id, key=self.data_key, access_logs=access_logs, log_prefix=log_prefix
        )

    def _mount_file_system(
        self, existing: aws_efs.IFileSystem | None, network: _network.Network
    ) -> None:
        if existing is None:
            assert self.data_key is not None
            file_system: aws_efs.IFileSystem = _storage.new_file_system(
                self,
                vpc=self.vpc,
                subnets=network.subnets,
                key=self.data_key,
                client=self.task_definition.task_role,
            )
        else:
            file_system = existing
        access_point = _storage.new_access_point(self, file_system)
        _storage.allow_nfs_from(file_system, self.task_security_group)
        _compute.mount_file_system(
            self.task_definition, self.container, file_system=file_system, access_point=access_point
        )
        file_system.grant(
            self.task_definition.task_role,
            "elasticfilesystem:ClientMount",
            "elasticfilesystem:ClientWrite",
        )
        self.file_system = file_system
        self.access_point = access_point


def container_environment(
    *, max_concurrency: int, tolerated_shard_failures: int, spill_dir: str | None
) -> dict[str, str]:
    """The task definition's defaults for the job contract; each job overrides its own values.

    Precedence, lowest first: these defaults, then the job's overrides from the state machine.
    Only settings that are not secret and not job-specific live here.
    """
    environment = {
        Var.INPUT_FORMAT.env: "",
        Var.MERGE_SQL.env: "",
        Var.OUTPUT_FORMAT.env: OutputFormat.PARQUET.value,
        Var.TARGET_SHARD_MIB.env: str(DEFAULT_TARGET_SHARD_MIB),
        Var.MAX_CONCURRENCY.env: str(max_concurrency),
        Var.TOLERATED_FAILURES.env: str(tolerated_shard_failures),
        Var.OVERWRITE.env: "false",
    }
    if spill_dir is not None:
        environment[Var.SPILL_DIR.env] = spill_dir
    return environment


def _allow_monitoring_services(key: kms.Key) -> None:
    """CloudWatch Logs encrypts log groups with the key; CloudWatch alarms publish to the
    encrypted topic. Both need the key policy's consent, limited to this account."""
    stack = cdk.Stack.of(key)
    key.add_to_resource_policy(
        iam.PolicyStatement(
            sid="AllowCloudWatchLogs",
            principals=[iam.ServicePrincipal(f"logs.{stack.region}.amazonaws.com")],
            actions=[
                "kms:Encrypt*",
                "kms:Decrypt*",
                "kms:ReEncrypt*",
                "kms:GenerateDataKey*",
                "kms:Describe*",
            ],
            resources=["*"],
            conditions={
                "ArnLike": {
                    "kms:EncryptionContext:aws:logs:arn": stack.format_arn(
                        service="logs",
                        resource="log-group",
                        resource_name="*",
                        arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME,
                    )
                }
            },
        )
    )
    key.add_to_resource_policy(
        iam.PolicyStatement(
            sid="AllowCloudWatchAlarms",
            principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
            actions=["kms:Decrypt", "kms:GenerateDataKey*"],
            resources=["*"],
            conditions={"StringEquals": {"aws:SourceAccount": stack.account}},
        )
    )
