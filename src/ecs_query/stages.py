"""The three stages of a job, the same locally and on ECS: plan, run one shard, finalize.

Every write is safe to repeat. Shards write attempt-scoped files and a success marker after
their data; finalize picks one attempt per shard, publishes files under deterministic names,
and commits ``_manifest.json`` with a create-if-absent put. Until that put, no reader of the
manifest sees anything; after it, the whole result.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from ecs_query import engine, planner
from ecs_query.errors import (
    CommitConflictError,
    EcsQueryError,
    InputError,
    OutputExistsError,
    QueryError,
    UserError,
)
from ecs_query.planner import Plan
from ecs_query.spec import InputFormat, JobSpec, OutputFormat, ParamValue, TaskContext, is_uri
from ecs_query.storage import Store, join, move_many, parse_location, store_for

logger = logging.getLogger(__name__)

LOCK_NAME: Final = "_commit.lock"
_PARTIAL_FORMAT: Final = OutputFormat.PARQUET


# ---------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class PlanOutcome:
    plan: Plan | None
    already_committed: dict[str, Any] | None = None


def resolve_sql(text: str, endpoint_url: str | None, what: str) -> str:
    """SQL given inline, or read from the location it names."""
    if not is_uri(text):
        return text
    try:
        return store_for(text, endpoint_url).read_bytes(text).decode("utf-8")
    except (OSError, InputError) as error:
        raise InputError(f"cannot read {what} from {text!r}: {error}") from error


def check_output(spec: JobSpec, store: Store) -> dict[str, Any] | None:
    """Refuse an output that holds data, unless overwriting; return the manifest if this very
    job already committed there (a rerun is then a no-op)."""
    manifest_uri = planner.manifest_uri(spec.output)
    if store.exists(manifest_uri):
        manifest = json.loads(store.read_bytes(manifest_uri))
        if manifest.get("job_id") == spec.job_id and not spec.overwrite:
            return dict(manifest)
        if not spec.overwrite:
            raise OutputExistsError(
                f"output {spec.output!r} already holds a result (job {manifest.get('job_id')}); "
                "pass --overwrite to replace it or choose another output"
            )
        return None
    if spec.overwrite:
        return None
    try:
        existing = store.list(spec.output)
    except InputError:
        return None
    data = [o.uri for o in existing if f"/{planner.STAGING_DIR}/" not in o.uri]
    if data:
        raise OutputExistsError(
            f"output {spec.output!r} already holds {len(data)} file(s), e.g. {data[0]!r}; "
            "pass --overwrite to replace them or choose another output"
        )
    return None


def plan_job(spec: JobSpec, endpoint_url: str | None, *, write_summary: bool) -> PlanOutcome:
    """List, plan and validate a job, then write its plan. Raises before any shard runs.

    With ``write_summary`` (the state machine's plan stage) a ``summary.json`` tells the state
    machine how to size its Map, or that this job already committed and nothing is left to do.
    """
    out_store = store_for(spec.output, endpoint_url)
    committed = check_output(spec, out_store)
    if committed is not None:
        if write_summary:
            summary = {"job_id": spec.job_id, "already_committed": True, "shards": 0}
            out_store.write_bytes(planner.summary_uri(spec), json.dumps(summary).encode())
        return PlanOutcome(plan=None, already_committed=committed)

    plan = build_plan(spec, endpoint_url)

    staging = planner.staging_uri(spec)
    leftovers = [obj.uri for obj in _list_or_empty(out_store, staging)]
    out_store.delete(leftovers)
    out_store.write_bytes(planner.plan_uri(spec), plan.to_json().encode())
    out_store.write_bytes(planner.items_uri(spec), json.dumps(plan.items()).encode())
    if write_summary:
        summary = {**plan.summary(), "already_committed": False}
        out_store.write_bytes(planner.summary_uri(spec), json.dumps(summary).encode())
    return PlanOutcome(plan=plan)


def build_plan(spec: JobSpec, endpoint_url: str | None) -> Plan:
    """Decide how the SQL runs over shards, list and pack the inputs, and check the queries
    against the first file. Writes nothing."""
    shard_sql = resolve_sql(spec.sql, endpoint_url, "SQL")
    if spec.merge_sql:
        merge_sql: str | None = resolve_sql(spec.merge_sql, endpoint_url, "merge SQL")
        mode = "custom"
        reason = "--merge-sql given: each shard runs the SQL, the merge SQL finishes the job"
    else:
        # Imported here: sqlglot costs shard and finalize workers ~0.15 s they never use.
        from ecs_query.distribute import distribute

        split = distribute(
            shard_sql, single_task=spec.single_task, broadcast_tables=list(spec.tables)
        )
        shard_sql, merge_sql, mode, reason = (
            split.shard_sql,
            split.merge_sql,
            split.mode.value,
            split.reason,
        )
    files, input_format = planner.list_inputs(spec.input, spec.input_format, endpoint_url)
    tables = planner.list_tables(spec, endpoint_url)
    plan = planner.make_plan(
        spec,
        files,
        input_format,
        shard_sql=shard_sql,
        merge_sql=merge_sql,
        tables=tables,
        mode=mode,
        reason=reason,
    )
    validate_queries(plan, spec.params, endpoint_url)
    return plan


def validate_queries(
    plan: Plan, params: dict[str, ParamValue] | Any, endpoint_url: str | None
) -> None:
    """Bind the shard SQL over the first input file (and the merge SQL over its result's shape)
    so that bad SQL, unknown columns, missing parameters and unreadable files fail now."""
    sample = plan.shards[0].files[0].uri
    table_files = [file for table in plan.tables.values() for file in table.files]
    settings = engine.EngineSettings(endpoint_url=endpoint_url, threads=2)
    con = engine.connect(settings, readable=[sample, *table_files])
    try:
        _create_views(con, plan, [sample])
        sql = engine.single_select(con, plan.shard_sql, "SQL")
        bound = engine.bind_params(con, sql, params, "SQL")
        engine.run(con, f"CREATE TABLE partials AS SELECT * FROM (\n{sql}\n) LIMIT 0", bound)
        if plan.merge_sql is not None:
            merge = engine.single_select(con, plan.merge_sql, "merge SQL")
            merge_bound = engine.bind_params(con, merge, params, "merge SQL")
            engine.run(con, f"DESCRIBE {merge}", merge_bound)
    except QueryError as error:
        raise QueryError(f"{error} (checked against {sample})") from error
    finally:
        engine.close(con)


def _create_views(con: Any, plan: Plan, files: list[str]) -> None:
    engine.create_view(con, "input", plan.input_format, files)
    for name, table in plan.tables.items():
        engine.create_view(con, name, table.input_format, list(table.files))


def _list_or_empty(store: Store, uri: str) -> list[Any]:
    try:
        return store.list(uri)
    except InputError:
        return []


def load_plan(spec: JobSpec, context: TaskContext) -> Plan:
    uri = context.plan_uri or planner.plan_uri(spec)
    store = store_for(uri, context.endpoint_url)
    try:
        return Plan.from_json(store.read_bytes(uri))
    except (OSError, InputError) as error:
        raise InputError(
            f"cannot read the plan at {uri!r}: {error}; run the plan stage first"
        ) from error


# ---------------------------------------------------------------------------- shard


@dataclass(frozen=True)
class ShardResult:
    shard: int
    attempt: str
    uri: str
    rows: int
    bytes_out: int
    input_bytes: int
    seconds: float


def shard_dir(spec: JobSpec, index: int) -> str:
    return join(planner.staging_uri(spec), "shards", f"{index:05d}")


def run_shard(spec: JobSpec, context: TaskContext, plan: Plan | None = None) -> ShardResult:
    """Run the shard SQL over one shard's files and stage the result under this attempt."""
    started = time.perf_counter()
    plan = plan or load_plan(spec, context)
    index = context.shard_index if context.shard_index is not None else 0
    if not 0 <= index < len(plan.shards):
        raise UserError(
            f"shard index {index} is out of range; the plan has {len(plan.shards)} shards"
        )
    shard = plan.shards[index]
    attempt = context.attempt or f"a-{uuid.uuid4().hex[:12]}"
    output_format = _PARTIAL_FORMAT if plan.needs_merge else spec.output_format
    files = [file.uri for file in shard.files]
    table_files = [f for table in plan.tables.values() for f in table.files]

    scratch = tempfile.mkdtemp(prefix="ecs-query-out-", dir=_spill_dir(context))
    try:
        settings = _engine_settings(context)
        con = engine.connect(settings, readable=[*files, *table_files], writable_dirs=[scratch])
        try:
            local = os.path.join(scratch, f"part.{output_format.value}")
            try:
                _create_views(con, plan, files)
                sql = engine.single_select(con, plan.shard_sql, "SQL")
                params = engine.bind_params(con, sql, spec.params, "SQL")
                rows = engine.copy_to(con, sql, params, local, output_format.value)
            except EcsQueryError as error:
                raise type(error)(f"{error} (shard {index}, files: {_few(files)})") from error
        finally:
            engine.close(con)
        size = os.path.getsize(local)
        store = store_for(spec.output, context.endpoint_url)
        target = join(shard_dir(spec, index), f"{attempt}.{output_format.value}")
        store.upload(local, target)
        result = ShardResult(
            shard=index,
            attempt=attempt,
            uri=target,
            rows=rows,
            bytes_out=size,
            input_bytes=shard.bytes,
            seconds=time.perf_counter() - started,
        )
        marker = {key: value for key, value in result.__dict__.items() if key != "seconds"}
        store.write_bytes(
            join(shard_dir(spec, index), f"{attempt}.json"), json.dumps(marker).encode()
        )
        return result
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _spill_dir(context: TaskContext) -> str | None:
    """The configured spill folder, created on first use (a fresh EFS mount has none)."""
    if context.spill_dir:
        os.makedirs(context.spill_dir, exist_ok=True)
    return context.spill_dir


def _engine_settings(context: TaskContext) -> engine.EngineSettings:
    return engine.EngineSettings(
        threads=context.threads,
        memory_limit=context.memory_limit,
        spill_dir=context.spill_dir,
        endpoint_url=context.endpoint_url,
    )


def _few(items: list[str], shown: int = 3) -> str:
    head = ", ".join(items[:shown])
    return head + (f" and {len(items) - shown} more" if len(items) > shown else "")


# ---------------------------------------------------------------------------- finalize


def run_finalize(spec: JobSpec, context: TaskContext, plan: Plan | None = None) -> dict[str, Any]:
    """Merge if the query needs it, publish the files and commit the manifest."""
    started = time.perf_counter()
    store = store_for(spec.output, context.endpoint_url)
    committed = check_output(spec, store)
    if committed is not None:
        return committed  # a retry after a successful commit: the staging area is gone
    plan = plan or load_plan(spec, context)
    chosen = _choose_attempts(spec, plan, store, context.tolerated_failures)
    lock = join(spec.output, planner.STAGING_DIR, LOCK_NAME)
    _claim(store, lock, spec.job_id)

    if spec.overwrite:
        _remove_previous(spec, store)
    extension = spec.output_format.value
    if plan.needs_merge:
        entries = [_merge(spec, context, plan, chosen, store)]
    else:
        entries = []
        moves = []
        for index, marker in sorted(chosen.items()):
            target = join(spec.output, f"part-{index:05d}.{extension}")
            moves.append((marker["uri"], target))
            entries.append(
                {
                    "path": target.rsplit("/", 1)[-1],
                    "uri": target,
                    "shard": index,
                    "rows": marker["rows"],
                    "bytes": marker["bytes_out"],
                }
            )
        move_many(store, moves)

    manifest = {
        "version": 1,
        "job_id": spec.job_id,
        "committed_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "output": spec.output,
        "format": extension,
        "rows": sum(entry["rows"] for entry in entries),
        "bytes": sum(entry["bytes"] for entry in entries),
        "shards": len(plan.shards),
        "input_files": plan.file_count,
        "input_bytes": plan.total_bytes,
        "missing_shards": [s.index for s in plan.shards if s.index not in chosen],
        "files": entries,
    }
    try:
        store.write_bytes(
            planner.manifest_uri(spec.output),
            json.dumps(manifest, indent=2).encode(),
            if_absent=True,
        )
    except OutputExistsError as error:
        raise CommitConflictError(
            f"another job committed to {spec.output!r} first; this job's result was not published"
        ) from error
    _cleanup(store, spec, lock)
    manifest["seconds"] = round(time.perf_counter() - started, 3)
    return manifest


def _choose_attempts(
    spec: JobSpec, plan: Plan, store: Store, tolerated: int
) -> dict[int, dict[str, Any]]:
    """One finished attempt per shard: the first by attempt id, so every retry picks the same."""
    root = join(planner.staging_uri(spec), "shards")
    markers = sorted(o.uri for o in _list_or_empty(store, root) if o.uri.endswith(".json"))
    chosen: dict[int, dict[str, Any]] = {}
    for uri in markers:
        marker = json.loads(store.read_bytes(uri))
        chosen.setdefault(int(marker["shard"]), marker)
    missing = [shard.index for shard in plan.shards if shard.index not in chosen]
    if len(missing) > tolerated:
        raise UserError(
            f"{len(missing)} of {len(plan.shards)} shards have no finished attempt "
            f"(first: {missing[:5]}; {tolerated} tolerated); nothing was committed"
        )
    return chosen


def _claim(store: Store, lock: str, job_id: str) -> None:
    """Only one job may publish to an output at a time; a retry of the same job may go on."""
    try:
        store.write_bytes(lock, job_id.encode(), if_absent=True)
    except OutputExistsError:
        holder = store.read_bytes(lock).decode()
        if holder != job_id:
            raise CommitConflictError(
                f"job {holder} is committing to this output; if it is dead, delete {lock}"
            ) from None


def _remove_previous(spec: JobSpec, store: Store) -> None:
    manifest_uri = planner.manifest_uri(spec.output)
    if store.exists(manifest_uri):
        store.delete([manifest_uri])
    old = [
        o.uri for o in _list_or_empty(store, spec.output) if f"/{planner.STAGING_DIR}/" not in o.uri
    ]
    store.delete(old)


def _merge(
    spec: JobSpec,
    context: TaskContext,
    plan: Plan,
    chosen: dict[int, dict[str, Any]],
    store: Store,
) -> dict[str, Any]:
    """Run the merge SQL over every shard's partial result, as the table ``partials``."""
    assert plan.merge_sql is not None
    scratch = tempfile.mkdtemp(prefix="ecs-query-merge-", dir=_spill_dir(context))
    try:
        partials = [chosen[index]["uri"] for index in sorted(chosen)]
        table_files = [f for table in plan.tables.values() for f in table.files]
        con = engine.connect(
            _engine_settings(context), readable=[*partials, *table_files], writable_dirs=[scratch]
        )
        try:
            for name, table in plan.tables.items():
                engine.create_view(con, name, table.input_format, list(table.files))
            engine.create_view(con, "partials", InputFormat.PARQUET, partials)
            sql = engine.single_select(con, plan.merge_sql, "merge SQL")
            params = engine.bind_params(con, sql, spec.params, "merge SQL")
            local = os.path.join(scratch, f"result.{spec.output_format.value}")
            rows = engine.copy_to(con, sql, params, local, spec.output_format.value)
        finally:
            engine.close(con)
        target = join(spec.output, f"part-00000.{spec.output_format.value}")
        store.upload(local, target)
        return {
            "path": target.rsplit("/", 1)[-1],
            "uri": target,
            "shard": None,
            "rows": rows,
            "bytes": os.path.getsize(local),
        }
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _cleanup(store: Store, spec: JobSpec, lock: str) -> None:
    """Remove the staging area (abandoned attempts included) and release the output."""
    staging = planner.staging_uri(spec)
    store.delete([o.uri for o in _list_or_empty(store, staging)])
    store.delete([lock])
    if not parse_location(spec.output).is_s3:
        # Local stores leave folders behind; S3 has none. Other jobs' staging stays.
        shutil.rmtree(parse_location(staging).path, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.rmdir(parse_location(join(spec.output, planner.STAGING_DIR)).path)
