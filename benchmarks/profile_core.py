"""Where the client's CPU goes in the product sync's core loop: py-spy, GIL-holding samples only.

    .venv/bin/python -m benchmarks.profile_core --products 200000 [--repo PATH]

Seeds the benchmark's drifted products on a private stack, warms the server with one scan,
then runs `run_sync` of the product pipeline as a dry run in a child process under
`py-spy record --gil` (so a thread waiting on a socket costs nothing, as it costs the
machine nothing) and prints the share of samples per function, self and inclusive.
`--repo` profiles another checkout of the project (an older commit, for a before/after)
against the same data: only `run_sync`, `ProductSyncEndpoints` and the resources are used.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from benchmarks import scans, seed
from benchmarks.jobs import REPO
from local.stack import LocalStack, free_port

#: The child: the core loop alone, as a dry run (the reads, transform and merge; no write).
CHILD = """
import logging, sys, time
sys.path.insert(0, sys.argv[1])
from etl_defs.products.endpoints import ProductSyncEndpoints
from etl_defs.products.pipeline import PRODUCT_SYNC
from etl_defs.sync import run_sync
from resources import MongoResource, PostgresResource
import etl_defs
print(f"profiling the core loop of {etl_defs.__file__}", flush=True)
product_db = MongoResource(url=sys.argv[2])
cart_db = PostgresResource(url=sys.argv[3])
started, cpu = time.perf_counter(), time.process_time()
endpoints = ProductSyncEndpoints(product_db, cart_db)
run_sync(PRODUCT_SYNC, endpoints, batch_size=1000, dry_run=True, log=logging.getLogger())
print(f"wall {time.perf_counter() - started:.2f}s, client CPU {time.process_time() - cpu:.2f}s", flush=True)
"""
#: Frames of imports, left out of the shares (the child's own script is `<module> (<string>)`).
START_UP = ("<frozen importlib",)
TOP = 25


def _function(frame: str) -> str:
    """`name (file:line)` -> `name (file)`: samples add up per function, not per line."""
    return re.sub(r":\d+\)$", ")", frame)


def shares(raw: Path) -> tuple[int, Counter[str], Counter[str]]:
    """Samples in all, and per function: self samples and inclusive samples (py-spy's raw format)."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if any(marker in stack for marker in START_UP):
            continue
        frames = [_function(frame) for frame in stack.split(";")]
        total += int(count)
        own[frames[-1]] += int(count)
        for frame in set(frames):
            inclusive[frame] += int(count)
    return total, own, inclusive


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--products", type=int, default=200_000)
    parser.add_argument("--repo", type=Path, default=REPO, help="the checkout whose core loop is profiled")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    args = parser.parse_args()
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")

    state = Path(tempfile.mkdtemp(prefix="etl-sync-profile-"))
    stack = LocalStack(state, mongo_port=free_port(), pg_port=free_port(), pg_password="profile-only")
    stack.up()
    try:
        seed.reset(stack)
        seed.seed_products(stack, args.products)
        scans.scan_products_source(stack, 1000)  # the first scan after a bulk load is much slower
        env = stack.env()
        raw = state / "profile.txt"
        command = [py_spy, "record", "--gil", "-r", str(args.rate), "-f", "raw", "-o", str(raw), "--"]
        command += [sys.executable, "-c", CHILD, str(args.repo.resolve())]
        command += [env["PRODUCT_SERVICE_MONGODB_URL"], env["CART_DB_URL"]]
        subprocess.run(command, check=True, stderr=subprocess.DEVNULL)
        total, own, inclusive = shares(raw)
        print(f"{total} samples of the GIL holder, start-up excluded")
        for title, counter in (("self", own), ("inclusive", inclusive)):
            print(f"\n{title}:")
            for frame, count in counter.most_common(TOP):
                print(f"{count / total:6.1%}  {frame[:140]}")
    finally:
        stack.down()
        shutil.rmtree(state, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
