"""
The object store's pure and in-memory logic (L{streamsvc.files.s3}), with a
Clock and StringTransport, no sockets: how a range's body is queued and its
transport paused, the stall watchdog, short and long bodies, the part body
producer, listing pages, paths, and how the store's answers map to the
contract's errors. What the real store does is in test_s3_files.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone

from streamsvc.errors import HTTPError, StoreUnavailable
from streamsvc.files.s3 import ChunksBody, ObjectEntries, _RangeBody, object_segments, store_failed
from streamsvc.files.s3client import ListPage, ObjectInfo, S3Error


def range_body(expected: int = 10, timeout: float = 5.0) -> tuple[_RangeBody, StringTransport, Clock]:
    clock = Clock()
    body = _RangeBody(expected, timeout, clock, "key")
    transport = StringTransport()
    body.makeConnection(transport)
    return body, transport, clock


def test_bytes_nobody_waits_for_are_queued_and_the_store_paused() -> None:
    body, transport, _ = range_body()
    body.dataReceived(b"abc")
    assert transport.producerState == "paused"  # one read held, the store's socket not read
    body.dataReceived(b"de")  # (the rest of a read already in hand)
    assert body.take() == b"abcde"
    assert transport.producerState == "producing"


def test_a_waiter_gets_the_next_bytes_directly() -> None:
    body, transport, _ = range_body()
    waiting = body.take()
    assert isinstance(waiting, Deferred) and not waiting.called
    body.dataReceived(b"12345")
    assert waiting.result == b"12345"
    assert transport.producerState == "producing"


def test_the_range_completes_only_with_every_byte() -> None:
    body, _, _ = range_body(expected=4)
    body.dataReceived(b"1234")
    body.connectionLost(Failure(ResponseDone()))
    assert not body.complete()  # four bytes still to take
    assert body.take() == b"1234"
    assert body.complete() and body.take() == b""


def test_a_short_body_is_a_failure_not_an_end() -> None:
    body, _, _ = range_body(expected=10)
    waiting = body.take()
    body.dataReceived(b"123")
    body.connectionLost(Failure(ResponseDone()))
    assert waiting.result == b"123"
    assert body.ended and body.failure is not None and not body.complete()


def test_a_body_longer_than_the_range_fails_and_closes_the_store_connection() -> None:
    body, transport, _ = range_body(expected=3)
    body.dataReceived(b"12345")
    assert body.failure is not None and body.failure.check(StoreUnavailable)
    assert body.failure.value.status == 502
    assert transport.producerState == "stopped"


def test_the_watchdog_fails_a_wait_longer_than_the_timeout() -> None:
    body, transport, clock = range_body(timeout=5.0)
    waiting = body.take()
    clock.advance(3)
    body.dataReceived(b"12")  # bytes came: this wait is over
    waiting = body.take()
    clock.advance(4)  # the first watchdog fires: 4 s into the second wait
    assert not waiting.called
    clock.advance(1.5)
    failure = []
    waiting.addErrback(failure.append)
    assert failure and failure[0].check(StoreUnavailable) and failure[0].value.status == 504
    assert transport.producerState == "stopped"
    assert not clock.getDelayedCalls()


def test_no_timer_is_left_once_the_range_ends() -> None:
    body, _, clock = range_body(expected=2)
    body.take()
    body.dataReceived(b"ab")
    body.connectionLost(Failure(ResponseDone()))
    assert body.complete()
    clock.advance(10)  # the watchdog finds nothing to watch
    assert not clock.getDelayedCalls()


def test_chunks_body_writes_while_the_socket_takes_and_lets_go_of_them() -> None:
    chunks = [b"a" * 10, b"b" * 10, b"c" * 10]
    producer = ChunksBody(list(chunks))
    assert producer.length == 30

    class Pausing(StringTransport):
        def write(self, data: bytes) -> None:
            super().write(data)
            producer.pauseProducing()  # every write fills the buffer

    consumer = Pausing()
    done = producer.startProducing(consumer)
    assert consumer.value() == b"a" * 10 and not done.called
    producer.resumeProducing()
    producer.resumeProducing()
    assert consumer.value() == b"".join(chunks) and done.called
    assert producer._chunks == []  # not kept by a pooled connection's last request


def test_a_stopped_chunks_body_never_fires() -> None:
    producer = ChunksBody([b"x", b"y"])
    consumer = StringTransport()
    consumer.write = lambda data: producer.stopProducing()  # type: ignore[method-assign]
    done = producer.startProducing(consumer)
    assert not done.called and producer._chunks == []


def test_a_listing_page_has_folders_then_files_and_never_its_marker() -> None:
    info = ObjectInfo(5, '"e"', 1700000000.0, None)
    entries = ObjectEntries(client=None, prefix="top/", first=ListPage(  # type: ignore[arg-type]
        prefixes=["top/sub/", "top/.hidden/"],
        objects=[("top/", info), ("top/a b#%.txt", info), ("top/.dot", info)],
        next_token=None,
    ))
    batch = next(entries)
    assert [(e["name"], e["type"], e["href"]) for e in batch.items] == [
        ("sub", "dir", "sub/"), ("a b#%.txt", "file", "a%20b%23%25.txt")]
    assert batch.last
    with pytest.raises(StopIteration):
        next(entries)


@pytest.mark.parametrize("postpath, expected", [
    ([b"a", b"b.txt"], (("a", "b.txt"), False)),
    ([b"a", b""], (("a",), True)),
    ([b""], ((), True)),
    ([], ((), False)),
    (["ü".encode()], (("ü",), False)),
])
def test_object_segments(postpath: list[bytes], expected: Any) -> None:
    assert object_segments(postpath) == expected


@pytest.mark.parametrize("postpath", [[b"\xff"], [b".env"], [b"a", b"..", b"b"], [b"a\\b"], [b"a", b"", b"b"]])
def test_paths_no_key_can_be_are_404(postpath: list[bytes]) -> None:
    with pytest.raises(HTTPError) as raised:
        object_segments(postpath)
    assert raised.value.code == 404


@pytest.mark.parametrize("status, code, expected", [
    (404, "NoSuchKey", (HTTPError, 404)),
    (403, "AccessDenied", (StoreUnavailable, 503)),
    (500, "InternalError", (StoreUnavailable, 502)),
    (503, "SlowDown", (StoreUnavailable, 502)),
])
def test_the_stores_errors_as_the_contract_says(status: int, code: str, expected: tuple[type, int]) -> None:
    with pytest.raises(expected[0]) as raised:
        store_failed(Failure(S3Error(status, code, "m")))
    error = raised.value
    assert (error.code if isinstance(error, HTTPError) else error.status) == expected[1]
    other = Failure(ValueError("not the store's"))
    assert store_failed(other) is other


def test_a_download_goes_fast_only_after_it_kept_up_and_slow_for_good_after_a_long_pause() -> None:
    from streamsvc.files.s3 import FAST_AFTER, SLOW_PAUSE, SLOW_READ, STORE_READ, ObjectProducer

    clock = Clock()
    producer = ObjectProducer(None, "key", '"e"', [b"x"], clock=clock)  # type: ignore[arg-type]
    body, transport, _ = range_body(expected=FAST_AFTER * 2)
    producer._body = body
    body.dataReceived(b"a" * (2 * SLOW_READ + 5))  # one read that came before
    assert producer._taken(body.take()) == b"a" * SLOW_READ  # handed on in small pieces from the first
    assert transport.producerState == "paused"  # the store waits while pieces remain
    assert body.take() == b"a" * SLOW_READ and body.take() == b"a" * 5
    assert transport.producerState == "producing"
    producer.pauseProducing()
    clock.advance(SLOW_PAUSE / 10)
    producer.resumeProducing()  # a fast client's pause: milliseconds
    producer._count(b"b" * FAST_AFTER)
    assert body._piece == STORE_READ  # it kept up for FAST_AFTER bytes
    producer.pauseProducing()
    clock.advance(SLOW_PAUSE)
    producer.resumeProducing()
    assert producer._slow and body._piece == SLOW_READ
    producer._count(b"c" * FAST_AFTER)
    assert body._piece == SLOW_READ  # slow for good
