# -*- test-case-name: tests.test_producers -*-
"""
Producers that move a body from a source to a consumer one chunk at a time,
and the one helper that sends such a producer as an HTTP response body.

Every class here follows L{streamsvc.interfaces.IStreamProducer}: it reads
from its source only while the consumer lets it, and it closes the source
exactly once — on success, on error, or the moment C{stopProducing} comes.
"""

from __future__ import annotations

import enum
import os
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Sequence
from inspect import iscoroutine
from typing import Any, BinaryIO, Union

import attrs
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.interfaces import (
    IConsumer,
    IDelayedCall,
    IPullProducer,
    IPushProducer,
    IReactorTime,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest
from zope.interface import implementer

from streamsvc.accesslog import redact_query
from streamsvc.errors import HTTPError, StoreUnavailable, render_error, unavailable_error
from streamsvc.interfaces import IStreamProducer
from streamsvc.pull import DEFAULT_BURST, DEFAULT_TURN_BUDGET, PullDriver
from streamsvc.ranges import ByteRange
from streamsvc.stages import ClientBuckets, ThrottleStage, TokenBucket
from streamsvc._transport import host_of, set_send_buffer, unsent_bytes

log = Logger()

#: Chunk size used when none is configured: the same as Twisted's transport
#: buffer, so one chunk fills the buffer once and the transport pauses us.
DEFAULT_CHUNK_SIZE = 64 * 1024

#: A pause of a response this long shows a slow client (a fast one's last
#: milliseconds): its transport then holds at most about SLOW_SEND_BUFFER.
SLOW_PAUSE = 0.5
SLOW_SEND_BUFFER = 16 * 1024

#: Exceptions that must reach the top once the stream they interrupted has
#: been ended; every other exception a source raises just fails its stream.
_FATAL = (KeyboardInterrupt, SystemExit)

__all__ = [
    "BodySent",
    "BodyStream",
    "FileProducer",
    "IterableProducer",
    "Outcome",
    "SourceTruncated",
    "StreamProducer",
    "StreamStopped",
    "default_clock",
    "read_spans",
    "send_at_once",
    "send_body",
    "start_body",
    "throttled",
]


class StreamStopped(Exception):
    """
    C{stopProducing} was called before the body was complete: the client went
    away, or the server cut the stream (a timeout, shutdown).
    """


class SourceTruncated(IOError):
    """
    The source ended before the number of bytes the producer promised: the
    file shrank while it was being sent. The response must be aborted, never
    padded and never finished cleanly short.
    """


class _Lifecycle(enum.Enum):
    IDLE = "idle"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    STOPPED = "stopped"


Chunk = Union[bytes, "Deferred[bytes | None]", None]


def default_clock() -> IReactorTime:
    """The global reactor, imported when first needed (never at import time)."""
    from twisted.internet import reactor

    return reactor  # type: ignore[return-value]


@implementer(IStreamProducer, IPullProducer)
class StreamProducer:
    """
    The state machine shared by every producer; subclasses only say how to
    get the next chunk (L{_next_chunk}) and how to let go of the source
    (L{_release}).

    Push mode (C{streaming=True}) writes chunks until paused, at most
    C{burst} per reactor turn and for at most C{budget} seconds of the clock,
    then continues on the next turn through C{clock.callLater(0, ...)}. The
    time bound matters when the consumer never pauses us (gzip of data that
    compresses to nothing, a listing that stats as it goes): a count alone
    let one gzipped listing hold the reactor for 25 ms a turn. It starts on
    the turn after C{startProducing}, not inside it: a reactor turn then
    first renders every request that arrived in it and only then produces
    their bodies, together. That batching, at the price of one reactor turn
    of latency, is what brought small-file requests per second level with
    static.File, whose cooperator batches the same way (BENCHMARKS.md).

    Pull mode writes one chunk per C{resumeProducing}. A chunk may be a
    C{Deferred} (an asynchronous source); while it is pending nothing else
    is asked of the source, and L{when_ready} says when to ask again.

    Every way out of a step ends the stream: an exception from the source
    or the consumer fails it (a C{BaseException} too — C{GeneratorExit}, or
    a C{KeyboardInterrupt}, which is re-raised once the stream has ended),
    so a response can never be left running with nothing scheduled. (Raised
    where a Deferred delivers an asynchronous chunk, Twisted's Deferred
    machinery catches even C{KeyboardInterrupt}; the stream then fails with
    it, and it goes no further.)

    @ivar bytes_written: bytes handed to the consumer so far.
    """

    # Slotted, for the memory of each open stream; a __dict__ still, made
    # only if used (a subclass's own state, a method wrapped on one
    # instance as streamsvc.testing does).
    __slots__ = (
        "streaming", "bytes_written", "_clock", "_burst", "_budget", "_state", "_paused",
        "_running", "_pending", "_waiters", "_tick", "_consumer", "_done", "__dict__", "__weakref__",
    )

    length: int | None = None

    def __init__(
        self,
        *,
        streaming: bool = True,
        clock: IReactorTime | None = None,
        burst: int = DEFAULT_BURST,
        budget: float = DEFAULT_TURN_BUDGET,
    ) -> None:
        self.streaming = streaming
        self.bytes_written = 0
        self._clock = clock
        self._burst = burst
        self._budget = budget
        self._state = _Lifecycle.IDLE
        self._paused = False
        self._running = False
        self._pending: Deferred[Any] | None = None
        self._waiters: list[Deferred[None]] = []
        self._tick: IDelayedCall | None = None
        self._consumer: IConsumer | None = None
        self._done: Deferred[None] | None = None

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self._state.value}"
            f"{' paused' if self._paused else ''} {self.bytes_written}/{self.length}>"
        )

    # -- what subclasses provide -------------------------------------------

    def _next_chunk(self) -> Chunk:
        """
        Return the next chunk: bytes (possibly empty), a Deferred that fires
        with bytes (or None for the end), or None when the body is complete.
        May raise; the stream then fails.
        """
        raise NotImplementedError

    def _release(self) -> None:
        """Close the source. Called exactly once, whatever the ending."""

    def _one_step(self) -> bool:
        """Whether the whole body is known to be one chunk (then it is sent at once)."""
        return False

    # -- IStreamProducer ----------------------------------------------------

    @property
    def finished(self) -> bool:
        """Whether the stream has ended, one way or another."""
        return self._state not in (_Lifecycle.IDLE, _Lifecycle.RUNNING)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        if self._state is _Lifecycle.STOPPED:
            return fail(StreamStopped("stopped before it started"))
        if self._state is not _Lifecycle.IDLE:
            raise RuntimeError(f"{self!r} was already started")
        self._consumer = consumer
        self._state = _Lifecycle.RUNNING
        self._done = Deferred(lambda d: self.stopProducing())
        done = self._done
        if self.streaming:
            if self._one_step():
                # Nothing to be fair about: the whole body now, in the
                # same write as the headers, with no turn of the reactor.
                self._run()
            else:
                # On the next turn, with every other body started in this one.
                self._tick = self._get_clock().callLater(0, self._on_tick)
        return done

    def pauseProducing(self) -> None:
        if self.streaming:
            self._paused = True
            self._cancel_tick()

    def resumeProducing(self) -> None:
        if self.streaming:
            self._paused = False
            if self._state is _Lifecycle.RUNNING:
                self._run()
        elif self._state is _Lifecycle.RUNNING and self._pending is None:
            self._step()

    def stopProducing(self) -> None:
        if self.finished:
            return
        self._end(_Lifecycle.STOPPED, Failure(StreamStopped()))

    def when_ready(self) -> Deferred[None] | None:
        """
        C{None} when a C{resumeProducing} now would do work; while an
        asynchronous chunk is pending, a Deferred that fires once it has been
        delivered or the stream has ended. What lets a pull driver wait
        instead of spinning (see L{streamsvc.pull}).
        """
        if self._pending is None:
            return None
        waiter: Deferred[None] = Deferred()
        self._waiters.append(waiter)
        return waiter

    # -- the machinery -------------------------------------------------------

    def _get_clock(self) -> IReactorTime:
        if self._clock is None:
            self._clock = default_clock()
        return self._clock

    def _can_step(self) -> bool:
        return (
            self._state is _Lifecycle.RUNNING
            and not self._paused
            and self._pending is None
        )

    def _run(self) -> None:
        """
        Push driver: write up to C{burst} chunks, for up to C{budget}
        seconds, then yield the reactor.

        Re-entrant calls (C{write} resuming us synchronously) return at once;
        the outer loop sees the new state and carries on.
        """
        if self._running:
            return
        self._cancel_tick()
        self._running = True
        clock = self._get_clock()
        try:
            deadline = clock.seconds() + self._budget
            for _ in range(self._burst):
                if not self._can_step():
                    return
                self._step()
                if clock.seconds() >= deadline:
                    break
        finally:
            self._running = False
        if self._can_step():
            self._tick = clock.callLater(0, self._on_tick)

    def _on_tick(self) -> None:
        self._tick = None
        self._run()

    def _cancel_tick(self) -> None:
        if self._tick is not None:
            tick, self._tick = self._tick, None
            if tick.active():
                tick.cancel()

    def _step(self) -> None:
        self._guarded(self._take_next)

    def _take_next(self) -> None:
        chunk = self._next_chunk()
        if isinstance(chunk, Deferred):
            self._pending = chunk
            chunk.addCallbacks(self._arrived, self._arrival_failed)
        else:
            self._deliver(chunk)

    def _guarded(self, step: Callable[..., None], *args: Any) -> None:
        """Run C{step}; whatever it raises fails the stream (fatal ones re-raised after)."""
        try:
            step(*args)
        except BaseException as error:
            self._fail(Failure())
            if isinstance(error, _FATAL):
                raise

    def _arrived(self, chunk: bytes | None) -> None:
        self._pending = None
        if self._state is not _Lifecycle.RUNNING:
            return
        self._guarded(self._deliver, chunk)
        self._wake()
        if self.streaming and self._state is _Lifecycle.RUNNING:
            self._run()

    def _arrival_failed(self, failure: Failure) -> None:
        self._pending = None
        if self._state is _Lifecycle.RUNNING:
            self._fail(failure)
        elif not failure.check(CancelledError):
            # We cancelled it while stopping, and the source's own cleanup
            # (an async generator's finally) failed: nobody else will say so.
            log.failure("Error while releasing the source of {producer!r}", failure, producer=self)

    def _deliver(self, chunk: bytes | None) -> None:
        if self._state is not _Lifecycle.RUNNING:
            return  # the source stopped or failed the stream while making this chunk
        if chunk is None:
            self._complete()
            return
        if not chunk:
            return
        if self.length is not None and self.bytes_written + len(chunk) > self.length:
            self._fail(Failure(RuntimeError(f"{self!r} produced more than its length")))
            return
        self.bytes_written += len(chunk)
        assert self._consumer is not None
        self._consumer.write(chunk)

    def _complete(self) -> None:
        if self.length is not None and self.bytes_written != self.length:
            self._fail(
                Failure(
                    SourceTruncated(
                        f"source ended after {self.bytes_written} of {self.length} bytes"
                    )
                )
            )
            return
        self._end(_Lifecycle.DONE, None)

    def _fail(self, failure: Failure) -> None:
        if self._state is _Lifecycle.RUNNING:
            self._end(_Lifecycle.FAILED, failure)

    def _end(self, state: _Lifecycle, failure: Failure | None) -> None:
        """
        The one way a stream ends: release everything, then say how it
        ended. A fatal exception raised while releasing is re-raised only
        after the completion Deferred has fired.
        """
        self._state = state
        fatal = self._cleanup()
        done = self._done
        if done is not None:  # None: stopped before it was ever started
            if failure is None:
                done.callback(None)
            else:
                done.errback(failure)
        self._wake()  # after: whoever waits then finds the stream ended, and unregistered
        if fatal is not None:
            raise fatal

    def _cleanup(self) -> BaseException | None:
        self._cancel_tick()
        self._consumer = None
        pending, self._pending = self._pending, None
        fatal = None
        steps = [self._release] if pending is None else [pending.cancel, self._release]
        for step in steps:
            try:
                step()
            except BaseException as error:
                log.failure("Error while releasing the source of {producer!r}", producer=self)
                if isinstance(error, _FATAL):
                    fatal = error
        return fatal

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)


