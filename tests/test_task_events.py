"""
Tests for L{streamsvc.tasks.events}: the wire framing, bounded queues under
both overflow policies, C{Last-Event-ID} resumption, heartbeats, and every
way a subscription ends (stop, overflow, hub close) letting go of its place
in the hub and of its timers.

Everything runs on a L{Clock} and a L{RecordingConsumer} that the tests pause
and resume by hand: no reactor, no sleeps.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from streamsvc.interfaces import IStreamProducer
from streamsvc.metrics import Metrics
from streamsvc.producers import StreamStopped
from streamsvc.tasks.events import (
    CONTENT_TYPES,
    FORMATS,
    OVERFLOW_POLICIES,
    EventHub,
    HubClosed,
    QueueOverflow,
    Subscription,
)
from streamsvc.testing import RecordingConsumer


def sse(seq: int, kind: str, data: str) -> bytes:
    return f"id: {seq}\nevent: {kind}\ndata: {data}\n\n".encode()


def ndjson(seq: int, kind: str, data: str) -> bytes:
    return f'{{"id":{seq},"event":"{kind}","data":{data}}}\n'.encode()


def sse_ids(raw: bytes) -> list[int]:
    """The ids of the SSE events in C{raw}, in order."""
    return [
        int(line[4:]) for line in raw.split(b"\n") if line.startswith(b"id: ")
    ]


def outcome(d: Deferred[Any]) -> list[Any]:
    """What C{d} fired with so far: [] while pending, else [result or Failure]."""
    seen: list[Any] = []

    def record(result: Any) -> None:
        seen.append(result)

    d.addBoth(record)
    return seen


class Started:
    """A subscription started on a recording consumer, past its first turn."""

    def __init__(self, hub: EventHub, clock: Clock, **subscribe: Any) -> None:
        self.subscription = hub.subscribe(**subscribe)
        self.consumer = RecordingConsumer()
        self.consumer.registerProducer(self.subscription, True)
        self.outcome = outcome(self.subscription.startProducing(self.consumer))
        clock.advance(0)

    @property
    def chunks(self) -> list[bytes]:
        return self.consumer.chunks

    def pause(self) -> None:
        self.subscription.pauseProducing()

    def resume(self) -> None:
        self.subscription.resumeProducing()


class FakeMetrics:
    """Records the hub's metrics calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def subscriber_added(self) -> None:
        self.calls.append(("added", None))

    def subscriber_removed(self) -> None:
        self.calls.append(("removed", None))

    def dropped(self, count: int) -> None:
        self.calls.append(("dropped", count))

    def overflow_disconnect(self) -> None:
        self.calls.append(("disconnect", None))


@pytest.fixture
def clock() -> Clock:
    return Clock()


# -- construction and publishing ------------------------------------------------------------


def test_constants() -> None:
    """The names the resource and the config validate against."""
    assert OVERFLOW_POLICIES == ("drop-oldest", "disconnect")
    assert FORMATS == ("sse", "ndjson")
    assert set(CONTENT_TYPES) == set(FORMATS)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"overflow": "drop-newest"},
        {"history": -1},
        {"queue_max": -1},
        {"queue_max": 0},
        {"queue_max_bytes": -1},
        {"queue_max_bytes": 0},
        {"heartbeat": -1.0},
    ],
)
def test_hub_rejects_bad_arguments(clock: Clock, kwargs: dict[str, Any]) -> None:
    """A bad policy or size is a ValueError at construction, not a surprise later."""
    with pytest.raises(ValueError):
        EventHub(clock, **kwargs)


def test_subscribe_rejects_unknown_format(clock: Clock) -> None:
    hub = EventHub(clock)
    with pytest.raises(ValueError):
        hub.subscribe(fmt="xml")
    assert hub.subscribers == 0


@pytest.mark.parametrize("kind", ["", "a\nb", "a\rb", "dropped", "reset"])
def test_publish_rejects_bad_kinds(clock: Clock, kind: str) -> None:
    """A kind that would break the SSE framing, or pass for a notice, is refused."""
    hub = EventHub(clock)
    with pytest.raises(ValueError):
        hub.publish(kind, {})
    assert hub.last_id == 0


