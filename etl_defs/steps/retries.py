"""Retries of a step while a database is unreachable, and only then: bad data is never retried."""

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import dagster as dg

from resources import DatabaseUnavailableError

#: A database that went away is retried this often, with exponential backoff.
MAX_CONNECTION_RETRIES = 3
RETRY_BASE_DELAY_S = 2.0


@contextmanager
def retried_while_unavailable(
    context: dg.OpExecutionContext, after_failure: str = "", before_retry: Callable[[], None] | None = None
) -> Iterator[None]:
    """Turn `DatabaseUnavailableError` into a step retry with exponential backoff, and,
    once retries run out, into a `dg.Failure` whose message names the database.

    Only unreachable databases are retried; bad data never is. `before_retry` runs just
    before a retry is requested (to record where the retry can resume).
    """
    try:
        yield
    except DatabaseUnavailableError as error:
        attempt = context.retry_number
        if attempt >= MAX_CONNECTION_RETRIES:
            # A Failure's description is the step failure's message: the database, not a wrapper.
            note = f"; {after_failure}" if after_failure else ""
            raise dg.Failure(
                description=f"{error} (gave up after {attempt} retries{note})", allow_retries=False
            ) from error
        wait = RETRY_BASE_DELAY_S * 2**attempt
        if before_retry is not None:
            before_retry()
        context.log.warning(f"{error}; retry {attempt + 1} of {MAX_CONNECTION_RETRIES} in {wait:.0f}s")
        raise dg.RetryRequested(max_retries=MAX_CONNECTION_RETRIES, seconds_to_wait=wait) from error
