"""Fargate sizes: only pairs Fargate accepts, and prices that follow the size."""

from __future__ import annotations

import pytest

from ecs_query import fargate
from ecs_query.fargate import TaskSize


@pytest.mark.parametrize(
    ("cpu", "memory"),
    [
        (256, 512),
        (256, 2048),
        (512, 4096),
        (1024, 2048),
        (2048, 16384),
        (4096, 30720),
        (8192, 61440),
        (16384, 122880),
    ],
)
def test_valid_pairs_are_accepted(cpu: int, memory: int) -> None:
    assert fargate.size_problem(cpu, memory) is None


def test_unknown_cpu_names_the_supported_values() -> None:
    problem = fargate.size_problem(3000, 8192)
    assert problem is not None
    assert "cpu 3000 is not a Fargate size" in problem
    assert "256, 512, 1024, 2048, 4096, 8192, 16384" in problem


def test_memory_outside_the_range_names_the_range() -> None:
    problem = fargate.size_problem(1024, 16384)
    assert problem == (
        "memory 16384 MiB does not fit cpu 1024; "
        "with cpu 1024 use 2048 to 8192 in steps of 1024 MiB"
    )


def test_memory_off_the_step_is_refused() -> None:
    problem = fargate.size_problem(8192, 18000)
    assert problem is not None
    assert "steps of 4096" in problem


@pytest.mark.parametrize(
    ("shard_mib", "cpu"),
    [(1, 512), (256, 512), (400, 1024), (1000, 2048), (2000, 4096), (4000, 8192), (100_000, 16384)],
)
def test_task_size_grows_with_the_shard(shard_mib: int, cpu: int) -> None:
    size = fargate.size_for_shard(shard_mib * 1024 * 1024)
    assert size.cpu == cpu
    assert fargate.size_problem(size.cpu, size.memory_mib) is None
    assert fargate.MIN_EPHEMERAL_GIB <= size.ephemeral_gib <= fargate.MAX_EPHEMERAL_GIB


def test_spot_costs_less_and_billing_has_a_one_minute_minimum() -> None:
    size = TaskSize(cpu=1024, memory_mib=4096, ephemeral_gib=21)
    prices = fargate.US_EAST_1_X86
    ten_seconds = prices.task_cost(size, 10, spot=False)
    one_minute = prices.task_cost(size, 60, spot=False)
    assert ten_seconds == one_minute
    hourly = 0.04048 + 4 * 0.004445 + 1 * 0.000111
    assert prices.task_cost(size, 3600, spot=False) == pytest.approx(hourly)
    assert prices.task_cost(size, 3600, spot=True) == pytest.approx(hourly * 0.35)
