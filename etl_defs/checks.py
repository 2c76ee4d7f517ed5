"""Asset checks: validation of both syncs (the old `/validate` endpoint) and database reachability.

Validation runs the shared sync core as a dry run (`run_sync(dry_run=True)`: nothing is
ever written, the endpoints' `write` is never called) and turns its classes into check results
on the sync's target asset:

- `cart_db/product`: `no_missing_products`, `no_stale_products`, `no_orphaned_products`;
- `order_db/carts`: `no_missing_carts`, `no_outdated_carts`, `no_orphaned_carts`.

One plan serves the three checks of a pipeline (a `multi_asset_check`), so each table is
read once. Memory is one batch of each side plus counts and at most five sample keys per
class, whatever the table sizes.

Severity: missing and stale (changed or outdated) are ERROR, orphans are WARN (a product
or cart deleted at the source may still be referenced, and the syncs deliberately leave
orphans alone unless asked to prune).

The checks are not blocking (`blocking=False`, set explicitly). They run in their own run
(`validation_job`, on demand or requested by `validate_after_sync_sensor` after a real
sync), never inside a sync run, so there is nothing downstream for a blocking check to
stop; and a failed check means "the databases have drifted", which is a finding to show
in red, not a failure of the job that looked: the validation run itself succeeds and
`dagster job execute -j validation_job` exits 0 when it could look, non-zero only when it
could not (a database down).

`<asset>/reachable` checks say whether each table's database answers a ping. The health
sensor (`etl_defs.sensors`) records their results on its cadence; they can also be run
on demand from the UI.
"""

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from etl_defs.assets import CART_DB_CART, CART_DB_PRODUCT, ORDER_DB_CARTS, PRODUCT_DB_PRODUCTS
from etl_defs.carts.endpoints import CartSyncEndpoints
from etl_defs.carts.ops import CART_SYNC
from etl_defs.products.endpoints import ProductSyncEndpoints
from etl_defs.products.ops import PRODUCT_SYNC
from etl_defs.settings import SyncSettings
from etl_defs.sync import Change, SyncEndpoints, SyncReport, SyncSpec, run_sync
from etl_defs.sync_op import retried_while_unavailable
from resources import DatabaseUnavailableError, MongoResource, PostgresResource

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
        "target_rows": sum(
            report.counts[c]
            for c in (Change.CHANGED, Change.OUTDATED, Change.UNCHANGED, Change.ORPHANED, Change.NEWER_IN_TARGET)
        ),
        "duration_s": round(report.duration_s, 3),
    }
    if len(check.classes) > 1:
        metadata.update({change.value: report.counts[change] for change in check.classes})
    if Change.MISSING in check.classes:
        metadata["rejected_source_records"] = report.counts[Change.REJECTED]
        metadata["rejected_sample_keys"] = dg.MetadataValue.json(report.samples[Change.REJECTED])
    if Change.OUTDATED in check.classes and check.asset == ORDER_DB_CARTS:
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


# ----- reachability -----

#: Which database (resource key) holds each table.
DATABASE_OF_ASSET = {
    PRODUCT_DB_PRODUCTS: "product_db",
    CART_DB_PRODUCT: "cart_db",
    CART_DB_CART: "cart_db",
    ORDER_DB_CARTS: "order_db",
}
REACHABLE = "reachable"
REACHABILITY_CHECK_KEYS = [dg.AssetCheckKey(asset, REACHABLE) for asset in DATABASE_OF_ASSET]


@dataclass(frozen=True)
class Health:
    """One database's answer to a ping."""

    database: str  # the resource key: product_db, cart_db, order_db
    where: str  # label and address, no secrets
    reachable: bool
    latency_ms: float | None
    error: str | None = None

    def metadata(self) -> dict[str, Any]:
        metadata: dict[str, Any] = {"database": self.where, "reachable": int(self.reachable)}
        if self.latency_ms is not None:
            metadata["latency_ms"] = self.latency_ms
        if self.error is not None:
            metadata["error"] = self.error
        return metadata

    @property
    def summary(self) -> str:
        if self.reachable:
            return f"{self.where} answered in {self.latency_ms:.1f} ms"
        return f"{self.where} is down: {self.error}"


def ping(name: str, database: MongoResource | PostgresResource) -> Health:
    """Ping one database; never raises for a database that is down."""
    try:
        seconds = database.ping()
    except DatabaseUnavailableError as error:
        return Health(name, database.where, reachable=False, latency_ms=None, error=str(error))
    except Exception as error:  # noqa: BLE001 - a health probe reports every failure, it never raises
        return Health(name, database.where, False, None, f"{type(error).__name__}: {str(error)[:300]}")
    return Health(name, database.where, reachable=True, latency_ms=round(seconds * 1000, 2))


def ping_all(databases: dict[str, MongoResource | PostgresResource]) -> dict[str, Health]:
    """Ping every database at once, so one that hangs until its timeout does not delay the others."""
    with ThreadPoolExecutor(max_workers=len(databases)) as pool:
        futures = {name: pool.submit(ping, name, db) for name, db in databases.items()}
        return {name: future.result() for name, future in futures.items()}


def reachability_results(health: dict[str, Health]) -> Iterator[tuple[dg.AssetKey, Health]]:
    """Each table with the health of the database that holds it."""
    for asset, database in DATABASE_OF_ASSET.items():
        if database in health:
            yield asset, health[database]


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
        for asset, result in reachability_results(health):
            if dg.AssetCheckKey(asset, REACHABLE) in selected:
                context.log.info(result.summary)
                yield dg.AssetCheckResult(
                    asset_key=asset,
                    check_name=REACHABLE,
                    passed=result.reachable,
                    severity=ERROR,
                    metadata=result.metadata(),
                    description=result.summary,
                )

    return databases_reachable


def build_asset_checks(settings: SyncSettings) -> list[dg.AssetChecksDefinition]:
    """Every asset check of the code location."""
    return [build_product_checks(settings), build_cart_checks(settings), build_reachability_checks()]


def build_validation_job() -> UnresolvedAssetJobDefinition:
    """`validation_job`: only the six validation checks (no sync, no reachability pings)."""
    return dg.define_asset_job(
        "validation_job",
        selection=dg.AssetSelection.checks(*VALIDATION_CHECK_KEYS),
        description=(
            "Validate both syncs read-only: missing, stale and orphaned products on cart_db/product; missing, "
            "outdated and orphaned carts on order_db/carts. Failed checks show red; the run itself succeeds."
        ),
    )
