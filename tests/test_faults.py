"""Faults in local mode: killed and stopped workers, an S3 endpoint that restarts or throttles,
and spill space running out. Every job either commits the whole result exactly once or fails
with a clear error and commits nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ecs_query import storage
from ecs_query.storage import S3Store
from tests.cli_helpers import ecs_query, make_dataset, query, run_json
from tests.faults import FaultProxy
from tests.servers import MotoServer

# About three seconds of CPU per shard, so that a signal lands mid-shard.
SLOW_SQL = "SELECT count(*) AS n, sum((a.id * b.range) % 7) AS s FROM input a, range(8000) b"
SLOW_MERGE = "SELECT CAST(sum(n) AS BIGINT) AS n, CAST(sum(s) AS HUGEINT) AS s FROM partials"
GROUP_SQL = "SELECT grp, count(*) AS n, sum(val) AS total FROM input GROUP BY grp"
GROUP_MERGE = (
    "SELECT grp, CAST(sum(n) AS BIGINT) AS n, sum(total) AS total FROM partials GROUP BY grp"
)


@pytest.fixture(scope="module")
def two_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("faults") / "two", files=2)


@pytest.fixture(scope="module")
def six_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("faults") / "six", files=6)


def parents() -> dict[int, int]:
    """Every process on the machine and its parent."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            found[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return found


def worker_children(runner: int) -> list[int]:
    """Shard processes of a local run: the runner starts a fork server, which forks one
    process per shard attempt, so they are the runner's grandchildren."""
    tree = parents()
    children = {pid for pid, parent in tree.items() if parent == runner}
    return sorted(pid for pid, parent in tree.items() if parent in children)


def signal_first_worker(runner: subprocess.Popen[str], signum: int, after: float) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        children = worker_children(runner.pid)
        if children:
            time.sleep(after)
            os.kill(children[0], signum)
            return children[0]
        time.sleep(0.05)
    raise AssertionError("no worker process appeared")


def expected_slow(data: Path) -> list[tuple[Any, ...]]:
    return query(
        f"SELECT count(*), sum((a.id * b.range) % 7) FROM read_parquet('{data}/*.parquet') a, "
        "range(8000) b"
    )


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_a_worker_stopped_mid_shard_is_retried_and_counted_once(
    two_files: Path, tmp_path: Path, signum: int
) -> None:
    out = tmp_path / "out"
    runner = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ecs_query",
            "run",
            "--sql",
            SLOW_SQL,
            "--merge-sql",
            SLOW_MERGE,
            "--input",
            str(two_files),
            "--output",
            str(out),
            "--target-shard-mib",
            "1",
            "--workers",
            "2",
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    signal_first_worker(runner, signum, after=1.0)
    stdout, stderr = runner.communicate(timeout=120)
    assert runner.returncode == 0, stderr
    report = json.loads(stdout)
    assert report["retries"] >= 1
    manifest = json.loads((out / "_manifest.json").read_text())
    got = query(f"SELECT n, s FROM '{out}/part-00000.parquet'")
    assert got == expected_slow(two_files)
    assert manifest["rows"] == 1
    assert sorted(p.name for p in out.iterdir()) == ["_manifest.json", "part-00000.parquet"]


def test_sigterm_makes_the_worker_exit_transient_within_ten_seconds(
    two_files: Path, tmp_path: Path
) -> None:
    # GIVEN a planned job whose shard is busy in DuckDB
    out = tmp_path / "out"
    plan = ecs_query(
        "worker",
        env={
            "ECS_QUERY_STAGE": "plan",
            "ECS_QUERY_SQL": SLOW_SQL,
            "ECS_QUERY_MERGE_SQL": SLOW_MERGE,
            "ECS_QUERY_INPUT": str(two_files),
            "ECS_QUERY_OUTPUT": str(out),
            "ECS_QUERY_TARGET_SHARD_MIB": "1",
        },
    )
    assert plan.returncode == 0, plan.stdout
    env = {
        **os.environ,
        "ECS_QUERY_STAGE": "shard",
        "ECS_QUERY_SHARD_INDEX": "0",
        "ECS_QUERY_SQL": SLOW_SQL,
        "ECS_QUERY_MERGE_SQL": SLOW_MERGE,
        "ECS_QUERY_INPUT": str(two_files),
        "ECS_QUERY_OUTPUT": str(out),
        "ECS_QUERY_TARGET_SHARD_MIB": "1",
        "ECS_QUERY_THREADS": "1",
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "ecs_query", "worker"], env=env, stdout=subprocess.PIPE, text=True
    )
    assert worker.stdout is not None
    first = json.loads(worker.stdout.readline())
    assert first["message"] == "stage started"  # the SIGTERM handler is in place
    time.sleep(1.0)
    # WHEN it gets SIGTERM
    sent = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    stdout, _ = worker.communicate(timeout=30)
    took = time.monotonic() - sent
    # THEN it exits with the retryable code, says why, and left no marker or data behind
    assert worker.returncode == 75
    assert took < 10
    records = [json.loads(line) for line in stdout.splitlines()]
    assert any("stopped by SIGTERM" in r.get("message", "") for r in records)
    shard_dir = out / "_ecs_query"
    staged = [p.name for p in shard_dir.rglob("*") if p.is_file()]
    assert sorted(staged) == ["items.json", "plan.json", "summary.json"]


