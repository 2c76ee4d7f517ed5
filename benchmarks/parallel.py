"""The product sync at several parallelisms (`parallelism: N`, N key ranges, a step each), on one stack.

    .venv/bin/python -m benchmarks.parallel --size 1000000 --parallelism 1 2 4
    .venv/bin/python -m benchmarks.parallel --render    # the RESULTS.md section again, from parallel.json

One private local stack on free ports: the CLI's first run on empty databases (it creates
the instance's storage), then `--size` products seeded once, the bare scans, and for each
parallelism the Cart DB's products put back in the same drifted state and one
product_sync_job run, read back in full. Exits non-zero when a read-back differs or the
figures differ between parallelisms. Writes benchmarks/parallel.json and the RESULTS.md
section; text below its `<!-- analysis -->` line is kept when the section is written again.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import data, scans, seed
from benchmarks.jobs import git
from benchmarks.phases import PRODUCT_JOB, PRODUCT_PIPELINE, Bench, BenchSettings, log
from etl_defs.products.table import PRODUCT_TABLE
from local.stack import LocalStack, free_port

HERE = Path(__file__).resolve().parent
HEADING = "## Parallelism: the 1M product sync split into key ranges"
ANALYSIS = "<!-- analysis -->"
#: What every parallelism must agree on.
FIGURES = ("missing", "changed", "unchanged", "orphaned", "rejected", "inserted", "updated")
#: A range step's last line: `products sync of keys in [start, 6b0f...): 12.34s of CPU in process 4567`.
RANGE_LINE = re.compile(
    rf"{PRODUCT_PIPELINE} sync of keys in \[(?P<low>[^,\]]+), (?P<high>[^)]+)\): "
    r"(?P<cpu>\d+(?:\.\d+)?)s of CPU in process (?P<pid>\d+)"
)
COLUMNS = (
    "parallelism",
    "wall s",
    "summary duration s",
    "client CPU total s",
    "client CPU per range process s",
    "busiest range process CPU s",
    "MongoDB server CPU s",
    "PostgreSQL server CPU s",
    "rows/s",
    "verified",
)


def _num(value: float | None, digits: int = 2) -> str:
    """As in RESULTS.md's other tables (benchmarks.report, which needs the plotting packages)."""
    return "" if value is None else f"{value:,.{digits}f}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1_000_000, help="products")
    parser.add_argument("--parallelism", type=int, nargs="+", default=[1, 2, 4], help="the runs' parallelism")
    parser.add_argument("--batch-size", type=int, default=1000, help="the job's batch_size (run config)")
    parser.add_argument("--mongo-fetch-size", type=int, help="documents per getMore (default: the batch size)")
    parser.add_argument("--pg-fetch-size", type=int, help="rows per FETCH (default: the batch size)")
    parser.add_argument(
        "--mongo-socket-timeout-ms",
        type=int,
        default=600_000,
        help="MONGODB_SOCKET_TIMEOUT_MS of the runs: range scans at once keep the embedded server busy for minutes",
    )
    parser.add_argument("--out", type=Path, default=HERE / "parallel.json")
    parser.add_argument("--results-md", type=Path, default=HERE / "RESULTS.md", help="where the section goes")
    parser.add_argument("--render", action="store_true", help="only write the section from --out, run nothing")
    parser.add_argument("--keep-state", action="store_true", help="keep the stack's folder (logs) afterwards")
    args = parser.parse_args(argv)
    args.mongo_fetch_size = args.mongo_fetch_size or args.batch_size
    args.pg_fetch_size = args.pg_fetch_size or args.batch_size
    return args


def range_processes(log_text: str) -> list[dict[str, Any]]:
    """The range steps of a run from its log, in key order: range, CPU seconds, process id."""
    found = {
        (m["low"], m["high"], int(m["pid"])): float(m["cpu"])
        for m in map(RANGE_LINE.search, log_text.splitlines())
        if m
    }
    ranges = [{"range": [low, high], "cpu_s": cpu, "pid": pid} for (low, high, pid), cpu in found.items()]
    return sorted(ranges, key=lambda step: (step["range"][0] != "start", step["range"][0]))


