"""Fargate task sizes and prices: which cpu/memory pairs exist and what they cost.

Runtime code and the CDK construct share this table, so a size the planner picks is always
one the task definition accepts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

# cpu units -> (min MiB, max MiB, step MiB), Linux tasks, platform 1.4.0.
_MEMORY_RANGES: Final[dict[int, tuple[int, int, int]]] = {
    256: (512, 2048, 0),
    512: (1024, 4096, 1024),
    1024: (2048, 8192, 1024),
    2048: (4096, 16384, 1024),
    4096: (8192, 30720, 1024),
    8192: (16384, 61440, 4096),
    16384: (32768, 122880, 8192),
}
_QUARTER_VCPU_MEMORY: Final = (512, 1024, 2048)

MIN_EPHEMERAL_GIB: Final = 21
MAX_EPHEMERAL_GIB: Final = 200
DEFAULT_EPHEMERAL_GIB: Final = 20


@dataclass(frozen=True)
class PriceTable:
    """On-demand Fargate prices for one region and architecture, and the date they were read."""

    region: str
    as_of: str
    vcpu_hour: float
    gib_hour: float
    ephemeral_gib_hour: float
    spot_discount: float

    def task_cost(self, size: TaskSize, seconds: float, *, spot: bool) -> float:
        billed_hours = max(seconds, 60.0) / 3600.0
        extra_storage = max(0, size.ephemeral_gib - DEFAULT_EPHEMERAL_GIB)
        hourly = (
            size.vcpu * self.vcpu_hour
            + size.memory_gib * self.gib_hour
            + extra_storage * self.ephemeral_gib_hour
        )
        cost = hourly * billed_hours
        return cost * (1.0 - self.spot_discount) if spot else cost


# Fargate Spot has no fixed price; 65 % off on-demand is the middle of its usual 50-70 % range.
US_EAST_1_X86: Final = PriceTable(
    region="us-east-1",
    as_of="2026-12",
    vcpu_hour=0.04048,
    gib_hour=0.004445,
    ephemeral_gib_hour=0.000111,
    spot_discount=0.65,
)
US_EAST_1_ARM: Final = PriceTable(
    region="us-east-1",
    as_of="2026-12",
    vcpu_hour=0.03238,
    gib_hour=0.00356,
    ephemeral_gib_hour=0.000111,
    spot_discount=0.65,
)


@dataclass(frozen=True, order=True)
class TaskSize:
    """A Fargate task size: cpu units (1024 per vCPU), memory in MiB, ephemeral storage in GiB."""

    cpu: int
    memory_mib: int
    ephemeral_gib: int = MIN_EPHEMERAL_GIB

    @property
    def vcpu(self) -> float:
        return self.cpu / 1024

    @property
    def memory_gib(self) -> float:
        return self.memory_mib / 1024

    def __str__(self) -> str:
        return f"{self.vcpu:g} vCPU, {self.memory_gib:g} GiB, {self.ephemeral_gib} GiB disk"


def valid_memory(cpu: int) -> list[int]:
    """Every memory size (MiB) Fargate accepts with ``cpu`` units; empty for an invalid cpu."""
    if cpu == 256:
        return list(_QUARTER_VCPU_MEMORY)
    bounds = _MEMORY_RANGES.get(cpu)
    if bounds is None:
        return []
    low, high, step = bounds
    return list(range(low, high + 1, step))


def size_problem(cpu: int, memory_mib: int) -> str | None:
    """Why ``cpu``/``memory_mib`` is not a Fargate size, or None when it is one."""
    if cpu not in _MEMORY_RANGES:
        supported = ", ".join(str(units) for units in _MEMORY_RANGES)
        return f"cpu {cpu} is not a Fargate size; supported cpu units: {supported}"
    allowed = valid_memory(cpu)
    if memory_mib not in allowed:
        low, high, step = _MEMORY_RANGES[cpu]
        choices = "512, 1024 or 2048" if cpu == 256 else f"{low} to {high} in steps of {step}"
        return f"memory {memory_mib} MiB does not fit cpu {cpu}; with cpu {cpu} use {choices} MiB"
    return None


def size_for_shard(shard_bytes: int, *, mib_per_vcpu: int = 512, gib_per_vcpu: int = 4) -> TaskSize:
    """The smallest task that gives a shard one vCPU per ``mib_per_vcpu`` of input.

    DuckDB streams Parquet, so memory follows cpu (``gib_per_vcpu``, within Fargate's pairs)
    rather than input size. Disk is sized for spilling up to three times the shard.
    """
    wanted_vcpu = shard_bytes / (mib_per_vcpu * 1024 * 1024)
    cpu = next(
        (units for units in _MEMORY_RANGES if units >= 512 and units / 1024 >= wanted_vcpu), 16384
    )
    allowed = valid_memory(cpu)
    target = int(cpu / 1024 * gib_per_vcpu * 1024)
    memory = min((m for m in allowed if m >= target), default=allowed[-1])
    spill_gib = -(-3 * shard_bytes // (1024**3))
    ephemeral = min(MAX_EPHEMERAL_GIB, max(MIN_EPHEMERAL_GIB, spill_gib + 4))
    return TaskSize(cpu=cpu, memory_mib=memory, ephemeral_gib=ephemeral)
