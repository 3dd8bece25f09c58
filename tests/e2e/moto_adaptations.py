"""Where moto 5.2.5's Step Functions interpreter differs from AWS, and how the harness adapts.

Each adaptation replaces or wraps one method of the interpreter while ``Adaptations`` is
active, and each has a test of its own in test_moto_adaptations.py:

1. ``aws-sdk:s3:getObject`` returns ``Body`` as a stream; AWS returns the object's text, which
   ``States.StringToJson($.Body)`` then parses. The adaptation reads the stream into a string.
2. ``ecs:runTask.sync`` calls moto's ECS, which cannot run ``awsvpc`` tasks and runs no
   container. The adaptation hands the call to ``fargate.Fargate``, which runs the worker as a
   process, and fails the state as AWS does: ``States.TaskFailed`` with the task description as
   the cause when the container exits non-zero, or the error ECS reported (for example
   ``ECS.AmazonECSException``) when RunTask itself fails. moto also drops every RunTask
   parameter missing from its own list, which predates ``CapacityProviderStrategy``: without it
   a Spot task would silently become a task on the cluster's default capacity. The adaptation
   lets that parameter through. Finally, moto waits on a task-token endpoint even for
   ``.sync`` and interrupts it when an attempt fails; since Retry reuses the token, the next
   attempt would end at once with ``States.Timeout``. Each ECS attempt gets a fresh token.
3. Retry waits are real ``time.sleep`` calls of IntervalSeconds x BackoffRate^n (with jitter).
   The adaptation sleeps ``time_scale`` of each wait and records the wait asked for, so tests stay
   fast and can still check the backoff. Nothing else about retrying changes.
4. A Distributed Map ignores ToleratedFailureCount/Percentage: failed child executions leave
   it SUCCEEDED. AWS fails the Map Run with ``States.ExceedToleratedFailureThreshold`` once more
   children fail than tolerated (default: none). The adaptation applies that rule when the
   children have finished, and records each child execution's outcome, since moto keeps no
   history for them.

Nothing in ``src/`` may import this module.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final

import moto

from tests.e2e.fargate import Fargate, RunTaskError, task_failed

MOTO_VERSION: Final = "5.2.5"
EXCEEDED_CAUSE: Final = "The specified tolerated failure threshold was exceeded"
# How long a .sync poll waits for the task to stop before moto's own 0.5 s pause.
_SYNC_WAIT_S: Final = 1.0


def check_moto_version(version: str | None = None) -> None:
    """Fail loudly unless moto is the version these adaptations were written against."""
    found = moto.__version__ if version is None else version
    if found != MOTO_VERSION:
        raise RuntimeError(
            f"tests/e2e adapts moto {MOTO_VERSION}'s Step Functions interpreter, but moto "
            f"{found} is installed. Check each adaptation in tests/e2e/moto_adaptations.py "
            f"against moto {found} (the methods it replaces may have moved or been fixed), "
            "then update MOTO_VERSION."
        )


@dataclass(frozen=True)
class RetryWait:
    """One Retry wait: the state, the interval the policy gave before and after jitter."""

    state_name: str
    retry: int
    nominal_seconds: float
    seconds: float


@dataclass(frozen=True)
class ChildExecution:
    """How one child execution of a Distributed Map ended."""

    map_run_arn: str
    index: int
    item: Any
    status: str
    error: str | None
    cause: str | None


class Adaptations:
    """The adaptations, active between ``install()`` and ``uninstall()`` (one at a time)."""

    def __init__(self, fargate: Fargate | None, *, time_scale: float = 0.01) -> None:
        check_moto_version()
        self.fargate = fargate
        self.time_scale = time_scale
        self.retry_waits: list[RetryWait] = []
        self.children: list[ChildExecution] = []
        self._lock = threading.Lock()
        self._originals: list[tuple[Any, str, Any]] = []

    @contextmanager
    def installed(self) -> Iterator[Adaptations]:
        self.install()
        try:
            yield self
        finally:
            self.uninstall()

    def reset(self) -> None:
        with self._lock:
            self.retry_waits.clear()
            self.children.clear()

    def install(self) -> None:
        if _slot.active is not None:
            raise RuntimeError("another set of moto adaptations is already installed")
        from moto.stepfunctions.parser.asl.component.common.retry import (
            jitter_strategy_decl,
            retrier_decl,
        )
        from moto.stepfunctions.parser.asl.component.state.exec.state_map.iteration import (
            distributed_iteration_component as distributed,
        )
        from moto.stepfunctions.parser.asl.component.state.exec.state_map.iteration.itemprocessor import (  # noqa: E501
            distributed_item_processor_worker as child_worker,
        )
        from moto.stepfunctions.parser.asl.component.state.exec.state_task.service import (
            state_task_service_aws_sdk as aws_sdk,
        )
        from moto.stepfunctions.parser.asl.component.state.exec.state_task.service import (
            state_task_service_ecs as ecs,
        )

        sdk_task = aws_sdk.StateTaskServiceAwsSdk
        ecs_task = ecs.StateTaskServiceEcs
        retrier = retrier_decl.RetrierDecl
        jitter = jitter_strategy_decl.JitterStrategyDecl
        map_run = distributed.DistributedIterationComponent
        child = child_worker.DistributedItemProcessorWorker
        self._replace(sdk_task, "_eval_service_task", _wrap_sdk_body(sdk_task._eval_service_task))
        self._replace(ecs_task, "_eval_service_task", _ecs_run_task)
        self._replace(ecs_task, "_build_sync_resolver", _ecs_sync_resolver)
        self._replace(
            ecs_task,
            "_get_supported_parameters",
            _with_capacity_providers(ecs_task._get_supported_parameters),
        )
        self._replace(retrier, "_eval_body", _wrap_retrier(retrier._eval_body))
        self._replace(jitter, "_eval_body", _wrap_jitter(jitter._eval_body))
        self._replace(retrier_decl, "time", _ScaledClock())
        self._replace(map_run, "_map_run", _wrap_map_run(map_run._map_run))
        self._replace(child, "_eval_job", _wrap_child_job(child._eval_job))
        _slot.active = self

    def uninstall(self) -> None:
        for owner, name, original in reversed(self._originals):
            setattr(owner, name, original)
        self._originals.clear()
        if _slot.active is self:
            _slot.active = None

    def _replace(self, owner: Any, name: str, replacement: Any) -> None:
        self._originals.append((owner, name, getattr(owner, name)))
        setattr(owner, name, replacement)

    def waits_for(self, state_name: str) -> list[RetryWait]:
        with self._lock:
            return [wait for wait in self.retry_waits if wait.state_name == state_name]

    def _record_wait(self, wait: RetryWait) -> None:
        with self._lock:
            self.retry_waits.append(wait)

    def _record_child(self, child: ChildExecution) -> None:
        with self._lock:
            self.children.append(child)


class _Slot:
    """The installed adaptations, which the replaced methods report to."""

    active: Adaptations | None = None


_slot = _Slot()


def _active() -> Adaptations:
    if _slot.active is None:
        raise RuntimeError("moto adaptations are not installed")
    return _slot.active


def _fargate() -> Fargate:
    fargate = _active().fargate
    if fargate is None:
        raise RuntimeError("these adaptations have no Fargate to run ECS tasks on")
    return fargate


# ---------------------------------------------------------------------------- 1. aws-sdk body


def _wrap_sdk_body(original: Callable[..., None]) -> Callable[..., None]:
    def eval_service_task(self: Any, env: Any, *args: Any, **kwargs: Any) -> None:
        original(self, env, *args, **kwargs)
        response = env.stack[-1]
        if isinstance(response, dict):
            for key, value in list(response.items()):
                if hasattr(value, "read"):
                    response[key] = value.read().decode("utf-8")

    return eval_service_task


# ---------------------------------------------------------------------------- 2. ECS


def _task_failure(task_service: Any, env: Any, error: str, cause: str) -> Exception:
    from moto.stepfunctions.parser.api import HistoryEventType, TaskFailedEventDetails
    from moto.stepfunctions.parser.asl.component.common.error_name.custom_error_name import (
        CustomErrorName,
    )
    from moto.stepfunctions.parser.asl.component.common.error_name.failure_event import (
        FailureEvent,
        FailureEventException,
    )
    from moto.stepfunctions.parser.asl.component.common.error_name.states_error_name import (
        StatesErrorName,
    )
    from moto.stepfunctions.parser.asl.component.common.error_name.states_error_name_type import (
        StatesErrorNameType,
    )

    name: Any
    if error == StatesErrorNameType.StatesTaskFailed.to_name():
        name = StatesErrorName(typ=StatesErrorNameType.StatesTaskFailed)
    else:
        name = CustomErrorName(error)
    details = TaskFailedEventDetails(
        resource=task_service._get_sfn_resource(),
        resourceType=task_service._get_sfn_resource_type(),
        error=error,
        cause=cause,
    )
    return FailureEventException(
        FailureEvent(
            env=env,
            error_name=name,
            event_type=HistoryEventType.TaskFailed,
            event_details=_event_details(taskFailedEventDetails=details),
        )
    )


def _with_capacity_providers(original: Callable[..., Any]) -> Callable[..., Any]:
    def supported_parameters(self: Any) -> set[str] | None:
        supported = original(self)
        if supported is None:
            return None
        return {*supported, "CapacityProviderStrategy"}

    return supported_parameters


def _event_details(**details: Any) -> Any:
    """moto's EventDetails: a TypedDict with one key set (every key is declared required)."""
    return details


