"""The cart sync's two stores as their services create them, written once: the Cart DB's `cart` table and the
Order DB's `carts` collection with its indexes.

`CartTableRow` is the one definition of the `cart` columns; the column list, the types the
preflight expects and the DDL are derived from it, as `products/table.py` does for `product`.
"""

from typing import NamedTuple, get_type_hints

from etl_defs.products.table import PRODUCT_TABLE


class CartTableRow(NamedTuple):
    """A row of the Cart DB's `cart` table, in column order."""

    id: str  # a uuid
    quantity: int
    userId: str  # noqa: N815 - the Cart service's column names
    version: int
    productId: str  # noqa: N815


CART_TABLE = "cart"
CART_COLUMNS: tuple[str, ...] = CartTableRow._fields
#: Each column's type as `information_schema.columns.data_type` spells it (also valid DDL).
CART_COLUMN_TYPES = {
    name: "uuid" if name == "id" else {str: "character varying", int: "integer"}[kind]
    for name, kind in get_type_hints(CartTableRow).items()
}
#: What the Cart service's ORM adds to a column beyond NOT NULL.
_CONSTRAINTS = {
    "id": "PRIMARY KEY",
    "quantity": "NOT NULL DEFAULT 1",
    "productId": f"NOT NULL REFERENCES {PRODUCT_TABLE}(id)",
}


def cart_table_ddl() -> str:
    """`CREATE TABLE IF NOT EXISTS cart`, as the Cart service creates it."""
    columns = [
        f'"{name}" {data_type} {_CONSTRAINTS.get(name, "NOT NULL")}' for name, data_type in CART_COLUMN_TYPES.items()
    ]
    return f"CREATE TABLE IF NOT EXISTS {CART_TABLE} ({', '.join(columns)})"


#: The Order service's collection of carts, and its indexes: `cartId` unique (the sync's key, its target scan
#: walks it with `hint`) and `userId` (one user's carts).
ORDER_CARTS = "carts"
CART_ID_INDEX = "cartId_1"
USER_ID_INDEX = "userId_1"
#: Each index: its name, its one field and whether it is unique.
ORDER_CART_INDEXES = ((CART_ID_INDEX, "cartId", True), (USER_ID_INDEX, "userId", False))
