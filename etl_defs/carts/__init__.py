"""Cart sync: Cart PostgreSQL `cart` LEFT JOIN `product` -> Order MongoDB `carts`."""
