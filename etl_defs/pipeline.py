"""One record per sync pipeline, and the steps built from it.

A `SyncPipeline` says everything that differs between the product and the cart sync: its
core spec, its databases (by resource key), its target asset, its run config model, its
settings, its drift checks and how to open its endpoints. The job, schedule, checks and
validation trigger of each pipeline are built from its record (`jobs.py`, `schedules.py`,
`checks.py`, `sensors.py`); a third pipeline is a third record.
"""

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

import dagster as dg

from etl_defs.run_config import SyncOpConfig
from etl_defs.settings import SyncSettings
from etl_defs.steps.preflight import check_sync_ready
from etl_defs.steps.range_sync import RangeResult, run_range_op
from etl_defs.steps.report import report_sync_op
from etl_defs.steps.split import split_sync
from etl_defs.sync import Change, KeyRange, SyncEndpoints, SyncScope, SyncSpec
from resources import MongoResource, PostgresResource

#: The pipeline's databases, by resource key (`product_db`, `cart_db`, `order_db`).
Databases = Mapping[str, MongoResource | PostgresResource]


@dataclass(frozen=True)
class DriftCheck:
    """One validation check: which plan classes it counts, and how bad a non-zero count is."""

    name: str
    asset: dg.AssetKey
    classes: tuple[Change, ...]
    severity: dg.AssetCheckSeverity
    what: str  # "<n> <what>", e.g. "products in the Product MongoDB but not in the Cart DB"
    description: str
    #: Also report `newer_in_target` (targets ahead of the source, which the sync leaves alone).
    reports_newer_in_target: bool = False

    @property
    def key(self) -> dg.AssetCheckKey:
        return dg.AssetCheckKey(self.asset, self.name)

    @property
    def spec(self) -> dg.AssetCheckSpec:
        return dg.AssetCheckSpec(self.name, asset=self.asset, description=self.description, blocking=False)


@dataclass(frozen=True)
class StepDescriptions:
    """What the UI says of a pipeline's job, of each of its steps and of its drift checks."""

    job: str
    check: str
    split: str
    sync_range: str
    report: str
    checks: str


@dataclass(frozen=True)
class SyncPipeline:
    """Everything that makes one sync pipeline what it is."""

    #: `product`: its ops are `check_product_sync_ready`, `split_product_sync`, `sync_product_range`, ...
    noun: str
    spec: SyncSpec
    #: Its job's run config (and each of its steps'): the Launchpad schema is derived from it.
    config: type[SyncOpConfig]
    #: Resource keys: where it reads, where it writes, and where its advisory lock lives.
    source_db: str
    target_db: str
    lock_db: str
    #: The table it keeps (its materializations, checkpoints and checks).
    asset: dg.AssetKey
    #: The concurrency pool of its range steps: caps how many hit the busiest database at once.
    pool: str
    #: The `SyncSettings` fields of its batch size and schedule (their variables are the fields' aliases).
    batch_size_setting: str
    cron_setting: str
    checks: tuple[DriftCheck, ...]
    descriptions: StepDescriptions
    #: Its endpoints over `scope` (`config` is None for the read-only plan of the drift checks).
    endpoints: Callable[[Databases, SyncScope, SyncOpConfig | None], SyncEndpoints]
    #: What is wrong with its tables and indexes for the sync (empty when fine).
    schema_problems: Callable[[Databases], list[str]]
    #: Its change capture: a sensor requesting keyed runs of its job.
    changes_sensor: Callable[[SyncSettings, dg.JobDefinition], dg.SensorDefinition]
    #: Run by the report step after the figures are summed (the cart sync advances its replication slot).
    after_report: Callable[[dg.OpExecutionContext, Any, Databases], None] | None = None

    @property
    def name(self) -> str:
        """`products` (its spec's name): the sync's name in reports, its advisory lock and its run queue tag."""
        return self.spec.name

    @property
    def job_name(self) -> str:
        return f"{self.noun}_sync_job"

    @property
    def databases(self) -> tuple[str, str]:
        """The resource keys of its source and target, in that order."""
        return (self.source_db, self.target_db)

    def batch_size(self, settings: SyncSettings) -> int:
        return getattr(settings, self.batch_size_setting)

    def cron(self, settings: SyncSettings) -> str:
        return getattr(settings, self.cron_setting)

    @staticmethod
    def variable(setting: str) -> str:
        """The environment variable of a `SyncSettings` field: `sync_batch_size` -> SYNC_BATCH_SIZE."""
        return SyncSettings.model_fields[setting].alias or setting.upper()


