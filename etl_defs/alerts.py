"""`alerts_sensor`: incidents read from the instance, each sent once to ALERT_WEBHOOK_URL, and once when resolved.

An incident is a failed sync job, a failed ERROR drift check, change capture that lost its
changes, lags or whose sensor keeps erroring, a database down on consecutive health pings,
or a table past its freshness policy. Why a sensor of our own: README, "Alerts".
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import dagster as dg

from etl_defs.assets import (
    CART_DB_KEY,
    CART_DB_PRODUCT,
    ORDER_DB_CARTS,
    ORDER_DB_KEY,
    PRODUCT_DB_KEY,
    PRODUCT_DB_PRODUCTS,
    freshness_window,
)
from etl_defs.checks import DRIFT_CHECKS
from etl_defs.health import REACHABLE
from etl_defs.pipeline import SyncPipeline
from etl_defs.pipelines import PIPELINES
from etl_defs.settings import SyncSettings, mask_secrets
from etl_defs.tags import (
    CART_CHANGES_FULL_TRIGGER,
    CART_CHANGES_TRIGGER,
    CART_SLOT_LOST_TRIGGER,
    OLDEST_CHANGE_TAG,
    PRODUCT_CHANGES_TRIGGER,
    PRODUCT_HISTORY_LOST_TRIGGER,
    TRIGGER_TAG,
)
from resources.webhook import AlertWebhook, WebhookError

SENSOR_NAME = "alerts_sensor"
#: How often the daemon looks for incidents: an incident is sent at most this long (plus delivery) after it began.
ALERTS_SENSOR_TICK_S = 30
#: How long one tick may spend delivering (Dagster stops a sensor evaluation after 60 s); the rest waits.
DELIVERY_BUDGET_S = 25.0
#: Undelivered alerts kept for the next ticks while the webhook is down; the oldest are dropped beyond.
MAX_OUTBOX = 200
#: Run status events read per tick.
_EVENTS_PER_TICK = 500
#: Runs of a change capture looked at for its lag (back to its last successful repair).
_LAG_LOOKBACK_RUNS = 50

RUN_EVENTS = (dg.DagsterEventType.RUN_START, dg.DagsterEventType.RUN_FAILURE, dg.DagsterEventType.RUN_SUCCESS)
#: The full sync each change capture requests when its changes are gone, and what that means.
LOST_CHANGES = {
    PRODUCT_HISTORY_LOST_TRIGGER: "the products change stream lost its history (the resume token expired)",
    CART_SLOT_LOST_TRIGGER: "the Cart DB's replication slot was lost",
}
#: Each change capture: the triggers of its repair runs, whose oldest waiting change is its lag.
CHANGE_CAPTURES = {
    "product change capture": (PRODUCT_CHANGES_TRIGGER,),
    "cart change capture": (CART_CHANGES_TRIGGER, CART_CHANGES_FULL_TRIGGER),
}
#: The ERROR drift checks (missing and stale rows); orphans only warn and are not alerted.
ALERTED_CHECKS = [check for check in DRIFT_CHECKS if check.severity == dg.AssetCheckSeverity.ERROR]
#: The table whose `reachable` check stands for each database.
HEALTH_OF_DATABASE = {PRODUCT_DB_KEY: PRODUCT_DB_PRODUCTS, CART_DB_KEY: CART_DB_PRODUCT, ORDER_DB_KEY: ORDER_DB_CARTS}


@dataclass(frozen=True)
class Finding:
    """What one tick found about one incident: `firing` (it is on) or not (it is over, if it was on)."""

    key: str  # the incident: one alert while it lasts, e.g. `sync_failed:product_sync_job`
    kind: str
    firing: bool
    text: str
    severity: str = "error"
    fields: dict[str, str] = field(default_factory=dict)  # job, run_id, asset, check, database, sensor
    link: str = ""  # a path in the UI


@dataclass
class AlertState:
    """The sensor's cursor: the last run event read, the open incidents, and alerts not yet delivered."""

    after: int | None = None
    open: dict[str, str] = field(default_factory=dict)  # incident key: since when (ISO 8601)
    outbox: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str | None) -> AlertState:
        try:
            saved = json.loads(text or "{}")
            return cls(after=saved.get("after"), open=dict(saved.get("open", {})), outbox=list(saved.get("outbox", [])))
        except (ValueError, TypeError, AttributeError):
            return cls()

    def dumps(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def apply(self, finding: Finding, ui_url: str | None) -> dict[str, Any] | None:
        """Open or close `finding`'s incident; the alert it calls for (None: nothing changed)."""
        if finding.firing == (finding.key in self.open):
            return None
        now = datetime.now(UTC).isoformat(timespec="seconds")
        if finding.firing:
            self.open[finding.key] = now
        else:
            self.open.pop(finding.key)
        return alert_body(finding, ui_url, now)


def alert_body(finding: Finding, ui_url: str | None, at: str) -> dict[str, Any]:
    """One alert: `text` for Slack's incoming webhooks, the rest for anything that reads JSON."""
    status = "firing" if finding.firing else "resolved"
    link = f"{ui_url.rstrip('/')}{finding.link}" if ui_url and finding.link else None
    text = mask_secrets(f"[etl-sync] {'ALERT' if finding.firing else 'RESOLVED'}: {finding.text}")
    if link:
        text += f" <{link}|open in Dagster>"
    return {
        "text": text,
        "status": status,
        "kind": finding.kind,
        "severity": finding.severity if finding.firing else "info",
        "incident": finding.key,
        **{name: mask_secrets(value) for name, value in finding.fields.items()},
        "link": link,
        "at": at,
    }


#: The module before an error's exception name (`psycopg.errors.` of `psycopg.errors.UndefinedTable: ...`).
_EXCEPTION_MODULE = re.compile(r"^(?:[A-Za-z_]\w*\.)+(?=[A-Za-z_]\w*: )")


def error_line(text: str | None) -> str:
    """The first line of an error's message, passwords masked: without its exception's module, and without
    `Failure: ` (Dagster's `dg.Failure`, whose message the op wrote for people)."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if not lines:
        return ""
    return mask_secrets(_EXCEPTION_MODULE.sub("", lines[0]).removeprefix("Failure: ")[:300])


def failure_line(instance: dg.DagsterInstance, record: dg.EventLogRecord) -> str:
    """Why a run failed, in one line: its first step failure's error, else the run failure's own message."""
    steps = instance.get_records_for_run(record.run_id, of_type=dg.DagsterEventType.STEP_FAILURE, limit=1).records
    if steps:
        event = steps[0].event_log_entry.dagster_event
        error = event.step_failure_data.error if event is not None else None
        while error is not None and error.cls_name == "DagsterExecutionStepExecutionError" and error.cause:
            error = error.cause  # Dagster's wrapper ("Error occurred while executing op"): the op's own error
        line = error_line(error.message) if error is not None else ""
        if line:
            return line
    event = record.event_log_entry.dagster_event
    error = getattr(event.event_specific_data, "error", None) if event is not None else None
    return error_line(error.message if error is not None else None) or error_line(record.event_log_entry.message)


def run_findings(instance: dg.DagsterInstance, sync_jobs: Sequence[str], after: int) -> tuple[list[Finding], int]:
    """Sync runs that failed or succeeded, and full syncs requested because changes were lost, since storage id
    `after`, in the order they happened; and the newest storage id read."""
    records: list[dg.EventLogRecord] = []
    read_up_to: int | None = None  # a page that came back full ends where the others must end too
    for event_type in RUN_EVENTS:
        page = instance.fetch_run_status_changes(
            dg.RunStatusChangeRecordsFilter(event_type=event_type, after_storage_id=after),
            limit=_EVENTS_PER_TICK,
            ascending=True,
        ).records
        records += page
        if len(page) == _EVENTS_PER_TICK:
            last = page[-1].storage_id
            read_up_to = last if read_up_to is None else min(read_up_to, last)
    if read_up_to is not None:
        records = [record for record in records if record.storage_id <= read_up_to]
    newest = max((record.storage_id for record in records), default=after)
    records = sorted((r for r in records if r.event_log_entry.job_name in sync_jobs), key=lambda r: r.storage_id)
    run_ids = list({record.run_id for record in records})
    runs = {run.run_id: run for run in instance.get_runs(dg.RunsFilter(run_ids=run_ids))} if run_ids else {}
    findings: list[Finding] = []
    for record in records:
        job, run_id, kind = record.event_log_entry.job_name, record.run_id, record.event_log_entry.dagster_event_type
        run = runs.get(run_id)
        trigger = run.tags.get(TRIGGER_TAG) if run is not None else None
        fields = {"job": job, "run_id": run_id}
        if kind == dg.DagsterEventType.RUN_START and trigger in LOST_CHANGES:
            findings.append(
                Finding(
                    f"changes_lost:{job}",
                    "changes_lost",
                    True,
                    f"{LOST_CHANGES[trigger]}: changes made meanwhile may be missing until the full {job} "
                    f"run {run_id[:8]} requested for it succeeds",
                    fields=fields,
                    link=f"/runs/{run_id}",
                )
            )
        elif kind == dg.DagsterEventType.RUN_FAILURE:
            findings.append(
                Finding(
                    f"sync_failed:{job}",
                    "sync_failed",
                    True,
                    f"{job} run {run_id[:8]} failed: {failure_line(instance, record)}",
                    fields=fields,
                    link=f"/runs/{run_id}",
                )
            )
        elif kind == dg.DagsterEventType.RUN_SUCCESS:
            for incident in ("sync_failed", "changes_lost"):
                findings.append(
                    Finding(
                        f"{incident}:{job}",
                        incident,
                        False,
                        f"{job} run {run_id[:8]} succeeded",
                        fields=fields,
                        link=f"/runs/{run_id}",
                    )
                )
    return findings, newest


def check_findings(instance: dg.DagsterInstance) -> Iterator[Finding]:
    """Each ERROR drift check's latest evaluation: failed (missing or stale rows) or passed."""
    latest = instance.event_log_storage.get_latest_asset_check_execution_by_key([c.key for c in ALERTED_CHECKS])
    for check in ALERTED_CHECKS:
        record = latest.get(check.key)
        evaluation = _evaluation(record)
        if evaluation is None:
            continue
        table = check.asset.to_user_string()
        count = evaluation.metadata.get("count")
        fields = {"asset": table, "check": check.name, "run_id": record.run_id}
        if count is not None:
            fields["count"] = str(getattr(count, "value", count))
        yield Finding(
            f"check_failed:{table}:{check.name}",
            "check_failed",
            not evaluation.passed,
            f"check {check.name} on {table} "
            + (f"failed: {evaluation.description}" if not evaluation.passed else "passed"),
            fields=fields,
            link=f"/assets/{'/'.join(check.asset.path)}?view=checks",
        )


def _evaluation(record: Any) -> dg.AssetCheckEvaluation | None:
    """The evaluation of a check execution record (None: none yet, or still in progress)."""
    if record is None or record.event is None or record.event.dagster_event is None:
        return None
    data = record.event.dagster_event.event_specific_data
    return data if isinstance(data, dg.AssetCheckEvaluation) else None


def health_findings(instance: dg.DagsterInstance, failures: int) -> Iterator[Finding]:
    """Each database: down on its last `failures` health pings (firing), or up on the latest (resolved)."""
    for database, asset in HEALTH_OF_DATABASE.items():
        history = instance.event_log_storage.get_asset_check_execution_history(
            dg.AssetCheckKey(asset, REACHABLE), limit=failures
        )
        evaluations = [e for e in (_evaluation(record) for record in history) if e is not None]
        if not evaluations:
            continue
        latest = evaluations[0]
        if latest.passed:
            yield Finding(f"database_down:{database}", "database_down", False, latest.description or database)
        elif len(evaluations) >= failures and not any(e.passed for e in evaluations):
            yield Finding(
                f"database_down:{database}",
                "database_down",
                True,
                f"{latest.description} ({failures} health checks in a row)",
                fields={"database": database, "asset": asset.to_user_string()},
                link=f"/assets/{'/'.join(asset.path)}?view=checks",
            )


def lag_findings(instance: dg.DagsterInstance, max_lag_s: int) -> Iterator[Finding]:
    """Each change capture's lag: from its oldest change not yet repaired (runs since its last successful
    repair, in flight or failed) to now; firing above `max_lag_s`."""
    now = datetime.now(UTC)
    for capture, triggers in CHANGE_CAPTURES.items():
        runs = instance.get_runs(dg.RunsFilter(tags={TRIGGER_TAG: list(triggers)}), limit=_LAG_LOOKBACK_RUNS)
        waiting: list[tuple[datetime, dg.DagsterRun]] = []
        for run in runs:  # newest first, back to the last success
            if run.status == dg.DagsterRunStatus.SUCCESS:
                break
            try:
                waiting.append((datetime.fromisoformat(run.tags[OLDEST_CHANGE_TAG]), run))
            except (KeyError, ValueError):  # a run without the tag, or with an unreadable one
                continue
        lag = (now - min(waiting, key=lambda item: item[0])[0]).total_seconds() if waiting else 0.0
        newest = waiting[0][1] if waiting else None
        text = f"{capture} is {lag:.0f} s behind (CDC_MAX_LAG_SECONDS={max_lag_s})"
        if newest is not None:
            text += f"; its newest repair, {newest.job_name} run {newest.run_id[:8]}, is {newest.status.value}"
        yield Finding(
            f"cdc_lag:{capture}",
            "cdc_lag",
            lag > max_lag_s,
            text if lag > max_lag_s else f"{capture} is back within {max_lag_s} s",
            fields={"capture": capture, **({"run_id": newest.run_id} if newest else {})},
            link=f"/runs/{newest.run_id}" if newest is not None else "",
        )


def sensor_findings(instance: dg.DagsterInstance, sensors: Sequence[str], failures: int) -> Iterator[Finding]:
    """Each of `sensors`: erroring on its last `failures` ticks (firing), or not on the latest (resolved).

    Dagster has no public API for sensor ticks: these are the instance's scheduling methods the UI uses.
    """
    for state in instance.all_instigator_state():
        if state.instigator_name not in sensors or state.instigator_type.value != "SENSOR":
            continue
        ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=failures)
        if not ticks:
            continue
        failed = [tick for tick in ticks if tick.status.value == "FAILURE"]
        name = state.instigator_name
        if ticks[0].status.value != "FAILURE":
            yield Finding(f"sensor_failing:{name}", "sensor_failing", False, f"{name} ticks again")
        elif len(failed) == len(ticks) >= failures:
            error = ticks[0].error
            while error is not None and error.cause is not None:  # Dagster's wrappers: the sensor's own error
                error = error.cause
            message = error.message if error is not None else ""
            yield Finding(
                f"sensor_failing:{name}",
                "sensor_failing",
                True,
                f"{name} failed on its last {failures} ticks: {error_line(message)}",
                fields={"sensor": name},
                link="/automation",
            )