def _ecs_run_task(
    self: Any,
    env: Any,
    resource_runtime_part: Any,
    normalised_parameters: dict[str, Any],
    state_credentials: Any,
) -> None:
    action = self._get_boto_service_action()
    if action != "run_task":
        raise RuntimeError(f"the e2e harness runs ecs:runTask only, not ecs:{action}")
    if self.resource.condition == "sync":
        # A fresh endpoint per attempt: the previous attempt's was interrupted when it ended.
        env.callback_pool_manager.add(env.states.context_object.update_task_token())
    state = env.states.context_object.context_object_data["State"]
    try:
        response = _fargate().run_task(
            normalised_parameters,
            state_name=state["Name"],
            retry_count=int(state.get("RetryCount", 0)),
            is_running=env.is_running,
        )
    except RunTaskError as error:
        raise _task_failure(self, env, error.error, error.cause) from error
    env.stack.append(response)


def _ecs_sync_resolver(
    self: Any,
    env: Any,
    resource_runtime_part: Any,
    normalised_parameters: dict[str, Any],
    state_credentials: Any,
) -> Callable[[], Any]:
    from moto.stepfunctions.parser.asl.utils.encoding import to_json_str

    submission = env.stack.pop()
    task_arn = submission["Tasks"][0]["TaskArn"]

    def resolve() -> dict[str, Any] | None:
        description = _fargate().wait_stopped(task_arn, _SYNC_WAIT_S)
        if description is None:
            return None
        if task_failed(description):
            raise _task_failure(self, env, "States.TaskFailed", to_json_str(description))
        return description

    return resolve