def test_publish_numbers_events_per_hub(clock: Clock) -> None:
    hub, other = EventHub(clock), EventHub(clock)
    assert [hub.publish("created", {"n": n}) for n in range(3)] == [1, 2, 3]
    assert hub.last_id == 3
    assert other.publish("created", {}) == 1


def test_unserialisable_data_uses_no_id(clock: Clock) -> None:
    """Encoding comes before numbering: a failed publish leaves no gap in the ids."""
    hub = EventHub(clock)
    with pytest.raises(TypeError):
        hub.publish("created", {"when": object()})
    assert hub.last_id == 0
    assert hub.publish("created", {}) == 1


def test_subscription_is_a_push_stream_producer(clock: Clock) -> None:
    subscription = EventHub(clock).subscribe()
    assert isinstance(subscription, Subscription)
    assert verifyObject(IStreamProducer, subscription)
    assert verifyObject(IPushProducer, subscription)
    assert subscription.streaming is True
    assert subscription.length is None
    assert subscription.content_type == b"text/event-stream; charset=utf-8"
    subscription.stopProducing()


# -- framing --------------------------------------------------------------------------------


def test_sse_framing(clock: Clock) -> None:
    """Each event is id, event and one data line, written the moment it is published."""
    hub = EventHub(clock)
    s = Started(hub, clock)
    assert s.chunks == []
    hub.publish("created", {"id": 7, "title": "café"})
    assert s.chunks == [
        'id: 1\nevent: created\ndata: {"id":7,"title":"café"}\n\n'.encode("utf-8")
    ]
    hub.publish("deleted", {"id": 7})
    assert s.chunks[1] == sse(2, "deleted", '{"id":7}')


def test_ndjson_framing(clock: Clock) -> None:
    hub = EventHub(clock)
    s = Started(hub, clock, fmt="ndjson")
    assert s.subscription.content_type == b"application/x-ndjson"
    hub.publish("updated", {"id": 3, "done": True})
    hub.publish("imported", {"created": 10, "failed": 0})
    assert s.chunks == [
        b'{"id":1,"event":"updated","data":{"id":3,"done":true}}\n',
        b'{"id":2,"event":"imported","data":{"created":10,"failed":0}}\n',
    ]
    assert [json.loads(line) for line in s.consumer.data.splitlines()][1] == {
        "id": 2,
        "event": "imported",
        "data": {"created": 10, "failed": 0},
    }


def test_payload_stays_on_one_line(clock: Clock) -> None:
    """Line breaks inside the data are escaped, so an SSE data field never ends early."""
    hub = EventHub(clock)
    s = Started(hub, clock)
    hub.publish("created", {"title": "two\nlines\r\u2028\u2029"})
    [chunk] = s.chunks
    lines = chunk.split(b"\n")
    assert lines[:2] == [b"id: 1", b"event: created"]
    assert json.loads(lines[2][len(b"data: ") :]) == {"title": "two\nlines\r\u2028\u2029"}
    assert lines[3:] == [b"", b""]
    assert b"\r" not in chunk


def test_every_subscriber_gets_every_event_in_both_formats(clock: Clock) -> None:
    hub = EventHub(clock)
    a, b = Started(hub, clock), Started(hub, clock, fmt="ndjson")
    hub.publish("created", {"id": 1})
    assert a.chunks == [sse(1, "created", '{"id":1}')]
    assert b.chunks == [ndjson(1, "created", '{"id":1}')]


def test_framing_is_shared_between_subscribers(clock: Clock) -> None:
    """Subscribers of one format hold the very same bytes: an event is framed once per format."""
    hub = EventHub(clock)
    subscribers = [Started(hub, clock) for _ in range(3)]
    for s in subscribers:
        s.pause()
    hub.publish("created", {"id": 1})
    queued = [s.subscription._queue[0] for s in subscribers]
    assert queued[0] == sse(1, "created", '{"id":1}')
    assert all(item is queued[0] for item in queued)


# -- queueing and overflow ------------------------------------------------------------------


