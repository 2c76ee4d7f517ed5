"""Database health: ping each database and turn the answers into `reachable` check results."""

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import dagster as dg

from etl_defs.assets import DATABASE_OF_ASSET
from resources import DatabaseUnavailableError, MongoResource, PostgresResource

REACHABLE = "reachable"
REACHABILITY_CHECK_KEYS = [dg.AssetCheckKey(asset, REACHABLE) for asset in DATABASE_OF_ASSET]

CheckOutcome = TypeVar("CheckOutcome", dg.AssetCheckResult, dg.AssetCheckEvaluation)


@dataclass(frozen=True)
class Health:
    """One database's answer to a ping."""

    database: str  # the resource key: product_db, cart_db, order_db
    display_name: str  # label and address, no secrets
    reachable: bool
    latency_ms: float | None
    error: str | None = None

    def metadata(self) -> dict[str, Any]:
        metadata: dict[str, Any] = {"database": self.display_name, "reachable": int(self.reachable)}
        if self.latency_ms is not None:
            metadata["latency_ms"] = self.latency_ms
        if self.error is not None:
            metadata["error"] = self.error
        return metadata

    @property
    def summary(self) -> str:
        if self.reachable:
            return f"{self.display_name} answered in {self.latency_ms:.1f} ms"
        return f"{self.display_name} is down: {self.error}"

    def check_result(self, asset: dg.AssetKey, kind: type[CheckOutcome] = dg.AssetCheckResult) -> CheckOutcome:
        """The `reachable` check of `asset`: a result inside a check, an evaluation a sensor records."""
        return kind(
            asset_key=asset,
            check_name=REACHABLE,
            passed=self.reachable,
            severity=dg.AssetCheckSeverity.ERROR,
            metadata=self.metadata(),
            description=self.summary,
        )


def ping(name: str, database: MongoResource | PostgresResource) -> Health:
    """Ping one database; never raises for a database that is down."""
    try:
        seconds = database.ping()
    except DatabaseUnavailableError as error:
        return Health(name, database.display_name, reachable=False, latency_ms=None, error=str(error))
    except Exception as error:  # noqa: BLE001 - a health probe reports every failure, it never raises
        return Health(name, database.display_name, False, None, f"{type(error).__name__}: {str(error)[:300]}")
    return Health(name, database.display_name, reachable=True, latency_ms=round(seconds * 1000, 2))


def ping_all(databases: dict[str, MongoResource | PostgresResource]) -> dict[str, Health]:
    """Ping every database at once, so one that hangs until its timeout does not delay the others."""
    with ThreadPoolExecutor(max_workers=len(databases)) as pool:
        futures = {name: pool.submit(ping, name, db) for name, db in databases.items()}
        return {name: future.result() for name, future in futures.items()}


def health_of_tables(health: dict[str, Health]) -> Iterator[tuple[dg.AssetKey, Health]]:
    """Each table with the health of the database that holds it (tables of unpinged databases left out)."""
    for asset, database in DATABASE_OF_ASSET.items():
        if database in health:
            yield asset, health[database]