def sync_at(bench: Bench, size: int, parallelism: int) -> dict[str, Any]:
    """The products back in their drifted state, then one product_sync_job run at `parallelism`."""
    log(f"products {size}: drifted rows loaded again for parallelism {parallelism}")
    seed.load_products(bench.stack, data.drifted_product_rows(size))
    bench._vacuum(PRODUCT_TABLE)
    name = f"products-{size}-parallelism-{parallelism}"
    figures = bench._product_sync(size, name, parallelism=parallelism)
    figures["ranges"] = range_processes(bench.jobs._log(name).read_text(errors="replace"))
    return {"parallelism": parallelism, **figures}


def measure(bench: Bench, args: argparse.Namespace, results: dict[str, Any]) -> None:
    """Every step, its figures filled into `results` as they come."""
    seed.reset(bench.stack)
    log("baseline: product_sync_job on empty databases (creates the instance's storage)")
    results["baseline"] = bench.jobs.run_cli(PRODUCT_JOB, PRODUCT_PIPELINE, bench._run_config(), "baseline")
    log(f"products {args.size}: seeding")
    results["seed"] = bench._inline(seed.seed_products, args.size)["cost"]
    bench._vacuum(PRODUCT_TABLE)
    scans.scan_products_source(bench.stack, args.mongo_fetch_size)  # warm-up after the bulk load
    log(f"products {args.size}: bare scans")
    results["scan_source"] = bench._inline(scans.scan_products_source, args.mongo_fetch_size)
    results["scan_target"] = bench._inline(scans.scan_products_target, args.pg_fetch_size)
    for parallelism in args.parallelism:
        results["runs"].append(sync_at(bench, args.size, parallelism))
    results["setup"]["finished_at"] = time.strftime("%Y-%m-%d %H:%M:%S %z")


def run(args: argparse.Namespace, state_dir: Path) -> dict[str, Any]:
    """Every step on one stack, which is stopped (and deleted unless `--keep-state`) whatever happens."""
    settings = BenchSettings(args.batch_size, args.mongo_fetch_size, args.pg_fetch_size, dlt_configs=(), dlt_chunk=0)
    results: dict[str, Any] = {
        "setup": {
            "started_at": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "cpus": os.cpu_count(),
            "load_average_at_start": os.getloadavg(),
            "git_commit": git("rev-parse", "--short", "HEAD"),
            "git_uncommitted": git("diff", "--shortstat", "HEAD"),
            **{
                name: getattr(args, name)
                for name in ("size", "batch_size", "mongo_fetch_size", "pg_fetch_size", "mongo_socket_timeout_ms")
            },
        },
        "runs": [],
    }
    stack = LocalStack(state_dir, mongo_port=free_port(), pg_port=free_port(), pg_password="bench-only")
    stack.up()  # stops what it started when it fails
    try:
        bench = Bench(stack, state_dir, settings)
        bench.jobs.env["MONGODB_SOCKET_TIMEOUT_MS"] = str(args.mongo_socket_timeout_ms)
        measure(bench, args, results)
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


def problems(results: dict[str, Any]) -> list[str]:
    """What is wrong with the answers: a read-back that differs, figures that differ between parallelisms."""
    found = []
    expected: dict[str, int] | None = None
    for run in results["runs"]:
        figures = {name: run["summary"][name] for name in FIGURES}
        if not run["verify"]["ok"]:
            found.append(f"parallelism {run['parallelism']}: read-back differs: {run['verify']}")
        if expected is None:
            expected = figures
        elif figures != expected:
            found.append(f"parallelism {run['parallelism']}: figures {figures}, the first run's {expected}")
    return found


