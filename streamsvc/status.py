# -*- test-case-name: tests.test_status -*-
"""
C{GET /status/streams}: every stream the server is moving, once a second,
as Server-Sent Events (what C{/ui/streams} draws).

The figures come from the same accounting as C{/metrics}: the Site's open
L{streamsvc.producers.BodyStream}s, their bytes written and their time
paused by the client. Each second, for each stream: bytes sent, the rate
over that second, the share of it spent paused (backpressure: a client
that stops reading shows 100 %), and whether a throttle holds it.

One sampler per process, running only while someone watches. A watcher
that reads slowly never queues more than one snapshot: a newer one
replaces the one not yet sent (a status is only worth its latest value).
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.server import NOT_DONE_YET

from streamsvc._transport import host_of
from streamsvc.accesslog import redact_query
from streamsvc.errors import HTTPError, JSONResource
from streamsvc.files.fields import event_stream_headers, finish_without_body
from streamsvc.producers import StreamProducer, start_body

log = Logger()

#: The kind of the status streams themselves, left out of what they show.
KIND = "status"


class StreamsFeed:
    """Samples a Site's open streams every C{interval} seconds while it has watchers."""

    def __init__(self, clock: IReactorTime, *, interval: float = 1.0) -> None:
        self.clock = clock
        self.interval = interval
        self.site: Any = None
        self._watchers: dict[Watcher, None] = {}
        self._loop: LoopingCall | None = None
        self._previous: dict[Any, tuple[float, int, float]] = {}
        self._ids: dict[Any, int] = {}
        self._next_id = 1
        self._last: bytes | None = None
        self._closed = False

    def watch(self, site: Any) -> Watcher:
        if self._closed:
            raise HTTPError(503, "shutting down", {b"retry-after": b"1"})
        self.site = site
        watcher = Watcher(self)
        self._watchers[watcher] = None
        if self._loop is None:
            self._loop = LoopingCall(self.tick)
            self._loop.clock = self.clock
            self._loop.start(self.interval, now=True).addErrback(self._failed)
        elif self._last is not None:
            watcher.offer(self._last)
        return watcher

    def forget(self, watcher: Watcher) -> None:
        self._watchers.pop(watcher, None)
        if not self._watchers and self._loop is not None:
            loop, self._loop = self._loop, None
            if loop.running:
                loop.stop()
            self._previous.clear()
            self._ids.clear()
            self._last = None

    def _failed(self, failure: Any) -> None:
        """A snapshot that raised (a bug): say so, and end the watchers rather than leave them silent."""
        log.failure("The streams feed failed", failure)
        self._loop = None
        for watcher in list(self._watchers):
            watcher.close()

    def close(self) -> None:
        """A drain: every status stream ends now, cleanly."""
        self._closed = True
        for watcher in list(self._watchers):
            watcher.close()

    def snapshot(self) -> dict[str, Any]:
        """The streams now, with each one's rate and paused share since the last snapshot."""
        now = self.clock.seconds()
        streams = [s for s in getattr(self.site, "open_streams", ()) if s.kind != KIND]
        rows, total = [], 0.0
        seen = {}
        for stream in streams:
            request = stream.request
            sent, paused = stream.bytes_sent, stream.paused_so_far()
            since, sent_before, paused_before = self._previous.get(
                stream, (getattr(request, "started_at", now), 0, 0.0)
            )
            elapsed = now - since
            rate = (sent - sent_before) / elapsed if elapsed > 0 else 0.0
            share = min(1.0, max(0.0, (paused - paused_before) / elapsed)) if elapsed > 0 else 0.0
            seen[stream] = (now, sent, paused)
            if stream not in self._ids:
                self._ids[stream] = self._next_id
                self._next_id += 1
            producer = stream.producer
            total += rate
            rows.append(
                {
                    "id": self._ids[stream],
                    "kind": stream.kind,
                    "path": redact_query(request.uri or b"-"),
                    "client": host_of(request.getClientAddress()),
                    "bytes_sent": sent,
                    "length": getattr(producer, "length", None),
                    "rate": round(rate, 1),
                    "paused_share": round(share, 3),
                    "throttled": bool(getattr(producer, "throttled", False)),
                    "started": getattr(request, "started_at", None),
                }
            )
        self._previous = seen
        self._ids = {stream: self._ids[stream] for stream in seen}
        return {
            "time": now,
            "worker": os.getpid(),  # with several workers, the one that answers
            "active": len(rows),
            "total_rate": round(total, 1),
            "streams": rows,
        }

    def tick(self) -> None:
        data = json.dumps(self.snapshot(), separators=(",", ":")).encode("utf-8")
        self._last = b"event: streams\ndata: " + data + b"\n\n"
        for watcher in list(self._watchers):
            watcher.offer(self._last)


class Watcher(StreamProducer):
    """One client of the feed: the latest snapshot, whenever it can take it."""

    def __init__(self, feed: StreamsFeed) -> None:
        super().__init__(clock=feed.clock)
        self._feed = feed
        # A comment first, so the headers go out at once.
        self._frame: bytes | None = b": streams\n\n"
        self._waiting: Deferred[bytes | None] | None = None
        self._ended = False

    def offer(self, frame: bytes) -> None:
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.callback(frame)
        else:
            self._frame = frame  # replaces one not sent yet

    def close(self) -> None:
        self._ended = True
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.callback(None)

    def _next_chunk(self) -> bytes | Deferred[bytes | None] | None:
        if self._frame is not None:
            frame, self._frame = self._frame, None
            return frame
        if self._ended:
            return None
        self._waiting = Deferred(lambda _: setattr(self, "_waiting", None))
        return self._waiting

    def _release(self) -> None:
        self._feed.forget(self)


class StatusResource(JSONResource):
    """C{/status/streams} (and nothing else below C{/status})."""

    isLeaf = True

    def __init__(self, feed: StreamsFeed) -> None:
        super().__init__()
        self.feed = feed

    def _headers(self, request: IRequest) -> None:
        if request.postpath != [b"streams"]:
            raise HTTPError(404, "not found")
        if request.args:
            raise HTTPError(400, "this resource takes no query parameters")
        event_stream_headers(request, b"text/event-stream; charset=utf-8")

    def render_GET(self, request: IRequest) -> int:
        self._headers(request)
        start_body(request, self.feed.watch(request.site), clock=self.feed.clock, kind=KIND)
        return NOT_DONE_YET  # type: ignore[no-any-return]

    def render_HEAD(self, request: IRequest) -> int:
        self._headers(request)
        return finish_without_body(request)
