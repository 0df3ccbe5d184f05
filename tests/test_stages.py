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


# --- throttling ------------------------------------------------------------------

from streamsvc.stages import ClientBuckets, ThrottleStage, TokenBucket  # noqa: E402


def chunks(n: int, size: int) -> list[bytes]:
    return [bytes([i % 256]) * size for i in range(n)]


def run_for(clock: Clock, seconds: float, step: float = 0.01) -> None:
    for _ in range(round(seconds / step)):
        clock.advance(step)


def throttled(clock: Clock, rate: float, *, n: int = 1000, size: int = 10_000, **kw: Any) -> tuple[ThrottleStage, RecordingConsumer, Deferred[None]]:
    upstream = IterableProducer(chunks(n, size), clock=clock, streaming=kw.pop("streaming", True))
    stage = ThrottleStage(upstream, [TokenBucket(rate, clock)], clock=clock, **kw)
    consumer = RecordingConsumer()
    consumer.registerProducer(stage, True)
    done = stage.startProducing(consumer)
    return stage, consumer, done


def test_token_bucket_debt_and_wait() -> None:
    clock = Clock()
    bucket = TokenBucket(1000, clock)
    assert bucket.wait() == 0
    bucket.take(500)
    assert bucket.wait() == pytest.approx(0.5)
    clock.advance(0.25)
    assert bucket.wait() == pytest.approx(0.25)
    clock.advance(10)  # idle: saves at most a tenth of a second's worth
    bucket.take(150)
    assert bucket.wait() == pytest.approx(0.05)


@pytest.mark.parametrize("rate", [50_000, 100_000, 1_000_000])
def test_throttle_holds_the_rate_within_5_percent(rate: int) -> None:
    """Over 10 simulated seconds the bytes through are rate x 10, within 5 %."""
    clock = Clock()
    stage, consumer, _ = throttled(clock, rate, n=2000, size=10_000)
    run_for(clock, 10)
    sent = len(consumer.data)
    assert abs(sent - rate * 10) <= 0.05 * rate * 10, sent


def test_throttle_pauses_the_source_instead_of_buffering() -> None:
    """While throttled the upstream is paused: nothing is read ahead of the rate."""
    clock = Clock()
    stage, consumer, _ = throttled(clock, 10_000, n=100, size=10_000)
    clock.advance(0)
    assert len(consumer.chunks) == 1 and stage.throttled
    assert stage._upstream.bytes_written == 10_000  # read = sent
    clock.advance(0.99)
    assert len(consumer.chunks) == 1
    clock.advance(0.02)
    assert len(consumer.chunks) == 2


def test_rate_limit_after_sends_the_first_bytes_at_full_speed() -> None:
    clock = Clock()
    stage, consumer, _ = throttled(clock, 10_000, n=100, size=10_000, after=50_000)
    clock.advance(0)
    clock.advance(0)
    assert len(consumer.data) >= 50_000
    assert len(consumer.data) <= 60_000


def test_downstream_pause_wins_over_the_refill() -> None:
    """A client that stopped reading stays paused when the bucket refills."""
    clock = Clock()
    stage, consumer, _ = throttled(clock, 10_000, n=100, size=10_000)
    clock.advance(0)
    stage.pauseProducing()
    clock.advance(5)
    assert len(consumer.chunks) == 1
    stage.resumeProducing()
    clock.advance(0)
    assert len(consumer.chunks) == 2


def test_resume_while_throttled_waits_for_the_bucket() -> None:
    clock = Clock()
    stage, consumer, _ = throttled(clock, 10_000, n=100, size=10_000)
    clock.advance(0)
    stage.pauseProducing()
    stage.resumeProducing()
    clock.advance(0.5)
    assert len(consumer.chunks) == 1


def test_stop_cancels_the_timer_and_stops_the_source() -> None:
    clock = Clock()
    stage, consumer, done = throttled(clock, 10_000, n=100, size=10_000)
    clock.advance(0)
    assert stage.throttled
    stage.stopProducing()
    assert clock.getDelayedCalls() == []
    failures: list[Any] = []
    done.addErrback(failures.append)
    assert failures and failures[0].check(StreamStopped)


def test_finished_stream_leaves_no_timer() -> None:
    clock = Clock()
    stage, consumer, done = throttled(clock, 1_000_000, n=5, size=10_000)
    run_for(clock, 1)
    assert done.called and len(consumer.data) == 50_000
    assert clock.getDelayedCalls() == []
    assert stage.delayed > 0


def test_pull_mode_waits_on_when_ready() -> None:
    clock = Clock()
    upstream = IterableProducer(chunks(10, 10_000), clock=clock, streaming=False)
    stage = ThrottleStage(upstream, [TokenBucket(10_000, clock)], clock=clock)
    consumer = RecordingConsumer()
    stage.startProducing(consumer)
    assert stage.when_ready() is None
    stage.resumeProducing()
    assert len(consumer.chunks) == 1
    ready = stage.when_ready()
    assert isinstance(ready, Deferred) and not ready.called
    stage.resumeProducing()  # ignored while throttled
    assert len(consumer.chunks) == 1
    clock.advance(1.01)
    assert ready.called and len(consumer.chunks) == 1  # the driver asks for the next one
    stage.resumeProducing()
    assert len(consumer.chunks) == 2


def test_client_buckets_share_one_rate_and_are_bounded() -> None:
    clock = Clock()
    clients = ClientBuckets(20_000, clock, max_clients=3)
    shared = clients.bucket("10.0.0.1")
    assert clients.bucket("10.0.0.1") is shared
    for n in range(2, 10):
        clients.bucket(f"10.0.0.{n}")
    assert len(clients) == 3
    assert clients.bucket("10.0.0.1") is not shared  # forgotten, then new

    # Two responses of one client through one bucket: together, the rate.
    clock = Clock()
    clients = ClientBuckets(20_000, clock)
    consumers = []
    for _ in range(2):
        upstream = IterableProducer(chunks(1000, 5_000), clock=clock)
        stage = ThrottleStage(upstream, [clients.bucket("a")], clock=clock)
        consumer = RecordingConsumer()
        stage.startProducing(consumer)
        consumers.append(consumer)
    run_for(clock, 10)
    together = sum(len(c.data) for c in consumers)
    assert abs(together - 200_000) <= 0.05 * 200_000, together
