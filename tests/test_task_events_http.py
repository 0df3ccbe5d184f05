"""
C{GET /tasks/events} through a real Site (L{SiteConnection}): changes made
through the API arrive as Server-Sent Events (or NDJSON), resumption with
C{Last-Event-ID}, a reader that stops reading costs at most its queue, and a
disconnect or a drain ends the subscription.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure

from streamsvc.limits import Drain
from streamsvc.testing import SiteConnection

from test_task_resource import AUTH, Harness, doc


@pytest.fixture
def h(tmp_path: Any) -> Harness:
    return Harness(tmp_path)


def subscribe(h: Harness, query: str = "", headers: dict[str, str] | None = None, **kw: Any) -> SiteConnection:
    conn = h.connect(**kw)
    conn.request("GET", "/tasks/events" + query, {**AUTH, **(headers or {})})
    h.clock.advance(0)
    h.clock.advance(0)
    return conn


def body_of(conn: SiteConnection) -> bytes:
    """The de-chunked body written so far (the stream never ends by itself)."""
    raw = conn.transport.value()
    rest = raw[raw.index(b"\r\n\r\n") + 4 :]
    out = b""
    while rest:
        end = rest.find(b"\r\n")
        if end < 0:
            break
        size = int(rest[:end], 16)
        if size == 0:
            break
        out += rest[end + 2 : end + 2 + size]
        rest = rest[end + 2 + size + 2 :]
    return out


def sse_events(data: bytes) -> list[dict[str, str]]:
    events = []
    for block in data.decode().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.split("\n") if line and not line.startswith(":"))
        if fields:
            events.append(fields)
    return events


def test_headers(h: Harness) -> None:
    conn = subscribe(h)
    head = conn.transport.value().split(b"\r\n\r\n")[0].decode().lower()
    assert "200 ok" in head
    assert "content-type: text/event-stream; charset=utf-8" in head
    assert "cache-control: no-store" in head and "x-accel-buffering: no" in head
    assert "transfer-encoding: chunked" in head
    assert h.site.events.subscribers == 1


def test_api_changes_arrive_as_events(h: Harness) -> None:
    conn = subscribe(h)
    created = doc(h.call("POST", "/tasks", {"title": "watch me"}))
    h.call("PATCH", f"/tasks/{created['id']}", {"status": "completed"})
    h.call("PATCH", f"/tasks/{created['id']}", {})  # no change, no event
    h.call("DELETE", f"/tasks/{created['id']}")
    h.clock.advance(0)
    events = sse_events(body_of(conn))
    assert [(e["id"], e["event"]) for e in events] == [("1", "created"), ("2", "updated"), ("3", "deleted")]
    assert json.loads(events[0]["data"]) == created
    assert json.loads(events[1]["data"])["status"] == "completed"


def test_ndjson_format(h: Harness) -> None:
    conn = subscribe(h, "?format=ndjson")
    assert b"content-type: application/x-ndjson" in conn.transport.value().lower()
    h.call("POST", "/tasks", {"title": "x"})
    h.clock.advance(0)
    opening, line = body_of(conn).splitlines()
    assert opening == b""
    event = json.loads(line)
    assert event["id"] == 1 and event["event"] == "created" and event["data"]["title"] == "x"


@pytest.mark.parametrize("query", ["?format=xml", "?fmt=sse", "?format=sse&format=ndjson"])
def test_bad_query_is_400(h: Harness, query: str) -> None:
    r = h.call("GET", "/tasks/events" + query)
    assert r.code == 400 and ("format" in doc(r)["error"] or "fmt" in doc(r)["error"])
    assert h.site.events.subscribers == 0


def test_head_subscribes_nobody(h: Harness) -> None:
    r = h.call("HEAD", "/tasks/events")
    assert r.code == 200 and r.header("content-type") == "text/event-stream; charset=utf-8"
    assert h.site.events.subscribers == 0


def test_last_event_id_resumes(h: Harness) -> None:
    for i in range(5):
        h.call("POST", "/tasks", {"title": f"t{i}"})
    conn = subscribe(h, headers={"Last-Event-ID": "3"})
    assert [e["id"] for e in sse_events(body_of(conn))] == ["4", "5"]
    stale = subscribe(h, headers={"Last-Event-ID": "banana"})
    assert sse_events(body_of(stale))[0]["event"] == "reset"


def test_heartbeat(h: Harness) -> None:
    conn = subscribe(h)
    assert body_of(conn) == b": streamsvc task events\n\n"  # at once: the headers are out
    h.clock.advance(15)
    assert body_of(conn) == b": streamsvc task events\n\n: heartbeat\n\n"


def test_disconnect_removes_the_subscriber(h: Harness) -> None:
    conn = subscribe(h)
    assert h.site.events.subscribers == 1
    conn.disconnect()
    assert h.site.events.subscribers == 0
    assert h.clock.getDelayedCalls() == [] or all(not c.active() for c in h.clock.getDelayedCalls())


def test_a_reader_that_stops_costs_at_most_its_queue(h: Harness) -> None:
    conn = subscribe(h, buffer_size=1024)
    hub = h.site.events
    for i in range(5000):
        hub.publish("updated", {"id": i, "title": "x" * 200})
        h.clock.advance(0)
    assert conn.transport.producer_paused
    [subscription] = list(hub._subscriptions)
    written = len(conn.transport.value())
    assert written < 64 * 1024  # the server stopped writing when the client stopped reading
    assert subscription.queued <= hub.queue_max and subscription.queued_bytes <= hub.queue_max_bytes
    conn.read_until_quiet(h.clock)
    events = sse_events(body_of(conn))
    dropped = [e for e in events if e.get("event") == "dropped"]
    assert dropped and json.loads(dropped[0]["data"])["count"] > 0
    assert events[-1]["id"] == "5000"  # the newest kept


def test_drain_ends_event_streams_cleanly(h: Harness) -> None:
    conn = subscribe(h)
    h.call("POST", "/tasks", {"title": "x"})
    drain = Drain(h.site, h.clock, 30)
    done = drain.start()
    conn.read_until_quiet(h.clock)
    h.clock.advance(0.1)
    response = conn.response()
    assert response.complete  # the final chunk: ended, not aborted
    assert sse_events(response.body)[0]["event"] == "created"
    assert h.site.events.subscribers == 0
    assert conn.transport.disconnecting  # the server closes it
    for channel in list(h.site.open_channels):  # the closes, as TCP would report them
        if channel.transport.disconnecting:
            channel.connectionLost(Failure(ConnectionDone()))
    h.clock.advance(0.1)
    assert done.called
    r = h.call("GET", "/tasks/events")
    assert r.code == 503
