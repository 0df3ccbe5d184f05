"""
A request refused at its head (or at its body's framing) ends there: one
answer, a JSON C{{"error": ...}} with C{Connection: close}, nothing more
parsed, nothing dispatched or created, the connection closed once the answer
is out, and the answer counted and logged with the status the client got.
Issues #28 (items 1, 2, 9, 10, 11) and #34 (item 1).

In memory first (the real Site on a Clock, through a transport that
half-closes like TCP), then the same heads over a real socket.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import maybeDeferred
from twisted.logger import capturedLogs

from configured_site import ConfiguredSite
from streamsvc.config import AuthConfig, LimitsConfig
from streamsvc.testing import SiteConnection, parse_response

from test_integration import Server, raw

TOKEN = "refusal-secret"


def run_now(function: Any, *args: Any) -> Any:
    return maybeDeferred(function, *args)

AUTH = f"Authorization: Bearer {TOKEN}\r\n".encode()


class Site(ConfiguredSite):
    def __init__(self, tmp_path: Any, **limits: Any) -> None:
        super().__init__(
            tmp_path,
            auth=AuthConfig(tokens=(TOKEN,)),
            limits=LimitsConfig(**limits),
            run_blocking=run_now,  # (file jobs at once, not in a thread pool)
        )

    def metric(self, name: str, **labels: str) -> float:
        value = self.site.metrics.registry.get_sample_value(name, labels or None)
        return 0.0 if value is None else value


def access_lines(events: list[dict[str, Any]]) -> list[str]:
    return [str(e["line"]) for e in events if e.get("log_namespace") == "streamsvc.access"]


def failures(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e.get("log_failure") is not None or e.get("log_level", None) and e["log_level"].name in ("error", "critical")]


#: Heads the server must refuse with one 400 (name, raw bytes, error message).
MALFORMED = [
    ("garbage line then headers", b"GARBAGE\r\nHost: x\r\n\r\n", "malformed request"),
    ("space in the target", b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n", "malformed request"),
    ("raw non-ASCII byte in the target", b"GET /\xff HTTP/1.1\r\nHost: x\r\n\r\n", None),
    (
        "NUL in a header of a PUT",
        b"PUT /files/auth.txt HTTP/1.1\r\nHost: x\r\n" + AUTH
        + b"X-Bad: a\x00b\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
        "malformed request",
    ),
    (
        "bad Content-Length",
        b"PUT /files/cl.txt HTTP/1.1\r\nHost: x\r\n" + AUTH + b"Content-Length: 3x\r\n\r\nabc",
        None,
    ),
    (
        "Content-Length and Transfer-Encoding",
        b"PUT /files/clte.txt HTTP/1.1\r\nHost: x\r\n" + AUTH
        + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        None,
    ),
    (
        "Transfer-Encoding identity hiding a second request",
        b"PUT /files/te.txt HTTP/1.1\r\nHost: x\r\n" + AUTH
        + b"Transfer-Encoding: identity\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        "unsupported Transfer-Encoding (only chunked)",
    ),
    (
        "Transfer-Encoding gzip",
        b"PUT /files/gz.txt HTTP/1.1\r\nHost: x\r\n" + AUTH + b"Transfer-Encoding: gzip\r\n\r\nabc",
        "unsupported Transfer-Encoding (only chunked)",
    ),
    (
        "Transfer-Encoding gzip, chunked",
        b"PUT /files/gzc.txt HTTP/1.1\r\nHost: x\r\n" + AUTH
        + b"Transfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        "unsupported Transfer-Encoding (only chunked)",
    ),
    (
        "bad chunk size",
        b"PUT /files/chunk.txt HTTP/1.1\r\nHost: x\r\n" + AUTH
        + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        None,
    ),
]


def assert_one_refusal(raw_bytes: bytes, code: int, message: str | None) -> dict[str, Any]:
    assert raw_bytes.count(b"HTTP/1.1 ") == 1, raw_bytes
    response = parse_response(raw_bytes)
    assert response.code == code, raw_bytes
    assert response.header("connection") == "close"
    assert response.header("content-type").startswith("application/json")
    body = json.loads(response.body)
    assert set(body) == {"error"}
    if message is not None:
        assert body["error"] == message
    return body


def nothing_created(files: Any) -> None:
    assert sorted(p.name for p in files.rglob("*")) == [], list(files.rglob("*"))


@pytest.mark.parametrize("name, head, message", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_a_malformed_head_gets_one_400_and_ends_there(tmp_path: Any, name: str, head: bytes, message: str | None) -> None:
    site = Site(tmp_path)
    with capturedLogs() as events:
        conn = SiteConnection(site.site)
        conn.send(head)
        conn.read_until_quiet(site.clock)
        sent = conn.transport.value()
        conn.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")  # later bytes: ignored
        conn.read_until_quiet(site.clock)
    assert conn.transport.value() == sent
    assert_one_refusal(sent, 400, message)
    assert conn.transport.closed_by_server
    nothing_created(site.files)
    assert failures(events) == []
    (line,) = access_lines(events)
    assert '" 400 ' in line and "outcome=complete" in line, line
    assert site.metric("streamsvc_responses_total", status="4xx") == 1
    assert site.metric("streamsvc_responses_total", status="2xx") == 0
    assert site.metric("streamsvc_open_files") == 0
    conn.disconnect()


def test_the_refusal_logs_the_request_it_could_parse(tmp_path: Any) -> None:
    site = Site(tmp_path)
    with capturedLogs() as events:
        conn = SiteConnection(site.site)
        conn.send(b"PUT /files/cl.txt HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n")
        conn.read_until_quiet(site.clock)
    (line,) = access_lines(events)
    sent = len(parse_response(conn.transport.value()).body)
    assert f'"PUT /files/cl.txt HTTP/1.1" 400 {sent} ' in line, line
    conn.disconnect()


def test_a_thousand_header_lines_get_one_431(tmp_path: Any) -> None:
    site = Site(tmp_path)
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(1000)) + b"\r\n"
    with capturedLogs() as events:
        conn = SiteConnection(site.site)
        conn.send(head)
        conn.read_until_quiet(site.clock)
    assert_one_refusal(conn.transport.value(), 431, "too many request headers")
    assert conn.transport.closed_by_server
    assert failures(events) == []
    (line,) = access_lines(events)
    assert '"GET /healthz HTTP/1.1" 431 ' in line
    assert site.metric("streamsvc_responses_total", status="4xx") == 1
    conn.disconnect()


def test_a_valid_request_pipelined_behind_a_refused_one_is_not_answered(tmp_path: Any) -> None:
    site = Site(tmp_path)
    conn = SiteConnection(site.site)
    conn.send(b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    conn.read_until_quiet(site.clock)
    assert_one_refusal(conn.transport.value(), 400, "malformed request")
    conn.disconnect()


def test_a_bad_chunk_tells_the_upload_and_installs_nothing(tmp_path: Any) -> None:
    """The body had begun: the upload's consumer is told, its temporary file removed, and the 400 is its answer."""
    site = Site(tmp_path)
    with capturedLogs() as events:
        conn = SiteConnection(site.site)
        conn.send(b"PUT /files/chunk.txt HTTP/1.1\r\nHost: x\r\n" + AUTH + b"Transfer-Encoding: chunked\r\n\r\n")
        conn.send(b"3\r\nabc\r\n")
        conn.read_until_quiet(site.clock)
        conn.send(b"zz\r\n")
        conn.read_until_quiet(site.clock)
    assert_one_refusal(conn.transport.value(), 400, None)
    assert conn.transport.closed_by_server
    assert not (site.files / "chunk.txt").exists()
    assert [p for p in site.files.rglob("*") if p.is_file()] == []
    (line,) = access_lines(events)
    assert '"PUT /files/chunk.txt HTTP/1.1" 400 ' in line and "499" not in line
    assert site.metric("streamsvc_open_files") == 0
    conn.disconnect()


