# -*- test-case-name: tests.test_stages -*-
"""
Stages: producer-to-producer transforms that sit between a source and the
response (gzip now; throttles and record encoders later).

A stage is a consumer to the producer before it and a producer to the
consumer after it. Pause, resume and stop pass straight through to the
upstream producer, so backpressure reaches the source unchanged and a
disconnect still closes the file or generator at the far end.
"""

from __future__ import annotations

import zlib

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IProducer, IPullProducer
from zope.interface import implementer

from streamsvc.interfaces import IStreamProducer

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
