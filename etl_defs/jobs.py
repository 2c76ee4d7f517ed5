"""The sync jobs, each with one small run config at the top (a `dg.ConfigMapping`)."""

from __future__ import annotations

from typing import Any

import dagster as dg

from etl_defs.products.ops import check_product_sync_ready, sync_products
from etl_defs.settings import SyncSettings
from etl_defs.sync_op import SyncOpConfig

PIPELINE_TAG = "etl-sync/pipeline"


def _sync_config_schema(default_batch_size: int) -> dict[str, dg.Field]:
    return {
        "dry_run": dg.Field(bool, default_value=False, description="Plan and report, write nothing"),
        "batch_size": dg.Field(int, default_value=default_batch_size, description="Keys per batch and transaction"),
        "batch_pause_ms": dg.Field(int, default_value=0, description="Pause after each written batch (ms)"),
    }


def _op_config(config: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """Validated op config; a bad value is refused here, before the run starts."""
    validated = SyncOpConfig(
        dry_run=config["dry_run"], batch_size=config["batch_size"], batch_pause_ms=config["batch_pause_ms"]
    )
    return {"config": {**validated.model_dump(), **extra}}


def build_product_sync_job(settings: SyncSettings) -> dg.JobDefinition:
    """`product_sync_job`: check both databases, then sync products into the Cart DB."""

    @dg.config_mapping(config_schema=_sync_config_schema(settings.sync_batch_size))
    def product_sync_config(config: dict[str, Any]) -> dict[str, Any]:
        return {"ops": {"sync_products": _op_config(config)}}

    @dg.job(
        config=product_sync_config,
        tags={PIPELINE_TAG: "products"},
        executor_def=dg.in_process_executor,
        description="Copy products from the Product MongoDB into the Cart PostgreSQL: insert missing, update changed.",
    )
    def product_sync_job() -> None:
        sync_products(ready=check_product_sync_ready())

    return product_sync_job
