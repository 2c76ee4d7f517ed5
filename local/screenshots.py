"""`python -m local.screenshots` (`make screenshots`): PNGs of the Dagster UI for the README, in `docs/`.

On the seeded local stack it runs the syncs from a terminal a few times (so the metadata
has a history to plot), starts `dagster dev` on a free port with the schedules stopped,
and saves what an operator sees: the lineage, a finished run, a table's checks, the
materialization plots and a refused run config.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from local.browser import DagsterUI, browser_missing
from local.dagster_dev import REPO, dagster_job_execute, running_dagster_dev
from local.stack import PRODUCT_DB, LocalStack, free_port, stack_from_env

DOCS = REPO / "docs"


def terminal_sync(env: dict[str, str], job: str) -> None:
    result = dagster_job_execute(env, job)
    if result.returncode != 0:
        raise SystemExit(f"{job} failed:\n{result.stderr[-3000:]}")
    print(f"ran {job}")


def reprice(stack: LocalStack, count: int) -> None:
    """Drift for the next product sync: `count` products get a new price at the source."""
    client = stack.mongo_client()
    try:
        products = client[PRODUCT_DB]["products"]
        ids = [doc["_id"] for doc in products.find({"_id": {"$type": "objectId"}}, {"_id": 1}).limit(count)]
        products.update_many({"_id": {"$in": ids}}, {"$inc": {"price": 7}})
    finally:
        client.close()


def take(out: Path) -> list[Path]:
    stack = stack_from_env()
    env = {
        **os.environ,
        **stack.env(),
        "DAGSTER_HOME": str(stack.state_dir / "dagster_home"),
        "ENABLE_SCHEDULER": "false",
    }
    for count in (0, 40, 15):  # three product syncs with different amounts of drift, for the plots
        if count:
            reprice(stack, count)
        terminal_sync(env, "product_sync_job")
    terminal_sync(env, "cart_sync_job")
    saved = []
    log = stack.state_dir / "screenshots-dagster-dev.log"
    with running_dagster_dev(env, free_port(), log) as server:
        server.graphql("mutation { setNuxSeen }")  # the one-time "Join the Dagster community" dialog
        with DagsterUI.open(server.url) as ui:
            ui.open_global_lineage()
            ui.expand_lineage_groups()
            ui.open_global_lineage()  # the UI keeps the groups open and fits the whole graph on a fresh load
            saved.append(ui.screenshot(out / "lineage.png"))

            ui.open_launchpad("cart_sync_job")
            ui.type_run_config("dry_run: true")
            ui.launch_run()
            ui.wait_for_run_status("Success")
            ui.filter_run_logs("carts")
            ui.wait_for_text("carts sync DRY RUN (nothing written)")
            saved.append(ui.screenshot(out / "run.png"))

            # The validation runs the sensor started after the terminal syncs have recorded the checks.
            ui.go("/assets/cart_db/product?view=checks", until_text="no_stale_products")
            ui.wait_for_text("Succeeded", timeout=180)
            saved.append(ui.screenshot(out / "checks.png"))

            ui.go("/assets/cart_db/product", until_text="Latest materialization")
            ui.click_button("Plots")
            ui.wait_for_text("rows_per_s")
            saved.append(ui.screenshot(out / "plots.png"))

            ui.open_launchpad("product_sync_job")
            ui.type_run_config("batch_size: 0")
            ui.press_launch_run()
            ui.wait_for_text("invalid run config: batch_size=0")
            saved.append(ui.screenshot(out / "refused-run-config.png"))
    return saved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local.screenshots", description=__doc__)
    parser.add_argument("--out", type=Path, default=DOCS, help="folder for the PNGs (default: docs/)")
    args = parser.parse_args(argv)
    missing = browser_missing()
    if missing is not None:
        print(f"error: {missing}", file=sys.stderr)
        return 1
    for path in take(args.out):
        print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
