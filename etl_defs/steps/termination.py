"""Does a running sync stop? Asked before each batch: its run is being terminated, or was failed under it."""

import time
from collections.abc import Callable

import dagster as dg

#: How often, at most, a sync asks the instance whether its run is being terminated.
TERMINATION_POLL_S = 1.0
_TERMINATING = (dg.DagsterRunStatus.CANCELING, dg.DagsterRunStatus.CANCELED)
#: A step still running while its run is already FAILURE was orphaned: run monitoring found the run's
#: worker dead (or past its max runtime) and failed the run, and a retry may be on its way.
_ORPHANED = (dg.DagsterRunStatus.FAILURE,)


def make_stop_check(context: dg.OpExecutionContext) -> Callable[[], str | None]:
    """The check the sync runs before each batch: is this run being terminated (the UI's Terminate), or
    has it been failed under this step (an orphaned step process, whose run worker died)?

    A launched run is also interrupted by a signal, but nothing can signal a run started
    with `dagster job execute`: Dagster only marks it CANCELING. So the sync reads its run's
    status itself, at most every `TERMINATION_POLL_S` seconds.
    """
    last_check = time.monotonic()

    def requested() -> str | None:
        nonlocal last_check
        now = time.monotonic()
        if now - last_check < TERMINATION_POLL_S:
            return None
        last_check = now
        try:
            run = context.instance.get_run_by_id(context.run_id)
        except Exception as error:  # noqa: BLE001 - a best-effort check must not fail the sync
            context.log.warning(f"could not read this run's status to check for termination: {error}")
            return None
        if run is not None and run.status in _TERMINATING:
            return f"termination requested: the run is {run.status.value}"
        if run is not None and run.status in _ORPHANED:
            return "this step's run was already marked failed (its worker was found dead, or ran past its max runtime)"
        return None

    return requested
