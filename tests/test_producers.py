"""
Tests for L{streamsvc.producers}: the producer state machine, both
registrations, resource release on every ending, and L{send_body}'s rules.

Everything runs on a L{Clock} and in-memory consumers: no reactor, no sleeps.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IPullProducer, IPushProducer
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from zope.interface.verify import verifyObject

from streamsvc.errors import Request
from streamsvc.interfaces import IStreamProducer
from streamsvc.producers import (
    BodySent,
    FileProducer,
    IterableProducer,
    Outcome,
    SourceTruncated,
    StreamStopped,
    send_body,
    start_body,
)
from streamsvc.pull import PullDriver
from streamsvc.ranges import ByteRange
from streamsvc.testing import RecordingConsumer, SiteConnection, parse_response, record_resumes

DATA = bytes(range(256)) * 64  # 16 KiB


@pytest.fixture
def datafile(tmp_path: Any) -> str:
    path = tmp_path / "data.bin"
    path.write_bytes(DATA)
    return str(path)


def open_file(path: str) -> Any:
    return open(path, "rb", buffering=0)


def file_producer(path: str, clock: Clock, **kwargs: Any) -> FileProducer:
    kwargs.setdefault("chunk_size", 1024)
    return FileProducer.for_range(open_file(path), 0, os.path.getsize(path), clock=clock, **kwargs)


def run_one_turn(clock: Clock) -> None:
    """
    Run the one call due now, as one reactor turn would. (C{Clock.advance(0)}
    also runs calls scheduled *during* the advance, which a reactor leaves for
    its next turn.)
    """
    [call] = clock.getDelayedCalls()
    assert call.getTime() == clock.seconds()
    clock.calls.remove(call)
    call.func(*call.args, **call.kw)


# -- interfaces ----------------------------------------------------------------


def test_producers_provide_both_interfaces(datafile: str) -> None:
    """Every producer can be registered as push or as pull."""
    clock = Clock()
    for producer in (file_producer(datafile, clock), IterableProducer([b"x"], clock=clock)):
        assert verifyObject(IStreamProducer, producer)
        assert verifyObject(IPushProducer, producer)
        assert verifyObject(IPullProducer, producer)
        producer.stopProducing()


# -- FileProducer, push ---------------------------------------------------------------


def test_file_push_writes_one_chunk_per_resume_when_paused_by_write(datafile: str) -> None:
    """A consumer that pauses in write gets exactly one chunk per resume, and nothing while paused."""
    clock = Clock()
    consumer = RecordingConsumer(pause_on_write=True)
    producer = file_producer(datafile, clock)
    consumer.registerProducer(producer, True)
    producer.startProducing(consumer)
    run_one_turn(clock)
    assert consumer.chunks == [DATA[:1024]]
    clock.advance(10)
    assert len(consumer.chunks) == 1
    producer.resumeProducing()
    assert consumer.chunks == [DATA[:1024], DATA[1024:2048]]


def test_file_push_paused_or_stopped_before_its_first_turn(datafile: str) -> None:
    """
    A push producer starts on the next turn; a pause before then holds it,
    and a stop before then releases the file and leaves no timer behind.
    """
    clock = Clock()
    consumer = RecordingConsumer()
    producer = file_producer(datafile, clock)
    producer.startProducing(consumer)
    producer.pauseProducing()
    clock.advance(1)
    assert consumer.chunks == []
    producer.resumeProducing()
    assert consumer.data  # resumed: it writes at once
    producer.stopProducing()

    stopped = file_producer(datafile, clock)
    done = stopped.startProducing(RecordingConsumer())
    done.addErrback(lambda f: None)
    stopped.stopProducing()
    assert stopped.file.closed
    assert clock.getDelayedCalls() == []


def test_file_push_bounded_burst_then_next_turn(datafile: str) -> None:
    """A consumer that never pauses gets at most `burst` chunks per reactor turn."""
    clock = Clock()
    consumer = RecordingConsumer()
    producer = file_producer(datafile, clock, burst=4)
    done = producer.startProducing(consumer)
    assert consumer.chunks == []  # a push producer starts on the next reactor turn
    run_one_turn(clock)
    assert len(consumer.chunks) == 4
    run_one_turn(clock)
    assert len(consumer.chunks) == 8
    run_one_turn(clock)
    run_one_turn(clock)
    run_one_turn(clock)
    assert consumer.data == DATA
    assert done.called and done.result is None
    assert producer.file.closed
    assert clock.getDelayedCalls() == []


def test_file_completion_closes_file(datafile: str) -> None:
    """Success fires the Deferred with None and closes the file."""
    clock = Clock()
    consumer = RecordingConsumer()
    producer = file_producer(datafile, clock, chunk_size=len(DATA) - 1)
    done = producer.startProducing(consumer)
    run_one_turn(clock)
    assert consumer.data == DATA
    assert done.called and done.result is None
    assert producer.file.closed


def test_a_body_of_one_chunk_is_written_at_once_without_a_turn(datafile: str) -> None:
    """No callLater: the whole body goes out inside startProducing, and the file is closed."""
    clock = Clock()
    consumer = RecordingConsumer()
    producer = file_producer(datafile, clock, chunk_size=len(DATA))
    done = producer.startProducing(consumer)
    assert consumer.chunks == [DATA]
    assert done.called and done.result is None
    assert producer.file.closed and clock.getDelayedCalls() == []


def test_file_stop_closes_at_once_and_fails_deferred(datafile: str) -> None:
    """stopProducing closes the file synchronously, fails the Deferred, leaves no timer, and is idempotent."""
    clock = Clock()
    consumer = RecordingConsumer()
    producer = file_producer(datafile, clock, burst=1)
    done = producer.startProducing(consumer)
    assert clock.getDelayedCalls() != []
    producer.stopProducing()
    assert producer.file.closed
    assert clock.getDelayedCalls() == []
    failure = done.result
    done.addErrback(lambda f: None)
    assert failure.check(StreamStopped)
    producer.stopProducing()  # idempotent
    written = len(consumer.chunks)
    producer.resumeProducing()
    clock.advance(1)
    assert len(consumer.chunks) == written


def test_file_stop_before_start(datafile: str) -> None:
    """A producer stopped before it started closes its file, and starting it later fails."""
    producer = file_producer(datafile, Clock())
    producer.stopProducing()
    assert producer.file.closed
    failure = producer.startProducing(RecordingConsumer()).result
    assert failure.check(StreamStopped)
    failure.cleanFailure()


def test_file_paused_before_start_writes_nothing(datafile: str) -> None:
    """Registration may pause a producer before it starts (a busy channel): it must wait."""
    clock = Clock()
    consumer = RecordingConsumer()
    producer = file_producer(datafile, clock)
    producer.pauseProducing()
    producer.startProducing(consumer)
    clock.advance(1)
    assert consumer.chunks == []
    producer.resumeProducing()
    assert consumer.chunks


def test_file_range_and_spans(datafile: str) -> None:
    """Spans mix literal bytes and file ranges, in order; length is their sum."""
    clock = Clock()
    consumer = RecordingConsumer()
    producer = FileProducer(
        open_file(datafile),
        [b"<", ByteRange(10, 5000), b"|", ByteRange(9000, 3), b">"],
        chunk_size=1000,
        clock=clock,
    )
    assert producer.length == 5006
    producer.startProducing(consumer)
    clock.advance(0)
    assert consumer.data == b"<" + DATA[10:5010] + b"|" + DATA[9000:9003] + b">"
    assert max(len(c) for c in consumer.chunks) == 1000


def test_file_truncated_while_sending_fails(datafile: str) -> None:
    """If the file shrinks mid-stream, the stream fails with SourceTruncated: never padded."""
    clock = Clock()
    consumer = RecordingConsumer(pause_on_write=True)
    producer = file_producer(datafile, clock)
    consumer.registerProducer(producer, True)
    done = producer.startProducing(consumer)
    run_one_turn(clock)
    os.truncate(datafile, 1500)
    producer.resumeProducing()  # bytes 1024..1500
    producer.resumeProducing()  # nothing left: truncated
    assert consumer.data == DATA[:1500]
    failure = done.result
    done.addErrback(lambda f: None)
    assert failure.check(SourceTruncated)
    assert producer.file.closed


def test_file_reentrant_stop_inside_write(datafile: str) -> None:
    """A consumer that stops the producer from inside write gets no further writes."""
    clock = Clock()
    producer = file_producer(datafile, clock)

    class Stopper(RecordingConsumer):
        def write(self, data: bytes) -> None:
            super().write(data)
            producer.stopProducing()

    consumer = Stopper()
    done = producer.startProducing(consumer)
    done.addErrback(lambda f: None)
    clock.advance(1)
    assert len(consumer.chunks) == 1
    assert producer.file.closed


def test_file_reentrant_pause_resume_inside_write(datafile: str) -> None:
    """pause+resume inside write (a transport draining at once) must not recurse or double-write."""
    clock = Clock()
    producer = file_producer(datafile, clock, burst=3)

    class Bouncer(RecordingConsumer):
        def write(self, data: bytes) -> None:
            super().write(data)
            producer.pauseProducing()
            producer.resumeProducing()

    consumer = Bouncer()
    producer.startProducing(consumer)
    run_one_turn(clock)
    assert len(consumer.chunks) == 3
    assert consumer.data == DATA[:3072]


# -- FileProducer, pull ---------------------------------------------------------------


def test_file_pull_one_chunk_per_resume(datafile: str) -> None:
    """Registered as pull, each resumeProducing writes one chunk; start writes nothing; pause is ignored."""
    clock = Clock()
    consumer = RecordingConsumer()
    producer = file_producer(datafile, clock, streaming=False)
    consumer.registerProducer(producer, False)
    done = producer.startProducing(consumer)
    assert consumer.chunks == []
    producer.resumeProducing()
    producer.pauseProducing()
    producer.resumeProducing()
    assert consumer.chunks == [DATA[:1024], DATA[1024:2048]]
    assert clock.getDelayedCalls() == []
    for _ in range(20):
        producer.resumeProducing()
    assert consumer.data == DATA
    assert done.called and done.result is None
    assert producer.file.closed


# -- IterableProducer -------------------------------------------------------------------


class Tracked:
    """A generator that records whether its finally ran."""

    def __init__(self, items: list[Any]) -> None:
        self.items = items
        self.closed = False
        self.pulled = 0

    def __iter__(self) -> Any:
        try:
            for item in self.items:
                self.pulled += 1
                yield item
        finally:
            self.closed = True


def test_iterable_pulls_only_while_resumed() -> None:
    """The generator is advanced once per write while the consumer pauses us."""
    clock = Clock()
    source = Tracked([b"a", b"b", b"c"])
    consumer = RecordingConsumer(pause_on_write=True)
    producer = IterableProducer(iter(source), clock=clock)
    consumer.registerProducer(producer, True)
    producer.startProducing(consumer)
    clock.advance(1)
    assert source.pulled == 1
    assert consumer.chunks == [b"a"]


def test_iterable_stop_closes_generator_at_once() -> None:
    """On disconnect the generator's finally runs immediately."""
    clock = Clock()
    source = Tracked([b"a"] * 100)
    consumer = RecordingConsumer(pause_on_write=True)
    producer = IterableProducer(iter(source), clock=clock)
    consumer.registerProducer(producer, True)
    done = producer.startProducing(consumer)
    done.addErrback(lambda f: None)
    run_one_turn(clock)
    assert not source.closed
    producer.stopProducing()
    assert source.closed


