"""The job contract: a typed job spec that round-trips through environment variables.

Every variable carries the prefix ``ECS_QUERY_``. The same spec drives the local runner, the
worker inside an ECS task and the state machine's task overrides, so a job behaves the same
wherever it runs. ``JobSpec.from_env`` validates everything at once and raises one
``JobSpecError`` listing every problem.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Final, TypeVar

from ecs_query.errors import JobSpecError

PREFIX: Final = "ECS_QUERY_"

ParamValue = str | int | float | bool | None
_E = TypeVar("_E", bound=StrEnum)

_NAME_RE: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_JOB_ID_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$")
_RESERVED_TABLES: Final = frozenset({"input", "partials"})
_URI_SCHEMES: Final = ("s3://", "file://", "/", "./", "../")


class InputFormat(StrEnum):
    """Formats the worker reads; gzip-compressed files (``.gz``) are read as well."""

    PARQUET = "parquet"
    CSV = "csv"
    JSON = "json"


class OutputFormat(StrEnum):
    """Formats the worker writes."""

    PARQUET = "parquet"
    CSV = "csv"


class Stage(StrEnum):
    """What one worker run does: plan the job, run one shard, or merge and commit."""

    PLAN = "plan"
    SHARD = "shard"
    FINALIZE = "finalize"


class Var(StrEnum):
    """Every environment variable of the contract, without the prefix."""

    JOB_ID = "JOB_ID"
    SQL = "SQL"
    MERGE_SQL = "MERGE_SQL"
    INPUT = "INPUT"
    INPUT_FORMAT = "INPUT_FORMAT"
    TABLES = "TABLES"
    OUTPUT = "OUTPUT"
    OUTPUT_FORMAT = "OUTPUT_FORMAT"
    PARAMS = "PARAMS"
    TARGET_SHARD_MIB = "TARGET_SHARD_MIB"
    MAX_CONCURRENCY = "MAX_CONCURRENCY"
    OVERWRITE = "OVERWRITE"
    SINGLE_TASK = "SINGLE_TASK"
    TOLERATED_FAILURES = "TOLERATED_FAILURES"
    STAGE = "STAGE"
    SHARD_INDEX = "SHARD_INDEX"
    PLAN = "PLAN"
    ATTEMPT = "ATTEMPT"
    SPILL_DIR = "SPILL_DIR"
    THREADS = "THREADS"
    MEMORY_LIMIT = "MEMORY_LIMIT"
    ENDPOINT_URL = "ENDPOINT_URL"

    @property
    def env(self) -> str:
        return PREFIX + self.value


DEFAULT_TARGET_SHARD_MIB: Final = 256
DEFAULT_MAX_CONCURRENCY: Final = 100
MAX_CONCURRENCY_LIMIT: Final = 10_000


def is_uri(text: str) -> bool:
    """True when ``text`` names a location rather than holding SQL itself."""
    stripped = text.strip()
    return stripped.startswith(_URI_SCHEMES) and "\n" not in stripped and " " not in stripped


@dataclass(frozen=True)
class JobSpec:
    """What to run, over which data, and where the result goes.

    ``sql`` and ``merge_sql`` hold SQL text or a location (``s3://``, ``file://`` or a path) to
    read it from. ``input`` is the sharded table, visible to the SQL as ``input``; ``tables``
    are broadcast tables that every shard sees whole.
    """

    sql: str
    input: str
    output: str
    input_format: InputFormat | None = None
    output_format: OutputFormat = OutputFormat.PARQUET
    tables: Mapping[str, str] = field(default_factory=dict)
    params: Mapping[str, ParamValue] = field(default_factory=dict)
    merge_sql: str | None = None
    target_shard_mib: int = DEFAULT_TARGET_SHARD_MIB
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    overwrite: bool = False
    single_task: bool = False
    job_id: str = ""

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise JobSpecError(problems)
        if not self.job_id:
            object.__setattr__(self, "job_id", self.fingerprint())

    def problems(self) -> list[str]:
        """Every reason this spec cannot run, each naming the variable, the value and the fix."""
        problems: list[str] = []
        if not self.sql.strip():
            problems.append(
                f"{Var.SQL.env}: empty; give the SQL text or a location to read it from"
            )
        for var, value in ((Var.INPUT, self.input), (Var.OUTPUT, self.output)):
            if not value.strip():
                problems.append(f"{var.env}: empty; give an s3://bucket/prefix or a local path")
            elif "://" in value and not value.startswith(("s3://", "file://")):
                problems.append(
                    f"{var.env}: unsupported scheme in {value!r}; use s3:// or a local path"
                )
        if self.merge_sql is not None and not self.merge_sql.strip():
            problems.append(f"{Var.MERGE_SQL.env}: empty; leave it unset for a map-only query")
        for name, uri in self.tables.items():
            if not _NAME_RE.match(name):
                problems.append(
                    f"{Var.TABLES.env}: table name {name!r} is not an SQL identifier "
                    "(letters, digits and _; not starting with a digit)"
                )
            elif name.lower() in _RESERVED_TABLES:
                problems.append(
                    f"{Var.TABLES.env}: table name {name!r} is reserved; choose another name"
                )
            if not uri.strip():
                problems.append(f"{Var.TABLES.env}: table {name!r} has an empty location")
        for name, param in self.params.items():
            if not _NAME_RE.match(name):
                problems.append(
                    f"{Var.PARAMS.env}: parameter name {name!r} is not an identifier "
                    "(letters, digits and _; not starting with a digit)"
                )
            if not isinstance(param, str | int | float | bool | None):
                problems.append(
                    f"{Var.PARAMS.env}: parameter {name!r} has a {type(param).__name__} value; "
                    "use a string, number, boolean or null"
                )
        if not 1 <= self.target_shard_mib <= 1024 * 1024:
            problems.append(
                f"{Var.TARGET_SHARD_MIB.env}: {self.target_shard_mib} is out of range; "
                "use 1 to 1048576 MiB"
            )
        if not 1 <= self.max_concurrency <= MAX_CONCURRENCY_LIMIT:
            problems.append(
                f"{Var.MAX_CONCURRENCY.env}: {self.max_concurrency} is out of range; "
                f"use 1 to {MAX_CONCURRENCY_LIMIT}"
            )
        if self.job_id and not _JOB_ID_RE.match(self.job_id):
            problems.append(
                f"{Var.JOB_ID.env}: {self.job_id!r} is not a valid job id; use up to 80 letters, "
                "digits, '.', '_' or '-', starting with a letter or digit"
            )
        if self.output.rstrip("/") == self.input.rstrip("/"):
            problems.append(
                f"{Var.OUTPUT.env}: {self.output!r} is also the input; write to another location"
            )
        return problems

    def fingerprint(self) -> str:
        """A job id derived from everything that shapes the result: same job, same id."""
        payload = json.dumps(self._identity(), sort_keys=True, separators=(",", ":"))
        return "job-" + hashlib.sha256(payload.encode()).hexdigest()[:16]

    def _identity(self) -> dict[str, object]:
        return {
            "sql": self.sql,
            "merge_sql": self.merge_sql,
            "input": self.input,
            "input_format": self.input_format,
            "tables": dict(sorted(self.tables.items())),
            "params": dict(sorted(self.params.items())),
            "output": self.output,
            "output_format": self.output_format,
            "single_task": self.single_task,
        }

    def with_changes(self, **changes: object) -> JobSpec:
        return replace(self, **changes)  # type: ignore[arg-type]

    def to_env(self) -> dict[str, str]:
        """The environment variables that carry this spec; unset optional values are omitted."""
        env = {
            Var.JOB_ID.env: self.job_id,
            Var.SQL.env: self.sql,
            Var.INPUT.env: self.input,
            Var.OUTPUT.env: self.output,
            Var.OUTPUT_FORMAT.env: self.output_format.value,
            Var.TARGET_SHARD_MIB.env: str(self.target_shard_mib),
            Var.MAX_CONCURRENCY.env: str(self.max_concurrency),
        }
        if self.input_format is not None:
            env[Var.INPUT_FORMAT.env] = self.input_format.value
        if self.tables:
            env[Var.TABLES.env] = json.dumps(dict(self.tables), sort_keys=True)
        if self.params:
            env[Var.PARAMS.env] = json.dumps(dict(self.params), sort_keys=True)
        if self.merge_sql is not None:
            env[Var.MERGE_SQL.env] = self.merge_sql
        if self.overwrite:
            env[Var.OVERWRITE.env] = "true"
        if self.single_task:
            env[Var.SINGLE_TASK.env] = "true"
        return env

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> JobSpec:
        """Read and validate a spec; every problem is reported in one ``JobSpecError``."""
        reader = _EnvReader(environ)
        sql = reader.required(Var.SQL, "the SQL text, or s3://... / a path to a .sql file")
        input_uri = reader.required(Var.INPUT, "the sharded input, s3://bucket/prefix or a path")
        output = reader.required(Var.OUTPUT, "where the result goes, s3://bucket/prefix or a path")
        input_format = reader.choice(Var.INPUT_FORMAT, InputFormat)
        output_format = reader.choice(Var.OUTPUT_FORMAT, OutputFormat) or OutputFormat.PARQUET
        tables = reader.json_object(Var.TABLES)
        params = reader.json_object(Var.PARAMS)
        # An empty merge SQL means none: a state machine cannot leave a variable out.
        merge_sql = environ.get(Var.MERGE_SQL.env) or None
        target = reader.integer(Var.TARGET_SHARD_MIB, DEFAULT_TARGET_SHARD_MIB)
        concurrency = reader.integer(Var.MAX_CONCURRENCY, DEFAULT_MAX_CONCURRENCY)
        overwrite = reader.boolean(Var.OVERWRITE)
        single_task = reader.boolean(Var.SINGLE_TASK)
        job_id = environ.get(Var.JOB_ID.env, "").strip()

        for name, uri in tables.items():
            if not isinstance(uri, str):
                reader.problems.append(
                    f"{Var.TABLES.env}: table {name!r} must map to a location string"
                )
        problems = reader.problems
        # Missing values get stand-ins so the constructor's own checks still run and the user
        # sees every problem at once.
        try:
            spec = cls(
                sql=sql or "-",
                input=input_uri or "missing-input",
                output=output or "missing-output",
                input_format=input_format,
                output_format=output_format,
                tables={str(k): v for k, v in tables.items() if isinstance(v, str)},
                params=params,  # type: ignore[arg-type]
                merge_sql=merge_sql,
                target_shard_mib=target,
                max_concurrency=concurrency,
                overwrite=overwrite,
                single_task=single_task,
                job_id=job_id,
            )
        except JobSpecError as error:
            problems = problems + [p for p in error.problems if p not in problems]
        if problems:
            raise JobSpecError(problems)
        return spec


@dataclass(frozen=True)
class TaskContext:
    """The per-task part of the contract: which stage, which shard, which attempt, and limits."""

    stage: Stage
    shard_index: int | None
    plan_uri: str | None
    attempt: str | None
    spill_dir: str | None
    threads: int | None
    memory_limit: str | None
    endpoint_url: str | None
    tolerated_failures: int = 0

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> TaskContext:
        reader = _EnvReader(environ)
        stage = reader.choice(Var.STAGE, Stage) or Stage.SHARD
        shard_index = reader.optional_integer(Var.SHARD_INDEX)
        if stage is Stage.SHARD and shard_index is None and Var.SHARD_INDEX.env not in environ:
            reader.problems.append(
                f"{Var.SHARD_INDEX.env}: missing; the shard stage needs the shard's index "
                "(0, 1, ...)"
            )
        if shard_index is not None and shard_index < 0:
            reader.problems.append(f"{Var.SHARD_INDEX.env}: {shard_index} is negative")
        threads = reader.optional_integer(Var.THREADS)
        if threads is not None and threads < 1:
            reader.problems.append(f"{Var.THREADS.env}: {threads}; use 1 or more")
        tolerated = reader.integer(Var.TOLERATED_FAILURES, 0)
        if tolerated < 0:
            reader.problems.append(f"{Var.TOLERATED_FAILURES.env}: {tolerated}; use 0 or more")
        attempt = environ.get(Var.ATTEMPT.env) or None
        if attempt is not None and not _JOB_ID_RE.match(attempt):
            reader.problems.append(
                f"{Var.ATTEMPT.env}: {attempt!r} is not a valid attempt id "
                "(letters, digits, '.', '_' or '-')"
            )
        if reader.problems:
            raise JobSpecError(reader.problems)
        return cls(
            stage=stage,
            shard_index=shard_index,
            plan_uri=environ.get(Var.PLAN.env) or None,
            attempt=attempt,
            spill_dir=environ.get(Var.SPILL_DIR.env) or None,
            threads=threads,
            memory_limit=environ.get(Var.MEMORY_LIMIT.env) or None,
            endpoint_url=environ.get(Var.ENDPOINT_URL.env)
            or environ.get("AWS_ENDPOINT_URL")
            or None,
        )


class _EnvReader:
    """Reads typed values and collects problems instead of stopping at the first one."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.problems: list[str] = []

    def required(self, var: Var, what: str) -> str:
        value = self.environ.get(var.env)
        if value is None:
            self.problems.append(f"{var.env}: missing; set it to {what}")
            return ""
        if not value.strip():
            self.problems.append(f"{var.env}: empty; set it to {what}")
            return ""
        return value

    def choice(self, var: Var, enum: type[_E]) -> _E | None:
        raw = self.environ.get(var.env)
        if raw is None or not raw.strip():
            return None
        try:
            return enum(raw.strip().lower())
        except ValueError:
            allowed = ", ".join(member.value for member in enum)
            self.problems.append(f"{var.env}: unknown value {raw!r}; use one of: {allowed}")
            return None

    def integer(self, var: Var, default: int) -> int:
        value = self.optional_integer(var)
        return default if value is None else value

    def optional_integer(self, var: Var) -> int | None:
        raw = self.environ.get(var.env)
        if raw is None or not raw.strip():
            return None
        try:
            return int(raw.strip())
        except ValueError:
            self.problems.append(f"{var.env}: {raw!r} is not a whole number")
            return None

    def boolean(self, var: Var) -> bool:
        raw = self.environ.get(var.env)
        if raw is None or not raw.strip():
            return False
        lowered = raw.strip().lower()
        if lowered in {"1", "true", "yes"}:
            return True
        if lowered in {"0", "false", "no"}:
            return False
        self.problems.append(f"{var.env}: {raw!r} is not a boolean; use true or false")
        return False

    def json_object(self, var: Var) -> dict[str, object]:
        raw = self.environ.get(var.env)
        if raw is None or not raw.strip():
            return {}
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as error:
            self.problems.append(f"{var.env}: not valid JSON ({error.msg} at {error.pos})")
            return {}
        if not isinstance(value, dict):
            self.problems.append(
                f'{var.env}: expected a JSON object such as {{"name": ...}}, '
                f"received {type(value).__name__}"
            )
            return {}
        return value


def parse_param(text: str) -> tuple[str, ParamValue]:
    """Parse a ``NAME=VALUE`` CLI parameter; numbers and true/false/null keep their JSON type.

    Quote a value to keep it a string: ``--param code='"007"'``.
    """
    name, sep, raw = text.partition("=")
    if not sep:
        raise JobSpecError([f"--param {text!r}: expected NAME=VALUE"])
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        return name.strip(), raw
    if isinstance(value, str | int | float | bool) or value is None:
        return name.strip(), value
    return name.strip(), raw


def parse_table(text: str) -> tuple[str, str]:
    """Parse a ``NAME=URI`` broadcast table argument."""
    name, sep, uri = text.partition("=")
    if not sep:
        raise JobSpecError([f"--table {text!r}: expected NAME=URI, for example nation=s3://b/n/"])
    return name.strip(), uri.strip()
