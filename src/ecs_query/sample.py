"""A deterministic TPC-H ``lineitem``-like data set, written as Parquet by DuckDB.

Every value is a function of the row number and the seed alone (hashes, never ``random()``),
so the same arguments always give byte-identical files, and the file count only decides where
the rows are cut. The distributions follow TPC-H in spirit: four lines per order, order dates
spread over 1992-1998, ship dates 1 to 121 days after the order, receipt 1 to 30 days after
shipping; return flag ``R`` or ``A`` only for lines received by 1995-06-17 (so shipped by then
too), else ``N``; line status ``F`` for lines shipped by that date, else ``O``. As in TPC-H,
Q1 then finds four groups: A/F, N/F, N/O and R/F. It is sample data for demos and benchmarks,
not a TPC-H-conformant generator.
"""

from __future__ import annotations

import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Final

import duckdb

logger = logging.getLogger(__name__)

FILE_PATTERN: Final = "lineitem-{index:05d}.parquet"
MARKER_NAME: Final = "_generated.json"
ROW_GROUP_ROWS: Final = 122_880
# Bumped whenever the generated values change, so that older data sets are regenerated.
GENERATOR_VERSION: Final = 1

# The TPC-H "current date": lines shipped after it are still open and cannot be returned yet.
_CURRENT_DATE: Final = "1995-06-17"
_LINES_PER_ORDER: Final = 4
# Orders are placed from 1992-01-01 to 1998-08-02 (2,405 days), so that the latest ship date,
# 121 days later, is 1998-12-01.
_ORDER_DAYS: Final = 2_406

_SHIP_INSTRUCT: Final = ("DELIVER IN PERSON", "COLLECT COD", "NONE", "TAKE BACK RETURN")
_SHIP_MODE: Final = ("REG AIR", "AIR", "RAIL", "SHIP", "TRUCK", "MAIL", "FOB")
_WORDS: Final = (
    "furiously", "sly", "careful", "blithely", "quickly", "fluffily", "slyly", "ironic",
    "final", "regular", "pending", "express", "bold", "even", "silent", "special", "unusual",
    "deposits", "requests", "packages", "accounts", "instructions", "theodolites", "pinto",
    "beans", "foxes", "ideas", "platelets", "asymptotes", "courts", "dolphins", "sheaves",
    "dependencies", "excuses", "frets", "sauternes", "warhorses", "sentiments", "decoys", "somas",
)  # fmt: skip

