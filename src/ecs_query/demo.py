"""``python -m ecs_query.demo``: TPC-H Q1 over generated sample data, sharded on this machine.

It generates a lineitem-like data set under ``.demo/lineitem/`` (or reuses it), shows the plan,
runs the job through the same path as ``ecs-query run`` (a worker process per shard, then a
merge and the commit) and prints the result with the time each step took. The output goes to
``.demo/output/q1`` and is replaced on every run.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

import duckdb
from rich.console import Console
from rich.table import Table

from ecs_query import cli, display, local, sample
from ecs_query.errors import EcsQueryError

ROWS_ENV: Final = "ECS_QUERY_DEMO_ROWS"
DEFAULT_ROWS: Final = 10_000_000
DEFAULT_FILES: Final = 16
DEFAULT_SHARDS: Final = 8
DEFAULT_DIR: Final = ".demo"
# The last ship date Q1 counts: TPC-H's default, 90 days before the last date in the data.
CUTOFF: Final = "1998-09-02"

# TPC-H Q1, the pricing summary report, as one statement over the sharded table ``input``.
# The cut-off is a DATE parameter: ``DATE '1998-12-01' - INTERVAL 90 DAY`` would compare
# against a TIMESTAMP and scan at half speed.
Q1_SQL: Final = """\
SELECT
    l_returnflag,
    l_linestatus,
    sum(l_quantity) AS sum_qty,
    sum(l_extendedprice) AS sum_base_price,
    sum(l_extendedprice * (1 - l_discount)) AS sum_disc_price,
    sum(l_extendedprice * (1 - l_discount) * (1 + l_tax)) AS sum_charge,
    avg(l_quantity) AS avg_qty,
    avg(l_extendedprice) AS avg_price,
    avg(l_discount) AS avg_disc,
    count(*) AS count_order
FROM input
WHERE l_shipdate <= CAST($cutoff AS DATE)
GROUP BY l_returnflag, l_linestatus
ORDER BY l_returnflag, l_linestatus
"""

# Q1 in two stages. Each shard keeps exact sums and counts per group; averages are not
# additive, so the shards keep the sum of discounts and the merge divides once at the end.
Q1_SHARD_SQL: Final = """\
SELECT
    l_returnflag,
    l_linestatus,
    sum(l_quantity) AS sum_qty,
    sum(l_extendedprice) AS sum_base_price,
    sum(l_extendedprice * (1 - l_discount)) AS sum_disc_price,
    sum(l_extendedprice * (1 - l_discount) * (1 + l_tax)) AS sum_charge,
    sum(l_discount) AS sum_disc,
    count(*) AS count_order
FROM input
WHERE l_shipdate <= CAST($cutoff AS DATE)
GROUP BY l_returnflag, l_linestatus
"""

# Combines the shard results (the table ``partials``) into Q1's columns and types: decimal
# sums stay exact, the count stays a BIGINT and the averages are DOUBLE, as in Q1_SQL.
Q1_MERGE_SQL: Final = """\
SELECT
    l_returnflag,
    l_linestatus,
    sum(sum_qty) AS sum_qty,
    sum(sum_base_price) AS sum_base_price,
    sum(sum_disc_price) AS sum_disc_price,
    sum(sum_charge) AS sum_charge,
    CAST(sum(sum_qty) AS DOUBLE) / CAST(sum(count_order) AS DOUBLE) AS avg_qty,
    CAST(sum(sum_base_price) AS DOUBLE) / CAST(sum(count_order) AS DOUBLE) AS avg_price,
    CAST(sum(sum_disc) AS DOUBLE) / CAST(sum(count_order) AS DOUBLE) AS avg_disc,
    CAST(sum(count_order) AS BIGINT) AS count_order
