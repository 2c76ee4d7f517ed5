"""RESULTS.md and the plots, from results.json: `python -m benchmarks.report [benchmarks/results.json]`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pandas as pd

from benchmarks import bounds as bounds_module
from benchmarks import data as bench_data
from benchmarks import parallel

HERE = Path(__file__).resolve().parent
COLUMNS = (
    "step",
    "wall s",
    "run time s",
    "wall - baseline s",
    "rows/s",
    "client CPU s",
    "MongoDB CPU s",
    "PostgreSQL CPU s",
    "peak RSS MB",
    "exact",
)


def _num(value: float | None, digits: int = 2) -> str:
    return "" if value is None else f"{value:,.{digits}f}"


def _row(
    step: str, run: dict[str, Any], rows: int, baseline: dict[str, Any] | None = None, run_s: float | None = None
) -> tuple[str, ...]:
    """One table row: a step's cost, its run time (summary duration, or `run_s`) and its answer."""
    cost = run["cost"]
    summary = run.get("summary", {})
    run_s = summary.get("duration_s", run_s)
    seconds = run_s if run_s else cost["wall_s"]
    exact = {True: "yes", False: "**NO**"}.get(run.get("verify", {}).get("ok"), "")
    return (
        step,
        _num(cost["wall_s"]),
        _num(run_s),
        _num(cost["wall_s"] - baseline["cost"]["wall_s"]) if baseline else "",
        _num(rows / seconds, 0) if rows and seconds else "",
        _num(cost["client_cpu_s"]),
        _num(cost["mongo_cpu_s"]),
        _num(cost["pg_cpu_s"]),
        _num(cost.get("peak_rss_mb"), 0),
        exact,
    )


