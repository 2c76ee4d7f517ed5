"""Asset checks: drift validation of both syncs (the old `/validate` endpoint) and reachability.

The drift checks run the sync core dry, so validation cannot drift from the sync; why they
are not blocking and how severities are chosen: docs/automation.md.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import dagster as dg

from etl_defs.assets import CART_DB_PRODUCT, ORDER_DB_CARTS
from etl_defs.carts.endpoints import CartSyncEndpoints
from etl_defs.carts.ops import CART_SYNC
from etl_defs.health import DATABASE_OF_ASSET, REACHABLE, health_of_tables, ping_all
from etl_defs.ops import retried_while_unavailable
from etl_defs.products.endpoints import ProductSyncEndpoints
from etl_defs.products.ops import PRODUCT_SYNC
from etl_defs.settings import SyncSettings
from etl_defs.sync import Change, SyncEndpoints, SyncReport, SyncSpec, run_sync
from resources import MongoResource, PostgresResource

ERROR = dg.AssetCheckSeverity.ERROR
WARN = dg.AssetCheckSeverity.WARN


@dataclass(frozen=True)
class DriftCheck:
    """One validation check: which plan classes it counts, and how bad a non-zero count is."""

    name: str
    asset: dg.AssetKey
    classes: tuple[Change, ...]
    severity: dg.AssetCheckSeverity
    what: str  # "<n> <what>", e.g. "products in the Product MongoDB but not in the Cart DB"
    description: str
    #: Also report `newer_in_target` (targets ahead of the source, which the sync leaves alone).
    reports_newer_in_target: bool = False

    @property
    def key(self) -> dg.AssetCheckKey:
        return dg.AssetCheckKey(self.asset, self.name)

    @property
    def spec(self) -> dg.AssetCheckSpec:
        return dg.AssetCheckSpec(self.name, asset=self.asset, description=self.description, blocking=False)


PRODUCT_CHECKS = (
    DriftCheck(
        "no_missing_products",
        CART_DB_PRODUCT,
        (Change.MISSING,),
        ERROR,
        "products are in the Product MongoDB but not in the Cart DB",
        "Every product of the Product MongoDB has a row in the Cart DB's `product` table. "
        "Products the sync rejects (bad data) are counted as `rejected_source_records`, not here.",
    ),
    DriftCheck(
        "no_stale_products",
        CART_DB_PRODUCT,
        (Change.CHANGED, Change.OUTDATED),
        ERROR,
        "products differ between the Product MongoDB and the Cart DB (title, price, image, seller or quantity)",
        "Every `product` row equals its Product MongoDB document (title, price, image, sellerId, quantity).",
    ),
    DriftCheck(
        "no_orphaned_products",
        CART_DB_PRODUCT,
        (Change.ORPHANED,),
        WARN,
        "Cart DB products are no longer in the Product MongoDB",
        "Every `product` row still exists in the Product MongoDB. Orphans are left in place by the sync "
        "(carts may still reference them), so this only warns.",
    ),
)

CART_CHECKS = (
    DriftCheck(
        "no_missing_carts",
        ORDER_DB_CARTS,
        (Change.MISSING,),
        ERROR,
        "carts are in the Cart DB but not in the Order MongoDB",
        "Every cart of the Cart DB has a document in the Order MongoDB's `carts`. Carts the sync rejects "
        "(e.g. an unknown product) are counted as `rejected_source_records`, not here.",
    ),
    DriftCheck(
        "no_outdated_carts",
        ORDER_DB_CARTS,
        (Change.OUTDATED, Change.CHANGED),
        ERROR,
        "Order DB carts are older than the Cart DB's or carry old product details",
        "Every Order `carts` document has the Cart DB's version, and at that version the current product "
        "title, price, image, seller and quantity (so `total` is right at checkout). Documents newer than "
        "the Cart DB are counted as `newer_in_target`, not here.",
        reports_newer_in_target=True,
    ),
    DriftCheck(
        "no_orphaned_carts",
        ORDER_DB_CARTS,
        (Change.ORPHANED,),
        WARN,
        "Order DB carts are no longer in the Cart DB",
        "Every Order `carts` document still has its cart in the Cart DB. The cart sync deletes orphans only "
        "with `prune_orphans: true`, so this only warns.",
    ),
)

VALIDATION_CHECK_KEYS = [check.key for check in PRODUCT_CHECKS + CART_CHECKS]
PRODUCT_CHECK_KEYS = [check.key for check in PRODUCT_CHECKS]
CART_CHECK_KEYS = [check.key for check in CART_CHECKS]


def drift_result(check: DriftCheck, report: SyncReport) -> dg.AssetCheckResult:
    """The result of one validation check from a read-only plan."""
    count = sum(report.counts[change] for change in check.classes)
    samples = [key for change in check.classes for key in report.samples[change]][:5]
    metadata: dict[str, Any] = {
        "count": count,
        "sample_keys": dg.MetadataValue.json(samples),
        "source_rows": report.source_rows,
        "target_rows": report.target_rows,
        "duration_s": round(report.duration_s, 3),
    }
    if len(check.classes) > 1:
        metadata.update({change.value: report.counts[change] for change in check.classes})
    if Change.MISSING in check.classes:
        metadata["rejected_source_records"] = report.counts[Change.REJECTED]
        metadata["rejected_sample_keys"] = dg.MetadataValue.json(report.samples[Change.REJECTED])
    if check.reports_newer_in_target:
        metadata["newer_in_target"] = report.counts[Change.NEWER_IN_TARGET]
    passed = count == 0
    description = f"{count} {check.what}"
    if not passed and samples:
        description += f" (e.g. {', '.join(samples[:3])})"
    return dg.AssetCheckResult(
        asset_key=check.asset,
        check_name=check.name,
        passed=passed,
        severity=check.severity,
        metadata=metadata,
        description=description,
    )


def _run_drift_checks(
    context: dg.AssetCheckExecutionContext,
    checks: tuple[DriftCheck, ...],
    spec: SyncSpec,
    endpoints: SyncEndpoints,
    batch_size: int,
) -> Iterator[dg.AssetCheckResult]:
    """Plan once, yield the selected checks' results; a database that is down is retried with backoff."""
    with retried_while_unavailable(context.op_execution_context, after_failure="nothing was checked"):
        # The sync core's own loop, dry: the same plan a real run would make, nothing written.
        report = run_sync(spec, endpoints, batch_size=batch_size, dry_run=True, log=context.log)
    selected = context.selected_asset_check_keys
    for check in checks:
        if check.key not in selected:
            continue
        result = drift_result(check, report)
        line = f"{check.asset.to_user_string()} {check.name}: {result.description}"
        if result.passed:
            context.log.info(f"PASSED {line}")
        else:
            context.log.warning(f"{check.severity.value} {line}")
        yield result


