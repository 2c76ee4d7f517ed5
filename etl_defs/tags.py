"""The run tags and statuses the service sets and reads, in one place, and the run keys of the change sensors."""

import hashlib

import dagster as dg

#: Statuses of a run that has not finished yet.
IN_FLIGHT_STATUSES = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]
#: `products`, `carts` or `full`: dagster.yaml's run queue lets one run per value through.
PIPELINE_TAG = "etl-sync/pipeline"
#: What started a run, when it was not a person (`schedule`, or one of the change sensors' values below).
TRIGGER_TAG = "etl-sync/trigger"
#: TRIGGER_TAG of the keyed repairs the change sensors request (short and frequent).
PRODUCT_CHANGES_TRIGGER = "product_changes"
CART_CHANGES_TRIGGER = "cart_changes"
KEYED_REPAIR_TRIGGERS = (PRODUCT_CHANGES_TRIGGER, CART_CHANGES_TRIGGER)
#: TRIGGER_TAG of the cart sync that applies a span of the slot too large for keys, whole-table.
CART_CHANGES_FULL_TRIGGER = "cart_changes_full"
#: TRIGGER_TAG of the full syncs a change sensor requests when its changes are gone (history or slot lost).
PRODUCT_HISTORY_LOST_TRIGGER = "product_change_history_lost"
CART_SLOT_LOST_TRIGGER = "cart_slot_lost"
#: On a validation run: the sync run and job whose writes it validates.
VALIDATES_RUN_TAG = "etl-sync/validates-run"
VALIDATES_JOB_TAG = "etl-sync/validates-job"
#: On a keyed run a change sensor requested: the cluster time of the oldest change it covers (ISO 8601).
OLDEST_CHANGE_TAG = "etl-sync/oldest-change-at"

#: Dagster's own tags: run monitoring fails a run still going after this many seconds; run retries
#: launch a failed run again at most this often (the instance's `run_retries.max_retries` otherwise).
MAX_RUNTIME_TAG = dg.MAX_RUNTIME_SECONDS_TAG
MAX_RETRIES_TAG = "dagster/max_retries"
#: How long a keyed repair may run: 5000 keys (the most a change sensor puts in one run) took at most
#: 31 s here (5000 carts updated in the Order DB); ten times that. Whole-table runs: SYNC_MAX_RUNTIME_SECONDS.
KEYED_REPAIR_MAX_RUNTIME_S = 300


def sensor_run_tags(trigger: str, *, keyed: bool) -> dict[str, str]:
    """The tags of a run a change sensor requests and retries itself: when one fails, its sensor asks for its
    changes again (with the newer ones), so Dagster's run retries would only run them twice. A keyed run
    is bounded by `KEYED_REPAIR_MAX_RUNTIME_S`; a whole-table one keeps its job's bound."""
    tags = {TRIGGER_TAG: trigger, MAX_RETRIES_TAG: "0"}
    if keyed:
        tags[MAX_RUNTIME_TAG] = str(KEYED_REPAIR_MAX_RUNTIME_S)
    return tags


def run_key(trigger: str, *parts: str) -> str:
    """`<trigger>-<digest of parts>`: the same parts (a token or LSN span) always give the same key, so a
    sensor tick evaluated twice requests a run the daemon has already launched, and skips it."""
    return f"{trigger}-" + hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]
