"""The service's sync pipelines, in the order `full_sync_job` runs them (carts copy product fields)."""

from etl_defs.carts.pipeline import CART_PIPELINE
from etl_defs.products.pipeline import PRODUCT_PIPELINE

PIPELINES = (PRODUCT_PIPELINE, CART_PIPELINE)
