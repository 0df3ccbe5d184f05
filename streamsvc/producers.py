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
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Sequence
from inspect import iscoroutine
from typing import Any, BinaryIO, Union

import attrs
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IConsumer, IDelayedCall, IPullProducer, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from zope.interface import implementer

from streamsvc.errors import HTTPError, render_error
from streamsvc.interfaces import IStreamProducer
from streamsvc.ranges import ByteRange

log = Logger()

#: Chunk size used when none is configured: the same as Twisted's transport
#: buffer, so one chunk fills the buffer once and the transport pauses us.
DEFAULT_CHUNK_SIZE = 64 * 1024

#: How many chunks a push producer writes in one reactor turn when the
#: consumer never pauses it (an in-memory consumer, or data that compresses
#: to nothing). Bounds the time one stream can hold the reactor.
DEFAULT_BURST = 16


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


def _default_clock() -> IReactorTime:
    from twisted.internet import reactor

    return reactor  # type: ignore[return-value]


@implementer(IStreamProducer, IPullProducer)
class StreamProducer:
    """
    The state machine shared by every producer; subclasses only say how to
    get the next chunk (L{_next_chunk}) and how to let go of the source
    (L{_release}).

    Push mode (C{streaming=True}) writes chunks until paused, at most
    C{burst} per reactor turn, then continues on the next turn through
    C{clock.callLater(0, ...)}. It starts on the turn after
    C{startProducing}, not inside it: a reactor turn then first renders every
    request that arrived in it and only then produces their bodies, together.
    That batching, at the price of one reactor turn of latency, is what
    brought small-file requests per second level with static.File, whose
    cooperator batches the same way (BENCHMARKS.md has the runs).

    Pull mode writes one chunk per C{resumeProducing}. A chunk may be a
    L{Deferred} (an asynchronous source); while it is pending nothing else
    is asked of the source.

    @ivar bytes_written: bytes handed to the consumer so far.
    """

    length: int | None = None

    def __init__(
        self,
        *,
        streaming: bool = True,
        clock: IReactorTime | None = None,
        burst: int = DEFAULT_BURST,
    ) -> None:
        self.streaming = streaming
        self.bytes_written = 0
        self._clock = clock
        self._burst = burst
        self._state = _Lifecycle.IDLE
        self._paused = False
        self._running = False
        self._pending: Deferred[Any] | None = None
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
            # On the next turn, with every other body started in this one.
            clock = self._clock or _default_clock()
            self._tick = clock.callLater(0, self._on_tick)
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
        started = self._state is _Lifecycle.RUNNING
        self._state = _Lifecycle.STOPPED
        self._cleanup()
        if started:
            assert self._done is not None
            self._done.errback(Failure(StreamStopped()))

    # -- the machinery -------------------------------------------------------

    def _can_step(self) -> bool:
        return (
            self._state is _Lifecycle.RUNNING
            and not self._paused
            and self._pending is None
        )

    def _run(self) -> None:
        """
        Push driver: write up to C{burst} chunks now, then yield the reactor.

        Re-entrant calls (C{write} resuming us synchronously) return at once;
        the outer loop sees the new state and carries on.
        """
        if self._running:
            return
        self._cancel_tick()
        self._running = True
        try:
            for _ in range(self._burst):
                if not self._can_step():
                    return
                self._step()
        finally:
            self._running = False
        if self._can_step():
            clock = self._clock or _default_clock()
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
        try:
            chunk = self._next_chunk()
        except Exception:
            self._fail(Failure())
            return
        if isinstance(chunk, Deferred):
            self._pending = chunk
            chunk.addCallbacks(self._arrived, self._arrival_failed)
        else:
            self._deliver(chunk)

    def _arrived(self, chunk: bytes | None) -> None:
        self._pending = None
        if self._state is not _Lifecycle.RUNNING:
            return
        self._deliver(chunk)
        if self.streaming and self._state is _Lifecycle.RUNNING:
            self._run()

    def _arrival_failed(self, failure: Failure) -> None:
        self._pending = None
        if self._state is _Lifecycle.RUNNING:
            self._fail(failure)
        # Otherwise we cancelled it ourselves while stopping: nothing to say.

    def _deliver(self, chunk: bytes | None) -> None:
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
        self._state = _Lifecycle.DONE
        self._cleanup()
        assert self._done is not None
        self._done.callback(None)

    def _fail(self, failure: Failure) -> None:
        if self._state is not _Lifecycle.RUNNING:
            return
        self._state = _Lifecycle.FAILED
        self._cleanup()
        assert self._done is not None
        self._done.errback(failure)

    def _cleanup(self) -> None:
        self._cancel_tick()
        self._consumer = None
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.cancel()
        try:
            self._release()
        except Exception:
            log.failure("Error while releasing the source of {producer!r}", producer=self)


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
    """

    def __init__(
        self,
        file: BinaryIO,
        spans: Sequence[Span],
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        streaming: bool = True,
        clock: IReactorTime | None = None,
        burst: int = DEFAULT_BURST,
    ) -> None:
        super().__init__(streaming=streaming, clock=clock, burst=burst)
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

    def _next_chunk(self) -> bytes | None:
        while self._index < len(self.spans):
            span = self.spans[self._index]
            if isinstance(span, bytes):
                self._index += 1
                return span
            left = span.length - self._done_in_span
            if left <= 0:
                self._index += 1
                self._done_in_span = 0
                continue
            data = os.pread(
                self._fd, min(self._chunk_size, left), span.start + self._done_in_span
            )
            if not data:
                raise SourceTruncated(
                    f"file ended at offset {span.start + self._done_in_span}, "
                    f"inside range {span.start}-{span.end}"
                )
            self._done_in_span += len(data)
            return data
        return None

    def _release(self) -> None:
        self.file.close()


class IterableProducer(StreamProducer):
    """
    Streams what an iterable yields: bytes, or Deferreds / coroutines that
    resolve to bytes; or what an async iterable yields.

    The next item is pulled only while the consumer lets us, so a generator
    runs exactly as fast as the client reads. When the stream ends early the
    generator is closed (C{close()} / C{aclose()}), so its C{finally} blocks
    and context managers run at once rather than whenever the garbage
    collector gets to them. An item still pending is cancelled first.
    """

    def __init__(
        self,
        source: Iterable[Any] | AsyncIterable[Any],
        *,
        length: int | None = None,
        streaming: bool = True,
        clock: IReactorTime | None = None,
        burst: int = DEFAULT_BURST,
    ) -> None:
        super().__init__(streaming=streaming, clock=clock, burst=burst)
        self.length = length
        self._iterator: Iterator[Any] | None = None
        self._async_iterator: AsyncIterator[Any] | None = None
        if isinstance(source, AsyncIterable):
            self._async_iterator = aiter(source)
        else:
            self._iterator = iter(source)

    def _next_chunk(self) -> Chunk:
        if self._async_iterator is not None:
            return Deferred.fromCoroutine(self._anext(self._async_iterator))
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

    def _release(self) -> None:
        if self._iterator is not None:
            close = getattr(self._iterator, "close", None)
            if close is not None:
                close()
        elif self._async_iterator is not None:
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

    COMPLETE = "complete"
    CLIENT_GONE = "client_gone"
    ERROR = "error"


@attrs.frozen
class BodySent:
    """What L{send_body} reports when a body has ended."""

    outcome: Outcome
    bytes_sent: int


def send_body(request: IRequest, producer: IStreamProducer) -> Deferred[BodySent]:
    """
    Send C{producer} as the body of C{request}, and own the ending.

    Headers must be complete before this is called; this sets only the
    framing: C{Content-Length} when the producer knows its length, chunked
    otherwise (never both).

      - success: unregister the producer and finish the request;
      - the source fails before the first body byte: a JSON 500;
      - the source fails after the body started: log it and abort the
        connection, so the client sees a broken body, not a clean short one
        (twisted.web would leave it hanging, ANCHORS E8);
      - the client goes away: the producer is stopped (its file or generator
        closed at once) and the request is not finished.

    @return: a Deferred that always succeeds, with a L{BodySent}.
    """
    if producer.length is None:
        request.responseHeaders.removeHeader(b"content-length")
    else:
        request.setHeader(b"content-length", b"%d" % (producer.length,))

    request.registerProducer(producer, producer.streaming)
    request.notifyFinish().addErrback(lambda _: producer.stopProducing())

    def unregister() -> None:
        if request.channel is not None and request.producer is producer:
            request.unregisterProducer()

    def succeeded(_: None) -> BodySent:
        unregister()
        if request._disconnected:  # type: ignore[attr-defined]
            return BodySent(Outcome.CLIENT_GONE, producer.bytes_written)
        request.finish()
        return BodySent(Outcome.COMPLETE, producer.bytes_written)

    def failed(reason: Failure) -> BodySent:
        unregister()
        if reason.check(StreamStopped) or request._disconnected:  # type: ignore[attr-defined]
            return BodySent(Outcome.CLIENT_GONE, producer.bytes_written)
        log.failure(
            "Response body for {uri} failed after {sent} bytes",
            reason,
            uri=request.uri,
            sent=producer.bytes_written,
        )
        if not request.startedWriting:
            request.write(render_error(request, HTTPError(500, "internal server error")))
            request.finish()
        else:
            request.channel.transport.abortConnection()
        return BodySent(Outcome.ERROR, producer.bytes_written)

    return producer.startProducing(request).addCallbacks(succeeded, failed)
