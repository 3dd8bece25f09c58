"""Plan a job: list its inputs, pack them into byte-balanced shards, size the tasks.

The plan is a pure function of the spec and the listing: same listing, same plan, byte for
byte. It is written as two documents under the job's staging prefix:

* ``plan.json``: the whole plan, which shard workers read to find their files;
* ``items.json``: a JSON array with one small item per shard, which a Step Functions
  Distributed Map reads with its ItemReader.
"""

from __future__ import annotations

import heapq
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Final

from ecs_query import fargate
from ecs_query.errors import InputError
from ecs_query.fargate import TaskSize
from ecs_query.spec import InputFormat, JobSpec, Var
from ecs_query.storage import ObjectInfo, join, parse_location, store_for

logger = logging.getLogger(__name__)

STAGING_DIR: Final = "_ecs_query"
MANIFEST_NAME: Final = "_manifest.json"
PLAN_NAME: Final = "plan.json"
ITEMS_NAME: Final = "items.json"
SUMMARY_NAME: Final = "summary.json"
PLAN_FAILURE_NAME: Final = "plan-failure.json"

_EXTENSIONS: Final[dict[str, InputFormat]] = {
    ".parquet": InputFormat.PARQUET,
    ".pq": InputFormat.PARQUET,
    ".csv": InputFormat.CSV,
    ".tsv": InputFormat.CSV,
    ".json": InputFormat.JSON,
    ".jsonl": InputFormat.JSON,
    ".ndjson": InputFormat.JSON,
}
# Throughput assumed for estimates: DuckDB scanning Parquet, per vCPU, as measured on this
# project's benchmark query. CSV and JSON parse several times slower.
_ESTIMATE_MIB_PER_VCPU_SECOND: Final[dict[InputFormat, float]] = {
    InputFormat.PARQUET: 200.0,
    InputFormat.CSV: 40.0,
    InputFormat.JSON: 25.0,
}
_TASK_START_SECONDS: Final = 45.0


def staging_uri(spec: JobSpec) -> str:
    """Where a job keeps its plan, shard attempts and markers until it commits."""
    return join(spec.output, STAGING_DIR, spec.job_id)


def plan_uri(spec: JobSpec) -> str:
    return join(staging_uri(spec), PLAN_NAME)


def items_uri(spec: JobSpec) -> str:
    return join(staging_uri(spec), ITEMS_NAME)


def summary_uri(spec: JobSpec) -> str:
    """The plan's summary, which the state machine reads to size the Map and its tasks."""
    return join(staging_uri(spec), SUMMARY_NAME)


def plan_failure_uri(spec: JobSpec) -> str:
    """Why the plan stage failed, for the state machine to put in the execution's cause."""
    return join(staging_uri(spec), PLAN_FAILURE_NAME)


def manifest_uri(output: str) -> str:
    return join(output, MANIFEST_NAME)


def format_of(uri: str) -> InputFormat | None:
    """The format a file's extension names, looking through a trailing ``.gz``."""
    name = uri.rsplit("/", 1)[-1].lower()
    if name.endswith(".gz"):
        name = name[:-3]
    dot = name.rfind(".")
    return _EXTENSIONS.get(name[dot:]) if dot >= 0 else None


def _is_hidden(uri: str, root: str) -> bool:
    """Files or folders below the root whose names start with '_' or '.' are not data."""
    relative = uri[len(root) :] if uri.startswith(root) else uri.rsplit("/", 1)[-1]
    return any(part.startswith(("_", ".")) for part in relative.split("/") if part)


@dataclass(frozen=True)
class InputFile:
    uri: str
    size: int


@dataclass(frozen=True)
class Shard:
    index: int
    files: tuple[InputFile, ...]

    @property
    def bytes(self) -> int:
        return sum(file.size for file in self.files)


@dataclass(frozen=True)
class TableFiles:
    """A broadcast table: its format and every file, read whole by each shard."""

    input_format: InputFormat
    files: tuple[str, ...]