@dataclass(frozen=True)
class SyncSteps:
    """A pipeline's ops: preflight, split, one step per key range, report."""

    check: dg.OpDefinition
    split: dg.OpDefinition
    sync_range: dg.OpDefinition
    report: dg.OpDefinition

    @property
    def configured(self) -> tuple[dg.OpDefinition, ...]:
        """The ops that take the run config (the job's config mapping gives each the same one)."""
        return (self.split, self.sync_range, self.report)

    def compose(self, ready: Any) -> Any:
        """The steps inside a job's body: split, one step per range, sum. `ready` runs first."""
        ranges = self.split(ready=ready)
        return self.report(ranges.map(self.sync_range).collect())


def _databases(context: dg.OpExecutionContext, keys: tuple[str, ...]) -> dict[str, Any]:
    return {key: getattr(context.resources, key) for key in keys}


@cache  # one set of ops per pipeline, shared by its own job and full_sync_job (op names are unique in a location)
def build_sync_steps(pipeline: SyncPipeline) -> SyncSteps:
    """The four ops of `pipeline`, named after its noun."""
    noun, config_model, keys = pipeline.noun, pipeline.config, pipeline.databases
    lock_keys = tuple(dict.fromkeys((*keys, pipeline.lock_db)))

    @dg.op(name=f"check_{noun}_sync_ready", required_resource_keys=set(keys), description=pipeline.descriptions.check)
    def check_ready(context: dg.OpExecutionContext) -> None:
        databases = _databases(context, keys)
        source, target = (databases[key] for key in keys)
        check_sync_ready(
            context,
            pipeline=noun,
            databases=[source, target],
            target=f"{source.display_name} -> {target.display_name}",
            find_problems=lambda: pipeline.schema_problems(databases),
        )

    @dg.op(
        name=f"split_{noun}_sync",
        ins={"ready": dg.In(dg.Nothing)},
        out=dg.DynamicOut(KeyRange),
        required_resource_keys=set(keys),
        description=pipeline.descriptions.split,
    )
    def split(context: dg.OpExecutionContext, config: config_model) -> Iterator[dg.DynamicOutput[KeyRange]]:
        endpoints = pipeline.endpoints(_databases(context, keys), config.scope(), config)
        yield from split_sync(context, config.parallelism, endpoints)

    @dg.op(
        name=f"sync_{noun}_range",
        pool=pipeline.pool,
        required_resource_keys=set(lock_keys),
        description=pipeline.descriptions.sync_range,
    )
    def sync_range(context: dg.OpExecutionContext, config: config_model, key_range: KeyRange) -> dg.Output[RangeResult]:
        databases = _databases(context, lock_keys)
        endpoints = pipeline.endpoints(databases, config.scope().within(key_range), config)
        return run_range_op(
            context,
            config,
            spec=pipeline.spec,
            endpoints=endpoints,
            lock_db=databases[pipeline.lock_db],
            asset_key=pipeline.asset,
        )

    report_keys = set(keys) if pipeline.after_report is not None else set()

    @dg.op(name=f"report_{noun}_sync", required_resource_keys=report_keys, description=pipeline.descriptions.report)
    def report(
        context: dg.OpExecutionContext, config: config_model, ranges: list[RangeResult]
    ) -> dg.Output[dict[str, Any]]:
        output = report_sync_op(
            context,
            pipeline=pipeline.name,
            dry_run=config.dry_run,
            scope=config.scope(),
            results=ranges,
            asset_key=pipeline.asset,
        )
        if pipeline.after_report is not None:
            pipeline.after_report(context, config, _databases(context, keys))
        return output

    return SyncSteps(check=check_ready, split=split, sync_range=sync_range, report=report)
