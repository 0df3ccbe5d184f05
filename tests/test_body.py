"""
Tests for L{streamsvc.body}: a body is decided when the headers arrive —
never buffered, never form-parsed, refused unread when it is too long.

Unit tests drive the real Site (as L{streamsvc.app.build_site} makes it) on
a StringTransport; one integration test sends an endless body over a real
socket.
"""

from __future__ import annotations

import json
from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, serverFromString
from twisted.internet.task import Clock, deferLater
from twisted.logger import capturedLogs
from twisted.web.resource import Resource
from zope.interface import implementer

from streamsvc.app import build_site
from streamsvc.body import (
    DEFAULT_MAX_BODY_BYTES,
    LINGER_BYTES,
    LINGER_SECONDS,
    BodyChannel,
    BodyRequest,
)
from streamsvc.config import Config, LimitsConfig, ServerConfig
from streamsvc.interfaces import IStreamingBodyResource
from streamsvc.testing import BodySender, SiteConnection, parse_response, parse_responses


class Recording(Resource):
    """Takes POST (as a later resource that reads bodies will); records what it saw."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[dict[bytes, list[bytes]], bytes]] = []

    def render_POST(self, request: Any) -> bytes:
        self.seen.append((dict(request.args), request.content.read()))
        return b"ok"


def connection(tmp_path: Any, clock: Clock | None = None) -> tuple[SiteConnection, Recording]:
    site = build_site(Config(server=ServerConfig(data_dir=str(tmp_path))), reactor=clock or Clock())
    recording = Recording()
    site.resource.putChild(b"rec", recording)
    return SiteConnection(site), recording


def post(path: str, length: int | None, *headers: str, body: bytes = b"") -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: x", *headers]
    lines.append("Transfer-Encoding: chunked" if length is None else f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def test_site_uses_the_body_machinery(tmp_path: Any) -> None:
    """build_site: our request and channel, form parsing off."""
    site = build_site(Config(server=ServerConfig(data_dir=str(tmp_path))), reactor=Clock())
    assert site.requestFactory is BodyRequest and issubclass(site.protocol, BodyChannel)
    assert site._parsePOSTFormSubmission is False


def test_long_body_is_refused_when_the_headers_arrive(tmp_path: Any) -> None:
    """
    300 MB announced to a resource that takes no body: a JSON 413 at once,
    before any body byte, and the connection closed; what the client sends
    after is never parsed.
    """
    conn, _ = connection(tmp_path)
    conn.send(post("/rec", 300 * 1024 * 1024))
    response = conn.response()
    assert response.code == 413
    assert json.loads(response.body) == {"error": "request body not accepted here"}
    assert response.header("connection") == "close"
    assert conn.transport.closed_by_server
    before = conn.transport.value()
    conn.send(b"x" * (4 * 1024 * 1024))
    assert conn.transport.value() == before


def test_long_body_gets_the_resources_own_refusal(tmp_path: Any) -> None:
    """
    When the answer is known from the headers — the method is not allowed
    (405 with Allow), the path does not exist (404) — that is the answer,
    at once, and the body is not read.
    """
    conn, _ = connection(tmp_path)
    conn.send(post("/healthz", 300 * 1024 * 1024))
    response = conn.response()
    assert response.code == 405 and response.header("allow") == "GET, HEAD"
    assert conn.transport.closed_by_server
    conn, _ = connection(tmp_path)
    conn.send(post("/nowhere", 300 * 1024 * 1024))
    assert conn.response().code == 404 and conn.transport.closed_by_server


def test_expect_100_continue_gets_the_refusal_not_a_continue(tmp_path: Any) -> None:
    """With Expect: 100-continue no body is read: the 413 is the answer, never a 100."""
    conn, _ = connection(tmp_path)
    conn.send(post("/rec", 10, "Expect: 100-continue"))
    raw = conn.transport.value()
    assert b"100 Continue" not in raw
    assert parse_response(raw).code == 413


def test_small_body_is_dropped_and_the_resource_answers(tmp_path: Any) -> None:
    """
    A small body to a resource that takes none gets that resource's own
    answer (405 with Allow), and the connection stays usable.
    """
    conn, _ = connection(tmp_path)
    conn.send(post("/healthz", 5, body=b"hello") + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    first, second = parse_responses(conn.transport.value(), [False, False])
    assert first.code == 405 and first.header("allow") == "GET, HEAD"
    assert second.code == 200
    assert not conn.transport.closed_by_server


def test_body_is_never_buffered_or_form_parsed(tmp_path: Any) -> None:
    """A form POST: the query string is still parsed, the body is not kept or parsed."""
    conn, recording = connection(tmp_path)
    form = b"a=1&b=2"
    conn.send(post("/rec?q=3", len(form), "Content-Type: application/x-www-form-urlencoded", body=form))
    assert parse_response(conn.transport.value()).code == 200
    assert recording.seen == [({b"q": [b"3"]}, b"")]


def test_chunked_body_over_the_limit_is_refused_mid_body(tmp_path: Any) -> None:
    """
    A chunked body is counted as it arrives; passing the limit is a 413 and
    a closed connection, and the chunks after it are dropped unparsed.
    """
    conn, recording = connection(tmp_path)
    conn.send(post("/rec", None))
    chunk = b"%x\r\n%s\r\n" % (64 * 1024, b"z" * 64 * 1024)
    for _ in range(DEFAULT_MAX_BODY_BYTES // (64 * 1024) + 1):
        conn.send(chunk)
    response = conn.response()
    assert response.code == 413 and conn.transport.closed_by_server
    conn.send(chunk * 4 + b"0\r\n\r\n")  # the decoder reaching the end: no request left, no error
    assert recording.seen == []
    assert parse_responses(conn.transport.value(), [False, False]) == [response]


def test_small_chunked_body_is_dropped(tmp_path: Any) -> None:
    """A short chunked body is read, dropped, and the request handled as usual."""
    conn, recording = connection(tmp_path)
    conn.send(post("/rec", None) + b"5\r\nhello\r\n0\r\n\r\n")
    assert parse_response(conn.transport.value()).code == 200
    assert recording.seen == [({}, b"")]


def test_head_refusal_has_no_body(tmp_path: Any) -> None:
    """A HEAD carrying a long body is refused like any other, without a response body."""
    conn, _ = connection(tmp_path)
    conn.send(b"HEAD /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n")
    raw = conn.transport.value()
    assert raw.startswith(b"HTTP/1.1 413 ")
    assert raw.endswith(b"\r\n\r\n")


@pytest_twisted.ensureDeferred
async def test_flood_to_healthz_is_refused_over_a_socket(tmp_path: Any) -> None:
    """
    The reported attack over a real socket: the 405 comes back and the
    connection ends long before 300 MB could have been read.
    """
    site = build_site(Config(server=ServerConfig(data_dir=str(tmp_path))), reactor=reactor)
    port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(site)
    try:
        client = BodySender(post("/healthz", 300 * 1024 * 1024), 300 * 1024 * 1024)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        await connectProtocol(endpoint, client)
        for _ in range(500):
            if client.closed:
                break
            await deferLater(reactor, 0.01, lambda: None)
        assert client.closed
        assert parse_response(bytes(client.received)).code == 405
        assert client.sent < 300 * 1024 * 1024
    finally:
        await port.stopListening()


def test_limit_comes_from_the_config(tmp_path: Any) -> None:
    """[limits] max_body_bytes = 0: even a 1-byte body is refused at the headers (and the connection closed)."""
    config = Config(server=ServerConfig(data_dir=str(tmp_path)), limits=LimitsConfig(max_body_bytes=0))
    conn = SiteConnection(build_site(config, reactor=Clock()))
    conn.send(post("/healthz", 1, body=b"x"))
    assert conn.response().code == 405 and conn.transport.closed_by_server


def test_stalled_body_times_out_with_408(tmp_path: Any) -> None:
    """A body that stops arriving for body_timeout seconds: 408, connection closed."""
    clock = Clock()
    config = Config(server=ServerConfig(data_dir=str(tmp_path)), limits=LimitsConfig(body_timeout=10))
    conn = SiteConnection(build_site(config, reactor=clock))
    conn.send(post("/healthz", 100, body=b"x" * 10))
    clock.advance(9)
    conn.send(b"y" * 10)  # progress resets the clock
    clock.advance(9)
    assert conn.transport.value() == b""
    clock.advance(1.5)
    response = conn.response()
    assert response.code == 408 and json.loads(response.body) == {"error": "request body timed out"}
    assert conn.transport.closed_by_server


def test_complete_body_leaves_no_timer(tmp_path: Any) -> None:
    """Once the body is in, its timeout is gone: nothing of ours stays scheduled."""
    clock = Clock()
    conn, _ = connection(tmp_path, clock)
    conn.send(post("/rec", 3, body=b"abc"))
    assert parse_response(conn.transport.value()).code == 200
    # Only the connection's own idle timer (the keep-alive) is left.
    assert [c.func.__name__ for c in clock.getDelayedCalls()] == ["_expired"]
    assert conn.protocol._timer_kind == "idle"


@implementer(IStreamingBodyResource)
class SlowSink(Resource):
    """Takes bodies into a list, pausing the socket after the first chunk (a slow disk)."""

    isLeaf = True
    max_body_bytes = 1024

    def __init__(self) -> None:
        super().__init__()
        self.chunks: list[bytes] = []
        self.failed: list[Any] = []
        self.request: Any = None

    def body_consumer(self, request: Any) -> Any:
        self.request = request
        return self

    def write(self, data: bytes) -> None:
        self.chunks.append(data)
        self.request.pause_body()

    def body_done(self) -> None:
        self.request.write(b"stored")
        self.request.finish()

    def body_failed(self, reason: Any) -> None:
        self.failed.append(reason)


def sink_connection(tmp_path: Any, clock: Clock) -> tuple[SiteConnection, SlowSink]:
    """A Site with the slow sink at /sink and a 10 s body timeout (under the channel's 60 s idle one)."""
    config = Config(server=ServerConfig(data_dir=str(tmp_path)), limits=LimitsConfig(body_timeout=10))
    site = build_site(config, reactor=clock)
    sink = SlowSink()
    site.resource.putChild(b"sink", sink)
    return SiteConnection(site), sink


def test_consumer_pause_stops_reading_and_the_timeout(tmp_path: Any) -> None:
    """
    A consumer that pauses the body stops the socket being read, and the
    body timeout with it (the wait is the server's); after resume_body the
    timeout runs again.
    """
    clock = Clock()
    conn, sink = sink_connection(tmp_path, clock)
    conn.send(post("/sink", 100, body=b"x" * 10))
    assert sink.chunks == [b"x" * 10]
    assert conn.transport.producerState == "paused"
    clock.advance(600)
    assert conn.transport.value() == b"" and sink.failed == []
    sink.request.resume_body()
    assert conn.transport.producerState == "producing"
    clock.advance(11)
    assert conn.response().code == 408 and len(sink.failed) == 1


def test_streaming_consumer_gets_the_whole_body_then_answers(tmp_path: Any) -> None:
    """Chunks reach the consumer as they arrive; body_done lets it answer; keep-alive holds."""
    clock = Clock()
    conn, sink = sink_connection(tmp_path, clock)
    conn.send(post("/sink", 6, body=b"abc"))
    sink.request.resume_body()
    conn.send(b"def" + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b"".join(sink.chunks) == b"abcdef"
    first, second = parse_responses(conn.transport.value(), [False, False])
    assert first.body == b"stored" and second.code == 200


def test_streaming_resource_refuses_a_long_body_at_the_headers(tmp_path: Any) -> None:
    """Content-Length over the resource's max_body_bytes: 413 before its consumer is asked."""
    clock = Clock()
    conn, sink = sink_connection(tmp_path, clock)
    conn.send(post("/sink", 2048))
    assert conn.response().code == 413 and sink.request is None


def test_body_consumer_that_raises_is_a_500_not_a_crash(tmp_path: Any) -> None:
    """A resource whose body_consumer fails unexpectedly: a JSON 500 at once, the channel intact."""
    clock = Clock()
    conn, sink = sink_connection(tmp_path, clock)

    def broken(request: Any) -> Any:
        raise RuntimeError("bug")

    sink.body_consumer = broken  # type: ignore[method-assign]
    with capturedLogs() as events:
        conn.send(post("/sink", 10, body=b"x" * 10))
    response = conn.response()
    assert response.code == 500 and json.loads(response.body) == {"error": "internal server error"}
    assert conn.transport.closed_by_server
    assert any(e.get("log_failure") is not None for e in events)


def test_answer_before_the_body_ends_tells_the_consumer_and_leaves_no_timer(tmp_path: Any) -> None:
    """
    A consumer that answers before the body has ended: it gets body_failed
    (exactly once), the rest of the body is dropped, no timer of ours stays,
    and a late pause/resume is harmless.
    """
    clock = Clock()
    conn, sink = sink_connection(tmp_path, clock)
    conn.send(post("/sink", 100, body=b"x" * 10))
    sink.request.write(b"early")
    sink.request.finish()
    assert len(sink.failed) == 1
    sink.request.pause_body()
    sink.request.resume_body()
    conn.send(b"y" * 90)
    assert len(sink.failed) == 1
    # Closing (lingering): no body timer, no keep-alive timer; only the linger's end.
    assert [call.func.__name__ for call in clock.getDelayedCalls()] == ["_end_linger"]
    assert conn.transport.closed_by_server


# -- lingering close after an early answer ---------------------------------------------


def test_early_answer_lingers_before_closing(tmp_path: Any) -> None:
    """
    A refusal while the client is still sending: the answer goes out and our
    side is shut, the rest is read and dropped for LINGER_SECONDS (so the
    client is not reset before it reads the answer), then the connection closes.
    """
    clock = Clock()
    conn, recording = connection(tmp_path, clock)
    conn.send(post("/rec", 300 * 1024 * 1024))
    assert conn.response().code == 413
    assert conn.transport.write_closed and not conn.transport.disconnecting
    assert conn.transport.producerState == "producing"  # still reading, to drop
    before = conn.transport.value()
    conn.send(b"x" * 100_000)
    assert conn.transport.value() == before and recording.seen == []
    clock.advance(LINGER_SECONDS - 0.1)
    assert not conn.transport.disconnecting
    clock.advance(0.2)
    assert conn.transport.disconnecting
    assert clock.getDelayedCalls() == []


def test_lingering_stops_after_linger_bytes(tmp_path: Any) -> None:
    clock = Clock()
    conn, _ = connection(tmp_path, clock)
    conn.send(post("/rec", 300 * 1024 * 1024))
    for _ in range(LINGER_BYTES // 65536):
        conn.send(b"x" * 65536)
    assert not conn.transport.disconnecting
    conn.send(b"x" * 65536)
    assert conn.transport.disconnecting
    assert clock.getDelayedCalls() == []


def test_client_leaving_while_lingering_leaves_no_timer(tmp_path: Any) -> None:
    clock = Clock()
    conn, _ = connection(tmp_path, clock)
    conn.send(post("/rec", 300 * 1024 * 1024))
    conn.disconnect()
    assert clock.getDelayedCalls() == []
