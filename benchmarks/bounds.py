"""The bounds the sync must meet, evaluated on one run's raw figures; every ratio from the same run.

A bound passes only when its figure is within the limit and every run it uses gave the
exact answer. Per-size bounds are evaluated at every size; those stated "at 1M" at the
largest size run (the record says which size).
"""

from __future__ import annotations

from typing import Any

MAX_RSS_MB = 300
#: The product sync's run time against the fastest bare read of the products (any shape).
READ_RATIO = 1.2
#: The product sync's client CPU beyond start-up against the drivers' own work.
CPU_RATIO = 1.0
#: How much faster than each peer's fastest exact configuration, at the largest size.
PEER_SPEEDUP = 1.5
#: A keyed sync's run time may grow this much from the smallest to the largest table (it is O(keys)).
KEYED_GROWTH = 2.0
#: "Writes batched": at least this many documents per write command.
MIN_DOCS_PER_WRITE_COMMAND = 10
ORDER_NAMESPACE = "order.carts"

Bound = dict[str, Any]


def _bound(text: str, size: int, value: float | None, limit: float, ok: bool, verified: bool, note: str) -> Bound:
    return {
        "bound": text,
        "size": size,
        "value": None if value is None else round(value, 3),
        "limit": limit,
        "verified": verified,
        "pass": ok and verified,
        "note": note,
    }


def _ok(*runs: dict[str, Any]) -> bool:
    return all(run["verify"]["ok"] for run in runs)


def _wall(step: dict[str, Any]) -> float:
    return step["cost"]["wall_s"]


def fastest_read(products: dict[str, Any]) -> tuple[str, float]:
    """The fastest bare read of the products (any shape the server offers): its name and wall time."""
    name, step = min(products["reads"].items(), key=lambda item: _wall(item[1]))
    return name, _wall(step)


def fastest_exact(runs: dict[str, Any], timed: str = "merge") -> tuple[str, dict[str, Any]] | None:
    """The configuration of a peer with the shortest timed wall among those that gave the exact answer."""
    exact = [(name, run) for name, run in runs.items() if run["verify"]["ok"]]
    return min(exact, key=lambda item: _wall(item[1][timed]), default=None)


