"""Dagster resources: the only code that opens database connections."""

from resources.errors import DatabaseUnavailableError, SyncAlreadyRunningError
from resources.mongo import MongoResource
from resources.postgres import PostgresResource

__all__ = ["DatabaseUnavailableError", "MongoResource", "PostgresResource", "SyncAlreadyRunningError"]
