"""Planning a job over 100,000 listed objects: packing time, plan time and shard balance.

File sizes are drawn from seeded distributions, so every run plans the same listing. Balance
is the largest shard over the mean shard. No packing of whole files can beat the largest file
over the mean shard (nor, for equal files, the file count per shard rounded up), so where the
files make the goal impossible, that bound is the goal instead.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from benchmarks.common import Outcome, median, timed
from ecs_query import planner
from ecs_query.planner import InputFile
from ecs_query.spec import InputFormat, JobSpec

PLAN_SECONDS_GOAL = 2.0
BALANCE_GOAL = 1.05
_MIB = 1024 * 1024


@dataclass(frozen=True)
class Listing:
    name: str
    files: list[InputFile]


def lognormal_listing(name: str, count: int, *, median_mib: float, sigma: float) -> Listing:
    chooser = random.Random(20_240_601)
    sizes = [
        max(1, round(chooser.lognormvariate(0.0, sigma) * median_mib * _MIB)) for _ in range(count)
    ]
    return Listing(name, _files(sizes))


def uniform_listing(name: str, count: int, *, size_mib: float) -> Listing:
    return Listing(name, _files([round(size_mib * _MIB)] * count))


def _files(sizes: Sequence[int]) -> list[InputFile]:
    # Hive-style partition folders, as a listing of a real data lake would return them.
    return [
        InputFile(f"s3://bench-data/events/day={index % 365:03d}/part-{index:06d}.parquet", size)
        for index, size in enumerate(sizes)
    ]


@dataclass(frozen=True)
class PlanningResult:
    listing: Listing
    pack_seconds: list[float]
    plan_seconds: list[float]
    json_seconds: list[float]
    json_bytes: int
    shards: int
    balance: float
    bound: float

    @property
    def balance_goal(self) -> float:
        return max(BALANCE_GOAL, self.bound)


def measure(listing: Listing, runs: int) -> PlanningResult:
    spec = JobSpec(sql="SELECT * FROM input", input="s3://bench-data/events/", output="s3://out/")
    target = spec.target_shard_mib * _MIB
    files = listing.files
    pack = [timed(lambda: planner.pack_shards(files, target)).wall for _ in range(runs)]
    plans = [
        timed(
            lambda: planner.make_plan(
                spec,
                files,
                InputFormat.PARQUET,
                shard_sql=spec.sql,
                merge_sql=None,
                tables={},
            )
        )
        for _ in range(runs)
    ]
    plan = plans[-1].value
    encoded = [timed(plan.to_json) for _ in range(runs)]
    total = sum(file.size for file in files)
    mean = total / len(plan.shards)
    largest = max(file.size for file in files)
    # Equal files cannot be split either: some shard holds the file count rounded up.
    equal_files = len({file.size for file in files}) == 1
    whole = math.ceil(len(files) / len(plan.shards)) * largest / mean if equal_files else 1.0
    return PlanningResult(
        listing=listing,
        pack_seconds=pack,
        plan_seconds=[run.wall for run in plans],
        json_seconds=[run.wall for run in encoded],
        json_bytes=len(encoded[-1].value),
        shards=len(plan.shards),
        balance=plan.balance,
        bound=max(1.0, largest / mean, whole),
    )


def run(console: Console, *, objects: int, runs: int) -> list[Outcome]:
    listings = [
        lognormal_listing("log-normal, median 2 MiB, sigma 1", objects, median_mib=2.0, sigma=1.0),
        lognormal_listing(
            "log-normal, median 8 MiB, sigma 1.25", objects, median_mib=8.0, sigma=1.25
        ),
        uniform_listing("uniform, 10 MiB each", objects, size_mib=10.0),
    ]
    results = [measure(listing, runs) for listing in listings]

    table = Table(
        title=f"Planning {objects:,} listed objects ({runs} runs, seconds, medians)",
        title_justify="left",
    )
    for name in ("listing", "total", "largest file", "shards", "pack_shards", "make_plan"):
        table.add_column(name, justify="left" if name == "listing" else "right")
    for name in ("plan.json", "max/mean", "best possible"):
        table.add_column(name, justify="right")
    for result in results:
        files = result.listing.files
        table.add_row(
            result.listing.name,
            f"{sum(f.size for f in files) / 1e12:.2f} TB",
            f"{max(f.size for f in files) / _MIB:,.0f} MiB",
            f"{result.shards:,}",
            f"{median(result.pack_seconds):.3f}",
            f"{median(result.plan_seconds):.3f}",
            f"{median(result.json_seconds):.3f} ({result.json_bytes / 1e6:.1f} MB)",
            f"{result.balance:.4f}",
            f"{result.bound:.4f}",
        )
    console.print(table)

    outcomes: list[Outcome] = []
    for result in results:
        seconds = median(result.plan_seconds)
        outcomes.append(
            Outcome(
                f"make_plan, {objects:,} files, {result.listing.name}",
                f"{seconds:.3f} s",
                f"< {PLAN_SECONDS_GOAL:.0f} s",
                seconds < PLAN_SECONDS_GOAL,
            )
        )
        goal = result.balance_goal
        outcomes.append(
            Outcome(
                f"  shard balance (max/mean), {result.listing.name}",
                f"{result.balance:.4f}",
                f"<= {goal:.4f}" + (" (largest file)" if goal > BALANCE_GOAL else ""),
                result.balance <= goal + 1e-9,
            )
        )
    return outcomes