# Two 64-bit hashes per row (h1, h2) and one per order (ho); each column reads them from its
# own bit offset, so columns vary independently. The ``{...}`` fields are filled in by
# ``_select_sql`` with integers and quoted constants only.
_SELECT: Final = """
WITH hashed AS (
    SELECT
        i,
        hash(i, {seed}) AS h1,
        hash(i, {seed} + 1) AS h2,
        hash(i // {lines_per_order}, {seed} + 2) AS ho
    FROM range({start}, {stop}) AS r(i)
),
picked AS (
    SELECT
        i // {lines_per_order} + 1 AS orderkey,
        i % {lines_per_order} + 1 AS linenumber,
        CAST(1 + h1 % {parts} AS BIGINT) AS partkey,
        CAST(1 + (h1 >> 20) % 50 AS BIGINT) AS quantity,
        CAST((h1 >> 28) % 11 AS BIGINT) AS discount_pct,
        CAST((h1 >> 34) % 9 AS BIGINT) AS tax_pct,
        CAST((h1 >> 40) % 4 AS BIGINT) AS supplier_pick,
        DATE '1992-01-01' + CAST(ho % {order_days} AS INTEGER) AS orderdate,
        CAST(1 + (h2 >> 8) % 121 AS INTEGER) AS ship_lag,
        CAST((h2 >> 16) % 2 AS BIGINT) AS return_pick,
        CAST(30 + (h2 >> 20) % 61 AS INTEGER) AS commit_lag,
        CAST(1 + (h2 >> 28) % 30 AS INTEGER) AS receipt_lag,
        CAST(1 + (h2 >> 34) % {ship_instruct_count} AS BIGINT) AS instruct_pick,
        CAST(1 + (h2 >> 37) % {ship_mode_count} AS BIGINT) AS mode_pick,
        CAST(1 + (h2 >> 40) % {word_count} AS BIGINT) AS word1,
        CAST(1 + (h2 >> 46) % {word_count} AS BIGINT) AS word2,
        CAST(1 + (h2 >> 52) % {word_count} AS BIGINT) AS word3
    FROM hashed
),
shipped AS (
    SELECT *, orderdate + ship_lag AS shipdate FROM picked
),
dated AS (
    SELECT *, shipdate + receipt_lag AS receiptdate FROM shipped
)
SELECT
    orderkey AS l_orderkey,
    partkey AS l_partkey,
    1 + (partkey + supplier_pick * ({suppliers} // 4 + 1)) % {suppliers} AS l_suppkey,
    CAST(linenumber AS INTEGER) AS l_linenumber,
    CAST(quantity AS DECIMAL(15, 2)) AS l_quantity,
    CAST(
        CAST(quantity * (90000 + partkey // 10 % 20001 + 100 * (partkey % 1000)) AS DECIMAL(18, 0))
        * 0.01 AS DECIMAL(15, 2)
    ) AS l_extendedprice,
    CAST(discount_pct * 0.01 AS DECIMAL(15, 2)) AS l_discount,
    CAST(tax_pct * 0.01 AS DECIMAL(15, 2)) AS l_tax,
    CASE
        WHEN receiptdate > DATE '{current_date}' THEN 'N'
        WHEN return_pick = 0 THEN 'R'
        ELSE 'A'
    END AS l_returnflag,
    CASE WHEN shipdate > DATE '{current_date}' THEN 'O' ELSE 'F' END AS l_linestatus,
    shipdate AS l_shipdate,
    orderdate + commit_lag AS l_commitdate,
    receiptdate AS l_receiptdate,
    {ship_instruct}[instruct_pick] AS l_shipinstruct,
    {ship_mode}[mode_pick] AS l_shipmode,
    concat_ws(' ', {words}[word1], {words}[word2], {words}[word3]) AS l_comment
FROM dated
"""


def generate_lineitem(target: str | Path, *, rows: int, files: int, seed: int = 0) -> list[Path]:
    """Write ``rows`` lineitem rows as ``files`` Parquet files of nearly equal row counts.

    Files are named ``lineitem-00000.parquet`` upwards and compressed with ZSTD, in row groups
    of ``ROW_GROUP_ROWS`` rows. Existing files of those names are replaced; other files in
    ``target`` are left alone. Returns the paths written, in order.
    """
    _check_arguments(rows=rows, files=files, seed=seed)
    folder = Path(target)
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    paths = [folder / FILE_PATTERN.format(index=index) for index in range(files)]
    # Reading range() is single-threaded, so one COPY keeps one core busy. Files are written
    # side by side instead, one per core, each COPY on its calling thread only (DuckDB threads
    # = 1: idle DuckDB workers would only add scheduling CPU). On 2 cores, 10M rows: 8-12 s,
    # against 14-16 s one file at a time. A file's bytes depend on its rows alone.
    con = duckdb.connect(config={"threads": 1})

    def write(index: int) -> None:
        start, stop = rows * index // files, rows * (index + 1) // files
        select = _select_sql(start=start, stop=stop, rows=rows, seed=seed)
        cursor = con.cursor()
        try:
            cursor.execute(
                f"COPY ({select}) TO '{_sql_path(paths[index])}' "
                f"(FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE {ROW_GROUP_ROWS})"
            )
        finally:
            cursor.close()

    try:
        with ThreadPoolExecutor(max_workers=min(files, os.cpu_count() or 1)) as pool:
            list(pool.map(write, range(files)))
    finally:
        con.close()
    logger.info(
        "generated %s lineitem rows in %s files under %s in %.2f s",
        rows,
        files,
        folder,
        time.perf_counter() - started,
    )
    return paths