def test_cancelled_upload_leaves_no_object_and_no_parts(
    s3: Any, bucket: str, moto_server: MotoServer, tmp_path: Path
) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(48 * 1024 * 1024))
    store = S3Store(moto_server.endpoint)
    target = f"s3://{bucket}/out/big.bin"
    failure: list[BaseException] = []

    def upload() -> None:
        try:
            store.upload(str(big), target)
        except BaseException as error:  # the cancellation surfaces here
            failure.append(error)

    thread = threading.Thread(target=upload)
    thread.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if s3.list_multipart_uploads(Bucket=bucket).get("Uploads"):
            break
        time.sleep(0.01)
    cancelled = storage.cancel_transfers()
    thread.join(timeout=30)
    assert cancelled == 1
    assert failure, "the upload finished before it could be cancelled"
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix="out/")


@pytest.fixture
def proxy(moto_server: MotoServer) -> Iterator[FaultProxy]:
    proxy = FaultProxy(moto_server.port)
    proxy.start()
    yield proxy
    proxy.stop()


def upload_folder(s3: Any, bucket: str, prefix: str, folder: Path) -> None:
    for file in sorted(folder.iterdir()):
        s3.upload_file(str(file), bucket, f"{prefix}{file.name}")


def expected_groups(data: Path) -> list[tuple[Any, ...]]:
    return query(
        f"SELECT grp, count(*), sum(val) FROM read_parquet('{data}/*.parquet') "
        "GROUP BY grp ORDER BY grp NULLS FIRST"
    )


def committed_groups(s3: Any, bucket: str, prefix: str, tmp_path: Path) -> list[tuple[Any, ...]]:
    local = tmp_path / "result.parquet"
    s3.download_file(bucket, f"{prefix}part-00000.parquet", str(local))
    return query(f"SELECT * FROM '{local}' ORDER BY grp NULLS FIRST")


def test_job_survives_the_s3_endpoint_restarting(
    s3: Any, bucket: str, proxy: FaultProxy, six_files: Path, tmp_path: Path
) -> None:
    upload_folder(s3, bucket, "in/", six_files)
    proxy.restart_at_request(20, down_for=3.0)
    report = run_json(
        "--sql",
        f"{GROUP_SQL}",
        "--merge-sql",
        GROUP_MERGE,
        "--input",
        f"s3://{bucket}/in/",
        "--output",
        f"s3://{bucket}/out/",
        "--endpoint-url",
        proxy.endpoint,
        "--target-shard-mib",
        "1",
        "--workers",
        "2",
    )
    assert proxy.restarted.wait(timeout=10)
    assert report["ok"] is True
    # The job was talking to S3 before the endpoint went away, and again after it came back.
    assert 0 < proxy.requests_at_stop < proxy.requests
    assert committed_groups(s3, bucket, "out/", tmp_path) == expected_groups(six_files)


def test_throttling_is_answered_with_backoff(
    s3: Any, bucket: str, proxy: FaultProxy, six_files: Path, tmp_path: Path
) -> None:
    upload_folder(s3, bucket, "in/", six_files)
    proxy.slowdown_every = 3
    proxy.slowdown_budget = 10
    report = run_json(
        "--sql",
        GROUP_SQL,
        "--merge-sql",
        GROUP_MERGE,
        "--input",
        f"s3://{bucket}/in/",
        "--output",
        f"s3://{bucket}/out/",
        "--endpoint-url",
        proxy.endpoint,
        "--target-shard-mib",
        "1",
    )
    assert report["ok"] is True
    assert proxy.slowdowns == 10
    assert committed_groups(s3, bucket, "out/", tmp_path) == expected_groups(six_files)


@pytest.fixture
def tiny_spill_dir(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs: a real file system that fills up."""
    mount_point = tmp_path / "spill"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)


def test_spill_space_running_out_is_reported_clearly(
    six_files: Path, tmp_path: Path, tiny_spill_dir: Path
) -> None:
    out = tmp_path / "out"
    result = ecs_query(
        "run",
        "--sql",
        "SELECT h, count(*) AS n FROM (SELECT hash(a.id + b.range)::VARCHAR AS h "
        "FROM input a, range(20) b) GROUP BY h",
        "--input",
        str(six_files),
        "--output",
        str(out),
        "--workers",
        "1",
        env={"ECS_QUERY_SPILL_DIR": str(tiny_spill_dir), "ECS_QUERY_MEMORY_LIMIT": "40MB"},
    )
    assert result.returncode == 65, result.stderr
    assert "spill space ran out" in result.stderr
    assert "give the task more ephemeral storage, mount EFS" in result.stderr
    assert not (out / "_manifest.json").exists()
