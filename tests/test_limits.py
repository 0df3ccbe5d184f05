"""
Tests for L{streamsvc.limits} (and the send timeout in
L{streamsvc.producers.BodyStream}): deadlines a trickle cannot defeat,
connection limits, size limits answered with a status, HTTP/1.1's message
rules. Unit tests on a Clock and the real Site; socket tests for what only
sockets show.
"""

from __future__ import annotations

import json
import os
import resource as resource_module
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import Clock

import streamsvc.limits as limits_module
from streamsvc._transport import unsent_bytes
from streamsvc.app import build_site, prepare_data_dir
from streamsvc.config import Config, LimitsConfig, ServerConfig
from streamsvc.limits import ConnectionLimits, raise_fd_limit
from streamsvc.testing import SiteConnection, parse_response, parse_responses

from test_integration import RawClient, Server, wait_for


class Site:
    def __init__(self, tmp_path: Any, **limits: Any) -> None:
        self.clock = Clock()
        config = Config(server=ServerConfig(data_dir=str(tmp_path)), limits=LimitsConfig(**limits))
        prepare_data_dir(config)
        self.files = tmp_path / "files"
        self.site = build_site(config, reactor=self.clock)

    def connect(self, **kwargs: Any) -> SiteConnection:
        return SiteConnection(self.site, **kwargs)


GET = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


def error_of(conn: SiteConnection) -> tuple[int, str]:
    response = parse_response(conn.transport.value())
    return response.code, json.loads(response.body)["error"]


# -- header_timeout: a deadline -------------------------------------------------------


def test_silent_connection_is_cut_at_the_header_deadline(tmp_path: Any) -> None:
    site = Site(tmp_path)
    conn = site.connect()
    site.clock.advance(14.9)
    assert not conn.transport.closed_by_server
    site.clock.advance(0.2)
    assert error_of(conn)[0] == 408 and conn.transport.closed_by_server


def test_dripped_headers_are_cut_at_the_deadline(tmp_path: Any) -> None:
    """A byte every second restarts nothing: at 15 s the request is cut (slowloris)."""
    site = Site(tmp_path)
    conn = site.connect()
    for byte in (GET[:-4] + b"\r\nX-Slow: " + b"a" * 30):
        conn.send(bytes([byte]))
        site.clock.advance(1)
        if conn.transport.closed_by_server:
            break
    assert conn.transport.closed_by_server
    assert 14 <= site.clock.seconds() <= 16
    assert error_of(conn) == (408, "request headers not complete in time")


def test_headers_in_time_are_answered(tmp_path: Any) -> None:
    site = Site(tmp_path)
    conn = site.connect()
    site.clock.advance(14)
    conn.send(GET)
    assert parse_response(conn.transport.value()).code == 200
    assert not conn.transport.closed_by_server


def test_zero_turns_the_header_deadline_off(tmp_path: Any) -> None:
    site = Site(tmp_path, header_timeout=0, idle_timeout=0)
    conn = site.connect()
    site.clock.advance(3600)
    assert not conn.transport.closed_by_server
    assert site.clock.getDelayedCalls() == []


# -- idle_timeout: kept-alive connections ------------------------------------------------


def test_idle_keep_alive_is_closed_after_idle_timeout(tmp_path: Any) -> None:
    site = Site(tmp_path)
    conn = site.connect()
    conn.send(GET)
    site.clock.advance(59)
    assert not conn.transport.closed_by_server  # idle_timeout, not header_timeout, applies
    site.clock.advance(1.1)
    assert conn.transport.closed_by_server
    assert conn.transport.value().count(b"HTTP/1.1 ") == 1  # closed silently


def test_next_request_on_a_kept_alive_connection_has_a_header_deadline(tmp_path: Any) -> None:
    site = Site(tmp_path)
    conn = site.connect()
    conn.send(GET)
    site.clock.advance(30)
    conn.send(b"GET /healthz HTTP/1.1\r\n")  # the first bytes: the deadline starts
    site.clock.advance(15.1)
    assert conn.transport.closed_by_server
    assert parse_responses(conn.transport.value(), [False, False])[1].code == 408


def test_pipelined_partial_head_has_a_header_deadline(tmp_path: Any) -> None:
    site = Site(tmp_path)
    conn = site.connect()
    conn.send(GET + b"GET /healthz HTTP/1.1\r\nHo")
    site.clock.advance(15.1)
    assert conn.transport.closed_by_server


