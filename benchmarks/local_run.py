"""A whole local job against one raw DuckDB query over the same Parquet files.

Baseline: one ``duckdb.connect()`` running Q1 over ``read_parquet('<data>/*.parquet')`` with
every core, fetching the result. Contender: ``ecs_query.local.run_job`` with its defaults (one
worker process per core, the default shard target), Q1 in two stages, writing and committing
its result. Runs alternate (baseline, contender, baseline, ...) so that machine noise hits both.
"""

from __future__ import annotations

import functools
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import duckdb
from rich.console import Console
from rich.table import Table

from benchmarks.common import Outcome, Timed, median, spread, timed
from ecs_query import demo, local, sample, stages
from ecs_query.local import RunReport, ShardEvent
from ecs_query.planner import Plan
from ecs_query.spec import DEFAULT_TARGET_SHARD_MIB, JobSpec, Stage, TaskContext

RATIO_GOAL = 1.10

Rows = list[tuple[Any, ...]]


@dataclass
class JobRun:
    """A local job's report, and when each shard finished, in seconds after planning ended."""

    report: RunReport
    shards: int
    finished: list[float] = field(default_factory=list)


def ensure_data(root: Path, *, rows: int, files: int, console: Console) -> Path:
    folder = root / f"lineitem-{rows}-{files}"
    current = sample.lineitem_is_current(folder, rows=rows, files=files)
    if not current:
        console.print(f"generating {rows:,} rows in {files} files under {folder} ...")
    run = timed(lambda: sample.ensure_lineitem(folder, rows=rows, files=files))
    size = sum(path.stat().st_size for path in run.value)
    how = "reused" if current else f"generated in {run.wall:.1f} s"
    console.print(
        f"data: {folder}, {rows:,} rows, {files} files, {size / 1e9:.3f} GB "
        f"({size / rows:.1f} bytes/row), {how}"
    )
    return folder


def run_baseline(data: Path, threads: int | None = None) -> Rows:
    """Q1 as one DuckDB query over every file; ``threads`` None means DuckDB's default."""
    con = duckdb.connect(config={} if threads is None else {"threads": threads})
    try:
        pattern = str(data / "*.parquet").replace("'", "''")
        con.execute(f"CREATE VIEW input AS SELECT * FROM read_parquet('{pattern}')")
        return con.execute(demo.Q1_SQL, {"cutoff": demo.CUTOFF}).fetchall()
    finally:
        con.close()


def run_contender(
    data: Path,
    output: Path,
    *,
    target_shard_mib: int = DEFAULT_TARGET_SHARD_MIB,
    single_task: bool = False,
) -> JobRun:
    """The whole local job: plan, a worker process per shard, merge, commit."""
    spec = q1_spec(data, output, target_shard_mib=target_shard_mib, single_task=single_task)
    marks: dict[str, Any] = {"planned": 0.0, "shards": 0, "finished": []}

    def on_plan(plan: Plan) -> None:
        marks["planned"] = time.perf_counter()
        marks["shards"] = len(plan.shards)

    def on_shard(event: ShardEvent) -> None:
        if event.ok:
            marks["finished"].append(time.perf_counter() - marks["planned"])

    report = local.run_job(spec, local.RunOptions(), on_plan=on_plan, on_shard=on_shard)
    return JobRun(report, marks["shards"], sorted(marks["finished"]))


def q1_spec(
    data: Path,
    output: Path,
    *,
    target_shard_mib: int = DEFAULT_TARGET_SHARD_MIB,
    single_task: bool = False,
) -> JobSpec:
    return JobSpec(
        sql=demo.Q1_SHARD_SQL,
        merge_sql=demo.Q1_MERGE_SQL,
        input=str(data),
        output=str(output),
        params={"cutoff": demo.CUTOFF},
        target_shard_mib=target_shard_mib,
        single_task=single_task,
        overwrite=True,
    )


def run_in_process(data: Path, output: Path) -> JobRun:
    """The same stages, shards and threads as the local job, with no worker processes: each
    shard runs on a thread of this process. What is left is the cost of everything else."""
    spec = q1_spec(data, output)
    started = time.perf_counter()
    plan = stages.plan_job(spec, None, write_summary=False).plan
    assert plan is not None
    planned = time.perf_counter()
    workers = local.worker_count(None, len(plan.shards))
    threads = max(1, (os.cpu_count() or 1) // workers)
    finished: list[float] = []

    def shard(index: int) -> None:
        stages.run_shard(spec, _context(Stage.SHARD, index, threads), plan)
        finished.append(time.perf_counter() - planned)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(shard, range(len(plan.shards))))
    sharded = time.perf_counter()
    manifest = stages.run_finalize(spec, _context(Stage.FINALIZE, None, None), plan)
    done = time.perf_counter()
    timings = {"plan": planned - started, "shards": sharded - planned, "finalize": done - sharded}
    report = RunReport(spec, plan, manifest, done - started, timings=timings)
    return JobRun(report, len(plan.shards), sorted(finished))


