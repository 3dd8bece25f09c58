"""``ecs-query``: plan a job, run it on this machine, or run one stage as the ECS worker."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from ecs_query import stages
from ecs_query.errors import EcsQueryError, JobSpecError
from ecs_query.spec import (
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_TARGET_SHARD_MIB,
    InputFormat,
    JobSpec,
    OutputFormat,
    ParamValue,
    parse_param,
    parse_table,
)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show a default only when there is one worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, [], False) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ecs-query",
        description="Run SQL over large data sets as sharded DuckDB tasks, locally or on ECS.",
        formatter_class=_HelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="run a job on this machine: plan, shards in parallel, merge, commit",
        formatter_class=_HelpFormatter,
    )
    _add_job_arguments(run)
    run.add_argument(
        "--workers", type=int, default=None, help="shard processes at once (default: one per core)"
    )
    run.add_argument(
        "--preview",
        type=int,
        default=20,
        metavar="N",
        help="print the first N rows of the result (0: none)",
    )

    plan = commands.add_parser(
        "plan",
        help="show the shards, task size, concurrency and an estimate, without running",
        formatter_class=_HelpFormatter,
    )
    _add_job_arguments(plan, for_plan=True)
    plan.add_argument(
        "--explain", action="store_true", help="also print the shard SQL and the merge SQL"
    )

    commands.add_parser(
        "worker",
        help="run one stage from ECS_QUERY_* environment variables (the container entry point)",
    )
    return parser


def _add_job_arguments(parser: argparse.ArgumentParser, *, for_plan: bool = False) -> None:
    parser.add_argument(
        "--sql",
        required=True,
        help="the query, inline or @FILE; the sharded input is the table 'input'",
    )
    parser.add_argument("--input", required=True, help="s3://bucket/prefix, a folder or a glob")
    parser.add_argument(
        "--input-format",
        choices=[f.value for f in InputFormat],
        default=None,
        help="format of the input files (default: from their extension)",
    )
    parser.add_argument(
        "--table",
        action="append",
        default=[],
        metavar="NAME=URI",
        help="a broadcast table every shard reads whole (repeatable)",
    )
    parser.add_argument(
        "--output",
        required=not for_plan,
        default=None,
        help="where the result and _manifest.json go",
    )
    parser.add_argument(
        "--output-format",
        choices=[f.value for f in OutputFormat],
        default=OutputFormat.PARQUET.value,
        help="format of the result files",
    )
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a query parameter, used in SQL as $NAME (repeatable)",
    )
    parser.add_argument(
        "--merge-sql",
        default=None,
        help="SQL run once over all shard results, as the table 'partials'",
    )
    parser.add_argument(
        "--target-shard-mib",
        type=int,
        default=DEFAULT_TARGET_SHARD_MIB,
        help="input bytes per shard",
    )
    parser.add_argument(
        "--max-concurrency",
        type=int,
        default=DEFAULT_MAX_CONCURRENCY,
        help="most shards running at once on ECS",
    )
    parser.add_argument(
        "--endpoint-url", default=None, help="S3 endpoint (default: AWS_ENDPOINT_URL, else AWS)"
    )
    parser.add_argument(
        "--job-id",
        default=None,
        help="job id (default: derived from the job, so a rerun is a no-op)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing result")
    parser.add_argument(
        "--single-task",
        action="store_true",
        help="run the whole input as one task (for SQL that cannot be split over shards)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "worker":
        from ecs_query import worker

        return worker.main()
    try:
        if args.command == "plan":
            return _plan(args, sys.stdout)
        return _run(args, sys.stdout)
    except EcsQueryError as error:
        kind = "UserError" if error.exit_code == 65 else type(error).__name__
        if getattr(args, "json", False):
            print(json.dumps({"ok": False, "error_type": kind, "message": str(error)}))
        else:
            print(f"{type(error).__name__}: {error}", file=sys.stderr)
        return error.exit_code


def spec_from_args(args: argparse.Namespace) -> JobSpec:
    problems: list[str] = []
    params: dict[str, ParamValue] = {}
    tables: dict[str, str] = {}
    for text in args.param:
        try:
            name, value = parse_param(text)
            params[name] = value
        except JobSpecError as error:
            problems.extend(error.problems)
    for text in args.table:
        try:
            name, uri = parse_table(text)
            tables[name] = uri
        except JobSpecError as error:
            problems.extend(error.problems)
    sql = _read_at_file(args.sql, "--sql", problems)
    merge_sql = _read_at_file(args.merge_sql, "--merge-sql", problems) if args.merge_sql else None
    output = args.output or _plan_only_output(args.input)
    try:
        spec = JobSpec(
            sql=sql or "-",
            input=args.input,
            output=output,
            input_format=InputFormat(args.input_format) if args.input_format else None,
            output_format=OutputFormat(args.output_format),
            tables=tables,
            params=params,
            merge_sql=merge_sql,
            target_shard_mib=args.target_shard_mib,
            max_concurrency=args.max_concurrency,
            overwrite=args.overwrite,
            single_task=args.single_task,
            job_id=args.job_id or "",
        )
    except JobSpecError as error:
        raise JobSpecError(problems + error.problems) from None
    if problems:
        raise JobSpecError(problems)
    return spec


def _plan_only_output(input_uri: str) -> str:
    return input_uri.rstrip("/") + "-plan-only-output"


def _read_at_file(value: str | None, flag: str, problems: list[str]) -> str | None:
    if value is None or not value.startswith("@"):
        return value
    path = Path(value[1:])
    try:
        return path.read_text()
    except OSError as error:
        problems.append(f"{flag} {value!r}: cannot read {path}: {error.strerror}")
        return None


def _endpoint(args: argparse.Namespace) -> str | None:
    import os

    return args.endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None


def _plan(args: argparse.Namespace, out: TextIO) -> int:
    from ecs_query import display

    spec = spec_from_args(args)
    plan = stages.build_plan(spec, _endpoint(args))
    if args.json:
        out.write(json.dumps(display.plan_document(plan), indent=2) + "\n")
    else:
        display.print_plan(plan, explain=args.explain)
    return 0


def _run(args: argparse.Namespace, out: TextIO) -> int:
    from ecs_query import display, local

    spec = spec_from_args(args)
    options = local.RunOptions(workers=args.workers, endpoint_url=_endpoint(args))
    if args.json:
        report = local.run_job(spec, options)
        out.write(json.dumps(display.report_document(report), indent=2) + "\n")
        return 0
    report = display.run_with_progress(spec, options)
    display.print_report(report, preview_rows=args.preview, endpoint_url=options.endpoint_url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
