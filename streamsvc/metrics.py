# -*- test-case-name: tests.test_metrics -*-
"""
What the server is doing, for Prometheus: C{GET /metrics}.

Every figure comes from one of three places, so that none is counted twice
and a later zero-copy path stays counted: a stream's start and its
L{streamsvc.producers.BodySent} (bytes, outcome, seconds paused), the
connection guard (L{streamsvc.limits.GuardedChannel}: open, rejected,
timeouts), and the access log's one call per response (status classes).

Labels are bounded: a stream's kind (a fixed set, plus C{plugin:NAME}
for each enabled plugin), an outcome (an enum),
a status class, a timeout kind. No path, no client address.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector
from twisted.web.iweb import IRequest

from streamsvc.errors import HTTPError, JSONResource

#: The kinds of stream a response can be; anything else counts as "other".
KINDS = ("file", "listing", "generate", "echo", "tasks", "export", "events", "status", "other")
#: How a stream can end: the values of L{streamsvc.producers.Outcome}
#: (named here because producers import this module, not the other way;
#: a test keeps the two the same).
OUTCOMES = ("complete", "client_gone", "error", "store_failed", "cancelled", "shutdown", "timeout")
#: The deadlines that can expire (L{streamsvc.limits}, L{streamsvc.body},
#: L{streamsvc.producers.BodyStream}).
TIMEOUT_KINDS = ("header", "idle", "send", "body")
#: Status classes of C{responses_total} ("other" for a code outside 1xx-5xx).
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx", "other")
#: The resumable upload protocols (L{streamsvc.files.pending.PendingState.protocol}).
UPLOAD_PROTOCOLS = ("ietf", "tus")
#: What happens to a resumable upload (L{streamsvc.files.pending.UploadEvents}).
UPLOAD_EVENTS = ("started", "resumed", "completed", "cancelled", "expired")
#: Kinds whose stream holds an open file (or folder) descriptor.
FILE_KINDS = frozenset({"file", "listing"})


#: With several workers (prometheus_client's multiprocess mode), a gauge
#: is the sum over the workers alive: streams, connections, subscribers.
LIVE = "livesum"


def multiprocess_dir() -> str | None:
    """
    Where the workers' metric files are, when this process is one of
    several workers (L{streamsvc.workers} sets it before Python starts:
    prometheus_client reads it at import).
    """
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class Metrics:
    """The server's metrics, in a registry of their own (tests get a fresh one each)."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        p = "streamsvc_"
        self.streams_active = Gauge(
            p + "streams_active", "Response bodies streaming now", ["kind"],
            registry=registry, multiprocess_mode=LIVE,
        )
        self.open_files = Gauge(
            p + "open_files", "Files and folders held open by streams now",
            registry=registry, multiprocess_mode=LIVE,
        )
        self.bytes_sent = Counter(
            p + "bytes_sent", "Body bytes sent by streams", ["kind"], registry=registry
        )
        self.streams = Counter(
            p + "streams", "Streamed responses ended, by how", ["kind", "outcome"], registry=registry
        )
        self.pauses = Counter(
            p + "producer_pauses", "Times a stream was paused by its client", ["kind"], registry=registry
        )
        self.paused_seconds = Counter(
            p + "paused_seconds", "Seconds streams spent paused by their clients", ["kind"],
            registry=registry,
        )
        self.throttled_seconds = Counter(
            p + "throttled_seconds", "Seconds streams spent held by rate limits", ["kind"],
            registry=registry,
        )
        self.responses = Counter(
            p + "responses", "Responses, by status class", ["status"], registry=registry
        )
        self.connections_open = Gauge(
            p + "connections_open", "Connections open now",
            registry=registry, multiprocess_mode=LIVE,
        )
        self.connections_rejected = Counter(
            p + "connections_rejected", "Connections refused (503) past the limits",
            registry=registry,
        )
        self.timeouts = Counter(
            p + "timeouts", "Timeouts, by kind (header, idle, send, body)", ["kind"],
            registry=registry,
        )
        self.event_subscribers = Gauge(
            p + "event_subscribers", "Clients following /tasks/events now",
            registry=registry, multiprocess_mode=LIVE,
        )
        self.events_dropped = Counter(
            p + "events_dropped", "Events dropped for subscribers that fell behind",
            registry=registry,
        )
        self.subscribers_disconnected = Counter(
            p + "event_subscribers_disconnected",
            "Subscribers cut off because their queue overflowed ([events] overflow = disconnect)",
            registry=registry,
        )
        self.resumable_uploads = Counter(
            p + "resumable_uploads",
            "Resumable uploads started, resumed (an append after a cut one), completed, cancelled, expired",
            ["protocol", "event"], registry=registry,
        )
        self.resumable_bytes = Counter(
            p + "resumable_bytes_appended", "Bytes appended durably to resumable uploads", ["protocol"],
            registry=registry,
        )
        # Every known label combination exists from the start, at zero (the
        # Prometheus instrumentation guidelines: a series that appears only
        # at its first event is invisible to a rate() or an alert until
        # then). The children are bound once, too: labels() costs some
        # microseconds a call, several times a request.
        self._active = {kind: self.streams_active.labels(kind) for kind in KINDS}
        self._sent = {kind: self.bytes_sent.labels(kind) for kind in KINDS}
        self._pauses = {kind: self.pauses.labels(kind) for kind in KINDS}
        self._paused = {kind: self.paused_seconds.labels(kind) for kind in KINDS}
        self._throttled = {kind: self.throttled_seconds.labels(kind) for kind in KINDS}
        self._outcomes = {
            (kind, outcome): self.streams.labels(kind, outcome) for kind in KINDS for outcome in OUTCOMES
        }
        self._statuses = {status: self.responses.labels(status) for status in STATUS_CLASSES}
        self._timeouts = {kind: self.timeouts.labels(kind) for kind in TIMEOUT_KINDS}
        self._upload_events = {
            (protocol, event): self.resumable_uploads.labels(protocol, event)
            for protocol in UPLOAD_PROTOCOLS for event in UPLOAD_EVENTS
        }
        self._appended = {protocol: self.resumable_bytes.labels(protocol) for protocol in UPLOAD_PROTOCOLS}

    def scrape(self) -> CollectorRegistry:
        """
        What C{/metrics} shows: this process's registry or, with several
        workers, all of theirs summed (each worker may answer the scrape).
        """
        folder = multiprocess_dir()
        if folder is None:
            return self.registry
        merged = CollectorRegistry()
        MultiProcessCollector(merged, path=folder)
        return merged

    # streams

    def add_kind(self, kind: str) -> None:
        """
        Count streams of C{kind} apart (a plugin's, C{plugin:NAME}), every
        series at zero from now on; until added, such streams count as
        C{other}.
        """
        if kind in self._active:
            return
        self._active[kind] = self.streams_active.labels(kind)
        self._sent[kind] = self.bytes_sent.labels(kind)
        self._pauses[kind] = self.pauses.labels(kind)
        self._paused[kind] = self.paused_seconds.labels(kind)
        self._throttled[kind] = self.throttled_seconds.labels(kind)
        for outcome in OUTCOMES:
            self._outcomes[(kind, outcome)] = self.streams.labels(kind, outcome)

    def _kind(self, kind: str) -> str:
        return kind if kind in self._active else "other"

    def stream_started(self, kind: str) -> None:
        kind = self._kind(kind)
        self._active[kind].inc()
        if kind in FILE_KINDS:
            self.open_files.inc()

    def stream_ended(
        self, kind: str, outcome: str, sent: int, *, pauses: int, paused: float, throttled: float
    ) -> None:
        kind = self._kind(kind)
        self._active[kind].dec()
        if kind in FILE_KINDS:
            self.open_files.dec()
        self._outcome(kind, outcome).inc()
        self._sent[kind].inc(sent)
        if pauses:
            self._pauses[kind].inc(pauses)
            self._paused[kind].inc(paused)
        if throttled:
            self._throttled[kind].inc(throttled)

    def _outcome(self, kind: str, outcome: str) -> Any:
        counter = self._outcomes.get((kind, outcome))
        if counter is None:  # (an outcome added to the enum but not to OUTCOMES)
            counter = self._outcomes[(kind, outcome)] = self.streams.labels(kind, outcome)
        return counter

    def sent_at_once(self, kind: str, sent: int) -> None:
        """A body written whole, with its headers (L{streamsvc.producers.send_at_once})."""
        kind = self._kind(kind)
        self._outcomes[(kind, "complete")].inc()
        self._sent[kind].inc(sent)

    # responses and connections

    def response(self, code: int) -> None:
        child = self._statuses.get(f"{code // 100}xx") if 100 <= code < 600 else None
        (child or self._statuses["other"]).inc()

    def timeout(self, kind: str) -> None:
        child = self._timeouts.get(kind)
        (child or self.timeouts.labels(kind)).inc()

    # resumable uploads (streamsvc.files.pending.UploadEvents)

    def upload_event(self, protocol: str, event: str) -> None:
        child = self._upload_events.get((protocol, event))
        (child or self.resumable_uploads.labels(protocol, event)).inc()

    def upload_appended(self, protocol: str, size: int) -> None:
        child = self._appended.get(protocol)
        (child or self.resumable_bytes.labels(protocol)).inc(size)

    # live events (streamsvc.tasks.events)

    def subscriber_added(self) -> None:
        self.event_subscribers.inc()

    def subscriber_removed(self) -> None:
        self.event_subscribers.dec()

    def dropped(self, count: int) -> None:
        self.events_dropped.inc(count)

    def overflow_disconnect(self) -> None:
        self.subscribers_disconnected.inc()


def metrics_of(site: Any) -> Metrics | None:
    return getattr(site, "metrics", None)  # type: ignore[no-any-return]


class MetricsResource(JSONResource):
    """
    C{GET /metrics}: the Prometheus text format.

    Rendered on the reactor rather than through prometheus_client's own
    Twisted resource (a WSGI app on the reactor's thread pool): the
    registry is small and bounded, so rendering it takes well under a
    millisecond, and errors stay this service's JSON ones.
    """

    isLeaf = True

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self._metrics = metrics

    def render_GET(self, request: IRequest) -> bytes:
        if request.postpath not in ([], [b""]):
            raise HTTPError(404, "not found")
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        return generate_latest(self._metrics.scrape())

    def render_HEAD(self, request: IRequest) -> bytes:
        body = self.render_GET(request)
        request.setHeader(b"content-length", b"%d" % (len(body),))
        return b""