def _table(rows: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "| :--- |" + " ---: |" * (len(COLUMNS) - 2) + " :---: |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def product_rows(size: int, products: dict[str, Any], baselines: dict[str, Any]) -> list[tuple[str, ...]]:
    base = baselines["product_sync_job"]
    rows = [_row("seed (insert_many + COPY)", {"cost": products["seed"]}, size)]
    rows += [_row(f"bare read, MongoDB: {name}", run, run["result"]) for name, run in products["reads"].items()]
    rows += [
        _row(
            "bare read, PostgreSQL: the target rows (SELECT)",
            products["scan_target"],
            products["scan_target"]["result"],
        ),
        _row("**product_sync_job**", products["sync"], size, base),
        _row("no-change re-sync", products["resync"], size, base),
        _row(
            "product sync, fields projected (`MONGODB_PROJECT_FIELDS=true`, as on a real MongoDB)",
            products["sync_projected"],
            size,
            base,
        ),
        _row(
            f"keyed sync of {products['keyed']['keys']} products (monitored)",
            products["keyed"],
            products["keyed"]["keys"],
        ),
    ]
    for peer in ("dlt", "sling"):
        for name, run in products[peer].items():
            merge = {**run["merge"], "verify": run["verify"]}
            rows.append(
                _row(f"{'Sling' if peer == 'sling' else peer} {name} (merge)", merge, size, run_s=merge["run_s"])
            )
    return rows


def drivers_note(products: dict[str, Any]) -> str:
    """The drivers' own work the sync's client CPU is held against."""
    mongo, postgres = products["drivers"]["mongo"], products["drivers"]["postgres"]
    return (
        f"The drivers' own work (fresh processes, the read alone): pymongo decoding the five synced fields of "
        f"{mongo['rows']:,} documents {mongo['cpu_s']:.2f} s CPU; psycopg reading {postgres['rows']:,} target rows "
        f"{postgres['cpu_s']:.2f} s CPU."
    )


def dlt_note(products: dict[str, Any]) -> str:
    """Which dlt configuration was the fastest exact one, and what dlt loaded."""
    best = bounds_module.fastest_dlt(products)
    if best is None:
        return "No dlt configuration gave the exact answer."
    name, run = best
    formats = {config: ", ".join(figures["merge"]["file_formats"]) for config, figures in products["dlt"].items()}
    return (
        f"dlt's fastest exact configuration here: **{name}** (merge wall {run['merge']['cost']['wall_s']:.2f} s, "
        f"`pipeline.run` {run['merge']['run_s']:.2f} s). Load files per configuration: "
        + "; ".join(f"{config}: {kinds}" for config, kinds in formats.items())
        + ". The drifted rows dlt loaded first (untimed) are in results.json."
    )


def cart_rows(size: int, carts: dict[str, Any], baselines: dict[str, Any]) -> list[tuple[str, ...]]:
    base = baselines["cart_sync_job"]
    written = carts["bulk_write"]["result"][0]
    return [
        _row("seed (COPY + insert_many)", {"cost": carts["seed"]}, size),
        _row("bare read, Order side (MongoDB find, cartId order)", carts["scan_order"], carts["scan_order"]["result"]),
        _row(
            "bare read, Order side (MongoDB find, natural order)",
            carts["scan_order_natural"],
            carts["scan_order_natural"]["result"],
        ),
        _row("bare scan, Cart side (PostgreSQL SELECT)", carts["scan_cart"], size),
        _row("**cart_sync_job**", carts["sync"], size, base),
        _row("cart_sync_job, monitored (2nd run)", carts["sync_monitored"], size),
        _row(f"bare bulk_write ({written:,} documents)", carts["bulk_write"], written),
        _row("user_id sync", carts["user_sync"], carts["focus_user"]["carts"], base),
        _row("user_id sync, monitored (2nd run)", carts["user_sync_monitored"], carts["focus_user"]["carts"]),
    ]


def mongo_counts(carts: dict[str, Any]) -> str:
    """The monitored runs' MongoDB command counts, one line each."""
    lines = []
    for name in ("sync_monitored", "user_sync_monitored"):
        counts = carts[name]["mongo"]
        lines.append(
            f"- {name.replace('_', ' ')}: commands {counts['commands']}; documents returned by cursors "
            f"{counts['documents_returned']}; write commands {counts['write_commands']}; "
            f"write operations {counts['write_ops']}"
        )
    return "\n".join(lines)


def bounds_table(results: dict[str, Any]) -> str:
    lines = ["| verdict | bound | size | figure | limit | detail |", "| :---: | :--- | ---: | ---: | ---: | :--- |"]
    for bound in results["bounds"]:
        verdict = "PASS" if bound["pass"] else "**FAIL**"
        wrong = " (a run gave a WRONG answer)" if not bound["verified"] else ""
        value = "n/a" if bound["value"] is None else f"{bound['value']:g}"
        cells = (verdict, bound["bound"], f"{bound['size']:,}", value, f"{bound['limit']:g}", bound["note"] + wrong)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


METHOD = """One private local stack on free ports (`local.stack.LocalStack`): SecantusDB as the MongoDB (one
Python process serving both the Product and the Order database, started by `local/secantus_server.py` with
CPython's full garbage collections made rare) and PostgreSQL 15 (`fsync=off`), on this
machine's cores. The jobs run as a user runs them, `dagster job execute -m etl_defs -j JOB -c CONFIG` in a
subprocess, with the repo's dagster.yaml (instance in PostgreSQL), `batch_size: {batch_size}`, and
MONGODB_FETCH_SIZE={mongo_fetch} and POSTGRES_FETCH_SIZE={pg_fetch} (the bare scans use the same). The syncs
read whole documents (`MONGODB_PROJECT_FIELDS=false`, as the local stack sets it: SecantusDB projects in
Python); one more product sync per size, on the same drift planted again, asks for the five synced fields
(`MONGODB_PROJECT_FIELDS=true`, the default, as on a real MongoDB, where the client's CPU decides the speed):
its client CPU is the CPU bound's figure, and the whole-document run's is shown beside it.

- **Data.** N products (documents of 14 fields, 5 of them synced) and N carts over them (uuid4 ids,
  {users:,} users plus one user with {focus} carts for the user_id sync). Drift: 5% of the products
  missing from the Cart DB and 5% with a stale price; 5% of the carts missing from the Order DB, 5% outdated
  there (a lower version), 1% stale (same version, another price). Seeded with `insert_many` in chunks of
  10,000 and `COPY`, then `VACUUM ANALYZE`, then one full scan to warm SecantusDB (its first scan after a
  bulk load is much slower); again after the drift is planted a second time.
- **Bare reads** (the floors): each side's reads and nothing else, every document or row decoded.
  Products, every shape the server offers: whole documents and the five synced fields projected, each in
  natural order (`find({{}})`) and in `_id` order along the `_id_` index (`.sort("_id").hint("_id_")`,
  the sync's query), and the sync's own read and decode (pymongoarrow on the raw batches of whole
  documents); the product sync is held against the fastest of them. Target: `SELECT ... ORDER BY id COLLATE
  "C"` through a server-side cursor. Carts: the Order documents in `cartId` order
  (`find({{"cartId": {{"$type": "string"}}}}).sort("cartId").hint("cartId_1")`, whole, as the cart sync
  reads them) and whole in natural order, and the cart sync's `cart LEFT JOIN product` SELECT. The bare `bulk_write` is
  unordered `UpdateOne`s by cartId with `$set` (the synced fields and a new `updatedAt`), in chunks of
  1,000, of the documents the sync wrote, after the sync. The bare steps run in the harness process; their
  client CPU is its CPU time meanwhile.
- **The drivers' own work** (what the sync's client CPU is held against): in two fresh processes,
  pymongo decoding the five synced fields of every product and psycopg reading every target row, the
  CPU of the read alone (`time.process_time()` around it).
- **Run time** of a sync is the duration in its summary line (`... sync applied: ...; 12.34s`): the sync
  loop, without Dagster's start-up. The baseline is the same job on empty databases: after a warm-up run
  (which creates the instance's storage), the minimum of each figure over two runs. "wall - baseline" and
  "client CPU beyond start-up" subtract it. Client CPU is utime+stime of the job process and the children
  it waited for (`os.wait4`; Dagster's compute-log `tail` processes among them); peak RSS is the job
  process's `VmHWM`, polled every 0.05 s. Server CPU is the delta of utime+stime of the SecantusDB process
  and of PostgreSQL's postmaster with all its backends.
- **Exactness.** After every sync run the whole target is read back and compared with the expected
  records (product rows column for column; Order documents field for field, total = price * quantity,
  version, timestamps present); a wrong answer fails every bound that uses the run.
- **dlt** ({dlt_configs}): a `@dlt.resource(primary_key="id", write_disposition="merge")` that reads the
  Product MongoDB with pymongo (projected find, no sort) and yields pyarrow tables of {dlt_chunk:,} rows,
  `pipeline.run(..., loader_file_format=FORMAT)` into its own dataset in the Cart DB, which first holds the
  same drifted rows (loaded by dlt, untimed). Its run time is `pipeline.run`'s; its wall includes the
  interpreter's start-up and dlt's imports, as the sync's wall includes Dagster's.
- **Sling** (`sling-linux-amd64`, the binary in its wheel): `benchmarks/sling_peer.py`, each configuration
  into its own schema of the Cart DB that first holds the same drifted rows (untimed); its wall includes
  the interpreter's start-up, as the sync's wall includes Dagster's.
- **MongoDB commands** are counted by a `pymongo.monitoring.CommandListener` in a wrapper process that
  runs the job with `execute_in_process`: second runs, after the drift is planted again (the CLI runs are
  the timed ones)."""


def _setup_text(results: dict[str, Any]) -> str:
    setup = results["setup"]
    packages = ", ".join(f"{name} {ver}" for name, ver in setup["packages"].items())
    changes = f" with uncommitted changes ({setup['git_uncommitted']})" if setup["git_uncommitted"] else ""
    environment = (
        f"Run {setup['started_at']} to {setup.get('finished_at', '?')} ({setup.get('harness_wall_s', '?')} s "
        f"in all), commit {setup['git_commit']}{changes}; {setup['cpus']} cores, {setup['memory_gib']} GiB, "
        f"load average at start {setup['load_average_at_start']}; Python {setup['python']}, "
        f"PostgreSQL {setup['postgresql']}, {packages}."
    )
    method = METHOD.format(
        batch_size=setup["batch_size"],
        mongo_fetch=setup["mongo_fetch_size"],
        pg_fetch=setup["pg_fetch_size"],
        users=bench_data.USERS,
        focus=bench_data.FOCUS_USER_CARTS,
        dlt_configs=", ".join(setup["dlt_configs"]),
        dlt_chunk=setup["dlt_chunk"],
    )
    return f"{environment}\n\n{method}"


def write_report(results: dict[str, Any], folder: Path = HERE) -> None:
    """RESULTS.md and the PNGs in `folder` (the parallelism section of benchmarks/parallel.py is kept)."""
    plot_throughput(results, folder / "throughput.png")
    plot_peak_rss(results, folder / "peak_rss.png")
    page = folder / "RESULTS.md"
    page.write_text(markdown(results).rstrip("\n") + "\n" + parallel.kept_section(page))


def markdown(results: dict[str, Any]) -> str:
    baselines = results["baselines"]
    sections = [
        "# Benchmark results",
        "Generated by `benchmarks/run.py` (regenerate this page from `results.json` with "
        "`.venv/bin/python -m benchmarks.report`). Every figure comes from one run on one stack.",
        "## Bounds",
        bounds_table(results),
        "## Setup",
        _setup_text(results),
        "## CLI start-up baselines (empty databases)",
        _table([_row(job, run, 0) for job, run in baselines.items()]),
    ]
    for size, figures in sorted(results["sizes"].items(), key=lambda item: int(item[0])):
        n = int(size)
        sections += [
            f"## {n:,} products",
            _table(product_rows(n, figures["products"], baselines)),
            dlt_note(figures["products"]),
            drivers_note(figures["products"]),
            f"## {n:,} carts",
            _table(cart_rows(n, figures["carts"], baselines)),
            mongo_counts(figures["carts"]),
        ]
    reference = results["rss_reference"]
    sections += [
        f"## RSS reference: product sync at {results['setup']['rss_reference_size']:,} products",
        f"Peak RSS {reference['cost']['peak_rss_mb']:.0f} MB, exact: {reference['verify']['ok']}.",
        "## Plots",
        "![rows per second](throughput.png)\n\n![peak RSS](peak_rss.png)",
        *_profile_section(),
        "## Reproduce",
        '```bash\n.venv/bin/uv pip install --python .venv/bin/python -e ".[test,bench]"\n'
        f".venv/bin/python -m benchmarks.run --sizes {' '.join(map(str, results['setup']['sizes']))} "
        f"--rss-reference-size {results['setup']['rss_reference_size']}\n```\n\n"
        "`make bench` runs the full benchmark (`BENCH_SIZES=200000 1000000`, the 100,000 RSS reference); "
        "`--keep-state` keeps the stack's folder with every job's log.",
    ]
    return "\n\n".join(sections) + "\n"


def _profile_section() -> list[str]:
    """The hand-written profile summary (`PROFILE.md`: where the client's time went, before and after), if any."""
    path = HERE / "PROFILE.md"
    return [path.read_text().strip()] if path.exists() else []


def frame(results: dict[str, Any]) -> pd.DataFrame:
    """One row per size: rows/s and peak RSS of each contender."""
    records = []
    for size, figures in results["sizes"].items():
        n, products, carts = int(size), figures["products"], figures["carts"]
        best = bounds_module.fastest_dlt(products)
        sling = bounds_module.fastest_exact(products["sling"])
        order_read = min(carts["scan_order"]["cost"]["wall_s"], carts["scan_order_natural"]["cost"]["wall_s"])
        cart_floor = order_read + carts["bulk_write"]["cost"]["wall_s"]
        records.append(
            {
                "N": n,
                "product sync": n / products["sync"]["summary"]["duration_s"],
                "product sync incl. start-up": n / products["sync"]["cost"]["wall_s"],
                "dlt fastest": n / best[1]["merge"]["run_s"] if best else None,
                "dlt fastest incl. start-up": n / best[1]["merge"]["cost"]["wall_s"] if best else None,
                "Sling fastest incl. start-up": n / sling[1]["merge"]["cost"]["wall_s"] if sling else None,
                "fastest bare read": n / bounds_module.fastest_read(products)[1],
                "cart sync": n / carts["sync"]["summary"]["duration_s"],
                "cart floor (fastest Order read + bulk_write)": n / cart_floor,
                "rss product sync": products["sync"]["cost"]["peak_rss_mb"],
                "rss cart sync": carts["sync"]["cost"]["peak_rss_mb"],
                "rss dlt fastest": best[1]["merge"]["cost"]["peak_rss_mb"] if best else None,
                "rss Sling fastest": sling[1]["merge"]["cost"]["peak_rss_mb"] if sling else None,
            }
        )
    return pd.DataFrame.from_records(records).sort_values("N").set_index("N")


def plot_throughput(results: dict[str, Any], path: Path) -> None:
    """Rows per second against N: products (ours, dlt, the floor) and carts (ours, the floor)."""
    data = frame(results)
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    product_columns = ["product sync", "product sync incl. start-up", "dlt fastest incl. start-up"]
    data[[*product_columns, "Sling fastest incl. start-up", "fastest bare read"]].plot(ax=left, marker="o", logx=True)
    left.set_title("Products: rows per second")
    data[["cart sync", "cart floor (fastest Order read + bulk_write)"]].plot(ax=right, marker="o", logx=True)
    right.set_title("Carts: rows per second")
    for axes in (left, right):
        axes.set_xlabel("N (products, carts)")
        axes.set_ylabel("rows/s")
        axes.set_ylim(bottom=0)
        axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_peak_rss(results: dict[str, Any], path: Path) -> None:
    """Peak RSS against N, with the RSS bound; the product sync's reference-size run included."""
    names = {
        "rss product sync": "product sync",
        "rss cart sync": "cart sync",
        "rss dlt fastest": "dlt fastest",
        "rss Sling fastest": "Sling fastest",
    }
    data = frame(results)[list(names)].rename(columns=names)
    reference = results["setup"]["rss_reference_size"]
    if reference not in data.index:
        data.loc[reference, "product sync"] = results["rss_reference"]["cost"]["peak_rss_mb"]
    figure, axes = plt.subplots(figsize=(7, 4.5))
    data.sort_index().plot(ax=axes, marker="o", logx=True)
    axes.axhline(bounds_module.MAX_RSS_MB, color="red", linestyle="--", label=f"{bounds_module.MAX_RSS_MB} MB bound")
    axes.set_xlabel("N (products, carts)")
    axes.set_ylabel("peak RSS (MB)")
    axes.set_ylim(bottom=0)
    axes.set_title("Peak RSS of the job process (VmHWM)")
    axes.legend()
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "results.json"
    write_report(json.loads(path.read_text()), path.parent)


if __name__ == "__main__":
    main()
