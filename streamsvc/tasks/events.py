# -*- test-case-name: tests.test_task_events -*-
"""
The bounded fan-out hub behind C{GET /tasks/events}: live task events for
any number of subscribers, none of whom can make the server hold more than
its own queue.

Events happen whether or not anyone reads (a task is updated, an import
finishes), so this source cannot be paused: it is a "leaky stream". Each
subscriber gets a queue bounded by a count and by bytes; a subscriber that
falls behind either loses its oldest queued events (C{drop-oldest}, and is
told how many with a C{dropped} notice) or is cut off (C{disconnect}, the
stream fails with L{QueueOverflow}). Either way its memory stays bounded
however long it stops reading.

Each event is JSON-encoded once, in L{EventHub.publish}; its framing (SSE
or NDJSON) is built at most once per format and shared by every subscriber
of that format, so a publish costs O(subscribers) appends.

Wire formats, per event C{seq}, C{kind} and JSON C{payload}:

  - C{sse} (C{text/event-stream}): C{id: <seq>\\nevent: <kind>\\ndata:
    <payload>\\n\\n}; a heartbeat is the comment C{: heartbeat\\n\\n}.
  - C{ndjson} (C{application/x-ndjson}): C{{"id":<seq>,"event":"<kind>",
    "data":<payload>}\\n}; a heartbeat is a bare C{\\n}, so B{NDJSON readers
    must skip blank lines}.

Two notices, never queued as events (so they never count against a queue):

  - C{dropped}, before the next events written after some were dropped:
    SSE C{event: dropped\\ndata: {"count":N}\\n\\n}, NDJSON
    C{{"event":"dropped","count":N}\\n}.
  - C{reset}, first in a stream whose C{Last-Event-ID} could not be resumed
    (unparseable, older than the history, or newer than any event): SSE
    C{id: <last>\\nevent: reset\\ndata: {"last_event_id":<last>}\\n\\n},
    NDJSON C{{"event":"reset","last_event_id":<last>}\\n}, where C{<last>}
    is the newest event's id (0 before any). The SSE form carries an C{id:}
    so that an EventSource that reconnects before the next event resumes
    from C{<last>} instead of being reset again.

Subscribed with C{opening=True} (as C{/tasks/events} does), a stream opens with a line of its own (SSE: the comment
C{: streamsvc task events\\n\\n}; NDJSON: a blank line) unless it has events to replay, so the
headers reach the client at once rather than with the first event.

No C{retry:} field is sent: browsers' default reconnection delay (a few
seconds) suits a server that keeps a history to resume from.
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Callable
from itertools import islice
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from streamsvc.producers import Chunk, StreamProducer

#: What a subscriber that falls behind gets: its oldest events dropped, or cut off.
OVERFLOW_POLICIES = ("drop-oldest", "disconnect")
#: The wire formats a subscription can speak.
FORMATS = ("sse", "ndjson")
#: The Content-Type of each format, for the resource.
CONTENT_TYPES = {"sse": b"text/event-stream; charset=utf-8", "ndjson": b"application/x-ndjson"}
#: Event kinds the stream itself uses; publishing one would confuse clients.
RESERVED_KINDS = frozenset({"dropped", "reset"})

#: A Last-Event-ID we can resume from: digits only (C{int()} would also take
#: C{"+1"}, C{"1_0"} and non-ASCII digits), and few enough to stay cheap.
_EVENT_ID = re.compile(r"[0-9]{1,20}")


class QueueOverflow(Exception):
    """A subscriber's queue overflowed under the disconnect policy."""


class HubClosed(RuntimeError):
    """L{EventHub.subscribe} after L{EventHub.close}: the server is shutting down."""


