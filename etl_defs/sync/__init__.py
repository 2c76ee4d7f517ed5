"""The shared sync core: pure planning (`plan`), the batch loop (`runner`), what a sync covers (`scope`)
and how a sync splits into key ranges (`ranges`)."""

from etl_defs.sync.plan import (
    BatchPlan,
    Change,
    Keyed,
    KeyOrderError,
    Rejection,
    SourceBatch,
    SyncSpec,
    plan_batches,
    row_spec,
)
from etl_defs.sync.ranges import MAX_PARALLELISM, WHOLE_RANGE, KeyRange, even_points, ranges_between, uuid_points
from etl_defs.sync.runner import SyncEndpoints, SyncReport, SyncStopped, WriteResult, run_sync
from etl_defs.sync.scope import KEYS_SCOPE, SCOPE_METADATA_KEY, WHOLE_TABLE, SyncScope

__all__ = [
    "KEYS_SCOPE",
    "MAX_PARALLELISM",
    "SCOPE_METADATA_KEY",
    "WHOLE_RANGE",
    "WHOLE_TABLE",
    "BatchPlan",
    "Change",
    "KeyOrderError",
    "KeyRange",
    "Keyed",
    "Rejection",
    "SourceBatch",
    "SyncEndpoints",
    "SyncReport",
    "SyncScope",
    "SyncSpec",
    "SyncStopped",
    "WriteResult",
    "even_points",
    "plan_batches",
    "ranges_between",
    "row_spec",
    "run_sync",
    "uuid_points",
]
