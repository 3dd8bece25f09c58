"""Jobs through the synthesized state machine, each ECS task a real worker process.

Every scenario starts an execution of the definition from the template, with the execution
input a user would send, and checks three things: how the execution ended, which tasks ran
where (the RunTask parameters Fargate received), and what the output bucket holds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ecs_query.local import RunOptions, run_job
from ecs_query.spec import JobSpec
from tests.e2e import data
from tests.e2e.fargate import Capacity, Fault, FaultKind, TaskRun
from tests.e2e.harness import Execution, Orchestration, iter_json_lines
from tests.e2e.moto_adaptations import ChildExecution

SQL = "SELECT id, category, amount FROM input WHERE amount % 3 = 0"
EXPECTED_IDS_SQL = "SELECT id FROM data WHERE amount % 3 = 0 ORDER BY id"
CAPACITY_BACKOFF = [5.0, 10.0, 20.0, 40.0, 80.0]  # IntervalSeconds 5, BackoffRate 2


@dataclass(frozen=True)
class Dataset:
    uri: str
    files: list[Path]


@dataclass(frozen=True)
class Datasets:
    nine: Dataset
    four: Dataset
    corrupt: Dataset


@pytest.fixture(scope="module")
def datasets(orchestration: Orchestration, tmp_path_factory: pytest.TempPathFactory) -> Datasets:
    """Input data in the stack's input bucket: nine files, four files, and four files of which
    the third is corrupt. Each file is just over 1 MiB, so each is its own shard."""
    root = tmp_path_factory.mktemp("datasets")
    made = {}
    for name, count in (("nine", 9), ("four", 4), ("corrupt", 4)):
        files = data.write_files(root / name, count)
        if name == "corrupt":
            data.corrupt(files[2])
        made[name] = Dataset(orchestration.upload(root / name, f"data/{name}"), files)
    return Datasets(**made)


def job(dataset: Dataset, output_prefix: str, **fields: Any) -> dict[str, Any]:
    """The execution input: the request a user sends to the state machine."""
    return {
        "sql": SQL,
        "input": dataset.uri,
        "output_prefix": output_prefix,
        "target_shard_mib": 1,
        **fields,
    }


def shard_tasks(cloud: Orchestration, shard: int) -> list[TaskRun]:
    return [task for task in cloud.tasks.tasks if task.stage == "shard" and task.shard == shard]


def output_ids(cloud: Orchestration, prefix: str, folder: Path) -> list[int]:
    """Every id in the committed output, in order, duplicates kept."""
    manifest = cloud.manifest(prefix)
    assert manifest is not None, f"nothing committed under {prefix}"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for entry in manifest["files"]:
        path = folder / entry["path"]
        path.write_bytes(cloud.read(f"{prefix}/{entry['path']}"))
        paths.append(path)
    return [row[0] for row in data.read_rows(paths, "SELECT id FROM data ORDER BY id")]


def expected_ids(dataset: Dataset) -> list[int]:
    return [row[0] for row in data.read_rows(dataset.files, EXPECTED_IDS_SQL)]


def error_records(cloud: Orchestration, task: TaskRun) -> list[dict[str, Any]]:
    """The worker's error log records, read from its CloudWatch log stream."""
    lines = cloud.log_lines(task.log_stream)
    return [record for record in iter_json_lines(lines) if record.get("level") == "ERROR"]


# ---------------------------------------------------------------------------- happy path