def encode_payload(value: Any) -> bytes:
    """An event's data as every source encodes it (a store writing events elsewhere too): compact JSON, UTF-8."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


_json = encode_payload


class _Event:
    """
    One published event: its id, kind and JSON payload, plus its framing in
    each format, built the first time a subscriber of that format needs it
    and then shared by all of them (and by replays from the history).
    """

    __slots__ = ("seq", "kind", "payload", "_framed")

    def __init__(self, seq: int, kind: str, payload: bytes) -> None:
        self.seq = seq
        self.kind = kind
        self.payload = payload
        self._framed: dict[str, bytes] = {}

    def framed(self, fmt: str) -> bytes:
        framed = self._framed.get(fmt)
        if framed is None:
            framed = self._framed[fmt] = _FRAMINGS[fmt].event(self.seq, self.kind, self.payload)
        return framed


class _SSE:
    """Server-sent events framing (the WHATWG HTML "server-sent events" section)."""

    heartbeat = b": heartbeat\n\n"
    opening = b": streamsvc task events\n\n"

    @staticmethod
    def event(seq: int, kind: str, payload: bytes) -> bytes:
        return b"id: %d\nevent: %s\ndata: %s\n\n" % (seq, kind.encode("utf-8"), payload)

    @staticmethod
    def dropped(count: int) -> bytes:
        return b'event: dropped\ndata: {"count":%d}\n\n' % (count,)

    @staticmethod
    def reset(last: int) -> bytes:
        return b'id: %d\nevent: reset\ndata: {"last_event_id":%d}\n\n' % (last, last)


class _NDJSON:
    """One JSON object per line; a blank line is a heartbeat."""

    heartbeat = b"\n"
    opening = b"\n"

    @staticmethod
    def event(seq: int, kind: str, payload: bytes) -> bytes:
        return b'{"id":%d,"event":%s,"data":%s}\n' % (seq, _json(kind), payload)

    @staticmethod
    def dropped(count: int) -> bytes:
        return b'{"event":"dropped","count":%d}\n' % (count,)

    @staticmethod
    def reset(last: int) -> bytes:
        return b'{"event":"reset","last_event_id":%d}\n' % (last,)


_FRAMINGS: dict[str, type[_SSE] | type[_NDJSON]] = {"sse": _SSE, "ndjson": _NDJSON}


class _NoMetrics:
    """Stands in when the hub has no L{streamsvc.metrics.Metrics}, so calls need no C{if}."""

    def subscriber_added(self) -> None:
        pass

    def subscriber_removed(self) -> None:
        pass

    def dropped(self, count: int) -> None:
        pass

    def overflow_disconnect(self) -> None:
        pass


class EventHub:
    """
    Numbers events, keeps the last C{history} of them for clients that
    reconnect with C{Last-Event-ID}, and offers each to every subscription.

    @param clock: what heartbeats (and the producers' turns) are scheduled on.
    @param history: how many past events a reconnecting client can resume over.
    @param queue_max: the most events a subscription queues (at least 1).
    @param queue_max_bytes: the most framed bytes a subscription queues (at
        least 1); one event bigger than this is still queued, alone.
    @param overflow: one of L{OVERFLOW_POLICIES}.
    @param heartbeat: seconds of silence before a heartbeat is written, so
        proxies and clients see a live connection; 0 for none.
    @param metrics: a L{streamsvc.metrics.Metrics}, or None.
    """

    def __init__(
        self,
        clock: IReactorTime,
        *,
        history: int = 1000,
        queue_max: int = 1000,
        queue_max_bytes: int = 1024 * 1024,
        overflow: str = "drop-oldest",
        heartbeat: float = 15.0,
        metrics: Any = None,
    ) -> None:
        if overflow not in OVERFLOW_POLICIES:
            raise ValueError(f"overflow must be one of {OVERFLOW_POLICIES}, not {overflow!r}")
        if history < 0:
            raise ValueError(f"history must not be negative, not {history!r}")
        # Zero would leave nowhere to put the one event being written.
        if queue_max < 1:
            raise ValueError(f"queue_max must be at least 1, not {queue_max!r}")
        if queue_max_bytes < 1:
            raise ValueError(f"queue_max_bytes must be at least 1, not {queue_max_bytes!r}")
        if heartbeat < 0:
            raise ValueError(f"heartbeat must not be negative, not {heartbeat!r}")
        self.clock = clock
        self.queue_max = queue_max
        self.queue_max_bytes = queue_max_bytes
        self.overflow = overflow
        self.heartbeat = heartbeat
        self.metrics = _NoMetrics() if metrics is None else metrics
        self._history: deque[_Event] = deque(maxlen=history)
        self._last_seq = 0
        # A dict rather than a set: events reach subscribers in the order they came.
        self._subscriptions: dict[Subscription, None] = {}
        self._closed = False

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<EventHub{state} last_id={self._last_seq} subscribers={self.subscribers}>"

    @property
    def subscribers(self) -> int:
        """Subscriptions not yet ended."""
        return len(self._subscriptions)

    @property
    def history_size(self) -> int:
        """How many past events it keeps for clients that reconnect."""
        return self._history.maxlen or 0

    @property
    def last_id(self) -> int:
        """The newest event's id; 0 before the first."""
        return self._last_seq

    def publish(self, kind: str, data: dict[str, Any]) -> int | None:
        """
        Send an event to every subscriber; returns its id (None when a
        L{relay} numbers it: the id is known only once it comes back).

        @raises ValueError: C{kind} is empty, holds a line break (it would
            end the SSE field), or is one of L{RESERVED_KINDS}.
        @raises TypeError: C{data} is not JSON-serialisable (nothing is
            published then, and no id is used up).
        """
        if not kind or "\n" in kind or "\r" in kind or kind in RESERVED_KINDS:
            raise ValueError(f"bad event kind {kind!r}")
        payload = _json(data)
        # SSE ends a field at a line break, so the payload must be one line.
        # json.dumps escapes every control character in strings, and UTF-8
        # never uses bytes below 0x80 inside a multi-byte character.
        assert b"\n" not in payload and b"\r" not in payload
        if self.relay is not None:
            self.relay(kind, payload)
            return None
        return self.deliver(self._last_seq + 1, kind, payload)

    #: With several worker processes (L{streamsvc.workers}): called with
    #: C{(kind, payload)} instead of numbering the event here. The relay
    #: numbers every worker's events in one sequence and hands each back
    #: to every worker's hub through L{deliver}, so that a subscriber on
    #: any worker sees every change, with ids that mean the same on all.
    relay: Callable[[str, bytes], None] | None = None

    def deliver(self, seq: int, kind: str, payload: bytes, *, after: int | None = None) -> int:
        """
        Offer an event numbered C{seq} (by L{publish}, by a relay, or by a
        store's feed) to every subscriber. An id not above the last one is
        ignored.

        @param after: the id of the event this one follows in its source,
            when the source's ids may skip numbers (a database sequence):
            then a gap of ids no event has is no loss. By default the event
            before is C{seq - 1}.
        """
        if seq <= self._last_seq:
            return self._last_seq
        follows = seq - 1 if after is None else after
        if follows != self._last_seq:
            # Ids we never had (a worker that started late): the history
            # cannot replay across them.
            self._history.clear()
        self._last_seq = seq
        event = _Event(seq, kind, payload)
        self._history.append(event)
        # A copy: a subscription may end (and leave) while being offered to.
        for subscription in list(self._subscriptions):
            subscription._offer(event)
        return seq

    def advance_to(self, seq: int) -> None:
        """
        Start numbering after C{seq} (a worker joining a relay that is
        already at C{seq}): a client that saw event C{seq} elsewhere then
        resumes here with nothing missed; one that saw less is reset.
        """
        if seq > self._last_seq:
            self._history.clear()
            self._last_seq = seq

    def lost_events(self, last: int) -> None:
        """
        The source lost events it cannot give (a store's feed found them
        pruned while it was cut off): forget the history, number on from
        C{last}, and tell every open stream with a C{reset}, so that no
        subscriber silently misses an event.
        """
        self._history.clear()
        self._last_seq = max(self._last_seq, last)
        for subscription in list(self._subscriptions):
            subscription._reset_to(self._last_seq)

    def subscribe(
        self, *, last_event_id: str | None = None, fmt: str = "sse", opening: bool = False
    ) -> Subscription:
        """
        A new subscription, to send with L{streamsvc.producers.start_body}
        (or to C{stopProducing} if it is not sent after all: until then it
        holds its place in the hub).

        @param last_event_id: the C{Last-Event-ID} header's text, if the
            client sent one. When the history still holds every event after
            it, those are replayed first; otherwise the stream starts with a
            C{reset} notice, then new events only.
        @param fmt: one of L{FORMATS}.
        @param opening: start with the format's opening line when there is
            nothing to replay (what the HTTP resource wants: its headers then
            go out at once).
        @raises HubClosed: after L{close}.
        """
        if fmt not in FORMATS:
            raise ValueError(f"fmt must be one of {FORMATS}, not {fmt!r}")
        if self._closed:
            raise HubClosed("the event hub is closed")
        subscription = Subscription(self, fmt)
        subscription._opened = not opening
        self._subscriptions[subscription] = None
        self.metrics.subscriber_added()
        if last_event_id is not None:
            replay = self._replay_after(last_event_id)
            if replay is None:
                subscription._reset_to(self._last_seq)
            else:
                # Through the queue like any event: a long replay can itself
                # overflow, and drop or disconnect.
                for event in replay:
                    subscription._offer(event)
        return subscription

    def close(self) -> None:
        """
        End every subscription (server shutdown): each writes what it has
        queued, then completes. No subscriptions after this.
        """
        if self._closed:
            return
        self._closed = True
        for subscription in list(self._subscriptions):
            subscription._close()

    def _replay_after(self, last_event_id: str) -> list[_Event] | None:
        """The events after C{last_event_id}, or None when they cannot all be replayed."""
        if not _EVENT_ID.fullmatch(last_event_id.strip()):
            return None
        after = int(last_event_id)
        history = self._history
        oldest = history[0].seq if history else self._last_seq + 1
        if not oldest - 1 <= after <= self._last_seq:
            return None
        if after == self._last_seq:
            return []
        start = after - (oldest - 1)
        if start < len(history) and history[start].seq == after + 1:
            return list(islice(history, start, None))  # consecutive ids: no search
        # Ids with gaps (a database sequence skips the ids of rolled-back writes).
        return [event for event in history if event.seq > after]

    def _remove(self, subscription: Subscription) -> None:
        """Forget C{subscription}; idempotent, so it is counted out exactly once."""
        if subscription in self._subscriptions:
            del self._subscriptions[subscription]
            self.metrics.subscriber_removed()


class Subscription(StreamProducer):
    """
    One client's view of the hub: a push producer that writes events as
    they come, or whatever queued up while the client was not reading.

    Made by L{EventHub.subscribe}. While it waits for an event (its chunk
    is a pending Deferred) and the consumer has not paused it, an event is
    written the moment it is published; otherwise it queues, bounded by
    the hub's C{queue_max} and C{queue_max_bytes}, and everything queued is
    written as one chunk at the next chance. A heartbeat is written after
    C{heartbeat} seconds of waiting with nothing to write; its timer runs
    only while waiting (not while paused).

    It never ends on its own: only on L{EventHub.close} (completes), an
    overflow under C{disconnect} (fails with L{QueueOverflow}), or
    C{stopProducing}.

    @ivar fmt: the wire format, one of L{FORMATS}.
    """

    length = None

    def __init__(self, hub: EventHub, fmt: str) -> None:
        super().__init__(streaming=True, clock=hub.clock)
        self.fmt = fmt
        self._hub = hub
        self._framing = _FRAMINGS[fmt]
        self._queue: deque[bytes] = deque()
        self._queued_bytes = 0
        self._dropped = 0  # since the last write
        self._reset: int | None = None  # the last id a pending reset notice names
        self._wait: Deferred[bytes | None] | None = None  # the chunk we owe the producer
        self._beat: IDelayedCall | None = None
        self._closing = False
        self._overflowed: QueueOverflow | None = None  # before it was started
        self._opened = False  # whether anything has been written yet

    @property
    def content_type(self) -> bytes:
        """The C{Content-Type} for this subscription's format."""
        return CONTENT_TYPES[self.fmt]

    @property
    def queued(self) -> int:
        """Events queued now."""
        return len(self._queue)

    @property
    def queued_bytes(self) -> int:
        """Bytes of framed events queued now."""
        return self._queued_bytes

    # -- StreamProducer -----------------------------------------------------

    def _next_chunk(self) -> Chunk:
        if self._overflowed is not None:
            raise self._overflowed
        if self._has_output():
            self._opened = True
            return self._drain()
        if self._closing:
            return None
        if not self._opened:
            # Something at once, so the response's headers go out now and
            # the client knows it is subscribed (an EventSource fires "open").
            self._opened = True
            return self._framing.opening
        self._wait = Deferred()
        self._arm_heartbeat()
        return self._wait

    def _release(self) -> None:
        self._cancel_heartbeat()
        self._wait = None  # cancelled by the producer machinery already
        self._queue.clear()
        self._queued_bytes = 0
        self._hub._remove(self)

    def pauseProducing(self) -> None:
        super().pauseProducing()
        # Nothing may be written while paused, heartbeats included.
        self._cancel_heartbeat()

    def resumeProducing(self) -> None:
        super().resumeProducing()
        # The producer machinery does nothing while a chunk is pending, so
        # what queued while paused is ours to hand over.
        self._flush()
        if self._wait is not None and self._beat is None and not self._paused:
            self._arm_heartbeat()

    # -- fed by the hub -------------------------------------------------------

    def _offer(self, event: _Event) -> None:
        if self._closing or self.finished or self._overflowed is not None:
            return
        framed = event.framed(self.fmt)
        queue = self._queue
        if queue and (
            len(queue) >= self._hub.queue_max
            or self._queued_bytes + len(framed) > self._hub.queue_max_bytes
        ):
            if self._hub.overflow == "disconnect":
                self._overflow(len(framed))
                return
            dropped = 0
            while queue and (
                len(queue) >= self._hub.queue_max
                or self._queued_bytes + len(framed) > self._hub.queue_max_bytes
            ):
                self._queued_bytes -= len(queue.popleft())
                dropped += 1
            self._dropped += dropped
            self._hub.metrics.dropped(dropped)
        queue.append(framed)
        self._queued_bytes += len(framed)
        self._flush()

    def _reset_to(self, last: int) -> None:
        self._reset = last
        self._flush()

    def _close(self) -> None:
        self._closing = True
        self._cancel_heartbeat()
        self._flush()

    # -- the machinery --------------------------------------------------------

    def _has_output(self) -> bool:
        return bool(self._queue) or self._dropped > 0 or self._reset is not None

    def _drain(self) -> bytes:
        """Everything owed to the client, as one chunk: notices first, then events."""
        parts = []
        if self._reset is not None:
            parts.append(self._framing.reset(self._reset))
            self._reset = None
        if self._dropped:
            parts.append(self._framing.dropped(self._dropped))
            self._dropped = 0
        parts.extend(self._queue)
        self._queue.clear()
        self._queued_bytes = 0
        return b"".join(parts)

    def _flush(self) -> None:
        """Answer the pending chunk, if there is something to answer it with and we may write."""
        if self._wait is None or self._paused:
            return
        if self._has_output():
            self._answer(self._drain())
        elif self._closing:
            self._answer(None)

    def _answer(self, chunk: bytes | None) -> None:
        # Cleared first: the callback writes, and may ask for the next chunk
        # (a new wait) before it returns.
        wait, self._wait = self._wait, None
        self._cancel_heartbeat()
        assert wait is not None
        wait.callback(chunk)

    def _overflow(self, size: int) -> None:
        error = QueueOverflow(
            f"subscriber fell behind: {len(self._queue)} events, {self._queued_bytes} bytes"
            f" queued, and {size} more would pass queue_max={self._hub.queue_max}"
            f" or queue_max_bytes={self._hub.queue_max_bytes}"
        )
        self._hub.metrics.overflow_disconnect()
        self._fail(Failure(error))  # ends a running stream at once (and _release runs)
        if not self.finished:
            # Not started yet (a replay overflowed): let go of everything
            # now, and fail on the first step.
            self._overflowed = error
            self._queue.clear()
            self._queued_bytes = 0
            self._dropped = 0
            self._reset = None
            self._hub._remove(self)

    def _arm_heartbeat(self) -> None:
        self._cancel_heartbeat()
        if self._hub.heartbeat > 0 and not self._closing:
            self._beat = self._get_clock().callLater(self._hub.heartbeat, self._heartbeat)

    def _heartbeat(self) -> None:
        self._beat = None
        if self._wait is not None and not self._paused:
            self._answer(self._framing.heartbeat)

    def _cancel_heartbeat(self) -> None:
        beat, self._beat = self._beat, None
        if beat is not None and beat.active():
            beat.cancel()
