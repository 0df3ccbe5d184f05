"""
Tests for C{GET /generate} (L{streamsvc.generate}): the documented pattern,
parameters checked, HEAD without generating, slow sources, the generator
closed when the client goes away, throttled by C{rate} and the config.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.task import Clock

import streamsvc.generate as generate_module
from streamsvc.app import build_site
from streamsvc.config import Config, LimitsConfig, ServerConfig
from streamsvc.generate import PERIOD, generated, pattern
from streamsvc.testing import RawResponse, SiteConnection

from test_integration import Server


def site(tmp_path: Any, clock: Clock, **limits: Any) -> Any:
    config = Config(server=ServerConfig(data_dir=str(tmp_path)), limits=LimitsConfig(**limits))
    return build_site(config, reactor=clock)


def get(tmp_path: Any, query: str, method: str = "GET", **limits: Any) -> RawResponse:
    clock = Clock()
    conn = SiteConnection(site(tmp_path, clock, **limits))
    conn.send(f"{method} /generate{query} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    conn.read_until_quiet(clock)
    return conn.response(head=method == "HEAD")


def expected(total: int) -> bytes:
    return bytes(i % PERIOD for i in range(total))


def test_pattern_is_the_documented_one() -> None:
    assert pattern(0, 600) == expected(600)
    assert pattern(1000, 10) == bytes((1000 + i) % 251 for i in range(10))
    assert b"".join(generated(100_000, 1024)) == expected(100_000)
    assert [len(c) for c in generated(2500, 1024)] == [1024, 1024, 452]


def test_get_streams_the_pattern_with_its_length(tmp_path: Any) -> None:
    response = get(tmp_path, "?bytes=300000&chunk=4KiB")
    assert response.code == 200 and response.complete
    assert response.header("content-length") == "300000"
    assert response.header("content-type") == "application/octet-stream"
    assert response.header("cache-control") == "no-store"
    assert response.body == expected(300_000)


def test_sizes_take_suffixes_and_zero_is_empty(tmp_path: Any) -> None:
    assert len(get(tmp_path, "?bytes=1MiB").body) == 1024 * 1024
    empty = get(tmp_path, "?bytes=0")
    assert empty.code == 200 and empty.body == b"" and empty.header("content-length") == "0"


def test_head_generates_nothing(tmp_path: Any, monkeypatch: Any) -> None:
    def boom(*a: Any) -> Any:
        raise AssertionError("HEAD generated")

    monkeypatch.setattr(generate_module, "generated", boom)
    response = get(tmp_path, "?bytes=5000", method="HEAD")
    assert response.code == 200 and response.body == b""
    assert response.header("content-length") == "5000"


@pytest.mark.parametrize(
    "query, name",
    [
        ("", "bytes"),
        ("?bytes=", "bytes"),
        ("?bytes=-1", "bytes"),
        ("?bytes=abc", "bytes"),
        ("?bytes=1.5", "bytes"),
        ("?bytes=2000", "bytes"),  # over generate_max_bytes below
        ("?bytes=1&bytes=2", "bytes"),
        ("?bytes=%ff", "bytes"),
        ("?bytes=10&chunk=100", "chunk"),
        ("?bytes=10&chunk=5MiB", "chunk"),
        ("?bytes=10&delay=10001", "delay"),
        ("?bytes=10&delay=x", "delay"),
        ("?bytes=10&rate=0", "rate"),
        ("?bytes=10&rate=fast", "rate"),
    ],
)
def test_bad_parameters_are_a_400_naming_them(tmp_path: Any, query: str, name: str) -> None:
    response = get(tmp_path, query, generate_max_bytes=1000)
    assert response.code == 400
    assert repr(name) in json.loads(response.body)["error"]


def test_other_paths_are_404(tmp_path: Any) -> None:
    assert get(tmp_path, "/x?bytes=10").code == 404


def test_delay_makes_each_chunk_wait(tmp_path: Any) -> None:
    """delay=100 with three chunks: nothing before 100 ms, all after 300 ms."""
    clock = Clock()
    conn = SiteConnection(site(tmp_path, clock))
    conn.send(b"GET /generate?bytes=3072&chunk=1024&delay=100 HTTP/1.1\r\nHost: x\r\n\r\n")
    clock.advance(0.05)
    assert b"\r\n\r\n" not in conn.transport.value()  # headers wait for the first chunk's turn
    for _ in range(40):
        clock.advance(0.01)
    conn.read_until_quiet(clock)
    response = conn.response()
    assert response.complete and response.body == expected(3072)


class Tracked:
    """Wraps generated() to see whether its generator was closed."""

    def __init__(self) -> None:
        self.closed = False
        self.pulled = 0

    def __call__(self, total: int, chunk: int) -> Iterator[bytes]:
        try:
            for data in generated(total, chunk):
                self.pulled += 1
                yield data
        finally:
            self.closed = True


def test_client_leaving_closes_the_generator(tmp_path: Any, monkeypatch: Any) -> None:
    tracked = Tracked()
    monkeypatch.setattr(generate_module, "generated", tracked)
    clock = Clock()
    conn = SiteConnection(site(tmp_path, clock))
    conn.send(b"GET /generate?bytes=1GiB HTTP/1.1\r\nHost: x\r\n\r\n")
    clock.advance(0)
    assert tracked.pulled >= 1 and not tracked.closed
    conn.disconnect()
    assert tracked.closed
    assert clock.getDelayedCalls() == []


def test_client_leaving_a_delayed_stream_cancels_its_timer(tmp_path: Any, monkeypatch: Any) -> None:
    tracked = Tracked()
    monkeypatch.setattr(generate_module, "generated", tracked)
    clock = Clock()
    conn = SiteConnection(site(tmp_path, clock))
    conn.send(b"GET /generate?bytes=1GiB&delay=5000 HTTP/1.1\r\nHost: x\r\n\r\n")
    clock.advance(0)
    conn.disconnect()
    assert tracked.closed
    assert clock.getDelayedCalls() == []


def test_slow_client_slows_the_generator(tmp_path: Any, monkeypatch: Any) -> None:
    """A client that stops reading: the generator stops being pulled."""
    tracked = Tracked()
    monkeypatch.setattr(generate_module, "generated", tracked)
    clock = Clock()
    conn = SiteConnection(site(tmp_path, clock))
    conn.send(b"GET /generate?bytes=1GiB HTTP/1.1\r\nHost: x\r\n\r\n")
    for _ in range(50):
        clock.advance(0.01)
    pulled = tracked.pulled
    assert pulled <= 4  # the transport's 64 KiB buffer, and a chunk or so
    for _ in range(50):
        clock.advance(0.01)
    assert tracked.pulled == pulled
    conn.read()
    for _ in range(3):
        clock.advance(0.01)
    assert tracked.pulled > pulled
    conn.disconnect()


def test_rate_throttles_the_response(tmp_path: Any) -> None:
    """?rate=100KiB: ten simulated seconds carry 1 MiB, within 5 %."""
    clock = Clock()
    conn = SiteConnection(site(tmp_path, clock))
    conn.send(b"GET /generate?bytes=100MiB&chunk=8KiB&rate=100KiB HTTP/1.1\r\nHost: x\r\n\r\n")
    received = 0
    for _ in range(1000):
        clock.advance(0.01)
        received += conn.read()
    assert abs(received - 1024 * 1024) <= 0.05 * 1024 * 1024, received
    conn.disconnect()


def test_rate_may_lower_the_config_limit_never_raise_it(tmp_path: Any) -> None:
    def ten_seconds(query: str) -> int:
        clock = Clock()
        conn = SiteConnection(site(tmp_path, clock, rate_limit=50 * 1024))
        conn.send(f"GET /generate?bytes=100MiB&chunk=4KiB{query} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        received = 0
        for _ in range(1000):
            clock.advance(0.01)
            received += conn.read()
        conn.disconnect()
        return received

    assert ten_seconds("") == pytest.approx(500 * 1024, rel=0.05)
    assert ten_seconds("&rate=1MiB") == pytest.approx(500 * 1024, rel=0.05)
    assert ten_seconds("&rate=20KiB") == pytest.approx(200 * 1024, rel=0.05)


@pytest_twisted.ensureDeferred
async def test_rate_over_a_real_two_second_transfer(tmp_path: Any) -> None:
    """256 KiB at 128 KiB/s over loopback: two seconds, within 10 %."""
    server = await Server(tmp_path).start()
    try:
        started = time.monotonic()
        response = await treq.get(
            f"{server.url}/generate?bytes=256KiB&chunk=4KiB&rate=128KiB", reactor=reactor
        )
        body = await response.content()
        elapsed = time.monotonic() - started
        assert body == expected(256 * 1024)
        # The first 4 KiB chunk goes before the bucket is in debt.
        assert 2.0 * 0.9 <= elapsed <= 2.0 * 1.1, elapsed
    finally:
        await server.stop()
