"""The planner: listing, format detection, byte-balanced shards, task sizing, plan documents."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from ecs_query import planner
from ecs_query.errors import InputError
from ecs_query.planner import InputFile, Plan
from ecs_query.spec import InputFormat, JobSpec


def files_of(sizes: list[int]) -> list[InputFile]:
    return [InputFile(f"s3://b/p/f{i:05d}.parquet", size) for i, size in enumerate(sizes)]


def spec(**changes: object) -> JobSpec:
    base = JobSpec(sql="SELECT * FROM input", input="s3://b/p/", output="s3://o/r/")
    return base.with_changes(**changes) if changes else base


def test_equal_files_pack_into_equal_shards() -> None:
    shards = planner.pack_shards(files_of([100] * 40), target_bytes=1000)
    assert len(shards) == 4
    assert {shard.bytes for shard in shards} == {1000}


def test_skewed_sizes_are_balanced_within_five_percent() -> None:
    rng = random.Random(7)
    sizes = [int(rng.lognormvariate(16, 1)) for _ in range(5000)]
    shards = planner.pack_shards(files_of(sizes), target_bytes=-(-sum(sizes) // 50))
    loads = [shard.bytes for shard in shards]
    assert len(shards) == 50
    assert max(loads) / (sum(loads) / len(loads)) <= 1.05


def test_every_file_lands_in_exactly_one_shard() -> None:
    files = files_of([5, 3, 9, 1, 7, 7, 2])
    shards = planner.pack_shards(files, target_bytes=10)
    packed = [file for shard in shards for file in shard.files]
    assert sorted(packed, key=lambda f: f.uri) == sorted(files, key=lambda f: f.uri)


def test_never_more_shards_than_files() -> None:
    shards = planner.pack_shards(files_of([10**9, 10**9]), target_bytes=1)
    assert len(shards) == 2


def test_same_listing_gives_the_same_plan_whatever_the_order() -> None:
    files = files_of([5, 3, 9, 1, 7, 7, 2, 8])
    shuffled = list(reversed(files))
    first = planner.make_plan(
        spec(), files, InputFormat.PARQUET, shard_sql="q", merge_sql=None, tables={}
    )
    second = planner.make_plan(
        spec(), shuffled, InputFormat.PARQUET, shard_sql="q", merge_sql=None, tables={}
    )
    assert first.to_json() == second.to_json()


def test_plan_round_trips_through_json() -> None:
    tables = {"nation": planner.TableFiles(InputFormat.CSV, ("s3://b/n.csv",))}
    plan = planner.make_plan(
        spec(),
        files_of([10, 20, 30]),
        InputFormat.PARQUET,
        shard_sql="SELECT 1",
        merge_sql="SELECT 2",
        tables=tables,
    )
    assert Plan.from_json(plan.to_json()) == plan


def test_single_task_puts_every_file_in_one_shard() -> None:
    plan = planner.make_plan(
        spec(single_task=True),
        files_of([10**9] * 5),
        InputFormat.PARQUET,
        shard_sql="q",
        merge_sql=None,
        tables={},
    )
    assert len(plan.shards) == 1
    assert plan.concurrency == 1


def test_concurrency_is_capped_by_the_spec() -> None:
    plan = planner.make_plan(
        spec(max_concurrency=3, target_shard_mib=1),
        files_of([2 * 1024 * 1024] * 10),
        InputFormat.PARQUET,
        shard_sql="q",
        merge_sql=None,
        tables={},
    )
    assert len(plan.shards) == 10
    assert plan.concurrency == 3


def test_items_are_small_and_one_per_shard() -> None:
    plan = planner.make_plan(
        spec(target_shard_mib=1),
        files_of([1024 * 1024] * 4),
        InputFormat.PARQUET,
        shard_sql="q",
        merge_sql=None,
        tables={},
    )
    assert plan.items() == [{"shard": i, "files": 1, "bytes": 1024 * 1024} for i in range(4)]
    json.dumps(plan.items())


def test_summary_carries_task_size_as_strings_for_task_overrides() -> None:
    plan = planner.make_plan(
        spec(), files_of([100]), InputFormat.PARQUET, shard_sql="q", merge_sql="m", tables={}
    )
    summary = plan.summary()
    assert summary["cpu"] == "512"
    assert summary["memory"] == "2048"
    assert summary["merge"] is True


def test_estimate_shows_spot_cheaper_than_on_demand() -> None:
    plan = planner.make_plan(
        spec(target_shard_mib=256),
        files_of([256 * 1024 * 1024] * 8),
        InputFormat.PARQUET,
        shard_sql="q",
        merge_sql=None,
        tables={},
    )
    estimate = plan.estimate()
    assert 0 < estimate.spot_usd < estimate.on_demand_usd
    assert estimate.prices.region == "us-east-1"
    assert estimate.seconds > 45


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.parquet", InputFormat.PARQUET),
        ("a.PARQUET", InputFormat.PARQUET),
        ("a.csv.gz", InputFormat.CSV),
        ("a.jsonl", InputFormat.JSON),
        ("a.ndjson.gz", InputFormat.JSON),
        ("a.txt", None),
        ("noext", None),
    ],
)
def test_format_follows_the_extension(name: str, expected: InputFormat | None) -> None:
    assert planner.format_of(f"s3://b/{name}") is expected


def test_listing_skips_hidden_files_and_detects_the_format(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("x\n1\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.csv").write_text("x\n2\n")
    (tmp_path / "_SUCCESS").write_text("")
    (tmp_path / ".hidden.csv").write_text("x\n3\n")
    (tmp_path / "_tmp").mkdir()
    (tmp_path / "_tmp" / "c.csv").write_text("x\n4\n")
    files, found = planner.list_inputs(str(tmp_path), None, None)
    assert found is InputFormat.CSV
    assert [Path(f.uri).name for f in files] == ["a.csv", "b.csv"]


def test_listing_a_glob(tmp_path: Path) -> None:
    for name in ("a.csv", "b.csv", "c.json"):
        (tmp_path / name).write_text("x\n1\n")
    files, found = planner.list_inputs(str(tmp_path / "*.csv"), None, None)
    assert [Path(f.uri).name for f in files] == ["a.csv", "b.csv"]
    assert found is InputFormat.CSV


def test_missing_local_input_is_reported(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist; check the path"):
        planner.list_inputs(str(tmp_path / "nope"), None, None)


def test_empty_folder_is_reported(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="holds no objects; check the prefix"):
        planner.list_inputs(str(tmp_path), None, None)


def test_unknown_extension_asks_for_the_format(tmp_path: Path) -> None:
    (tmp_path / "data.xml").write_text("<a/>")
    with pytest.raises(InputError, match=r"has no known extension .*--input-format"):
        planner.list_inputs(str(tmp_path), None, None)


def test_mixed_formats_are_refused(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("x\n1\n")
    (tmp_path / "b.jsonl").write_text('{"x": 1}\n')
    with pytest.raises(InputError, match="mixes formats"):
        planner.list_inputs(str(tmp_path), None, None)


def test_a_given_format_reads_files_without_extension(tmp_path: Path) -> None:
    (tmp_path / "part-0").write_text("x\n1\n")
    files, found = planner.list_inputs(str(tmp_path), InputFormat.CSV, None)
    assert found is InputFormat.CSV
    assert len(files) == 1


def test_zero_byte_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "a.parquet").write_bytes(b"")
    with pytest.raises(InputError, match=r"a.parquet' is empty \(0 bytes\)"):
        planner.list_inputs(str(tmp_path), None, None)
