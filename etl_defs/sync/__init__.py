"""The shared sync core: pure planning (`plan`) and the batch loop (`runner`)."""

from etl_defs.sync.plan import BatchPlan, Change, KeyOrderError, Rejection, SyncSpec, plan_batches
from etl_defs.sync.runner import SyncEndpoints, SyncReport, SyncStopped, WriteResult, run_sync

__all__ = [
    "BatchPlan",
    "Change",
    "KeyOrderError",
    "Rejection",
    "SyncEndpoints",
    "SyncReport",
    "SyncSpec",
    "SyncStopped",
    "WriteResult",
    "plan_batches",
    "run_sync",
]
