"""The sync jobs, each with one small run config at the top (a `dg.ConfigMapping`)."""

from __future__ import annotations

from typing import Any

import dagster as dg
from pydantic import ValidationError

from etl_defs.carts.ops import CART_SYNC_OPS, check_cart_sync_ready, sync_cart_range, sync_carts
from etl_defs.executors import execution_config, sync_executor
from etl_defs.products.ops import PRODUCT_SYNC_OPS, check_product_sync_ready, sync_product_range, sync_products
from etl_defs.run_config import (
    KEYED_CART_FIELDS,
    CartSyncOpConfig,
    ProductSyncOpConfig,
    SyncOpConfig,
    allowed,
    launchpad_schema,
)
from etl_defs.settings import SyncSettings
from etl_defs.tags import MAX_RUNTIME_TAG, PIPELINE_TAG


class InvalidRunConfigError(dg.DagsterError):
    """A run config value is out of range; raised before the run starts.

    A `dg.DagsterError`, so that Dagster passes it on as it is (the terminal's last line, the
    UI's launch error) instead of wrapping it in "the config mapping function has thrown an
    unexpected error".
    """


def _ops_config(ops: tuple[dg.OpDefinition, ...], config: dict[str, Any]) -> dict[str, Any]:
    """The same validated op config for each of a sync's ops."""
    return {op.name: config for op in ops}


def _op_config(config: dict[str, Any], model: type[SyncOpConfig] = SyncOpConfig) -> dict[str, Any]:
    """Validated op config; a bad value is refused here, before the run starts."""
    fields = {name: config[name] for name in model.model_fields if name in config}
    try:
        validated = model(**fields)
    except ValidationError as error:
        problems = []
        for problem in error.errors():
            message = problem["msg"].removeprefix("Value error, ")
            if not problem["loc"]:  # a rule over several fields
                problems.append(message)
                continue
            name = str(problem["loc"][0])
            problems.append(f"{name}={_shown(fields.get(name))}: {message}{allowed(model, name)}")
        raise InvalidRunConfigError(f"invalid run config: {'; '.join(problems)}") from None
    return {"config": validated.model_dump()}


def _shown(value: Any) -> str:
    """A run config value as the refusal quotes it: a long list is cut short."""
    if isinstance(value, list) and len(value) > 3:
        return f"[{', '.join(repr(item) for item in value[:3])}, ... ({len(value)} items)]"
    return repr(value)


def job_tags(settings: SyncSettings, pipeline: str) -> dict[str, str]:
    """A sync job's tags: its pipeline (the run queue's limit) and how long run monitoring lets a run of it go."""
    return {PIPELINE_TAG: pipeline, MAX_RUNTIME_TAG: str(settings.sync_max_runtime_seconds)}


def build_product_sync_job(settings: SyncSettings) -> dg.JobDefinition:
    """`product_sync_job`: check both databases, then sync products into the Cart DB."""

    @dg.config_mapping(config_schema=launchpad_schema(ProductSyncOpConfig, batch_size=settings.sync_batch_size))
    def product_sync_config(config: dict[str, Any]) -> dict[str, Any]:
        op_config = _op_config(config, ProductSyncOpConfig)
        return {
            "ops": _ops_config(PRODUCT_SYNC_OPS, op_config),
            "execution": execution_config(settings, op_config["config"]["parallelism"], [sync_product_range]),
        }

    @dg.job(
        config=product_sync_config,
        tags=job_tags(settings, "products"),
        executor_def=sync_executor(settings),
        description="Copy products from the Product MongoDB into the Cart PostgreSQL: insert missing, update changed.",
    )
    def product_sync_job() -> None:
        sync_products(ready=check_product_sync_ready())

    return product_sync_job


def build_cart_sync_job(settings: SyncSettings) -> dg.JobDefinition:
    """`cart_sync_job`: check both databases, then sync carts into the Order DB."""

    @dg.config_mapping(config_schema=launchpad_schema(CartSyncOpConfig, batch_size=settings.cart_sync_batch_size))
    def cart_sync_config(config: dict[str, Any]) -> dict[str, Any]:
        op_config = _op_config(config, CartSyncOpConfig)
        return {
            "ops": _ops_config(CART_SYNC_OPS, op_config),
            "execution": execution_config(settings, op_config["config"]["parallelism"], [sync_cart_range]),
        }

    @dg.job(
        config=cart_sync_config,
        tags=job_tags(settings, "carts"),
        executor_def=sync_executor(settings),
        description=(
            "Copy carts (joined with their products) from the Cart PostgreSQL into the Order MongoDB: insert "
            "missing, update outdated and changed under a version guard, never overwrite a newer cart."
        ),
    )
    def cart_sync_job() -> None:
        sync_carts(ready=check_cart_sync_ready())

    return cart_sync_job


def build_full_sync_job(settings: SyncSettings) -> dg.JobDefinition:
    """`full_sync_job`: the product sync, then the cart sync, so a price change reaches the carts in one run."""
    schema = {
        name: field for name, field in launchpad_schema(CartSyncOpConfig).items() if name not in KEYED_CART_FIELDS
    }
    schema["batch_size"] = dg.Field(
        int,
        is_required=False,
        description=(
            f"Keys per batch for both syncs{allowed(SyncOpConfig, 'batch_size')}; default: "
            f"SYNC_BATCH_SIZE={settings.sync_batch_size} for products, CART_SYNC_BATCH_SIZE="
            f"{settings.cart_sync_batch_size} for carts"
        ),
    )

    @dg.config_mapping(config_schema=schema)
    def full_sync_config(config: dict[str, Any]) -> dict[str, Any]:
        override = config.get("batch_size")  # None: each sync keeps its own default; 0 is refused, not a default
        products = {**config, "batch_size": settings.sync_batch_size if override is None else override}
        carts = {**config, "batch_size": settings.cart_sync_batch_size if override is None else override}
        product_config, cart_config = _op_config(products, ProductSyncOpConfig), _op_config(carts, CartSyncOpConfig)
        return {
            "ops": {**_ops_config(PRODUCT_SYNC_OPS, product_config), **_ops_config(CART_SYNC_OPS, cart_config)},
            "execution": execution_config(
                settings, product_config["config"]["parallelism"], [sync_product_range, sync_cart_range]
            ),
        }

    @dg.job(
        config=full_sync_config,
        tags=job_tags(settings, "full"),
        executor_def=sync_executor(settings),
        description=(
            "Product sync, then cart sync, in one run: a product's new price reaches the Order DB's carts. "
            "The cart sync is skipped when the product sync fails."
        ),
    )
    def full_sync_job() -> None:
        products_synced = sync_products(ready=check_product_sync_ready())
        sync_carts(ready=[check_cart_sync_ready(), products_synced])

    return full_sync_job
