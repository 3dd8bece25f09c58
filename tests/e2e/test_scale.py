"""A 200-shard job through the executed state machine: 200 worker processes.

The construct caps concurrency at 4 (``max_concurrency=4``), which is also what two cores
run best: each worker costs about 1.5 CPU-seconds whatever its shard's size. The plan copies
the cap into its summary, and the Distributed Map's MaxConcurrencyPath reads it from there.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e import data
from tests.e2e.fargate import Capacity
from tests.e2e.harness import Orchestration
from tests.e2e.stack import synthesize

SHARDS = 200
MAX_CONCURRENCY = 4
SQL = "SELECT id, category FROM input WHERE id % 10000 = 0"


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orchestration]:
    """A stack whose construct caps the shards of a job that run at once."""
    template = synthesize(
        tmp_path_factory.mktemp("cdk-capped"), "EcsQueryCapped", max_concurrency=MAX_CONCURRENCY
    )
    with Orchestration(template, tmp_path_factory.mktemp("capped")) as running:
        yield running


@pytest.mark.slow
def test_two_hundred_shards_commit_with_every_shard_in_the_manifest(
    capped: Orchestration, tmp_path_factory: pytest.TempPathFactory
) -> None:
    folder = tmp_path_factory.mktemp("scale-data")
    files = data.write_files(folder, SHARDS)
    source = capped.upload(folder, "data/scale")
    request = {"sql": SQL, "input": source, "output_prefix": "results/scale", "target_shard_mib": 1}

    result = capped.run(request, "two-hundred-shards", timeout=600)

    assert result.status == "SUCCEEDED", f"{result.error}: {result.cause}"
    shards = [task for task in capped.tasks.tasks if task.stage == "shard"]
    assert sorted(task.shard or 0 for task in shards) == list(range(SHARDS))
    assert all(t.capacity is Capacity.SPOT and t.exit_code == 0 for t in shards)
    assert capped.tasks.peak_running["shard"] == MAX_CONCURRENCY
    assert [c.status for c in capped.adapted.children] == ["SUCCEEDED"] * SHARDS

    manifest = capped.manifest("results/scale")
    assert manifest is not None
    assert (manifest["shards"], manifest["input_files"], manifest["missing_shards"]) == (
        SHARDS,
        SHARDS,
        [],
    )
    assert sorted(entry["shard"] for entry in manifest["files"]) == list(range(SHARDS))
    expected = data.read_rows(files, "SELECT count(*) FROM data WHERE id % 10000 = 0")[0][0]
    assert manifest["rows"] == expected == SHARDS * data.ROWS_PER_FILE // 10_000
    assert [key for key in capped.keys("results/scale") if "/_ecs_query/" in key] == []
