"""DuckDB, set up for one job: S3 access without downloads, then locked to the job's files.

The httpfs extension comes from the ``duckdb-extension-httpfs`` wheel, so nothing is fetched at
run time. S3 credentials are the ones boto3 resolves (task role, profile or environment), handed
to DuckDB as a secret, so DuckDB and the SDK always agree on who is asking.

After setup the connection is locked: external access is off except for the job's own inputs and
its scratch folder, extensions cannot be installed or loaded, and settings cannot change. SQL can
then read nothing but the job's data and write nothing but through the worker.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import duckdb

from ecs_query.errors import QueryError, TransientError, UserError
from ecs_query.spec import InputFormat, ParamValue

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineSettings:
    threads: int | None = None
    memory_limit: str | None = None
    spill_dir: str | None = None
    endpoint_url: str | None = None


# Open connections and the scratch folders each owns, so SIGTERM can interrupt them all and
# closing one removes what it wrote.
_OPEN: dict[int, tuple[duckdb.DuckDBPyConnection, list[str]]] = {}
_OPEN_LOCK = threading.Lock()


def interrupt_all() -> None:
    """Interrupt every query running in this process (called on SIGTERM)."""
    with _OPEN_LOCK:
        connections = [con for con, _ in _OPEN.values()]
    for con in connections:
        with contextlib.suppress(duckdb.Error):
            con.interrupt()


def close(con: duckdb.DuckDBPyConnection) -> None:
    """Close ``con`` and remove its scratch folders (extensions, spill files)."""
    with _OPEN_LOCK:
        _, folders = _OPEN.pop(id(con), (con, []))
    con.close()
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)


def connect(
    settings: EngineSettings,
    *,
    readable: Iterable[str],
    writable_dirs: Iterable[str] = (),
) -> duckdb.DuckDBPyConnection:
    """A connection that can read ``readable`` locations and write below ``writable_dirs`` only.

    DuckDB spills below ``settings.spill_dir`` (created if missing) in a folder of this
    connection's own, so tasks sharing one file system (EFS) never collide.
    """
    readable = list(readable)
    scratch = tempfile.mkdtemp(prefix="ecs-query-duckdb-")
    folders = [scratch]
    config: dict[str, Any] = {
        "extension_directory": os.path.join(scratch, "extensions"),
        "autoinstall_known_extensions": False,
        "autoload_known_extensions": False,
    }
    if settings.threads is not None:
        config["threads"] = settings.threads
    if settings.memory_limit is not None:
        config["memory_limit"] = settings.memory_limit
    if settings.spill_dir:
        os.makedirs(settings.spill_dir, exist_ok=True)
        spill = tempfile.mkdtemp(prefix="duckdb-spill-", dir=settings.spill_dir)
        folders.append(spill)
    else:
        spill = os.path.join(scratch, "spill")
    config["temp_directory"] = spill
    con = duckdb.connect(config=config)
    if any(uri.startswith("s3://") for uri in readable):
        _enable_s3(con, settings.endpoint_url)
    allowed = [_as_dir(path) for path in [*writable_dirs, spill]]
    con.execute("SET allowed_paths = $paths", {"paths": readable})
    con.execute("SET allowed_directories = $dirs", {"dirs": allowed})
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    with _OPEN_LOCK:
        _OPEN[id(con)] = (con, folders)
    return con


def _as_dir(path: str) -> str:
    return path if path.endswith("/") else path + "/"


def _enable_s3(con: duckdb.DuckDBPyConnection, endpoint_url: str | None) -> None:
    import boto3
    import duckdb_extensions

    duckdb_extensions.import_extension("httpfs", con=con)
    con.execute("LOAD httpfs")
    # S3 answers 503 SlowDown under load and endpoints restart: retry with backoff
    # (0.2, 0.4, ... 6.4 s) before the shard gives up as transient.
    con.execute("SET http_retries = 6")
    con.execute("SET http_retry_wait_ms = 200")
    con.execute("SET http_retry_backoff = 2.0")
    session = boto3.Session()
    credentials = session.get_credentials()
    region = session.region_name or os.environ.get("AWS_REGION") or "us-east-1"
    options: dict[str, str] = {"REGION": region}
    if credentials is not None:
        frozen = credentials.get_frozen_credentials()
        options["KEY_ID"] = frozen.access_key or ""
        options["SECRET"] = frozen.secret_key or ""
        if frozen.token:
            options["SESSION_TOKEN"] = frozen.token
    if endpoint_url:
        secure = endpoint_url.startswith("https://")
        host = endpoint_url.split("://", 1)[-1].rstrip("/")
        options["ENDPOINT"] = host
        options["URL_STYLE"] = "path"
        options["USE_SSL"] = "true" if secure else "false"
    clauses = ", ".join(f"{key} {_quote(value)}" for key, value in options.items())
    con.execute(f"CREATE SECRET job_s3 (TYPE s3, PROVIDER config, {clauses})")


def _quote(value: str) -> str:
    if value in {"true", "false"}:
        return value
    return "'" + value.replace("'", "''") + "'"


def reader_sql(input_format: InputFormat, files: Sequence[str]) -> str:
    """The table function that reads ``files`` in ``input_format``."""
    listing = "[" + ", ".join(_quote(file) for file in files) + "]"
    if input_format is InputFormat.PARQUET:
        return f"read_parquet({listing})"
    if input_format is InputFormat.CSV:
        return f"read_csv({listing}, header = true, auto_detect = true)"
    return f"read_json_auto({listing}, format = 'newline_delimited')"


def create_view(
    con: duckdb.DuckDBPyConnection, name: str, input_format: InputFormat, files: Sequence[str]
) -> None:
    """Expose ``files`` as the view ``name``. DuckDB reads the files' schemas here, so a corrupt
    or mismatched file already fails now, classified like any other query error."""
    run(con, f'CREATE VIEW "{name}" AS SELECT * FROM {reader_sql(input_format, files)}', {})


def single_select(con: duckdb.DuckDBPyConnection, sql: str, what: str = "SQL") -> str:
    """Check that ``sql`` is exactly one SELECT and return it without a trailing ';'."""
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as error:
        raise QueryError(f"{what} does not parse: {_first_line(error)}") from error
    if len(statements) != 1:
        raise QueryError(f"{what} must be one SELECT statement; received {len(statements)}")
    if statements[0].type != duckdb.StatementType.SELECT:
        kind = statements[0].type.name
        raise QueryError(f"{what} must be a SELECT (or WITH ... SELECT); received a {kind}")
    return sql.strip().rstrip(";")


def bind_params(
    con: duckdb.DuckDBPyConnection, sql: str, params: Mapping[str, ParamValue], what: str = "SQL"
) -> dict[str, ParamValue]:
    """The parameters ``sql`` uses, each given a value; a clear error names any that is missing."""
    used = set(con.extract_statements(sql)[0].named_parameters)
    missing = sorted(used - set(params))
    if missing:
        names = ", ".join(f"${name}" for name in missing)
        flags = " ".join(f"--param {name}=VALUE" for name in missing)
        raise QueryError(f"{what} uses {names} but no value was given; pass {flags}")
    return {name: params[name] for name in sorted(used)}


def copy_to(
    con: duckdb.DuckDBPyConnection,
    sql: str,
    params: Mapping[str, ParamValue],
    path: str,
    output_format: str,
) -> int:
    """Run ``sql`` and write its result to the local file ``path``; returns the row count."""
    options = (
        "FORMAT parquet, COMPRESSION zstd"
        if output_format == "parquet"
        else "FORMAT csv, HEADER true"
    )
    statement = f"COPY (\n{sql}\n) TO {_quote(path)} ({options})"
    result = run(con, statement, params)
    row = result.fetchone()
    return int(row[0]) if row else 0


def run(
    con: duckdb.DuckDBPyConnection, statement: str, params: Mapping[str, ParamValue]
) -> duckdb.DuckDBPyConnection:
    """Execute with bound parameters, mapping DuckDB's errors to user or transient errors."""
    try:
        return con.execute(statement, dict(params) if params else None)
    except duckdb.Error as error:
        raise classify(error) from error