def test_iterable_error_fails_deferred() -> None:
    """An exception in the generator fails the completion Deferred with it."""

    def broken() -> Any:
        yield b"ok"
        raise ValueError("boom")

    consumer = RecordingConsumer()
    clock = Clock()
    done = IterableProducer(broken(), clock=clock).startProducing(consumer)
    clock.advance(0)
    assert consumer.data == b"ok"
    failure = done.result
    done.addErrback(lambda f: None)
    assert failure.check(ValueError)


def test_iterable_rejects_text() -> None:
    """Yielding str is a programming error reported as a failed stream, not a silent encode."""
    clock = Clock()
    done = IterableProducer(["text"], clock=clock).startProducing(RecordingConsumer())
    clock.advance(0)
    failure = done.result
    done.addErrback(lambda f: None)
    assert failure.check(TypeError)


def test_iterable_deferred_items_wait_and_cancel_on_stop() -> None:
    """A pending Deferred item blocks further pulls; stopping cancels it and closes the generator."""
    clock = Clock()
    pending: Deferred[bytes] = Deferred()
    cancelled = []
    pending.addErrback(lambda f: cancelled.append(f.check(CancelledError)))
    source = Tracked([succeed(b"first"), pending, b"never"])
    consumer = RecordingConsumer()
    producer = IterableProducer(iter(source), clock=clock)
    done = producer.startProducing(consumer)
    done.addErrback(lambda f: None)
    clock.advance(1)
    assert consumer.data == b"first"
    assert source.pulled == 2
    producer.stopProducing()
    assert cancelled == [CancelledError]
    assert source.closed


