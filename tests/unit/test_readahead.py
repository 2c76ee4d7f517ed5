"""The read-ahead threads a sync reads and plans on."""

import threading
import time

import pytest

from etl_defs.sync.readahead import ReadAhead


def test_batches_arrive_in_order_then_end() -> None:
    ahead = ReadAhead(iter([[1, 2], [3], [4, 5]]), depth=1, name="test")
    assert list(ahead) == [[1, 2], [3], [4, 5]]
    assert next(ahead, "ended") == "ended"
    ahead.close()


def test_an_error_while_reading_reaches_the_consumer_as_itself() -> None:
    def batches():
        yield [1]
        raise LookupError("the server went away")

    ahead = ReadAhead(batches(), depth=2, name="test")
    assert next(ahead) == [1]
    with pytest.raises(LookupError, match="the server went away"):
        next(ahead)
    ahead.close()


def test_the_iterator_is_advanced_and_closed_on_its_own_thread() -> None:
    seen: list[str] = []

    def batches():
        try:
            while True:
                seen.append(threading.current_thread().name)
                yield [len(seen)]
        finally:
            seen.append(f"closed on {threading.current_thread().name}")

    ahead = ReadAhead(batches(), depth=1, name="reader")
    assert next(ahead) == [1]
    ahead.close()
    assert set(seen[:-1]) == {"reader"}
    assert seen[-1] == "closed on reader"


def test_a_consumer_on_another_thread_waiting_for_a_batch_ends_when_it_is_stopped() -> None:
    """The planning thread waits on the sides' read-aheads: stopping them must end that wait."""
    gate = threading.Event()

    def slow():
        gate.wait(10)  # a database call that does not answer
        yield [1]

    side = ReadAhead(slow(), depth=1, name="side")
    got: list[object] = []
    consumer = threading.Thread(target=lambda: got.append(next(side, "ended")))
    consumer.start()
    time.sleep(0.3)
    assert consumer.is_alive()  # still waiting for the side
    side.stop()
    consumer.join(5)
    assert not consumer.is_alive()
    assert got == ["ended"]
    gate.set()
    side.close()