_USER_ERRORS: tuple[type[duckdb.Error], ...] = (
    duckdb.ParserException,
    duckdb.BinderException,
    duckdb.CatalogException,
    duckdb.ConversionException,
    duckdb.InvalidInputException,
    duckdb.PermissionException,
    duckdb.ConstraintException,
    duckdb.OutOfRangeException,
    duckdb.TypeMismatchException,
    duckdb.NotImplementedException,
    duckdb.SyntaxException,
)


def classify(error: duckdb.Error) -> Exception:
    """Decide whether a retry can help, and say what happened in one readable line."""
    message = _first_line(error)
    if "max_temp_directory_size" in str(error) or "No space left on device" in str(error):
        return UserError(
            f"spill space ran out: {message.split(' This limit')[0]}; give the task more "
            "ephemeral storage, mount EFS (ECS_QUERY_SPILL_DIR) or lower the shard size"
        )
    if isinstance(error, duckdb.OutOfMemoryException):
        return UserError(
            f"out of memory: {message}; give the task more memory or lower the shard size"
        )
    if isinstance(error, duckdb.HTTPException) or "HTTP" in message:
        status = getattr(error, "status_code", 0) or 0
        if status in {403, 404} or " 403 " in message or " 404 " in message:
            return UserError(f"cannot read input: {message}")
        return TransientError(f"S3 request failed: {message}")
    if isinstance(error, duckdb.IOException):
        if "Corrupt" in message or "magic" in message or "Invalid" in message:
            return QueryError(f"cannot read input: {message}")
        return TransientError(f"I/O failed: {message}")
    if isinstance(error, _USER_ERRORS):
        return QueryError(message)
    return UserError(message)


def _first_line(error: BaseException) -> str:
    """DuckDB's message without its advice block, keeping the file it names."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    kept: list[str] = []
    for line in lines:
        if line.lower().startswith(
            ("possible fixes", "potential fixes", "possible solutions", "*")
        ):
            break
        kept.append(line)
    text = " ".join(kept[:4])
    named = next((line[len("file = ") :] for line in lines if line.startswith("file = ")), None)
    if named and named not in text:
        text += f" (file {named})"
    return text
