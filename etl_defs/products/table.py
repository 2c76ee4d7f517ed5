"""The Cart DB's `product` table, as the Cart service's ORM creates it: its columns, written once.

`ProductRow` is the one definition; the column list, the types the preflight expects, the
DDL and the SQL the sync and the tools use are derived from it.
"""

from typing import NamedTuple, get_type_hints


class ProductRow(NamedTuple):
    """A row of the Cart DB's `product` table, in column order."""

    id: str
    title: str
    price: int
    image: str
    sellerId: str  # noqa: N815 - the Cart service's column name
    quantity: int


PRODUCT_TABLE = "product"
PRODUCT_COLUMNS: tuple[str, ...] = ProductRow._fields
#: Each column's type as `information_schema.columns.data_type` spells it (also valid DDL).
PRODUCT_COLUMN_TYPES = {
    name: {str: "character varying", int: "integer"}[kind] for name, kind in get_type_hints(ProductRow).items()
}
#: The columns, quoted (`sellerId` is camelCase), for SELECT, INSERT and COPY.
PRODUCT_COLUMN_LIST = ", ".join(f'"{name}"' for name in PRODUCT_COLUMNS)
SELECT_PRODUCTS_SQL = f"SELECT {PRODUCT_COLUMN_LIST} FROM {PRODUCT_TABLE}"


def product_table_ddl(name: str = PRODUCT_TABLE, *, staging: bool = False) -> str:
    """`CREATE TABLE IF NOT EXISTS <name>` with the `product` columns.

    As the Cart service creates it (`id` the primary key, every other column NOT NULL), or, with
    `staging`, a temporary table without constraints, emptied at each commit.
    """
    columns = []
    for column, data_type in PRODUCT_COLUMN_TYPES.items():
        constraint = "" if staging else " PRIMARY KEY" if column == "id" else " NOT NULL"
        columns.append(f'"{column}" {data_type}{constraint}')
    if staging:
        return f"CREATE TEMP TABLE IF NOT EXISTS {name} ({', '.join(columns)}) ON COMMIT DELETE ROWS"
    return f"CREATE TABLE IF NOT EXISTS {name} ({', '.join(columns)})"
