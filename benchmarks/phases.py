"""The measured steps of one benchmark run, in order: baselines, then per size the products and the carts.

Every sync run is followed by a full read-back of its target (`verify`); each step's raw
figures go into the dict it returns, for `results.json`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from benchmarks import data, scans, seed, verify
from benchmarks.jobs import REPO, JobRunner
from benchmarks.measure import ServerCpu, measure_inline, measure_process
from etl_defs.carts.table import CART_TABLE
from etl_defs.products.table import PRODUCT_TABLE
from local.stack import CART_DB, PRODUCT_DB, LocalStack

PRODUCT_JOB, PRODUCT_PIPELINE = "product_sync_job", "products"
CART_JOB, CART_PIPELINE = "cart_sync_job", "carts"
BASELINE_RUNS = 2
#: The keys of the keyed (change capture) product sync: spread over the whole table.
KEYED_SAMPLE = 100
PRODUCT_NAMESPACE = f"{PRODUCT_DB}.products"
#: Sling's configurations (benchmarks/sling_peer.py), each its fastest exact way.
SLING_CONFIGS = ("staging-upsert", "incremental")
#: The product sync as on a real MongoDB, which projects in its own code: the synced fields only (the
#: stack's environment reads whole documents, faster on SecantusDB). Its client CPU is the bound's figure.
PROJECTED = {"MONGODB_PROJECT_FIELDS": "true"}
#: dlt's snake_case names of the Cart DB's product columns.
DLT_COLUMNS = "id, title, price, image, seller_id, quantity"


@dataclass(frozen=True)
class DltConfig:
    """One dlt configuration: loader file format, merge strategy, and whether load files are gzipped."""

    file_format: str
    strategy: str = "delete-insert"
    compressed: bool = True  # dlt's default

    @classmethod
    def parse(cls, text: str) -> DltConfig:
        """`FORMAT[/STRATEGY[/uncompressed]]`, e.g. `csv/upsert/uncompressed`."""
        file_format, *parts = text.split("/")
        strategy, flags = (parts[0], parts[1:]) if parts else (cls.strategy, [])
        if flags not in ([], ["uncompressed"]):
            raise ValueError(f"not FORMAT[/STRATEGY[/uncompressed]]: {text!r}")
        return cls(file_format, strategy, compressed=not flags)

    @property
    def name(self) -> str:
        return f"{self.file_format}/{self.strategy}" + ("" if self.compressed else "/uncompressed")

    @property
    def dataset(self) -> str:
        return seed.DLT_SCHEMA_PREFIX + self.name.replace("/", "_").replace("-", "_")

    def env(self) -> dict[str, str]:
        """dlt's settings for this configuration, as its environment variables."""
        return {} if self.compressed else {"DATA_WRITER__DISABLE_COMPRESSION": "true"}


@dataclass(frozen=True)
class BenchSettings:
    """What the jobs and the bare scans are given, and which dlt configurations run."""

    batch_size: int  # the jobs' run config
    mongo_fetch_size: int  # documents per round trip, the jobs' MONGODB_FETCH_SIZE and the bare scans'
    pg_fetch_size: int  # rows per FETCH, the jobs' POSTGRES_FETCH_SIZE and the bare scans'
    dlt_configs: tuple[DltConfig, ...]
    dlt_chunk: int

    def job_env(self) -> dict[str, str]:
        return {"MONGODB_FETCH_SIZE": str(self.mongo_fetch_size), "POSTGRES_FETCH_SIZE": str(self.pg_fetch_size)}


def log(message: str) -> None:
    """Progress on stderr, with the time of day."""
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