def test_long_upload_is_not_cut_by_the_header_deadline(tmp_path: Any) -> None:
    """Once the headers are in, the body has body_timeout, not header_timeout."""
    site = Site(tmp_path)
    conn = site.connect()
    conn.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
    for _ in range(30):
        conn.send(b"x" * 1000)
        site.clock.advance(1)
        conn.read()
    assert not conn.transport.closed_by_server


def test_long_download_is_not_cut_while_the_client_reads(tmp_path: Any) -> None:
    site = Site(tmp_path)
    (site.files / "big").write_bytes(os.urandom(4 * 1024 * 1024))
    conn = site.connect()
    conn.send(b"GET /files/big HTTP/1.1\r\nHost: x\r\n\r\n")
    for _ in range(200):
        site.clock.advance(0.5)
        conn.read(32 * 1024)
    assert not conn.transport.closed_by_server
    assert len(conn.transport.value()) > 3 * 1024 * 1024


# -- send_timeout --------------------------------------------------------------------------


def test_reader_that_stops_is_aborted_after_send_timeout_and_its_file_closed(
    tmp_path: Any, monkeypatch: Any
) -> None:
    site = Site(tmp_path, send_timeout=60)
    (site.files / "big").write_bytes(os.urandom(2 * 1024 * 1024))
    closed: list[bool] = []
    import streamsvc.files.local as resource

    real = resource.SendfileProducer  # (a FileProducer on this fake transport)

    def recording(file: Any, *args: Any, **kwargs: Any) -> Any:
        producer = real(file, *args, **kwargs)
        closed.append(file)
        return producer

    monkeypatch.setattr(resource, "SendfileProducer", recording)
    conn = site.connect()
    conn.send(b"GET /files/big HTTP/1.1\r\nHost: x\r\n\r\n")
    site.clock.advance(0)
    site.clock.advance(0)
    assert conn.transport.producer_paused  # the client stopped reading
    site.clock.advance(59)
    assert not conn.aborted
    site.clock.advance(1.1)
    assert conn.aborted
    assert closed and closed[0].closed


def test_slow_but_steady_reader_is_not_cut(tmp_path: Any) -> None:
    """Any progress within send_timeout keeps the response going."""
    site = Site(tmp_path, send_timeout=10)
    (site.files / "big").write_bytes(os.urandom(1024 * 1024))
    conn = site.connect()
    conn.send(b"GET /files/big HTTP/1.1\r\nHost: x\r\n\r\n")
    for _ in range(40):
        site.clock.advance(5)
        conn.read()  # drains: the producer resumes each time
    assert not conn.aborted


def send_timers(clock: Any) -> list[Any]:
    return [c for c in clock.getDelayedCalls() if getattr(c.func, "__name__", "") == "_send_stalled"]


def test_pauses_move_one_send_timer(tmp_path: Any, monkeypatch: Any) -> None:
    """
    A slow reader pauses and resumes its stream again and again: one timer
    is moved each pause, not one made per pause (a cancelled DelayedCall
    stays in the reactor's heap), and each pause gets the whole timeout.
    """
    site = Site(tmp_path, send_timeout=10)
    (site.files / "big").write_bytes(os.urandom(4 * 1024 * 1024))
    made: list[Any] = []
    real = site.clock.callLater

    def counting(delay: float, f: Any, *a: Any, **kw: Any) -> Any:
        if getattr(f, "__name__", "") == "_send_stalled":
            made.append(f)
        return real(delay, f, *a, **kw)

    monkeypatch.setattr(site.clock, "callLater", counting)
    conn = site.connect()
    conn.send(b"GET /files/big HTTP/1.1\r\nHost: x\r\n\r\n")
    for _ in range(10):
        site.clock.advance(8)  # paused for 8 of the 10 s...
        conn.read()  # ...then it takes what is there: resumed, and soon paused again
        assert not conn.aborted
    assert len(made) == 1
    assert len(send_timers(site.clock)) == 1
    site.clock.advance(10.1)  # the last pause, for all of send_timeout
    assert conn.aborted
    assert send_timers(site.clock) == []


