"""Listing objects from a moto S3 server on 127.0.0.1, through the planner's own listing.

Moto creates objects at 60 to 200 per second on 2 cores, so 100,000 objects would take 8 to
25 minutes to set up: the default is fewer, and the rate is reported per object. Most of
the listing time is moto's own (it renders every page in Python), so the table splits it into
this process's CPU (the SDK parsing pages, the planner filtering them) and the rest.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.table import Table

from benchmarks.common import Outcome, median, timed
from ecs_query import planner
from tests.servers import TEST_CREDENTIALS, start_moto

_BUCKET = "bench-listing"
_PREFIX = "events"


@contextmanager
def _test_credentials() -> Iterator[None]:
    """Fake credentials for the local server only, restored afterwards."""
    saved = {name: os.environ.get(name) for name in TEST_CREDENTIALS}
    os.environ.update(TEST_CREDENTIALS)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run(console: Console, *, objects: int, runs: int, log_dir: Path) -> list[Outcome]:
    import boto3
    from botocore.config import Config

    log_dir.mkdir(parents=True, exist_ok=True)
    with _test_credentials():
        server = start_moto(Path(tempfile.mkdtemp(prefix="moto-", dir=log_dir)))
        try:
            client = boto3.client(
                "s3",
                endpoint_url=server.endpoint,
                region_name="us-east-1",
                config=Config(max_pool_connections=16),
            )
            client.create_bucket(Bucket=_BUCKET)

            def put(index: int) -> None:
                key = f"{_PREFIX}/day={index % 365:03d}/part-{index:06d}.parquet"
                client.put_object(Bucket=_BUCKET, Key=key, Body=b"P")

            console.print(f"creating {objects:,} objects on moto at {server.endpoint} ...")
            with ThreadPoolExecutor(max_workers=8) as pool:
                created = timed(lambda: list(pool.map(put, range(objects))))

            uri = f"s3://{_BUCKET}/{_PREFIX}/"
            listings = [
                timed(lambda: planner.list_inputs(uri, None, server.endpoint)) for _ in range(runs)
            ]
        finally:
            server.stop()

    found = len(listings[-1].value[0])
    if found != objects:
        raise SystemExit(f"listing found {found:,} objects, expected {objects:,}")
    wall = median([run.wall for run in listings])
    # The server is a child process, but its CPU is counted only once it has been waited for,
    # after it stops: CPU measured here is the SDK's and the planner's.
    client_cpu = median([run.cpu for run in listings])
    rate = objects / wall
    table = Table(title=f"Listing {objects:,} objects from moto S3", title_justify="left")
    for name in ("step", "seconds (median)", "objects/s", "this process CPU"):
        table.add_column(name, justify="left" if name == "step" else "right")
    table.add_row("create (8 threads)", f"{created.wall:.2f}", f"{objects / created.wall:,.0f}", "")
    table.add_row("planner.list_inputs", f"{wall:.3f}", f"{rate:,.0f}", f"{client_cpu:.3f} s")
    console.print(table)
    return [
        Outcome(
            f"list {objects:,} objects from moto (planner.list_inputs)",
            f"{rate:,.0f} objects/s",
            "",
            None,
        ),
        Outcome("  100,000 objects at that rate", f"{100_000 / rate:.1f} s", "", None),
        Outcome(
            "  share of it in this process (SDK + planner)",
            f"{client_cpu / wall:.0%}",
            "",
            None,
        ),
    ]
