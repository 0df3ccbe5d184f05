# -*- test-case-name: tests.test_client_tail -*-
"""
C{streamsvc-client tail URL}: each NDJSON line or Server-Sent Event printed
as it arrives (the C{data:} payload, or the whole event with C{--events});
after a dropped connection, or a stream the server ended, it reconnects with
C{Last-Event-ID} (so nothing is missed while the server's history holds it),
waiting 1, 2, 4... up to 30 s between attempts, reset once data flows again.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import treq
from twisted.internet.error import ConnectError
from twisted.internet.task import deferLater
from twisted.web.client import ResponseFailed

from streamsvc.client.errors import ClientError
from streamsvc.client.get import _header, _status_error
from streamsvc.lines import LineSplitter


#: The longest line kept; a longer one (a broken or hostile stream) is skipped
#: as it arrives instead of growing the client's memory.
MAX_LINE = 1024 * 1024


def _lines(splitter: LineSplitter, data: bytes) -> Iterator[str]:
    """The complete lines in C{data} (with what came before), CR stripped; too-long ones skipped."""
    for line in splitter.feed(data):
        if line.data is not None:
            yield line.data.removesuffix(b"\r").decode("utf-8", "replace")


class Event(NamedTuple):
    id: str | None
    event: str
    data: str


class SSEParser:
    """
    The WHATWG event-stream format, fed bytes as they arrive: fields
    C{id}, C{event}, C{data} (several lines joined by LF), comments
    ignored, an event dispatched at each blank line.
    """

    def __init__(self, on_event: Callable[[Event], None]) -> None:
        self._on_event = on_event
        self._lines = LineSplitter(MAX_LINE)
        self._data: list[str] = []
        self._event = ""
        self._id: str | None = None
        self.last_id: str | None = None

    def feed(self, data: bytes) -> None:
        for line in _lines(self._lines, data):
            self._line(line)

    def _line(self, line: str) -> None:
        if not line:
            if self._data:
                event = Event(self._id, self._event or "message", "\n".join(self._data))
                self._on_event(event)
            self._data, self._event = [], ""
            return
        if line.startswith(":"):
            return  # a comment: heartbeats
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\x00" not in value:
            self._id = self.last_id = value


class NDJSONLines:
    """
    NDJSON fed as it arrives: every non-blank line, in full. A line that is
    an object with an integer C{id} (streamsvc's C{?format=ndjson} events)
    sets the id to resume from.
    """

    def __init__(self, on_line: Callable[[str], None]) -> None:
        self._on_line = on_line
        self._lines = LineSplitter(MAX_LINE)
        self.last_id: str | None = None

    def feed(self, data: bytes) -> None:
        for line in _lines(self._lines, data):
            if line.strip():
                self._on_line(line)
                self._learn_id(line)

    def _learn_id(self, line: str) -> None:
        try:
            document = json.loads(line)
        except ValueError:
            return
        if isinstance(document, dict) and type(document.get("id")) is int:
            self.last_id = str(document["id"])


def show_event(event: Event, *, whole: bool) -> str:
    if not whole:
        return event.data
    head = f"id: {event.id}\n" if event.id is not None else ""
    return f"{head}event: {event.event}\n" + "".join(f"data: {line}\n" for line in event.data.split("\n"))


async def tail(
    client: Any,
    url: str,
    *,
    reactor: Any,
    write: Callable[[str], None],
    headers: dict[str, str] | None = None,
    events: bool = False,
    reconnect: bool = True,
    max_backoff: float = 30.0,
    attempts: int | None = None,
) -> None:
    """
    Follow C{url} until it fails for good: a 4xx answer, or a dropped
    connection without C{reconnect}. C{attempts} bounds the connections made
    (tests); None is for ever.
    """
    last_id: str | None = None
    backoff = 1.0
    made = 0
    while attempts is None or made < attempts:
        made += 1
        asked = dict(headers or {})
        if last_id is not None:
            asked["Last-Event-ID"] = last_id
        got_data = False
        try:
            response = await client.get(url, headers=asked, unbuffered=True)
            if 400 <= response.code < 500 or (response.code >= 300 and not reconnect):
                await response.content()
                raise _status_error(response, url)
            if response.code >= 300:
                await response.content()
                raise _Retry()
            ctype = (_header(response, "content-type") or "").lower()
            if ctype.startswith("text/event-stream"):
                parser: Any = SSEParser(lambda e: write(show_event(e, whole=events) + ("\n" if events else "")))
            else:
                parser = NDJSONLines(write)

            def feed(data: bytes) -> None:
                nonlocal got_data
                got_data = True
                parser.feed(data)

            try:
                await treq.collect(response, feed)
            finally:
                last_id = parser.last_id or last_id
        except (ConnectError, ResponseFailed, _Retry) as error:
            if not reconnect:
                raise ClientError(f"connection lost: {error.__class__.__name__}") from None
        if not reconnect:
            return
        if got_data:
            backoff = 1.0
        if attempts is not None and made >= attempts:
            return
        await deferLater(reactor, backoff, lambda: None)
        backoff = min(backoff * 2, max_backoff)


class _Retry(Exception):
    """A 5xx: the server may be back soon."""
