"""``make e2e``: run one job through the synthesized state machine and trace it live.

Synthesizes the default ``QueryProcessingStack``, generates a small data set (one file per
shard), and starts one execution under moto's interpreter with every ECS task a worker process.
One Spot task is interrupted mid-shard and one shard's Spot capacity is short twice, so the
trace shows a fallback to on-demand and a retry with backoff. Retry waits run at
``--time-scale`` of their real length; the trace shows the waits the policy asked for.

    python -m tests.e2e.watch [--shards 6] [--interrupt 2] [--short-capacity 4]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from tests.e2e import data
from tests.e2e.fargate import Capacity, Fault, FaultKind, Refusal, TaskEvent, TaskRun
from tests.e2e.harness import Orchestration
from tests.e2e.moto_adaptations import ChildExecution, RetryWait
from tests.e2e.stack import synthesize
from tests.servers import TEST_CREDENTIALS

SQL = "SELECT category, count(*) AS n, sum(amount) AS total FROM input GROUP BY category"
MERGE_SQL = (
    "SELECT category, sum(n) AS n, sum(total) AS total FROM partials "
    "GROUP BY category ORDER BY category"
)
# History events worth a line: the parent execution's states and its Map Run.
_SHOWN_EVENTS = {
    "ExecutionStarted": "execution started",
    "MapRunStarted": "map run started: one child execution per shard",
    "MapRunSucceeded": "map run succeeded",
    "MapRunFailed": "map run failed",
    "ExecutionSucceeded": "execution succeeded",
    "ExecutionFailed": "execution failed",
}


class Tracer:
    """Prints one line per thing that happens, from whichever thread sees it."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.started = time.monotonic()
        self.lock = threading.Lock()

    def line(self, text: str) -> None:
        with self.lock:
            self.console.print(f"[dim]{time.monotonic() - self.started:6.1f}s[/dim]  {text}")

    def history_event(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if "stateEnteredEventDetails" in event:
            self.line(f"[bold cyan]> {event['stateEnteredEventDetails']['name']}[/bold cyan]")
        elif kind == "TaskFailed":
            details = event["taskFailedEventDetails"]
            self.line(f"  [red]task failed[/red]: {details.get('error')}")
        elif kind in _SHOWN_EVENTS:
            style = "red" if kind.endswith("Failed") else "green"
            if kind.endswith("Started"):
                style = "cyan"
            self.line(f"[{style}]{_SHOWN_EVENTS[kind]}[/{style}]")
            if kind == "ExecutionFailed":
                details = event.get("executionFailedEventDetails", {})
                self.line(f"  {details.get('error')}: {str(details.get('cause'))[:300]}")

    def task_event(self, kind: str, event: TaskEvent) -> None:
        if isinstance(event, Refusal):
            self.line(
                f"  {_who(event.stage, event.shard)} [yellow]RunTask refused[/yellow] on "
                f"{event.capacity.value}: {event.error} (capacity is unavailable)"
            )
            return
        task = event
        who = _who(task.stage, task.shard)
        if kind == "started":
            self.line(
                f"  {who} task {task.task_id[:8]} on [bold]{task.capacity.value}[/bold] "
                f"({task.state_name} #{task.attempt}, {task.cpu} cpu, {task.memory} MiB)"
            )
        elif kind == "fault":
            action = (
                "Spot interruption: SIGTERM, stop code SpotInterruption"
                if task.fault is FaultKind.SPOT_INTERRUPTION
                else "SIGKILL"
            )
            self.line(f"  {who} [magenta]{action}[/magenta]")
        elif kind == "stopped":
            style = "green" if task.exit_code == 0 else "red"
            self.line(
                f"  {who} task {task.task_id[:8]} stopped: [{style}]exit {task.exit_code}"
                f"[/{style}], {task.stop_code} ({task.seconds:.1f} s)"
            )

    def retry_wait(self, wait: RetryWait) -> None:
        self.line(
            f"  [yellow]{wait.state_name} retry #{wait.retry}[/yellow] in {wait.seconds:.1f} s "
            f"(backoff {wait.nominal_seconds:g} s, jittered)"
        )

    def child(self, child: ChildExecution) -> None:
        style = "green" if child.status == "SUCCEEDED" else "red"
        shard = child.item.get("shard") if isinstance(child.item, dict) else child.index
        error = f": {child.error}" if child.error else ""
        self.line(f"  shard {shard} child execution [{style}]{child.status}[/{style}]{error}")


def _who(stage: str, shard: int | None) -> str:
    return f"[bold]{stage}{'' if shard is None else f' {shard}'}[/bold]"


def summary(console: Console, orchestration: Orchestration, prefix: str) -> None:
    table = Table(title="Shards: every task, in order")
    table.add_column("shard", justify="right")
    table.add_column("tasks (state, capacity, exit, stop code)")
    shards = sorted(
        {t.shard for t in orchestration.tasks.tasks if t.shard is not None}
        | {r.shard for r in orchestration.tasks.refusals if r.shard is not None}
    )
    for shard in shards:
        steps: list[str] = []
        for item in _in_order(orchestration, shard):
            if isinstance(item, Refusal):
                steps.append(f"{item.capacity.value} refused")
            else:
                steps.append(
                    f"{item.state_name} {item.capacity.value} exit {item.exit_code} "
                    f"{item.stop_code}"
                )
        table.add_row(str(shard), "\n".join(steps))
    console.print(table)
    manifest = orchestration.manifest(prefix)
    if manifest is None:
        console.print("[red]nothing committed[/red]")
        return
    console.print(
        f"committed s3://{orchestration.output_bucket}/{prefix}/_manifest.json: "
        f"{manifest['shards']} shards, {manifest['rows']} rows in {len(manifest['files'])} "
        f"file(s), missing shards {manifest['missing_shards']}"
    )


def _in_order(orchestration: Orchestration, shard: int) -> list[TaskRun | Refusal]:
    tasks: list[tuple[float, TaskRun | Refusal]] = [
        (t.created_at, t) for t in orchestration.tasks.tasks if t.shard == shard
    ]
    tasks += [(r.at, r) for r in orchestration.tasks.refusals if r.shard == shard]
    return [item for _, item in sorted(tasks, key=lambda pair: pair[0])]


def run(args: argparse.Namespace, console: Console, work: Path) -> bool:
    console.print("[bold]Synthesizing the QueryProcessingStack[/bold] (CDK, a few seconds)")
    template = synthesize(work / "cdk")
    files = data.write_files(work / "data", args.shards)
    console.print(f"Generated {len(files)} Parquet files of about 1.1 MiB: one shard each.")
    tracer = Tracer(console)
    with Orchestration(template, work / "orchestration", time_scale=args.time_scale) as cloud:
        cloud.tasks.listeners.append(tracer.task_event)
        cloud.tasks.inject(
            Fault(FaultKind.SPOT_INTERRUPTION, shard=args.interrupt, capacity=Capacity.SPOT),
            Fault(FaultKind.CAPACITY, shard=args.short_capacity, capacity=Capacity.SPOT, times=2),
        )
        source = cloud.upload(work / "data", "data/watch")
        request = {
            "sql": SQL,
            "merge_sql": MERGE_SQL,
            "input": source,
            "output_prefix": "results/watch",
            "target_shard_mib": 1,
        }
        console.print(f"StartExecution input: {json.dumps(request)}")
        arn = cloud.start_execution(request, "watch")
        seen = waits = children = 0
        while True:
            status = cloud.sfn.describe_execution(executionArn=arn)["status"]
            history = cloud.history(arn)
            for event in history[seen:]:
                tracer.history_event(event)
            seen = len(history)
            for wait in cloud.adapted.retry_waits[waits:]:
                tracer.retry_wait(wait)
            waits = len(cloud.adapted.retry_waits)
            for child in cloud.adapted.children[children:]:
                tracer.child(child)
            children = len(cloud.adapted.children)
            if status != "RUNNING":
                break
            time.sleep(0.2)
        summary(console, cloud, "results/watch")
        return bool(status == "SUCCEEDED")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.e2e.watch", description=__doc__)
    parser.add_argument("--shards", type=int, default=6, help="files, one shard each")
    parser.add_argument(
        "--interrupt", type=int, default=2, help="shard whose Spot task is interrupted"
    )
    parser.add_argument(
        "--short-capacity", type=int, default=4, help="shard whose Spot RunTask is refused twice"
    )
    parser.add_argument(
        "--time-scale", type=float, default=0.1, help="fraction of each retry wait really waited"
    )
    args = parser.parse_args(argv)
    # Never reach a real account: test credentials, no profile files.
    os.environ.update(TEST_CREDENTIALS)
    os.environ["AWS_CONFIG_FILE"] = os.devnull
    os.environ["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
    os.environ.pop("AWS_PROFILE", None)
    os.environ.pop("AWS_ENDPOINT_URL", None)
    console = Console()
    with tempfile.TemporaryDirectory(prefix="ecs-query-e2e-") as folder:
        ok = run(args, console, Path(folder))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
