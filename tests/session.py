"""The test session's servers and environment, shared by conftest.py and the test modules.

Kept out of conftest.py so that it is imported exactly once (as `tests.session`): pytest
imports conftest.py under its own name, and a test module importing it again would run it
twice, with other ports. The environment the service reads is set here, at import, before
`tests.helpers` loads the code location in it. Ports are free ports chosen now; the servers
start on first use (conftest's `stack` fixture), so pure unit tests need no server.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import psycopg
from pymongo import MongoClient
from pymongo.database import Database

from etl_defs.products.table import SELECT_PRODUCTS_SQL
from local.stack import CART_DB, ORDER_DB, PRODUCT_DB, LocalStack, free_port

REPO = Path(__file__).resolve().parent.parent

#: Recognisable secrets: the whole suite runs with them, and the secret-scan tests look for
#: them everywhere (PostgreSQL's inside the Cart DB URL, MongoDB's in MONGO_PASSWORD).
PG_TEST_PASSWORD = "pg-Secret-7f3a9c"
MONGO_TEST_USER = "sync-user"
MONGO_TEST_PASSWORD = "mongo-Secret-4e8d21"
TEST_SECRETS = (PG_TEST_PASSWORD, MONGO_TEST_PASSWORD)

STATE_DIR = Path(tempfile.mkdtemp(prefix="etl-sync-test-"))
atexit.register(shutil.rmtree, STATE_DIR, ignore_errors=True)
STACK = LocalStack(
    STATE_DIR,
    mongo_port=free_port(),
    pg_port=free_port(),
    pg_password=PG_TEST_PASSWORD,
    mongo_user=MONGO_TEST_USER,
    mongo_password=MONGO_TEST_PASSWORD,
)
SERVICE_ENV = {
    **STACK.env(),
    "SYNC_BATCH_SIZE": "1000",
    "CART_SYNC_BATCH_SIZE": "1000",
    "ENABLE_SCHEDULER": "false",
}
os.environ.update(SERVICE_ENV)
os.environ.pop("CART_DB_WRITE_URL", None)


@dataclass
class Databases:
    """Handles on the three service databases, emptied for each test."""

    stack: LocalStack
    mongo: MongoClient

    @property
    def product_db(self) -> Database:
        return self.mongo[PRODUCT_DB]

    @property
    def order_db(self) -> Database:
        return self.mongo[ORDER_DB]

    def cart_conn(self) -> psycopg.Connection:
        """A new autocommit connection to the Cart DB (close it, or use `with`)."""
        return psycopg.connect(self.stack.pg_url(CART_DB), autocommit=True)

    def product_rows(self) -> dict[str, tuple]:
        with self.cart_conn() as conn:
            rows = conn.execute(SELECT_PRODUCTS_SQL).fetchall()
        return {row[0]: tuple(row) for row in rows}
