"""Run a whole job on this machine: plan, shard workers in parallel, merge, commit.

Each shard runs in a process of its own that runs ``ecs-query worker`` with exactly the
environment an ECS task would get, so local runs exercise the container contract. Transient
failures are retried with backoff; a user error stops the job at once.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import multiprocessing.forkserver
import multiprocessing.process
import os
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Final

from ecs_query import planner, stages
from ecs_query.errors import EXIT_INTERNAL_ERROR, EXIT_USER_ERROR, ShardFailuresError
from ecs_query.planner import Plan
from ecs_query.spec import JobSpec, Stage, TaskContext, Var

logger = logging.getLogger(__name__)

DEFAULT_ATTEMPTS: Final = 3


@dataclass
class ShardEvent:
    """What the runner tells its progress display after each shard attempt."""

    index: int
    ok: bool
    rows: int = 0
    input_bytes: int = 0
    cpu_seconds: float = 0.0
    message: str = ""
    will_retry: bool = False


@dataclass
class RunReport:
    spec: JobSpec
    plan: Plan | None
    manifest: dict[str, Any]
    seconds: float
    already_committed: bool = False
    retries: int = 0
    worker_cpu_seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class RunOptions:
    workers: int | None = None
    endpoint_url: str | None = None
    attempts: int = DEFAULT_ATTEMPTS
    backoff_seconds: float = 0.5
    spill_dir: str | None = None


def run_job(
    spec: JobSpec,
    options: RunOptions,
    on_plan: Callable[[Plan], None] | None = None,
    on_shard: Callable[[ShardEvent], None] | None = None,
) -> RunReport:
    """Plan, run every shard, then finalize. Raises ``ShardFailuresError`` if any shard fails."""
    started = time.perf_counter()
    # The fork server imports the worker while the plan is made.
    multiprocessing.forkserver.ensure_running()
    outcome = stages.plan_job(spec, options.endpoint_url, write_summary=False)
    planned = time.perf_counter()
    if outcome.plan is None:
        assert outcome.already_committed is not None
        return RunReport(spec, None, outcome.already_committed, 0.0, already_committed=True)
    plan = outcome.plan
    if on_plan is not None:
        on_plan(plan)

    runner = _ShardRunner(spec, plan, options, on_shard or (lambda event: None))
    runner.run_all()
    sharded = time.perf_counter()

    context = TaskContext(
        stage=Stage.FINALIZE,
        shard_index=None,
        plan_uri=None,
        attempt=None,
        spill_dir=options.spill_dir,
        threads=None,
        memory_limit=None,
        endpoint_url=options.endpoint_url,
    )
    manifest = stages.run_finalize(spec, context, plan)
    finished = time.perf_counter()
    return RunReport(
        spec,
        plan,
        manifest,
        finished - started,
        retries=runner.retries,
        worker_cpu_seconds=runner.cpu_seconds,
        timings={
            "plan": planned - started,
            "shards": sharded - planned,
            "finalize": finished - sharded,
        },
    )


def worker_count(requested: int | None, shards: int) -> int:
    return max(1, min(requested or os.cpu_count() or 1, shards))


class _ShardRunner:
    def __init__(
        self,
        spec: JobSpec,
        plan: Plan,
        options: RunOptions,
        on_shard: Callable[[ShardEvent], None],
    ) -> None:
        self.spec = spec
        self.plan = plan
        self.options = options
        self.on_shard = on_shard
        self.workers = worker_count(options.workers, len(plan.shards))
        self.threads = max(1, (os.cpu_count() or 1) // self.workers)
        self.stop = threading.Event()
        self.running: dict[int, multiprocessing.process.BaseProcess] = {}
        self.log_dir = ""
        self.lock = threading.Lock()
        self.retries = 0
        self.cpu_seconds = 0.0  # of successful shard processes, which the runner cannot wait for

    def base_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.spec.to_env())
        env[Var.STAGE.env] = Stage.SHARD.value
        env[Var.PLAN.env] = planner.plan_uri(self.spec)
        env[Var.THREADS.env] = str(self.threads)
        if self.options.endpoint_url:
            env[Var.ENDPOINT_URL.env] = self.options.endpoint_url
        if self.options.spill_dir:
            env[Var.SPILL_DIR.env] = self.options.spill_dir
        return env

    def run_all(self) -> None:
        with tempfile.TemporaryDirectory(prefix="ecs-query-logs-") as log_dir:
            self.log_dir = log_dir
            self._run_all()

    def _run_all(self) -> None:
        base = self.base_env()
        failures: list[tuple[int, str, bool]] = []
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            futures: dict[Future[tuple[bool, str, bool]], int] = {
                pool.submit(self.run_shard, shard.index, base): shard.index
                for shard in self.plan.shards
            }
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    ok, message, user_error = future.result()
                    if not ok and message:
                        failures.append((futures[future], message, user_error))
                        if user_error:
                            self.cancel()
        if failures:
            raise ShardFailuresError(failures, total=len(self.plan.shards))

    def cancel(self) -> None:
        self.stop.set()
        with self.lock:
            for process in self.running.values():
                process.terminate()

    def run_shard(self, index: int, base: Mapping[str, str]) -> tuple[bool, str, bool]:
        """Run one shard with retries; returns (ok, error message, is user error)."""
        message = ""
        for attempt in range(1, self.options.attempts + 1):
            if self.stop.is_set():
                return False, "", False
            code, message, event = self.run_attempt(index, attempt, base)
            if code == 0:
                with self.lock:
                    self.cpu_seconds += event.cpu_seconds
                self.on_shard(event)
                return True, "", False
            user_error = code == EXIT_USER_ERROR
            if self.stop.is_set() and not user_error:
                return False, "", False  # stopped because another shard failed for good
            retry = not user_error and attempt < self.options.attempts and not self.stop.is_set()
            self.on_shard(ShardEvent(index, False, message=message, will_retry=retry))
            if not retry:
                return False, message, user_error
            with self.lock:
                self.retries += 1
            time.sleep(self.options.backoff_seconds * 2 ** (attempt - 1))
        return False, message, False

    def run_attempt(
        self, index: int, attempt: int, base: Mapping[str, str]
    ) -> tuple[int, str, ShardEvent]:
        env = dict(base)
        env[Var.SHARD_INDEX.env] = str(index)
        env[Var.ATTEMPT.env] = f"local-{attempt}-{uuid.uuid4().hex[:8]}"
        log_path = os.path.join(self.log_dir, f"shard-{index:05d}-{attempt}.log")
        process = _FORKSERVER.Process(
            target=_shard_process, args=(env, log_path), name=f"ecs-query-shard-{index}"
        )
        with self.lock:
            if self.stop.is_set():
                return -signal.SIGTERM, "", ShardEvent(index, False)
            process.start()
            self.running[index] = process
        process.join()
        with self.lock:
            self.running.pop(index, None)
        code = process.exitcode if process.exitcode is not None else EXIT_INTERNAL_ERROR
        with open(log_path, encoding="utf-8", errors="replace") as handle:
            output = handle.read()
        event = ShardEvent(index, code == 0)
        message = ""
        for line in output.splitlines():
            record = _json_line(line)
            if record is None:
                if line.strip():
                    message = line.strip()
                continue
            if record.get("message") == "shard done":
                event.rows = int(record.get("rows", 0))
                event.input_bytes = int(record.get("input_bytes", 0))
                event.cpu_seconds = float(record.get("cpu_s", 0.0))
            elif record.get("level") in {"ERROR", "CRITICAL"}:
                message = f"{record.get('error_type', 'Error')}: {record.get('message')}"
        if code != 0 and not message:
            message = f"worker exited with code {code}"
        if code < 0:
            message = f"worker killed by signal {-code}"
        event.message = message
        return code, message, event


# Shard processes are forked from a server process that has already imported the worker
# (DuckDB, boto3, the planner): a fresh process per shard, as on ECS, without paying
# ~0.3 s of interpreter start and imports for each one.
_FORKSERVER = multiprocessing.get_context("forkserver")
_FORKSERVER.set_forkserver_preload(["ecs_query.worker"])


def _shard_process(env: dict[str, str], log_path: str) -> None:
    """A shard process: ``ecs-query worker`` with the task's environment and nothing else,
    its output going to ``log_path``."""
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    os.environ.clear()
    os.environ.update(env)
    from ecs_query import worker

    code = worker.main(env)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _json_line(line: str) -> dict[str, Any] | None:
    if not line.startswith("{"):
        return None
    try:
        value = json.loads(line)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None