Span = Union[bytes, ByteRange]


class FileProducer(StreamProducer):
    """
    Streams byte ranges of an open file, interleaved with literal bytes.

    One range is the plain download (C{[ByteRange(0, size)]}); several, with
    part headers between them, make a multipart/byteranges body. The spans
    stay a plain value (L{spans}) rather than state hidden in a read loop, so a
    zero-copy sender can take over the same job.

    Reads use C{os.pread}, so nothing depends on the file position. A read
    that comes back short means the file was truncated while being sent: the
    stream fails with L{SourceTruncated}. The producer owns C{file} and
    closes it when the stream ends in any way.

    C{pacing} are L{StreamProducer}'s options: C{streaming}, C{clock},
    C{burst}, C{budget}.
    """

    __slots__ = ("file", "spans", "length", "_chunk_size", "_fd", "_index", "_done_in_span")

    def __init__(
        self,
        file: BinaryIO,
        spans: Sequence[Span],
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        **pacing: Any,
    ) -> None:
        super().__init__(**pacing)
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        self.file = file
        self.spans = tuple(spans)
        self.length = sum(len(s) if isinstance(s, bytes) else s.length for s in self.spans)
        self._chunk_size = chunk_size
        self._fd = file.fileno()
        self._index = 0
        self._done_in_span = 0

    @classmethod
    def for_range(
        cls, file: BinaryIO, offset: int, length: int, **kwargs: Any
    ) -> FileProducer:
        """Stream C{[offset, offset + length)} of C{file}."""
        spans = [ByteRange(offset, length)] if length else []
        return cls(file, spans, **kwargs)

    def _next_span(self) -> Span | None:
        """
        The span the body goes on with: literal bytes (the caller moves past
        them) or a range with bytes left (from C{_done_in_span}); None at
        the end. Finished and empty ranges are skipped. Shared with the
        zero-copy sender (L{streamsvc._sendfile}), which only moves the
        range's bytes another way.
        """
        while self._index < len(self.spans):
            span = self.spans[self._index]
            if isinstance(span, bytes) or span.length > self._done_in_span:
                return span
            self._index += 1
            self._done_in_span = 0
        return None

    def _next_chunk(self) -> bytes | None:
        span = self._next_span()
        if span is None:
            return None
        if isinstance(span, bytes):
            self._index += 1
            return span
        offset = span.start + self._done_in_span
        data = os.pread(self._fd, min(self._chunk_size, span.length - self._done_in_span), offset)
        if not data:
            raise SourceTruncated(f"file ended at offset {offset}, inside range {span.start}-{span.end}")
        self._done_in_span += len(data)
        return data

    def _release(self) -> None:
        self.file.close()

    def _one_step(self) -> bool:
        return self.length <= self._chunk_size and len(self.spans) <= 1


