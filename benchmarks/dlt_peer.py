"""dlt as the peer: a merge of the Product MongoDB into a PostgreSQL dataset, as a dlt user would write it.

    python -m benchmarks.dlt_peer merge --products N --mongo-url ... --pg-url ... --dataset dlt_csv ...

`drifted` loads the drifted Cart DB rows (the state before the sync) into the dataset with
the same resource, so that the timed `merge` run finds what the sync finds. Both read in
chunks and yield pyarrow tables (arrow items); `--format` is dlt's loader file format and
`--strategy` its merge strategy. The JSON written to `--out` holds the time `pipeline.run`
took (start-up excluded) and the load's outcome.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import dlt
import pyarrow as pa
from pymongo import MongoClient

from benchmarks import data
from benchmarks.scans import PRODUCT_PROJECTION
from benchmarks.seed import chunked
from etl_defs.products.table import ProductRow

#: The Cart DB's columns under dlt's snake_case names (dlt would rename sellerId to seller_id itself).
ARROW_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        ("title", pa.string()),
        ("price", pa.int64()),
        ("image", pa.string()),
        ("seller_id", pa.string()),
        ("quantity", pa.int64()),
    ]
)
TABLE = "products"


def _arrow(rows: list[ProductRow]) -> pa.Table:
    return pa.Table.from_arrays([pa.array(column) for column in zip(*rows, strict=True)], schema=ARROW_SCHEMA)


def rows_from_mongo(url: str, batch_size: int) -> Iterator[ProductRow]:
    """The products as Cart DB rows, read with a plain projected find (no sort: dlt needs no order)."""
    client = MongoClient(url)
    try:
        for doc in client.get_default_database()["products"].find({}, PRODUCT_PROJECTION).batch_size(batch_size):
            row = (str(doc["_id"]), doc["title"], doc["price"], doc["image"], str(doc["sellerId"]), doc["quantity"])
            yield ProductRow._make(row)
    finally:
        client.close()


def arrow_tables(rows: Iterable[ProductRow], chunk: int) -> Iterator[pa.Table]:
    """`rows` as pyarrow tables of `chunk` rows."""
    for batch in chunked(rows, chunk):
        yield _arrow(batch)


@dlt.resource(name=TABLE, primary_key="id", write_disposition="merge")
def products(tables: Iterable[pa.Table]) -> Iterator[pa.Table]:
    """The products table, merged on `id`."""
    yield from tables


def run(args: argparse.Namespace) -> dict[str, Any]:
    """One `pipeline.run` of the chosen source; its duration and outcome."""
    rows = (
        data.drifted_product_rows(args.products)
        if args.mode == "drifted"
        else rows_from_mongo(args.mongo_url, args.chunk)
    )
    resource = products(arrow_tables(rows, args.chunk))
    resource.apply_hints(write_disposition={"disposition": "merge", "strategy": args.strategy})
    pipeline = dlt.pipeline(
        pipeline_name=args.dataset,
        destination=dlt.destinations.postgres(credentials=args.pg_url),
        dataset_name=args.dataset,
        pipelines_dir=str(args.pipelines_dir),
    )
    started = time.perf_counter()
    info = pipeline.run(resource, loader_file_format=args.format)
    run_s = time.perf_counter() - started
    info.raise_on_failed_jobs()
    jobs = [job for package in info.load_packages for job in package.jobs["completed_jobs"]]
    return {"run_s": run_s, "file_formats": sorted({job.job_file_info.file_format for job in jobs})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("drifted", "merge"))
    parser.add_argument("--products", type=int, required=True)
    parser.add_argument("--mongo-url", required=True)
    parser.add_argument("--pg-url", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--format", default="csv", help="dlt loader file format: csv, insert_values, parquet")
    parser.add_argument("--strategy", default="delete-insert", help="dlt merge strategy: delete-insert, upsert")
    parser.add_argument("--chunk", type=int, default=10_000, help="rows per arrow table (and per MongoDB batch)")
    parser.add_argument("--pipelines-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.write_text(json.dumps(run(args)))


if __name__ == "__main__":
    main()
