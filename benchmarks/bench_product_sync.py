"""Benchmark: product_sync_job at scale, checking its own answer.

Starts a private local stack on free ports, seeds N products with drift (10% missing and
5% stale in PostgreSQL), runs `dagster job execute -j product_sync_job` in a subprocess,
and reports wall time, rows/s and the job process's peak RSS (VmHWM, polled). Then it reads the whole
`product` table back and compares it with the expected rows: a wrong answer fails the
benchmark, however fast.

    .venv/bin/python benchmarks/bench_product_sync.py --products 200000 --batch-size 1000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
from bson import ObjectId

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from etl_defs.products.table import PRODUCT_COLUMNS, PRODUCT_TABLE, SELECT_PRODUCTS_SQL  # noqa: E402
from local.dagster_dev import DAGSTER  # noqa: E402
from local.schema import create_cart_schema  # noqa: E402
from local.stack import CART_DB, DAGSTER_DB, PRODUCT_DB, LocalStack, free_port  # noqa: E402
from resources.postgres import copy_rows  # noqa: E402


def seed(stack: LocalStack, products: int) -> dict[str, tuple]:
    """Insert `products` documents and a drifted copy; return the rows expected after a sync."""
    client = stack.mongo_client()
    collection = client[PRODUCT_DB]["products"]
    collection.drop()
    expected: dict[str, tuple] = {}
    with psycopg.connect(stack.pg_url(CART_DB)) as conn:
        create_cart_schema(conn)
        conn.execute("TRUNCATE cart, product")
        conn.commit()

        def cart_db_rows() -> Iterator[tuple]:
            """The drifted Cart DB rows, inserting the documents as it goes."""
            chunk: list[dict] = []
            for i in range(products):
                doc = {
                    "_id": ObjectId(),
                    "title": f"Product {i}",
                    "image": f"/img/{i}.jpg",
                    "price": 100 + i % 50_000,
                    "sellerId": ObjectId(),
                    "quantity": i % 40,
                    "description": "benchmark product " * 8,
                    "category": "bench",
                    "tags": ["a", "b"],
                    "rating": 4.2,
                    "originalPrice": 999,
                    "stockQuantity": 7,
                }
                row = (str(doc["_id"]), doc["title"], doc["price"], doc["image"], str(doc["sellerId"]), doc["quantity"])
                expected[row[0]] = row
                if i % 10 != 0:  # 10% missing in PostgreSQL
                    yield row if i % 20 != 1 else (*row[:2], row[2] + 1, *row[3:])  # 5% stale
                chunk.append(doc)
                if len(chunk) == 10_000:
                    collection.insert_many(chunk, ordered=False)
                    chunk = []
            if chunk:
                collection.insert_many(chunk, ordered=False)

        copy_rows(conn, PRODUCT_TABLE, PRODUCT_COLUMNS, cart_db_rows())
        conn.commit()
    client.close()
    return expected


def _peak_rss_mib(pid: int) -> float:
    """The process's peak resident set (VmHWM) so far; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--products", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=1000)
    args = parser.parse_args()

    state = Path(tempfile.mkdtemp(prefix="etl-sync-bench-"))
    stack = LocalStack(state, mongo_port=free_port(), pg_port=free_port(), pg_password="bench-only")
    stack.up()
    try:
        started = time.perf_counter()
        expected = seed(stack, args.products)
        seed_s = time.perf_counter() - started

        home = state / "dagster_home"
        home.mkdir()
        shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
        env = {
            **os.environ,
            **stack.env(),
            "DAGSTER_HOME": str(home),
            "DAGSTER_PG_URL": stack.pg_url(DAGSTER_DB, scheme="postgresql+psycopg2"),
        }
        config = state / "run_config.yaml"
        config.write_text(f"batch_size: {args.batch_size}\n")
        started = time.perf_counter()
        log = state / "job.log"
        with log.open("w") as out:
            job = subprocess.Popen(
                [DAGSTER, "job", "execute", "-m", "etl_defs", "-j", "product_sync_job", "-c", str(config)],
                env=env,
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
            peak_rss_mib = 0.0
            while job.poll() is None:
                peak_rss_mib = max(peak_rss_mib, _peak_rss_mib(job.pid))
                time.sleep(0.5)
        wall_s = time.perf_counter() - started
        output = log.read_text()
        if job.returncode != 0:
            print(output[-4000:], file=sys.stderr)
            return 1
        summary = next(line for line in output.splitlines() if "products sync applied" in line)

        with psycopg.connect(stack.pg_url(CART_DB)) as conn:
            actual = {row[0]: tuple(row) for row in conn.execute(SELECT_PRODUCTS_SQL)}
        correct = actual == expected
        result = {
            "products": args.products,
            "batch_size": args.batch_size,
            "seed_s": round(seed_s, 1),
            "job_wall_s": round(wall_s, 1),
            "sync_summary": summary.split(" - ")[-1],
            "peak_rss_mib": round(peak_rss_mib),
            "correct": correct,
        }
        print(json.dumps(result, indent=2))
        return 0 if correct else 2
    finally:
        stack.down()
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
