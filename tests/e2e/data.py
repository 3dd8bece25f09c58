"""Generated input data: Parquet files just over 1 MiB, so that with ``target_shard_mib: 1``
(the smallest a job accepts) each file becomes its own shard."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import duckdb

# Rows per file: with an id, a category and two columns of hashed (incompressible) numbers,
# 85,000 rows make a Parquet file of a little over 1 MiB.
ROWS_PER_FILE: Final = 85_000
CATEGORIES: Final = 7


def write_files(folder: Path, count: int, rows: int = ROWS_PER_FILE) -> list[Path]:
    """``count`` Parquet files ``part-000.parquet``...; file ``i`` holds ids ``i*rows`` to
    ``(i+1)*rows - 1``. Every value follows from the id, so any run can be checked."""
    folder.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    paths = []
    try:
        for index in range(count):
            path = folder / f"part-{index:03d}.parquet"
            start = index * rows
            con.execute(
                f"""COPY (
                    SELECT i AS id,
                           (i % {CATEGORIES})::INTEGER AS category,
                           (hash(i) % 1000)::BIGINT AS amount,
                           hash(i * 31 + 7) AS noise
                    FROM range({start}, {start + rows}) t(i)
                ) TO '{path}' (FORMAT parquet)"""
            )
            paths.append(path)
    finally:
        con.close()
    return paths


def corrupt(path: Path) -> None:
    """Keep the size and the Parquet magic at the start; break everything else."""
    size = path.stat().st_size
    path.write_bytes(b"PAR1" + b"\x00garbage" * ((size - 4) // 8 + 1))


def read_rows(paths: list[Path], sql: str = "SELECT * FROM data ORDER BY ALL") -> list[Any]:
    """Rows of Parquet files, as a sorted list of tuples, queried as the table ``data``."""
    con = duckdb.connect()
    try:
        listing = ", ".join(f"'{path}'" for path in paths)
        con.execute(f"CREATE VIEW data AS SELECT * FROM read_parquet([{listing}])")
        return con.execute(sql).fetchall()
    finally:
        con.close()
