"""Sensors: database health (the old health cron and `/health` routes), validation after each sync, and the
change sensors (in `etl_defs.products.sensors` and `etl_defs.carts.sensors`).

Why a cron-aligned sensor for health, and materializations rather than run status for
validation: docs/automation.md.
"""

import json
from collections.abc import Mapping
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import dagster as dg
from croniter import croniter

from etl_defs.assets import CART_DB_KEY, ORDER_DB_KEY, PRODUCT_DB_KEY
from etl_defs.checks import validation_job
from etl_defs.health import Health, health_of_tables, ping_all
from etl_defs.pipelines import PIPELINES
from etl_defs.settings import SyncSettings
from etl_defs.sync import KEYS_SCOPE, SCOPE_METADATA_KEY
from etl_defs.tags import VALIDATES_JOB_TAG, VALIDATES_RUN_TAG
from resources import MongoResource, PostgresResource

#: How often the daemon evaluates the health sensor; pings happen only on cron slots.
HEALTH_SENSOR_TICK_S = 30

#: How often the daemon looks for new materializations of the sync targets.
VALIDATE_SENSOR_TICK_S = 30

#: The validation checks of each sync target, requested after each of its materializations.
CHECKS_OF_TARGET = {pipeline.asset: [check.key for check in pipeline.checks] for pipeline in PIPELINES}


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
    for asset, result in health_of_tables(health):
        events.append(dg.AssetObservation(asset_key=asset, metadata=result.metadata(), description=result.summary))
        events.append(result.check_result(asset, dg.AssetCheckEvaluation))
    return events


def build_databases_health_sensor(settings: SyncSettings) -> dg.SensorDefinition:
    """`databases_health_sensor`: ping the three databases on HEALTH_CHECK_CRON_SCHEDULE in TIMEZONE."""
    cron, timezone = settings.health_check_cron_schedule, settings.timezone

    @dg.sensor(
        name="databases_health_sensor",
        minimum_interval_seconds=HEALTH_SENSOR_TICK_S,
        default_status=settings.default_status(dg.DefaultSensorStatus),
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
        health = ping_all({PRODUCT_DB_KEY: product_db, CART_DB_KEY: cart_db, ORDER_DB_KEY: order_db})
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


def _validated_up_to(cursor: str | None) -> dict[str, int]:
    """The sensor cursor: per target (`cart_db/product`), the storage id of the last materialization validated.

    An unreadable cursor (none yet, or one of an older version of this sensor) starts afresh.
    """
    try:
        saved = json.loads(cursor or "{}")
    except json.JSONDecodeError:
        return {}
    return {key: value for key, value in saved.items() if isinstance(value, int)} if isinstance(saved, dict) else {}


#: Materializations read per page, looking for the newest whole-table sync.
_MATERIALIZATION_PAGE = 100


def _newest_whole_table_sync(
    instance: dg.DagsterInstance, target: dg.AssetKey, after: int | None
) -> tuple[dg.EventLogRecord | None, int | None]:
    """The newest materialization of `target` after storage id `after` by a sync of the whole
    table (or one user's carts), and the newest storage id seen at all (None: nothing new).

    A keyed sync (change capture) repaired a handful of keys: validating the whole table after
    each would cost O(table) per change, so those are left to the next whole-table sync.
    """
    newest_id: int | None = None
    page_cursor: str | None = None
    while True:
        page = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=target, after_storage_id=after),
            limit=_MATERIALIZATION_PAGE,
            cursor=page_cursor,
        )  # newest first
        for record in page.records:
            newest_id = record.storage_id if newest_id is None else newest_id
            materialization = record.asset_materialization
            scope = materialization.metadata.get(SCOPE_METADATA_KEY) if materialization is not None else None
            if scope is None or getattr(scope, "value", scope) != KEYS_SCOPE:
                return record, newest_id
        if not page.has_more:
            return None, newest_id
        page_cursor = page.cursor


def build_validate_after_sync_sensor() -> dg.SensorDefinition:
    """`validate_after_sync_sensor`: request a table's checks after each new materialization of it."""

    @dg.sensor(
        name="validate_after_sync_sensor",
        job=validation_job,
        minimum_interval_seconds=VALIDATE_SENSOR_TICK_S,
        # It only follows syncs someone or something started, so it runs whatever ENABLE_SCHEDULER says.
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "After each real sync (UI, schedule or terminal; not dry runs), run the validation checks of the table "
            "it wrote: it follows the materializations of cart_db/product and order_db/carts."
        ),
    )
    def validate_after_sync_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        validated = _validated_up_to(context.cursor)
        requests = []
        for target, check_keys in CHECKS_OF_TARGET.items():
            name = target.to_user_string()
            record, newest_id = _newest_whole_table_sync(context.instance, target, validated.get(name))
            if newest_id is not None:
                validated[name] = newest_id
            if record is None:
                continue
            job_name = record.event_log_entry.job_name or "?"
            context.log.info(f"{name} was materialized by {job_name} run {record.run_id}: validating it")
            requests.append(
                dg.RunRequest(
                    run_key=f"validate-{target.to_python_identifier()}-after-{record.run_id}",
                    asset_check_keys=check_keys,
                    tags={VALIDATES_RUN_TAG: record.run_id, VALIDATES_JOB_TAG: job_name},
                )
            )
        if not requests:
            return dg.SensorResult(
                skip_reason="no sync wrote "
                + " or ".join(t.to_user_string() for t in CHECKS_OF_TARGET)
                + " since the last validation (keyed syncs aside: they are left to the next whole-table one)",
                cursor=json.dumps(validated, sort_keys=True),
            )
        return dg.SensorResult(run_requests=requests, cursor=json.dumps(validated, sort_keys=True))

    return validate_after_sync_sensor


def build_sensors(settings: SyncSettings, sync_jobs: Mapping[str, dg.JobDefinition]) -> list[dg.SensorDefinition]:
    """The health sensor, the validation-after-sync sensor and each pipeline's change sensor (`sync_jobs`: each
    pipeline's job, by pipeline name)."""
    return [
        build_databases_health_sensor(settings),
        build_validate_after_sync_sensor(),
        *(pipeline.changes_sensor(settings, sync_jobs[pipeline.name]) for pipeline in PIPELINES),
    ]
