"""Tests for L{streamsvc.stages}: gzip as a stage that keeps backpressure and cleanup."""

from __future__ import annotations

import zlib
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from streamsvc.interfaces import IStreamProducer
from streamsvc.producers import IterableProducer, StreamStopped
from streamsvc.stages import GzipStage, accepts_gzip, is_compressible
from streamsvc.testing import RecordingConsumer


@pytest.mark.parametrize(
    "header, expected",
    [
        (None, False),
        ("", False),
        ("gzip", True),
        ("GZIP", True),
        ("deflate, gzip", True),
        ("gzip;q=0", False),
        ("gzip; q=0.0", False),
        ("gzip;q=0.5", True),
        ("x-gzip", True),
        ("*", True),
        ("*;q=0", False),
        ("*, gzip;q=0", False),
        ("identity", False),
        ("br", False),
        ("gzip;q=abc", False),
    ],
)
def test_accepts_gzip(header: str | None, expected: bool) -> None:
    """Accept-Encoding parsing follows RFC 9110 q-values, including * and explicit refusals."""
    assert accepts_gzip(header) is expected


@pytest.mark.parametrize(
    "ctype, expected",
    [
        ("text/plain", True),
        ("text/csv; charset=utf-8", True),
        ("application/json", True),
        ("application/x-ndjson", True),
        ("application/ld+json", True),
        ("image/svg+xml", True),
        ("application/javascript", True),
        ("application/gzip", False),
        ("image/png", False),
        ("application/octet-stream", False),
    ],
)
def test_is_compressible(ctype: str, expected: bool) -> None:
    """Only text-like types are compressed."""
    assert is_compressible(ctype) is expected


def gunzip(data: bytes) -> bytes:
    return zlib.decompress(data, 16 + zlib.MAX_WBITS)


def test_gzip_stage_round_trip() -> None:
    """The stage's output is a valid gzip stream of the upstream's bytes."""
    parts = [b"line %d\n" % i for i in range(1000)]
    clock = Clock()
    stage = GzipStage(IterableProducer(parts, clock=clock, burst=10_000))
    assert verifyObject(IStreamProducer, stage)
    assert stage.length is None
    consumer = RecordingConsumer()
    done = stage.startProducing(consumer)
    clock.advance(0)
    assert done.called and done.result is None
    assert gunzip(consumer.data) == b"".join(parts)
    assert stage.bytes_written == len(consumer.data)


def test_gzip_stage_flush_emits_each_record() -> None:
    """With flush=True every record is decodable as soon as it is written."""
    clock = Clock()
    consumer = RecordingConsumer(pause_on_write=True)
    stage = GzipStage(IterableProducer([b"first\n", b"second\n"], clock=clock), flush=True)
    consumer.registerProducer(stage, True)
    stage.startProducing(consumer)
    clock.advance(0)
    assert zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(consumer.data) == b"first\n"


def test_gzip_stage_passes_pause_and_stop_upstream() -> None:
    """Pause reaches the source (no more pulls) and stop closes it."""
    clock = Clock()
    pulled = []
    closed = []

    def source() -> Any:
        try:
            for i in range(100):
                pulled.append(i)
                yield b"x" * 100_000
        finally:
            closed.append(True)

    consumer = RecordingConsumer(pause_on_write=True)
    stage = GzipStage(IterableProducer(source(), clock=clock), level=1)
    consumer.registerProducer(stage, True)
    done = stage.startProducing(consumer)
    clock.advance(0)
    stage.pauseProducing()
    count = len(pulled)
    clock.advance(1)
    assert len(pulled) == count
    stage.stopProducing()
    assert closed == [True]
    failure = done.result
    done.addErrback(lambda f: None)
    assert failure.check(StreamStopped)
    written = len(consumer.chunks)
    clock.advance(1)
    assert len(consumer.chunks) == written


def test_gzip_stage_pull_mode_waits_with_its_upstream() -> None:
    """
    Pulled, the stage compresses one upstream chunk per resumeProducing and
    answers when_ready for its upstream, so a pull driver waits on an
    asynchronous source through it instead of spinning.
    """
    gate: Deferred[bytes] = Deferred()
    consumer = RecordingConsumer()
    upstream = IterableProducer([b"a" * 100, gate], streaming=False, clock=Clock())
    stage = GzipStage(upstream, flush=True)
    assert stage.streaming is False
    done = stage.startProducing(consumer)
    assert stage.when_ready() is None
    stage.resumeProducing()
    stage.resumeProducing()
    ready = stage.when_ready()
    assert ready is not None and not ready.called
    gate.callback(b"b" * 100)
    assert ready.called
    stage.resumeProducing()
    assert done.called
    assert zlib.decompress(consumer.data, 16 + zlib.MAX_WBITS) == b"a" * 100 + b"b" * 100
