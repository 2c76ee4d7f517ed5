r"""Sling as the peer: the Product MongoDB brought into a PostgreSQL table by the Sling CLI, as a Sling user would.

    python -m benchmarks.sling_peer merge --config incremental --schema sling_incremental --products N \
        --mongo-url ... --pg-url ... --work-dir DIR --out FILE.json

`drifted` loads the drifted Cart DB rows (the state before the sync) into `<schema>.products`, a
table shaped like the Cart DB's `product` (`id` the primary key), with COPY, untimed. `merge` is
the timed run, in one of two configurations:

- `incremental`: Sling's own incremental mode with primary key `id` and no update key (its "full
  data upsert": it reads the whole collection into a temporary table, updates the rows whose key
  exists, inserts the others);
- `staging-upsert`: Sling's full-refresh into `<schema>.products_staging`, then one
  `INSERT ... SELECT ... ON CONFLICT (id) DO UPDATE` (rows already equal are left alone).

Sling reads `_id` and the five synced fields (a projection it sends to MongoDB), flattens the
documents, writes ObjectIds as 24-digit hex and renames `_id` to `id` with a JMESPath expression
(Sling 1.4 has no `--select 'a as b'`). The binary comes from the installed `sling-linux-amd64`
wheel; its connections are environment variables and its home is under `--work-dir`, so nothing
is downloaded and no secret reaches its command line, this JSON or the output. The JSON written to
`--out` holds `run_s` (the Sling run plus the upsert; this process's start-up excluded), each
step's time, Sling's version and its command line.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
from pymongo.uri_parser import parse_uri

from benchmarks import data
from benchmarks.scans import PRODUCT_PROJECTION
from etl_defs.products.table import PRODUCT_COLUMN_LIST, PRODUCT_COLUMNS, product_table_ddl
from resources.postgres import copy_rows

SLING_PACKAGE = "sling_linux_amd64"
TABLE = "products"
STAGING_TABLE = "products_staging"
CONFIGS = ("incremental", "staging-upsert")
#: The connections' names for Sling: environment variables holding the URLs (never on its command line).
MONGO_CONN = "BENCH_SLING_MONGO"
PG_CONN = "BENCH_SLING_PG"
#: The MongoDB fields Sling asks for (its projection), and the row it makes of each document.
SOURCE_FIELDS = ("_id", *PRODUCT_PROJECTION)
ROW_JMESPATH = "{" + ", ".join(f"{column}: {'_id' if column == 'id' else column}" for column in PRODUCT_COLUMNS) + "}"
INSERTED = re.compile(r"inserted (\d+) rows")


def sling_binary() -> tuple[Path, str]:
    """The Sling executable of the installed wheel and its version (the wheel carries the binary)."""
    package = importlib.import_module(SLING_PACKAGE)
    binary = Path(package.SLING_BIN)
    if not binary.is_file():
        raise RuntimeError(f"{SLING_PACKAGE} has no Sling binary at {binary}")
    return binary, package.SLING_VERSION


def _redact(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def _secrets(*urls: str) -> list[str]:
    """The URLs and their passwords, to keep out of anything written."""
    passwords = [urlsplit(url).password for url in urls]
    return [*urls, *(password for password in passwords if password)]


def sling_pg_url(url: str) -> str:
    """`url` with `sslmode=disable` unless it sets one: Sling's driver (lib/pq) would otherwise insist on SSL."""
    parts = urlsplit(url)
    if "sslmode=" in parts.query:
        return url
    return parts._replace(query="&".join(filter(None, (parts.query, "sslmode=disable")))).geturl()


def sling_env(args: argparse.Namespace) -> dict[str, str]:
    """Sling's environment: its home under the work dir, no telemetry, the two connections."""
    home = args.work_dir / "sling-home"
    home.mkdir(parents=True, exist_ok=True)
    return {
        **os.environ,
        "SLING_HOME_DIR": str(home),
        "SLING_DISABLE_TELEMETRY": "true",
        "SLING_LOGGING": "NO_COLOR",
        MONGO_CONN: args.mongo_url,
        PG_CONN: sling_pg_url(args.pg_url),
    }


