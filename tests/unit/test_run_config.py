"""Run config, defined once: each job's Launchpad schema is derived from its op's config model."""

from __future__ import annotations

from typing import Any

import dagster as dg
import pytest

from etl_defs.definitions import build_definitions
from etl_defs.jobs import InvalidRunConfigError
from etl_defs.run_config import KEYED_CART_FIELDS, MAX_SYNC_KEYS, CartSyncOpConfig, ProductSyncOpConfig, SyncOpConfig
from etl_defs.settings import load_settings
from etl_defs.sync import MAX_PARALLELISM

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


@pytest.fixture()
def env_vars(monkeypatch: pytest.MonkeyPatch) -> None:
    """ENV in os.environ: checking a run config against a job's schema resolves its resources' EnvVars."""
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)


def execution_of(job: dg.JobDefinition, **config: Any) -> dict[str, Any]:
    """The run config the job's mapping makes of `config`, checked against the job's schema (executor included)."""
    assert job.config_mapping is not None
    mapped = job.config_mapping.resolve_from_unvalidated_config(config)
    assert dg.validate_run_config(job, config)
    return mapped["execution"]


def test_parallelism_one_runs_in_process_and_more_in_as_many_processes(env_vars: None) -> None:
    job = build_definitions(load_settings(ENV)).resolve_job_def("product_sync_job")

    assert job.executor_def is dg.multi_or_in_process_executor
    assert execution_of(job) == {"config": {"in_process": {}}}
    assert execution_of(job, parallelism=4) == {"config": {"multiprocess": {"max_concurrent": 4}}}


def test_sync_executor_k8s_makes_every_step_a_pod_with_the_range_steps_sized(env_vars: None) -> None:
    from dagster_k8s import k8s_job_executor

    settings = load_settings({**ENV, "SYNC_EXECUTOR": "k8s", "SYNC_RANGE_STEP_MEMORY": "3Gi"})
    defs = build_definitions(settings)

    for name in ("product_sync_job", "cart_sync_job", "full_sync_job"):
        job = defs.resolve_job_def(name)
        assert job.executor_def is k8s_job_executor
        execution = execution_of(job, parallelism=8)["config"]
        assert execution["max_concurrent"] == 8
        resources = {
            step: config["container_config"]["resources"] for step, config in execution["per_step_k8s_config"].items()
        }
        assert set(resources) <= {"sync_product_range", "sync_cart_range"} and resources
        for sized in resources.values():
            assert sized == {"requests": {"cpu": "1", "memory": "3Gi"}, "limits": {"memory": "3Gi"}}


def test_parallelism_is_bounded() -> None:
    job = build_definitions(load_settings(ENV)).resolve_job_def("cart_sync_job")

    for bad in (0, MAX_PARALLELISM + 1):
        with pytest.raises(
            InvalidRunConfigError, match=rf"invalid run config: parallelism={bad}: .*\(allowed: 1 to 64\)"
        ):
            job.config_mapping.resolve_from_unvalidated_config({"parallelism": bad})  # type: ignore[union-attr]


def test_a_run_that_leaves_batch_size_unset_gets_its_pipelines_setting() -> None:
    defs = build_definitions(load_settings(ENV))

    for job_name, config, expected in [
        ("product_sync_job", {"batch_size": None}, {"sync_product_range": 250}),
        ("cart_sync_job", {"batch_size": None}, {"sync_cart_range": 75}),
        ("full_sync_job", {}, {"sync_product_range": 250, "sync_cart_range": 75}),
        ("full_sync_job", {"batch_size": 40}, {"sync_product_range": 40, "sync_cart_range": 40}),
    ]:
        job = defs.resolve_job_def(job_name)
        mapped = job.config_mapping.resolve_from_unvalidated_config(config)  # type: ignore[union-attr]
        assert {op: mapped["ops"][op]["config"]["batch_size"] for op in expected} == expected, job_name


def test_a_sensors_run_config_is_checked_by_the_model_and_carries_only_what_it_sets() -> None:
    config = CartSyncOpConfig.launch_config(keys=["7D8B6F0E-1C2A-4B3D-9E8F-0A1B2C3D4E5F"], advance_slot_to="0/15302A0")

    assert config == {"keys": ["7d8b6f0e-1c2a-4b3d-9e8f-0a1b2c3d4e5f"], "advance_slot_to": "0/15302A0"}
    assert ProductSyncOpConfig.launch_config() == {}
    with pytest.raises(ValueError, match="is not a PostgreSQL LSN"):
        CartSyncOpConfig.launch_config(advance_slot_to="15302A0")