def lineitem_is_current(target: str | Path, *, rows: int, files: int, seed: int = 0) -> bool:
    """True when ``target`` holds a complete data set generated with these arguments."""
    folder = Path(target)
    marker = folder / MARKER_NAME
    try:
        recorded = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(recorded, dict) or recorded.get("arguments") != _arguments(rows, files, seed):
        return False
    sizes = recorded.get("sizes")
    if not isinstance(sizes, list) or len(sizes) != files:
        return False
    for index, size in enumerate(sizes):
        path = folder / FILE_PATTERN.format(index=index)
        if not path.is_file() or path.stat().st_size != size:
            return False
    return True


def ensure_lineitem(target: str | Path, *, rows: int, files: int, seed: int = 0) -> list[Path]:
    """The data set for these arguments, generated only when ``target`` does not hold it yet.

    A marker file (``_generated.json``) records the arguments and file sizes; it is written
    last, so an interrupted run is regenerated. On a mismatch, every ``lineitem-*.parquet``
    file and the marker are removed before generating; nothing else in ``target`` is touched.
    """
    _check_arguments(rows=rows, files=files, seed=seed)
    folder = Path(target)
    paths = [folder / FILE_PATTERN.format(index=index) for index in range(files)]
    if lineitem_is_current(folder, rows=rows, files=files, seed=seed):
        logger.info("reusing the lineitem data set under %s", folder)
        return paths

    marker = folder / MARKER_NAME
    marker.unlink(missing_ok=True)
    for old in folder.glob("lineitem-*.parquet"):
        old.unlink()
    paths = generate_lineitem(folder, rows=rows, files=files, seed=seed)
    document = {
        "arguments": _arguments(rows, files, seed),
        "sizes": [path.stat().st_size for path in paths],
    }
    marker.write_text(json.dumps(document, indent=2) + "\n")
    return paths


def _arguments(rows: int, files: int, seed: int) -> dict[str, int]:
    return {"rows": rows, "files": files, "seed": seed, "version": GENERATOR_VERSION}


def _check_arguments(*, rows: int, files: int, seed: int) -> None:
    problems = []
    if rows < 1:
        problems.append(f"rows: expected 1 or more, received {rows}")
    if not 1 <= files <= max(1, rows):
        problems.append(f"files: expected 1 to rows ({rows}), received {files}")
    if seed < 0:
        problems.append(f"seed: expected 0 or more, received {seed}")
    if problems:
        raise ValueError("; ".join(problems))


def _select_sql(*, start: int, stop: int, rows: int, seed: int) -> str:
    # TPC-H has 200,000 parts and 10,000 suppliers per 6,000,000 lines.
    parts = max(1, rows // 30)
    suppliers = max(4, rows // 600)
    return _SELECT.format(
        start=int(start),
        stop=int(stop),
        seed=int(seed),
        parts=parts,
        suppliers=suppliers,
        lines_per_order=_LINES_PER_ORDER,
        order_days=_ORDER_DAYS,
        current_date=_CURRENT_DATE,
        ship_instruct=_sql_list(_SHIP_INSTRUCT),
        ship_instruct_count=len(_SHIP_INSTRUCT),
        ship_mode=_sql_list(_SHIP_MODE),
        ship_mode_count=len(_SHIP_MODE),
        words=_sql_list(_WORDS),
        word_count=len(_WORDS),
    )


def _sql_list(values: tuple[str, ...]) -> str:
    return "[" + ", ".join("'" + value.replace("'", "''") + "'" for value in values) + "]"


def _sql_path(path: Path) -> str:
    return str(path).replace("'", "''")
