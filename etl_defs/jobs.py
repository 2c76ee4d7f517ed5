"""The sync jobs, built from the pipelines' records, each with one small run config (a `dg.ConfigMapping`)."""

from typing import Any

import dagster as dg

from etl_defs.executors import execution_config, sync_executor
from etl_defs.pipeline import SyncPipeline, SyncSteps, build_sync_steps
from etl_defs.run_config import KEYED_CART_FIELDS, SyncOpConfig, allowed, launchpad_schema
from etl_defs.settings import SyncSettings
from etl_defs.tags import MAX_RUNTIME_TAG, PIPELINE_TAG


class InvalidRunConfigError(dg.DagsterError):
    """A run config value is out of range; raised by a job's config mapping, before the run starts.

    A `dg.DagsterError`, so that Dagster passes it on as it is (the terminal's last line, the
    UI's launch error) instead of wrapping it in "the config mapping function has thrown an
    unexpected error".
    """


#: `full_sync_job`'s run queue tag value.
FULL_SYNC = "full"


def job_tags(settings: SyncSettings, pipeline: str) -> dict[str, str]:
    """A sync job's tags: its pipeline (the run queue's limit) and how long run monitoring lets a run of it go."""
    return {PIPELINE_TAG: pipeline, MAX_RUNTIME_TAG: str(settings.sync_max_runtime_seconds)}


def _steps_config(
    pipeline: SyncPipeline, steps: SyncSteps, config: dict[str, Any], settings: SyncSettings
) -> dict[str, Any]:
    """Each of the pipeline's configured ops' config: `config` validated by its model, the batch size its own
    setting where the run leaves it unset."""
    try:
        validated = pipeline.config.validated(config, pipeline.batch_size(settings)).model_dump()
    except ValueError as refused:
        raise InvalidRunConfigError(str(refused)) from None
    return {op.name: {"config": validated} for op in steps.configured}


def build_sync_job(pipeline: SyncPipeline, settings: SyncSettings) -> dg.JobDefinition:
    """`<noun>_sync_job`: check both databases, then sync, in `parallelism` key ranges."""
    steps = build_sync_steps(pipeline)
    schema = launchpad_schema(pipeline.config, batch_size=pipeline.batch_size(settings))

    @dg.config_mapping(config_schema=schema)
    def sync_config(config: dict[str, Any]) -> dict[str, Any]:
        ops = _steps_config(pipeline, steps, config, settings)
        parallelism = ops[steps.sync_range.name]["config"]["parallelism"]
        return {"ops": ops, "execution": execution_config(settings, parallelism, [steps.sync_range])}

    @dg.job(
        name=pipeline.job_name,
        config=sync_config,
        tags=job_tags(settings, pipeline.name),
        executor_def=sync_executor(settings),
        description=pipeline.descriptions.job,
    )
    def sync_job() -> None:
        steps.compose(ready=steps.check())

    return sync_job


def build_full_sync_job(pipelines: tuple[SyncPipeline, ...], settings: SyncSettings) -> dg.JobDefinition:
    """`full_sync_job`: each pipeline in turn (products, then carts, so a price change reaches the carts in
    one run); a pipeline is skipped when the one before it fails. Its run config is the last pipeline's,
    but the keyed fields (it syncs every row), with the batch size each pipeline's own unless set."""
    all_steps = [build_sync_steps(pipeline) for pipeline in pipelines]
    defaults = ", ".join(
        f"{SyncPipeline.variable(p.batch_size_setting)}={p.batch_size(settings)} for {p.name}" for p in pipelines
    )
    schema = launchpad_schema(
        pipelines[-1].config,
        leave_out=KEYED_CART_FIELDS,
        batch_size=None,
        descriptions={
            "batch_size": f"Keys per batch for every sync{allowed(SyncOpConfig, 'batch_size')}; default: " + defaults
        },
    )

    @dg.config_mapping(config_schema=schema)
    def full_sync_config(config: dict[str, Any]) -> dict[str, Any]:
        ops: dict[str, Any] = {}
        for pipeline, steps in zip(pipelines, all_steps, strict=True):
            ops.update(_steps_config(pipeline, steps, config, settings))
        parallelism = ops[all_steps[0].sync_range.name]["config"]["parallelism"]
        range_ops = [steps.sync_range for steps in all_steps]
        return {"ops": ops, "execution": execution_config(settings, parallelism, range_ops)}

    @dg.job(
        name="full_sync_job",
        config=full_sync_config,
        tags=job_tags(settings, FULL_SYNC),
        executor_def=sync_executor(settings),
        description=(
            "Product sync, then cart sync, in one run: a product's new price reaches the Order DB's carts. "
            "The cart sync is skipped when the product sync fails."
        ),
    )
    def full_sync_job() -> None:
        done = None
        for steps in all_steps:
            ready = steps.check() if done is None else [steps.check(), done]
            done = steps.compose(ready=ready)

    return full_sync_job
