"""The shared sync core: pure planning (`plan`), the batch loop (`runner`) and what a sync covers (`scope`)."""

from etl_defs.sync.plan import BatchPlan, Change, KeyOrderError, Rejection, SyncSpec, plan_batches
from etl_defs.sync.runner import SyncEndpoints, SyncReport, SyncStopped, WriteResult, run_sync
from etl_defs.sync.scope import WHOLE_TABLE, SyncScope

__all__ = [
    "WHOLE_TABLE",
    "BatchPlan",
    "Change",
    "KeyOrderError",
    "Rejection",
    "SyncEndpoints",
    "SyncReport",
    "SyncScope",
    "SyncSpec",
    "SyncStopped",
    "WriteResult",
    "plan_batches",
    "run_sync",
]