# ---------------------------------------------------------------------------- 3. retry waits


class _Pending(threading.local):
    state_name: str | None = None
    retry: int = 0
    nominal: float | None = None


_pending = _Pending()


def _wrap_retrier(original: Callable[..., None]) -> Callable[..., None]:
    def eval_body(self: Any, env: Any) -> None:
        state = env.states.context_object.context_object_data.get("State", {})
        _pending.state_name = state.get("Name")
        _pending.retry = int(state.get("RetryCount", 0)) + 1
        _pending.nominal = None
        try:
            original(self, env)
        finally:
            _pending.state_name = None

    return eval_body


def _wrap_jitter(original: Callable[..., None]) -> Callable[..., None]:
    def eval_body(self: Any, env: Any) -> None:
        _pending.nominal = float(env.stack[-1])
        original(self, env)

    return eval_body


class _ScaledClock:
    """Stands in for the ``time`` module inside moto's retrier: only ``sleep`` is used there."""

    def sleep(self, seconds: float) -> None:
        adaptations = _active()
        nominal = _pending.nominal if _pending.nominal is not None else seconds
        adaptations._record_wait(
            RetryWait(
                state_name=_pending.state_name or "?",
                retry=_pending.retry,
                nominal_seconds=nominal,
                seconds=float(seconds),
            )
        )
        time.sleep(seconds * adaptations.time_scale)


