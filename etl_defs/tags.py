"""The run tags the service sets and reads, in one place, and the run keys of the change sensors."""

import hashlib

#: `products`, `carts` or `full`: dagster.yaml's run queue lets one run per value through.
PIPELINE_TAG = "etl-sync/pipeline"
#: What started a run, when it was not a person (`schedule`, or one of the change sensors' values below).
TRIGGER_TAG = "etl-sync/trigger"
#: TRIGGER_TAG of the keyed repairs the change sensors request (short and frequent).
PRODUCT_CHANGES_TRIGGER = "product_changes"
CART_CHANGES_TRIGGER = "cart_changes"
KEYED_REPAIR_TRIGGERS = (PRODUCT_CHANGES_TRIGGER, CART_CHANGES_TRIGGER)
#: On a validation run: the sync run and job whose writes it validates.
VALIDATES_RUN_TAG = "etl-sync/validates-run"
VALIDATES_JOB_TAG = "etl-sync/validates-job"
#: On a keyed run a change sensor requested: the cluster time of the oldest change it covers (ISO 8601).
OLDEST_CHANGE_TAG = "etl-sync/oldest-change-at"


def run_key(trigger: str, *parts: str) -> str:
    """`<trigger>-<digest of parts>`: the same parts (a token or LSN span) always give the same key, so a
    sensor tick evaluated twice requests a run the daemon has already launched, and skips it."""
    return f"{trigger}-" + hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]