def test_nine_shards_on_spot_commit_the_same_rows_as_the_local_runner(
    cloud: Orchestration, datasets: Datasets, tmp_path: Path
) -> None:
    result = cloud.run(job(datasets.nine, "results/happy"), "happy")

    assert result.status == "SUCCEEDED", result.cause
    assert result.states_entered() == [
        "ValidateInput", "ApplyDefaults", "Normalize", "PrepareEnvironment", "Plan",
        "ReadSummary", "CheckCommitted", "RunShards", "Finalize", "Committed",
    ]  # fmt: skip

    # One Spot task per shard, sized and throttled by the plan; plan and finalize on demand.
    summary = json.loads(
        next(
            event["stateExitedEventDetails"]["output"]
            for event in result.history
            if event.get("stateExitedEventDetails", {}).get("name") == "ReadSummary"
        )
    )["plan"]["summary"]
    assert summary["shards"] == 9
    shards = [task for task in cloud.tasks.tasks if task.stage == "shard"]
    assert sorted(task.shard or 0 for task in shards) == list(range(9))
    assert all(task.capacity is Capacity.SPOT and task.exit_code == 0 for task in shards)
    assert {(task.cpu, task.memory) for task in shards} == {(summary["cpu"], summary["memory"])}
    assert cloud.tasks.peak_running["shard"] <= summary["concurrency"]
    assert [(t.stage, t.capacity) for t in cloud.tasks.tasks if t.stage != "shard"] == [
        ("plan", Capacity.ON_DEMAND),
        ("finalize", Capacity.ON_DEMAND),
    ]

    # The committed result equals the local runner's on the same data.
    local = run_job(
        JobSpec(
            sql=SQL,
            input=datasets.nine.uri,
            output=f"s3://{cloud.output_bucket}/local/happy",
            target_shard_mib=1,
            job_id="local-happy",
        ),
        RunOptions(endpoint_url=cloud.endpoint, workers=2),
    )
    manifest = cloud.manifest("results/happy")
    assert manifest is not None
    assert (manifest["shards"], manifest["rows"], manifest["missing_shards"]) == (
        local.manifest["shards"],
        local.manifest["rows"],
        [],
    )
    assert len(manifest["files"]) == 9
    assert output_ids(cloud, "results/happy", tmp_path / "sfn") == output_ids(
        cloud, "local/happy", tmp_path / "local"
    )
    assert output_ids(cloud, "results/happy", tmp_path / "again") == expected_ids(datasets.nine)
    assert [key for key in cloud.keys("results/happy") if "/_ecs_query/" in key] == []


def test_a_merge_job_commits_one_merged_result_and_its_rerun_does_nothing(
    cloud: Orchestration, datasets: Datasets, tmp_path: Path
) -> None:
    request = job(
        datasets.four,
        "results/merged",
        job_id="merged-daily",
        sql="SELECT category, count(*) AS n FROM input GROUP BY category",
        merge_sql="SELECT category, sum(n) AS n FROM partials GROUP BY category ORDER BY category",
    )

    first = cloud.run(request, "merge-first")

    assert first.status == "SUCCEEDED", first.cause
    manifest = cloud.manifest("results/merged")
    assert manifest is not None
    assert (manifest["shards"], [entry["shard"] for entry in manifest["files"]]) == (4, [None])
    merged = tmp_path / "merged.parquet"
    merged.write_bytes(cloud.read("results/merged/" + manifest["files"][0]["path"]))
    counts = data.read_rows([merged], "SELECT category, n FROM data ORDER BY category")
    expected = data.read_rows(
        datasets.four.files, "SELECT category, count(*) FROM data GROUP BY 1 ORDER BY 1"
    )
    assert counts == expected

    cloud.reset()
    again = cloud.run(request, "merge-again")

    assert again.status == "SUCCEEDED", again.cause
    assert again.states_entered()[-2:] == ["CheckCommitted", "AlreadyCommitted"]
    assert [task.stage for task in cloud.tasks.tasks] == ["plan"]
    assert cloud.manifest("results/merged") == manifest


# ---------------------------------------------------------------------------- Spot


def test_a_spot_interruption_reruns_the_shard_on_demand_and_commits_it_once(
    cloud: Orchestration, datasets: Datasets, tmp_path: Path
) -> None:
    cloud.tasks.inject(Fault(FaultKind.SPOT_INTERRUPTION, shard=2, capacity=Capacity.SPOT))

    result = cloud.run(job(datasets.four, "results/spot"), "spot-interruption")

    assert result.status == "SUCCEEDED", result.cause
    interrupted, rerun = shard_tasks(cloud, 2)
    assert interrupted.fault_applied
    assert (interrupted.capacity, interrupted.stop_code, interrupted.exit_code) == (
        Capacity.SPOT,
        "SpotInterruption",
        75,  # the worker answered SIGTERM with its transient exit code
    )
    assert rerun.state_name == "RunShardOnDemand"
    assert rerun.parameters["LaunchType"] == "FARGATE"
    assert "CapacityProviderStrategy" not in rerun.parameters
    assert (rerun.capacity, rerun.exit_code) == (Capacity.ON_DEMAND, 0)
    assert all(len(shard_tasks(cloud, shard)) == 1 for shard in (0, 1, 3))
    child = next(c for c in cloud.adapted.children if c.item["shard"] == 2)
    assert child.status == "SUCCEEDED"

    manifest = cloud.manifest("results/spot")
    assert manifest is not None
    assert (manifest["shards"], manifest["missing_shards"], len(manifest["files"])) == (4, [], 4)
    assert output_ids(cloud, "results/spot", tmp_path) == expected_ids(datasets.four)


