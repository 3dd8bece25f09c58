"""Drive the real ``ecs-query`` command in a subprocess, as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import duckdb


def ecs_query(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ecs_query", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
        check=False,
    )


def run_json(*args: str, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    result = ecs_query("run", *args, "--json", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def read_manifest_rows(manifest: Mapping[str, Any], order_by: str = "") -> list[tuple[Any, ...]]:
    """Read every committed file listed in a local manifest."""
    files = [entry["uri"] for entry in manifest["files"]]
    reader = "read_parquet" if manifest["format"] == "parquet" else "read_csv_auto"
    con = duckdb.connect()
    listing = ", ".join(f"'{file}'" for file in files)
    order = f" ORDER BY {order_by}" if order_by else ""
    return con.execute(f"SELECT * FROM {reader}([{listing}]){order}").fetchall()


def query(sql: str) -> list[tuple[Any, ...]]:
    return duckdb.connect().execute(sql).fetchall()


def make_dataset(root: Path, files: int = 6, rows_per_file: int = 40_000) -> Path:
    """Parquet files of about 0.5 MiB: ids, a group key with NULLs, a value, a label and noise
    (incompressible, so that 1 MiB shards split the set)."""
    root.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    for index in range(files):
        start = index * rows_per_file
        # Unequal sizes so packing has something to balance.
        end = start + rows_per_file + index * 1000
        con.execute(
            f"""COPY (
                SELECT range AS id,
                       CASE WHEN range % 11 = 0 THEN NULL ELSE range % 5 END AS grp,
                       (range % 97) * 1.5 AS val,
                       'label-' || (range % 3) AS label,
                       hash(range) AS noise
                FROM range({start}, {end})
            ) TO '{root / f"part-{index}.parquet"}' (FORMAT parquet)"""
        )
    con.close()
    return root