def test_iterable_deferred_item_arrives_later() -> None:
    """When a pending item arrives, it is written and production continues."""
    clock = Clock()
    later: Deferred[bytes] = Deferred()
    consumer = RecordingConsumer()
    done = IterableProducer([later, b"!"], clock=clock).startProducing(consumer)
    assert consumer.data == b""
    later.callback(b"hello")
    clock.advance(0)
    assert consumer.data == b"hello!"
    assert done.called


def test_iterable_coroutine_items() -> None:
    """Items may be coroutines resolving to bytes."""

    async def item(d: Deferred[bytes]) -> bytes:
        return await d

    d1: Deferred[bytes] = Deferred()
    consumer = RecordingConsumer()
    clock = Clock()
    done = IterableProducer([item(d1), b"z"], clock=clock).startProducing(consumer)
    clock.advance(0)
    d1.callback(b"y")
    assert consumer.data == b"yz"
    assert done.called


def test_async_generator_streams_and_closes_on_stop() -> None:
    """An async generator is pulled item by item; stopping while it awaits runs its finally."""
    gate: Deferred[None] = Deferred()
    state = {"closed": False}

    async def agen() -> Any:
        try:
            yield b"one"
            await gate
            yield b"two"
        finally:
            state["closed"] = True

    clock = Clock()
    consumer = RecordingConsumer()
    producer = IterableProducer(agen(), clock=clock)
    done = producer.startProducing(consumer)
    done.addErrback(lambda f: None)
    clock.advance(0)
    assert consumer.data == b"one"
    assert not state["closed"]
    producer.stopProducing()
    assert state["closed"]