def freshness_findings(instance: dg.DagsterInstance, windows: dict[dg.AssetKey, str]) -> Iterator[Finding]:
    """Each target table: past its freshness policy (Dagster's freshness daemon says FAIL), or fresh again."""
    records = instance.get_freshness_state_records(list(windows))
    for asset, window in windows.items():
        record = records.get(asset)
        state = record.freshness_state.value if record is not None else None
        if state not in ("PASS", "FAIL"):
            continue
        table = asset.to_user_string()
        yield Finding(
            f"table_overdue:{table}",
            "table_overdue",
            state == "FAIL",
            f"{table} is overdue: not synced within {window}, its freshness policy"
            if state == "FAIL"
            else f"{table} is fresh again",
            fields={"asset": table},
            link=f"/assets/{'/'.join(asset.path)}",
        )


def deliver(webhook: AlertWebhook, outbox: list[dict[str, Any]], log: Any) -> list[dict[str, Any]]:
    """Send the outbox in order within DELIVERY_BUDGET_S; what is left (the webhook down) waits for the next tick."""
    deadline = time.monotonic() + DELIVERY_BUDGET_S
    while outbox and time.monotonic() < deadline:
        try:
            attempts = webhook.post(outbox[0])
        except WebhookError as error:
            log.warning(f"{error}; {len(outbox)} alerts wait for the next tick")
            break
        sent = outbox.pop(0)
        log.info(f"sent {sent['status']} {sent['incident']}" + (f" ({attempts} attempts)" if attempts > 1 else ""))
    return outbox