def test_a_capacity_error_is_retried_with_jittered_backoff_then_runs_on_spot(
    cloud: Orchestration, datasets: Datasets
) -> None:
    cloud.tasks.inject(Fault(FaultKind.CAPACITY, shard=1, capacity=Capacity.SPOT, times=3))

    result = cloud.run(job(datasets.four, "results/capacity"), "capacity-retried")

    assert result.status == "SUCCEEDED", result.cause
    refusals = cloud.tasks.refusals
    assert [(r.state_name, r.shard, r.error) for r in refusals] == [
        ("RunShardSpot", 1, "ECS.AmazonECSException")
    ] * 3
    waits = cloud.adapted.waits_for("RunShardSpot")
    assert [wait.nominal_seconds for wait in waits] == CAPACITY_BACKOFF[:3]
    assert all(0 <= wait.seconds < wait.nominal_seconds for wait in waits)  # full jitter
    (task,) = shard_tasks(cloud, 1)
    assert (task.state_name, task.capacity, task.attempt, task.exit_code) == (
        "RunShardSpot",
        Capacity.SPOT,
        4,
        0,
    )
    assert cloud.manifest("results/capacity") is not None


def test_spot_capacity_that_stays_unavailable_falls_back_to_on_demand(
    cloud: Orchestration, datasets: Datasets
) -> None:
    cloud.tasks.inject(Fault(FaultKind.CAPACITY, shard=3, capacity=Capacity.SPOT, times=6))

    result = cloud.run(job(datasets.four, "results/no-spot"), "spot-unavailable")

    assert result.status == "SUCCEEDED", result.cause
    assert len(cloud.tasks.refusals) == 6  # the first attempt and five retries
    waits = cloud.adapted.waits_for("RunShardSpot")
    assert [wait.nominal_seconds for wait in waits] == CAPACITY_BACKOFF
    (task,) = shard_tasks(cloud, 3)
    assert (task.state_name, task.capacity, task.exit_code) == (
        "RunShardOnDemand",
        Capacity.ON_DEMAND,
        0,
    )
    manifest = cloud.manifest("results/no-spot")
    assert manifest is not None and manifest["missing_shards"] == []


def test_a_killed_spot_worker_is_rerun_on_demand(
    cloud: Orchestration, datasets: Datasets, tmp_path: Path
) -> None:
    cloud.tasks.inject(Fault(FaultKind.KILL, shard=0, capacity=Capacity.SPOT))

    result = cloud.run(job(datasets.four, "results/killed"), "spot-killed")

    assert result.status == "SUCCEEDED", result.cause
    killed, rerun = shard_tasks(cloud, 0)
    assert (killed.capacity, killed.stop_code, killed.exit_code) == (
        Capacity.SPOT,
        "EssentialContainerExited",
        137,
    )
    assert (rerun.state_name, rerun.capacity, rerun.exit_code) == (
        "RunShardOnDemand",
        Capacity.ON_DEMAND,
        0,
    )
    assert output_ids(cloud, "results/killed", tmp_path) == expected_ids(datasets.four)


def test_a_killed_on_demand_worker_of_a_time_sensitive_job_is_retried_once(
    cloud: Orchestration, datasets: Datasets
) -> None:
    cloud.tasks.inject(Fault(FaultKind.KILL, shard=1, capacity=Capacity.ON_DEMAND))

    result = cloud.run(
        job(datasets.four, "results/urgent", time_sensitive=True), "on-demand-killed"
    )

    assert result.status == "SUCCEEDED", result.cause
    shards = [task for task in cloud.tasks.tasks if task.stage == "shard"]
    assert {task.capacity for task in shards} == {Capacity.ON_DEMAND}
    killed, retried = shard_tasks(cloud, 1)
    assert (killed.exit_code, retried.exit_code) == (137, 0)
    assert (retried.state_name, retried.attempt) == ("RunShardOnDemand", 2)
    assert [wait.nominal_seconds for wait in cloud.adapted.waits_for("RunShardOnDemand")] == [10.0]


