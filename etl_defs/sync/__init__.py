"""The shared sync core: pure planning (`plan`) and the batch loop (`runner`)."""

from etl_defs.sync.plan import BatchPlan, Change, KeyOrderError, Rejection, SyncSpec, plan_batches
from etl_defs.sync.runner import SyncEndpoints, SyncReport, WriteResult, run_sync

__all__ = [
    "BatchPlan",
    "Change",
    "KeyOrderError",
    "Rejection",
    "SyncEndpoints",
    "SyncReport",
    "SyncSpec",
    "WriteResult",
    "plan_batches",
    "run_sync",
]