class IterableProducer(StreamProducer):
    """
    Streams what an iterable yields: bytes, or Deferreds / coroutines that
    resolve to bytes; or what an async iterable yields.

    The next item is pulled only while the consumer lets us, so a generator
    runs exactly as fast as the client reads. When the stream ends early the
    generator is closed (C{close()} / C{aclose()}), so its C{finally} blocks
    and context managers run at once rather than whenever the garbage
    collector gets to them. An item still pending is cancelled first; an
    async generator is closed only once that cancelled C{anext()} has
    settled, since its C{finally} may itself await (and C{aclose()} on a
    generator still running fails).

    C{pacing} are L{StreamProducer}'s options.
    """

    __slots__ = ("length", "_async_iterator", "_in_flight", "_iterator")

    def __init__(
        self,
        source: Iterable[Any] | AsyncIterable[Any],
        *,
        length: int | None = None,
        **pacing: Any,
    ) -> None:
        super().__init__(**pacing)
        self.length = length
        self._iterator: Iterator[Any] | None = None
        self._async_iterator: AsyncIterator[Any] | None = None
        self._in_flight: Deferred[bytes | None] | None = None  # an anext() not yet settled
        if isinstance(source, AsyncIterable):
            self._async_iterator = aiter(source)
        else:
            self._iterator = iter(source)

    def _next_chunk(self) -> Chunk:
        if self._async_iterator is not None:
            in_flight = Deferred.fromCoroutine(self._anext(self._async_iterator))
            if not in_flight.called:
                self._in_flight = in_flight
                in_flight.addBoth(self._settled, in_flight)
            return in_flight
        assert self._iterator is not None
        try:
            item = next(self._iterator)
        except StopIteration:
            return None
        if isinstance(item, Deferred):
            return item.addCallback(_as_bytes)
        if iscoroutine(item):
            return Deferred.fromCoroutine(item).addCallback(_as_bytes)
        return _as_bytes(item)

    @staticmethod
    async def _anext(iterator: AsyncIterator[Any]) -> bytes | None:
        try:
            item = await anext(iterator)
        except StopAsyncIteration:
            return None
        return _as_bytes(item)

    def _settled(self, result: object, which: Deferred[Any]) -> object:
        if self._in_flight is which:
            self._in_flight = None
        return result

    def _release(self) -> None:
        if self._iterator is not None:
            close = getattr(self._iterator, "close", None)
            if close is not None:
                close()
        elif self._async_iterator is not None:
            in_flight, self._in_flight = self._in_flight, None
            if in_flight is None:
                self._aclose()
            else:
                # Cancelled by now, but its finally may still be awaiting.
                in_flight.addBoth(lambda result: self._aclose())

    def _aclose(self) -> None:
        aclose = getattr(self._async_iterator, "aclose", None)
        if aclose is not None:
            closing = Deferred.fromCoroutine(_await(aclose()))
            closing.addErrback(
                lambda f: log.failure("Error closing {it!r}", f, it=self._async_iterator)
            )


