"""
C{streamsvc-client tail}: the SSE and NDJSON parsers fed at any byte
boundary, and following a real streamsvc's C{/tasks/events}, reconnecting
with C{Last-Event-ID} after the connection is cut.
"""

from __future__ import annotations

from typing import Any

import pytest_twisted
import treq
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor

from streamsvc.client.tail import Event, NDJSONLines, SSEParser, show_event, tail
from streamsvc.config import AuthConfig

from test_integration import Server, wait_for

STREAM = (
    b": streamsvc task events\n\n"
    b"id: 1\nevent: created\ndata: {\"id\":1}\n\n"
    b": heartbeat\n\n"
    b"id: 2\r\nevent: updated\r\ndata: line one\r\ndata: line two\r\n\r\n"
    b"data: no id\n\n"
)


@given(st.integers(1, len(STREAM)))
def test_sse_parser_any_boundaries(piece: int) -> None:
    events: list[Event] = []
    parser = SSEParser(events.append)
    for start in range(0, len(STREAM), piece):
        parser.feed(STREAM[start : start + piece])
    assert events == [
        Event("1", "created", '{"id":1}'),
        Event("2", "updated", "line one\nline two"),
        Event("2", "message", "no id"),
    ]
    assert parser.last_id == "2"


def test_show_event() -> None:
    e = Event("7", "updated", "a\nb")
    assert show_event(e, whole=False) == "a\nb"
    assert show_event(e, whole=True) == "id: 7\nevent: updated\ndata: a\ndata: b\n"


def test_ndjson_lines_learn_the_id() -> None:
    lines: list[str] = []
    parser = NDJSONLines(lines.append)
    parser.feed(b'\n{"id":3,"event":"created","data":{}}\r\n{"x"')
    parser.feed(b":1}\nnot json\n")
    assert lines == ['{"id":3,"event":"created","data":{}}', '{"x":1}', "not json"]
    assert parser.last_id == "3"


@pytest_twisted.ensureDeferred
async def test_tail_follows_events_and_resumes_after_a_cut(tmp_path: Any) -> None:
    server = await Server(tmp_path, auth=AuthConfig(tokens=("tailtoken",))).start()
    hub = server.site.events
    seen: list[str] = []
    try:
        following = tail(
            treq, server.url + "/tasks/events", reactor=reactor, write=seen.append,
            headers={"Authorization": "Bearer tailtoken"}, attempts=2, max_backoff=0.1,
        )
        from twisted.internet.defer import ensureDeferred

        done = ensureDeferred(following)
        await wait_for(lambda: hub.subscribers == 1)
        hub.publish("created", {"n": 1})
        await wait_for(lambda: seen == ['{"n":1}'])
        for channel in list(server.site.open_channels):  # the network cuts the connection
            channel.transport.abortConnection()
        await wait_for(lambda: hub.subscribers == 0)
        hub.publish("created", {"n": 2})  # while nobody is connected
        await wait_for(lambda: hub.subscribers == 1)  # back, with Last-Event-ID: 1
        await wait_for(lambda: seen == ['{"n":1}', '{"n":2}'])  # the missed one replayed
        hub.close()  # the second (last allowed) connection ends
        await done
    finally:
        await server.stop()
        await server.site.task_store.close()


@pytest_twisted.ensureDeferred
async def test_tail_stops_on_401(tmp_path: Any) -> None:
    import pytest

    from streamsvc.client.get import ClientError

    server = await Server(tmp_path, auth=AuthConfig(tokens=("tailtoken",))).start()
    try:
        with pytest.raises(ClientError, match="^401 Unauthorized: /tasks/events$"):
            await tail(treq, server.url + "/tasks/events", reactor=reactor, write=print)
    finally:
        await server.stop()
        await server.site.task_store.close()


def test_a_stream_without_newlines_does_not_grow_the_client() -> None:
    from streamsvc.client.tail import MAX_LINE

    events: list[Event] = []
    parser = SSEParser(events.append)
    for _ in range(10):
        parser.feed(b"data: " + b"x" * (MAX_LINE // 2))  # 5 MiB, no newline
    assert parser._lines._held <= MAX_LINE
    parser.feed(b"\n\ndata: fine\n\n")
    assert events == [Event(None, "message", "fine")]  # the monster line skipped, the stream goes on