def _context(stage: Stage, index: int | None, threads: int | None) -> TaskContext:
    return TaskContext(
        stage=stage,
        shard_index=index,
        plan_uri=None,
        attempt=None if index is None else f"bench-{index}",
        spill_dir=None,
        threads=threads,
        memory_limit=None,
        endpoint_url=None,
    )


def read_output(report: RunReport) -> Rows:
    files = [entry["uri"] for entry in report.manifest["files"]]
    con = duckdb.connect()
    try:
        return con.execute("SELECT * FROM read_parquet($files)", {"files": files}).fetchall()
    finally:
        con.close()


def same_result(expected: Rows, actual: Rows) -> bool:
    """Same groups, exact sums and counts, averages equal to 1e-9 relative."""
    if len(expected) != len(actual):
        return False
    for want, got in zip(expected, actual, strict=True):
        for wanted, value in zip(want, got, strict=True):
            if isinstance(wanted, float) and isinstance(value, float):
                if not math.isclose(wanted, value, rel_tol=1e-9):
                    return False
            elif wanted != value:
                return False
    return True


@dataclass
class Comparison:
    baseline: list[Timed[Rows]] = field(default_factory=list)
    contender: list[Timed[JobRun]] = field(default_factory=list)

    @property
    def pair_ratios(self) -> list[float]:
        return [c.wall / b.wall for b, c in zip(self.baseline, self.contender, strict=True)]

    @property
    def ratio_of_medians(self) -> float:
        return median([c.wall for c in self.contender]) / median([b.wall for b in self.baseline])


def compare(data: Path, output: Path, *, runs: int, console: Console) -> Comparison:
    """Warm both up once, then ``runs`` alternating pairs: baseline, contender, baseline, ..."""
    expected = run_baseline(data)
    warm = run_contender(data, output)
    if not same_result(expected, read_output(warm.report)):
        raise SystemExit("the local job's Q1 result differs from DuckDB's; not timing it")
    noun = "shard" if warm.shards == 1 else "shards"
    console.print(f"results agree; contender plan: {warm.shards} {noun}, {_workers(warm)}")

    comparison = Comparison()
    for _ in range(runs):
        comparison.baseline.append(timed(lambda: run_baseline(data)))
        contender = timed(lambda: run_contender(data, output))
        # Shard processes fork from a server process, not from this one, so their CPU time is
        # not among this process's children: the job reports it.
        shard_cpu = contender.value.report.worker_cpu_seconds
        comparison.contender.append(replace(contender, cpu=contender.cpu + shard_cpu))
    return comparison


def comparison_table(comparison: Comparison) -> Table:
    table = Table(title="Q1: local job vs raw DuckDB (seconds)", title_justify="left")
    for name in ("run", "baseline", "local job", "ratio", "plan", "shards", "finalize"):
        table.add_column(name, justify="right")
    table.add_column("shards finished at (s after plan)", justify="left")
    pairs = zip(comparison.baseline, comparison.contender, strict=True)
    for number, (base, job) in enumerate(pairs, start=1):
        timings = job.value.report.timings
        table.add_row(
            str(number),
            f"{base.wall:.3f}",
            f"{job.wall:.3f}",
            f"{job.wall / base.wall:.3f}",
            f"{timings['plan']:.3f}",
            f"{timings['shards']:.3f}",
            f"{timings['finalize']:.3f}",
            ", ".join(f"{t:.2f}" for t in job.value.finished),
        )
    jobs = [job.value.report.timings for job in comparison.contender]
    table.add_row(
        "median",
        f"{median([b.wall for b in comparison.baseline]):.3f}",
        f"{median([c.wall for c in comparison.contender]):.3f}",
        f"{median(comparison.pair_ratios):.3f}",
        *(f"{median([t[step] for t in jobs]):.3f}" for step in ("plan", "shards", "finalize")),
        "",
        style="bold",
    )
    cpu_base = median([b.cpu for b in comparison.baseline])
    cpu_job = median([c.cpu for c in comparison.contender])
    table.caption = (
        f"CPU seconds, median: baseline {cpu_base:.2f}, local job {cpu_job:.2f} "
        f"(ratio {cpu_job / cpu_base:.2f}); ratio column: each pair's local job / baseline"
    )
    return table


