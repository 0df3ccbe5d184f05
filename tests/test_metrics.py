"""Tests for L{streamsvc.metrics} and L{streamsvc.accesslog}: every stream and response counted and logged once."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from twisted.logger import capturedLogs

from configured_site import ConfiguredSite
from streamsvc.accesslog import redact_query
from streamsvc.config import AuthConfig, LimitsConfig
from streamsvc.testing import SiteConnection, parse_response


class Site(ConfiguredSite):
    def __init__(self, tmp_path: Any, *, auth: AuthConfig | None = None, **server: Any) -> None:
        super().__init__(
            tmp_path, server=server, auth=auth or AuthConfig(), limits=LimitsConfig(max_connections=2)
        )

    def metric(self, name: str, **labels: str) -> float:
        value = self.site.metrics.registry.get_sample_value(name, labels or None)
        return 0.0 if value is None else value


def test_metrics_page_is_prometheus_text(tmp_path: Any) -> None:
    site = Site(tmp_path)
    response = site.get("/metrics")
    assert response.code == 200
    assert response.header("content-type").startswith("text/plain")
    assert b"streamsvc_streams_active" in response.body
    assert b"streamsvc_bytes_sent_total" in response.body


def test_every_known_series_exists_at_zero_from_the_start(tmp_path: Any) -> None:
    """A dashboard or alert on a series sees it before its first event (issue #28 item 3)."""
    from streamsvc.metrics import KINDS, OUTCOMES, STATUS_CLASSES, TIMEOUT_KINDS

    site = Site(tmp_path)
    for kind in KINDS:
        for name in ("producer_pauses_total", "paused_seconds_total", "throttled_seconds_total",
                     "bytes_sent_total", "streams_active"):
            assert site.site.metrics.registry.get_sample_value(f"streamsvc_{name}", {"kind": kind}) == 0, (name, kind)
        for outcome in OUTCOMES:
            labels = {"kind": kind, "outcome": outcome}
            assert site.site.metrics.registry.get_sample_value("streamsvc_streams_total", labels) == 0
    for kind in TIMEOUT_KINDS:
        assert site.site.metrics.registry.get_sample_value("streamsvc_timeouts_total", {"kind": kind}) == 0
    for status in STATUS_CLASSES:
        assert site.site.metrics.registry.get_sample_value("streamsvc_responses_total", {"status": status}) == 0


def test_the_outcomes_named_in_metrics_are_the_producers_outcomes() -> None:
    from streamsvc.metrics import OUTCOMES
    from streamsvc.producers import Outcome

    assert set(OUTCOMES) == {outcome.value for outcome in Outcome}


def test_a_status_outside_the_classes_counts_as_other(tmp_path: Any) -> None:
    site = Site(tmp_path)
    site.site.metrics.response(600)
    site.site.metrics.response(99)
    assert site.metric("streamsvc_responses_total", status="other") == 2


def test_a_download_is_counted_once(tmp_path: Any) -> None:
    site = Site(tmp_path)
    (site.files / "f.bin").write_bytes(os.urandom(200_000))
    assert site.get("/files/f.bin").code == 200
    assert site.metric("streamsvc_bytes_sent_total", kind="file") == 200_000
    assert site.metric("streamsvc_streams_total", kind="file", outcome="complete") == 1
    assert site.metric("streamsvc_streams_active", kind="file") == 0
    assert site.metric("streamsvc_open_files") == 0
    assert site.metric("streamsvc_responses_total", status="2xx") == 1


def test_a_stalled_and_abandoned_stream(tmp_path: Any) -> None:
    site = Site(tmp_path)
    (site.files / "big").write_bytes(os.urandom(1024 * 1024))
    conn = SiteConnection(site.site)
    conn.send(b"GET /files/big HTTP/1.1\r\nHost: x\r\n\r\n")
    site.clock.advance(0)
    site.clock.advance(0)
    assert site.metric("streamsvc_streams_active", kind="file") == 1
    assert site.metric("streamsvc_open_files") == 1
    assert site.metric("streamsvc_connections_open") == 1
    site.clock.advance(2)
    conn.disconnect()
    assert site.metric("streamsvc_streams_total", kind="file", outcome="client_gone") == 1
    assert site.metric("streamsvc_producer_pauses_total", kind="file") >= 1
    assert site.metric("streamsvc_paused_seconds_total", kind="file") >= 2
    assert site.metric("streamsvc_open_files") == 0
    assert site.metric("streamsvc_connections_open") == 0


def test_rejections_and_timeouts_are_counted(tmp_path: Any) -> None:
    site = Site(tmp_path)
    conns = [SiteConnection(site.site) for _ in range(3)]
    assert site.metric("streamsvc_connections_rejected_total") == 1
    site.clock.advance(16)  # the two admitted ones pass their header deadline
    assert site.metric("streamsvc_timeouts_total", kind="header") == 2
    for conn in conns:
        conn.disconnect()


def test_metrics_can_be_protected_or_off(tmp_path: Any) -> None:
    protected = Site(tmp_path / "a", auth=AuthConfig(tokens=("t0k",), protect_metrics=True))
    assert protected.get("/metrics").code == 401
    assert protected.get("/metrics", "Authorization: Bearer t0k").code == 200
    off = Site(tmp_path / "b", metrics=False)
    assert off.get("/metrics").code == 404
    assert off.site.metrics is None


# -- access log ----------------------------------------------------------------------------


def test_a_body_of_one_chunk_is_written_at_once_and_counted_as_a_stream(tmp_path: Any) -> None:
    site = Site(tmp_path)
    (site.files / "small.bin").write_bytes(os.urandom(4096))
    fds = len(os.listdir("/proc/self/fd"))
    with capturedLogs() as events:
        response = site.get("/files/small.bin")
    assert response.code == 200 and len(response.body) == 4096
    assert response.header("content-length") == "4096"
    assert site.metric("streamsvc_bytes_sent_total", kind="file") == 4096
    assert site.metric("streamsvc_streams_total", kind="file", outcome="complete") == 1
    assert site.metric("streamsvc_open_files") == 0
    (line,) = access_lines(events)
    assert '" 200 4096 ' in line and "outcome=complete" in line
    assert len(os.listdir("/proc/self/fd")) == fds  # the file is closed
    assert site.clock.getDelayedCalls() == [] or all(
        c.func.__name__ == "_expired" for c in site.clock.getDelayedCalls()
    )


def test_a_small_file_cut_after_its_stat_is_a_500_not_a_short_body(tmp_path: Any, monkeypatch: Any) -> None:
    from streamsvc.files import local as resource
    from streamsvc.producers import read_spans
    from streamsvc.ranges import ByteRange

    def shrunk(fd: int, spans: Any) -> bytes:  # as if it lost its tail after the fstat
        return read_spans(fd, [ByteRange(0, 5000)])

    site = Site(tmp_path)
    (site.files / "small.bin").write_bytes(os.urandom(4096))
    monkeypatch.setattr(resource, "read_spans", shrunk)

    response = site.get("/files/small.bin")
    assert response.code == 500 and json.loads(response.body) == {"error": "the file could not be read"}
    assert site.metric("streamsvc_bytes_sent_total", kind="file") == 0


def access_lines(events: list[dict[str, Any]]) -> list[str]:
    return [str(e["line"]) for e in events if e.get("log_namespace") == "streamsvc.access"]


def test_every_response_is_logged_once_with_its_fields(tmp_path: Any) -> None:
    site = Site(tmp_path)
    (site.files / "f.txt").write_bytes(b"x" * 1000)
    with capturedLogs() as events:
        site.get("/files/f.txt?token=SECRET&download=1", "Range: bytes=0-99", "Authorization: Bearer SECRET2")
        site.get("/nowhere")
    lines = access_lines(events)
    assert len(lines) == 2
    first = lines[0]
    assert '"GET /files/f.txt?token=&download= HTTP/1.1" 206 100' in first
    assert 'range="bytes=0-99"' in first and "outcome=complete" in first
    assert "SECRET" not in first
    assert '"GET /nowhere HTTP/1.1" 404' in lines[1]


def test_a_client_gone_mid_body_is_logged(tmp_path: Any) -> None:
    """twisted.web logs nothing for these; we log the bytes that went and the outcome."""
    site = Site(tmp_path)
    (site.files / "big").write_bytes(os.urandom(1024 * 1024))
    with capturedLogs() as events:
        conn = SiteConnection(site.site)
        conn.send(b"GET /files/big HTTP/1.1\r\nHost: x\r\n\r\n")
        site.clock.advance(0)
        site.clock.advance(0)
        site.clock.advance(1.5)
        conn.disconnect()
    (line,) = access_lines(events)
    assert '"GET /files/big HTTP/1.1" 200 ' in line
    assert "outcome=client_gone" in line and "duration=1.5" in line
    sent = int(line.split('" 200 ')[1].split()[0])
    assert 0 < sent < 1024 * 1024


def test_json_and_off(tmp_path: Any) -> None:
    as_json = Site(tmp_path / "a", access_log="json")
    with capturedLogs() as events:
        as_json.get("/healthz?x=1")
    (line,) = access_lines(events)
    record = json.loads(line)
    assert record["path"] == "/healthz?x=" and record["status"] == 200
    assert record["outcome"] == "complete" and record["method"] == "GET"
    off = Site(tmp_path / "b", access_log="off")
    with capturedLogs() as events:
        off.get("/healthz")
    assert access_lines(events) == []
    assert off.metric("streamsvc_responses_total", status="2xx") == 1  # still counted


def test_no_twisted_web_access_line(tmp_path: Any) -> None:
    site = Site(tmp_path)
    with capturedLogs() as events:
        site.get("/healthz")
    assert not [e for e in events if "HTTP/1.1\" 200" in str(e.get("log_format", "")) + str(e.get("message", ""))]


@pytest.mark.parametrize(
    "uri, shown",
    [(b"/x", "/x"), (b"/x?a=1&b=2", "/x?a=&b="), (b"/x?sig=abc&&n", "/x?sig=&n="), (b"/x?", "/x?")],
)
def test_redact_query(uri: bytes, shown: str) -> None:
    assert redact_query(uri) == shown


def test_combined_line_cannot_be_broken_by_the_client(tmp_path: Any) -> None:
    site = Site(tmp_path)
    with capturedLogs() as events:
        site.get("/healthz", 'User-Agent: evil" injected\x01')
    (line,) = access_lines(events)
    assert '"evil\\x22 injected\\x01"' in line
    assert parse_response  # (the response parser is used by the helpers above)


# -- over a real socket -----------------------------------------------------------------

import pytest_twisted  # noqa: E402
import treq  # noqa: E402
from twisted.internet import reactor  # noqa: E402

from test_integration import Server  # noqa: E402


@pytest_twisted.ensureDeferred
async def test_metrics_move_when_streams_run(tmp_path: Any) -> None:
    server = await Server(tmp_path / "data").start()
    try:
        response = await treq.get(f"{server.url}/generate?bytes=300000", reactor=reactor)
        assert len(await response.content()) == 300_000
        page = await (await treq.get(f"{server.url}/metrics", reactor=reactor)).text()
        assert 'streamsvc_bytes_sent_total{kind="generate"} 300000.0' in page
        assert 'streamsvc_streams_total{kind="generate",outcome="complete"} 1.0' in page
    finally:
        await server.stop()


def test_access_log_to_a_file_of_its_own_is_buffered_and_flushed(tmp_path: Any) -> None:
    path = tmp_path / "access.log"
    site = Site(tmp_path / "d", access_log_file=str(path))
    with capturedLogs() as events:
        site.get("/healthz?secret=1")
    assert access_lines(events) == []  # not through twistd's log
    assert path.read_text() == ""  # buffered
    site.clock.advance(1.1)  # the once-a-second flush
    (line,) = path.read_text().splitlines()
    assert '"GET /healthz?secret= HTTP/1.1" 200' in line
    site.site.access_log.close()
    assert site.clock.getDelayedCalls() == [] or all(
        c.func.__name__ == "_expired" for c in site.clock.getDelayedCalls()
    )
