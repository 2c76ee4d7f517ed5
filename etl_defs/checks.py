"""Asset checks: drift validation of both syncs (the old `/validate` endpoint) and reachability.

The drift checks run the sync core dry, so validation cannot drift from the sync; why they
are not blocking and how severities are chosen: docs/automation.md.
"""

from collections.abc import Iterator
from typing import Any

import dagster as dg

from etl_defs.assets import CART_DB_KEY, DATABASE_OF_ASSET, ORDER_DB_KEY, PRODUCT_DB_KEY
from etl_defs.carts.pipeline import CART_PIPELINE
from etl_defs.health import REACHABLE, health_of_tables, ping_all
from etl_defs.pipeline import DriftCheck, SyncPipeline
from etl_defs.pipelines import PIPELINES
from etl_defs.products.pipeline import PRODUCT_PIPELINE
from etl_defs.settings import SyncSettings
from etl_defs.steps.retries import retried_while_unavailable
from etl_defs.sync import WHOLE_TABLE, Change, SyncEndpoints, SyncReport, run_sync
from resources import MongoResource, PostgresResource

#: The drift checks of every pipeline, and their keys.
DRIFT_CHECKS = tuple(check for pipeline in PIPELINES for check in pipeline.checks)
VALIDATION_CHECK_KEYS = [check.key for check in DRIFT_CHECKS]
PRODUCT_CHECK_KEYS = [check.key for check in PRODUCT_PIPELINE.checks]
CART_CHECK_KEYS = [check.key for check in CART_PIPELINE.checks]


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
    context: dg.AssetCheckExecutionContext, pipeline: SyncPipeline, endpoints: SyncEndpoints, batch_size: int
) -> Iterator[dg.AssetCheckResult]:
    """Plan once, yield the selected checks' results; a database that is down is retried with backoff."""
    with retried_while_unavailable(context.op_execution_context, after_failure="nothing was checked"):
        # The sync core's own loop, dry: the same plan a real run would make, nothing written.
        report = run_sync(pipeline.spec, endpoints, batch_size=batch_size, dry_run=True, log=context.log)
    selected = context.selected_asset_check_keys
    for check in pipeline.checks:
        if check.key not in selected:
            continue
        result = drift_result(check, report)
        line = f"{check.asset.to_user_string()} {check.name}: {result.description}"
        if result.passed:
            context.log.info(f"PASSED {line}")
        else:
            context.log.warning(f"{check.severity.value} {line}")
        yield result


def build_drift_checks(pipeline: SyncPipeline, settings: SyncSettings) -> dg.AssetChecksDefinition:
    """`validate_<name>`: the pipeline's drift checks on its target, from one read-only plan of its whole table."""
    keys = pipeline.databases

    @dg.multi_asset_check(
        name=f"validate_{pipeline.name}",
        specs=[check.spec for check in pipeline.checks],
        can_subset=True,
        required_resource_keys=set(keys),
        description=pipeline.descriptions.checks,
    )
    def validate(context: dg.AssetCheckExecutionContext) -> Iterator[dg.AssetCheckResult]:
        databases = {key: getattr(context.resources, key) for key in keys}
        endpoints = pipeline.endpoints(databases, WHOLE_TABLE, None)
        yield from _run_drift_checks(context, pipeline, endpoints, pipeline.batch_size(settings))

    return validate


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
        available = {PRODUCT_DB_KEY: product_db, CART_DB_KEY: cart_db, ORDER_DB_KEY: order_db}
        health = ping_all({name: available[name] for name in wanted})
        for asset, result in health_of_tables(health):
            if dg.AssetCheckKey(asset, REACHABLE) in selected:
                context.log.info(result.summary)
                yield result.check_result(asset)

    return databases_reachable


def build_asset_checks(settings: SyncSettings) -> list[dg.AssetChecksDefinition]:
    """Every asset check of the code location."""
    return [*(build_drift_checks(pipeline, settings) for pipeline in PIPELINES), build_reachability_checks()]


#: Only the six validation checks (no sync, no reachability pings).
validation_job = dg.define_asset_job(
    "validation_job",
    selection=dg.AssetSelection.checks(*VALIDATION_CHECK_KEYS),
    description=(
        "Validate both syncs read-only: missing, stale and orphaned products on cart_db/product; missing, "
        "outdated and orphaned carts on order_db/carts. Failed checks show red; the run itself succeeds."
    ),
)