# ---------------------------------------------------------------------------- user errors


@dataclass(frozen=True)
class FailedRun:
    """A failed execution with what the harness saw, kept so that the test of what holds today
    and the strict xfail of what should hold look at the same run."""

    result: Execution
    tasks: list[TaskRun]
    children: list[ChildExecution]
    errors: dict[str, list[dict[str, Any]]]  # task id -> its ERROR log records


def failed_run(cloud: Orchestration, request: dict[str, Any], name: str) -> FailedRun:
    cloud.reset()
    result = cloud.run(request, name)
    tasks = list(cloud.tasks.tasks)
    return FailedRun(
        result=result,
        tasks=tasks,
        children=list(cloud.adapted.children),
        errors={task.task_id: error_records(cloud, task) for task in tasks},
    )


@pytest.fixture(scope="module")
def bad_sql(orchestration: Orchestration, datasets: Datasets) -> FailedRun:
    request = job(datasets.four, "results/bad-sql", sql="SELECT no_such_column FROM input")
    return failed_run(orchestration, request, "bad-sql")


@pytest.fixture(scope="module")
def corrupt(orchestration: Orchestration, datasets: Datasets) -> FailedRun:
    return failed_run(orchestration, job(datasets.corrupt, "results/corrupt"), "corrupt-input")


def test_bad_sql_fails_the_execution_at_plan_without_retry_or_shards(
    bad_sql: FailedRun, orchestration: Orchestration
) -> None:
    result = bad_sql.result
    assert result.status == "FAILED"
    assert result.error == "UserError"
    (plan,) = bad_sql.tasks  # one plan task: no retry, no shard, no finalize
    assert (plan.stage, plan.state_name, plan.exit_code) == ("plan", "Plan", 65)
    assert "RunShards" not in result.states_entered()
    # Nothing is published; the only object is the failure record the execution's cause
    # came from, in the job's staging area.
    assert orchestration.keys("results/bad-sql") == [
        "results/bad-sql/_ecs_query/bad-sql/plan-failure.json"
    ]

    # The SQL error is in the plan task's log stream, which the cause's TaskArn leads to.
    (record,) = bad_sql.errors[plan.task_id]
    assert record["exit_code"] == 65
    assert record["error_type"] == "UserError"
    assert "no_such_column" in record["message"]


def test_bad_sql_puts_the_workers_message_in_the_execution_cause(bad_sql: FailedRun) -> None:
    (plan,) = bad_sql.tasks
    (record,) = bad_sql.errors[plan.task_id]
    assert record["message"] == bad_sql.result.cause
    assert 'Referenced column "no_such_column" not found' in (bad_sql.result.cause or "")


def test_a_corrupt_input_file_fails_the_job_names_the_file_and_commits_nothing(
    corrupt: FailedRun, orchestration: Orchestration
) -> None:
    assert corrupt.result.status == "FAILED"
    assert corrupt.result.error == "States.ExceedToleratedFailureThreshold"
    (rejected,) = [c for c in corrupt.children if c.status != "SUCCEEDED"]
    assert rejected.error in {"ShardUserError", "ShardFailed"}
    failed = [t for t in corrupt.tasks if t.stage == "shard" and t.shard == rejected.item["shard"]]
    assert failed and all(task.exit_code not in (None, 0) for task in failed)
    assert "finalize" not in {t.stage for t in corrupt.tasks}
    assert all(
        any("part-002.parquet" in json.dumps(record) for record in corrupt.errors[task.task_id])
        for task in failed
    )
    assert orchestration.manifest("results/corrupt") is None
    assert [k for k in orchestration.keys("results/corrupt") if "/_ecs_query/" not in k] == []


def test_a_corrupt_input_file_is_rejected_as_a_user_error_without_a_rerun(
    corrupt: FailedRun,
) -> None:
    (rejected,) = [c for c in corrupt.children if c.status != "SUCCEEDED"]
    assert rejected.error == "ShardUserError"
    (task,) = [t for t in corrupt.tasks if t.stage == "shard" and t.shard == rejected.item["shard"]]
    assert (task.capacity, task.exit_code) == (Capacity.SPOT, 65)
