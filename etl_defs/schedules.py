"""Schedules: the old service's node-cron jobs, each tick skipped while its sync is in flight or a database is down.

The skip rules and default status, explained: docs/automation.md.
"""

from collections.abc import Sequence

import dagster as dg

from etl_defs.health import ping_all
from etl_defs.settings import SyncSettings
from etl_defs.tags import KEYED_REPAIR_TRIGGERS, TRIGGER_TAG
from resources import MongoResource, PostgresResource

#: Statuses of a run that has not finished yet.
IN_FLIGHT_STATUSES = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


#: Unfinished runs looked at per job, at most, for one that is not a keyed repair.
_IN_FLIGHT_LOOKBACK = 20


def in_flight_run(instance: dg.DagsterInstance, job_names: Sequence[str]) -> dg.DagsterRun | None:
    """An unfinished run of one of `job_names` (the first name's first), if there is one.

    Keyed repairs a change sensor requested do not count: they are short and frequent, and
    a whole-table sync, the safety net, must not be skipped for them (the run queue and the
    advisory lock still keep the two from writing at once).
    """
    for job_name in job_names:
        runs = instance.get_runs(
            filters=dg.RunsFilter(job_name=job_name, statuses=IN_FLIGHT_STATUSES), limit=_IN_FLIGHT_LOOKBACK
        )
        for run in runs:
            if run.tags.get(TRIGGER_TAG) not in KEYED_REPAIR_TRIGGERS:
                return run
    return None


def sync_tick(
    context: dg.ScheduleEvaluationContext,
    jobs: Sequence[dg.JobDefinition],
    databases: dict[str, MongoResource | PostgresResource],
) -> dg.RunRequest | dg.SkipReason:
    """A run of `jobs[0]`, unless a run of one of `jobs` is in flight or one of `databases` is down."""
    running = in_flight_run(context.instance, [job.name for job in jobs])
    if running is not None:
        return dg.SkipReason(
            f"{running.job_name} run {running.run_id} is still {running.status.value.lower()}; "
            f"{jobs[0].name} waits for the next tick"
        )
    down = [health for health in ping_all(databases).values() if not health.reachable]
    if down:
        reasons = "; ".join(health.summary for health in down)
        return dg.SkipReason(f"not starting a sync against a database that is down: {reasons}")
    return dg.RunRequest(tags={TRIGGER_TAG: "schedule"})


def build_product_sync_schedule(
    settings: SyncSettings, product_sync_job: dg.JobDefinition, full_sync_job: dg.JobDefinition
) -> dg.ScheduleDefinition:
    """`product_sync_schedule`: `product_sync_job` on SYNC_CRON_SCHEDULE in TIMEZONE."""

    @dg.schedule(
        name="product_sync_schedule",
        cron_schedule=settings.sync_cron_schedule,
        execution_timezone=settings.timezone,
        job=product_sync_job,
        default_status=settings.default_status(dg.DefaultScheduleStatus),
        description=(
            f"product_sync_job at '{settings.sync_cron_schedule}' ({settings.timezone}), SYNC_CRON_SCHEDULE; skipped "
            "while a product sync is still going or a database it needs is down."
        ),
    )
    def product_sync_schedule(
        context: dg.ScheduleEvaluationContext, product_db: MongoResource, cart_db: PostgresResource
    ) -> dg.RunRequest | dg.SkipReason:
        databases = {"product_db": product_db, "cart_db": cart_db}
        return sync_tick(context, [product_sync_job, full_sync_job], databases)

    return product_sync_schedule


def build_cart_sync_schedule(
    settings: SyncSettings, cart_sync_job: dg.JobDefinition, full_sync_job: dg.JobDefinition
) -> dg.ScheduleDefinition:
    """`cart_sync_schedule`: `cart_sync_job` on CART_SYNC_CRON_SCHEDULE in TIMEZONE."""

    @dg.schedule(
        name="cart_sync_schedule",
        cron_schedule=settings.cart_sync_cron_schedule,
        execution_timezone=settings.timezone,
        job=cart_sync_job,
        default_status=settings.default_status(dg.DefaultScheduleStatus),
        description=(
            f"cart_sync_job at '{settings.cart_sync_cron_schedule}' ({settings.timezone}), CART_SYNC_CRON_SCHEDULE; "
            "skipped while a cart sync is still going or a database it needs is down."
        ),
    )
    def cart_sync_schedule(
        context: dg.ScheduleEvaluationContext, cart_db: PostgresResource, order_db: MongoResource
    ) -> dg.RunRequest | dg.SkipReason:
        databases = {"cart_db": cart_db, "order_db": order_db}
        return sync_tick(context, [cart_sync_job, full_sync_job], databases)

    return cart_sync_schedule


def build_schedules(
    settings: SyncSettings,
    product_sync_job: dg.JobDefinition,
    cart_sync_job: dg.JobDefinition,
    full_sync_job: dg.JobDefinition,
) -> list[dg.ScheduleDefinition]:
    """Both sync schedules; either waits while `full_sync_job` runs."""
    return [
        build_product_sync_schedule(settings, product_sync_job, full_sync_job),
        build_cart_sync_schedule(settings, cart_sync_job, full_sync_job),
    ]