def sling_command(binary: Path, stream: str, target: str, config: str) -> list[str]:
    """`sling run` reading the products as Cart DB rows into `target`: merged on `id`, or replaced."""
    source_options = {"flatten": True, "jmespath": ROW_JMESPATH}
    command = [str(binary), "run", "--src-conn", MONGO_CONN, "--src-stream", stream]
    command += ["--src-options", json.dumps(source_options), "--select", ",".join(SOURCE_FIELDS)]
    command += ["--tgt-conn", PG_CONN, "--tgt-object", target]
    if config == "incremental":
        return [*command, "--mode", "incremental", "--primary-key", "id"]
    return [*command, "--mode", "full-refresh"]


def run_sling(command: list[str], env: dict[str, str], log: Path, secrets: Sequence[str]) -> int:
    """Run Sling with its output in `log`; the rows it says it inserted. Raises with the log's tail on failure."""
    with log.open("w") as out:
        done = subprocess.run(command, env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
    text = log.read_text()
    if done.returncode != 0:
        raise RuntimeError(f"sling exited with {done.returncode}:\n{_redact(text[-3000:], secrets)}")
    counts = INSERTED.findall(text)
    return int(counts[-1]) if counts else -1


def upsert_sql(table: str, staging: str) -> str:
    """The staging rows into `table`: new ids inserted, changed rows updated, equal rows left alone."""
    others = [f'"{column}"' for column in PRODUCT_COLUMNS if column != "id"]
    assignments = ", ".join(f"{column} = EXCLUDED.{column}" for column in others)
    current = ", ".join(f"target.{column}" for column in others)
    incoming = ", ".join(f"EXCLUDED.{column}" for column in others)
    return (
        f"INSERT INTO {table} AS target ({PRODUCT_COLUMN_LIST}) SELECT {PRODUCT_COLUMN_LIST} FROM {staging} "
        f"ON CONFLICT (id) DO UPDATE SET {assignments} WHERE ({current}) IS DISTINCT FROM ({incoming})"
    )


def load_drifted(args: argparse.Namespace, table: str, staging: str) -> dict[str, Any]:
    """A fresh `table` holding the drifted rows (and no staging table): the state before the sync."""
    started = time.perf_counter()
    with psycopg.connect(args.pg_url) as conn:
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {args.schema}")
        conn.execute(f"DROP TABLE IF EXISTS {table}, {staging}")
        conn.execute(product_table_ddl(table))
        copy_rows(conn, table, PRODUCT_COLUMNS, data.drifted_product_rows(args.products))
    return {"load_s": time.perf_counter() - started}


def merge(args: argparse.Namespace, table: str, staging: str) -> dict[str, Any]:
    """The timed run: Sling (and, for staging-upsert, the upsert); the times and Sling's command line."""
    binary, version = sling_binary()
    secrets = _secrets(args.mongo_url, args.pg_url)
    stream = f"{parse_uri(args.mongo_url)['database']}.products"
    target = table if args.config == "incremental" else staging
    command = sling_command(binary, stream, target, args.config)
    env = sling_env(args)
    log = args.work_dir / f"sling-{args.schema}.log"
    started = time.perf_counter()
    sling_rows = run_sling(command, env, log, secrets)
    sling_s = time.perf_counter() - started
    upserted = None
    if args.config == "staging-upsert":
        with psycopg.connect(args.pg_url) as conn:
            upserted = conn.execute(upsert_sql(table, staging)).rowcount
    run_s = time.perf_counter() - started
    return {
        "run_s": run_s,
        "sling_s": sling_s,
        "upsert_s": run_s - sling_s if upserted is not None else None,
        "upserted_rows": upserted,
        "sling_rows": sling_rows,
        "sling_version": version,
        "config": args.config,
        "table": table,
        "command": ["sling", *command[1:]],
        "log": str(log),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    args.work_dir.mkdir(parents=True, exist_ok=True)
    table, staging = f"{args.schema}.{TABLE}", f"{args.schema}.{STAGING_TABLE}"
    return load_drifted(args, table, staging) if args.mode == "drifted" else merge(args, table, staging)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("drifted", "merge"))
    parser.add_argument("--products", type=int, required=True)
    parser.add_argument("--mongo-url", required=True, help="the Product MongoDB, with its database")
    parser.add_argument("--pg-url", required=True)
    parser.add_argument("--schema", required=True, help="the peer's PostgreSQL schema (lower case)")
    parser.add_argument("--config", choices=CONFIGS, default="incremental")
    parser.add_argument("--work-dir", type=Path, required=True, help="Sling's home and logs")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.write_text(json.dumps(run(args)))


if __name__ == "__main__":
    main()