def test_events_queued_while_paused_come_out_in_one_chunk(clock: Clock) -> None:
    hub = EventHub(clock)
    s = Started(hub, clock)
    s.pause()
    for n in range(1, 4):
        hub.publish("updated", {"n": n})
    clock.advance(100)
    assert s.chunks == []
    s.resume()
    assert s.chunks == [b"".join(sse(n, "updated", '{"n":%d}' % n) for n in range(1, 4))]
    hub.publish("updated", {"n": 4})
    assert s.chunks[1] == sse(4, "updated", '{"n":4}')


def test_events_written_while_writing_queue_behind(clock: Clock) -> None:
    """A consumer that pauses inside write (a full TCP buffer) gets the rest on resume."""
    hub = EventHub(clock)
    s = Started(hub, clock)
    s.consumer.pause_on_write = True
    hub.publish("a", {})
    hub.publish("b", {})
    hub.publish("c", {})
    assert s.chunks == [sse(1, "a", "{}")]
    s.consumer.pause_on_write = False
    s.resume()
    assert s.chunks[1:] == [sse(2, "b", "{}") + sse(3, "c", "{}")]


def test_events_published_before_start_are_written_on_the_first_turn(clock: Clock) -> None:
    hub = EventHub(clock)
    subscription = hub.subscribe()
    hub.publish("a", {})
    hub.publish("b", {})
    consumer = RecordingConsumer()
    subscription.startProducing(consumer)
    assert consumer.chunks == []
    clock.advance(0)
    assert consumer.chunks == [sse(1, "a", "{}") + sse(2, "b", "{}")]


def test_drop_oldest_keeps_the_newest_and_says_how_many(clock: Clock) -> None:
    metrics = FakeMetrics()
    hub = EventHub(clock, queue_max=3, metrics=metrics)
    s = Started(hub, clock)
    s.pause()
    for n in range(1, 6):
        hub.publish("updated", {"n": n})
    assert s.subscription.queued == 3
    s.resume()
    assert s.chunks == [
        b'event: dropped\ndata: {"count":2}\n\n'
        + b"".join(sse(n, "updated", '{"n":%d}' % n) for n in (3, 4, 5))
    ]
    assert [call for call in metrics.calls if call[0] == "dropped"] == [("dropped", 1)] * 2
    # The count starts again from zero once reported.
    hub.publish("updated", {"n": 6})
    assert s.chunks[1] == sse(6, "updated", '{"n":6}')


def test_dropped_notice_in_ndjson(clock: Clock) -> None:
    hub = EventHub(clock, queue_max=1)
    s = Started(hub, clock, fmt="ndjson")
    s.pause()
    for _ in range(4):
        hub.publish("updated", {})
    s.resume()
    assert s.chunks == [b'{"event":"dropped","count":3}\n' + ndjson(4, "updated", "{}")]


def test_paused_subscriber_memory_is_bounded(clock: Clock) -> None:
    """100k events to a subscriber that never reads: its queue and the history stay within bounds."""
    queue_max, queue_max_bytes = 50, 2000
    hub = EventHub(clock, history=100, queue_max=queue_max, queue_max_bytes=queue_max_bytes)
    s = Started(hub, clock)
    s.pause()
    subscription = s.subscription
    for n in range(100_000):
        hub.publish("updated", {"n": n})
        assert subscription.queued <= queue_max
        assert subscription.queued_bytes <= queue_max_bytes
    assert len(hub._history) == 100
    assert sum(map(len, subscription._queue)) == subscription.queued_bytes
    s.resume()
    [chunk] = s.chunks
    head, _, rest = chunk.partition(b"\n\n")
    kept = sse_ids(rest)
    assert head == b'event: dropped\ndata: {"count":%d}' % (100_000 - len(kept))
    assert kept == list(range(100_001 - len(kept), 100_001))
    assert len(rest) <= queue_max_bytes