def test_no_send_timer_outlives_its_body(tmp_path: Any) -> None:
    site = Site(tmp_path, send_timeout=10)
    (site.files / "big").write_bytes(os.urandom(512 * 1024))
    conn = site.connect()
    conn.send(b"GET /files/big HTTP/1.1\r\nHost: x\r\n\r\n")
    site.clock.advance(0)
    site.clock.advance(0)
    assert send_timers(site.clock)  # paused: the timer runs
    for _ in range(40):
        conn.read()
        site.clock.advance(0)
    assert len(conn.transport.value()) > 512 * 1024
    assert send_timers(site.clock) == []


class FakeTCP:
    """The three attributes of a TCP transport that say what is unsent."""

    def __init__(self, unsent: int) -> None:
        self.dataBuffer = b"x" * unsent
        self.offset = 0
        self._tempDataLen = 0


def test_unsent_bytes() -> None:
    assert unsent_bytes(FakeTCP(100)) == 100
    fake = FakeTCP(100)
    fake.offset, fake._tempDataLen = 40, 7
    assert unsent_bytes(fake) == 67
    assert unsent_bytes(object()) is None


def test_partial_drain_counts_as_progress(tmp_path: Any) -> None:
    """The transport still full but shrinking at the deadline: wait again."""
    site = Site(tmp_path, send_timeout=10)
    (site.files / "big").write_bytes(os.urandom(1024 * 1024))
    conn = site.connect()
    conn.transport.dataBuffer = b"x" * 5000  # type: ignore[attr-defined]
    conn.transport.offset = 0  # type: ignore[attr-defined]
    conn.transport._tempDataLen = 0  # type: ignore[attr-defined]
    conn.send(b"GET /files/big HTTP/1.1\r\nHost: x\r\n\r\n")
    site.clock.advance(0)
    site.clock.advance(0)
    site.clock.advance(9)
    conn.transport.offset = 1000  # type: ignore[attr-defined]  # the peer took 1000 bytes
    site.clock.advance(1.1)
    assert not conn.aborted
    site.clock.advance(10.1)  # nothing more taken
    assert conn.aborted


# -- connection limits -------------------------------------------------------------------


def test_connections_past_the_limit_get_a_503_and_the_server_recovers(tmp_path: Any) -> None:
    site = Site(tmp_path, max_connections=2)
    first = site.connect()
    site.connect()  # the second of the two allowed
    third = site.connect()
    code, message = error_of(third)
    assert code == 503 and "too many connections" in message
    assert b"Retry-After: 1" in third.transport.value()
    assert third.transport.closed_by_server
    third.disconnect()
    first.disconnect()
    fourth = site.connect()
    fourth.send(GET)
    assert parse_response(fourth.transport.value()).code == 200
    assert site.site.connection_limits.open == 2
    assert site.site.connection_limits.rejected == 1


def test_per_client_limit() -> None:
    limits = ConnectionLimits(100, 2)
    assert limits.admit("a") and limits.admit("a")
    assert not limits.admit("a")
    assert limits.admit("b")
    limits.release("a")
    assert limits.admit("a")
    limits.release("a"), limits.release("a"), limits.release("b")
    assert limits.open == 0 and limits._per_client == {}


def test_fd_limit_is_raised_or_refused(monkeypatch: Any) -> None:
    state = {"soft": 1024, "hard": 4096}
    monkeypatch.setattr(resource_module, "getrlimit", lambda _: (state["soft"], state["hard"]))

    def setrlimit(_: int, limits: tuple[int, int]) -> None:
        state["soft"] = limits[0]

    monkeypatch.setattr(resource_module, "setrlimit", setrlimit)
    assert raise_fd_limit(1024) == 2 * 1024 + limits_module.FD_RESERVE
    assert state["soft"] == 2112
    with pytest.raises(ValueError, match="hard limit"):
        raise_fd_limit(4000)


# -- size limits: a status, not a silent close ---------------------------------------------