@dataclass(frozen=True)
class Plan:
    """Everything the shard and finalize stages need to know about a job.

    ``shard_sql`` runs once per shard over the table ``input``; ``merge_sql``, when set, runs
    once over all shard outputs as the table ``partials``.
    """

    job_id: str
    input_format: InputFormat
    shards: tuple[Shard, ...]
    task_size: TaskSize
    concurrency: int
    target_shard_bytes: int
    shard_sql: str
    merge_sql: str | None = None
    tables: Mapping[str, TableFiles] = field(default_factory=dict)
    mode: str = "map"
    reason: str = ""

    @property
    def needs_merge(self) -> bool:
        return self.merge_sql is not None

    @property
    def total_bytes(self) -> int:
        return sum(shard.bytes for shard in self.shards)

    @property
    def file_count(self) -> int:
        return sum(len(shard.files) for shard in self.shards)

    @property
    def balance(self) -> float:
        """Largest shard over the mean shard: 1.0 is perfect balance."""
        sizes = [shard.bytes for shard in self.shards]
        mean = sum(sizes) / len(sizes)
        return max(sizes) / mean if mean else 1.0

    def items(self) -> list[dict[str, Any]]:
        """One item per shard for the Distributed Map; kept small (the Map passes them along)."""
        return [
            {"shard": shard.index, "files": len(shard.files), "bytes": shard.bytes}
            for shard in self.shards
        ]

    def summary(self) -> dict[str, Any]:
        """What the state machine reads after planning: sizes and concurrency for the Map."""
        return {
            "job_id": self.job_id,
            "shards": len(self.shards),
            "files": self.file_count,
            "bytes": self.total_bytes,
            "cpu": str(self.task_size.cpu),
            "memory": str(self.task_size.memory_mib),
            "concurrency": self.concurrency,
            "merge": self.needs_merge,
        }

    def to_json(self) -> str:
        document = {
            "version": 1,
            "job_id": self.job_id,
            "input_format": self.input_format.value,
            "task_size": asdict(self.task_size),
            "concurrency": self.concurrency,
            "target_shard_bytes": self.target_shard_bytes,
            "shards": [
                {"index": shard.index, "files": [[f.uri, f.size] for f in shard.files]}
                for shard in self.shards
            ],
            "shard_sql": self.shard_sql,
            "merge_sql": self.merge_sql,
            "mode": self.mode,
            "reason": self.reason,
            "tables": {
                name: {"format": table.input_format.value, "files": list(table.files)}
                for name, table in self.tables.items()
            },
        }
        return json.dumps(document, separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> Plan:
        document = json.loads(text)
        return cls(
            job_id=document["job_id"],
            input_format=InputFormat(document["input_format"]),
            shards=tuple(
                Shard(
                    index=shard["index"],
                    files=tuple(InputFile(uri, size) for uri, size in shard["files"]),
                )
                for shard in document["shards"]
            ),
            task_size=TaskSize(**document["task_size"]),
            concurrency=document["concurrency"],
            target_shard_bytes=document["target_shard_bytes"],
            shard_sql=document["shard_sql"],
            merge_sql=document["merge_sql"],
            mode=document["mode"],
            reason=document["reason"],
            tables={
                name: TableFiles(InputFormat(table["format"]), tuple(table["files"]))
                for name, table in document["tables"].items()
            },
        )

    def estimate(self, prices: fargate.PriceTable = fargate.US_EAST_1_X86) -> Estimate:
        """Rough duration and cost, from an assumed scan rate and task start time."""
        rate = _ESTIMATE_MIB_PER_VCPU_SECOND[self.input_format] * self.task_size.vcpu
        shard_seconds = [
            _TASK_START_SECONDS + shard.bytes / (1024 * 1024) / rate for shard in self.shards
        ]
        waves = math.ceil(len(self.shards) / self.concurrency)
        duration = max(shard_seconds) * waves
        on_demand = sum(prices.task_cost(self.task_size, s, spot=False) for s in shard_seconds)
        spot = sum(prices.task_cost(self.task_size, s, spot=True) for s in shard_seconds)
        return Estimate(duration, on_demand, spot, prices)


@dataclass(frozen=True)
class Estimate:
    seconds: float
    on_demand_usd: float
    spot_usd: float
    prices: fargate.PriceTable


def list_inputs(
    uri: str, input_format: InputFormat | None, endpoint_url: str | None, *, what: str = "input"
) -> tuple[list[InputFile], InputFormat]:
    """List the data files at ``uri`` and settle their format.

    Names starting with ``_`` or ``.`` (``_SUCCESS``, ``_manifest.json``) are skipped. With no
    format given, every file must have a known extension and all must agree.
    """
    store = store_for(uri, endpoint_url)
    listed = store.list(uri)
    location = parse_location(uri)
    root = location.uri if location.uri.endswith("/") else location.uri + "/"
    objects = [obj for obj in listed if not _is_hidden(obj.uri, root)]
    if not listed:
        raise InputError(
            f"{what} {uri!r} holds no objects; check the prefix or upload the data first"
        )
    if not objects:
        raise InputError(
            f"{what} {uri!r} holds only hidden files (names starting with '_' or '.'); "
            "point it at the data files"
        )
    chosen = input_format or _settle_format(uri, objects, what)
    if input_format is None:
        data = objects
    else:
        data = [obj for obj in objects if format_of(obj.uri) in (None, input_format)]
    if not data:
        raise InputError(f"{what} {uri!r} has no {chosen.value} files")
    empty = [obj.uri for obj in data if obj.size == 0]
    if empty:
        raise InputError(
            f"{what} file {empty[0]!r} is empty (0 bytes)"
            + (f" and {len(empty) - 1} more" if len(empty) > 1 else "")
            + "; remove it or regenerate it"
        )
    return [InputFile(obj.uri, obj.size) for obj in data], chosen


def _settle_format(uri: str, objects: Sequence[ObjectInfo], what: str) -> InputFormat:
    formats: dict[InputFormat | None, str] = {}
    for obj in objects:
        formats.setdefault(format_of(obj.uri), obj.uri)
    if None in formats:
        known = ", ".join(sorted(_EXTENSIONS))
        raise InputError(
            f"{what} file {formats[None]!r} has no known extension ({known}, optionally .gz); "
            f"name the format with --input-format / {Var.INPUT_FORMAT.env}"
        )
    if len(formats) > 1:
        examples = "; ".join(f"{fmt}: {example}" for fmt, example in formats.items())
        raise InputError(f"{what} {uri!r} mixes formats ({examples}); give one format per location")
    found = next(iter(formats))
    assert found is not None
    return found


def pack_shards(files: Sequence[InputFile], target_bytes: int) -> tuple[Shard, ...]:
    """Pack files into byte-balanced shards, largest first into the lightest shard.

    The shard count is the total over the target, rounded up, and never more than the files.
    Ties break on the file location, so the result depends on the listing alone. Within a shard,
    files keep their listing order.
    """
    if not files:
        return ()
    total = sum(file.size for file in files)
    count = max(1, min(len(files), math.ceil(total / max(1, target_bytes))))
    ordered = sorted(files, key=lambda file: (-file.size, file.uri))
    heap = [(0, index) for index in range(count)]
    members: list[list[InputFile]] = [[] for _ in range(count)]
    for file in ordered:
        load, index = heapq.heappop(heap)
        members[index].append(file)
        heapq.heappush(heap, (load + file.size, index))
    shards = [sorted(group, key=lambda file: file.uri) for group in members]
    shards.sort(key=lambda group: group[0].uri)
    return tuple(Shard(index, tuple(group)) for index, group in enumerate(shards))


def make_plan(
    spec: JobSpec,
    files: Sequence[InputFile],
    input_format: InputFormat,
    *,
    shard_sql: str,
    merge_sql: str | None,
    tables: Mapping[str, TableFiles],
    mode: str = "map",
    reason: str = "",
) -> Plan:
    """The plan for ``spec`` over this listing."""
    target = spec.target_shard_mib * 1024 * 1024
    if spec.single_task:
        target = max(1, sum(file.size for file in files))
    shards = pack_shards(files, target)
    largest = max(shard.bytes for shard in shards)
    return Plan(
        job_id=spec.job_id,
        input_format=input_format,
        shards=shards,
        task_size=fargate.size_for_shard(largest),
        concurrency=min(len(shards), spec.max_concurrency),
        target_shard_bytes=target,
        shard_sql=shard_sql,
        merge_sql=merge_sql,
        tables=dict(tables),
        mode=mode,
        reason=reason,
    )


def list_tables(spec: JobSpec, endpoint_url: str | None) -> dict[str, TableFiles]:
    """List each broadcast table's files; every problem is reported at once."""
    problems: list[str] = []
    tables: dict[str, TableFiles] = {}
    for name, uri in sorted(spec.tables.items()):
        try:
            files, table_format = list_inputs(uri, None, endpoint_url, what=f"table {name}")
        except InputError as error:
            problems.append(str(error))
            continue
        tables[name] = TableFiles(table_format, tuple(file.uri for file in files))
    if problems:
        raise InputError("; ".join(problems))
    return tables