def build_alerts_sensor(
    settings: SyncSettings, sync_jobs: Sequence[dg.JobDefinition], watched_sensors: Sequence[str]
) -> dg.SensorDefinition:
    """`alerts_sensor`, running by default: it is defined only when ALERT_WEBHOOK_URL is set."""
    job_names = [job.name for job in sync_jobs]
    window_text = {
        pipeline.asset: f"{freshness_window(pipeline.cron(settings))} (twice "
        f"{SyncPipeline.variable(pipeline.cron_setting)} '{pipeline.cron(settings)}')"
        for pipeline in PIPELINES
    }

    @dg.sensor(
        name=SENSOR_NAME,
        minimum_interval_seconds=ALERTS_SENSOR_TICK_S,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "Send each incident once to ALERT_WEBHOOK_URL, and once when it is resolved: failed sync runs, failed "
            "ERROR drift checks, change capture lost, lagging or erroring, databases down on "
            f"{settings.alert_after_consecutive_failures} health checks in a row, tables past their freshness. "
            "Never starts a run."
        ),
    )
    def alerts_sensor(context: dg.SensorEvaluationContext, alert_webhook: AlertWebhook) -> dg.SensorResult:
        instance = context.instance
        state = AlertState.parse(context.cursor)
        if state.after is None:  # first tick: run events from now on; the standing conditions below count now
            state.after = instance.event_log_storage.get_maximum_record_id() or 0
        findings, state.after = run_findings(instance, job_names, state.after)
        findings += [
            *check_findings(instance),
            *health_findings(instance, settings.alert_after_consecutive_failures),
            *lag_findings(instance, settings.cdc_max_lag_seconds),
            *sensor_findings(instance, watched_sensors, settings.alert_after_consecutive_failures),
            *freshness_findings(instance, window_text),
        ]
        for finding in findings:
            body = state.apply(finding, settings.dagster_ui_url)
            if body is not None:
                context.log.info(f"{body['status']}: {body['text']}")
                state.outbox.append(body)
        if len(state.outbox) > MAX_OUTBOX:
            context.log.warning(f"the webhook is down: the {len(state.outbox) - MAX_OUTBOX} oldest alerts dropped")
            state.outbox = state.outbox[-MAX_OUTBOX:]
        state.outbox = deliver(alert_webhook, state.outbox, context.log)
        incidents = ", ".join(sorted(state.open)) or "none"
        return dg.SensorResult(
            cursor=state.dumps(),
            skip_reason=f"alerts only, it never starts runs; open incidents: {incidents}; "
            f"{len(state.outbox)} alerts wait for delivery",
        )

    return alerts_sensor
