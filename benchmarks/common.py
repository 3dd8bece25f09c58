"""Timing helpers and the summary every benchmark adds its results to."""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from rich.console import Console
from rich.table import Table

T = TypeVar("T")


@dataclass(frozen=True)
class Timed(Generic[T]):
    """A result with the wall time and the CPU time (this process and its children) it took."""

    value: T
    wall: float
    cpu: float


def cpu_seconds() -> float:
    """User and system CPU of this process and of its waited-for children, so far."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def timed(work: Callable[[], T]) -> Timed[T]:
    cpu = cpu_seconds()
    started = time.perf_counter()
    value = work()
    return Timed(value, time.perf_counter() - started, cpu_seconds() - cpu)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def spread(values: Sequence[float]) -> str:
    """Median with the lowest and highest value, for a table cell."""
    return f"{median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


@dataclass(frozen=True)
class Outcome:
    """One line of the final summary: a metric, its value, its goal and whether it is met.

    ``passed`` is None for figures reported without a goal.
    """

    metric: str
    value: str
    goal: str
    passed: bool | None


def summary_table(outcomes: Sequence[Outcome]) -> Table:
    table = Table(title="Summary", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("goal", justify="right")
    table.add_column("")
    for outcome in outcomes:
        if outcome.passed is None:
            verdict = "[dim]info"
        else:
            verdict = "[green]PASS" if outcome.passed else "[red]MISS"
        table.add_row(outcome.metric, outcome.value, outcome.goal, verdict)
    return table


def bench_console() -> Console:
    """Rich's console, 120 columns wide when the output is not a terminal."""
    console = Console()
    return console if console.is_terminal else Console(width=max(console.width, 120))
