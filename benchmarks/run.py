"""The benchmark: the sync jobs against the bare reads and against dlt and Sling, checked for exactness.

    .venv/bin/python -m benchmarks.run --sizes 200000 1000000

One run, one private local stack on free ports: the CLI start-up baselines, then for each
size the product phase (seed, bare reads, the drivers' own work, sync, no-change re-sync, dlt,
Sling, a keyed sync) and the cart phase
(seed, bare scans, sync, monitored sync, bare bulk_write, user_id syncs), and a product
sync at the RSS reference size. Writes benchmarks/results.json, RESULTS.md and the plots.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import psycopg

from benchmarks import bounds, report
from benchmarks.jobs import git
from benchmarks.phases import Bench, BenchSettings, DltConfig, log
from local.stack import CART_DB, LocalStack, free_port

HERE = Path(__file__).resolve().parent
#: dlt's candidates for its fastest merge: COPY of CSV with each strategy, and ADBC parquet (see RESULTS.md).
DEFAULT_DLT_CONFIGS = ["csv/delete-insert", "csv/upsert", "parquet/upsert"]
PACKAGES = (
    "dagster",
    "pymongo",
    "pymongoarrow",
    "psycopg",
    "sqlalchemy",
    "secantusdb",
    "dlt",
    "sling-linux-amd64",
    "pyarrow",
    "adbc-driver-postgresql",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[200_000, 1_000_000], help="products (and carts)")
    parser.add_argument("--rss-reference-size", type=int, default=100_000, help="product sync for the RSS ratio")
    parser.add_argument("--batch-size", type=int, default=1000, help="the jobs' batch_size (run config)")
    parser.add_argument(
        "--mongo-fetch-size",
        type=int,
        help="documents per getMore, jobs and scans (default: the batch size, as the jobs')",
    )
    parser.add_argument(
        "--pg-fetch-size", type=int, help="rows per FETCH, jobs and scans (default: the batch size, as the jobs')"
    )
    parser.add_argument(
        "--dlt-configs", nargs="+", default=DEFAULT_DLT_CONFIGS, help="dlt's FORMAT[/STRATEGY[/uncompressed]] to run"
    )
    parser.add_argument("--dlt-chunk", type=int, default=10_000, help="rows per arrow table dlt is given")
    parser.add_argument("--out", type=Path, default=HERE / "results.json")
    parser.add_argument("--keep-state", action="store_true", help="keep the stack's folder (logs) afterwards")
    args = parser.parse_args(argv)
    args.mongo_fetch_size = args.mongo_fetch_size or args.batch_size
    args.pg_fetch_size = args.pg_fetch_size or args.batch_size
    return args


def setup_info(args: argparse.Namespace, stack: LocalStack) -> dict[str, Any]:
    """What the figures depend on: machine, versions, settings."""
    with psycopg.connect(stack.pg_url(CART_DB)) as conn:
        postgres = conn.execute("SHOW server_version").fetchone()[0]
    return {
        "started_at": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "cpus": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "load_average_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "postgresql": postgres,
        "packages": {name: version(name) for name in PACKAGES},
        "git_commit": git("rev-parse", "--short", "HEAD"),
        "git_uncommitted": git("diff", "--shortstat", "HEAD"),
        "sizes": args.sizes,
        "rss_reference_size": args.rss_reference_size,
        "batch_size": args.batch_size,
        "mongo_fetch_size": args.mongo_fetch_size,
        "pg_fetch_size": args.pg_fetch_size,
        "dlt_configs": args.dlt_configs,
        "dlt_chunk": args.dlt_chunk,
    }


def bench_settings(args: argparse.Namespace) -> BenchSettings:
    """What the jobs, the bare scans and dlt are given, from the command line."""
    return BenchSettings(
        batch_size=args.batch_size,
        mongo_fetch_size=args.mongo_fetch_size,
        pg_fetch_size=args.pg_fetch_size,
        dlt_configs=tuple(DltConfig.parse(config) for config in args.dlt_configs),
        dlt_chunk=args.dlt_chunk,
    )


def measure_all(bench: Bench, args: argparse.Namespace, results: dict[str, Any]) -> None:
    """Every step, its figures filled into `results` as they come."""
    results["baselines"] = bench.baselines()
    for size in args.sizes:
        results["sizes"][str(size)] = {"products": bench.products(size)}
        results["sizes"][str(size)]["carts"] = bench.carts(size)
    reference = str(args.rss_reference_size)
    if reference in results["sizes"]:
        results["rss_reference"] = results["sizes"][reference]["products"]["sync"]
    else:
        results["rss_reference"] = bench.products(args.rss_reference_size, with_peers=False)["sync"]
    results["setup"]["finished_at"] = time.strftime("%Y-%m-%d %H:%M:%S %z")


def run(args: argparse.Namespace, state_dir: Path) -> dict[str, Any]:
    """Every step on one stack; the raw figures. The stack is deleted afterwards unless `--keep-state`.

    When a step fails, what was measured until then is written to `<out>.partial.json`.
    """
    settings = bench_settings(args)
    stack = LocalStack(state_dir, mongo_port=free_port(), pg_port=free_port(), pg_password="bench-only")
    stack.up()
    results: dict[str, Any] = {"sizes": {}}
    try:
        results["setup"] = setup_info(args, stack)
        measure_all(Bench(stack, state_dir, settings), args, results)
        return results
    except BaseException:
        partial = args.out.with_suffix(".partial.json")
        partial.write_text(json.dumps(results, indent=2) + "\n")
        log(f"failed; the figures so far are in {partial}")
        raise
    finally:
        if args.keep_state:
            stack.down()
            log(f"state and logs kept in {state_dir}")
        else:
            stack.clean()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results = run(args, Path(tempfile.mkdtemp(prefix="etl-sync-bench-")))
    results["setup"]["harness_wall_s"] = round(time.perf_counter() - started, 1)
    args.out.write_text(json.dumps(results, indent=2) + "\n")  # the raw figures first, whatever follows
    results["bounds"] = bounds.evaluate(results)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    report.write_report(results, args.out.parent)
    for bound in results["bounds"]:
        print(bounds.describe(bound))
    return 0 if all(bound["pass"] for bound in results["bounds"]) else 1


if __name__ == "__main__":
    sys.exit(main())
