# -*- test-case-name: tests.test_stages -*-
"""
Stages: producer-to-producer transforms that sit between a source and the
response: gzip, and throttling on token buckets (record encoders later).

A stage is a consumer to the producer before it and a producer to the
consumer after it. Pause, resume and stop pass straight through to the
upstream producer, so backpressure reaches the source unchanged and a
disconnect still closes the file or generator at the far end.
"""

from __future__ import annotations

import zlib
from collections import OrderedDict

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IConsumer,
    IDelayedCall,
    IProducer,
    IPullProducer,
    IReactorTime,
)
from zope.interface import implementer

from streamsvc.interfaces import IStreamProducer


__all__ = [
    "ClientBuckets",
    "GzipStage",
    "ThrottleStage",
    "TokenBucket",
    "accepts_gzip",
    "is_compressible",
]

#: Media types worth compressing. Anything else (images, archives, video) is
#: already compressed or binary, and gzip would only burn CPU.
COMPRESSIBLE_TYPES = frozenset(
    {
        "application/json",
        "application/x-ndjson",
        "application/xml",
        "application/javascript",
        "application/x-javascript",
        "application/ecmascript",
        "image/svg+xml",
        "text/csv",
    }
)


def is_compressible(content_type: str) -> bool:
    """Whether a body of this media type (parameters ignored) should be gzipped."""
    media = content_type.split(";", 1)[0].strip().lower()
    return (
        media.startswith("text/")
        or media in COMPRESSIBLE_TYPES
        or media.endswith("+json")
        or media.endswith("+xml")
    )


def accepts_gzip(accept_encoding: str | None) -> bool:
    """
    Whether an C{Accept-Encoding} value allows a gzip response (RFC 9110
    §12.5.3): C{gzip} (or the old C{x-gzip}) with a non-zero q-value, or
    C{*} with a non-zero q-value when gzip is not named on its own.
    """
    if not accept_encoding:
        return False
    named: float | None = None
    star: float | None = None
    for member in accept_encoding.split(","):
        coding, _, params = member.partition(";")
        coding = coding.strip().lower()
        q = _qvalue(params)
        if coding in ("gzip", "x-gzip"):
            named = q if named is None else max(named, q)
        elif coding == "*":
            star = q
    if named is not None:
        return named > 0
    return star is not None and star > 0


def _qvalue(params: str) -> float:
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                q = float(value.strip())
            except ValueError:
                return 0.0
            return q if 0.0 <= q <= 1.0 else 0.0
    return 1.0


