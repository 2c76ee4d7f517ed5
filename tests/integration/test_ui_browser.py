"""The Dagster UI in a real browser: headless Chromium on `dagster dev`, as an operator clicks through it.

Needs Debian's `chromium` and `chromium-driver` (`make test` installs them as root). Without
them these tests are skipped with the command that installs them, except under CI=true,
where a missing browser fails the run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from local.browser import DagsterUI, browser_missing
from local.dagster_dev import DagsterDev
from tests.factories import expected_row, product_doc
from tests.helpers import Databases


@pytest.fixture(scope="module")
def ui(dagster_dev: DagsterDev) -> Iterator[DagsterUI]:
    """A headless Chromium on the module's `dagster dev`, past the UI's one-time newsletter prompt."""
    missing = browser_missing()
    if missing is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI needs the browser tests: {missing}")
        pytest.skip(missing)
    dagster_dev.graphql("mutation { setNuxSeen }")  # the "Join the Dagster community" dialog, seen
    with DagsterUI.open(dagster_dev.url) as browser:
        yield browser


def test_a_dry_run_typed_into_the_launchpad_succeeds_and_logs_its_summary(dbs: Databases, ui: DagsterUI) -> None:
    dbs.product_db.products.insert_many([product_doc() for _ in range(6)])

    ui.open_launchpad("product_sync_job")
    assert ui.type_run_config("dry_run: true") == "dry_run: true"
    ui.launch_run()

    ui.wait_for_run_status("Success")
    ui.filter_run_logs("DRY RUN")
    ui.wait_for_text("products sync DRY RUN (nothing written): source_rows=6, missing=6")
    assert dbs.product_rows() == {}


def test_a_real_run_from_the_launchpad_writes_the_products(dbs: Databases, ui: DagsterUI) -> None:
    docs = [product_doc() for _ in range(3)]
    dbs.product_db.products.insert_many(docs)

    ui.open_launchpad("product_sync_job")
    ui.type_run_config("batch_size: 2")
    ui.launch_run()

    ui.wait_for_run_status("Success")
    assert dbs.product_rows() == {str(d["_id"]): expected_row(d) for d in docs}


RUN_IDS = '{ runsOrError(filter: {pipelineName: "product_sync_job"}) { ... on Runs { results { runId } } } }'


def test_batch_size_zero_is_refused_at_launch_naming_the_field_value_and_range(
    dbs: Databases, ui: DagsterUI, dagster_dev: DagsterDev
) -> None:
    runs_before = dagster_dev.graphql(RUN_IDS)["runsOrError"]["results"]
    ui.open_launchpad("product_sync_job")
    ui.type_run_config("batch_size: 0")
    assert "Keys per batch and transaction (allowed: 1 to 100000)" in ui.text()  # the field's hint, before launching

    ui.press_launch_run()

    ui.wait_for_text(
        "InvalidRunConfigError: invalid run config: batch_size=0: Input should be greater than or equal to 1 "
        "(allowed: 1 to 100000)"
    )
    ui.click_button("OK")
    assert "/playground" in ui.driver.current_url
    assert dagster_dev.graphql(RUN_IDS)["runsOrError"]["results"] == runs_before  # nothing was launched


def test_the_global_lineage_shows_each_table_in_its_database_and_the_syncs_edges(ui: DagsterUI) -> None:
    ui.open_global_lineage()
    ui.expand_lineage_groups()

    lineage = ui.lineage()

    assert lineage.group_of == {
        "products": "product_service_mongodb",
        "product": "cart_service_postgresql",
        "cart": "cart_service_postgresql",
        "carts": "order_service_mongodb",
    }
    assert lineage.edges == {("products", "product"), ("product", "carts"), ("cart", "carts")}


def test_the_checks_of_cart_db_product_are_listed_with_their_descriptions(ui: DagsterUI) -> None:
    ui.go("/assets/cart_db/product?view=checks", until_text="no_missing_products")

    page = ui.text()

    for check in ("no_missing_products", "no_stale_products", "no_orphaned_products", "reachable"):
        assert check in page
    assert "Every product of the Product MongoDB has a row in the Cart DB's product table" in page
