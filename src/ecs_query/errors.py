"""One exception tree for the whole package, and the exit codes it maps to.

Exit codes are part of the worker's contract with the state machine:

* ``0``  the stage finished and its output is written;
* ``65`` a user error (bad SQL, bad data, bad job spec): retrying cannot help;
* ``75`` a transient failure (network, throttling, capacity, interruption): worth retrying;
* ``70`` an unexpected internal error: retried once, then reported.
"""

from __future__ import annotations

from collections.abc import Sequence

EXIT_OK = 0
EXIT_USER_ERROR = 65
EXIT_INTERNAL_ERROR = 70
EXIT_TRANSIENT = 75


class EcsQueryError(Exception):
    """Base of every error the package raises on purpose."""

    exit_code = EXIT_INTERNAL_ERROR


class UserError(EcsQueryError):
    """The job as given cannot succeed: fix the input, SQL or spec and submit again."""

    exit_code = EXIT_USER_ERROR


class TransientError(EcsQueryError):
    """Something outside the job failed for now: the same attempt may succeed later."""

    exit_code = EXIT_TRANSIENT


class JobSpecError(UserError):
    """The job spec is invalid; every problem found is listed, not just the first."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        count = len(self.problems)
        lines = "\n".join(f"  - {problem}" for problem in self.problems)
        noun = "problem" if count == 1 else "problems"
        super().__init__(f"invalid job spec ({count} {noun}):\n{lines}")


class InputError(UserError):
    """An input location is missing, empty, unreadable or holds data the job cannot read."""


class QueryError(UserError):
    """The SQL does not parse, does not bind against the inputs, or fails on the data."""


class OutputExistsError(UserError):
    """The output location already holds a result and overwriting was not asked for."""


class CommitConflictError(UserError):
    """Another job committed to the same output first."""


class ShardFailuresError(EcsQueryError):
    """Several shards failed; the count and the first few failures are shown.

    ``failures`` holds ``(shard index, message, is user error)``. One user error makes the
    whole job one: running it again cannot succeed.
    """

    def __init__(
        self, failures: Sequence[tuple[int, str, bool]], *, total: int, shown: int = 3
    ) -> None:
        self.failures = sorted(failures)
        head = "\n".join(
            f"  - shard {index}: {message}" for index, message, _ in self.failures[:shown]
        )
        more = len(self.failures) - shown
        tail = f"\n  ... and {more} more" if more > 0 else ""
        super().__init__(f"{len(self.failures)} of {total} shards failed:\n{head}{tail}")
        user = any(is_user for _, _, is_user in self.failures)
        self.exit_code = EXIT_USER_ERROR if user else EXIT_TRANSIENT
