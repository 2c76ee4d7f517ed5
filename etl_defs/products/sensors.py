"""`product_changes_sensor`: follow the Product MongoDB's change stream and repair the changed products within seconds.

Each tick reads the changed product ids since the token in its cursor (bounded in time and
count) and requests one keyed run of `product_sync_job` for them. How it keeps nothing
lost (history lost, failed runs, the lock): docs/automation.md.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import dagster as dg

from etl_defs.products.changes import (
    ChangeHistoryLost,
    ProductChanges,
    ResumeToken,
    current_token,
    read_changes,
    token_from_text,
    token_text,
)
from etl_defs.run_config import ProductSyncOpConfig
from etl_defs.settings import SyncSettings
from etl_defs.tags import (
    OLDEST_CHANGE_TAG,
    PRODUCT_CHANGES_TRIGGER,
    PRODUCT_HISTORY_LOST_TRIGGER,
    TRIGGER_TAG,
    run_key,
    sensor_run_tags,
)
from resources import DatabaseUnavailableError, MongoResource

SENSOR_NAME = "product_changes_sensor"
#: TRIGGER_TAG of the runs it requests: keyed repairs, and the full sync after history was lost.
CHANGES_TRIGGER = PRODUCT_CHANGES_TRIGGER
HISTORY_LOST_TRIGGER = PRODUCT_HISTORY_LOST_TRIGGER
#: The most product ids one tick puts in its run (the run config takes at most MAX_SYNC_KEYS).
MAX_KEYS_PER_RUN = 5000
#: The longest a tick reads the stream (Dagster stops a sensor evaluation after 60 s).
MAX_READ_S = 15.0
#: How many failed keyed runs one tick looks at to request their keys again.
MAX_RETRIED_RUNS = 50


@dataclass(frozen=True)
class ChangesCursor:
    """The sensor's cursor: the stream's resume token, and the last failed run whose keys were requested again."""

    token: ResumeToken | None = None
    #: The update time (POSIX seconds) of the newest failed keyed run already requested again.
    failures_until: float | None = None

    @classmethod
    def parse(cls, text: str | None) -> ChangesCursor:
        """The cursor in `text`; an empty one for none, or an unreadable one (the sensor then starts afresh)."""
        try:
            saved = json.loads(text or "{}")
            token = token_from_text(saved["token"]) if saved.get("token") else None
            failures = saved.get("failures_until")
            return cls(token=token, failures_until=float(failures) if failures is not None else None)
        except (ValueError, TypeError, KeyError, AttributeError):
            return cls()

    def text(self) -> str:
        token = token_text(self.token) if self.token is not None else None
        return json.dumps({"token": token, "failures_until": self.failures_until}, sort_keys=True)


def failed_keyed_runs(
    instance: dg.DagsterInstance, job_name: str, after: float | None, room: int
) -> tuple[list[dg.DagsterRun], set[str], float | None]:
    """Keyed runs this sensor requested that failed since `after` (a database gone, the lock held, or their
    worker found dead by run monitoring), oldest first, as many as their keys fit in `room`: (the runs, their
    keys, the update time of the last one taken)."""
    records = instance.get_run_records(
        filters=dg.RunsFilter(
            job_name=job_name,
            statuses=[dg.DagsterRunStatus.FAILURE],
            tags={TRIGGER_TAG: CHANGES_TRIGGER},
            updated_after=datetime.fromtimestamp(after, UTC) if after is not None else None,
        ),
        limit=MAX_RETRIED_RUNS,
        order_by="update_timestamp",
        ascending=True,
    )
    runs: list[dg.DagsterRun] = []
    keys: set[str] = set()
    until = after
    for record in records:
        run_keys = set((record.dagster_run.run_config or {}).get("keys") or ())
        if runs and len(keys | run_keys) > room:
            break
        runs.append(record.dagster_run)
        keys |= run_keys
        until = record.update_timestamp.timestamp()
    return runs, keys, until


def keyed_run_request(changes: ProductChanges, keys: set[str], retried: list[dg.DagsterRun]) -> dg.RunRequest:
    """One keyed run for `keys`, its run key derived from the token span (and the runs it retries),
    so a tick evaluated twice never launches twice."""
    oldest = min(
        [at for at in [changes.oldest, *(_oldest_change(run) for run in retried)] if at is not None],
        default=datetime.now(UTC),
    )
    return dg.RunRequest(
        run_key=run_key(
            CHANGES_TRIGGER, token_text(changes.start), token_text(changes.end), *sorted(r.run_id for r in retried)
        ),
        run_config=ProductSyncOpConfig.launch_config(keys=sorted(keys)),
        tags={**sensor_run_tags(CHANGES_TRIGGER, keyed=True), OLDEST_CHANGE_TAG: oldest.isoformat()},
    )


def _oldest_change(run: dg.DagsterRun) -> datetime | None:
    """The oldest change a failed run was requested for (its keys are requested again: the lag counts from it)."""
    try:
        return datetime.fromisoformat(run.tags[OLDEST_CHANGE_TAG])
    except (KeyError, ValueError):
        return None


def build_product_changes_sensor(settings: SyncSettings, product_sync_job: dg.JobDefinition) -> dg.SensorDefinition:
    """`product_changes_sensor`: a keyed `product_sync_job` run for the products changed since its last tick."""
    interval = settings.product_cdc_interval_seconds

    @dg.sensor(
        name=SENSOR_NAME,
        job=product_sync_job,
        minimum_interval_seconds=interval,
        default_status=settings.default_status(dg.DefaultSensorStatus),
        description=(
            f"Every {interval}s (PRODUCT_CDC_INTERVAL_SECONDS), read the Product MongoDB's change stream on products "
            f"and request a product_sync_job run for the changed ids (at most {MAX_KEYS_PER_RUN} a run); when the "
            "stream's history is lost, request a full product_sync_job."
        ),
    )
    def product_changes_sensor(context: dg.SensorEvaluationContext, product_db: MongoResource) -> dg.SensorResult:
        cursor = ChangesCursor.parse(context.cursor)
        try:
            if cursor.token is None and context.cursor:
                unreadable = ChangeHistoryLost(f"the sensor cursor cannot be read ({context.cursor[:80]!r})")
                return _history_lost(context, product_db, cursor, unreadable)
            if cursor.token is None:
                token = current_token(product_db)
                return dg.SensorResult(
                    skip_reason="first tick: following the products change stream from now on (a full "
                    "product_sync_job repairs anything older)",
                    cursor=ChangesCursor(token=token, failures_until=time.time()).text(),
                )
            retried, retried_keys, failures_until = failed_keyed_runs(
                context.instance, product_sync_job.name, cursor.failures_until, MAX_KEYS_PER_RUN
            )
            room = MAX_KEYS_PER_RUN - len(retried_keys)
            changes = ProductChanges(start=cursor.token, end=cursor.token)  # the keys of failed runs fill this run
            if room > 0:
                try:
                    changes = read_changes(product_db, cursor.token, max_keys=room, max_seconds=MAX_READ_S)
                except ChangeHistoryLost as lost:
                    return _history_lost(context, product_db, cursor, lost)
        except DatabaseUnavailableError as error:
            return dg.SensorResult(
                skip_reason=f"{error}; the next tick resumes from the saved token, so no change is missed",
                cursor=context.cursor,
            )
        for foreign in changes.foreign_ids:
            context.log.warning(f"product with _id {foreign} changed: not an ObjectId, so no sync can take it")
        next_cursor = ChangesCursor(token=changes.end, failures_until=failures_until).text()
        keys = changes.keys | retried_keys
        if not keys:
            return dg.SensorResult(
                skip_reason=f"no product changed since the last tick ({changes.events} events read)",
                cursor=next_cursor,
            )
        if retried:
            context.log.info(
                f"requesting again the {len(retried_keys)} keys of failed runs "
                + ", ".join(run.run_id for run in retried)
            )
        more = "" if changes.caught_up else f"; more changes wait (bound: {MAX_KEYS_PER_RUN} keys, {MAX_READ_S:.0f}s)"
        context.log.info(
            f"{changes.events} change events on {len(changes.keys)} products since the last tick: "
            f"requesting a sync of {len(keys)} products{more}"
        )
        return dg.SensorResult(run_requests=[keyed_run_request(changes, keys, retried)], cursor=next_cursor)

    return product_changes_sensor


def _history_lost(
    context: dg.SensorEvaluationContext, product_db: MongoResource, cursor: ChangesCursor, lost: ChangeHistoryLost
) -> dg.SensorResult:
    """A fresh token first, then one full sync: whatever changed before the token is covered by it."""
    token = current_token(product_db)
    context.log.warning(f"{lost}; taking a fresh token and requesting a full product_sync_job")
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key=run_key(HISTORY_LOST_TRIGGER, token_text(token)),
                run_config=ProductSyncOpConfig.launch_config(),
                tags={TRIGGER_TAG: HISTORY_LOST_TRIGGER},
            )
        ],
        cursor=ChangesCursor(token=token, failures_until=cursor.failures_until).text(),
    )
