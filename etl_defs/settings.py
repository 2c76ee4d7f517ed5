"""The service's environment variables, validated once when the code location loads.

Names are the old Node service's, so an existing deployment's environment works as is.
A bad value raises `SettingsError` naming the variable and the (masked) value before any
connection is opened.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from enum import Enum
from typing import Literal, TypeVar
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from resources import mongo, postgres

log = logging.getLogger(__name__)

Status = TypeVar("Status", bound=Enum)

DEFAULT_BATCH_SIZE = 1000
MAX_BATCH_SIZE = 100_000
#: Bounds of a change-capture sensor's interval (seconds between two ticks).
MIN_CDC_INTERVAL_S = 1
MAX_CDC_INTERVAL_S = 3600
#: How long a whole-table sync may run before run monitoring fails it (`dagster/max_runtime`): the
#: slowest measured rate (the cart sync, 1M rows in 259 s here) covers about 50M rows in 4 hours.
DEFAULT_SYNC_MAX_RUNTIME_S = 4 * 3600
#: Change capture is alerted when a change waits longer than this for its repair (CDC_MAX_LAG_SECONDS).
DEFAULT_CDC_MAX_LAG_S = 600

MONGO_SCHEMES = ("mongodb", "mongodb+srv")
POSTGRES_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg", "postgresql+psycopg2")

#: `local`: a split run's steps are processes beside the run; `k8s`: each is a Kubernetes pod.
SyncExecutor = Literal["local", "k8s"]
_K8S_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")

_SECRET_IN_URL = re.compile(r"(?P<head>[a-z0-9+.-]+://[^:/@\s]*:)(?P<secret>[^@\s]*)(?P<tail>@)", re.I)


class SettingsError(ValueError):
    """An environment variable is missing or has a value the service cannot use."""


def mask_secrets(text: str) -> str:
    """Replace the password part of every URL in `text` with `***`."""
    return _SECRET_IN_URL.sub(r"\g<head>***\g<tail>", text)


def _check_url(value: str, schemes: tuple[str, ...], what: str) -> str:
    parts = urlsplit(value)
    if parts.scheme.lower() not in schemes:
        raise ValueError(f"is not a {what} URL (expected a scheme of {', '.join(schemes)})")
    # MongoDB URLs may list several hosts (a replica set): check each host[:port].
    hosts = parts.netloc.rsplit("@", 1)[-1].split(",")
    for host in hosts:
        name, _, port = host.rpartition(":") if ":" in host and not host.endswith("]") else (host, "", "")
        if not name.strip("[]"):
            raise ValueError(f"is not a {what} URL (no host)")
        if port and not port.isdigit():
            raise ValueError(f"is not a {what} URL (bad port)")
    if what == "MongoDB" and not parts.path.strip("/"):
        raise ValueError("names no database (put it in the path, e.g. mongodb://host:27017/product)")
    return value


def _check_http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError("is not an http(s) URL with a host")
    return value


def _check_cron(value: str) -> str:
    if not croniter.is_valid(value) or len(value.split()) != 5:
        raise ValueError("is not a five-field cron expression")
    return value


class SyncSettings(BaseModel):
    """Every environment variable the service reads, by its variable name."""

    model_config = ConfigDict(extra="ignore", frozen=True, hide_input_in_errors=True)

    product_mongodb_url: str = Field(alias="PRODUCT_SERVICE_MONGODB_URL")
    order_mongodb_url: str | None = Field(default=None, alias="ORDER_SERVICE_MONGODB_URL")
    cart_db_url: str = Field(alias="CART_DB_URL")
    cart_db_write_url: str | None = Field(default=None, alias="CART_DB_WRITE_URL")
    mongo_user: str | None = Field(default=None, alias="MONGO_USER")
    mongo_password: str | None = Field(default=None, alias="MONGO_PASSWORD")
    sync_cron_schedule: str = Field(default="*/30 * * * *", alias="SYNC_CRON_SCHEDULE")
    cart_sync_cron_schedule: str = Field(default="*/10 * * * *", alias="CART_SYNC_CRON_SCHEDULE")
    health_check_cron_schedule: str = Field(default="*/5 * * * *", alias="HEALTH_CHECK_CRON_SCHEDULE")
    enable_scheduler: bool = Field(default=True, alias="ENABLE_SCHEDULER")
    sync_batch_size: int = Field(default=DEFAULT_BATCH_SIZE, alias="SYNC_BATCH_SIZE", ge=1, le=MAX_BATCH_SIZE)
    cart_sync_batch_size: int = Field(default=DEFAULT_BATCH_SIZE, alias="CART_SYNC_BATCH_SIZE", ge=1, le=MAX_BATCH_SIZE)
    # Unset: each read asks the server for one batch per round trip.
    mongodb_fetch_size: int | None = Field(default=None, alias="MONGODB_FETCH_SIZE", ge=1, le=mongo.MAX_FETCH_SIZE)
    # Reads ask for the synced fields only (false: whole documents, faster on the embedded SecantusDB).
    mongodb_project_fields: bool = Field(default=True, alias="MONGODB_PROJECT_FIELDS")
    # How long a MongoDB read may wait for one answer: a server busy with several range scans
    # of a split sync, or one that prepares a whole answer first, can need more than 2 minutes.
    mongodb_socket_timeout_ms: int = Field(
        default=mongo.DEFAULT_SOCKET_TIMEOUT_MS, alias="MONGODB_SOCKET_TIMEOUT_MS", ge=1000, le=3_600_000
    )
    postgres_fetch_size: int | None = Field(default=None, alias="POSTGRES_FETCH_SIZE", ge=1, le=postgres.MAX_FETCH_SIZE)
    timezone: str = Field(default="UTC", alias="TIMEZONE")
    product_cdc_interval_seconds: int = Field(
        default=30, alias="PRODUCT_CDC_INTERVAL_SECONDS", ge=MIN_CDC_INTERVAL_S, le=MAX_CDC_INTERVAL_S
    )
    cart_cdc_interval_seconds: int = Field(
        default=30, alias="CART_CDC_INTERVAL_SECONDS", ge=MIN_CDC_INTERVAL_S, le=MAX_CDC_INTERVAL_S
    )
    cart_cdc_slot: str = Field(default=postgres.DEFAULT_REPLICATION_SLOT, alias="CART_CDC_SLOT")
    # Where the steps of a run with parallelism > 1 run: processes beside the run (local) or pods (k8s).
    sync_executor: SyncExecutor = Field(default="local", alias="SYNC_EXECUTOR")
    range_step_cpu: str = Field(default="1", alias="SYNC_RANGE_STEP_CPU")
    range_step_memory: str = Field(default="1Gi", alias="SYNC_RANGE_STEP_MEMORY")
    sync_max_runtime_seconds: int = Field(
        default=DEFAULT_SYNC_MAX_RUNTIME_S, alias="SYNC_MAX_RUNTIME_SECONDS", ge=60, le=7 * 24 * 3600
    )
    # Alerts: a secret (a Slack webhook's path is its key); alerting is on whenever it is set.
    alert_webhook_url: str | None = Field(default=None, alias="ALERT_WEBHOOK_URL")
    # Where the UI is, for the links in alerts (none when unset).
    dagster_ui_url: str | None = Field(default=None, alias="DAGSTER_UI_URL")
    cdc_max_lag_seconds: int = Field(
        default=DEFAULT_CDC_MAX_LAG_S, alias="CDC_MAX_LAG_SECONDS", ge=10, le=7 * 24 * 3600
    )
    # Health pings of a database, or ticks of a change sensor, that fail in a row before an alert.
    alert_after_consecutive_failures: int = Field(default=3, alias="ALERT_AFTER_CONSECUTIVE_FAILURES", ge=1, le=100)

    @field_validator("product_mongodb_url", "order_mongodb_url")
    @classmethod
    def _mongo_url(cls, value: str | None) -> str | None:
        return None if value is None else _check_url(value, MONGO_SCHEMES, "MongoDB")

    @field_validator("cart_db_url", "cart_db_write_url")
    @classmethod
    def _postgres_url(cls, value: str | None) -> str | None:
        return None if value is None else _check_url(value, POSTGRES_SCHEMES, "PostgreSQL")

    @field_validator("alert_webhook_url", "dagster_ui_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        return None if value is None else _check_http_url(value)

    @field_validator("sync_cron_schedule", "cart_sync_cron_schedule", "health_check_cron_schedule")
    @classmethod
    def _cron(cls, value: str) -> str:
        return _check_cron(value)

    @field_validator("cart_cdc_slot")
    @classmethod
    def _slot_name(cls, value: str) -> str:
        if not re.fullmatch(postgres.SLOT_NAME_PATTERN, value):
            raise ValueError("is not a replication slot name (1 to 63 lower-case letters, digits or underscores)")
        return value

    @field_validator("range_step_cpu", "range_step_memory")
    @classmethod
    def _quantity(cls, value: str) -> str:
        if not _K8S_QUANTITY.fullmatch(value):
            raise ValueError("is not a Kubernetes quantity (like 500m, 2, 1Gi or 512Mi)")
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("is not a known IANA timezone (e.g. UTC, Europe/Berlin)") from None
        return value

    def default_status(self, kind: type[Status]) -> Status:
        """RUNNING when ENABLE_SCHEDULER is true, else STOPPED, as `kind` (a schedule's or a sensor's status)."""
        return kind["RUNNING" if self.enable_scheduler else "STOPPED"]

    @property
    def order_url_env(self) -> str:
        """The variable that holds the Order MongoDB URL (it falls back to the product one)."""
        return "ORDER_SERVICE_MONGODB_URL" if self.order_mongodb_url else "PRODUCT_SERVICE_MONGODB_URL"

    @property
    def cart_db_url_env(self) -> str:
        """The variable that holds the Cart PostgreSQL URL the sync writes through."""
        return "CART_DB_WRITE_URL" if self.cart_db_write_url else "CART_DB_URL"


_SECRET_VARS = {"MONGO_PASSWORD", "ALERT_WEBHOOK_URL"}
_URL_VARS = {
    "PRODUCT_SERVICE_MONGODB_URL",
    "ORDER_SERVICE_MONGODB_URL",
    "CART_DB_URL",
    "CART_DB_WRITE_URL",
}


def _shown(name: str, value: object) -> str:
    if value is None:
        return "(not set)"
    if name in _SECRET_VARS:
        return "'***'"
    text = str(value)
    return repr(mask_secrets(text) if name in _URL_VARS else text)


def _explain(error: ValidationError, environ: Mapping[str, str]) -> str:
    lines = []
    for item in error.errors(include_input=False, include_url=False):
        name = str(item["loc"][0]) if item["loc"] else "?"
        value = environ.get(name)
        if item["type"] == "missing":
            lines.append(f"{name} is required but not set")
            continue
        reason = item["msg"].removeprefix("Value error, ")
        lines.append(f"{name}={_shown(name, value)} {reason}")
    return "Invalid environment for the sync service:\n  " + "\n  ".join(lines)


def load_settings(environ: Mapping[str, str] | None = None) -> SyncSettings:
    """Read and validate the environment; raise `SettingsError` naming each bad variable."""
    env = dict(os.environ if environ is None else environ)
    # An empty variable means "not set", as it did for the old service.
    env = {k: v for k, v in env.items() if v != ""}
    try:
        settings = SyncSettings.model_validate(env)
    except ValidationError as error:
        raise SettingsError(_explain(error, env)) from None
    if settings.order_mongodb_url is None:
        log.warning("ORDER_SERVICE_MONGODB_URL is not set: the Order database uses PRODUCT_SERVICE_MONGODB_URL")
    return settings