# -- answers written by the channel itself: counted and logged ----------------------------


def test_the_408_for_a_slow_head_is_counted_and_logged(tmp_path: Any) -> None:
    site = Site(tmp_path)
    with capturedLogs() as events:
        conn = SiteConnection(site.site)
        conn.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        site.clock.advance(16)
    assert_one_refusal(conn.transport.value(), 408, "request headers not complete in time")
    (line,) = access_lines(events)
    assert '"GET /healthz HTTP/1.1" 408 ' in line and "duration=16" in line, line
    assert site.metric("streamsvc_responses_total", status="4xx") == 1
    assert site.metric("streamsvc_timeouts_total", kind="header") == 1
    conn.disconnect()


def test_the_408_for_a_silent_connection_is_logged_without_a_request(tmp_path: Any) -> None:
    site = Site(tmp_path)
    with capturedLogs() as events:
        conn = SiteConnection(site.site)
        site.clock.advance(16)
    assert parse_response(conn.transport.value()).code == 408
    (line,) = access_lines(events)
    assert '"- - -" 408 ' in line, line
    conn.disconnect()


def test_the_503_past_max_connections_is_counted_and_logged(tmp_path: Any) -> None:
    site = Site(tmp_path, max_connections=1)
    with capturedLogs() as events:
        first = SiteConnection(site.site)
        second = SiteConnection(site.site)
    response = parse_response(second.transport.value())
    assert response.code == 503 and response.header("retry-after") == "1"
    assert second.transport.closed_by_server
    (line,) = access_lines(events)
    assert " 503 " in line
    assert site.metric("streamsvc_responses_total", status="5xx") == 1
    assert site.metric("streamsvc_connections_rejected_total") == 1
    first.disconnect()
    second.disconnect()


# -- over a real socket -------------------------------------------------------------------


@pytest.mark.parametrize("name, head, message", MALFORMED, ids=[m[0] for m in MALFORMED])
@pytest_twisted.ensureDeferred
async def test_a_malformed_head_over_a_socket(tmp_path: Any, name: str, head: bytes, message: str | None) -> None:
    """The client keeps its socket open: the server still closes it after the one 400."""
    server = await Server(tmp_path / "data", auth=AuthConfig(tokens=(TOKEN,))).start()
    try:
        client = await raw(server, head)
        await client.closed
        assert_one_refusal(bytes(client.received), 400, message)
        nothing_created(server.files)
        assert server.site.metrics.registry.get_sample_value("streamsvc_open_files") == 0
    finally:
        await server.stop()