async def _await(awaitable: Any) -> Any:
    return await awaitable


def _as_bytes(item: object) -> bytes:
    if isinstance(item, bytes):
        return item
    if isinstance(item, (bytearray, memoryview)):
        return bytes(item)
    raise TypeError(f"a body source yielded {type(item).__name__}, expected bytes")


# -- sending a producer as a response body ------------------------------------


class Outcome(enum.Enum):
    """How a response body ended. Metrics and access logs count these."""

    #: The whole body was sent and the response finished.
    COMPLETE = "complete"
    #: The client went away first (or had already gone when sending began).
    CLIENT_GONE = "client_gone"
    #: The source failed: a JSON 500 before the first byte, an abort after.
    ERROR = "error"
    #: The store the source reads from could not be reached, stalled or
    #: failed (L{streamsvc.errors.StoreUnavailable}): a 502/503/504 before the
    #: first byte, an abort after.
    STORE_FAILED = "store_failed"
    #: Server-side code cancelled the Deferred L{send_body} returned.
    CANCELLED = "cancelled"
    #: The server is shutting down (L{BodyStream.stop} with this outcome).
    SHUTDOWN = "shutdown"
    #: The client took no bytes for the Site's C{send_timeout} while the
    #: body had more to send (L{BodyStream} stops it itself).
    TIMEOUT = "timeout"


