"""Where a sync run's steps execute, chosen by the deployment (`SYNC_EXECUTOR`), never by a code edit.

`local`: one step at a time in the run's own process when `parallelism` is 1 (as before the
split existed), and one process per step, at most `parallelism` at once, when it is more.
`k8s`: every step is a Kubernetes pod (`k8s_job_executor`), range steps with the requests
of `SYNC_RANGE_STEP_CPU` and `SYNC_RANGE_STEP_MEMORY`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import dagster as dg

from etl_defs.settings import SettingsError, SyncSettings


def sync_executor(settings: SyncSettings) -> dg.ExecutorDefinition:
    """The executor of the sync jobs."""
    if settings.sync_executor == "local":
        return dg.multi_or_in_process_executor
    try:
        from dagster_k8s import k8s_job_executor
    except ImportError:
        raise SettingsError(
            "SYNC_EXECUTOR='k8s' needs dagster-k8s in the code location's image (pip install 'etl-sync[k8s]')"
        ) from None
    return k8s_job_executor


def execution_config(settings: SyncSettings, parallelism: int, range_ops: Iterable[dg.OpDefinition]) -> dict[str, Any]:
    """The run config's `execution` section for a run of `parallelism` range steps."""
    if settings.sync_executor == "local":
        if parallelism == 1:
            return {"config": {"in_process": {}}}
        return {"config": {"multiprocess": {"max_concurrent": parallelism}}}
    resources = {
        "requests": {"cpu": settings.range_step_cpu, "memory": settings.range_step_memory},
        "limits": {"memory": settings.range_step_memory},
    }
    return {
        "config": {
            "max_concurrent": parallelism,
            "per_step_k8s_config": {op.name: {"container_config": {"resources": resources}} for op in range_ops},
        }
    }