def test_async_generator_completes() -> None:
    """An async generator that ends completes the stream."""

    async def agen() -> Any:
        for part in (b"a", b"b"):
            yield part

    clock = Clock()
    consumer = RecordingConsumer()
    done = IterableProducer(agen(), clock=clock).startProducing(consumer)
    clock.advance(0)
    assert consumer.data == b"ab"
    assert done.called and done.result is None


def test_iterable_pull_mode() -> None:
    """Registered as pull, one item per resumeProducing."""
    consumer = RecordingConsumer()
    producer = IterableProducer([b"a", b"b"], streaming=False, clock=Clock())
    done = producer.startProducing(consumer)
    producer.resumeProducing()
    assert consumer.data == b"a"
    producer.resumeProducing()
    producer.resumeProducing()
    assert consumer.data == b"ab"
    assert done.called


def test_known_length_shorter_source_is_truncation() -> None:
    """A source that ends before its declared length fails: the response cannot be clean."""
    clock = Clock()
    done = IterableProducer([b"abc"], length=10, clock=clock).startProducing(
        RecordingConsumer()
    )
    clock.advance(0)
    failure = done.result
    done.addErrback(lambda f: None)
    assert failure.check(SourceTruncated)


# -- send_body over a real Site on a StringTransport ------------------------------------


class Streaming(Resource):
    """Serves whatever producer the test hands it, through send_body."""

    isLeaf = True

    def __init__(self, make: Any) -> None:
        super().__init__()
        self.make = make
        self.results: list[BodySent] = []
        self.producers: list[Any] = []
        self.requests: list[Any] = []
        self.sent: list[Deferred[BodySent]] = []
        self.streams: list[Any] = []

    def render_GET(self, request: Any) -> int:
        self.requests.append(request)
        producer = self.make()
        self.producers.append(producer)
        request.setHeader(b"content-type", b"application/octet-stream")
        stream = start_body(request, producer)
        self.streams.append(stream)
        self.sent.append(stream.done)
        stream.done.addCallback(self.results.append)
        return NOT_DONE_YET


def make_site(make: Any, clock: Clock) -> tuple[Site, Streaming]:
    resource = Streaming(make)
    site = Site(resource, reactor=clock)
    site.requestFactory = Request
    return site, resource


def test_send_body_success_sets_length_and_finishes(datafile: str) -> None:
    """A known length is sent with Content-Length (no chunking) and the request is finished."""
    clock = Clock()
    site, resource = make_site(lambda: file_producer(datafile, clock), clock)
    conn = SiteConnection(site)
    conn.request("GET", "/")
    conn.read_until_quiet(clock)
    response = conn.response()
    assert response.code == 200
    assert response.header("content-length") == str(len(DATA))
    assert response.header("transfer-encoding") is None
    assert response.body == DATA and response.complete
    assert resource.results == [BodySent(Outcome.COMPLETE, len(DATA))]
    assert resource.producers[0].file.closed


def test_send_body_unknown_length_is_chunked() -> None:
    """An unknown length is sent chunked, with a terminating chunk."""
    clock = Clock()
    site, resource = make_site(lambda: IterableProducer([b"ab", b"cd"], clock=clock), clock)
    conn = SiteConnection(site)
    conn.request("GET", "/")
    clock.advance(0)
    response = conn.response()
    assert response.header("transfer-encoding") == "chunked"
    assert response.header("content-length") is None
    assert response.body == b"abcd" and response.complete


def test_send_body_backpressure_through_channel(datafile: str) -> None:
    """Pausing the transport pauses the producer: no bytes while paused, more after resume."""
    clock = Clock()
    site, resource = make_site(lambda: file_producer(datafile, clock, burst=1), clock)
    conn = SiteConnection(site, buffer_size=2048)
    conn.request("GET", "/")
    clock.advance(1)
    producer = resource.producers[0]
    assert conn.transport.producer_paused
    written = producer.bytes_written
    assert written <= 2048 + 1024
    clock.advance(1)
    assert producer.bytes_written == written
    conn.read()
    assert producer.bytes_written > written
    conn.read_until_quiet(clock)
    assert conn.response().body == DATA


def test_send_body_disconnect_stops_and_closes(datafile: str) -> None:
    """A client that goes away mid-body: producer stopped, file closed, request never finished."""
    clock = Clock()
    site, resource = make_site(lambda: file_producer(datafile, clock, burst=1), clock)
    conn = SiteConnection(site)
    conn.request("GET", "/")
    run_one_turn(clock)
    producer = resource.producers[0]
    assert producer.bytes_written == 1024 and not producer.file.closed
    conn.disconnect()
    assert producer.file.closed
    assert resource.results == [BodySent(Outcome.CLIENT_GONE, producer.bytes_written)]
    assert clock.getDelayedCalls() == []
    assert not conn.response().complete