#: What a client is told when the server stops its response before the
#: first byte of the body (after it, the connection is aborted instead).
_SERVER_STOP_ERRORS = {
    Outcome.CANCELLED: HTTPError(503, "the response was cancelled", {b"retry-after": b"1"}),
    Outcome.SHUTDOWN: HTTPError(503, "the server is shutting down", {b"retry-after": b"1"}),
    Outcome.TIMEOUT: HTTPError(504, "the response timed out"),
}


@attrs.frozen
class BodySent:
    """What L{send_body} reports when a body has ended."""

    outcome: Outcome
    bytes_sent: int
    #: Seconds the body spent paused by its consumer (the client's
    #: backpressure): a measurement, left out of comparisons.
    paused: float = attrs.field(default=0.0, eq=False)


@implementer(IPushProducer)
class BodyStream:
    """
    One response body on its way: made by L{start_body}, it owns the end of
    the response and is the handle server-side code stops it with.

    It is also what is registered with the request, as a push producer
    passing pause and resume on to the producer (or its L{PullDriver}), so
    that it knows who stopped a stream. Two kinds of stop must not be
    confused. A C{stopProducing} from the channel, or the request's
    C{notifyFinish} failing, means the connection is gone (a real TCP
    transport stops its producer I{before} the request is marked
    disconnected), so there is nobody to answer. L{stop} is the server's: a
    timeout, a shutdown, a cancel; the client is still there and must not be
    left holding a body that will never end, so the connection is aborted
    (or, before the first body byte, answered with a JSON 503). A stream
    stopped by neither (a source failing with L{StreamStopped} of its own)
    is an error like any other.

    @ivar done: fires with a L{BodySent} once the body has ended, however
        it ended; never fails. Cancelling it is L{stop}C{(Outcome.CANCELLED)}.
    @ivar driver: the L{PullDriver} of a pull producer, else None.
    """

    __slots__ = (
        "request", "producer", "kind", "_pauses", "_metrics", "done", "driver", "_clock",
        "_stopped_by", "_client_gone", "_result", "_send_timeout", "_paused_at", "_paused_for",
        "_send_timer", "_unsent_mark", "_slow", "__weakref__",
    )

    def __init__(
        self,
        request: IRequest,
        producer: IStreamProducer,
        clock: IReactorTime | None,
        kind: str = "other",
    ) -> None:
        self.request = request
        self.producer = producer
        self.kind = kind
        self._pauses = 0
        self._metrics: Any = None
        self.done: Deferred[BodySent] = Deferred(self._cancelled)
        self.driver: PullDriver | None = None
        self._clock = clock
        self._stopped_by: Outcome | None = None
        self._client_gone = False
        self._result: BodySent | None = None  # decided, about to be reported
        self._send_timeout = 0.0
        self._paused_at: float | None = None
        self._paused_for = 0.0
        self._send_timer: IDelayedCall | None = None
        self._unsent_mark: int | None = None
        self._slow = False  # a pause of SLOW_PAUSE seen: the client's send buffer made small

    def __repr__(self) -> str:
        return f"<BodyStream {redact_query(self.request.uri or b'')!r} {self.producer!r}>"

    @property
    def bytes_sent(self) -> int:
        return int(self.producer.bytes_written)

    def paused_so_far(self) -> float:
        """Seconds this body has spent paused by its client, the pause going on included."""
        paused = self._paused_for
        if self._paused_at is not None:
            paused += self._get_clock().seconds() - self._paused_at
        return paused

    def stop(self, outcome: Outcome) -> None:
        """
        Stop the body from the server side: the producer is stopped (its
        source released at once) and the client is told, and L{done} reports
        C{outcome}. Does nothing once the body has ended or is ending.
        """
        if self._result is not None or self.done.called or self._stopped_by is not None:
            return
        self._stopped_by = outcome
        self.producer.stopProducing()

    def _cancelled(self, done: Deferred[BodySent]) -> None:
        if self._result is not None:
            # Cancelled from inside the ending (a notifyFinish callback run by
            # request.finish()): the outcome is decided; report it, not a
            # CancelledError.
            done.callback(self._result)
        else:
            self.stop(Outcome.CANCELLED)

    # IPushProducer, for the request's channel

    def pauseProducing(self) -> None:
        if self._paused_at is None and self._result is None:
            self._paused_at = self._get_clock().seconds()
            if not self._pauses:
                self._let_go_of_headers()
            self._pauses += 1
            self._arm_send_timeout()
        (self.driver or self.producer).pauseProducing()

    def _let_go_of_headers(self) -> None:
        """
        The first time the client holds the body back, the response's
        headers (written by now) are let go: nothing reads them again, and a
        slow client's connection would otherwise keep a list per header and
        their dict, some 2 KiB, for as long as it takes.
        """
        request = self.request
        if getattr(request, "startedWriting", False):
            request.responseHeaders = Headers()

    def resumeProducing(self) -> None:
        self._resumed()
        (self.driver or self.producer).resumeProducing()

    def _resumed(self) -> None:
        if self._paused_at is not None:
            pause = self._get_clock().seconds() - self._paused_at
            self._paused_for += pause
            self._paused_at = None
            if pause >= SLOW_PAUSE and not self._slow:
                # A slow client: its connection holds less from now on (the
                # transport pauses us sooner). A fast one's pauses last
                # milliseconds and it keeps Twisted's 64 KiB.
                self._slow = True
                channel = getattr(self.request, "channel", None)
                set_send_buffer(getattr(channel, "transport", None), SLOW_SEND_BUFFER)
        # The send timer is left running: firing while the body flows, it
        # does nothing (_send_stalled), and the next pause moves it rather
        # than making another. A slow client pauses and resumes its stream
        # many times a second, and every cancelled DelayedCall stays in the
        # reactor's heap until its time would have come: two per slow
        # connection, on average, when each pause made a new one.

    def _stop_send_timer(self) -> None:
        timer, self._send_timer = self._send_timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _get_clock(self) -> IReactorTime:
        if self._clock is None:
            self._clock = _site_clock(self.request)
        return self._clock

    # send_timeout: a client that takes nothing while we have more to send

    def _arm_send_timeout(self) -> None:
        if self._send_timeout > 0:
            self._unsent_mark = unsent_bytes(getattr(self.request.channel, "transport", None))
            timer = self._send_timer
            if timer is not None and timer.active():
                timer.reset(self._send_timeout)
            else:
                self._send_timer = self._get_clock().callLater(self._send_timeout, self._send_stalled)

    def _send_stalled(self) -> None:
        """
        Paused for C{send_timeout}: unless the client took some of what the
        transport holds meanwhile (progress, however slow: wait again), the
        body is stopped as L{Outcome.TIMEOUT}, its source released and the
        connection aborted.
        """
        self._send_timer = None
        if self._paused_at is None:
            return  # flowing again since: the next pause starts the wait anew
        unsent = unsent_bytes(getattr(self.request.channel, "transport", None))
        if unsent is not None and self._unsent_mark is not None and unsent < self._unsent_mark:
            self._arm_send_timeout()
            return
        log.info(
            "Client of {uri} took nothing for {seconds} s: response aborted",
            uri=redact_query(self.request.uri or b""),
            seconds=self._send_timeout,
        )
        if self._metrics is not None:
            self._metrics.timeout("send")
        self.stop(Outcome.TIMEOUT)

    def stopProducing(self) -> None:
        self._client_gone = True
        (self.driver or self.producer).stopProducing()

    # the ending

    def _start(self) -> None:
        request, producer = self.request, self.producer
        if request._disconnected or request.channel is None:  # type: ignore[attr-defined]
            # The client left while the response was being prepared (render
            # returned NOT_DONE_YET, a lookup ran): release the source now.
            producer.stopProducing()
            self.done.callback(BodySent(Outcome.CLIENT_GONE, 0))
            return
        if producer.length is None:
            request.responseHeaders.removeHeader(b"content-length")
        else:
            request.setHeader(b"content-length", b"%d" % (producer.length,))
        site = getattr(request, "site", None)
        self._send_timeout = float(getattr(site, "send_timeout", 0) or 0)
        streams = getattr(site, "open_streams", None)
        if streams is not None:
            streams.add(self)  # so that a shutdown can stop it (streamsvc.limits.Drain)
        request.body_stream = self  # type: ignore[attr-defined]  # for the access log
        self._metrics = getattr(site, "metrics", None)
        if self._metrics is not None:
            self._metrics.stream_started(self.kind)
        if not producer.streaming:
            # Never Twisted's own pull adapter: it stalls (see streamsvc.pull).
            self.driver = PullDriver(producer, clock=self._clock or _site_clock(request))
        request.registerProducer(self, True)
        if self.driver is not None:
            self.driver.start()
        request.notifyFinish().addErrback(lambda _: self.stopProducing())
        ended = producer.startProducing(request).addCallbacks(self._succeeded, self._failed)
        ended.addErrback(self._bug)
        ended.addCallback(self._report)

    def _unregister(self) -> None:
        self._resumed()
        self._stop_send_timer()
        if self.driver is not None:
            self.driver.stop()
        request = self.request
        if request.channel is not None and request.producer is self:
            request.unregisterProducer()

    def _succeeded(self, _: None) -> BodySent:
        self._unregister()
        if self.request._disconnected:  # type: ignore[attr-defined]
            return self._decided(Outcome.CLIENT_GONE)
        sent = self._decided(Outcome.COMPLETE)
        self.request.finish()
        return sent

    def _failed(self, reason: Failure) -> BodySent:
        self._unregister()
        request = self.request
        if self._stopped_by is not None:
            sent = self._decided(self._stopped_by)
            self._answer_server_stop(self._stopped_by)
            return sent
        if self._client_gone or request._disconnected:  # type: ignore[attr-defined]
            return self._decided(Outcome.CLIENT_GONE)
        if reason.check(HTTPError):
            # The source says what went wrong, as a status (a request body
            # that passed its limit or stalled): the client's doing, no bug.
            error = reason.value
            log.info(
                "Response body for {uri} ended by {code} after {sent} bytes",
                uri=redact_query(request.uri or b""),
                code=error.code,
                sent=self.bytes_sent,
            )
            sent = self._decided(Outcome.ERROR)
            self._end_broken(error)
            return sent
        if reason.check(StoreUnavailable):
            # A store that cannot be reached or stopped answering: one line,
            # no traceback; a 503/504 if nothing was sent yet, else a cut body.
            log.warn(
                "Response body for {uri} failed after {sent} bytes: {reason}",
                uri=redact_query(request.uri or b""),
                sent=self.bytes_sent,
                reason=str(reason.value),
            )
            sent = self._decided(Outcome.STORE_FAILED)
            self._end_broken(unavailable_error(reason.value, "store"))
            return sent
        log.failure(
            "Response body for {uri} failed after {sent} bytes",
            reason,
            uri=redact_query(request.uri or b""),
            sent=self.bytes_sent,
        )
        sent = self._decided(Outcome.ERROR)
        self._end_broken(HTTPError(500, "internal server error"))
        return sent

    def _decided(self, outcome: Outcome) -> BodySent:
        self._resumed()
        self._stop_send_timer()
        self._result = BodySent(outcome, self.bytes_sent, self._paused_for)
        return self._result

    def _answer_server_stop(self, outcome: Outcome) -> None:
        log.info(
            "Response body for {uri} stopped by the server ({outcome}) after {sent} bytes",
            uri=redact_query(self.request.uri or b""),
            outcome=outcome.value,
            sent=self.bytes_sent,
        )
        self._end_broken(_SERVER_STOP_ERRORS.get(outcome, HTTPError(503, "stopped")))

    def _end_broken(self, error: HTTPError) -> None:
        """
        End a response whose body will not be complete: C{error} as the
        response if no byte of it has gone out yet, else abort the
        connection, so the client sees a broken body, never a clean short one.
        """
        request = self.request
        if request._disconnected or request.channel is None:  # type: ignore[attr-defined]
            return
        if not request.startedWriting:
            request.write(render_error(request, error))
            request.finish()
        else:
            request.channel.transport.abortConnection()

    def _bug(self, failure: Failure) -> BodySent:
        log.failure(
            "Error while ending the response to {uri}", failure, uri=redact_query(self.request.uri or b"")
        )
        return BodySent(Outcome.ERROR, self.bytes_sent)

    def _report(self, sent: BodySent) -> None:
        streams = getattr(getattr(self.request, "site", None), "open_streams", None)
        if streams is not None:
            streams.discard(self)
        metrics, self._metrics = self._metrics, None
        if metrics is not None:
            metrics.stream_ended(
                self.kind,
                sent.outcome.value,
                sent.bytes_sent,
                pauses=self._pauses,
                paused=sent.paused,
                throttled=getattr(self.producer, "delayed", 0.0),
            )
        if not self.done.called:
            self.done.callback(sent)


