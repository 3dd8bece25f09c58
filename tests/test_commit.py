"""The commit protocol: attempt-scoped shard writes, one conditional manifest put, one winner
per output, nothing left of abandoned attempts."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from ecs_query import planner, stages
from ecs_query.errors import CommitConflictError, OutputExistsError
from ecs_query.spec import JobSpec, Stage, TaskContext
from ecs_query.storage import join, store_for
from tests.cli_helpers import make_dataset
from tests.servers import MotoServer


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("commit") / "events", files=4)


def context(stage: Stage, endpoint: str | None = None, **changes: Any) -> TaskContext:
    values: dict[str, Any] = {
        "stage": stage,
        "shard_index": None,
        "plan_uri": None,
        "attempt": None,
        "spill_dir": None,
        "threads": 1,
        "memory_limit": None,
        "endpoint_url": endpoint,
    }
    values.update(changes)
    return TaskContext(**values)


def run_all_shards(spec: JobSpec, endpoint: str | None = None) -> int:
    outcome = stages.plan_job(spec, endpoint, write_summary=True)
    assert outcome.plan is not None
    for shard in outcome.plan.shards:
        stages.run_shard(spec, context(Stage.SHARD, endpoint, shard_index=shard.index))
    return len(outcome.plan.shards)


def test_abandoned_attempts_are_removed_after_commit(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    spec = JobSpec(sql="SELECT id FROM input", input=str(data), output=str(out), target_shard_mib=1)
    shards = run_all_shards(spec)
    # A second, duplicate attempt of shard 0 (at-least-once execution) and a half-written
    # attempt of shard 1 that never wrote its marker.
    stages.run_shard(spec, context(Stage.SHARD, shard_index=0, attempt="zz-duplicate"))
    orphan = Path(stages.shard_dir(spec, 1)) / "crashed.parquet"
    orphan.write_bytes(b"partial")

    manifest = stages.run_finalize(spec, context(Stage.FINALIZE))

    assert [entry["shard"] for entry in manifest["files"]] == list(range(shards))
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["_manifest.json", *(f"part-{i:05d}.parquet" for i in range(shards))]
    )
    import duckdb

    total = duckdb.connect().execute(f"SELECT count(*) FROM '{out}/part-*.parquet'").fetchone()
    expected = duckdb.connect().execute(f"SELECT count(*) FROM '{data}/*.parquet'").fetchone()
    assert total == expected  # shard 0 counted once, not twice


def test_nothing_is_visible_before_the_commit(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    spec = JobSpec(sql="SELECT id FROM input", input=str(data), output=str(out))
    run_all_shards(spec)
    assert not (out / "_manifest.json").exists()
    assert [p.name for p in out.iterdir()] == ["_ecs_query"]
    stages.run_finalize(spec, context(Stage.FINALIZE))
    assert (out / "_manifest.json").exists()


def test_finalize_twice_is_a_no_op(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    spec = JobSpec(sql="SELECT id FROM input", input=str(data), output=str(out))
    run_all_shards(spec)
    first = stages.run_finalize(spec, context(Stage.FINALIZE))
    second = stages.run_finalize(spec, context(Stage.FINALIZE))
    assert second["committed_at"] == first["committed_at"]
    assert second["job_id"] == spec.job_id


def test_a_retried_finalize_of_the_same_job_takes_its_own_lock_back(
    data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    spec = JobSpec(sql="SELECT id FROM input", input=str(data), output=str(out))
    run_all_shards(spec)
    lock = join(spec.output, planner.STAGING_DIR, stages.LOCK_NAME)
    store_for(lock).write_bytes(lock, spec.job_id.encode())  # as a crashed finalize left it
    manifest = stages.run_finalize(spec, context(Stage.FINALIZE))
    assert manifest["job_id"] == spec.job_id
    assert not Path(lock).exists()


def test_a_foreign_lock_blocks_the_commit_and_says_what_to_do(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    spec = JobSpec(sql="SELECT id FROM input", input=str(data), output=str(out))
    run_all_shards(spec)
    lock = join(spec.output, planner.STAGING_DIR, stages.LOCK_NAME)
    store_for(lock).write_bytes(lock, b"job-other")
    with pytest.raises(CommitConflictError, match=r"job job-other is committing .* delete "):
        stages.run_finalize(spec, context(Stage.FINALIZE))
    assert not (out / "_manifest.json").exists()


def test_missing_shards_fail_the_commit_unless_tolerated(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    spec = JobSpec(sql="SELECT id FROM input", input=str(data), output=str(out), target_shard_mib=1)
    outcome = stages.plan_job(spec, None, write_summary=False)
    assert outcome.plan is not None
    for shard in outcome.plan.shards[1:]:
        stages.run_shard(spec, context(Stage.SHARD, shard_index=shard.index))
    with pytest.raises(Exception, match=r"1 of \d+ shards have no finished attempt"):
        stages.run_finalize(spec, context(Stage.FINALIZE))
    assert not (out / "_manifest.json").exists()
    manifest = stages.run_finalize(spec, context(Stage.FINALIZE, tolerated_failures=1))
    assert manifest["missing_shards"] == [0]


@pytest.mark.parametrize("where", ["local", "s3"])
def test_two_jobs_racing_to_one_output_exactly_one_commits(
    data: Path, tmp_path: Path, where: str, request: pytest.FixtureRequest
) -> None:
    endpoint: str | None = None
    if where == "s3":
        server: MotoServer = request.getfixturevalue("moto_server")
        s3 = request.getfixturevalue("s3")
        bucket = request.getfixturevalue("bucket")
        endpoint = server.endpoint
        for file in sorted(data.iterdir()):
            s3.upload_file(str(file), bucket, f"in/{file.name}")
        source, output = f"s3://{bucket}/in/", f"s3://{bucket}/out/"
    else:
        source, output = str(data), str(tmp_path / "out")
    jobs = [
        JobSpec(
            sql=f"SELECT id, {n} AS job FROM input", input=source, output=output, target_shard_mib=1
        )
        for n in (1, 2)
    ]
    # Both plan before either commits, so both pass the "output is empty" check.
    for spec in jobs:
        run_all_shards(spec, endpoint)

    results: dict[int, Any] = {}
    barrier = threading.Barrier(2)

    def finalize(n: int) -> None:
        barrier.wait()
        try:
            results[n] = stages.run_finalize(jobs[n], context(Stage.FINALIZE, endpoint))
        except (CommitConflictError, OutputExistsError) as error:
            results[n] = error

    threads = [threading.Thread(target=finalize, args=(n,)) for n in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    winners = [n for n, r in results.items() if isinstance(r, dict)]
    losers = [r for r in results.values() if isinstance(r, Exception)]
    assert len(winners) == 1 and len(losers) == 1
    assert "output" in str(losers[0]) or "committing" in str(losers[0])
    store = store_for(output, endpoint)
    manifest = json.loads(store.read_bytes(planner.manifest_uri(output)))
    assert manifest["job_id"] == jobs[winners[0]].job_id
    published = sorted(o.uri for o in store.list(output) if f"/{planner.STAGING_DIR}/" not in o.uri)
    assert published == sorted(
        [planner.manifest_uri(output), *(entry["uri"] for entry in manifest["files"])]
    )
