"""Everything Dagster loads, assembled in one place."""

from __future__ import annotations

import dagster as dg

from etl_defs.alerts import build_alerts_sensor
from etl_defs.assets import CART_DB_KEY, ORDER_DB_KEY, PRODUCT_DB_KEY, build_database_assets
from etl_defs.checks import build_asset_checks, validation_job
from etl_defs.jobs import build_full_sync_job, build_sync_job
from etl_defs.pipelines import PIPELINES
from etl_defs.schedules import build_sync_schedule
from etl_defs.sensors import build_sensors
from etl_defs.settings import SyncSettings, load_settings
from resources import MongoResource, PostgresResource
from resources.webhook import AlertWebhook


def build_resources(settings: SyncSettings) -> dict[str, dg.ConfigurableResource]:
    """The three databases (and the alert webhook, when set), with URLs and secrets bound by variable name,
    never by value."""
    mongo_options = {
        "username": dg.EnvVar("MONGO_USER") if settings.mongo_user else None,
        "password": dg.EnvVar("MONGO_PASSWORD") if settings.mongo_password else None,
        "fetch_size": settings.mongodb_fetch_size,
        "project_fields": settings.mongodb_project_fields,
        "socket_timeout_ms": settings.mongodb_socket_timeout_ms,
    }
    resources: dict[str, dg.ConfigurableResource] = {
        PRODUCT_DB_KEY: MongoResource(
            url=dg.EnvVar("PRODUCT_SERVICE_MONGODB_URL"), label="Product MongoDB", **mongo_options
        ),
        ORDER_DB_KEY: MongoResource(url=dg.EnvVar(settings.order_url_env), label="Order MongoDB", **mongo_options),
        CART_DB_KEY: PostgresResource(
            url=dg.EnvVar(settings.cart_db_url_env),
            label="Cart PostgreSQL",
            fetch_size=settings.postgres_fetch_size,
            replication_slot=settings.cart_cdc_slot,
        ),
    }
    if settings.alert_webhook_url:
        resources["alert_webhook"] = AlertWebhook(url=dg.EnvVar("ALERT_WEBHOOK_URL"))
    return resources


def build_definitions(settings: SyncSettings) -> dg.Definitions:
    """The code location's definitions for validated `settings`."""
    pipeline_jobs = {pipeline.name: build_sync_job(pipeline, settings) for pipeline in PIPELINES}
    full_sync_job = build_full_sync_job(PIPELINES, settings)
    sync_jobs = [*pipeline_jobs.values(), full_sync_job]
    sensors = build_sensors(settings, pipeline_jobs)
    if settings.alert_webhook_url:
        sensors.append(build_alerts_sensor(settings, sync_jobs, [sensor.name for sensor in sensors]))
    return dg.Definitions(
        assets=build_database_assets(settings),
        asset_checks=build_asset_checks(settings),
        jobs=[*sync_jobs, validation_job],
        schedules=[
            build_sync_schedule(pipeline, settings, pipeline_jobs[pipeline.name], full_sync_job)
            for pipeline in PIPELINES
        ],
        sensors=sensors,
        resources=build_resources(settings),
    )


@dg.definitions
def defs() -> dg.Definitions:
    """The code location, built when Dagster loads it: a bad environment fails here, naming the variable."""
    return build_definitions(load_settings())