def _site_clock(request: IRequest) -> IReactorTime:
    """The reactor the request's Site runs on (C{Site(reactor=...)}), else the global one."""
    site = getattr(request, "site", None) or getattr(request.channel, "site", None)
    reactor = getattr(site, "reactor", None)
    return reactor if reactor is not None else default_clock()


def start_body(
    request: IRequest,
    producer: IStreamProducer,
    *,
    clock: IReactorTime | None = None,
    rate: int | None = None,
    kind: str = "other",
) -> BodyStream:
    """
    Send C{producer} as the body of C{request}, and own the ending; return
    the L{BodyStream}, whose C{done} reports how the body ended and whose
    C{stop} ends it from the server side (timeouts, shutdown).

    Headers must be complete before this is called; this sets only the
    framing: C{Content-Length} when the producer knows its length, chunked
    otherwise (never both).

      - success: unregister the producer and finish the request;
      - the source fails before the first body byte: a JSON 500;
      - the source fails after the body started: log it and abort the
        connection, so the client sees a broken body, not a clean short one
        (twisted.web would leave it hanging, ANCHORS E8);
      - the client goes away, or had already gone: the producer is stopped
        (its file or generator closed at once) and the request is not finished;
      - the server stops it (L{BodyStream.stop}, or cancelling C{done}): a
        JSON 503 before the first body byte, an abort after.

    A pull producer (C{producer.streaming} false) is driven by a
    L{PullDriver} on C{clock} (by default the reactor of the request's Site).

    Throttling: the Site's C{rate_limit} (bytes/s per response; C{rate}, when
    given, may lower it, never raise it, and applies on a Site without one),
    after its C{rate_limit_after} bytes, and its per-client C{client_buckets}
    (see L{streamsvc.app.build_site}) put a L{ThrottleStage} outermost, so
    what is throttled is what goes on the wire.

    C{kind} names the stream for the metrics (L{streamsvc.metrics.KINDS});
    a request that a plugin answers is counted as that plugin's
    (C{request.stream_kind}, set by L{streamsvc.plugin.PluginMount}) whatever
    C{kind} says.
    """
    kind = getattr(request, "stream_kind", None) or kind
    producer = _throttled(request, producer, clock, rate)
    stream = BodyStream(request, producer, clock, kind)
    stream._start()
    return stream