def test_send_body_error_before_first_byte_is_json_500() -> None:
    """A source that fails before writing anything yields a JSON 500, not a broken connection."""
    clock = Clock()

    def broken() -> Any:
        raise OSError("disk on fire")
        yield b""  # pragma: no cover

    site, resource = make_site(lambda: IterableProducer(broken(), clock=clock), clock)
    conn = SiteConnection(site)
    conn.request("GET", "/")
    clock.advance(0)
    response = conn.response()
    assert response.code == 500
    assert json.loads(response.body) == {"error": "internal server error"}
    assert b"disk on fire" not in conn.transport.value()
    assert resource.results[0].outcome is Outcome.ERROR
    assert not conn.aborted


def test_send_body_error_after_body_started_aborts() -> None:
    """A source that fails mid-body aborts the connection: the chunked body is never terminated."""
    clock = Clock()

    def broken() -> Any:
        yield b"partial"
        raise OSError("lost the disk")

    site, resource = make_site(lambda: IterableProducer(broken(), clock=clock), clock)
    conn = SiteConnection(site)
    conn.request("GET", "/")
    clock.advance(0)
    response = conn.response()
    assert response.code == 200
    assert response.body == b"partial"
    assert not response.complete
    assert conn.aborted
    assert resource.results[0].outcome is Outcome.ERROR


def test_send_body_truncated_file_aborts(datafile: str) -> None:
    """A file that shrinks mid-download aborts the connection short of Content-Length."""
    clock = Clock()
    site, resource = make_site(lambda: file_producer(datafile, clock, burst=1), clock)
    conn = SiteConnection(site)
    conn.request("GET", "/")
    os.truncate(datafile, 4000)
    conn.read_until_quiet(clock)
    response = conn.response()
    assert response.header("content-length") == str(len(DATA))
    assert response.body == DATA[:4000]
    assert not response.complete
    assert conn.aborted
    assert resource.producers[0].file.closed


# -- pull registration: our own driver, never Twisted's _PullToPush ---------------


def test_send_body_pull_registration(datafile: str) -> None:
    """
    A pull producer is driven by a L{PullDriver} on the Site's clock (registered
    with the channel as a push producer), one chunk per resumeProducing.
    """
    clock = Clock()
    site, resource = make_site(lambda: file_producer(datafile, clock, streaming=False), clock)
    conn = SiteConnection(site)
    conn.request("GET", "/")
    request = resource.requests[0]
    stream = resource.streams[0]
    assert request.producer is stream
    assert isinstance(stream.driver, PullDriver)
    assert stream.driver.producer is resource.producers[0]
    conn.read_until_quiet(clock)
    response = conn.response()
    assert response.body == DATA and response.complete
    assert resource.results == [BodySent(Outcome.COMPLETE, len(DATA))]
    assert request.producer is None and streamsvc_calls(clock) == []


def streamsvc_calls(clock: Clock) -> list[Any]:
    """What is scheduled on C{clock}, but the channel's own idle timeout."""
    return [c for c in clock.getDelayedCalls() if "timedOut" not in c.func.__name__]


class DirectThenStreamed(Resource):
    """The first request gets 100 kB written directly, every later one a streamed file."""

    isLeaf = True

    def __init__(self, make: Any) -> None:
        super().__init__()
        self.make = make
        self.count = 0
        self.results: list[BodySent] = []

    def render_GET(self, request: Any) -> Any:
        self.count += 1
        if self.count == 1:
            return b"d" * 100_000
        send_body(request, self.make()).addCallback(self.results.append)
        return NOT_DONE_YET


