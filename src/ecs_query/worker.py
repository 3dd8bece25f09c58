"""The container entry point: ``ecs-query worker`` runs one stage of a job from its environment.

It reads nothing but ``ECS_QUERY_*`` variables (and the SDK's own AWS variables), writes JSON
log lines and Embedded Metric Format records to stdout, and exits with a code the state machine
acts on (see ``ecs_query.errors``). On SIGTERM, for example a Fargate Spot interruption, it
interrupts the running query and exits with the transient code; since markers are written
only after their data, nothing half-written is ever committed.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from types import FrameType
from typing import Any, Final

from ecs_query import engine, logs, planner, stages, storage
from ecs_query.errors import (
    EXIT_INTERNAL_ERROR,
    EXIT_OK,
    EXIT_TRANSIENT,
    EcsQueryError,
    JobSpecError,
    TransientError,
    UserError,
)
from ecs_query.spec import JobSpec, Stage, TaskContext

logger = logging.getLogger("ecs_query.worker")

# After SIGTERM, how long the stage may take to wind down before the process exits anyway.
_STOP_GRACE_SECONDS: Final = 5.0


def main(environ: Mapping[str, str] | None = None) -> int:
    """Run the stage the environment names; return the process exit code."""
    environ = os.environ if environ is None else environ
    logs.configure()
    try:
        spec = JobSpec.from_env(environ)
        context = TaskContext.from_env(environ)
    except JobSpecError as error:
        _report_failure(error, {"stage": environ.get("ECS_QUERY_STAGE", "shard")}, 0.0)
        return error.exit_code
    fields: dict[str, Any] = {"job": spec.job_id, "stage": context.stage.value}
    if context.stage is Stage.SHARD:
        fields["shard"] = context.shard_index
    if context.attempt:
        fields["attempt"] = context.attempt
    code = _run_interruptible(lambda: _run_stage(spec, context, fields), fields)
    if code != EXIT_OK and context.stage is Stage.PLAN:
        _record_plan_failure(spec, context, fields, code)
    return code


def _record_plan_failure(
    spec: JobSpec, context: TaskContext, fields: Mapping[str, Any], code: int
) -> None:
    """Leave the plan's error where the state machine reads it for the execution's cause:
    a rejected job then says why in Step Functions itself, not only in the task's logs."""
    failure = {
        "error": fields.get("error_type", "PlanFailed"),
        "cause": fields.get("error_message", f"the plan stage exited with code {code}"),
        "exit_code": code,
    }
    uri = planner.plan_failure_uri(spec)
    try:
        storage.store_for(uri, context.endpoint_url).write_bytes(uri, json.dumps(failure).encode())
    except Exception:  # best effort: the logs still hold the error
        logger.warning("could not record the plan failure", exc_info=True, extra={"fields": fields})


def _run_stage(spec: JobSpec, context: TaskContext, fields: dict[str, Any]) -> None:
    started = time.perf_counter()
    logger.info("stage started", extra={"fields": fields})
    if context.stage is Stage.PLAN:
        outcome = stages.plan_job(spec, context.endpoint_url, write_summary=True)
        if outcome.plan is None:
            logger.info("job already committed; nothing to do", extra={"fields": fields})
            return
        plan = outcome.plan
        logger.info(
            "plan written",
            extra={"fields": {**fields, **plan.summary(), "duration_ms": _ms(started)}},
        )
        return
    if context.stage is Stage.SHARD:
        result = stages.run_shard(spec, context)
        done = {
            **fields,
            "attempt": result.attempt,
            "uri": result.uri,
            "input_bytes": result.input_bytes,
            "rows": result.rows,
            "bytes_out": result.bytes_out,
            "duration_ms": _ms(started),
            "cpu_s": _cpu_seconds(),
        }
        logger.info("shard done", extra={"fields": done})
        logs.emit_metrics(
            context.stage.value,
            {
                "ShardsSucceeded": (1, "Count"),
                "RowsOut": (result.rows, "Count"),
                "BytesOut": (result.bytes_out, "Bytes"),
                "InputBytes": (result.input_bytes, "Bytes"),
                "ShardDuration": (_ms(started), "Milliseconds"),
            },
            {"JobId": spec.job_id, "Shard": result.shard},
        )
        return
    manifest = stages.run_finalize(spec, context)
    logger.info(
        "job committed",
        extra={
            "fields": {
                **fields,
                "rows": manifest["rows"],
                "bytes_out": manifest["bytes"],
                "files": len(manifest["files"]),
                "duration_ms": _ms(started),
            }
        },
    )
    logs.emit_metrics(
        context.stage.value,
        {"JobsCommitted": (1, "Count"), "RowsCommitted": (manifest["rows"], "Count")},
        {"JobId": spec.job_id},
    )


def _run_interruptible(work: Callable[[], None], fields: dict[str, Any]) -> int:
    """Run ``work`` on a thread so the main thread can answer SIGTERM while DuckDB is busy."""
    started = time.perf_counter()
    outcome: dict[str, BaseException] = {}
    stopping = threading.Event()

    def target() -> None:
        try:
            work()
        except BaseException as error:
            outcome["error"] = error

    def on_sigterm(signum: int, _frame: FrameType | None) -> None:
        stopping.set()
        engine.interrupt_all()
        storage.cancel_transfers()

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    thread = threading.Thread(target=target, name="stage", daemon=True)
    thread.start()
    try:
        while thread.is_alive() and not stopping.is_set():
            thread.join(timeout=0.2)
        if stopping.is_set():
            thread.join(timeout=_STOP_GRACE_SECONDS)
            error = TransientError("stopped by SIGTERM (for example a Spot interruption)")
            _report_failure(error, fields, _ms(started))
            return EXIT_TRANSIENT
    finally:
        signal.signal(signal.SIGTERM, previous)
    failure = outcome.get("error")
    if failure is None:
        return EXIT_OK
    if not isinstance(failure, EcsQueryError):
        fields["error_type"] = type(failure).__name__
        fields["error_message"] = f"unexpected {type(failure).__name__}: {failure}"
        logger.error(
            "unexpected error",
            exc_info=failure,
            extra={"fields": {k: v for k, v in fields.items() if k != "error_message"}},
        )
        _metric_failure(fields)
        return EXIT_INTERNAL_ERROR
    _report_failure(failure, fields, _ms(started))
    return failure.exit_code


def _report_failure(error: EcsQueryError, fields: dict[str, Any], duration_ms: float) -> None:
    kind = "UserError" if isinstance(error, UserError) else type(error).__name__
    fields["error_type"] = kind
    fields["error_message"] = str(error)
    logger.error(
        str(error),
        extra={
            "fields": {
                **{key: value for key, value in fields.items() if key != "error_message"},
                "error_type": kind,
                "exit_code": error.exit_code,
                "duration_ms": round(duration_ms),
            }
        },
    )
    _metric_failure(fields)


def _metric_failure(fields: Mapping[str, Any]) -> None:
    stage = str(fields.get("stage", "shard"))
    name = "ShardsFailed" if stage == Stage.SHARD.value else "StagesFailed"
    logs.emit_metrics(stage, {name: (1, "Count")}, {"JobId": fields.get("job")})


def _cpu_seconds() -> float:
    """CPU time of this process so far: its startup, DuckDB's threads and the upload."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return round(usage.ru_utime + usage.ru_stime, 3)


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)


if __name__ == "__main__":
    sys.exit(main())
