"""A stand-in for Amazon ECS on Fargate: every task is a real ``ecs-query worker`` process.

``Fargate.run_task`` takes the parameters of an ``ecs:runTask`` call exactly as the state
machine sends them, checks them the way ECS would (cluster, task definition, launch type or
capacity provider, network configuration, task size, override size), and starts the container's
command with the container's environment plus the task's overrides. ``wait_stopped`` answers with
the task description that ``ecs:runTask.sync`` returns once the task has stopped.

The cluster and the task definition live in moto's ECS; the worker's output goes to the log
stream ``<prefix>/<container>/<task id>`` in moto's CloudWatch Logs, as the awslogs driver
would write it.

Faults are injected per task: ``CAPACITY`` refuses the RunTask call like a Fargate capacity
shortage, ``SPOT_INTERRUPTION`` sends SIGTERM to a Spot task mid-stage and stops it with stop
code ``SpotInterruption`` (then SIGKILL after the container's stop timeout, as ECS does), and
``KILL`` sends SIGKILL mid-stage (exit code 137). "Mid-stage" means shortly after the worker
logs "stage started", which it does once its SIGTERM handler is in place.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

from ecs_query.spec import Stage, Var
from tests.e2e.stack import REGION

STOP_CODE_EXITED: Final = "EssentialContainerExited"
STOP_CODE_SPOT: Final = "SpotInterruption"
STOP_CODE_USER: Final = "UserInitiated"
CAPACITY_ERROR: Final = "ECS.AmazonECSException"
CAPACITY_CAUSE: Final = (
    "Capacity is unavailable at this time. Please try again later or in a different "
    "availability zone (Service: AmazonECS; Status Code: 400; Error Code: AmazonECSException)"
)
_STARTED_BY: Final = "AWS Step Functions"
_MONITOR_INTERVAL_S: Final = 0.02
# The worker's log line once its SIGTERM handler is in place and its stage begins; a mid-stage
# fault waits this long after it, so the stage is under way (reading the plan, connecting to S3).
_STAGE_STARTED: Final = '"message": "stage started"'
_FAULT_DELAY_S: Final = 0.2
_MAX_OVERRIDE_CHARS: Final = 8192
_PLATFORM_VERSIONS: Final = ("LATEST", "1.4.0")
# cpu units -> memory MiB Fargate accepts (Linux, platform 1.4.0); kept apart from
# ecs_query.fargate on purpose, so the product's table is checked rather than trusted.
_FARGATE_SIZES: Final[dict[int, Sequence[int]]] = {
    256: (512, 1024, 2048),
    512: range(1024, 4097, 1024),
    1024: range(2048, 8193, 1024),
    2048: range(4096, 16385, 1024),
    4096: range(8192, 30721, 1024),
    8192: range(16384, 61441, 4096),
    16384: range(32768, 122881, 8192),
}


class Capacity(StrEnum):
    SPOT = "FARGATE_SPOT"
    ON_DEMAND = "FARGATE"


class FaultKind(StrEnum):
    CAPACITY = "capacity"
    SPOT_INTERRUPTION = "spot-interruption"
    KILL = "kill"


@dataclass
class Fault:
    """A fault for the next ``times`` tasks that match ``stage``, ``shard`` and ``capacity``
    (None matches any)."""

    kind: FaultKind
    stage: Stage | None = Stage.SHARD
    shard: int | None = None
    capacity: Capacity | None = None
    times: int = 1

    def __post_init__(self) -> None:
        if self.kind is FaultKind.SPOT_INTERRUPTION and self.capacity is not Capacity.SPOT:
            raise ValueError("a Spot interruption needs capacity=Capacity.SPOT")
        if self.times < 1:
            raise ValueError(f"times must be at least 1, received {self.times}")

    def matches(self, stage: str, shard: int | None, capacity: Capacity) -> bool:
        return (
            (self.stage is None or self.stage.value == stage)
            and (self.shard is None or self.shard == shard)
            and (self.capacity is None or self.capacity is capacity)
        )


class RunTaskError(Exception):
    """ecs:runTask refused: ``error`` is the name Step Functions reports, ``cause`` its text."""

    def __init__(self, error: str, cause: str) -> None:
        super().__init__(f"{error}: {cause}")
        self.error = error
        self.cause = cause


@dataclass
class TaskRun:
    """One ECS task: what the state machine asked for, and how the worker process ended."""

    number: int
    task_id: str
    task_arn: str
    cluster_arn: str
    task_definition_arn: str
    state_name: str
    attempt: int
    stage: str
    shard: int | None
    capacity: Capacity
    parameters: dict[str, Any]
    environment: dict[str, str]
    command: list[str]
    cpu: str
    memory: str
    container_name: str
    log_stream: str
    created_at: float
    stopped_at: float | None = None
    exit_code: int | None = None
    stop_code: str | None = None
    stopped_reason: str | None = None
    fault: FaultKind | None = None
    fault_applied: bool = False
    output: str = ""
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    is_running: Callable[[], bool] = field(default=lambda: True, repr=False)
    done: threading.Event = field(default_factory=threading.Event, repr=False)
    stop_deadline: float | None = field(default=None, repr=False)
    fault_due: float | None = field(default=None, repr=False)
    stopping_code: str | None = field(default=None, repr=False)
    stop_timeout: float = field(default=30.0, repr=False)
    log_group: str | None = field(default=None, repr=False)

    @property
    def launched_with_capacity_provider(self) -> bool:
        return "CapacityProviderStrategy" in self.parameters

    @property
    def seconds(self) -> float:
        end = self.stopped_at if self.stopped_at is not None else time.time()
        return end - self.created_at

    def label(self) -> str:
        where = "" if self.shard is None else f" {self.shard}"
        return f"{self.stage}{where} on {self.capacity.value}"


@dataclass(frozen=True)
class Refusal:
    """A RunTask call that failed before any task started."""

    state_name: str
    attempt: int
    stage: str
    shard: int | None
    capacity: Capacity
    error: str
    cause: str
    at: float


TaskEvent = TaskRun | Refusal
Listener = Callable[[str, TaskEvent], None]


class Fargate:
    """Runs the tasks of one cluster as local processes; thread-safe."""

    def __init__(
        self,
        *,
        ecs: Any,
        logs: Any,
        cluster_arn: str,
        entrypoint: Sequence[str],
        endpoint_url: str,
        credentials: Mapping[str, str],
        work_dir: Path,
    ) -> None:
        self.ecs = ecs
        self.logs = logs
        self.cluster_arn = cluster_arn
        self.entrypoint = list(entrypoint)
        self.endpoint_url = endpoint_url
        self.credentials = dict(credentials)
        self.work_dir = work_dir
        self.tasks: list[TaskRun] = []
        self.refusals: list[Refusal] = []
        self.faults: list[Fault] = []
        self.listeners: list[Listener] = []
        self.peak_running: dict[str, int] = {}
        self._running: dict[str, int] = {}
        self._described: dict[tuple[str, str], dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._monitor = threading.Thread(target=self._watch, name="fargate-monitor", daemon=True)
        self._monitor.start()

    # ------------------------------------------------------------------------ the API

    def inject(self, *faults: Fault) -> None:
        with self._lock:
            self.faults.extend(faults)

    def reset(self) -> None:
        """Forget faults and records between scenarios; running tasks are stopped first."""
        self.stop_all()
        with self._lock:
            self.faults.clear()
            self.tasks.clear()
            self.refusals.clear()
            self.peak_running.clear()
            self._running.clear()

    def run_task(
        self,
        parameters: Mapping[str, Any],
        *,
        state_name: str,
        retry_count: int,
        is_running: Callable[[], bool],
    ) -> dict[str, Any]:
        """Start a task as ECS RunTask would; the response has Step Functions' key casing."""
        request: dict[str, Any] = json.loads(json.dumps(parameters))
        parameters = request
        definition = self._task_definition(parameters)
        capacity = self._capacity(parameters)
        (container,) = (c for c in definition["containerDefinitions"] if c.get("essential", True))
        environment = self._environment(container, parameters)
        stage = environment.get(Var.STAGE.env, Stage.SHARD.value)
        shard_text = environment.get(Var.SHARD_INDEX.env)
        shard = int(shard_text) if shard_text not in (None, "") else None
        self._check_request(parameters, definition)

        fault = self._take_fault(stage, shard, capacity)
        if fault is FaultKind.CAPACITY:
            refusal = Refusal(
                state_name=state_name,
                attempt=retry_count + 1,
                stage=stage,
                shard=shard,
                capacity=capacity,
                error=CAPACITY_ERROR,
                cause=CAPACITY_CAUSE,
                at=time.time(),
            )
            with self._lock:
                self.refusals.append(refusal)
            self._notify("refused", refusal)
            raise RunTaskError(CAPACITY_ERROR, CAPACITY_CAUSE)

        overrides = parameters.get("Overrides", {})
        task_id = uuid.uuid4().hex
        cluster_name = self.cluster_arn.rsplit("/", 1)[-1]
        options = container.get("logConfiguration", {}).get("options", {})
        task = TaskRun(
            number=0,
            task_id=task_id,
            task_arn=f"arn:aws:ecs:{REGION}:{self._account()}:task/{cluster_name}/{task_id}",
            cluster_arn=self.cluster_arn,
            task_definition_arn=definition["taskDefinitionArn"],
            state_name=state_name,
            attempt=retry_count + 1,
            stage=stage,
            shard=shard,
            capacity=capacity,
            parameters=request,
            environment=environment,
            command=[*self.entrypoint, *container.get("command", [])],
            cpu=str(overrides.get("Cpu") or definition["cpu"]),
            memory=str(overrides.get("Memory") or definition["memory"]),
            container_name=container["name"],
            log_stream="/".join(
                (options.get("awslogs-stream-prefix", "ecs"), container["name"], task_id)
            ),
            created_at=time.time(),
            fault=fault,
            is_running=is_running,
        )
        self._start(task, container, options)
        return {"Tasks": [self.describe(task)], "Failures": []}

    def wait_stopped(self, task_arn: str, timeout: float) -> dict[str, Any] | None:
        """The task's description once it has stopped; None if it still runs after
        ``timeout`` seconds."""
        task = self.task(task_arn)
        if not task.done.wait(timeout):
            return None
        return self.describe(task)

    def task(self, task_arn: str) -> TaskRun:
        with self._lock:
            for task in self.tasks:
                if task.task_arn == task_arn:
                    return task
        raise LookupError(f"no task {task_arn}")

    def describe(self, task: TaskRun) -> dict[str, Any]:
        """The task as DescribeTasks shows it, in Step Functions' casing (times in ms)."""
        stopped = task.done.is_set()
        container: dict[str, Any] = {
            "ContainerArn": "/".join(
                (task.task_arn.replace(":task/", ":container/"), task.container_name)
            ),
            "Name": task.container_name,
            "TaskArn": task.task_arn,
            "LastStatus": "STOPPED" if stopped else "PENDING",
        }
        description: dict[str, Any] = {
            "TaskArn": task.task_arn,
            "ClusterArn": task.cluster_arn,
            "TaskDefinitionArn": task.task_definition_arn,
            "Group": "family:" + task.task_definition_arn.rsplit("/", 1)[-1].split(":")[0],
            "StartedBy": _STARTED_BY,
            "LaunchType": "FARGATE",
            "PlatformVersion": task.parameters.get("PlatformVersion", "1.4.0"),
            "Cpu": task.cpu,
            "Memory": task.memory,
            "Overrides": task.parameters.get("Overrides", {}),
            "CreatedAt": int(task.created_at * 1000),
            "DesiredStatus": "STOPPED" if stopped else "RUNNING",
            "LastStatus": "STOPPED" if stopped else "PROVISIONING",
            "Containers": [container],
        }
        if task.launched_with_capacity_provider:
            description["CapacityProviderName"] = task.capacity.value
        if stopped:
            assert task.stopped_at is not None
            description["StoppedAt"] = int(task.stopped_at * 1000)
            description["StopCode"] = task.stop_code
            description["StoppedReason"] = task.stopped_reason
            container["ExitCode"] = task.exit_code
        return description

    def stop_all(self) -> None:
        """Stop every running task by its process id, as StopTask would, and wait for it."""
        with self._lock:
            running = [task for task in self.tasks if not task.done.is_set()]
        for task in running:
            self._signal(task, signal.SIGTERM, STOP_CODE_USER)
        deadline = time.monotonic() + 10
        for task in running:
            if not task.done.wait(max(0.0, deadline - time.monotonic())):
                self._kill(task)
                task.done.wait(5)

    def close(self) -> None:
        self.stop_all()
        self._closed.set()
        self._monitor.join(timeout=5)

    # ------------------------------------------------------------------------ RunTask

    def _describe(self, kind: str, name: str) -> dict[str, Any]:
        """moto's description of a cluster or task definition; nothing changes them during a
        run, so each is asked for once (a 200-shard job would otherwise ask 600 times)."""
        key = (kind, name)
        with self._lock:
            cached = self._described.get(key)
        if cached is not None:
            return cached
        if kind == "cluster":
            found = self.ecs.describe_clusters(clusters=[name])["clusters"]
            described = dict(found[0]) if found else {}
        else:
            described = dict(
                self.ecs.describe_task_definition(taskDefinition=name)["taskDefinition"]
            )
        with self._lock:
            self._described[key] = described
        return described

    def _task_definition(self, parameters: Mapping[str, Any]) -> dict[str, Any]:
        cluster = parameters.get("Cluster", "default")
        if self._describe("cluster", cluster).get("clusterArn") != self.cluster_arn:
            raise RunTaskError("ECS.ClusterNotFoundException", f"Cluster not found: {cluster}")
        name = parameters.get("TaskDefinition")
        if not name:
            raise RunTaskError("ECS.InvalidParameterException", "TaskDefinition is required")
        try:
            return self._describe("task-definition", name)
        except Exception as error:
            raise RunTaskError(
                "ECS.ClientException", f"Unable to describe task definition {name}: {error}"
            ) from error

    def _capacity(self, parameters: Mapping[str, Any]) -> Capacity:
        strategy = parameters.get("CapacityProviderStrategy")
        launch_type = parameters.get("LaunchType")
        if strategy and launch_type:
            raise RunTaskError(
                "ECS.InvalidParameterException",
                "Specifying both a launch type and capacity provider strategy is not supported",
            )
        if strategy:
            providers = [item["CapacityProvider"] for item in strategy]
            cluster = self._describe("cluster", self.cluster_arn)
            missing = sorted(set(providers) - set(cluster.get("capacityProviders", [])))
            if missing:
                raise RunTaskError(
                    "ECS.InvalidParameterException",
                    f"The specified capacity provider {missing[0]} is not associated with "
                    "the cluster",
                )
            if len(set(providers)) != 1:
                raise ValueError(f"the harness runs one capacity provider per task: {providers}")
            return Capacity(providers[0])
        if launch_type not in (None, "FARGATE"):
            raise RunTaskError(
                "ECS.InvalidParameterException",
                f"Task definition does not support launch_type {launch_type}",
            )
        if launch_type is None:
            cluster = self._describe("cluster", self.cluster_arn)
            default = cluster.get("defaultCapacityProviderStrategy") or []
            if not default:
                raise RunTaskError(
                    "ECS.InvalidParameterException",
                    "No launch type or capacity provider strategy given, and the cluster has "
                    "no default capacity provider strategy",
                )
            return Capacity(default[0]["capacityProvider"])
        return Capacity.ON_DEMAND

    def _environment(
        self, container: Mapping[str, Any], parameters: Mapping[str, Any]
    ) -> dict[str, str]:
        """The container's environment: the task definition's, then the overrides' by name."""
        environment = {item["name"]: item["value"] for item in container.get("environment", [])}
        overrides = parameters.get("Overrides", {}).get("ContainerOverrides", [])
        for override in overrides:
            if override.get("Name") != container["name"]:
                continue
            for item in override.get("Environment", []):
                environment[item["Name"]] = item["Value"]
        return environment

    def _check_request(
        self,
        parameters: Mapping[str, Any],
        definition: Mapping[str, Any],
    ) -> None:
        def invalid(message: str) -> RunTaskError:
            return RunTaskError("ECS.InvalidParameterException", message)

        if definition.get("networkMode") == "awsvpc":
            network = parameters.get("NetworkConfiguration", {}).get("AwsvpcConfiguration", {})
            if not network.get("Subnets"):
                raise invalid(
                    "Network Configuration must be provided when networkMode 'awsvpc' is specified"
                )
        version = parameters.get("PlatformVersion", "LATEST")
        if version not in _PLATFORM_VERSIONS:
            raise invalid(f"Platform version {version} is not supported by this harness")
        overrides = parameters.get("Overrides", {})
        names = {c["name"] for c in definition["containerDefinitions"]}
        for override in overrides.get("ContainerOverrides", []):
            if override.get("Name") not in names:
                raise invalid(
                    f"Override for container named {override.get('Name')} is not a container "
                    "in the TaskDefinition"
                )
        text = json.dumps(overrides.get("ContainerOverrides", []), separators=(",", ":"))
        if len(text) > _MAX_OVERRIDE_CHARS:
            raise invalid(
                f"Container Overrides length must be at most {_MAX_OVERRIDE_CHARS}, "
                f"received {len(text)}"
            )
        cpu = int(overrides.get("Cpu") or definition["cpu"])
        memory = int(overrides.get("Memory") or definition["memory"])
        if memory not in _FARGATE_SIZES.get(cpu, ()):
            raise invalid(
                f"No Fargate configuration exists for given values: {cpu} CPU, {memory} memory"
            )

    def _take_fault(self, stage: str, shard: int | None, capacity: Capacity) -> FaultKind | None:
        with self._lock:
            for fault in self.faults:
                if fault.matches(stage, shard, capacity):
                    fault.times -= 1
                    if fault.times == 0:
                        self.faults.remove(fault)
                    return fault.kind
        return None

    def _account(self) -> str:
        return self.cluster_arn.split(":")[4]

    # ------------------------------------------------------------------------ processes

    def _start(
        self, task: TaskRun, container: Mapping[str, Any], options: Mapping[str, str]
    ) -> None:
        folder = self.work_dir / task.task_id
        scratch = folder / "tmp"
        scratch.mkdir(parents=True)
        environment = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(folder),
            "TMPDIR": str(scratch),
            "AWS_EXECUTION_ENV": "AWS_ECS_FARGATE",
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_ENDPOINT_URL": self.endpoint_url,
            **self.credentials,
            **task.environment,
        }
        group = options.get("awslogs-group")
        if group:
            self.logs.create_log_stream(logGroupName=group, logStreamName=task.log_stream)
        with (folder / "output.log").open("wb") as output:
            task.process = subprocess.Popen(
                task.command,
                env=environment,
                cwd=folder,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        task.stop_timeout = float(container.get("stopTimeout") or 30)
        task.log_group = group
        with self._lock:
            task.number = len(self.tasks) + 1
            self.tasks.append(task)
            running = self._running.get(task.stage, 0) + 1
            self._running[task.stage] = running
            self.peak_running[task.stage] = max(self.peak_running.get(task.stage, 0), running)
        self._notify("started", task)

    def _watch(self) -> None:
        while not self._closed.is_set():
            with self._lock:
                running = [task for task in self.tasks if not task.done.is_set()]
            for task in running:
                try:
                    self._check(task)
                except Exception as error:  # keep watching the other tasks
                    task.output += f"\n[harness] monitor error: {error!r}"
            time.sleep(_MONITOR_INTERVAL_S)

    def _check(self, task: TaskRun) -> None:
        assert task.process is not None
        code = task.process.poll()
        if code is not None:
            self._finish(task, code)
            return
        now = time.monotonic()
        if task.fault in (FaultKind.SPOT_INTERRUPTION, FaultKind.KILL) and not task.fault_applied:
            if task.fault_due is None and self.stage_started(task):
                task.fault_due = now + _FAULT_DELAY_S
            if task.fault_due is not None and now >= task.fault_due:
                task.fault_applied = True
                if task.fault is FaultKind.KILL:
                    self._kill(task)
                else:
                    self._signal(task, signal.SIGTERM, STOP_CODE_SPOT)
                self._notify("fault", task)
        if task.stopping_code is None and not task.is_running():
            # The execution stopped or failed: Step Functions stops the tasks it waits for.
            self._signal(task, signal.SIGTERM, STOP_CODE_USER)
        if task.stop_deadline is not None and now >= task.stop_deadline:
            self._kill(task)

    def stage_started(self, task: TaskRun) -> bool:
        """Whether the task's worker has logged "stage started" (its SIGTERM handler is in)."""
        try:
            return _STAGE_STARTED in (self.work_dir / task.task_id / "output.log").read_text()
        except OSError:
            return False

    def _signal(self, task: TaskRun, signum: int, stop_code: str) -> None:
        if task.stopping_code is None:
            task.stopping_code = stop_code
            task.stop_deadline = time.monotonic() + task.stop_timeout
        if task.process is not None and task.process.poll() is None:
            os.kill(task.process.pid, signum)

    def _kill(self, task: TaskRun) -> None:
        if task.process is not None and task.process.poll() is None:
            os.kill(task.process.pid, signal.SIGKILL)

    def _finish(self, task: TaskRun, returncode: int) -> None:
        folder = self.work_dir / task.task_id
        task.exit_code = returncode if returncode >= 0 else 128 - returncode
        task.stop_code = task.stopping_code or STOP_CODE_EXITED
        task.stopped_reason = {
            STOP_CODE_SPOT: "Your Spot Task was interrupted.",
            STOP_CODE_USER: "Task stopped by Step Functions: its execution ended",
        }.get(task.stop_code, "Essential container in task exited")
        task.output = (folder / "output.log").read_text(errors="replace") + task.output
        if task.log_group:
            self._write_log(task.log_group, task)
        shutil.rmtree(folder, ignore_errors=True)
        task.stopped_at = time.time()
        with self._lock:
            self._running[task.stage] = self._running.get(task.stage, 1) - 1
        task.done.set()
        self._notify("stopped", task)

    def _write_log(self, group: str, task: TaskRun) -> None:
        lines = [line for line in task.output.splitlines() if line.strip()]
        stamp = int(time.time() * 1000)
        for start in range(0, len(lines), 1000):
            events = [{"timestamp": stamp, "message": line} for line in lines[start : start + 1000]]
            self.logs.put_log_events(
                logGroupName=group, logStreamName=task.log_stream, logEvents=events
            )

    def _notify(self, kind: str, event: TaskEvent) -> None:
        for listener in list(self.listeners):
            listener(kind, event)


def task_failed(description: Mapping[str, Any]) -> bool:
    """Whether ecs:runTask.sync fails the state: the essential container did not exit 0."""
    containers = description.get("Containers") or []
    return not containers or any(c.get("ExitCode") != 0 for c in containers)
