"""Schedules: the old service's node-cron jobs, each tick skipped while its sync is in flight or a database is down.

The skip rules and default status, explained: docs/automation.md.
"""

from collections.abc import Sequence

import dagster as dg

from etl_defs.health import ping_all
from etl_defs.pipeline import SyncPipeline
from etl_defs.settings import SyncSettings
from etl_defs.tags import IN_FLIGHT_STATUSES, KEYED_REPAIR_TRIGGERS, TRIGGER_TAG
from resources import MongoResource, PostgresResource

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


def build_sync_schedule(
    pipeline: SyncPipeline, settings: SyncSettings, sync_job: dg.JobDefinition, full_sync_job: dg.JobDefinition
) -> dg.ScheduleDefinition:
    """`<noun>_sync_schedule`: the pipeline's job on its cron setting in TIMEZONE."""
    cron, variable, keys = pipeline.cron(settings), SyncPipeline.variable(pipeline.cron_setting), pipeline.databases

    @dg.schedule(
        name=f"{pipeline.noun}_sync_schedule",
        cron_schedule=cron,
        execution_timezone=settings.timezone,
        job=sync_job,
        required_resource_keys=set(keys),
        default_status=settings.default_status(dg.DefaultScheduleStatus),
        description=(
            f"{sync_job.name} at '{cron}' ({settings.timezone}), {variable}; skipped while a {pipeline.noun} sync is "
            "still going or a database it needs is down."
        ),
    )
    def sync_schedule(
        context: dg.ScheduleEvaluationContext, **databases: MongoResource | PostgresResource
    ) -> dg.RunRequest | dg.SkipReason:
        # A schedule called directly is handed its required resources by name; the daemon leaves them on `context`.
        databases = databases or {key: getattr(context.resources, key) for key in keys}
        return sync_tick(context, [sync_job, full_sync_job], databases)

    return sync_schedule
