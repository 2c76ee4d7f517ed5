"""Product sync: Product MongoDB `products` -> Cart PostgreSQL `product`."""