def test_byte_bound_drops_before_count_bound(clock: Clock) -> None:
    one = len(sse(1, "updated", '{"n":1}'))
    metrics = Metrics()
    hub = EventHub(clock, queue_max=1000, queue_max_bytes=one * 2 + one // 2, metrics=metrics)
    s = Started(hub, clock)
    s.pause()
    for n in range(1, 10):
        hub.publish("updated", {"n": n})
        assert s.subscription.queued_bytes <= one * 2 + one // 2
    assert s.subscription.queued == 2
    s.resume()
    assert s.chunks == [
        b'event: dropped\ndata: {"count":7}\n\n'
        + sse(8, "updated", '{"n":8}')
        + sse(9, "updated", '{"n":9}')
    ]
    assert metrics.registry.get_sample_value("streamsvc_events_dropped_total") == 7


def test_an_event_bigger_than_the_byte_bound_is_queued_alone(clock: Clock) -> None:
    hub = EventHub(clock, queue_max_bytes=100)
    s = Started(hub, clock)
    s.pause()
    hub.publish("small", {})
    big = {"title": "x" * 500}
    hub.publish("big", big)
    assert s.subscription.queued == 1
    hub.publish("small", {})  # and is dropped as usual when the next one comes
    assert s.subscription.queued == 1
    s.resume()
    assert s.chunks == [b'event: dropped\ndata: {"count":2}\n\n' + sse(3, "small", "{}")]


def test_disconnect_policy_fails_the_stream(clock: Clock) -> None:
    metrics = FakeMetrics()
    hub = EventHub(clock, queue_max=2, overflow="disconnect", metrics=metrics)
    s = Started(hub, clock)
    s.pause()
    hub.publish("a", {})
    hub.publish("b", {})
    assert s.outcome == [] and hub.subscribers == 1
    hub.publish("c", {})
    [failure] = s.outcome
    assert isinstance(failure, Failure) and failure.check(QueueOverflow)
    assert hub.subscribers == 0
    assert metrics.calls == [("added", None), ("disconnect", None), ("removed", None)]
    assert clock.getDelayedCalls() == []
    s.resume()
    hub.publish("d", {})
    assert s.chunks == []


def test_disconnect_policy_honours_the_byte_bound(clock: Clock) -> None:
    metrics = Metrics()
    hub = EventHub(clock, queue_max_bytes=60, overflow="disconnect", metrics=metrics)
    s = Started(hub, clock)
    s.pause()
    hub.publish("a", {"t": "x" * 20})
    assert s.outcome == []
    hub.publish("a", {"t": "x" * 20})
    assert s.outcome[0].check(QueueOverflow)
    sample = metrics.registry.get_sample_value
    assert sample("streamsvc_event_subscribers_disconnected_total") == 1
    assert sample("streamsvc_event_subscribers") == 0


def test_disconnect_policy_queues_one_oversized_event(clock: Clock) -> None:
    """An event bigger than the byte bound on its own is big, not behind: it is queued."""
    metrics = FakeMetrics()
    hub = EventHub(clock, queue_max_bytes=50, overflow="disconnect", metrics=metrics)
    s = Started(hub, clock)
    s.pause()
    hub.publish("big", {"t": "x" * 100})
    assert s.outcome == [] and s.subscription.queued == 1
    assert metrics.calls == [("added", None)]
    s.resume()
    assert sse_ids(s.consumer.data) == [1]


def test_disconnect_policy_does_not_cut_a_reader(clock: Clock) -> None:
    """A subscriber that keeps up never overflows, however many events pass."""
    hub = EventHub(clock, queue_max=1, overflow="disconnect")
    s = Started(hub, clock)
    for _ in range(50):
        hub.publish("a", {})
    assert s.outcome == [] and len(s.chunks) == 50


# -- Last-Event-ID -------------------------------------------------------------------------------


def publish_five(hub: EventHub) -> None:
    for n in range(1, 6):
        hub.publish("updated", {"n": n})


def test_resume_replays_exactly_the_missed_events(clock: Clock) -> None:
    hub = EventHub(clock)
    publish_five(hub)
    s = Started(hub, clock, last_event_id="2")
    assert sse_ids(s.consumer.data) == [3, 4, 5]
    assert b"reset" not in s.consumer.data
    hub.publish("updated", {"n": 6})
    assert sse_ids(s.consumer.data) == [3, 4, 5, 6]


def test_resume_at_the_newest_event_replays_nothing(clock: Clock) -> None:
    hub = EventHub(clock)
    publish_five(hub)
    s = Started(hub, clock, last_event_id="5")
    assert s.chunks == []
    hub.publish("created", {})
    assert s.chunks == [sse(6, "created", "{}")]


def test_resume_at_the_edge_of_the_history(clock: Clock) -> None:
    """With events 3..5 kept, id 2 still resumes (nothing after it is lost)."""
    hub = EventHub(clock, history=3)
    publish_five(hub)
    s = Started(hub, clock, last_event_id="2")
    assert sse_ids(s.consumer.data) == [3, 4, 5]
    assert b"reset" not in s.consumer.data


def test_too_old_id_resets_then_sends_new_events_only(clock: Clock) -> None:
    hub = EventHub(clock, history=3)
    publish_five(hub)
    s = Started(hub, clock, last_event_id="1")
    assert s.chunks == [b'id: 5\nevent: reset\ndata: {"last_event_id":5}\n\n']
    hub.publish("created", {})
    assert s.chunks[1:] == [sse(6, "created", "{}")]


@pytest.mark.parametrize("garbage", ["", "abc", "-1", "+1", "1_0", "1.5", "\u0663", "9" * 30])
def test_unparseable_id_resets(clock: Clock, garbage: str) -> None:
    hub = EventHub(clock)
    publish_five(hub)
    s = Started(hub, clock, last_event_id=garbage)
    assert s.chunks == [b'id: 5\nevent: reset\ndata: {"last_event_id":5}\n\n']


def test_future_id_resets(clock: Clock) -> None:
    hub = EventHub(clock)
    publish_five(hub)
    s = Started(hub, clock, last_event_id="6")
    assert s.chunks == [b'id: 5\nevent: reset\ndata: {"last_event_id":5}\n\n']


def test_reset_before_any_event_names_zero(clock: Clock) -> None:
    hub = EventHub(clock)
    s = Started(hub, clock, last_event_id="3", fmt="ndjson")
    assert s.chunks == [b'{"event":"reset","last_event_id":0}\n']
    fresh = Started(hub, clock, last_event_id="0")
    assert fresh.chunks == []


def test_no_history_resumes_only_from_the_newest(clock: Clock) -> None:
    hub = EventHub(clock, history=0)
    publish_five(hub)
    assert Started(hub, clock, last_event_id="5").chunks == []
    assert Started(hub, clock, last_event_id="4").chunks[0].startswith(b"id: 5\nevent: reset\n")


def test_id_with_surrounding_whitespace_resumes(clock: Clock) -> None:
    hub = EventHub(clock)
    publish_five(hub)
    assert sse_ids(Started(hub, clock, last_event_id=" 4 ").consumer.data) == [5]


def test_replay_counts_against_the_queue(clock: Clock) -> None:
    hub = EventHub(clock, queue_max=2)
    publish_five(hub)
    s = Started(hub, clock, last_event_id="0")
    assert s.chunks == [
        b'event: dropped\ndata: {"count":3}\n\n'
        + sse(4, "updated", '{"n":4}')
        + sse(5, "updated", '{"n":5}')
    ]


def test_replay_overflow_disconnects_before_start(clock: Clock) -> None:
    """A resume too long for the queue is cut off at once and fails when started."""
    metrics = FakeMetrics()
    hub = EventHub(clock, queue_max=2, overflow="disconnect", metrics=metrics)
    publish_five(hub)
    subscription = hub.subscribe(last_event_id="0")
    assert hub.subscribers == 0
    assert metrics.calls == [("added", None), ("disconnect", None), ("removed", None)]
    hub.publish("later", {})
    consumer = RecordingConsumer()
    seen = outcome(subscription.startProducing(consumer))
    clock.advance(0)
    assert seen[0].check(QueueOverflow)
    assert consumer.chunks == []
    # Counted once, out once: failing on start adds nothing.
    assert metrics.calls == [("added", None), ("disconnect", None), ("removed", None)]
    assert clock.getDelayedCalls() == []


# -- heartbeats ------------------------------------------------------------------------------------


def test_heartbeat_after_silence(clock: Clock) -> None:
    hub = EventHub(clock)
    s = Started(hub, clock)
    clock.advance(14.9)
    assert s.chunks == []
    clock.advance(0.1)
    assert s.chunks == [b": heartbeat\n\n"]
    clock.advance(15)
    assert s.chunks == [b": heartbeat\n\n"] * 2


def test_ndjson_heartbeat_is_a_blank_line(clock: Clock) -> None:
    hub = EventHub(clock, heartbeat=5)
    s = Started(hub, clock, fmt="ndjson")
    clock.advance(5)
    assert s.chunks == [b"\n"]


def test_one_timer_while_waiting(clock: Clock) -> None:
    """A waiting subscription schedules exactly its heartbeat: no busy loop of callLater(0)."""
    hub = EventHub(clock)
    Started(hub, clock)
    [call] = clock.getDelayedCalls()
    assert call.getTime() == 15.0
    hub.publish("a", {})
    [call] = clock.getDelayedCalls()
    assert call.getTime() == 15.0


def test_no_heartbeat_while_events_flow(clock: Clock) -> None:
    hub = EventHub(clock)
    s = Started(hub, clock)
    for _ in range(10):
        clock.advance(10)
        hub.publish("a", {})
    assert len(s.chunks) == 10
    assert b"heartbeat" not in s.consumer.data


def test_heartbeat_counts_from_the_last_write(clock: Clock) -> None:
    hub = EventHub(clock)
    s = Started(hub, clock)
    clock.advance(10)
    hub.publish("a", {})
    clock.advance(14)
    assert len(s.chunks) == 1
    clock.advance(1)
    assert s.chunks[1:] == [b": heartbeat\n\n"]


def test_no_heartbeat_while_paused(clock: Clock) -> None:
    """Nothing, heartbeats included, is written to a consumer that paused us."""
    hub = EventHub(clock)
    s = Started(hub, clock)
    s.pause()
    assert clock.getDelayedCalls() == []
    clock.advance(100)
    assert s.chunks == []
    s.resume()
    clock.advance(15)
    assert s.chunks == [b": heartbeat\n\n"]


def test_heartbeat_zero_means_none(clock: Clock) -> None:
    hub = EventHub(clock, heartbeat=0)
    s = Started(hub, clock)
    assert clock.getDelayedCalls() == []
    clock.advance(3600)
    assert s.chunks == []


def test_no_heartbeat_after_the_stream_ended(clock: Clock) -> None:
    hub = EventHub(clock)
    s = Started(hub, clock)
    s.subscription.stopProducing()
    assert clock.getDelayedCalls() == []
    clock.advance(100)
    assert s.chunks == []


# -- endings --------------------------------------------------------------------------------------


def test_stop_producing_leaves_the_hub_at_once(clock: Clock) -> None:
    metrics = Metrics()
    hub = EventHub(clock, metrics=metrics)
    s = Started(hub, clock)
    other = Started(hub, clock)
    gauge = lambda: metrics.registry.get_sample_value("streamsvc_event_subscribers")  # noqa: E731
    assert hub.subscribers == 2 and gauge() == 2
    s.pause()
    hub.publish("a", {})
    s.subscription.stopProducing()
    assert hub.subscribers == 1 and gauge() == 1
    assert s.subscription.queued == 0
    assert s.outcome[0].check(StreamStopped)
    s.subscription.stopProducing()  # idempotent: counted out once
    assert gauge() == 1
    hub.publish("b", {})
    assert s.chunks == []
    assert sse_ids(other.consumer.data) == [1, 2]
    other.subscription.stopProducing()
    assert gauge() == 0
    assert clock.getDelayedCalls() == []


def test_stop_before_start_leaves_the_hub(clock: Clock) -> None:
    metrics = FakeMetrics()
    hub = EventHub(clock, metrics=metrics)
    subscription = hub.subscribe()
    subscription.stopProducing()
    assert hub.subscribers == 0
    assert metrics.calls == [("added", None), ("removed", None)]
    assert clock.getDelayedCalls() == []


def test_a_subscriber_stopping_while_written_to_does_not_starve_the_others(clock: Clock) -> None:
    """One consumer going away inside write (re-entrantly, mid-publish) leaves the rest served."""
    hub = EventHub(clock)
    first = Started(hub, clock)
    second = Started(hub, clock)

    def write_then_go(data: bytes) -> None:
        first.consumer.chunks.append(data)
        first.subscription.stopProducing()

    first.consumer.write = write_then_go  # type: ignore[method-assign]
    hub.publish("a", {})
    assert first.chunks == [sse(1, "a", "{}")]
    assert second.chunks == [sse(1, "a", "{}")]
    assert hub.subscribers == 1
    hub.publish("b", {})
    assert len(first.chunks) == 1 and len(second.chunks) == 2


def test_close_completes_subscriptions(clock: Clock) -> None:
    metrics = FakeMetrics()
    hub = EventHub(clock, metrics=metrics)
    waiting = Started(hub, clock)
    behind = Started(hub, clock)
    behind.pause()
    hub.publish("a", {})
    hub.close()
    assert waiting.outcome == [None]
    assert waiting.chunks == [sse(1, "a", "{}")]
    # The paused one still owes its queue, and ends once it is written.
    assert behind.outcome == [] and hub.subscribers == 1
    hub.publish("after-close", {})
    behind.resume()
    assert behind.chunks == [sse(1, "a", "{}")]
    assert behind.outcome == [None]
    assert hub.subscribers == 0
    assert metrics.calls.count(("removed", None)) == 2
    assert clock.getDelayedCalls() == []


def test_close_completes_a_subscription_not_yet_started(clock: Clock) -> None:
    hub = EventHub(clock)
    hub.publish("a", {})
    subscription = hub.subscribe(last_event_id="0")
    hub.close()
    consumer = RecordingConsumer()
    seen = outcome(subscription.startProducing(consumer))
    clock.advance(0)
    assert consumer.chunks == [sse(1, "a", "{}")]
    assert seen == [None]
    assert clock.getDelayedCalls() == []


def test_close_while_paused_waiting_completes_on_resume(clock: Clock) -> None:
    hub = EventHub(clock)
    s = Started(hub, clock)
    s.pause()
    hub.close()
    assert s.outcome == []
    s.resume()
    assert s.outcome == [None] and s.chunks == []
    assert clock.getDelayedCalls() == []


def test_no_subscriptions_after_close(clock: Clock) -> None:
    hub = EventHub(clock)
    hub.close()
    hub.close()  # idempotent
    with pytest.raises(HubClosed):
        hub.subscribe()
    assert hub.subscribers == 0
    assert hub.publish("a", {}) == 1  # ids keep counting, for whoever resumes after a restart


def test_metrics_may_be_absent(clock: Clock) -> None:
    """Without metrics every path still runs: drop, disconnect, stop."""
    dropping = EventHub(clock, queue_max=1)
    s = Started(dropping, clock)
    s.pause()
    dropping.publish("a", {})
    dropping.publish("b", {})
    s.subscription.stopProducing()
    cutting = EventHub(clock, queue_max=1, overflow="disconnect")
    c = Started(cutting, clock)
    c.pause()
    cutting.publish("a", {})
    cutting.publish("b", {})
    assert c.outcome[0].check(QueueOverflow)
    assert dropping.subscribers == cutting.subscribers == 0


def test_ids_with_gaps_from_a_database_keep_the_history_and_resume_exactly(clock: Clock) -> None:
    """A sequence skips the ids of rolled-back writes: with C{after}, that is no loss."""
    hub = EventHub(clock, history=10)
    before = 0
    for seq in (3, 4, 7, 9):
        hub.deliver(seq, "created", b"{}", after=before)
        before = seq
    assert [e.seq for e in hub._history] == [3, 4, 7, 9]
    assert sse_ids(b"".join(Started(hub, clock, last_event_id="4").chunks)) == [7, 9]
    assert Started(hub, clock, last_event_id="9").chunks == []
    assert sse_ids(b"".join(Started(hub, clock, last_event_id="2").chunks)) == [3, 4, 7, 9]
    # Without `after`, a jump is ids this hub never had: the history restarts.
    hub.deliver(20, "created", b"{}")
    assert [e.seq for e in hub._history] == [20]


def test_lost_events_reset_every_open_stream_then_go_on(clock: Clock) -> None:
    hub = EventHub(clock, history=10)
    hub.deliver(1, "created", b"{}")
    s = Started(hub, clock)
    hub.lost_events(6)
    clock.advance(0)
    hub.deliver(7, "updated", b"{}", after=6)
    clock.advance(0)
    assert s.chunks == [b'id: 6\nevent: reset\ndata: {"last_event_id":6}\n\n', sse(7, "updated", "{}")]
    assert hub.last_id == 7 and [e.seq for e in hub._history] == [7]
