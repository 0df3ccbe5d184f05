"""
Task events: every store feeds its hub the same events for the same
changes (L{ITaskStore.feed}); on PostgreSQL, across hosts, with ids that
mean the same on every host, a host started later resuming a client from
the table, and a listener that reconnects after a drop or a database
restart without losing an event (or, when the table no longer has them,
resetting its streams). Real PostgreSQL (conftest.py), the real reactor:
the feed runs in a thread of its own.
"""

from __future__ import annotations

import json
import time

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from streamsvc.tasks import postgres
from streamsvc.tasks.events import EventHub
from streamsvc.tasks.model import NewTask
from streamsvc.tasks.pgfeed import APPLICATION_NAME, PostgresFeed
from streamsvc.tasks.postgres import PostgresTaskStore, connect
from streamsvc.tasks.sqlite import SQLiteTaskStore
from streamsvc.tasks.store import StoreUnavailable, at_once
from streamsvc.testing import MemoryTaskStore, RecordingConsumer

T0 = 1_764_660_000.0


async def until(condition, timeout: float = 15.0, what: str = "the condition") -> None:
    """Turn the reactor until C{condition()} (the feed's thread delivers through it)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await deferLater(reactor, 0.02, lambda: None)


def hub_events(hub: EventHub) -> list[tuple[int, str, dict]]:
    return [(e.seq, e.kind, json.loads(e.payload)) for e in hub._history]


def make_store(kind: str, tmp_path, request):
    if kind == "sqlite":
        return SQLiteTaskStore(str(tmp_path / "t.db"), writer=at_once, reader=at_once, now=lambda: T0)
    if kind == "postgresql":
        return PostgresTaskStore(request.getfixturevalue("postgres_dsn"), runner=at_once, reactor=reactor,
                                 now=lambda: T0)
    return MemoryTaskStore(now=lambda: T0)


class Stream:
    """A subscription started on a recording consumer."""

    def __init__(self, hub: EventHub, **subscribe) -> None:
        self.subscription = hub.subscribe(**subscribe)
        self.consumer = RecordingConsumer()
        self.consumer.registerProducer(self.subscription, True)
        self.ended = self.subscription.startProducing(self.consumer)
        self.ended.addErrback(lambda failure: None)  # stopped by the test

    @property
    def text(self) -> str:
        return b"".join(self.consumer.chunks).decode()

    def ids(self) -> list[int]:
        return [int(line[4:]) for line in self.text.split("\n") if line.startswith("id: ")]

    def close(self) -> None:
        self.subscription.stopProducing()


@pytest.mark.parametrize("kind", ["sqlite", "postgresql", "memory"])
@pytest_twisted.ensureDeferred
async def test_every_store_feeds_the_same_events_for_the_same_changes(kind, tmp_path, request):
    store = make_store(kind, tmp_path, request)
    hub = EventHub(reactor, heartbeat=0)
    store.feed(hub)
    try:
        if kind == "postgresql":
            await until(lambda: store._feed.connected.is_set(), what="the listener")
        task = await store.create(NewTask("a", 3))
        await store.update(task.id, {"status": "completed"})
        await store.update(task.id, {})  # no change, no event
        await store.delete(task.id)
        await store.create_many([NewTask("b"), NewTask("c")])
        await store.create_many([])  # nothing stored, no event
        await until(lambda: hub.last_id >= 4, what="four events")
        stamp = "2025-12-02T07:20:00.000Z"
        shown = {"id": 1, "title": "a", "priority": 3, "created_at": stamp, "updated_at": stamp}
        assert hub_events(hub) == [
            (1, "created", {**shown, "status": "pending"}),
            (2, "updated", {**shown, "status": "completed"}),
            (3, "deleted", {**shown, "status": "completed"}),
            (4, "imported", {"count": 2, "first_id": 2, "last_id": 3}),
        ]
    finally:
        await store.close()


@pytest_twisted.ensureDeferred
async def test_events_cross_hosts_with_the_same_ids_and_resume_anywhere(postgres_dsn):
    a = PostgresTaskStore(postgres_dsn, runner=at_once, reactor=reactor)
    b = PostgresTaskStore(postgres_dsn, runner=at_once, reactor=reactor)
    hub_a, hub_b = EventHub(reactor, heartbeat=0), EventHub(reactor, heartbeat=0)
    a.feed(hub_a)
    b.feed(hub_b)
    try:
        await until(lambda: a._feed.connected.is_set() and b._feed.connected.is_set(), what="both listeners")
        live_on_b = Stream(hub_b)
        started = time.monotonic()
        for i in range(3):
            await a.create(NewTask(f"from a {i}"))
        await until(lambda: hub_b.last_id == 3, what="a's events on b")
        assert time.monotonic() - started < 5
        assert live_on_b.ids() == [1, 2, 3]
        await b.create(NewTask("from b"))
        await until(lambda: hub_a.last_id == 4 and hub_b.last_id == 4, what="b's event on both")
        assert hub_events(hub_a) == hub_events(hub_b)
        # A client that saw event 2 on host a resumes on host b with exactly 3 and 4.
        resumed = Stream(hub_b, last_event_id="2")
        await until(lambda: len(resumed.ids()) == 2, what="the replay")
        assert resumed.ids() == [3, 4] and "reset" not in resumed.text
        # A host started now loads the newest events from the table: it can resume clients too.
        c = PostgresTaskStore(postgres_dsn, runner=at_once, reactor=reactor)
        hub_c = EventHub(reactor, heartbeat=0)
        c.feed(hub_c)
        await until(lambda: hub_c.last_id == 4, what="the late host's history")
        late = Stream(hub_c, last_event_id="1")
        await until(lambda: len(late.ids()) == 3, what="the late replay")
        assert late.ids() == [2, 3, 4]
        await c.close()
        for s in (live_on_b, resumed, late):
            s.close()
    finally:
        await a.close()
        await b.close()


async def writer_and_listener(dsn: str, first: str):
    """Host a writes, host b listens with a stream open that has had a's first event: (a, b, hub_b, stream)."""
    a = PostgresTaskStore(dsn, runner=at_once, reactor=reactor)
    b = PostgresTaskStore(dsn, runner=at_once, reactor=reactor)
    hub_b = EventHub(reactor, heartbeat=0)
    b.feed(hub_b)
    await until(lambda: b._feed.connected.is_set(), what="the listener")
    stream = Stream(hub_b)
    await a.create(NewTask(first))
    await until(lambda: hub_b.last_id == 1, what="the first event")
    return a, b, hub_b, stream