@implementer(IStreamProducer, IPullProducer, IConsumer)
class GzipStage:
    """
    Compresses what an upstream producer writes, as a gzip stream.

    The length of the output is unknown, so a response carrying it is sent
    chunked. Each upstream write is compressed in one go, so give it chunks
    of 64 KiB or so (a 16 MiB chunk was some 500 ms of the reactor at
    level 6 here); L{streamsvc.files} caps its reads for gzip. With C{flush=True} every upstream write is followed by a sync
    flush, so each record reaches the client as soon as it is produced
    (exports and event streams); files leave it off for the best ratio.

    @ivar bytes_written: compressed bytes handed downstream.
    """

    length = None

    def __init__(self, upstream: IStreamProducer, *, level: int = 6, flush: bool = False) -> None:
        self._upstream = upstream
        self._compressor = zlib.compressobj(level, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        self._flush = flush
        self._consumer: IConsumer | None = None
        self.bytes_written = 0

    @property
    def streaming(self) -> bool:
        return bool(self._upstream.streaming)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        self._consumer = consumer
        done: Deferred[None] = self._upstream.startProducing(self)
        return done.addBoth(self._upstream_ended)

    def _upstream_ended(self, result: object) -> object:
        if result is None and self._consumer is not None:
            self._emit(self._compressor.flush())
        self._consumer = None
        return result

    # IConsumer, for the upstream producer

    def write(self, data: bytes) -> None:
        out = self._compressor.compress(data)
        if self._flush:
            out += self._compressor.flush(zlib.Z_SYNC_FLUSH)
        self._emit(out)

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        """Not used: the outermost producer is the one registered with the request."""

    def unregisterProducer(self) -> None:
        """Not used, see L{registerProducer}."""

    def _emit(self, data: bytes) -> None:
        if data and self._consumer is not None:
            self.bytes_written += len(data)
            self._consumer.write(data)

    # IPushProducer / IPullProducer, for the downstream consumer

    def pauseProducing(self) -> None:
        self._upstream.pauseProducing()

    def resumeProducing(self) -> None:
        self._upstream.resumeProducing()

    def stopProducing(self) -> None:
        self._consumer = None
        self._upstream.stopProducing()

    def when_ready(self) -> Deferred[None] | None:
        when_ready = getattr(self._upstream, "when_ready", None)
        return when_ready() if when_ready is not None else None


# --- throttling ------------------------------------------------------------------


#: The shortest wait a throttle schedules: shorter ones would cost a timer
#: per few bytes at high rates and buy nothing.
MIN_WAIT = 0.001


class TokenBucket:
    """
    C{rate} bytes a second, on C{clock}. Bytes are taken after they are
    sent and may run the bucket into debt; L{wait} says how long until it
    is out of it. At most C{burst} bytes of unused time are saved up (a
    tenth of a second's worth by default), so an idle spell does not buy a
    burst that would break the rate.
    """

    def __init__(self, rate: float, clock: IReactorTime, *, burst: float | None = None) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be positive, not {rate}")
        self.rate = float(rate)
        self.capacity = float(burst if burst is not None else rate / 10)
        self._clock = clock
        self._tokens = 0.0
        self._stamp = clock.seconds()

    def _refill(self) -> None:
        now = self._clock.seconds()
        self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def take(self, amount: int) -> None:
        self._refill()
        self._tokens -= amount

    def available(self) -> float:
        """Bytes that may go now without running into debt (0 when in debt)."""
        self._refill()
        return max(0.0, self._tokens)

    def wait(self) -> float:
        """
        Seconds until the bucket is out of debt: 0 when it is (a debt under
        one byte is none: rounding must not schedule a wait of 1e-17 s, which
        a clock would run at once, forever), else at least L{MIN_WAIT}.
        """
        self._refill()
        if self._tokens > -1:
            return 0.0
        return max(MIN_WAIT, -self._tokens / self.rate)


class ClientBuckets:
    """
    One L{TokenBucket} per client address, shared by all its responses (a
    per-client rate, which nginx has no way to express without modules).

    Holds at most C{max_clients} addresses: past that the longest unused is
    forgotten (its client starts a fresh bucket), so the table's memory is
    bounded whatever the number of addresses.
    """

    def __init__(self, rate: float, clock: IReactorTime, *, max_clients: int = 10_000) -> None:
        self.rate = rate
        self._clock = clock
        self._max = max_clients
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def bucket(self, address: str) -> TokenBucket:
        found = self._buckets.get(address)
        if found is None:
            found = self._buckets[address] = TokenBucket(self.rate, self._clock)
            while len(self._buckets) > self._max:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(address)
        return found


@implementer(IStreamProducer, IPullProducer, IConsumer)
class ThrottleStage:
    """
    Holds what an upstream producer sends to the rate of one or more
    L{TokenBucket}s (the response's, the client's), without buffering:
    every chunk passes at once, and when a bucket is in debt the upstream
    is paused until it is out of it, on the clock. So a throttled file is
    read at the rate, not read fast and queued.

    The first C{after} bytes go at full speed (nginx's C{limit_rate_after}).
    Downstream pause and resume pass through as for any stage; a resume
    while throttled waits for the bucket. In pull mode L{when_ready} says
    when the bucket allows the next chunk.

    @ivar delayed: how many seconds the stream has spent throttled.
    """

    def __init__(
        self,
        upstream: IStreamProducer,
        buckets: list[TokenBucket],
        *,
        clock: IReactorTime,
        after: int = 0,
    ) -> None:
        self._upstream = upstream
        self._buckets = buckets
        self._clock = clock
        self._after = after
        self._consumer: IConsumer | None = None
        self._paused = False  # by the consumer downstream
        self._timer: IDelayedCall | None = None
        self._throttled_since: float | None = None
        self._waiters: list[Deferred[None]] = []
        self.bytes_written = 0
        self.delayed = 0.0

    @property
    def length(self) -> int | None:
        return self._upstream.length  # type: ignore[no-any-return]

    @property
    def streaming(self) -> bool:
        return bool(self._upstream.streaming)

    @property
    def throttled(self) -> bool:
        return self._timer is not None

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        self._consumer = consumer
        done: Deferred[None] = self._upstream.startProducing(self)
        return done.addBoth(self._ended)

    def _ended(self, result: object) -> object:
        self._consumer = None
        self._unthrottle()
        return result

    # IConsumer, for the upstream producer

    def write(self, data: bytes) -> None:
        if self._consumer is None:
            return
        self._consumer.write(data)
        self.sent_beside(len(data))

    # For a zero-copy sender (streamsvc._sendfile), which moves the bytes
    # to the request's socket itself and only has them counted here.

    @property
    def downstream(self) -> IConsumer | None:
        """Whom the bytes go to (the request), while the stream runs."""
        return self._consumer

    def allowance(self) -> float:
        """Bytes that may go now: the free start (C{after}), then what every bucket holds."""
        free = self._after - self.bytes_written
        if free > 0:
            return float(free)
        return min(bucket.available() for bucket in self._buckets)

    def sent_beside(self, amount: int) -> None:
        """Count C{amount} bytes sent (by L{write}, or beside it), and throttle if due."""
        if self._consumer is None:
            return
        before = self.bytes_written
        self.bytes_written += amount
        counted = self.bytes_written - max(before, self._after)
        if counted <= 0:
            return
        for bucket in self._buckets:
            bucket.take(counted)
        if self._timer is None:
            self._throttle()

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        """Not used: the outermost producer is the one registered with the request."""

    def unregisterProducer(self) -> None:
        """Not used, see L{registerProducer}."""

    def _throttle(self) -> None:
        wait = max(bucket.wait() for bucket in self._buckets)
        if wait <= 0 or self._consumer is None:
            return
        if self._throttled_since is None:
            self._throttled_since = self._clock.seconds()
        self._timer = self._clock.callLater(wait, self._refilled)
        self._upstream.pauseProducing()

    def _refilled(self) -> None:
        self._timer = None
        self._throttle()
        if self._timer is None:
            self._unthrottle()  # a pull driver waiting on when_ready() goes on from here
            if self.streaming and not self._paused and self._consumer is not None:
                self._upstream.resumeProducing()

    def _unthrottle(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
        if self._throttled_since is not None:
            self.delayed += self._clock.seconds() - self._throttled_since
            self._throttled_since = None
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)

    # IPushProducer / IPullProducer, for the downstream consumer

    def pauseProducing(self) -> None:
        self._paused = True
        self._upstream.pauseProducing()

    def resumeProducing(self) -> None:
        self._paused = False
        if self._timer is None:
            self._upstream.resumeProducing()

    def stopProducing(self) -> None:
        self._consumer = None
        self._unthrottle()
        self._upstream.stopProducing()

    def when_ready(self) -> Deferred[None] | None:
        if self._timer is not None:
            waiter: Deferred[None] = Deferred()
            self._waiters.append(waiter)
            return waiter
        when_ready = getattr(self._upstream, "when_ready", None)
        return when_ready() if when_ready is not None else None