def outcomes(comparison: Comparison, data_bytes: int) -> list[Outcome]:
    ratio = median(comparison.pair_ratios)
    cpu_ratio = median([c.cpu for c in comparison.contender]) / median(
        [b.cpu for b in comparison.baseline]
    )
    base = median([b.wall for b in comparison.baseline])
    return [
        Outcome(
            f"local job / raw DuckDB, Q1 wall time ({data_bytes / 1e9:.2f} GB)",
            f"{ratio:.3f}",
            f"<= {RATIO_GOAL:.2f}",
            ratio <= RATIO_GOAL,
        ),
        Outcome(
            "  ratio of the medians instead",
            f"{comparison.ratio_of_medians:.3f}",
            f"<= {RATIO_GOAL:.2f}",
            comparison.ratio_of_medians <= RATIO_GOAL,
        ),
        Outcome("  CPU seconds ratio", f"{cpu_ratio:.3f}", "", None),
        Outcome("  raw DuckDB scan rate", f"{data_bytes / base / 1e6:,.0f} MB/s", "", None),
    ]


# ---------------------------------------------------------------------------- investigation


@dataclass
class Variant:
    """One way to run Q1, timed in every round of the investigation."""

    name: str
    work: Callable[[], Any]
    walls: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    cpus: list[float] = field(default_factory=list)
    phases: list[dict[str, float]] = field(default_factory=list)
    shards: str = ""
    workers: str = ""


def investigate(
    data: Path, output: Path, *, runs: int, data_bytes: int, console: Console
) -> list[Outcome]:
    """Where the local job's time goes: process start-up, threads per worker, shard count.

    Each round times the baseline first and every variant after it, so each variant's ratio
    is against a baseline measured moments before. CPU seconds (this process and its worker
    processes) are less sensitive to other load on the machine than wall time.
    """
    total_mib = data_bytes / (1024 * 1024)
    per_worker = math.ceil(total_mib / (os.cpu_count() or 1))
    fifth = math.ceil(total_mib / 5)

    def job(**options: Any) -> Callable[[], JobRun]:
        return functools.partial(run_contender, data, output, **options)

    baseline = Variant("raw DuckDB, all threads", lambda: run_baseline(data))
    variants = [
        Variant("raw DuckDB, 1 thread", lambda: run_baseline(data, threads=1)),
        Variant("worker process start-up alone", worker_start),
        Variant(f"default ({DEFAULT_TARGET_SHARD_MIB} MiB shards)", job()),
        Variant("default, shards on threads (no processes)", lambda: run_in_process(data, output)),
        Variant("one shard (single task)", job(single_task=True)),
        Variant(f"one shard per worker ({per_worker} MiB)", job(target_shard_mib=per_worker)),
        Variant(f"five shards ({fifth} MiB)", job(target_shard_mib=fifth)),
        Variant("128 MiB shards", job(target_shard_mib=128)),
    ]
    for _ in range(runs):
        for variant in [baseline, *variants]:
            result = timed(variant.work)
            variant.walls.append(result.wall)
            variant.ratios.append(result.wall / baseline.walls[-1])
            shard_cpu = (
                result.value.report.worker_cpu_seconds if isinstance(result.value, JobRun) else 0.0
            )
            variant.cpus.append(result.cpu + shard_cpu)
            if isinstance(result.value, JobRun):
                variant.phases.append(result.value.report.timings)
                variant.shards = str(result.value.shards)
                variant.workers = _workers(result.value)

    table = Table(title="Where the time goes (seconds, medians)", title_justify="left")
    columns = ("variant", "shards", "workers", "wall (min-max)", "/ baseline", "CPU")
    for name in (*columns, "plan", "shards", "final"):
        table.add_column(name, justify="left" if name == "variant" else "right")
    for variant in [baseline, *variants]:
        phases = [
            f"{median([p[step] for p in variant.phases]):.3f}" if variant.phases else ""
            for step in ("plan", "shards", "finalize")
        ]
        table.add_row(
            variant.name,
            variant.shards,
            variant.workers,
            spread(variant.walls),
            f"{median(variant.ratios):.3f}",
            f"{median(variant.cpus):.2f}",
            *phases,
        )
    console.print(table)
    return [
        Outcome(
            f"  {variant.name} / raw DuckDB",
            f"{median(variant.ratios):.3f}",
            "",
            None,
        )
        for variant in variants
        if variant.phases
    ] + [Outcome("  worker process start-up", f"{median(variants[1].walls):.3f} s", "", None)]


def worker_start() -> int:
    """Interpreter start and imports of ``ecs-query worker``: with no job in its environment,
    the worker stops right after reading it (exit code 65)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("ECS_QUERY_")}
    finished = subprocess.run(
        [sys.executable, "-m", "ecs_query", "worker"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
    )
    return finished.returncode


def _workers(run: JobRun) -> str:
    workers = local.worker_count(None, run.shards)
    threads = max(1, (os.cpu_count() or 1) // workers)
    return f"{workers} x {threads} thread{'s' if threads > 1 else ''}"


def clean_output(output: Path) -> None:
    shutil.rmtree(output, ignore_errors=True)


def data_size(data: Path) -> int:
    return sum(path.stat().st_size for path in data.glob("*.parquet"))
