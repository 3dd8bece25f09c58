"""Checks of the construct's props, run at construction, before any resource exists.

Every check returns problems as text in one style: ``prop: what is wrong, received X; what to
do``. The construct collects them all and raises one ``PropsError``, so a user fixes every
prop in one pass. Values that are unresolved tokens are skipped: they are only known at deploy
time.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

import aws_cdk as cdk

from ecs_query import fargate
from ecs_query.errors import EcsQueryError
from ecs_query.spec import MAX_CONCURRENCY_LIMIT

# S3 key prefixes that the construct turns into IAM resources and Step Functions patterns.
_PREFIX_RE: Final = re.compile(r"^[A-Za-z0-9!_.'()/=+-]+/$")
_EMAIL_RE: Final = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class PropsError(EcsQueryError, ValueError):
    """The construct's props cannot make a working deployment; every problem is listed."""

    def __init__(self, construct: str, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        count = len(self.problems)
        noun = "problem" if count == 1 else "problems"
        lines = "\n".join(f"  - {problem}" for problem in self.problems)
        super().__init__(f"invalid {construct} props ({count} {noun}):\n{lines}")


def is_token(value: object) -> bool:
    """True when ``value`` is only known at deploy time (a CloudFormation token)."""
    return cdk.Token.is_unresolved(value)


def task_size_problems(cpu: int, memory_limit_mib: int) -> list[str]:
    """A Fargate task size must be one of Fargate's cpu/memory pairs."""
    if is_token(cpu) or is_token(memory_limit_mib):
        return []
    problem = fargate.size_problem(cpu, memory_limit_mib)
    if problem is None:
        return []
    return [
        f"cpu/memory_limit_mib: {problem}, received cpu={cpu} memory_limit_mib={memory_limit_mib}"
    ]


def ephemeral_storage_problems(gib: int | None) -> list[str]:
    if gib is None or is_token(gib):
        return []
    low, high = fargate.MIN_EPHEMERAL_GIB, fargate.MAX_EPHEMERAL_GIB
    if low <= gib <= high:
        return []
    return [
        f"ephemeral_storage_gib: out of range, received {gib}; use {low} to {high} GiB, "
        f"or leave it unset for Fargate's default {fargate.DEFAULT_EPHEMERAL_GIB} GiB"
    ]


def range_problems(name: str, value: int, low: int, high: int, hint: str = "") -> list[str]:
    if is_token(value) or low <= value <= high:
        return []
    suffix = f" ({hint})" if hint else ""
    return [f"{name}: out of range, received {value}; use {low} to {high}{suffix}"]


def max_concurrency_problems(value: int) -> list[str]:
    return range_problems(
        "max_concurrency",
        value,
        1,
        MAX_CONCURRENCY_LIMIT,
        "a Distributed Map runs at most 10,000 child executions at once",
    )


def prefix_problems(name: str, prefix: str) -> list[str]:
    """An S3 key prefix that scopes IAM permissions: no leading '/', no wildcard, ends in '/'.

    The trailing '/' matters: ``data/2024`` would also grant ``data/2024-old/``.
    """
    if is_token(prefix):
        return [f"{name}: received an unresolved token; give the prefix as plain text"]
    if not _PREFIX_RE.match(prefix) or prefix.startswith("/") or "//" in prefix:
        return [
            f"{name}: {prefix!r} is not a key prefix this construct can scope permissions to; "
            "use letters, digits and !_.'()=+- separated by single '/', without a leading "
            "'/' or wildcards, ending in '/' (for example 'sales/2024/')"
        ]
    return []


def input_prefixes_problems(prefixes: Sequence[str]) -> list[str]:
    if isinstance(prefixes, str):
        return [
            f"input_prefixes: expected a list of prefixes, received the string {prefixes!r}; "
            f"write [{prefixes!r}]"
        ]
    if not prefixes:
        return [
            "input_prefixes: received an empty list; leave it unset to read the whole input "
            "bucket, or list the prefixes jobs may read"
        ]
    problems: list[str] = []
    for prefix in prefixes:
        problems.extend(prefix_problems("input_prefixes", prefix))
    return problems


def email_problems(email: str | None) -> list[str]:
    if email is None or is_token(email) or _EMAIL_RE.match(email):
        return []
    return [f"alarm_email: {email!r} is not an email address; give one like ops@example.com"]


def duration_problems(name: str, value: cdk.Duration, low_s: int, high_s: int) -> list[str]:
    if value.is_unresolved():
        return []
    seconds = value.to_seconds()
    if low_s <= seconds <= high_s:
        return []
    return [
        f"{name}: out of range, received {value.to_human_string()}; use "
        f"{cdk.Duration.seconds(low_s).to_human_string()} to "
        f"{cdk.Duration.seconds(high_s).to_human_string()}"
    ]


def conflict_problems(existing: str, existing_given: bool, new: str, new_given: bool) -> list[str]:
    """Existing resource or props for a new one, never both."""
    if not (existing_given and new_given):
        return []
    return [
        f"{existing} and {new}: both given; {new} shapes the resource this construct creates "
        f"when {existing} is not given; pass one or the other"
    ]


def requires_problems(name: str, given: bool, required: str, required_given: bool) -> list[str]:
    """A prop that refines another one means nothing alone."""
    if not given or required_given:
        return []
    return [f"{name}: given without {required}; it only applies to {required}, so pass both"]
