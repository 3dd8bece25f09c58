"""``python -m benchmarks``: run the benchmarks and print a summary with goals.

Sections: ``local`` (a local job against raw DuckDB over about 1 GB of Parquet), ``planning``
(planning 100,000 listed objects) and ``listing`` (listing objects from a moto S3 server).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks import listing, local_run, planning
from benchmarks.common import Outcome, bench_console, median, summary_table
from benchmarks.local_run import RATIO_GOAL

# About 1 GB of Parquet: the generator writes 22.5-23 bytes per row.
FULL_ROWS = 45_000_000
FULL_FILES = 64
QUICK_ROWS = 10_000_000
QUICK_FILES = 16
SECTIONS = ("local", "planning", "listing")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Time a local job against raw DuckDB, planning and listing.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smaller and fewer runs: {QUICK_ROWS:,} rows, 3 pairs, 500 objects on moto",
    )
    parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help=f"multiply the local data set ({FULL_ROWS:,} rows in {FULL_FILES} files) by this",
    )
    parser.add_argument("--rows", type=int, default=None, help="rows of the local data set")
    parser.add_argument("--files", type=int, default=None, help="files of the local data set")
    parser.add_argument(
        "--runs", type=int, default=None, help="alternating pairs per comparison (5; quick: 3)"
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=SECTIONS,
        default=None,
        help="run only this section (repeatable; default: all)",
    )
    parser.add_argument(
        "--investigate",
        choices=("auto", "always", "never"),
        default="auto",
        help="time variants of the local job to show where its time goes (auto: on a miss)",
    )
    parser.add_argument(
        "--objects", type=int, default=100_000, help="listed objects the planner packs"
    )
    parser.add_argument(
        "--list-objects",
        type=int,
        default=None,
        help="objects to create and list on moto (2,000; quick: 500)",
    )
    parser.add_argument(
        "--root", type=Path, default=Path(".bench"), help="folder for data and scratch output"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = bench_console()
    sections = args.only or list(SECTIONS)
    runs = args.runs or (3 if args.quick else 5)
    rows = args.rows or round((QUICK_ROWS if args.quick else FULL_ROWS) * args.scale)
    files = args.files or max(1, round((QUICK_FILES if args.quick else FULL_FILES) * args.scale))
    list_objects = args.list_objects or (500 if args.quick else 2_000)
    started = time.perf_counter()
    console.print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} cores, load average "
        + ", ".join(f"{load:.2f}" for load in os.getloadavg())
    )

    outcomes: list[Outcome] = []
    if "local" in sections:
        console.rule("Local job vs raw DuckDB")
        data = local_run.ensure_data(args.root, rows=rows, files=files, console=console)
        output = args.root / "output" / "q1"
        size = local_run.data_size(data)
        comparison = local_run.compare(data, output, runs=runs, console=console)
        console.print(local_run.comparison_table(comparison))
        outcomes += local_run.outcomes(comparison, size)
        missed = median(comparison.pair_ratios) > RATIO_GOAL
        if args.investigate == "always" or (args.investigate == "auto" and missed):
            outcomes += local_run.investigate(
                data, output, runs=max(3, runs // 2), data_bytes=size, console=console
            )
        local_run.clean_output(args.root / "output")
    if "planning" in sections:
        console.rule("Planning")
        outcomes += planning.run(console, objects=args.objects, runs=runs)
    if "listing" in sections:
        console.rule("Listing from moto S3")
        outcomes += listing.run(console, objects=list_objects, runs=3, log_dir=args.root / "moto")

    load = os.getloadavg()[2]
    cores = os.cpu_count() or 1
    outcomes.append(
        Outcome(
            "machine load (15-minute average, at the end)",
            f"{load:.2f} on {cores} cores",
            f"< {cores} for steady figures",
            None if load < cores else False,
        )
    )
    console.rule()
    console.print(summary_table(outcomes))
    console.print(f"finished in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