@pytest_twisted.ensureDeferred
async def test_a_dropped_listener_reconnects_and_loses_nothing(postgres_dsn):
    import psycopg

    a, b, hub_b, stream = await writer_and_listener(postgres_dsn, "before")
    try:
        with psycopg.connect(postgres_dsn, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                          " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                          " AND application_name = %s", (APPLICATION_NAME,))
        for i in range(3):
            await a.create(NewTask(f"while cut off {i}"))
        await until(lambda: b._feed.sessions == 2, what="the listener to reconnect")
        await until(lambda: hub_b.last_id == 4, what="the catch-up")
        assert stream.ids() == [1, 2, 3, 4] and "reset" not in stream.text
        stream.close()
    finally:
        await a.close()
        await b.close()


@pytest_twisted.ensureDeferred
async def test_a_database_restart_mid_stream_is_survived_by_both_sides(postgres_cluster, postgres_dsn):
    a, b, hub_b, stream = await writer_and_listener(postgres_dsn, "before the restart")
    try:
        postgres_cluster.restart()
        # The writer's idle connection died with the server: it is replaced
        # before use; should the server's close not have reached us yet, that
        # one write is a 503 (nothing written) and the next works.
        try:
            await a.create(NewTask("after the restart"))
        except StoreUnavailable:
            await a.create(NewTask("after the restart"))
        await until(lambda: hub_b.last_id == 2, what="the event after the restart")
        assert stream.ids() == [1, 2] and "reset" not in stream.text
        stream.close()
    finally:
        await a.close()
        await b.close()


@pytest_twisted.ensureDeferred
async def test_events_pruned_while_cut_off_reset_the_open_streams(postgres_dsn, monkeypatch):
    monkeypatch.setattr(postgres, "EVENTS_KEPT_MIN", 1)
    monkeypatch.setattr(postgres, "PRUNE_EVERY", 1)
    a = PostgresTaskStore(postgres_dsn, runner=at_once, reactor=reactor, events_kept=1)
    try:
        first = await a.create(NewTask("seen"))
        hub = EventHub(reactor, heartbeat=0)
        hub.deliver(1, "created", json.dumps(first.as_json()).encode())
        stream = Stream(hub)
        for i in range(4):
            await a.create(NewTask(f"pruned {i}"))  # the table now keeps event 5 only
        feed = PostgresFeed(lambda: connect(postgres_dsn, 30), hub, reactor, where="test", history=10)
        feed._last = 1  # it had handed event 1 when it was cut off
        connection = connect(postgres_dsn, 30)
        try:
            feed._catch_up(connection)
        finally:
            connection.close()
        await until(lambda: hub.last_id == 5, what="the catch-up")
        await deferLater(reactor, 0, lambda: None)
        assert "event: reset" in stream.text and stream.ids() == [4, 5]  # reset names 4, then event 5
        assert stream.text.index("event: reset") < stream.text.index("id: 5")
        stream.close()
    finally:
        await a.close()