class Bench:
    """The benchmark's steps on one private stack."""

    def __init__(self, stack: LocalStack, state_dir: Path, settings: BenchSettings) -> None:
        self.stack = stack
        self.state_dir = state_dir
        self.settings = settings
        self.servers = ServerCpu(stack.state.mongo_pid, stack.state.pg_pid)  # type: ignore[arg-type]
        self.jobs = JobRunner(stack, state_dir, self.servers, settings.job_env())

    # ----- helpers -----
    def _inline(self, step: Callable[..., Any], *args: Any) -> dict[str, Any]:
        """`step(stack, *args)` measured in this process: its result and cost."""
        result, cost = measure_inline(lambda: step(self.stack, *args), self.servers)
        return {"result": result, "cost": cost.as_dict()}

    def _vacuum(self, *tables: str) -> None:
        """VACUUM ANALYZE after a bulk load, as autovacuum would get to: hint bits set, statistics fresh."""
        with psycopg.connect(self.stack.pg_url(CART_DB), autocommit=True) as conn:
            for table in tables:
                conn.execute(f"VACUUM ANALYZE {table}")

    def _run_config(self, **extra: Any) -> dict[str, Any]:
        return {"batch_size": self.settings.batch_size, **extra}

    # ----- baselines -----
    def baselines(self) -> dict[str, Any]:
        """Each job on an empty source and target: the CLI's start-up cost, subtracted later.

        The first run of each creates the instance's storage and compiles bytecode, so it is
        a warm-up; of the next BASELINE_RUNS, each figure's minimum is the baseline (start-up
        varies by a second on a shared machine).
        """
        seed.reset(self.stack)
        seed.add_order_indexes(self.stack)  # the cart sync's preflight checks them
        baselines = {}
        for job, pipeline in ((PRODUCT_JOB, PRODUCT_PIPELINE), (CART_JOB, CART_PIPELINE)):
            log(f"baseline: {job} on empty databases")
            self.jobs.run_cli(job, pipeline, self._run_config(), f"baseline-{job}-warmup")
            runs = [
                self.jobs.run_cli(job, pipeline, self._run_config(), f"baseline-{job}-{number}")
                for number in range(BASELINE_RUNS)
            ]
            floor = {name: min(run["cost"][name] for run in runs) for name in runs[0]["cost"]}
            baselines[job] = {"cost": floor, "summary": runs[-1]["summary"], "runs": runs}
        return baselines

    # ----- products -----
    def products(self, size: int, *, with_peers: bool = True) -> dict[str, Any]:
        """Seed, bare reads, the sync, the no-change re-sync and (`with_peers`) dlt, Sling and a keyed sync, for
        `size` products."""
        seed.reset(self.stack)
        log(f"products {size}: seeding")
        seeded = self._inline(seed.seed_products, size)
        self._vacuum(PRODUCT_TABLE)
        scans.scan_products_source(self.stack, self.settings.mongo_fetch_size)  # warm-up after the bulk load
        out: dict[str, Any] = {"seed": seeded["cost"]}
        if with_peers:
            log(f"products {size}: bare reads")
            out["reads"] = {
                name: self._inline(scan, self.settings.mongo_fetch_size) for name, scan in scans.PRODUCT_READS.items()
            }
            out["scan_source"] = out["reads"][scans.SYNC_READ]
            out["scan_target"] = self._inline(scans.scan_products_target, self.settings.pg_fetch_size)
            out["drivers"] = self._drivers()
        out["sync"] = self._product_sync(size, f"products-{size}-sync")
        if not with_peers:
            return out
        out["resync"] = self._product_sync(size, f"products-{size}-resync")
        seed.load_products(self.stack, data.drifted_product_rows(size))  # the same drift again
        self._vacuum(PRODUCT_TABLE)
        out["sync_projected"] = self._product_sync(size, f"products-{size}-sync-projected", env=PROJECTED)
        out["dlt"] = {config.name: self._dlt(size, config) for config in self.settings.dlt_configs}
        out["sling"] = {config: self._sling(size, config) for config in SLING_CONFIGS}
        out["keyed"] = self._keyed_sync(size)
        if not out["sync"]["verify"]["ok"]:
            seed.load_exact_products(self.stack, size)  # the cart phase needs the products a correct sync leaves
        return out

    def _product_sync(self, size: int, name: str, env: dict[str, str] | None = None, **config: Any) -> dict[str, Any]:
        """One product_sync_job run (`config` added to the run config, `env` to the environment), the rows it
        wrote (by xmin), the read-back."""
        log(f"products {size}: {PRODUCT_JOB}{f' {config}' if config else ''}{f' {env}' if env else ''} ({name})")
        before = verify.current_xid(self.stack)
        figures = self.jobs.run_cli(PRODUCT_JOB, PRODUCT_PIPELINE, self._run_config(**config), name, env)
        figures["rows_written"] = verify.rows_written_since(self.stack, before)
        figures["verify"] = verify.verify_products(self.stack, size)
        return figures

    def _keyed_sync(self, size: int) -> dict[str, Any]:
        """A keyed product sync (what change capture runs) of KEYED_SAMPLE products spread over the table,
        with every MongoDB command counted."""
        keys = sorted(str(data.product_doc(index)["_id"]) for index in range(0, size, size // KEYED_SAMPLE))
        log(f"products {size}: keyed {PRODUCT_JOB} of {len(keys)} keys (monitored)")
        figures = self.jobs.run_monitored(
            PRODUCT_JOB, PRODUCT_PIPELINE, self._run_config(keys=keys), f"products-{size}-keyed"
        )
        figures["keys"] = len(keys)
        figures["documents_returned"] = figures["mongo"]["documents_returned"].get(PRODUCT_NAMESPACE, 0)
        figures["verify"] = verify.verify_products(self.stack, size)
        return figures

    def _drivers(self) -> dict[str, Any]:
        """The drivers' own work of the product sync, each in a fresh process: pymongo decoding the five
        fields, psycopg reading the target rows (CPU of the read alone)."""
        work = {
            "mongo": ("drivers-mongo", self.stack.mongo_url(PRODUCT_DB), self.settings.mongo_fetch_size),
            "postgres": ("drivers-postgres", self.stack.pg_url(CART_DB), self.settings.pg_fetch_size),
        }
        out = {}
        for name, (mode, url, fetch_size) in work.items():
            command = [sys.executable, "-m", "benchmarks.scans", mode, url, str(fetch_size)]
            printed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True).stdout
            out[name] = json.loads(printed)
        return out

    def _dlt(self, size: int, config: DltConfig) -> dict[str, Any]:
        """dlt's merge of the products into its own dataset, which first holds the drifted rows (untimed)."""
        from benchmarks.dlt_peer import TABLE  # imported here: the other steps need no dlt

        options = {
            "--products": size,
            "--mongo-url": self.stack.mongo_url(PRODUCT_DB),
            "--pg-url": self.stack.pg_url(CART_DB),
            "--dataset": config.dataset,
            "--format": config.file_format,
            "--strategy": config.strategy,
            "--chunk": self.settings.dlt_chunk,
            "--pipelines-dir": self.state_dir / "dlt-pipelines" / str(size),  # fresh local state per size
        }
        env = {
            **os.environ,
            "RUNTIME__DLTHUB_TELEMETRY": "false",  # no network
            "DLT_DATA_DIR": str(self.state_dir / "dlt-data"),
            **config.env(),
        }
        label, name = f"products {size}: dlt {config.name}", f"products-{size}-{config.dataset}"
        figures = self._peer(label, "benchmarks.dlt_peer", name, options, env)
        figures["verify"] = verify.verify_products(self.stack, size, f"{config.dataset}.{TABLE}", DLT_COLUMNS)
        return figures

    def _peer(self, label: str, module: str, name: str, options: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
        """A peer's two runs (`python -m module drifted|merge`): the drifted rows loaded (untimed), then the
        timed merge; each one's cost and the JSON it wrote."""
        figures: dict[str, Any] = {}
        for mode in ("drifted", "merge"):
            log(f"{label}, {mode}")
            out = self.state_dir / f"{name}-{mode}.json"
            command = [sys.executable, "-m", module, mode, "--out", str(out)]
            command += [str(part) for option in options.items() for part in option]
            log_file = self.state_dir / f"{name}-{mode}.log"
            cost = measure_process(command, env=env, cwd=REPO, log=log_file, servers=self.servers)
            figures[mode] = {"cost": cost.as_dict(), **json.loads(out.read_text())}
        return figures

    def _sling(self, size: int, config: str) -> dict[str, Any]:
        """Sling's run into its own schema, which first holds the drifted rows (untimed)."""
        from benchmarks.sling_peer import TABLE  # imported here: the other steps need no Sling

        schema = "sling_" + config.replace("-", "_")
        options = {
            "--products": size,
            "--mongo-url": self.stack.mongo_url(PRODUCT_DB),
            "--pg-url": self.stack.pg_url(CART_DB),
            "--schema": schema,
            "--config": config,
            "--work-dir": self.state_dir / "sling",
        }
        name = f"products-{size}-{schema}"
        figures = self._peer(
            f"products {size}: Sling {config}", "benchmarks.sling_peer", name, options, dict(os.environ)
        )
        figures["verify"] = verify.verify_products(self.stack, size, f"{schema}.{TABLE}")
        return figures

    # ----- carts -----
    def carts(self, size: int) -> dict[str, Any]:
        """Seed `size` carts over `size` products (the product phase left them exact), then measure the cart sync."""
        products = size
        log(f"carts {size}: seeding")
        out: dict[str, Any] = {"seed": self._inline(seed.seed_carts, size, products)["cost"]}
        self._vacuum(CART_TABLE)
        scans.scan_order_carts(self.stack, self.settings.mongo_fetch_size)  # warm-up after the bulk load
        log(f"carts {size}: bare scans")
        out["scan_order"] = self._inline(scans.scan_order_carts, self.settings.mongo_fetch_size)
        out["scan_order_natural"] = self._inline(scans.scan_order_natural, self.settings.mongo_fetch_size)
        out["scan_cart"] = self._inline(scans.scan_carts_source, self.settings.pg_fetch_size)
        out["sync"] = self._cart_sync(size, f"carts-{size}-sync", monitored=False)
        log(f"carts {size}: drift planted again for the monitored run")
        seed.apply_order_drift(self.stack, seed.global_drift(size, products))
        scans.scan_order_carts(self.stack, self.settings.mongo_fetch_size)  # warm-up after the bulk write
        out["sync_monitored"] = self._cart_sync(size, f"carts-{size}-sync-monitored", monitored=True)
        log(f"carts {size}: bare bulk_write of the documents the sync wrote")
        changed = [row for row, _ in seed.global_drift(size, products)]
        out["bulk_write"] = self._inline(scans.bulk_write_carts, changed)
        out["focus_user"] = {"user_id": data.FOCUS_USER, "carts": len(data.focus_carts(size))}
        out["user_sync"] = self._user_sync(size, monitored=False)
        out["user_sync_monitored"] = self._user_sync(size, monitored=True)
        return out

    def _cart_sync(self, size: int, name: str, *, monitored: bool, **config: Any) -> dict[str, Any]:
        """One cart_sync_job run (the CLI, or the monitored wrapper), then the full read-back."""
        log(f"carts {size}: {CART_JOB}{f' {config}' if config else ''}{' (monitored)' if monitored else ''}")
        run = self.jobs.run_monitored if monitored else self.jobs.run_cli
        figures = run(CART_JOB, CART_PIPELINE, self._run_config(**config), name)
        figures["verify"] = verify.verify_carts(self.stack, size, size)
        return figures

    def _user_sync(self, size: int, *, monitored: bool) -> dict[str, Any]:
        """The user_id sync after data.FOCUS_DRIFT was planted in that user's Order documents."""
        seed.apply_order_drift(self.stack, seed.focus_user_drift(size, size))
        present = seed.count_user_carts(self.stack, data.FOCUS_USER)
        name = f"carts-{size}-user-sync{'-monitored' if monitored else ''}"
        figures = self._cart_sync(size, name, monitored=monitored, user_id=data.FOCUS_USER)
        return {"user_documents_before": present, **figures}
