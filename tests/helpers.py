"""Helpers every test package shares: the code location as Dagster loads it, rows copied into
the Cart DB, and the only imports of Dagster's private APIs in the tests.

Import `tests.session` first (it is imported here), so the environment is the session's.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import dagster as dg
import psycopg

# Dagster's private APIs, for what no public API does: a workspace loaded in-process (the
# scheduler's view of the code location) and the webserver's GraphQL without a webserver.
from dagster._core.test_utils import in_process_test_workspace
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import EmptyWorkspaceTarget

import etl_defs
from etl_defs.carts.endpoints import CART_COLUMNS, CART_TABLE
from etl_defs.products.table import PRODUCT_COLUMNS, PRODUCT_TABLE
from etl_defs.settings import load_settings
from resources.postgres import copy_rows
from tests.session import SERVICE_ENV  # noqa: F401 - sets the session's environment before the code location loads

__all__ = [
    "EmptyWorkspaceTarget",
    "LoadableTargetOrigin",
    "WorkspaceProcessContext",
    "copy_carts",
    "copy_products",
    "defs",
    "in_process_test_workspace",
    "settings",
]

#: The code location, built as `dagster` loads it, in the session's environment.
defs: dg.Definitions = etl_defs.defs()
settings = load_settings()


def copy_products(conn: psycopg.Connection, rows: Iterable[Sequence[Any]]) -> None:
    """COPY `rows` (tuples in `product` column order) into the Cart DB's `product` table."""
    copy_rows(conn, PRODUCT_TABLE, PRODUCT_COLUMNS, rows)


def copy_carts(conn: psycopg.Connection, rows: Iterable[Sequence[Any]]) -> None:
    """COPY `rows` (tuples in `cart` column order) into the Cart DB's `cart` table."""
    copy_rows(conn, CART_TABLE, CART_COLUMNS, rows)
