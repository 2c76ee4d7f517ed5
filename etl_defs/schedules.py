"""Schedules: the old service's node-cron jobs.

`product_sync_schedule` runs `product_sync_job` on SYNC_CRON_SCHEDULE and
`cart_sync_schedule` runs `cart_sync_job` on CART_SYNC_CRON_SCHEDULE, both in TIMEZONE.
They are RUNNING from the start when ENABLE_SCHEDULER is true and STOPPED otherwise
(`default_status`; an operator can still start or stop them in the UI or with
`dagster schedule start|stop`, which then wins over the default).

A tick is skipped, with the reason shown on the tick, when
- a run of the same sync is still going (queued, not started, starting, started or
  canceling; the old service's `isRunning` flag). `full_sync_job` runs both syncs under
  the same advisory locks, so one of those in flight also skips both schedules;
- a database the sync needs does not answer a ping: the run would only fail, and the
  health sensor already shows that database red. The next tick after recovery runs.
"""

from collections.abc import Sequence

import dagster as dg

from etl_defs.checks import ping_all
from etl_defs.settings import SyncSettings
from resources import MongoResource, PostgresResource

FULL_SYNC_JOB = "full_sync_job"

#: Statuses of a run that has not finished yet.
IN_FLIGHT_STATUSES = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


def _default_status(settings: SyncSettings) -> dg.DefaultScheduleStatus:
    return dg.DefaultScheduleStatus.RUNNING if settings.enable_scheduler else dg.DefaultScheduleStatus.STOPPED


def in_flight_run(instance: dg.DagsterInstance, job_names: Sequence[str]) -> dg.DagsterRun | None:
    """An unfinished run of one of `job_names` (the first name's first), if there is one."""
    for job_name in job_names:
        runs = instance.get_runs(filters=dg.RunsFilter(job_name=job_name, statuses=IN_FLIGHT_STATUSES), limit=1)
        if runs:
            return runs[0]
    return None


def _tick(
    context: dg.ScheduleEvaluationContext,
    job_name: str,
    databases: dict[str, MongoResource | PostgresResource],
) -> dg.RunRequest | dg.SkipReason:
    running = in_flight_run(context.instance, [job_name, FULL_SYNC_JOB])
    if running is not None:
        return dg.SkipReason(
            f"{running.job_name} run {running.run_id} is still {running.status.value.lower()}; "
            f"{job_name} waits for the next tick"
        )
    down = [health for health in ping_all(databases).values() if not health.reachable]
    if down:
        reasons = "; ".join(health.summary for health in down)
        return dg.SkipReason(f"not starting a sync against a database that is down: {reasons}")
    return dg.RunRequest(tags={"etl-sync/trigger": "schedule"})


def build_product_sync_schedule(settings: SyncSettings, product_sync_job: dg.JobDefinition) -> dg.ScheduleDefinition:
    """`product_sync_schedule`: `product_sync_job` on SYNC_CRON_SCHEDULE in TIMEZONE."""

    @dg.schedule(
        name="product_sync_schedule",
        cron_schedule=settings.sync_cron_schedule,
        execution_timezone=settings.timezone,
        job=product_sync_job,
        default_status=_default_status(settings),
        description=(
            f"product_sync_job at '{settings.sync_cron_schedule}' ({settings.timezone}), SYNC_CRON_SCHEDULE; skipped "
            "while a product sync is still going or a database it needs is down."
        ),
    )
    def product_sync_schedule(
        context: dg.ScheduleEvaluationContext, product_db: MongoResource, cart_db: PostgresResource
    ) -> dg.RunRequest | dg.SkipReason:
        return _tick(context, product_sync_job.name, {"product_db": product_db, "cart_db": cart_db})

    return product_sync_schedule


def build_cart_sync_schedule(settings: SyncSettings, cart_sync_job: dg.JobDefinition) -> dg.ScheduleDefinition:
    """`cart_sync_schedule`: `cart_sync_job` on CART_SYNC_CRON_SCHEDULE in TIMEZONE."""

    @dg.schedule(
        name="cart_sync_schedule",
        cron_schedule=settings.cart_sync_cron_schedule,
        execution_timezone=settings.timezone,
        job=cart_sync_job,
        default_status=_default_status(settings),
        description=(
            f"cart_sync_job at '{settings.cart_sync_cron_schedule}' ({settings.timezone}), CART_SYNC_CRON_SCHEDULE; "
            "skipped while a cart sync is still going or a database it needs is down."
        ),
    )
    def cart_sync_schedule(
        context: dg.ScheduleEvaluationContext, cart_db: PostgresResource, order_db: MongoResource
    ) -> dg.RunRequest | dg.SkipReason:
        return _tick(context, cart_sync_job.name, {"cart_db": cart_db, "order_db": order_db})

    return cart_sync_schedule


def build_schedules(
    settings: SyncSettings, product_sync_job: dg.JobDefinition, cart_sync_job: dg.JobDefinition
) -> list[dg.ScheduleDefinition]:
    """Both sync schedules."""
    return [build_product_sync_schedule(settings, product_sync_job), build_cart_sync_schedule(settings, cart_sync_job)]