@pytest.mark.parametrize(
    "raw, code",
    [
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Many: aaaaaaaaaaaaaaaaaaaaaaaaa\r\n" * 700 + b"\r\n", 431),
        (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X: y\r\n" * 150 + b"\r\n", 431),
        (b"NONSENSE\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400),  # no Host
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\nHost: x\n\n", 400),  # bare LF
    ],
    ids=["long-line", "long-header", "big-head", "many-headers", "garbage", "no-host", "two-hosts", "bare-lf"],
)
def test_bad_requests_get_a_json_status_and_close(tmp_path: Any, raw: bytes, code: int) -> None:
    site = Site(tmp_path)
    conn = site.connect()
    conn.send(raw)
    got, message = error_of(conn)
    assert got == code and message
    assert conn.transport.closed_by_server


def test_http_1_0_needs_no_host(tmp_path: Any) -> None:
    site = Site(tmp_path)
    conn = site.connect()
    conn.send(b"GET /healthz HTTP/1.0\r\n\r\n")
    assert parse_response(conn.transport.value()).code == 200


def test_absolute_form_target_is_served_as_its_path(tmp_path: Any) -> None:
    site = Site(tmp_path)
    (site.files / "x.txt").write_bytes(b"hello")
    conn = site.connect()
    conn.send(b"GET http://example.com/files/x.txt?download=1 HTTP/1.1\r\nHost: example.com\r\n\r\n")
    site.clock.advance(0)
    site.clock.advance(0)
    response = parse_response(conn.transport.value())
    assert response.code == 200 and response.body == b"hello"
    assert response.header("content-disposition") is not None


def test_errors_are_not_cached(tmp_path: Any) -> None:
    site = Site(tmp_path)
    conn = site.connect()
    conn.send(b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n")
    response = parse_response(conn.transport.value())
    assert response.code == 404 and response.header("cache-control") == "no-store"


# -- over real sockets -----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_stalled_reader_is_aborted_over_a_socket(tmp_path: Any) -> None:
    """A client that stops reading a 64 MiB file: aborted after send_timeout, the file closed."""
    server = await Server(tmp_path / "data", limits=LimitsConfig(send_timeout=1)).start()
    try:
        (server.files / "big").write_bytes(os.urandom(64 * 1024 * 1024))
        client = RawClient(
            b"GET /files/big HTTP/1.1\r\nHost: x\r\n\r\n", pause_after=256 * 1024
        )
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", server.port.getHost().port)
        await connectProtocol(endpoint, client)
        await wait_for(lambda: client.paused)
        assert open_files(server.files / "big") == 1
        # The server gives up on its own: the file is closed with no help from the client.
        await wait_for(lambda: open_files(server.files / "big") == 0, timeout=10)
        client.resume()  # what it reads now ends short: the connection was aborted
        await client.closed
        assert len(client.received) < 64 * 1024 * 1024
    finally:
        await server.stop()


def open_files(path: Any) -> int:
    """How many descriptors this process holds on C{path}."""
    target = os.path.realpath(path)
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == target:
                count += 1
        except OSError:
            pass
    return count


@pytest_twisted.ensureDeferred
async def test_half_sent_headers_are_cut_over_a_socket(tmp_path: Any) -> None:
    server = await Server(tmp_path / "data", limits=LimitsConfig(header_timeout=1)).start()
    try:
        client = RawClient(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Never-Ends: ")
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", server.port.getHost().port)
        await connectProtocol(endpoint, client)
        await client.closed
        assert parse_response(bytes(client.received)).code == 408
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_connection_limit_over_sockets(tmp_path: Any) -> None:
    server = await Server(tmp_path / "data", limits=LimitsConfig(max_connections=3)).start()
    try:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", server.port.getHost().port)
        held = [RawClient(b"") for _ in range(3)]
        for client in held:
            await connectProtocol(endpoint, client)
        await wait_for(lambda: server.site.connection_limits.open == 3)
        extra = RawClient(GET)
        await connectProtocol(endpoint, extra)
        await extra.closed
        assert parse_response(bytes(extra.received)).code == 503
        held[0].transport.loseConnection()
        await held[0].closed
        again = RawClient(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await connectProtocol(endpoint, again)
        await again.closed
        assert parse_response(bytes(again.received)).code == 200
    finally:
        for client in held[1:]:
            client.transport.loseConnection()
        await server.stop()


# -- graceful shutdown (Drain) ------------------------------------------------------------

from streamsvc.limits import Drain  # noqa: E402


def test_drain_closes_idle_connections_and_waits_for_busy_ones(tmp_path: Any) -> None:
    site = Site(tmp_path)
    (site.files / "big").write_bytes(os.urandom(1024 * 1024))
    idle = site.connect()
    idle.send(GET)
    busy = site.connect()
    busy.send(b"GET /files/big HTTP/1.1\r\nHost: x\r\n\r\n")
    site.clock.advance(0)
    done = Drain(site.site, site.clock, 30).start()
    assert idle.transport.closed_by_server
    assert not busy.transport.closed_by_server and not done.called
    late = site.connect()
    assert error_of(late)[0] == 503  # no new connection is served
    late.disconnect()
    for _ in range(200):
        busy.read()
        site.clock.advance(0.05)
        if busy.transport.closed_by_server:
            break
    response = busy.response()
    assert response.complete and len(response.body) == 1024 * 1024  # finished, then closed
    assert busy.transport.closed_by_server
    busy.disconnect()
    idle.disconnect()
    site.clock.advance(0.1)
    assert done.called
    assert site.clock.getDelayedCalls() == [] or all(
        c.func.__name__ == "_expired" for c in site.clock.getDelayedCalls()
    )


def test_drain_timeout_stops_streams_and_aborts(tmp_path: Any, monkeypatch: Any) -> None:
    site = Site(tmp_path)
    (site.files / "big").write_bytes(os.urandom(4 * 1024 * 1024))
    results: list[Any] = []
    import streamsvc.files.resource as resource

    real = resource.send_body

    def recording(*args: Any, **kwargs: Any) -> Any:
        return real(*args, **kwargs).addCallback(results.append)

    monkeypatch.setattr(resource, "send_body", recording)
    stalled = site.connect()
    stalled.send(b"GET /files/big HTTP/1.1\r\nHost: x\r\n\r\n")
    site.clock.advance(0)
    done = Drain(site.site, site.clock, 30).start()
    site.clock.advance(29)
    assert not done.called and not stalled.aborted
    site.clock.advance(1.1)
    assert done.called and stalled.aborted
    from streamsvc.producers import Outcome

    assert [r.outcome for r in results] == [Outcome.SHUTDOWN]
    assert site.site.open_streams == set()


def test_second_signal_aborts_at_once(tmp_path: Any) -> None:
    site = Site(tmp_path)
    (site.files / "big").write_bytes(os.urandom(4 * 1024 * 1024))
    stalled = site.connect()
    stalled.send(b"GET /files/big HTTP/1.1\r\nHost: x\r\n\r\n")
    site.clock.advance(0)
    drain = Drain(site.site, site.clock, 30)
    done = drain.start()
    drain.abort()  # what the second SIGTERM calls
    assert done.called and stalled.aborted
    assert [c for c in site.clock.getDelayedCalls() if c.func.__name__ in ("abort", "_check")] == []


def test_body_lfs_after_a_split_blank_line_are_data(tmp_path: Any) -> None:
    """The blank line in its own read, then a body with LFs: echoed, not a bare-LF 400."""
    site = Site(tmp_path)
    conn = site.connect()
    conn.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n")
    conn.send(b"\r\na\nb\n")
    conn.read_until_quiet(site.clock)
    response = parse_response(conn.transport.value())
    assert response.code == 200 and response.body == b"a\nb\n"


@pytest.mark.parametrize(
    "reads",
    [
        [b"GET /healthz HTTP/1.1\r\nHost: x\nX: y\n\n"],
        [b"GET /healthz HTTP/1.1\r", b"\nHost: x\r\n", b"X: y\n\n"],
    ],
    ids=["one-read", "split"],
)
def test_bare_lf_in_a_header_line_is_a_400_not_a_hang(tmp_path: Any, reads: list[bytes]) -> None:
    site = Site(tmp_path)
    conn = site.connect()
    for data in reads:
        conn.send(data)
    assert error_of(conn)[0] == 400 and conn.transport.closed_by_server


def test_drain_closes_a_connection_whose_headers_were_coming(tmp_path: Any) -> None:
    """Headers half in when the stop began: answered, then closed (not kept alive through the drain)."""
    site = Site(tmp_path)
    conn = site.connect()
    conn.send(GET[:10])
    done = Drain(site.site, site.clock, 30).start()
    conn.send(GET[10:])
    assert parse_response(conn.transport.value()).code == 200
    assert conn.transport.closed_by_server
    conn.disconnect()
    site.clock.advance(0.1)
    assert done.called