def _row(run: dict[str, Any]) -> tuple[str, ...]:
    cost, summary = run["cost"], run["summary"]
    cpus = [step["cpu_s"] for step in run["ranges"]]
    return (
        str(run["parallelism"]),
        _num(cost["wall_s"]),
        _num(summary["duration_s"]),
        _num(cost["client_cpu_s"]),
        ", ".join(_num(cpu, 1) for cpu in cpus),
        _num(max(cpus, default=None)),
        _num(cost["mongo_cpu_s"]),
        _num(cost["pg_cpu_s"]),
        _num(summary["rows_per_s"], 0),
        "yes" if run["verify"]["ok"] else "**NO**",
    )


def section(results: dict[str, Any]) -> str:
    """The RESULTS.md section up to (and with) its analysis placeholder."""
    setup, source, target = results["setup"], results["scan_source"], results["scan_target"]
    lines = [
        HEADING,
        "",
        f"{setup['size']:,} products, batch_size {setup['batch_size']}, {setup['cpus']} CPUs, one local stack "
        f"(commit {setup['git_commit']}, {setup['started_at']}); `.venv/bin/python -m benchmarks.parallel`, "
        f"MONGODB_SOCKET_TIMEOUT_MS={setup.get('mongo_socket_timeout_ms', 120_000)}. "
        f"Bare scans: source {_num(source['cost']['wall_s'])} s (MongoDB CPU {_num(source['cost']['mongo_cpu_s'])} s), "
        f"target {_num(target['cost']['wall_s'])} s; the CLI on empty databases "
        f"{_num(results['baseline']['cost']['wall_s'])} s. Client CPU total is the CLI process and every process "
        "it waited for; per range process, each range step's own CPU, in key order.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "| ---: |" + " ---: |" * (len(COLUMNS) - 2) + " :---: |",
        *("| " + " | ".join(_row(run)) + " |" for run in results["runs"]),
        "",
        "Key ranges: "
        + "; ".join(
            f"{run['parallelism']}: "
            + ", ".join(f"[{low}, {high})" for low, high in (s["range"] for s in run["ranges"]))
            for run in results["runs"]
        ),
        "",
        ANALYSIS,
    ]
    return "\n".join(lines) + "\n"


def _section_span(text: str) -> tuple[int, int] | None:
    """Where this section is in a RESULTS.md text (None: not there)."""
    start = text.find(f"{HEADING}\n")
    if start < 0:
        return None
    end = text.find("\n## ", start + len(HEADING))
    return start, len(text) if end < 0 else end + 1


def kept_section(path: Path) -> str:
    """This section as `path` holds it, analysis included ('' when absent): for benchmarks.report to keep."""
    text = path.read_text() if path.exists() else ""
    span = _section_span(text)
    return "" if span is None else "\n" + text[span[0] : span[1]]


def write_section(results: dict[str, Any], path: Path) -> None:
    """Replace the section in `path` (keeping what follows its analysis placeholder), or append it."""
    text = path.read_text() if path.exists() else ""
    span = _section_span(text)
    if span is None:
        path.write_text(text.rstrip("\n") + ("\n\n" if text else "") + section(results))
        return
    start, end = span
    old = text[start:end]
    analysis = old[old.index(ANALYSIS) + len(ANALYSIS) + 1 :] if ANALYSIS in old else "\n"
    path.write_text(text[:start] + section(results) + analysis + text[end:])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.render:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the stack is stopped on a kill too
        args.out.parent.mkdir(parents=True, exist_ok=True)
        results = run(args, Path(tempfile.mkdtemp(prefix="etl-sync-parallel-")))
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    results = json.loads(args.out.read_text())
    print(section(results), end="")
    wrong = problems(results)
    for problem in wrong:
        print(f"WRONG: {problem}", file=sys.stderr)
    if wrong:
        return 1
    write_section(results, args.results_md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
