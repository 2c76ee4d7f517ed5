"""Read-ahead: each side of a sync is read on a thread of its own while the sync plans and writes.

Both databases answer over sockets, and pymongo and psycopg release the GIL while they
wait, so the next batches are on their way while the current one is planned and written.
The queue is bounded (a few batches), so memory stays O(batch) whatever the table size.
An error raised while reading reaches the sync loop as that same exception, at its next
`next()`. The sync plans on one more of these threads, reading the two sides' read-aheads.
Writes stay on the sync's own thread: an interrupt (a terminated run) then lands
in the write itself, whose transaction is cancelled and rolled back.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

#: How long `close()` waits for a thread blocked in a database call before leaving it to
#: finish on its own (it is a daemon thread, and the drivers' socket timeouts end it).
JOIN_TIMEOUT_S = 30.0
_POLL_S = 0.1


class ReadAhead(Iterator[T]):
    """Iterates `batches` on a thread of its own, up to `depth` batches ahead of the consumer.

    The underlying iterator is advanced and closed on that thread only, so a cursor never
    crosses threads. `close()` stops the thread between two batches.
    """

    def __init__(self, batches: Iterable[T], *, depth: int, name: str) -> None:
        self._queue: queue.Queue[tuple[str, object]] = queue.Queue(maxsize=depth)
        self._stopping = threading.Event()
        self._finished = False
        self._thread = threading.Thread(target=self._fill, args=(batches,), name=name, daemon=True)
        self._thread.start()

    def _fill(self, batches: Iterable[T]) -> None:
        iterator = iter(batches)
        try:
            for batch in iterator:
                if not self._put(("batch", batch)):
                    return
            self._put(("end", None))
        except BaseException as error:  # noqa: BLE001 - handed to the consumer, who raises it
            self._put(("error", error))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                # Closing after a fault fails too; the fault itself reaches the consumer.
                with contextlib.suppress(Exception):
                    close()

    def _put(self, item: tuple[str, object]) -> bool:
        """Queue `item`, waiting while the queue is full; False once the consumer closed us."""
        while not self._stopping.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def __next__(self) -> T:
        while True:
            if self._finished:  # the end was read, or `stop()`: a consumer waiting on another thread ends too
                raise StopIteration
            try:
                kind, value = self._queue.get(timeout=_POLL_S)
                break
            except queue.Empty:
                continue
        if kind == "batch":
            return value  # type: ignore[return-value]
        self._finished = True
        if kind == "error":
            raise value  # type: ignore[misc]
        raise StopIteration

    def stop(self) -> None:
        """Ask the thread to stop between two batches, without waiting for it."""
        self._finished = True
        self._stopping.set()

    def close(self) -> None:
        """Stop reading ahead and wait (bounded) for the thread to close its cursor."""
        self.stop()
        self._thread.join(JOIN_TIMEOUT_S)