@pytest.mark.parametrize("streaming", [True, False], ids=["push", "pull"])
def test_pipelined_response_after_a_full_buffer_completes(
    tmp_path: Any, streaming: bool
) -> None:
    """
    A pipelined response that starts while the previous one left the buffer
    over its mark is paused twice (headers, then body) and resumed once when
    the buffer drains. It must still complete: Twisted's counting pull adapter
    stalled here after exactly one chunk.
    """
    payload = os.urandom(300_000)
    path = tmp_path / "big.bin"
    path.write_bytes(payload)
    clock = Clock()

    def make() -> FileProducer:
        return FileProducer.for_range(
            open_file(str(path)), 0, len(payload), clock=clock, streaming=streaming
        )

    resource = DirectThenStreamed(make)
    site = Site(resource, reactor=clock)
    site.requestFactory = Request
    conn = SiteConnection(site)
    conn.send(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n")
    conn.read_until_quiet(clock)
    raw = conn.transport.value()
    first_end = raw.index(b"d" * 100_000) + 100_000
    second = parse_response(raw[first_end:])
    assert second.complete and second.body == payload
    assert resource.results == [BodySent(Outcome.COMPLETE, len(payload))]


def test_pull_async_source_waits_without_spinning() -> None:
    """
    While a pull producer's asynchronous chunk is pending nothing is called
    and nothing is scheduled: the driver waits for the chunk, no busy loop.
    """
    clock = Clock()
    gate: Deferred[bytes] = Deferred()
    site, resource = make_site(
        lambda: IterableProducer([b"first", gate, b"last"], streaming=False, clock=clock), clock
    )
    conn = SiteConnection(site)
    conn.request("GET", "/")
    calls = record_resumes(resource.producers[0])
    for _ in range(5):
        conn.read_until_quiet(clock)
    assert len(calls) == 2  # "first", then the call that found the gate pending
    assert clock.getDelayedCalls() == []
    gate.callback(b"second")
    conn.read_until_quiet(clock)
    assert conn.response().body == b"firstsecondlast"
    assert resource.results[0].outcome is Outcome.COMPLETE


def test_when_ready_tracks_a_pending_chunk() -> None:
    """when_ready: None while nothing is pending; a Deferred that fires once the chunk is written."""
    gate: Deferred[bytes] = Deferred()
    consumer = RecordingConsumer()
    producer = IterableProducer([gate], streaming=False, clock=Clock())
    producer.startProducing(consumer)
    assert producer.when_ready() is None
    producer.resumeProducing()
    ready = producer.when_ready()
    assert ready is not None and not ready.called
    gate.callback(b"x")
    assert ready.called and consumer.data == b"x"
    assert producer.when_ready() is None


def test_when_ready_fires_when_stopped() -> None:
    """A stopped stream wakes whoever waits on it (the driver then sees it stopped)."""
    consumer = RecordingConsumer()
    producer = IterableProducer([Deferred()], streaming=False, clock=Clock())
    producer.startProducing(consumer).addErrback(lambda f: None)
    producer.resumeProducing()
    ready = producer.when_ready()
    assert ready is not None
    producer.stopProducing()
    assert ready.called


# -- server-side stops ------------------------------------------------------------


def waiting_source(first: bytes, closed: list[bool]) -> Any:
    try:
        yield first
        yield Deferred()  # the next chunk never comes on its own
    finally:
        closed.append(True)


def test_cancel_mid_body_aborts_and_reports_cancelled() -> None:
    """
    Cancelling send_body's Deferred mid-body is a server-side stop: the source
    is closed, the connection aborted (never left open, never finished short)
    and the outcome is CANCELLED, not CLIENT_GONE.
    """
    clock = Clock()
    closed: list[bool] = []
    site, resource = make_site(
        lambda: IterableProducer(waiting_source(b"x" * 1000, closed), length=10_000, clock=clock),
        clock,
    )
    conn = SiteConnection(site)
    conn.request("GET", "/")
    clock.advance(0)
    assert conn.response().body == b"x" * 1000
    resource.sent[0].cancel()
    assert resource.results == [BodySent(Outcome.CANCELLED, 1000)]
    assert closed == [True]
    assert conn.aborted
    assert not conn.response().complete


def test_stop_shutdown_reports_its_outcome() -> None:
    """BodyStream.stop(SHUTDOWN) mid-body: aborted, the source closed, outcome SHUTDOWN."""
    clock = Clock()
    closed: list[bool] = []
    site, resource = make_site(
        lambda: IterableProducer(waiting_source(b"y" * 10, closed), clock=clock), clock
    )
    conn = SiteConnection(site)
    conn.request("GET", "/")
    clock.advance(0)
    stream = resource.streams[0]
    stream.stop(Outcome.SHUTDOWN)
    stream.stop(Outcome.CANCELLED)  # a second stop changes nothing
    assert resource.results == [BodySent(Outcome.SHUTDOWN, 10)]
    assert closed == [True] and conn.aborted
    assert clock.getDelayedCalls() == []


def test_stop_before_the_first_byte_answers_503() -> None:
    """
    Stopped before any body byte went out, the client can still be told
    properly: a JSON 503 with Retry-After, the connection left usable.
    """
    clock = Clock()
    gate: Deferred[bytes] = Deferred()
    site, resource = make_site(lambda: IterableProducer([gate], clock=clock), clock)
    conn = SiteConnection(site)
    conn.request("GET", "/")
    clock.advance(0)
    assert not resource.requests[0].startedWriting
    resource.sent[0].cancel()
    response = conn.response()
    assert response.code == 503
    assert response.header("retry-after") == "1"
    assert json.loads(response.body) == {"error": "the response was cancelled"}
    assert response.complete and not conn.aborted
    assert resource.results == [BodySent(Outcome.CANCELLED, 0)]
    assert gate.called  # the pending chunk was cancelled
    gate.addErrback(lambda f: f.trap(CancelledError))


def test_stop_after_the_end_changes_nothing(datafile: str) -> None:
    """Stopping a body that has ended is a no-op: the outcome stays what it was."""
    clock = Clock()
    site, resource = make_site(lambda: file_producer(datafile, clock), clock)
    conn = SiteConnection(site)
    conn.request("GET", "/")
    conn.read_until_quiet(clock)
    resource.streams[0].stop(Outcome.SHUTDOWN)
    assert resource.results == [BodySent(Outcome.COMPLETE, len(DATA))]
    assert conn.response().complete and not conn.aborted


# -- send_body after the client has gone -------------------------------------------


def test_send_body_after_the_client_left(datafile: str) -> None:
    """
    The asynchronous pattern (NOT_DONE_YET, a lookup, then send_body) when the
    client left in between: no exception, the file closed at once,
    CLIENT_GONE, nothing scheduled.
    """
    clock = Clock()
    requests: list[Any] = []

    class Later(Resource):
        isLeaf = True

        def render_GET(self, request: Any) -> int:
            requests.append(request)
            return NOT_DONE_YET

    site = Site(Later(), reactor=clock)
    site.requestFactory = Request
    conn = SiteConnection(site)
    conn.request("GET", "/")
    conn.disconnect()
    producer = file_producer(datafile, clock)
    result = send_body(requests[0], producer)
    assert producer.file.closed
    assert result.result == BodySent(Outcome.CLIENT_GONE, 0)
    assert clock.getDelayedCalls() == []


# -- every way out of a step ends the stream ---------------------------------------


class Custom(BaseException):
    """A BaseException that is not an Exception, safe to raise in a test."""


def raising(error: BaseException) -> Any:
    yield b"x" * 100
    raise error


class FailsThenCloseRaises:
    """Fails with an ordinary error; its close() raises a BaseException."""

    def __init__(self) -> None:
        self.calls = 0

    def __iter__(self) -> Any:
        return self

    def __next__(self) -> bytes:
        self.calls += 1
        if self.calls == 1:
            return b"x" * 100
        raise ValueError("the source failed")

    def close(self) -> None:
        raise Custom("raised by close()")


@pytest.mark.parametrize("streaming", [True, False], ids=["push", "pull"])
@pytest.mark.parametrize(
    "make",
    [lambda: raising(Custom("x")), lambda: raising(GeneratorExit()), FailsThenCloseRaises],
    ids=["custom-in-next", "GeneratorExit-in-next", "BaseException-in-close"],
)
def test_base_exceptions_end_the_stream(make: Any, streaming: bool) -> None:
    """
    Whatever a source raises, send_body's Deferred fires and the connection
    (whose body had started) is aborted; nothing is left scheduled.
    """
    clock = Clock()
    site, resource = make_site(lambda: IterableProducer(make(), clock=clock, streaming=streaming), clock)
    conn = SiteConnection(site)
    conn.request("GET", "/")
    with capturedLogs():
        conn.read_until_quiet(clock)
    assert resource.results[0].outcome is Outcome.ERROR
    assert conn.aborted and not conn.response().complete
    assert clock.getDelayedCalls() == []


def test_keyboard_interrupt_propagates_after_the_stream_ended() -> None:
    """KeyboardInterrupt reaches the top, but only once the stream has ended."""
    clock = Clock()
    consumer = RecordingConsumer()
    producer = IterableProducer(raising(KeyboardInterrupt()), streaming=False, clock=clock)
    done = producer.startProducing(consumer)
    producer.resumeProducing()
    with pytest.raises(KeyboardInterrupt):
        producer.resumeProducing()
    assert producer.finished
    assert done.called
    done.addErrback(lambda f: f.trap(KeyboardInterrupt))


def test_write_that_raises_fails_the_stream() -> None:
    """An exception from the consumer's write fails the stream rather than hanging it."""

    class Broken(RecordingConsumer):
        def write(self, data: bytes) -> None:
            raise RuntimeError("consumer broke")

    producer = IterableProducer([b"a", b"b"], streaming=False, clock=Clock())
    done = producer.startProducing(Broken())
    producer.resumeProducing()
    assert done.called and done.result.check(RuntimeError)
    done.addErrback(lambda f: None)


def test_async_generator_stopped_mid_anext_closes_after_its_finally() -> None:
    """
    Stopped while an anext() is pending and its finally awaits: the finally
    runs to the end and nothing is logged as an error (aclose() straight
    after the cancel used to fail with "already running").
    """
    clock = Clock()
    cleanup: Deferred[None] = Deferred()
    steps: list[str] = []

    async def source() -> Any:
        try:
            yield b"first"
            await Deferred()
            yield b"never"  # pragma: no cover
        finally:
            steps.append("finally started")
            await cleanup
            steps.append("finally completed")

    consumer = RecordingConsumer()
    producer = IterableProducer(source(), clock=clock)
    producer.startProducing(consumer).addErrback(lambda f: f.trap(StreamStopped))
    with capturedLogs() as events:
        clock.advance(0)
        assert consumer.data == b"first"
        producer.stopProducing()
        assert steps == ["finally started"]
        cleanup.callback(None)
    assert steps == ["finally started", "finally completed"]
    assert [e for e in events if e["log_level"] >= LogLevel.error] == []


# -- bounded work per reactor turn -------------------------------------------------


def test_push_turn_bounded_by_time() -> None:
    """
    Chunks that cost 3 ms each (gzip of data that compresses to nothing) end
    the turn once the 4 ms budget is spent, whatever the burst.
    """
    clock = Clock()

    def costly() -> Any:
        while True:
            clock.rightNow += 0.003  # the chunk took 3 ms; no call runs
            yield b"z"

    consumer = RecordingConsumer()
    producer = IterableProducer(costly(), clock=clock, burst=100, budget=0.004)
    producer.startProducing(consumer).addErrback(lambda f: None)
    run_one_turn(clock)
    assert len(consumer.chunks) == 2
    run_one_turn(clock)
    assert len(consumer.chunks) == 4
    producer.stopProducing()


# -- who stopped it: only the consumer's stop is "client gone" --------------------


def test_source_failing_with_stream_stopped_is_an_error_not_a_disconnect() -> None:
    """
    A source whose chunk fails with StreamStopped of its own (a nested stream
    cut upstream) while the client is still there is an error: the started
    body is aborted, never left open as if the client had gone.
    """
    clock = Clock()

    def source() -> Any:
        yield b"partial"
        failed: Deferred[bytes] = Deferred()
        failed.errback(StreamStopped("upstream cut"))
        yield failed

    site, resource = make_site(lambda: IterableProducer(source(), clock=clock), clock)
    conn = SiteConnection(site)
    conn.request("GET", "/")
    with capturedLogs():
        clock.advance(0)
    assert resource.results[0].outcome is Outcome.ERROR
    assert conn.aborted and not conn.response().complete


def test_producer_stopped_before_send_body_is_answered() -> None:
    """A producer already stopped when send_body runs gets the client a JSON 500, not silence."""
    clock = Clock()

    def stopped() -> IterableProducer:
        producer = IterableProducer([b"never"], clock=clock)
        producer.stopProducing()
        return producer

    site, resource = make_site(stopped, clock)
    conn = SiteConnection(site)
    conn.request("GET", "/")
    with capturedLogs():
        clock.advance(0)
    response = conn.response()
    assert response.code == 500 and response.complete
    assert resource.results[0].outcome is Outcome.ERROR


def test_cancel_from_inside_the_ending_reports_the_outcome(datafile: str) -> None:
    """
    done cancelled by a notifyFinish callback, which request.finish() runs
    while the stream is ending, still reports COMPLETE, never CancelledError.
    """
    clock = Clock()
    results: list[Any] = []

    class CancelsWhenFinished(Resource):
        isLeaf = True

        def render_GET(self, request: Any) -> int:
            done = send_body(request, file_producer(datafile, clock))
            request.notifyFinish().addBoth(lambda _: done.cancel())
            done.addBoth(results.append)
            return NOT_DONE_YET

    site = Site(CancelsWhenFinished(), reactor=clock)
    site.requestFactory = Request
    conn = SiteConnection(site)
    conn.request("GET", "/")
    conn.read_until_quiet(clock)
    assert conn.response().complete
    assert results == [BodySent(Outcome.COMPLETE, len(DATA))]


def test_source_that_stops_its_own_stream_is_released_once() -> None:
    """A source that stops the stream while making a chunk: stopped, released once, done once."""
    releases: list[None] = []
    producer: IterableProducer

    class StopsItself:
        def __iter__(self) -> Any:
            return self

        def __next__(self) -> bytes:
            producer.stopProducing()
            raise StopIteration

        def close(self) -> None:
            releases.append(None)

    producer = IterableProducer(StopsItself(), streaming=False, clock=Clock())
    outcomes: list[Any] = []
    producer.startProducing(RecordingConsumer()).addBoth(outcomes.append)
    producer.resumeProducing()
    assert releases == [None]
    assert len(outcomes) == 1 and outcomes[0].check(StreamStopped)
    assert producer.finished


def test_async_generator_cleanup_error_is_logged() -> None:
    """Stopped mid-anext, an async generator whose finally fails gets that failure logged."""
    clock = Clock()

    async def source() -> Any:
        try:
            yield b"first"
            await Deferred()
        finally:
            raise OSError("cursor would not close")

    consumer = RecordingConsumer()
    producer = IterableProducer(source(), clock=clock)
    producer.startProducing(consumer).addErrback(lambda f: f.trap(StreamStopped))
    with capturedLogs() as events:
        clock.advance(0)
        producer.stopProducing()
    failures = [e["log_failure"] for e in events if "log_failure" in e]
    assert any(f.check(OSError) for f in failures)
