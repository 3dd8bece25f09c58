"""One "deployment" of a synthesized stack on this machine, and executions of its state machine.

``Orchestration`` starts moto in this process (``mock_aws`` with state machine execution on)
and a moto HTTP server on 127.0.0.1 that shares its backends: the interpreter's own AWS calls
stay in-process, worker processes reach S3 over HTTP. It then creates what the template
declares and the state machine touches (the two buckets, the cluster with its capacity
providers, the task definition, the worker log group), resolves the template's tokens to them,
creates the state machine from the resolved definition, and installs the moto adaptations with
a ``Fargate`` that runs each ECS task as a worker process.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from tests.e2e.fargate import Fargate
from tests.e2e.moto_adaptations import Adaptations, check_moto_version
from tests.e2e.stack import REGION, Resolver, Template, state_machine_definition
from tests.servers import TEST_CREDENTIALS, free_port

REPO_ROOT: Final = Path(__file__).resolve().parents[2]
DOCKERFILE: Final = REPO_ROOT / "container" / "Dockerfile"
ROLE_ARN: Final = "arn:aws:iam::123456789012:role/e2e-state-machine"
_TASK_DEFINITION_FIELDS: Final = (
    "Family",
    "Cpu",
    "Memory",
    "NetworkMode",
    "RequiresCompatibilities",
    "ContainerDefinitions",
    "Volumes",
    "RuntimePlatform",
    "EphemeralStorage",
)
# Keys whose values are free-form maps, kept as they are when converting to boto3's casing.
_OPAQUE_KEYS: Final = frozenset({"Options", "DockerLabels"})


def worker_entrypoint(dockerfile: Path = DOCKERFILE) -> list[str]:
    """The image's ENTRYPOINT, as a command on this machine.

    The image runs ``ecs-query`` (the console script of this package); here that is the script
    installed next to this Python, or ``python -m ecs_query`` when there is none.
    """
    entrypoint: list[str] | None = None
    for line in dockerfile.read_text().splitlines():
        if line.strip().startswith("ENTRYPOINT"):
            entrypoint = json.loads(line.strip()[len("ENTRYPOINT") :])
    if entrypoint != ["ecs-query"]:
        raise RuntimeError(
            f"{dockerfile} has ENTRYPOINT {entrypoint!r}; the e2e harness knows how to run "
            "['ecs-query'] only: update worker_entrypoint() in tests/e2e/harness.py"
        )
    script = Path(sys.executable).with_name("ecs-query")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "ecs_query"]


@dataclass
class Execution:
    """A finished execution: its status, error and cause, output and history."""

    arn: str
    name: str
    status: str
    error: str | None
    cause: str | None
    output: Any
    history: list[dict[str, Any]] = field(repr=False)

    def events(self, event_type: str) -> list[dict[str, Any]]:
        return [event for event in self.history if event["type"] == event_type]

    def states_entered(self) -> list[str]:
        return [
            event["stateEnteredEventDetails"]["name"]
            for event in self.history
            if "stateEnteredEventDetails" in event
        ]


class Orchestration:
    """moto, the stack's resources, the state machine and the Fargate stand-in."""

    def __init__(self, template: Template, work_dir: Path, *, time_scale: float = 0.01) -> None:
        check_moto_version()
        self.template = template
        self.work_dir = work_dir
        self.time_scale = time_scale
        self.stack = template.stack_name.lower()
        self.input_bucket = f"{self.stack}-input"
        self.output_bucket = f"{self.stack}-output"
        self.log_group = f"/{self.stack}/worker"
        self.cluster_name = f"{self.stack}-cluster"
        self._mock: Any = None
        self._server: Any = None
        self.fargate: Fargate | None = None
        self.adaptations: Adaptations | None = None
        self._log_levels: dict[str, int] = {}

    # ------------------------------------------------------------------------ life cycle

    def __enter__(self) -> Orchestration:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def start(self) -> None:
        import boto3
        from moto import mock_aws
        from moto.server import ThreadedMotoServer

        # The interpreter logs every caught error with a repr of the whole state machine.
        for name, level in (("werkzeug", logging.ERROR), ("moto", logging.CRITICAL)):
            self._log_levels[name] = logging.getLogger(name).level
            logging.getLogger(name).setLevel(level)
        self._mock = mock_aws(config={"stepfunctions": {"execute_state_machine": True}})  # type: ignore[arg-type]
        self._mock.start()
        try:
            self.port = free_port()
            self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
            self._server.start()
            self.s3 = boto3.client("s3", region_name=REGION)
            self.ecs = boto3.client("ecs", region_name=REGION)
            self.logs = boto3.client("logs", region_name=REGION)
            self.sfn = boto3.client("stepfunctions", region_name=REGION)
            self._deploy()
            self.fargate = Fargate(
                ecs=self.ecs,
                logs=self.logs,
                cluster_arn=self.cluster_arn,
                entrypoint=worker_entrypoint(),
                endpoint_url=self.endpoint,
                credentials=TEST_CREDENTIALS,
                work_dir=self.work_dir / "tasks",
            )
            self.adaptations = Adaptations(self.fargate, time_scale=self.time_scale)
            self.adaptations.install()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.adaptations is not None:
            self.adaptations.uninstall()
            self.adaptations = None
        if self.fargate is not None:
            self.fargate.close()
            self.fargate = None
        if self._server is not None:
            self._server.stop()
            self._server = None
        if self._mock is not None:
            self._mock.stop()
            self._mock = None
        for name, level in self._log_levels.items():
            logging.getLogger(name).setLevel(level)

    def reset(self) -> None:
        """Forget faults, task records and retry waits between scenarios."""
        self.tasks.reset()
        self.adapted.reset()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def tasks(self) -> Fargate:
        assert self.fargate is not None, "the orchestration is not started"
        return self.fargate

    @property
    def adapted(self) -> Adaptations:
        assert self.adaptations is not None, "the orchestration is not started"
        return self.adaptations

    # ------------------------------------------------------------------------ deployment

    def _deploy(self) -> None:
        template = self.template
        resolver = Resolver(template)
        resolver.refs[template.output_ref("InputBucketName")] = self.input_bucket
        resolver.refs[template.output_ref("OutputBucketName")] = self.output_bucket
        resolver.refs[template.output_ref("LogGroupName")] = self.log_group
        for bucket in (self.input_bucket, self.output_bucket):
            self.s3.create_bucket(Bucket=bucket)
        self.logs.create_log_group(logGroupName=self.log_group)

        cluster_id = template.output_ref("ClusterName")
        _, associations = template.one("AWS::ECS::ClusterCapacityProviderAssociations")
        cluster = self.ecs.create_cluster(
            clusterName=self.cluster_name,
            capacityProviders=list(associations["CapacityProviders"]),
            defaultCapacityProviderStrategy=[
                _boto_casing(item) for item in associations["DefaultCapacityProviderStrategy"]
            ],
        )["cluster"]
        self.cluster_arn = str(cluster["clusterArn"])
        resolver.refs[cluster_id] = self.cluster_name
        resolver.attributes[cluster_id, "Arn"] = self.cluster_arn

        _, properties = template.one("AWS::ECS::TaskDefinition")
        chosen = {key: properties[key] for key in _TASK_DEFINITION_FIELDS if key in properties}
        registered = self.ecs.register_task_definition(**_boto_casing(resolver.resolve(chosen)))
        self.task_definition_arn = str(registered["taskDefinition"]["taskDefinitionArn"])

        self.definition = state_machine_definition(template, resolver)
        self.state_machine_arn = str(
            self.sfn.create_state_machine(
                name=template.stack_name,
                definition=json.dumps(self.definition),
                roleArn=ROLE_ARN,
                type="STANDARD",
            )["stateMachineArn"]
        )

    # ------------------------------------------------------------------------ executions

    def start_execution(self, job: Mapping[str, Any], name: str) -> str:
        return str(
            self.sfn.start_execution(
                stateMachineArn=self.state_machine_arn, name=name, input=json.dumps(job)
            )["executionArn"]
        )

    def run(self, job: Mapping[str, Any], name: str, timeout: float = 180) -> Execution:
        """Start an execution and wait until it ends."""
        return self.wait(self.start_execution(job, name), timeout)

    def wait(self, execution_arn: str, timeout: float = 180) -> Execution:
        deadline = time.monotonic() + timeout
        while True:
            described = self.sfn.describe_execution(executionArn=execution_arn)
            if described["status"] != "RUNNING":
                break
            if time.monotonic() > deadline:
                self.sfn.stop_execution(executionArn=execution_arn, error="E2ETimeout")
                ran = "\n".join(f"  {t.label()}: exit {t.exit_code}" for t in self.tasks.tasks)
                raise AssertionError(
                    f"execution {execution_arn} still runs after {timeout} s; tasks:\n{ran}"
                )
            time.sleep(0.1)
        output = described.get("output")
        return Execution(
            arn=execution_arn,
            name=str(described["name"]),
            status=str(described["status"]),
            error=described.get("error"),
            cause=described.get("cause"),
            output=json.loads(output) if output else None,
            history=self.history(execution_arn),
        )

    def history(self, execution_arn: str) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        paginator = self.sfn.get_paginator("get_execution_history")
        for page in paginator.paginate(executionArn=execution_arn):
            events.extend(dict(event) for event in page["events"])
        return events

    # ------------------------------------------------------------------------ data

    def upload(self, folder: Path, prefix: str) -> str:
        """Upload every file below ``folder`` to the input bucket; returns the s3:// location."""
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                key = f"{prefix}/{path.relative_to(folder).as_posix()}"
                self.s3.put_object(Bucket=self.input_bucket, Key=key, Body=path.read_bytes())
        return f"s3://{self.input_bucket}/{prefix}/"

    def keys(self, prefix: str, bucket: str | None = None) -> list[str]:
        bucket = bucket or self.output_bucket
        keys: list[str] = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix.rstrip("/") + "/"
        ):
            keys.extend(item["Key"] for item in page.get("Contents", []))
        return sorted(keys)

    def read(self, key: str, bucket: str | None = None) -> bytes:
        body = self.s3.get_object(Bucket=bucket or self.output_bucket, Key=key)["Body"]
        return bytes(body.read())

    def manifest(self, output_prefix: str) -> dict[str, Any] | None:
        key = f"{output_prefix}/_manifest.json"
        if key not in self.keys(output_prefix):
            return None
        return dict(json.loads(self.read(key)))

    def log_lines(self, log_stream: str) -> list[str]:
        """What a worker wrote, read back from CloudWatch Logs as a user would."""
        events = self.logs.get_log_events(
            logGroupName=self.log_group, logStreamName=log_stream, startFromHead=True
        )["events"]
        return [str(event["message"]) for event in events]


def _boto_casing(value: Any) -> Any:
    """CloudFormation's PascalCase keys in boto3's camelCase (free-form maps kept as they are)."""
    if isinstance(value, list):
        return [_boto_casing(item) for item in value]
    if not isinstance(value, dict):
        return value
    return {
        key[:1].lower() + key[1:]: item if key in _OPAQUE_KEYS else _boto_casing(item)
        for key, item in value.items()
    }


def iter_json_lines(lines: list[str]) -> Iterator[dict[str, Any]]:
    """The JSON records among a worker's log lines."""
    for line in lines:
        if line.startswith("{"):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                yield record