def send_body(
    request: IRequest,
    producer: IStreamProducer,
    *,
    clock: IReactorTime | None = None,
    rate: int | None = None,
    kind: str = "other",
) -> Deferred[BodySent]:
    """
    L{start_body}, for callers that only need to know how it ended: the
    returned Deferred always succeeds, with a L{BodySent}; cancelling it
    stops the body from the server side (L{Outcome.CANCELLED}).
    """
    return start_body(request, producer, clock=clock, rate=rate, kind=kind).done


def throttled(request: IRequest) -> bool:
    """Whether the Site's rate limits apply to C{request}'s body."""
    site = getattr(request, "site", None)
    return bool(getattr(site, "rate_limit", 0)) or getattr(site, "client_buckets", None) is not None


def read_spans(fd: int, spans: Sequence[Span]) -> bytes:
    """
    The whole body C{spans} make, read now (for a body of one chunk, which
    L{send_at_once} sends); L{SourceTruncated} if the file is shorter.
    """
    parts = []
    for span in spans:
        if isinstance(span, bytes):
            parts.append(span)
            continue
        data = os.pread(fd, span.length, span.start)
        if len(data) != span.length:
            raise SourceTruncated(f"file ended inside range {span.start}-{span.end}")
        parts.append(data)
    return b"".join(parts)


