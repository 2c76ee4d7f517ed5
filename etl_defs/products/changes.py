"""The Product MongoDB's change stream on `products`: which product ids changed since a resume token.

Only the ids are read (a projection to `documentKey`): the keyed sync re-reads the current
documents, so it never trusts an event's payload and the order of events does not matter.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bson import ObjectId, json_util
from pymongo.change_stream import CollectionChangeStream
from pymongo.errors import OperationFailure

from resources import MongoResource

PRODUCTS = "products"
#: The events that can change a product's row: its creation, its changes, its deletion.
CHANGE_TYPES = ("insert", "update", "replace", "delete")
PIPELINE = [
    {"$match": {"operationType": {"$in": list(CHANGE_TYPES)}}},
    {"$project": {"documentKey": 1, "clusterTime": 1}},
]
#: How long the server waits for new events before answering an empty batch (ms).
MAX_AWAIT_MS = 200
#: Events per round trip of the stream.
STREAM_BATCH = 1000

ResumeToken = dict[str, Any]


class ChangeHistoryLost(RuntimeError):
    """The saved resume token can no longer resume the stream (history rolled off, or the token is unusable)."""


@dataclass
class ProductChanges:
    """What one read of the stream found, and the token to resume after it."""

    start: ResumeToken
    end: ResumeToken
    keys: set[str] = field(default_factory=set)  # ObjectId hex of the changed products
    #: `_id`s that are not ObjectIds: no sync can take them (every one rejects them), so only reported.
    foreign_ids: list[str] = field(default_factory=list)
    events: int = 0
    oldest: datetime | None = None  # the cluster time of the oldest event read
    caught_up: bool = False  # the read stopped because no event was left, not at a bound


def token_text(token: ResumeToken) -> str:
    """A resume token as JSON text (the sensor cursor keeps it this way)."""
    return json_util.dumps(token, sort_keys=True)


def token_from_text(text: str) -> ResumeToken:
    return json_util.loads(text)


def _watch(product_db: MongoResource, resume_after: ResumeToken | None) -> CollectionChangeStream:
    return product_db.collection(PRODUCTS).watch(
        PIPELINE, resume_after=resume_after, max_await_time_ms=MAX_AWAIT_MS, batch_size=STREAM_BATCH
    )


def current_token(product_db: MongoResource) -> ResumeToken:
    """A token for "now": a stream resumed from it sees only changes made after this call."""
    with product_db.translated_errors(), _watch(product_db, None) as stream:
        token = stream.resume_token
        if token is None:  # a server that gives no token before the first batch
            stream.try_next()
            token = stream.resume_token
    if token is None:
        raise RuntimeError(f"{product_db.display_name} gave no resume token for a new change stream on {PRODUCTS}")
    return token


def read_changes(
    product_db: MongoResource, resume_after: ResumeToken, *, max_keys: int, max_seconds: float
) -> ProductChanges:
    """The product ids changed after `resume_after`: until no event is left, `max_keys` distinct
    ids are found, or `max_seconds` pass, whichever comes first.

    `end` is the stream's own resume token after the last event read (or, once caught up, its
    post-batch token, which moves forward on an idle stream too). A refusal to resume raises
    `ChangeHistoryLost`: servers spell it differently (`ChangeStreamHistoryLost`, an
    unparsable token, another namespace's token), and none of them can go on from there.
    """
    changes = ProductChanges(start=resume_after, end=resume_after)
    deadline = time.monotonic() + max_seconds
    with product_db.translated_errors():
        try:
            with _watch(product_db, resume_after) as stream:
                while len(changes.keys) < max_keys and time.monotonic() < deadline:
                    event = stream.try_next()
                    if event is None:
                        changes.caught_up = True
                        break
                    _add(changes, event)
                if stream.resume_token is not None:
                    changes.end = stream.resume_token
        except OperationFailure as error:
            raise ChangeHistoryLost(
                f"the change stream of {PRODUCTS} cannot resume from the saved token: "
                f"{error.details.get('codeName', error.code) if error.details else error.code}: "
                f"{str(error).split(', full error:')[0]}"
            ) from None
    return changes


def _add(changes: ProductChanges, event: dict[str, Any]) -> None:
    changes.events += 1
    key = (event.get("documentKey") or {}).get("_id")
    if isinstance(key, ObjectId):
        changes.keys.add(str(key))
    else:
        changes.foreign_ids.append(repr(key)[:100])
    cluster_time = event.get("clusterTime")
    if cluster_time is not None:
        at = cluster_time.as_datetime().astimezone(UTC)
        if changes.oldest is None or at < changes.oldest:
            changes.oldest = at