# ---------------------------------------------------------------------------- 4. Map Run


def exceeds_tolerance(failed: int, total: int, count: int, percentage: float) -> bool:
    """AWS's rule: fail when failures exceed the count or the percentage given; with neither
    given (both 0, the defaults), any failure exceeds it."""
    if count <= 0 and percentage <= 0:
        return failed > 0
    over_count = count > 0 and failed > count
    over_share = percentage > 0 and total > 0 and failed * 100.0 / total > percentage
    return over_count or over_share


def _wrap_map_run(original: Callable[..., None]) -> Callable[..., None]:
    def map_run(self: Any, env: Any, eval_input: Any) -> None:
        original(self, env, eval_input)
        items = eval_input.map_run_record.item_counter
        failed = items.failed.get() + items.timed_out.get()
        if exceeds_tolerance(
            failed,
            items.total.get(),
            int(eval_input.tolerated_failure_count or 0),
            float(eval_input.tolerated_failure_percentage or 0.0),
        ):
            raise _threshold_exceeded(env)

    return map_run


def _threshold_exceeded(env: Any) -> Exception:
    from moto.stepfunctions.parser.api import HistoryEventType, MapRunFailedEventDetails
    from moto.stepfunctions.parser.asl.component.common.error_name.failure_event import (
        FailureEvent,
        FailureEventException,
    )
    from moto.stepfunctions.parser.asl.component.common.error_name.states_error_name import (
        StatesErrorName,
    )
    from moto.stepfunctions.parser.asl.component.common.error_name.states_error_name_type import (
        StatesErrorNameType,
    )

    kind = StatesErrorNameType.StatesExceedToleratedFailureThreshold
    return FailureEventException(
        FailureEvent(
            env=env,
            error_name=StatesErrorName(typ=kind),
            event_type=HistoryEventType.MapRunFailed,
            event_details=_event_details(
                mapRunFailedEventDetails=MapRunFailedEventDetails(
                    error=kind.to_name(), cause=EXCEEDED_CAUSE
                )
            ),
        )
    )


def _wrap_child_job(original: Callable[..., None]) -> Callable[..., None]:
    def eval_job(self: Any, env: Any, job: Any) -> None:
        from moto.stepfunctions.parser.asl.eval.program_state import (
            ProgramError,
            ProgramStopped,
            ProgramTimedOut,
        )

        original(self, env, job)
        state = env.program_state()
        error = cause = None
        if isinstance(state, ProgramError):
            status = "FAILED"
            details = state.error or {}
            error, cause = details.get("error"), details.get("cause")
        elif isinstance(state, ProgramStopped):
            status, error, cause = "ABORTED", state.error, state.cause
        elif isinstance(state, ProgramTimedOut):
            status = "TIMED_OUT"
        else:
            status = "SUCCEEDED"
        _active()._record_child(
            ChildExecution(
                map_run_arn=self._map_run_record.map_run_arn,
                index=job.job_index,
                item=job.job_input,
                status=status,
                error=error,
                cause=cause,
            )
        )

    return eval_job
