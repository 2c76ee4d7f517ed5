"""Run config, defined once: each job's Launchpad schema is derived from its op's config model."""

from __future__ import annotations

from typing import Any

import dagster as dg

from etl_defs.definitions import build_definitions
from etl_defs.run_config import KEYED_CART_FIELDS, MAX_SYNC_KEYS, CartSyncOpConfig, ProductSyncOpConfig, SyncOpConfig
from etl_defs.settings import load_settings

ENV = {
    "PRODUCT_SERVICE_MONGODB_URL": "mongodb://db.internal:27017/product",
    "CART_DB_URL": "postgresql://cart@pg.internal:5432/cart",
    "SYNC_BATCH_SIZE": "250",
    "CART_SYNC_BATCH_SIZE": "75",
}


def launchpad_fields(job: dg.JobDefinition) -> dict[str, dict[str, Any]]:
    assert job.config_mapping is not None
    fields = job.config_mapping.config_schema.config_type.fields
    return {
        name: {"default": field.default_value if field.default_provided else None, "description": field.description}
        for name, field in fields.items()
    }


def test_each_jobs_fields_are_its_op_configs_with_the_settings_batch_size() -> None:
    defs = build_definitions(load_settings(ENV))

    products = launchpad_fields(defs.resolve_job_def("product_sync_job"))
    carts = launchpad_fields(defs.resolve_job_def("cart_sync_job"))
    full = launchpad_fields(defs.resolve_job_def("full_sync_job"))

    assert list(products) == list(ProductSyncOpConfig.model_fields) == [*SyncOpConfig.model_fields, "keys"]
    assert list(carts) == list(CartSyncOpConfig.model_fields)
    assert list(full) == [name for name in CartSyncOpConfig.model_fields if name not in KEYED_CART_FIELDS]
    assert set(KEYED_CART_FIELDS) == {"keys", "advance_slot_to"}, "full_sync_job syncs every cart"
    assert products["keys"]["default"] is None
    assert products["keys"]["description"] == (
        f"Only these product ids (ObjectId hex), at most {MAX_SYNC_KEYS}; unset: every product"
    )
    assert (products["batch_size"]["default"], carts["batch_size"]["default"]) == (250, 75)
    assert full["batch_size"]["default"] is None  # each sync keeps its own, unless the run sets one
    assert products["batch_size"]["description"] == "Keys per batch and transaction (allowed: 1 to 100000)"
    assert products["batch_pause_ms"]["description"] == "Pause after each written batch (ms) (allowed: 0 to 60000)"
    for name, field in CartSyncOpConfig.model_fields.items():
        if name not in ("batch_size", *KEYED_CART_FIELDS):
            assert carts[name]["default"] == full[name]["default"] == field.default
            assert carts[name]["description"].startswith(field.description)


def test_product_keys_are_sorted_lowercased_and_deduplicated() -> None:
    config = ProductSyncOpConfig(
        keys=["6B0FA3683FBA6D3E523D42CF", "6b0fa3683fba6d3e523d42ce", "6b0fa3683fba6d3e523d42cf"]
    )

    assert config.keys == ["6b0fa3683fba6d3e523d42ce", "6b0fa3683fba6d3e523d42cf"]
