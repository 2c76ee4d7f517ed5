"""Dagster resources: the only code that opens database connections."""

from resources.errors import DatabaseUnavailableError, ReplicationSlotLostError, SyncAlreadyRunningError
from resources.mongo import MongoResource
from resources.postgres import PostgresResource

__all__ = [
    "DatabaseUnavailableError",
    "MongoResource",
    "PostgresResource",
    "ReplicationSlotLostError",
    "SyncAlreadyRunningError",
]
