"""What the CLI shows a person: the plan, a live progress bar, the summary and a preview."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TextColumn, TimeElapsedColumn
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from ecs_query import engine, local
from ecs_query.planner import Plan
from ecs_query.spec import InputFormat, JobSpec

_MIB = 1024 * 1024


def human_bytes(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def plan_document(plan: Plan) -> dict[str, Any]:
    estimate = plan.estimate()
    return {
        **plan.summary(),
        "input_format": plan.input_format.value,
        "task_size": {
            "cpu": plan.task_size.cpu,
            "memory_mib": plan.task_size.memory_mib,
            "ephemeral_gib": plan.task_size.ephemeral_gib,
        },
        "balance_max_over_mean": round(plan.balance, 4),
        "mode": plan.mode,
        "reason": plan.reason,
        "shard_sql": plan.shard_sql,
        "merge_sql": plan.merge_sql,
        "shard_list": [
            {"shard": shard.index, "files": len(shard.files), "bytes": shard.bytes}
            for shard in plan.shards
        ],
        "estimate": {
            "seconds": round(estimate.seconds, 1),
            "spot_usd": round(estimate.spot_usd, 4),
            "on_demand_usd": round(estimate.on_demand_usd, 4),
            "region": estimate.prices.region,
            "prices_as_of": estimate.prices.as_of,
            "spot_discount_assumed": estimate.prices.spot_discount,
        },
    }


def print_plan(
    plan: Plan, console: Console | None = None, *, max_rows: int = 20, explain: bool = False
) -> None:
    console = console or Console()
    estimate = plan.estimate()
    table = Table(title=f"Plan for {plan.job_id}", title_justify="left")
    table.add_column("shard", justify="right")
    table.add_column("files", justify="right")
    table.add_column("bytes", justify="right")
    for shard in plan.shards[:max_rows]:
        table.add_row(str(shard.index), str(len(shard.files)), human_bytes(shard.bytes))
    if len(plan.shards) > max_rows:
        table.add_row("...", f"{len(plan.shards) - max_rows} more", "")
    console.print(table)
    console.print(
        f"input: {plan.file_count:,} {plan.input_format.value} files, "
        f"{human_bytes(plan.total_bytes)} in {len(plan.shards):,} shards "
        f"(largest/mean {plan.balance:.3f})",
        soft_wrap=True,
    )
    console.print(f"task size: {plan.task_size}; concurrency: {plan.concurrency}")
    console.print(
        f"estimate on Fargate: ~{estimate.seconds:,.0f} s; "
        f"Spot ${estimate.spot_usd:,.4f}, on-demand ${estimate.on_demand_usd:,.4f} "
        f"({estimate.prices.region} prices as of {estimate.prices.as_of}; Spot assumed "
        f"{estimate.prices.spot_discount:.0%} below on-demand; excludes S3 requests)",
        soft_wrap=True,
    )
    console.print(f"mode: {plan.mode}: {plan.reason}", soft_wrap=True)
    if explain:
        console.print("shard SQL (per shard, over the table input):")
        console.print(Syntax(plan.shard_sql, "sql", word_wrap=True))
        if plan.merge_sql is None:
            console.print("merge SQL: none; the shard outputs are the result")
        else:
            console.print("merge SQL (once, over the table partials):")
            console.print(Syntax(plan.merge_sql, "sql", word_wrap=True))


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        elapsed = task.elapsed or 0.0
        done = task.fields.get("bytes", 0)
        rate = done / elapsed / _MIB if elapsed > 0 else 0.0
        return Text(f"{rate:,.0f} MiB/s", style="cyan")


def run_with_progress(spec: JobSpec, options: local.RunOptions) -> local.RunReport:
    """Run the job with a live bar: shards done and failed, rows, input bytes per second."""
    console = Console(stderr=True)
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:.0f}/{task.total:.0f} shards"),
        TextColumn("[red]{task.fields[failed]} failed"),
        TextColumn("{task.fields[rows]:,} rows"),
        _RateColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
    state: dict[str, Any] = {"task": None}

    def on_plan(plan: Plan) -> None:
        state["task"] = progress.add_task(
            "shards", total=len(plan.shards), failed=0, rows=0, bytes=0
        )

    def on_shard(event: local.ShardEvent) -> None:
        task_id = state["task"]
        task = progress.tasks[task_id]
        if event.ok:
            progress.update(
                task_id,
                advance=1,
                rows=task.fields["rows"] + event.rows,
                bytes=task.fields["bytes"] + event.input_bytes,
            )
        else:
            progress.update(task_id, failed=task.fields["failed"] + 1)
            verb = "retrying" if event.will_retry else "failed"
            progress.console.print(
                f"[yellow]shard {event.index} {verb}: {event.message}", soft_wrap=True
            )

    with progress:
        return local.run_job(spec, options, on_plan=on_plan, on_shard=on_shard)


def report_document(report: local.RunReport) -> dict[str, Any]:
    manifest = report.manifest
    return {
        "ok": True,
        "job_id": report.spec.job_id,
        "already_committed": report.already_committed,
        "output": report.spec.output,
        "rows": manifest.get("rows"),
        "bytes": manifest.get("bytes"),
        "files": manifest.get("files"),
        "shards": manifest.get("shards"),
        "input_bytes": manifest.get("input_bytes"),
        "retries": report.retries,
        "seconds": round(report.seconds, 3),
        "timings": {key: round(value, 3) for key, value in report.timings.items()},
    }


def print_report(
    report: local.RunReport,
    *,
    preview_rows: int,
    endpoint_url: str | None,
    console: Console | None = None,
) -> None:
    console = console or Console()
    manifest = report.manifest
    if report.already_committed:
        console.print(
            f"job {report.spec.job_id} already committed to {report.spec.output} "
            f"at {manifest.get('committed_at')}; nothing to do (pass --overwrite to run again)",
            soft_wrap=True,
        )
    else:
        seconds = report.seconds
        rate = manifest["input_bytes"] / seconds / _MIB if seconds else 0.0
        timing = ", ".join(f"{key} {value:.2f} s" for key, value in report.timings.items())
        console.print(
            f"committed {manifest['rows']:,} rows in {len(manifest['files'])} file(s) to "
            f"{report.spec.output} in {seconds:.2f} s ({timing}); "
            f"read {human_bytes(manifest['input_bytes'])} at {rate:,.0f} MiB/s"
            + (f"; {report.retries} shard retries" if report.retries else ""),
            soft_wrap=True,
        )
    if preview_rows > 0:
        print_preview(manifest, preview_rows, endpoint_url, console)


def print_preview(
    manifest: dict[str, Any], rows: int, endpoint_url: str | None, console: Console
) -> None:
    files = [entry["uri"] for entry in manifest.get("files", [])]
    if not files:
        return
    fmt = InputFormat.PARQUET if manifest.get("format") == "parquet" else InputFormat.CSV
    con = engine.connect(engine.EngineSettings(endpoint_url=endpoint_url), readable=files)
    try:
        relation = con.execute(f"SELECT * FROM {engine.reader_sql(fmt, files)} LIMIT {rows:d}")
        columns = [column[0] for column in relation.description or []]
        data = relation.fetchall()
    finally:
        engine.close(con)
    table = Table(
        title=f"first {len(data)} of {manifest.get('rows', 0):,} rows", title_justify="left"
    )
    for column in columns:
        table.add_column(column)
    for row in data:
        table.add_row(*(_cell(value) for value in row))
    console.print(table)


def _cell(value: object) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, float):
        return f"{value:,.4f}"
    return str(value)