def send_at_once(request: IRequest, data: bytes, *, kind: str = "other") -> bytes:
    """
    Count C{data} as a body sent whole and return it, for C{render} to
    return: twisted.web then writes it with the headers, in one write.

    For bodies of one chunk, with no throttle (L{throttled}): a producer
    would write the same single chunk, only after a Deferred's round trip
    and a stream's bookkeeping, which cost more than the write. Nothing is
    held: the data is in the transport's buffer (one chunk) at once, and
    the metrics and the access log count it as a stream that completed.
    """
    metrics = getattr(getattr(request, "site", None), "metrics", None)
    if metrics is not None:
        metrics.sent_at_once(getattr(request, "stream_kind", None) or kind, len(data))
    return data


def _throttled(
    request: IRequest, producer: IStreamProducer, clock: IReactorTime | None, rate: int | None
) -> IStreamProducer:
    """C{producer} behind the throttles that apply to C{request}, if any."""
    site = getattr(request, "site", None)
    limit = getattr(site, "rate_limit", 0) or 0
    if rate is not None and rate > 0:
        limit = min(limit, rate) if limit else rate
    clients: ClientBuckets | None = getattr(site, "client_buckets", None)
    if not limit and clients is None:
        return producer
    clock = clock or _site_clock(request)
    buckets = [TokenBucket(limit, clock)] if limit else []
    if clients is not None:
        buckets.append(clients.bucket(host_of(request.getClientAddress())))
    after = int(getattr(site, "rate_limit_after", 0) or 0)
    return ThrottleStage(producer, buckets, clock=clock, after=after)
