"""Sensors: database health (the old health cron and `/health` routes) and validation after each sync.

`databases_health_sensor` pings the Product MongoDB, the Cart PostgreSQL and the Order
MongoDB on HEALTH_CHECK_CRON_SCHEDULE and records, on each of the four table assets,
- an `AssetObservation` with `reachable` (1/0) and `latency_ms` (plotted by the UI), and
- a result of the asset's `reachable` check: red while its database is down, green again
  once it answers.
It never raises for a database that is down and never requests a run, so it cannot
start a sync against a database that is down (the sync schedules ping before they start
a run, too).

Why a sensor on a cron-aligned cadence rather than a schedule or a fixed interval: a
schedule can only request runs, while the health check must record observations and check
results without starting a run, which only a sensor can (`SensorResult(asset_events=...)`).
A `minimum_interval_seconds` derived from the cron would drift from the cron's wall-clock
times, ignore TIMEZONE and get irregular crons wrong (`0 9 * * 1-5`). So the sensor is
evaluated every 30 s and pings only when a new HEALTH_CHECK_CRON_SCHEDULE slot (in
TIMEZONE) has passed since the one in its cursor; the other ticks are skipped with the time
of the next check. Its first evaluation pings at once, so a fresh deployment shows the
databases' state without waiting for the first slot.

`validate_after_sync_sensor` requests `validation_job` after every successful real sync
(not after dry runs, which changed nothing): the product checks after `product_sync_job`,
the cart checks after `cart_sync_job`, all six after `full_sync_job`. Dagster's run status
sensors act on at most one run per tick (any returned RunRequest or SkipReason ends the
tick), so a backlog of finished syncs is worked off one per 30 s tick.
"""

from collections.abc import Sequence
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import dagster as dg
from croniter import croniter
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from etl_defs.checks import (
    CART_CHECK_KEYS,
    PRODUCT_CHECK_KEYS,
    REACHABLE,
    VALIDATION_CHECK_KEYS,
    Health,
    ping_all,
    reachability_results,
)
from etl_defs.settings import SyncSettings
from resources import MongoResource, PostgresResource

#: How often the daemon evaluates the health sensor; pings happen only on cron slots.
HEALTH_SENSOR_TICK_S = 30

#: The validation checks requested after a successful run of each sync job.
CHECKS_AFTER_JOB = {
    "product_sync_job": PRODUCT_CHECK_KEYS,
    "cart_sync_job": CART_CHECK_KEYS,
    "full_sync_job": VALIDATION_CHECK_KEYS,
}
VALIDATES_RUN_TAG = "etl-sync/validates-run"


def health_check_due(cron: str, timezone: str, cursor: str | None, now: datetime) -> tuple[bool, datetime, datetime]:
    """Whether a ping is due at `now`: (due, the latest cron slot <= now, the next slot).

    `cursor` is the POSIX timestamp of the slot last checked (None: never checked, due now).
    """
    local_now = now.astimezone(ZoneInfo(timezone))
    # croniter's get_prev is strictly before its start; a second later makes "exactly on a slot" count.
    slot = croniter(cron, local_now + timedelta(seconds=1)).get_prev(datetime)
    following = croniter(cron, slot).get_next(datetime)
    due = cursor is None or slot.timestamp() > float(cursor)
    return due, slot, following


def health_events(health: dict[str, Health]) -> list[dg.AssetObservation | dg.AssetCheckEvaluation]:
    """An observation and a `reachable` check result on each table, from its database's ping."""
    events: list[dg.AssetObservation | dg.AssetCheckEvaluation] = []
    for asset, result in reachability_results(health):
        events.append(dg.AssetObservation(asset_key=asset, metadata=result.metadata(), description=result.summary))
        events.append(
            dg.AssetCheckEvaluation(
                asset_key=asset,
                check_name=REACHABLE,
                passed=result.reachable,
                severity=dg.AssetCheckSeverity.ERROR,
                metadata=result.metadata(),
                description=result.summary,
            )
        )
    return events


def build_databases_health_sensor(settings: SyncSettings) -> dg.SensorDefinition:
    """`databases_health_sensor`: ping the three databases on HEALTH_CHECK_CRON_SCHEDULE in TIMEZONE."""
    cron, timezone = settings.health_check_cron_schedule, settings.timezone

    @dg.sensor(
        name="databases_health_sensor",
        minimum_interval_seconds=HEALTH_SENSOR_TICK_S,
        default_status=dg.DefaultSensorStatus.RUNNING if settings.enable_scheduler else dg.DefaultSensorStatus.STOPPED,
        description=(
            f"Ping the Product MongoDB, the Cart PostgreSQL and the Order MongoDB at '{cron}' ({timezone}), "
            "HEALTH_CHECK_CRON_SCHEDULE; record reachability and latency on the table assets. Never starts a run."
        ),
    )
    def databases_health_sensor(
        context: dg.SensorEvaluationContext,
        product_db: MongoResource,
        cart_db: PostgresResource,
        order_db: MongoResource,
    ) -> dg.SensorResult:
        due, slot, following = health_check_due(cron, timezone, context.cursor, datetime.now(ZoneInfo(timezone)))
        if not due:
            return dg.SensorResult(skip_reason=f"next health check at {following.isoformat()} ('{cron}', {timezone})")
        health = ping_all({"product_db": product_db, "cart_db": cart_db, "order_db": order_db})
        for result in health.values():
            (context.log.info if result.reachable else context.log.warning)(result.summary)
        down = [result for result in health.values() if not result.reachable]
        verdict = (
            f"{len(down)} of {len(health)} databases down: " + "; ".join(r.summary for r in down)
            if down
            else "all databases answered: " + ", ".join(f"{r.database} {r.latency_ms:.1f} ms" for r in health.values())
        )
        return dg.SensorResult(
            asset_events=health_events(health),
            cursor=str(slot.timestamp()),
            skip_reason=f"health check only, it never starts runs; {verdict}",
        )

    return databases_health_sensor


def build_validate_after_sync_sensor(
    sync_jobs: Sequence[dg.JobDefinition], validation_job: UnresolvedAssetJobDefinition
) -> dg.RunStatusSensorDefinition:
    """`validate_after_sync_sensor`: request `validation_job` after each successful real sync."""

    @dg.run_status_sensor(
        name="validate_after_sync_sensor",
        run_status=dg.DagsterRunStatus.SUCCESS,
        monitored_jobs=list(sync_jobs),
        request_job=validation_job,
        # It only follows syncs someone or something started, so it runs whatever ENABLE_SCHEDULER says.
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="After each successful sync that was not a dry run, run that sync's validation checks.",
    )
    def validate_after_sync_sensor(context: dg.RunStatusSensorContext) -> dg.RunRequest | dg.SkipReason:
        run = context.dagster_run
        if run.run_config.get("dry_run"):
            return dg.SkipReason(f"{run.job_name} run {run.run_id} was a dry run: nothing changed, nothing to validate")
        return dg.RunRequest(
            run_key=f"validate-after-{run.run_id}",
            asset_check_keys=CHECKS_AFTER_JOB.get(run.job_name, VALIDATION_CHECK_KEYS),
            tags={VALIDATES_RUN_TAG: run.run_id, "etl-sync/validates-job": run.job_name},
        )

    return validate_after_sync_sensor


def build_sensors(
    settings: SyncSettings, sync_jobs: Sequence[dg.JobDefinition], validation_job: UnresolvedAssetJobDefinition
) -> list[dg.SensorDefinition]:
    """The health sensor and the validation-after-sync sensor."""
    return [build_databases_health_sensor(settings), build_validate_after_sync_sensor(sync_jobs, validation_job)]
