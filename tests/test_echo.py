"""
Tests for C{POST /echo} (L{streamsvc.echo}) and the streaming body machinery
under it (L{streamsvc.body.BodyPipe}, pause/resume of the socket): echoed
while still arriving, flow control both ways, limits, disconnects.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, serverFromString
from twisted.internet.task import Clock, deferLater
from twisted.logger import LogLevel, capturedLogs

from streamsvc.app import build_site
from streamsvc.config import Config, LimitsConfig, ServerConfig
from streamsvc.echo import EchoResource
from streamsvc.testing import BodySender, SiteConnection, parse_response


def echo_site(tmp_path: Any, clock: Clock, **kwargs: Any) -> SiteConnection:
    """A Site with /echo and a 10 s body timeout (under the channel's 60 s idle one)."""
    config = Config(server=ServerConfig(data_dir=str(tmp_path)), limits=LimitsConfig(body_timeout=10))
    site = build_site(config, reactor=clock)
    if kwargs:
        site.resource.putChild(b"echo", EchoResource(clock=clock, **kwargs))
    return SiteConnection(site)


def headers(length: int | None, *extra: str) -> bytes:
    lines = ["POST /echo HTTP/1.1", "Host: x", "Content-Type: text/csv", *extra]
    lines.append("Transfer-Encoding: chunked" if length is None else f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def test_echo_returns_the_body_with_its_type_and_length(tmp_path: Any) -> None:
    """The body comes back byte for byte, Content-Type copied (sandboxed), Content-Length echoed."""
    clock = Clock()
    conn = echo_site(tmp_path, clock)
    body = b"a,b\n1,2\n" * 1000
    conn.send(headers(len(body)) + body)
    conn.read_until_quiet(clock)
    response = conn.response()
    assert response.code == 200 and response.complete
    assert response.body == body
    assert response.header("content-type") == "text/csv"
    assert response.header("content-length") == str(len(body))
    assert response.header("content-security-policy") == "sandbox"


def test_a_coded_body_is_echoed_with_its_coding(tmp_path: Any) -> None:
    """The echo is a pipe: a gzip body comes back as it came, its Content-Encoding named."""
    import gzip

    clock = Clock()
    conn = echo_site(tmp_path, clock)
    body = gzip.compress(b"a,b\n" * 100)
    conn.send(headers(len(body), "Content-Encoding: gzip") + body)
    conn.read_until_quiet(clock)
    response = conn.response()
    assert response.code == 200 and response.body == body
    assert response.header("content-encoding") == "gzip"


def test_echo_starts_before_the_body_ends(tmp_path: Any) -> None:
    """The first bytes come back while the client is still sending."""
    clock = Clock()
    conn = echo_site(tmp_path, clock)
    conn.send(headers(1000) + b"first part ")
    clock.advance(0)
    assert conn.transport.value().endswith(b"first part ")
    conn.send(b"x" * (1000 - len(b"first part ")))
    conn.read_until_quiet(clock)
    assert conn.response().complete


def test_chunked_echo_is_chunked(tmp_path: Any) -> None:
    """No length in, none out: the echo is chunked and ends with the body."""
    clock = Clock()
    conn = echo_site(tmp_path, clock)
    conn.send(headers(None) + b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    conn.read_until_quiet(clock)
    response = conn.response()
    assert response.header("transfer-encoding") == "chunked"
    assert response.body == b"hello world" and response.complete


def test_expect_100_continue_is_sent_once_accepted(tmp_path: Any) -> None:
    """An accepted body gets its 100 Continue, and only then the echo."""
    clock = Clock()
    conn = echo_site(tmp_path, clock)
    conn.send(headers(3, "Expect: 100-continue"))
    assert conn.transport.value() == b"HTTP/1.1 100 Continue\r\n\r\n"
    conn.send(b"abc")
    conn.read_until_quiet(clock)
    assert conn.transport.value().endswith(b"abc")


def test_too_long_body_is_refused_at_the_headers(tmp_path: Any) -> None:
    """Content-Length over the echo's limit: 413 at once, no 100 Continue, connection closed."""
    clock = Clock()
    conn = echo_site(tmp_path, clock, max_body_bytes=100)
    conn.send(headers(101, "Expect: 100-continue"))
    raw = conn.transport.value()
    assert b"100 Continue" not in raw
    response = conn.response()
    assert response.code == 413 and json.loads(response.body) == {"error": "request body too large"}
    assert conn.transport.closed_by_server


def test_chunked_body_passing_the_limit_breaks_the_echo(tmp_path: Any) -> None:
    """A chunked body that passes the limit after the echo started: the connection is aborted."""
    clock = Clock()
    conn = echo_site(tmp_path, clock, max_body_bytes=10)
    conn.send(headers(None) + b"8\r\n12345678\r\n")
    clock.advance(0)
    conn.send(b"8\r\n12345678\r\n")
    clock.advance(0)
    assert conn.aborted
    assert not conn.response().complete


def test_a_client_that_does_not_read_stops_the_body(tmp_path: Any) -> None:
    """
    A sender that never stops while nobody reads the echo: once the echo
    backs up, the server stops reading the socket, and what it holds stays
    bounded (the transport's buffer, plus the pipe's high-water mark).
    """
    clock = Clock()
    conn = echo_site(tmp_path, clock)
    conn.send(headers(100 * 1024 * 1024))
    sent = 0
    while conn.transport.producerState != "paused" and sent < 20 * 1024 * 1024:
        conn.send(b"s" * 16384)
        sent += 16384
        clock.advance(0)
    assert conn.transport.producerState == "paused"
    assert sent < 1024 * 1024
    conn.read()  # the client drains the echo: reading resumes
    clock.advance(0)
    conn.read()
    clock.advance(0)
    assert conn.transport.producerState == "producing"


def test_disconnect_mid_body_stops_the_echo(tmp_path: Any) -> None:
    """The client going away mid-body: the pipe is stopped and nothing stays scheduled."""
    clock = Clock()
    conn = echo_site(tmp_path, clock)
    conn.send(headers(1000) + b"partial")
    clock.advance(0)
    conn.disconnect()
    assert [c for c in clock.getDelayedCalls() if "timedOut" not in c.func.__name__] == []


def test_get_is_not_allowed(tmp_path: Any) -> None:
    """Only POST: anything else is a 405 naming it."""
    clock = Clock()
    conn = echo_site(tmp_path, clock)
    conn.request("GET", "/echo")
    response = conn.response()
    assert response.code == 405 and response.header("allow") == "POST"


def test_empty_post_is_an_empty_echo(tmp_path: Any) -> None:
    """A POST without a body is rendered as usual: an empty 200."""
    clock = Clock()
    conn = echo_site(tmp_path, clock)
    conn.send(headers(0))
    response = conn.response()
    assert response.code == 200 and response.body == b""


# -- over real sockets ---------------------------------------------------------------



async def sending(tmp_path: Any, total: int, read: bool) -> tuple[BodySender, Any]:
    site = build_site(Config(server=ServerConfig(data_dir=str(tmp_path))), reactor=reactor)
    port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(site)
    client = BodySender(headers(total), total, read=read)
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), client)
    return client, port


@pytest_twisted.ensureDeferred
async def test_echo_over_a_socket_is_exact(tmp_path: Any) -> None:
    """8 MiB echoed over loopback arrive byte for byte."""
    total = 8 * 1024 * 1024
    client, port = await sending(tmp_path, total, read=True)
    try:
        for _ in range(1000):
            response = parse_response(bytes(client.received)) if b"\r\n\r\n" in client.received else None
            if response is not None and response.complete:
                break
            await deferLater(reactor, 0.01, lambda: None)
        expected = b"".join(bytes([i % 256]) * 65536 for i in range(total // 65536))
        assert response is not None and response.complete
        assert hashlib.sha256(response.body).digest() == hashlib.sha256(expected).digest()
    finally:
        client.transport.loseConnection()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_sender_that_never_reads_is_stopped(tmp_path: Any) -> None:
    """
    A client that sends 1 GiB and never reads the echo: the server stops
    reading, so the client's sends stall after socket buffers' worth, far
    short of the body.
    """
    client, port = await sending(tmp_path, 1024 * 1024 * 1024, read=False)
    try:
        last, same = -1, 0
        for _ in range(300):
            await deferLater(reactor, 0.02, lambda: None)
            same = same + 1 if client.sent == last else 0
            last = client.sent
            if same >= 10:
                break
        assert same >= 10, "the client never stopped being able to send"
        assert client.sent < 64 * 1024 * 1024
    finally:
        client.transport.abortConnection()
        await port.stopListening()


def test_stalled_body_mid_echo_cuts_the_connection(tmp_path: Any) -> None:
    """The echo has started and the body stops arriving: after body_timeout the connection is cut."""
    clock = Clock()
    conn = echo_site(tmp_path, clock)
    conn.send(headers(1000) + b"some")
    clock.advance(0)
    assert conn.transport.value().endswith(b"some")
    clock.advance(11)
    assert conn.aborted and not conn.response().complete


def test_chunked_body_passing_the_limit_before_the_echo_is_a_413(tmp_path: Any) -> None:
    """Over the limit before any echoed byte went out: the answer is the 413 itself, not a 500."""
    clock = Clock()
    conn = echo_site(tmp_path, clock, max_body_bytes=10)
    with capturedLogs() as events:
        conn.send(headers(None) + b"8\r\n12345678\r\n8\r\n12345678\r\n")
    response = conn.response()
    assert response.code == 413 and json.loads(response.body) == {"error": "request body too large"}
    assert not [e for e in events if e["log_level"] >= LogLevel.error]


def test_no_100_continue_for_http_1_0_or_other_expectations(tmp_path: Any) -> None:
    """100 Continue only answers HTTP/1.1's Expect: 100-continue (RFC 9110 §10.1.1)."""
    for line, expect in ((b"POST /echo HTTP/1.0", b"100-continue"), (b"POST /echo HTTP/1.1", b"bogus")):
        clock = Clock()
        conn = echo_site(tmp_path, clock)
        conn.send(line + b"\r\nHost: x\r\nExpect: " + expect + b"\r\nContent-Length: 3\r\n\r\n")
        assert b"100 Continue" not in conn.transport.value()


def test_tiny_chunks_are_held_as_one_buffer(tmp_path: Any) -> None:
    """
    A client sending 1-byte chunks it never reads back: the pipe holds them
    as one buffer (not 65,000 objects), stops reading, and the body timeout
    still runs — the wait is the client's.
    """
    clock = Clock()
    conn = echo_site(tmp_path, clock)
    conn.send(headers(None))
    conn.pause()  # the client reads nothing: the response backs up at once
    for _ in range(70_000):
        conn.send(b"1\r\na\r\n")
        if conn.transport.producerState == "paused":
            break
    assert conn.transport.producerState == "paused"
    pipe = conn.protocol.requests[0]._consumer
    assert len(pipe._queue) <= 2
    clock.advance(11)
    assert conn.aborted or conn.transport.closed_by_server