def fastest_dlt(products: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The dlt configuration with the shortest merge wall time among those that gave the exact answer."""
    return fastest_exact(products["dlt"])


def drivers_cpu_s(products: dict[str, Any]) -> float:
    """The drivers' own work: pymongo decoding the five fields + psycopg reading the target rows (fresh processes)."""
    return products["drivers"]["mongo"]["cpu_s"] + products["drivers"]["postgres"]["cpu_s"]


def _product_bounds(size: int, products: dict[str, Any], baseline: dict[str, Any]) -> list[Bound]:
    sync, resync = products["sync"], products["resync"]
    read_name, read_s = fastest_read(products)
    ratio = sync["summary"]["duration_s"] / read_s
    startup_excluded = (_wall(sync) - _wall(baseline)) / read_s
    resync_ratio = resync["summary"]["duration_s"] / read_s
    wrote = resync["summary"]["inserted"] + resync["summary"]["updated"] + resync["rows_written"]
    projected = products["sync_projected"]  # as on a real MongoDB, where client CPU decides the speed
    cpu_beyond = projected["cost"]["client_cpu_s"] - baseline["cost"]["client_cpu_s"]
    whole_cpu_beyond = sync["cost"]["client_cpu_s"] - baseline["cost"]["client_cpu_s"]
    drivers = drivers_cpu_s(products)
    read_note = f"fastest bare read: {read_name}, {read_s:.2f}s"
    return [
        _bound(
            f"product sync run time <= {READ_RATIO}x the fastest bare read of the products",
            size,
            ratio,
            READ_RATIO,
            ratio <= READ_RATIO,
            _ok(sync),
            f"summary duration {sync['summary']['duration_s']:.2f}s; {read_note}; "
            f"wall minus the empty-run baseline: {startup_excluded:.2f}x",
        ),
        _bound(
            f"no-change re-sync writes nothing and its run time <= {READ_RATIO}x the fastest bare read",
            size,
            resync_ratio,
            READ_RATIO,
            resync_ratio <= READ_RATIO and wrote == 0,
            _ok(resync),
            f"inserted={resync['summary']['inserted']}, updated={resync['summary']['updated']}, "
            f"rows with a newer xmin={resync['rows_written']}; {read_note}",
        ),
        _bound(
            f"product sync client CPU beyond start-up <= {CPU_RATIO}x the drivers' own work (fields projected)",
            size,
            cpu_beyond / drivers if drivers else None,
            CPU_RATIO,
            drivers > 0 and cpu_beyond <= CPU_RATIO * drivers,
            _ok(projected),
            f"{projected['cost']['client_cpu_s']:.2f}s - baseline {baseline['cost']['client_cpu_s']:.2f}s "
            f"= {cpu_beyond:.2f}s vs pymongo decoding the five fields {products['drivers']['mongo']['cpu_s']:.2f}s "
            f"+ psycopg reading the target {products['drivers']['postgres']['cpu_s']:.2f}s; reading whole documents "
            f"(the run above): {whole_cpu_beyond:.2f}s, {whole_cpu_beyond / drivers if drivers else 0:.2f}x",
        ),
    ]


def _rss_bound(size: int, sizes: dict[str, Any]) -> Bound:
    runs = {
        "product sync": sizes["products"]["sync"],
        "no-change re-sync": sizes["products"]["resync"],
        "product sync, fields projected": sizes["products"]["sync_projected"],
        "cart sync": sizes["carts"]["sync"],
        "user_id sync": sizes["carts"]["user_sync"],
    }
    name, worst = max(runs.items(), key=lambda item: item[1]["cost"]["peak_rss_mb"])
    peak = worst["cost"]["peak_rss_mb"]
    return _bound(
        f"peak RSS of every sync run <= {MAX_RSS_MB} MB",
        size,
        peak,
        MAX_RSS_MB,
        peak <= MAX_RSS_MB,
        _ok(*runs.values()),
        f"highest: {name}",
    )


def _largest_size_bounds(size: int, sizes: dict[str, Any], reference: dict[str, Any], ref_size: int) -> list[Bound]:
    products, carts = sizes["products"], sizes["carts"]
    at = "" if size == 1_000_000 else f" (stated at 1M; here at {size:,})"
    bounds = [_peer_bound(size, products, "dlt", at), _peer_bound(size, products, "Sling", at)]
    rss, ref_rss = products["sync"]["cost"]["peak_rss_mb"], reference["cost"]["peak_rss_mb"]
    bounds.append(
        _bound(
            f"product sync peak RSS at the largest size <= 1.25x its value at {ref_size:,}{at}",
            size,
            rss / ref_rss,
            1.25,
            rss <= 1.25 * ref_rss,
            _ok(products["sync"], reference),
            f"{rss:.0f} MB vs {ref_rss:.0f} MB",
        )
    )
    monitored = carts["sync_monitored"]
    commands = sum(monitored["mongo"]["write_commands"].get(ORDER_NAMESPACE, {}).values())
    written = sum(monitored["mongo"]["write_ops"].get(ORDER_NAMESPACE, {}).values())
    bounds.append(
        _bound(
            f"cart sync MongoDB writes batched (>= {MIN_DOCS_PER_WRITE_COMMAND} documents per write command){at}",
            size,
            written / commands if commands else None,
            MIN_DOCS_PER_WRITE_COMMAND,
            commands > 0 and written >= MIN_DOCS_PER_WRITE_COMMAND * commands,
            _ok(monitored),
            f"{written} documents in {commands} write commands (monitored run)",
        )
    )
    read = min(_wall(carts["scan_order"]), _wall(carts["scan_order_natural"]))
    floor = read + _wall(carts["bulk_write"])
    duration = carts["sync"]["summary"]["duration_s"]
    bounds.append(
        _bound(
            f"cart sync run time <= 1.3x (fastest bare read of the Order carts + bare bulk_write){at}",
            size,
            duration / floor,
            1.3,
            duration <= 1.3 * floor,
            _ok(carts["sync"]),
            f"summary duration {duration:.2f}s vs read {read:.2f}s (cartId order {_wall(carts['scan_order']):.2f}s, "
            f"natural {_wall(carts['scan_order_natural']):.2f}s) + bulk_write {_wall(carts['bulk_write']):.2f}s",
        )
    )
    bounds.extend(_user_bounds(size, carts, at))
    return bounds


def _keyed_bounds(sizes: dict[str, Any]) -> list[Bound]:
    """Keyed (change capture) product syncs read only their keys, in a time that does not grow with the table."""
    bounds = []
    for size, figures in sorted(sizes.items(), key=lambda item: int(item[0])):
        keyed = figures["products"]["keyed"]
        bounds.append(
            _bound(
                "keyed product sync reads only its keys' documents",
                int(size),
                keyed["documents_returned"],
                keyed["keys"],
                keyed["documents_returned"] == keyed["keys"],
                _ok(keyed),
                f"documents returned by find/getMore on product.products: {keyed['documents_returned']}; "
                f"keys: {keyed['keys']}",
            )
        )
    low, high = min(sizes, key=int), max(sizes, key=int)
    smallest, largest = sizes[low]["products"]["keyed"], sizes[high]["products"]["keyed"]
    ratio = largest["summary"]["duration_s"] / smallest["summary"]["duration_s"]
    bounds.append(
        _bound(
            f"keyed product sync run time at {int(high):,} <= {KEYED_GROWTH}x at {int(low):,} (O(keys))",
            int(high),
            ratio,
            KEYED_GROWTH,
            ratio <= KEYED_GROWTH,
            _ok(smallest, largest),
            f"{largest['summary']['duration_s']:.3f}s vs {smallest['summary']['duration_s']:.3f}s",
        )
    )
    return bounds


def _peer_bound(size: int, products: dict[str, Any], peer: str, at: str) -> Bound:
    text = (
        f"product sync faster than {peer}'s fastest exact configuration by >= {PEER_SPEEDUP}x (walls with start-up){at}"
    )
    best = fastest_exact(products[peer.lower()])
    if best is None:
        return _bound(text, size, None, PEER_SPEEDUP, False, False, f"no {peer} configuration gave the exact answer")
    name, run = best
    speedup = _wall(run["merge"]) / _wall(products["sync"])
    note = f"{peer} {name}: {_wall(run['merge']):.1f}s vs sync {_wall(products['sync']):.1f}s"
    return _bound(text, size, speedup, PEER_SPEEDUP, speedup >= PEER_SPEEDUP, _ok(products["sync"]), note)


def _user_bounds(size: int, carts: dict[str, Any], at: str) -> list[Bound]:
    monitored, timed = carts["user_sync_monitored"], carts["user_sync"]
    returned = monitored["mongo"]["documents_returned"].get(ORDER_NAMESPACE, 0)
    expected = monitored["user_documents_before"]
    duration = timed["summary"]["duration_s"]
    return [
        _bound(
            f"user_id sync reads only that user's Order documents{at}",
            size,
            returned,
            expected,
            returned == expected,
            _ok(monitored),
            f"documents returned by find/getMore on {ORDER_NAMESPACE}: {returned}; the user's documents: {expected}",
        ),
        _bound(
            f"user_id sync time < 0.5 s{at}",
            size,
            duration,
            0.5,
            duration < 0.5,
            _ok(timed),
            f"summary duration of the CLI run; source_rows={timed['summary'].get('source_rows')}",
        ),
    ]


def evaluate(results: dict[str, Any]) -> list[Bound]:
    """Every bound on `results` (as `benchmarks.run` records them)."""
    sizes = sorted(results["sizes"], key=int)
    baseline = results["baselines"]["product_sync_job"]
    bounds: list[Bound] = []
    for size in sizes:
        bounds += _product_bounds(int(size), results["sizes"][size]["products"], baseline)
        bounds.append(_rss_bound(int(size), results["sizes"][size]))
    largest = sizes[-1]
    ref_size = results["setup"]["rss_reference_size"]
    bounds += _largest_size_bounds(int(largest), results["sizes"][largest], results["rss_reference"], ref_size)
    bounds += _keyed_bounds(results["sizes"])
    return bounds


def describe(bound: Bound) -> str:
    """One line: PASS/FAIL, the bound, its figure and limit, and why."""
    verdict = "PASS" if bound["pass"] else "FAIL"
    value = "n/a" if bound["value"] is None else f"{bound['value']:g}"
    wrong = "" if bound["verified"] else " [a run gave a WRONG answer]"
    figure = f"{value} (limit {bound['limit']:g}){wrong}"
    return f"{verdict}  {bound['bound']} @ {bound['size']:,}: {figure}; {bound['note']}"