FROM partials
GROUP BY l_returnflag, l_linestatus
ORDER BY l_returnflag, l_linestatus
"""

# What the demo runs: one statement, which the planner splits into shard and merge SQL. The
# hand-written two-stage form above stays as the expert override (--merge-sql) and as a check.
DEMO_QUERY: Final[tuple[str, str | None]] = (Q1_SQL, None)


@dataclass(frozen=True)
class DemoPaths:
    """Where the demo keeps its data, its SQL files and its result."""

    root: Path

    @property
    def data(self) -> Path:
        return self.root / "lineitem"

    @property
    def queries(self) -> Path:
        return self.root / "queries"

    @property
    def output(self) -> Path:
        return self.root / "output" / "q1"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ecs_query.demo",
        description="Run TPC-H Q1 over generated sample data, sharded on this machine.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--rows",
        type=_positive_int,
        default=None,
        help=f"rows to generate (default: ${ROWS_ENV}, else {DEFAULT_ROWS:,})",
    )
    parser.add_argument(
        "--files", type=_positive_int, default=DEFAULT_FILES, help="Parquet files to write"
    )
    parser.add_argument(
        "--shards",
        type=_positive_int,
        default=DEFAULT_SHARDS,
        help="about how many shards to cut the data into (sets --target-shard-mib)",
    )
    parser.add_argument(
        "--workers",
        type=_positive_int,
        default=None,
        help="shard processes at once (default: one per core)",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path(DEFAULT_DIR),
        help="folder for the data, the SQL files and the result",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated data")
    return parser


def main(argv: Sequence[str] | None = None, console: Console | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    rows = args.rows if args.rows is not None else _rows_from_env(parser)
    console = console or _console()
    paths = DemoPaths(args.dir)
    started = time.perf_counter()

    reused = sample.lineitem_is_current(paths.data, rows=rows, files=args.files, seed=args.seed)
    verb = "Reusing" if reused else "Generating"
    console.rule(f"{verb} {rows:,} lineitem rows in {args.files} Parquet files")
    generate_started = time.perf_counter()
    files = sample.ensure_lineitem(paths.data, rows=rows, files=args.files, seed=args.seed)
    generate_seconds = time.perf_counter() - generate_started
    data_bytes = sum(path.stat().st_size for path in files)
    console.print(
        f"{paths.data}: {display.human_bytes(data_bytes)}"
        + ("" if reused else f", written in {generate_seconds:.2f} s")
    )

    target_mib = target_shard_mib(data_bytes, args.shards)
    job = job_arguments(paths, target_mib)
    command = ["ecs-query", "run", *job, "--overwrite"]
    if args.workers is not None:
        command += ["--workers", str(args.workers)]
    console.rule("Plan")
    console.print(f"[dim]$ {shlex.join(command)}")
    code = cli.main(["plan", *job])
    if code != 0:
        return code

    console.rule("Run")
    try:
        spec = cli.spec_from_args(cli.build_parser().parse_args(command[1:]))
        options = local.RunOptions(workers=args.workers)
        report = display.run_with_progress(spec, options)
        display.print_report(report, preview_rows=0, endpoint_url=None, console=console)
    except EcsQueryError as error:
        console.print(f"[red]{type(error).__name__}: {error}")
        return error.exit_code
    console.print(result_table(read_result(report.manifest)))

    timings = {"generate" if not reused else "generate (reused)": generate_seconds}
    timings.update(report.timings)
    timings["total"] = time.perf_counter() - started
    console.print(timing_table(timings))
    return 0


def target_shard_mib(data_bytes: int, shards: int) -> int:
    """The shard target, in whole MiB, that cuts ``data_bytes`` into about ``shards`` shards."""
    return max(1, math.ceil(data_bytes / shards / (1024 * 1024)))


def job_arguments(paths: DemoPaths, target_mib: int) -> list[str]:
    """The ``ecs-query`` job arguments: the SQL is written to files and passed as ``@FILE``."""
    shard_sql, merge_sql = DEMO_QUERY
    paths.queries.mkdir(parents=True, exist_ok=True)
    shard_file = paths.queries / "q1-shard.sql"
    shard_file.write_text(shard_sql)
    arguments = [
        "--sql",
        f"@{shard_file}",
        "--input",
        str(paths.data),
        "--output",
        str(paths.output),
        "--param",
        f"cutoff={CUTOFF}",
        "--target-shard-mib",
        str(target_mib),
    ]
    if merge_sql is not None:
        merge_file = paths.queries / "q1-merge.sql"
        merge_file.write_text(merge_sql)
        arguments += ["--merge-sql", f"@{merge_file}"]
    return arguments


def read_result(manifest: Mapping[str, Any]) -> tuple[list[str], list[tuple[Any, ...]]]:
    """The committed result's column names and rows, read from the files its manifest lists."""
    files = [entry["uri"] for entry in manifest["files"]]
    con = duckdb.connect()
    try:
        relation = con.execute("SELECT * FROM read_parquet($files)", {"files": files})
        columns = [column[0] for column in relation.description or []]
        return columns, relation.fetchall()
    finally:
        con.close()


def result_table(result: tuple[list[str], list[tuple[Any, ...]]], keys: int = 2) -> Table:
    """The result turned on its side, one column per group, so that it fits a narrow terminal."""
    columns, rows = result
    title = f"Q1 result, one column per {' / '.join(columns[:keys])}"
    table = Table(title=title, title_justify="left")
    table.add_column("", no_wrap=True)
    for row in rows:
        table.add_column(" / ".join(str(value) for value in row[:keys]), justify="right")
    for position, name in enumerate(columns[keys:], start=keys):
        table.add_row(name, *(_number(row[position]) for row in rows))
    return table


def timing_table(timings: dict[str, float]) -> Table:
    table = Table(title="Time per step", title_justify="left")
    table.add_column("step")
    table.add_column("seconds", justify="right")
    for step, seconds in timings.items():
        table.add_row(step, f"{seconds:.2f}")
    return table


def _console() -> Console:
    """Rich's console; when the output is not a terminal, 120 columns instead of 80."""
    console = Console()
    return console if console.is_terminal else Console(width=max(console.width, 120))


def _number(value: object) -> str:
    if isinstance(value, Decimal):
        return f"{value:,.2f}"
    if isinstance(value, float):
        return f"{value:,.6f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _rows_from_env(parser: argparse.ArgumentParser) -> int:
    raw = os.environ.get(ROWS_ENV, "").strip()
    if not raw:
        return DEFAULT_ROWS
    try:
        return _positive_int(raw)
    except argparse.ArgumentTypeError as error:
        parser.error(f"{ROWS_ENV}: {error}")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, received {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 1 or more, received {value}")
    return value


if __name__ == "__main__":
    sys.exit(main())