def build_product_checks(settings: SyncSettings) -> dg.AssetChecksDefinition:
    """The three product checks on `cart_db/product`, from one read-only product plan."""

    @dg.multi_asset_check(
        name="validate_products",
        specs=[check.spec for check in PRODUCT_CHECKS],
        can_subset=True,
        description="Plan the product sync read-only and report missing, stale and orphaned products.",
    )
    def validate_products(
        context: dg.AssetCheckExecutionContext, product_db: MongoResource, cart_db: PostgresResource
    ) -> Iterator[dg.AssetCheckResult]:
        yield from _run_drift_checks(
            context, PRODUCT_CHECKS, PRODUCT_SYNC, ProductSyncEndpoints(product_db, cart_db), settings.sync_batch_size
        )

    return validate_products


def build_cart_checks(settings: SyncSettings) -> dg.AssetChecksDefinition:
    """The three cart checks on `order_db/carts`, from one read-only cart plan (every user, no pruning)."""

    @dg.multi_asset_check(
        name="validate_carts",
        specs=[check.spec for check in CART_CHECKS],
        can_subset=True,
        description="Plan the cart sync read-only and report missing, outdated and orphaned carts.",
    )
    def validate_carts(
        context: dg.AssetCheckExecutionContext, cart_db: PostgresResource, order_db: MongoResource
    ) -> Iterator[dg.AssetCheckResult]:
        yield from _run_drift_checks(
            context, CART_CHECKS, CART_SYNC, CartSyncEndpoints(cart_db, order_db), settings.cart_sync_batch_size
        )

    return validate_carts


def build_reachability_checks() -> dg.AssetChecksDefinition:
    """`reachable` on each of the four tables: does its database answer a ping (on demand from the UI)."""

    @dg.multi_asset_check(
        name="databases_reachable",
        specs=[
            dg.AssetCheckSpec(
                REACHABLE,
                asset=asset,
                description=f"The `{database}` database answers a ping. Recorded by `databases_health_sensor` "
                "on HEALTH_CHECK_CRON_SCHEDULE; run it here to look now.",
            )
            for asset, database in DATABASE_OF_ASSET.items()
        ],
        can_subset=True,
        description="Ping the databases behind the selected tables.",
    )
    def databases_reachable(
        context: dg.AssetCheckExecutionContext,
        product_db: MongoResource,
        cart_db: PostgresResource,
        order_db: MongoResource,
    ) -> Iterator[dg.AssetCheckResult]:
        selected = context.selected_asset_check_keys
        wanted = {DATABASE_OF_ASSET[key.asset_key] for key in selected}
        available = {"product_db": product_db, "cart_db": cart_db, "order_db": order_db}
        health = ping_all({name: available[name] for name in wanted})
        for asset, result in health_of_tables(health):
            if dg.AssetCheckKey(asset, REACHABLE) in selected:
                context.log.info(result.summary)
                yield result.check_result(asset)

    return databases_reachable


def build_asset_checks(settings: SyncSettings) -> list[dg.AssetChecksDefinition]:
    """Every asset check of the code location."""
    return [build_product_checks(settings), build_cart_checks(settings), build_reachability_checks()]


#: Only the six validation checks (no sync, no reachability pings).
validation_job = dg.define_asset_job(
    "validation_job",
    selection=dg.AssetSelection.checks(*VALIDATION_CHECK_KEYS),
    description=(
        "Validate both syncs read-only: missing, stale and orphaned products on cart_db/product; missing, "
        "outdated and orphaned carts on order_db/carts. Failed checks show red; the run itself succeeds."
    ),
)
