"""
The task stores: the SQLite one, the PostgreSQL one (against a real,
throw-away server: see conftest.py) and the in-memory one from
L{streamsvc.testing} obey the same contract (L{ITaskStore}), checked by the
same tests against all three; then what only SQLite has (schema,
migrations, connection pool, threads). What only PostgreSQL has is in
test_task_postgres.py.
"""

from __future__ import annotations

import sqlite3
from collections import deque

import pytest
import pytest_twisted
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from streamsvc.interfaces import ITaskCursor, ITaskStore
from streamsvc.tasks.model import NewTask, Task, TaskQuery
from streamsvc.tasks.postgres import PostgresTaskStore
from streamsvc.tasks.sqlite import SCHEMA_VERSION, SQLiteTaskStore, prepare_database, select_for
from streamsvc.tasks.store import PreconditionFailed, SchemaTooNew, StoreBusy, TaskNotFound, _at_once
from streamsvc.testing import MemoryTaskStore

T0 = 1_764_660_000.0  # 2025-12-02T07:20:00Z


def queued_runner(jobs: list):
    """A reader runner whose jobs wait in C{jobs} until the test runs them: a thread still busy."""

    def later(function, *args):
        d = Deferred()
        jobs.append((d, function, args))
        return d

    return later


def result_of(d: Deferred):
    """The result of a Deferred that has already fired (the stores under test answer at once)."""
    box: list = []
    d.addBoth(box.append)
    assert box, "the Deferred has not fired"
    if isinstance(box[0], Failure):
        box[0].raiseException()
    return box[0]


def failure_of(d: Deferred) -> Failure:
    box: list = []
    d.addBoth(box.append)
    assert box and isinstance(box[0], Failure), box
    return box[0]


@pytest.fixture(params=["sqlite", "postgresql", "memory"])
def store(request, tmp_path):
    clock = [T0]
    if request.param == "sqlite":
        s = SQLiteTaskStore(
            str(tmp_path / "tasks.sqlite3"), writer=_at_once, reader=_at_once, readers=2,
            now=lambda: clock[0],
        )
    elif request.param == "postgresql":
        s = PostgresTaskStore(
            request.getfixturevalue("postgres_dsn"), runner=_at_once, pool_size=2, now=lambda: clock[0]
        )
    else:
        s = MemoryTaskStore(now=lambda: clock[0])
    s.clock = clock
    yield s
    result_of(s.close())


def all_tasks(store, query=TaskQuery(), batch=3) -> list[Task]:
    cursor = store.cursor(query)
    out = []
    while True:
        rows = result_of(cursor.fetch(batch))
        if not rows:
            break
        out.extend(rows)
    cursor.close()
    return out


def test_provides_the_interfaces(store):
    assert verifyObject(ITaskStore, store)
    cursor = store.cursor(TaskQuery())
    assert verifyObject(ITaskCursor, cursor)
    cursor.close()


def test_create_assigns_ids_timestamps_and_version(store):
    a = result_of(store.create(NewTask("first")))
    store.clock[0] += 1.5
    b = result_of(store.create(NewTask("second", 5, "completed")))
    assert (a.id, a.title, a.priority, a.status, a.version) == (1, "first", 0, "pending", 1)
    assert a.created_at == a.updated_at == "2025-12-02T07:20:00.000Z"
    assert b.id == 2 and b.created_at == "2025-12-02T07:20:01.500Z"
    assert result_of(store.get(2)) == b
    assert result_of(store.get(3)) is None


def test_create_many_in_order(store):
    made = result_of(store.create_many([NewTask(f"t{i}") for i in range(5)]))
    assert [t.id for t in made] == [1, 2, 3, 4, 5]
    assert all_tasks(store) == made


def test_update_bumps_version_and_time(store):
    task = result_of(store.create(NewTask("x")))
    store.clock[0] += 2
    updated = result_of(store.update(task.id, {"status": "in-progress", "priority": 7}))
    assert (updated.status, updated.priority, updated.title) == ("in-progress", 7, "x")
    assert updated.version == 2 and updated.etag != task.etag
    assert updated.updated_at == "2025-12-02T07:20:02.000Z" and updated.created_at == task.created_at
    assert result_of(store.get(task.id)) == updated


def test_update_with_no_changes_leaves_the_task(store):
    task = result_of(store.create(NewTask("x")))
    assert result_of(store.update(task.id, {})) == task


def test_update_and_delete_missing(store):
    assert failure_of(store.update(9, {"title": "y"})).check(TaskNotFound)
    assert failure_of(store.delete(9)).check(TaskNotFound)


def test_precondition_refuses_and_changes_nothing(store):
    task = result_of(store.create(NewTask("x")))
    assert failure_of(store.update(task.id, {"title": "y"}, lambda t: t.version == 7)).check(
        PreconditionFailed
    )
    assert failure_of(store.delete(task.id, lambda t: False)).check(PreconditionFailed)
    assert result_of(store.get(task.id)) == task
    assert result_of(store.update(task.id, {"title": "y"}, lambda t: t.version == 1)).title == "y"


def test_delete_returns_the_task_and_ids_are_never_reused(store):
    result_of(store.create_many([NewTask("a"), NewTask("b")]))
    gone = result_of(store.delete(2))
    assert gone.title == "b"
    assert result_of(store.get(2)) is None
    assert result_of(store.create(NewTask("c"))).id == 3


def test_filters(store):
    result_of(
        store.create_many(
            [
                NewTask("Buy milk", 1, "pending"),
                NewTask("buy BREAD", 5, "completed"),
                NewTask("100% done_", 9, "pending"),
                NewTask("Ünïcode MILK", 3, "in-progress"),
            ]
        )
    )

    def ids(**kw):
        return [t.id for t in all_tasks(store, TaskQuery(**kw))]

    assert ids() == [1, 2, 3, 4]
    assert ids(status="pending") == [1, 3]
    assert ids(min_priority=3) == [2, 3, 4]
    assert ids(q="MILK") == [1, 4]  # ASCII case folded
    assert ids(q="bUy") == [1, 2]
    assert ids(q="%") == [3] and ids(q="_") == [3]  # LIKE's wildcards are literal
    assert ids(q="ünï") == []  # non-ASCII is not folded (SQLite's LIKE, mirrored)
    assert ids(q="Ünï") == [4]
    assert ids(after_id=2) == [3, 4]
    assert ids(limit=2) == [1, 2]
    assert ids(status="pending", min_priority=2, q="done") == [3]
    assert ids(after_id=1, limit=1) == [2]
    # No title holds a NUL: a q with one matches nothing (SQLite's LIKE stopped at it: #28 item 5).
    assert ids(q="\x00zzz") == [] and ids(q="milk\x00") == []


def test_cursor_batches_and_closing(store):
    result_of(store.create_many([NewTask(f"t{i}") for i in range(7)]))
    cursor = store.cursor(TaskQuery())
    assert store.open_cursors == 1
    assert [t.id for t in result_of(cursor.fetch(3))] == [1, 2, 3]
    assert [t.id for t in result_of(cursor.fetch(3))] == [4, 5, 6]
    cursor.close()
    assert store.open_cursors == 0
    assert result_of(cursor.fetch(3)) == []
    cursor.close()  # idempotent
    assert store.open_cursors == 0


def test_cursor_runs_out_and_counts_itself_closed(store):
    result_of(store.create(NewTask("a")))
    cursor = store.cursor(TaskQuery())
    assert len(result_of(cursor.fetch(10))) == 1
    assert result_of(cursor.fetch(10)) == []
    assert store.open_cursors == 0
    cursor.close()
    assert store.open_cursors == 0


# --- SQLite only ----------------------------------------------------------------


def sqlite_store(path, **kw):
    return SQLiteTaskStore(str(path), writer=_at_once, reader=_at_once, **kw)


def test_schema_created_in_wal_mode_with_a_version(tmp_path):
    path = tmp_path / "tasks.sqlite3"
    assert prepare_database(str(path)) == 0
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    db.close()
    assert prepare_database(str(path)) == SCHEMA_VERSION  # nothing to migrate the second time


def test_a_migration_another_process_did_meanwhile_is_not_run_twice(tmp_path):
    """Two servers starting on one data dir: the second reads version 0, then finds it done."""
    from streamsvc.tasks.sqlite import connect, migrate

    path = tmp_path / "tasks.sqlite3"
    prepare_database(str(path))  # the other process, between our read and our lock

    class StaleFirstRead:
        def __init__(self, connection):
            self.connection, self.reads = connection, 0

        def execute(self, sql, *args):
            if sql == "PRAGMA user_version":
                self.reads += 1
                if self.reads == 1:
                    return self.connection.execute("SELECT 0")
            return self.connection.execute(sql, *args)

    connection = connect(str(path))
    try:
        assert migrate(StaleFirstRead(connection)) == 0  # no "table tasks already exists"
        assert connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        connection.close()


def test_a_newer_schema_is_refused(tmp_path):
    path = tmp_path / "tasks.sqlite3"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(SchemaTooNew, match="schema version"):
        prepare_database(str(path))
    s = sqlite_store(path)
    assert failure_of(s.get(1)).check(SchemaTooNew)  # used without preparing: refused too
    result_of(s.close())


def test_tasks_survive_a_restart(tmp_path):
    path = tmp_path / "tasks.sqlite3"
    s = sqlite_store(path)
    made = result_of(s.create(NewTask("keep me", 2)))
    result_of(s.close())
    s = sqlite_store(path)
    assert result_of(s.get(made.id)) == made
    result_of(s.close())


def test_failed_batch_writes_nothing(tmp_path):
    s = sqlite_store(tmp_path / "t.db")
    bad = NewTask("ok")._replace(title=None)  # NOT NULL: the second insert fails
    assert failure_of(s.create_many([NewTask("first"), bad])).check(sqlite3.IntegrityError)
    assert all_tasks(s) == []
    result_of(s.close())


def test_a_cursor_holds_no_connection_between_fetches(tmp_path):
    s = sqlite_store(tmp_path / "t.db", readers=1)
    result_of(s.create_many([NewTask(f"t{i}") for i in range(10)]))
    cursor = s.cursor(TaskQuery())
    result_of(cursor.fetch(2))
    assert s.idle_connections == 1 and s.open_cursors == 1  # open, but holding nothing
    other = s.cursor(TaskQuery())  # so a second cursor on a pool of one goes at once
    assert [t.id for t in result_of(other.fetch(3))] == [1, 2, 3]
    assert [t.id for t in result_of(cursor.fetch(2))] == [3, 4]
    cursor.close()
    other.close()
    assert s.idle_connections == 1 and s.open_cursors == 0
    result_of(s.close())


def test_keyset_batches_honour_the_limit_and_the_filters(tmp_path):
    s = sqlite_store(tmp_path / "t.db", readers=1)
    result_of(s.create_many([NewTask(f"t{i}", i % 3) for i in range(30)]))
    cursor = s.cursor(TaskQuery(min_priority=2, limit=7, after_id=3))
    got = []
    while rows := result_of(cursor.fetch(3)):
        got.extend(t.id for t in rows)
    assert got == [6, 9, 12, 15, 18, 21, 24]
    assert s.open_cursors == 0
    result_of(s.close())


def test_fetches_past_the_pool_wait_for_a_connection(tmp_path):
    jobs: list = []
    s = SQLiteTaskStore(str(tmp_path / "t.db"), writer=_at_once, reader=queued_runner(jobs), readers=1, clock=Clock())
    result_of(s.create_many([NewTask(f"t{i}") for i in range(4)]))
    first = s.cursor(TaskQuery()).fetch(1)
    second = s.cursor(TaskQuery()).fetch(2)
    d, function, args = jobs.pop()  # the connection, opened in its thread
    d.callback(function(*args))
    d, function, args = jobs.pop()  # the first query runs; the second waits
    assert not second.called and jobs == []
    d.callback(function(*args))
    assert [t.id for t in result_of(first)] == [1]
    d, function, args = jobs.pop()  # the connection handed on: the second query
    d.callback(function(*args))
    assert [t.id for t in result_of(second)] == [1, 2]
    result_of(s.close())


def test_a_wait_past_reader_wait_is_store_busy(tmp_path):
    jobs: list = []
    clock = Clock()
    s = SQLiteTaskStore(
        str(tmp_path / "t.db"), writer=_at_once, reader=queued_runner(jobs), readers=1, clock=clock, reader_wait=3
    )
    held = s.cursor(TaskQuery())
    held.fetch(1)
    waiting = s.cursor(TaskQuery())
    pending = waiting.fetch(1)
    clock.advance(2.9)
    assert not pending.called
    clock.advance(0.2)
    assert failure_of(pending).check(StoreBusy)
    assert s.open_cursors == 1 and s._waiting == deque()
    held.close()
    d, function, args = jobs.pop()
    d.callback(function(*args))
    assert s.idle_connections == 1 and jobs == [] and clock.getDelayedCalls() == []
    result_of(s.close())


def test_cursor_closed_while_waiting_takes_no_connection(tmp_path):
    jobs: list = []
    clock = Clock()
    s = SQLiteTaskStore(str(tmp_path / "t.db"), writer=_at_once, reader=queued_runner(jobs), readers=1, clock=clock)
    result_of(s.create(NewTask("a")))
    first = s.cursor(TaskQuery())
    first_fetch = first.fetch(1)
    second = s.cursor(TaskQuery())
    waiting = second.fetch(1)
    second.close()
    assert result_of(waiting) == [] and clock.getDelayedCalls() == []  # its wait withdrawn
    assert s.open_cursors == 1
    d, function, args = jobs.pop()
    d.callback(function(*args))
    d, function, args = jobs.pop()
    d.callback(function(*args))
    assert len(result_of(first_fetch)) == 1
    first.close()
    assert s.open_cursors == 0 and s.idle_connections == 1 and jobs == []
    result_of(s.close())


def test_cursor_closed_during_a_fetch_releases_after_it(tmp_path):
    """The fetch runs in a thread: close() while it runs returns the connection when it ends."""
    jobs: list = []
    later = queued_runner(jobs)

    s = SQLiteTaskStore(str(tmp_path / "t.db"), writer=_at_once, reader=later, readers=1)
    result_of(s.create_many([NewTask(f"t{i}") for i in range(4)]))
    cursor = s.cursor(TaskQuery())
    pending = cursor.fetch(2)
    d, function, args = jobs.pop()  # the reader's connection is opened in its thread
    d.callback(function(*args))
    [(d, function, args)] = jobs  # then the fetch runs there
    cursor.close()
    assert s.idle_connections == 0  # still in use by the running fetch
    d.callback(function(*args))
    assert result_of(pending) == []  # dropped: the cursor was closed
    assert s.idle_connections == 1 and s.open_cursors == 0
    result_of(s.close())


def test_writes_during_an_export_and_what_it_sees(tmp_path):
    """
    Keyset batches: writes never wait for a reader; each row is seen at most
    once, in id order; a row created meanwhile shows up at the end, one
    deleted before its batch does not.
    """
    s = sqlite_store(tmp_path / "t.db")
    result_of(s.create_many([NewTask(f"t{i}") for i in range(300)]))
    cursor = s.cursor(TaskQuery())
    seen = [t.id for t in result_of(cursor.fetch(1))]
    result_of(s.create(NewTask("late")))
    result_of(s.delete(300))
    while rows := result_of(cursor.fetch(100)):
        seen.extend(t.id for t in rows)
    assert seen == [*range(1, 300), 301]
    result_of(s.close())


def test_select_for_escapes_and_binds():
    sql, params = select_for(TaskQuery(status="pending", min_priority=2, q="a%b_c\\", limit=5, after_id=7))
    assert "LIKE ? ESCAPE" in sql and sql.endswith("ORDER BY id LIMIT ?")
    assert params == [7, "pending", 2, "%a\\%b\\_c\\\\%", 5]


@pytest_twisted.ensureDeferred
async def test_real_threads(tmp_path):
    """With its own thread pools, on the real reactor: the results come back, the threads stop."""
    from twisted.internet import reactor

    s = SQLiteTaskStore(str(tmp_path / "t.db"), reactor=reactor, readers=2)
    try:
        made = await s.create_many([NewTask(f"t{i}") for i in range(1000)])
        assert len(made) == 1000
        cursor = s.cursor(TaskQuery(min_priority=0))
        total = 0
        while rows := await cursor.fetch(256):
            total += len(rows)
        assert total == 1000 and s.open_cursors == 0
        got = await s.get(500)
        assert got.title == "t499"
    finally:
        await s.close()
    assert s._pools and all(pool.joined for pool in s._pools)


def test_cancelling_a_fetch_mid_job_releases_only_after_the_job(tmp_path):
    """
    A producer stopped mid-fetch cancels the fetch's Deferred; the statement
    must not be closed (nor the connection handed on) while the reader thread
    is still inside fetchmany — that was a segfault in CI.
    """
    jobs: list = []
    later = queued_runner(jobs)

    s = SQLiteTaskStore(str(tmp_path / "t.db"), writer=_at_once, reader=later, readers=1)
    result_of(s.create_many([NewTask(f"t{i}") for i in range(10)]))
    cursor = s.cursor(TaskQuery())
    first = cursor.fetch(2)
    d, function, args = jobs.pop()  # the connection, opened in its thread
    d.callback(function(*args))
    d, function, args = jobs.pop()  # the first fetch
    d.callback(function(*args))
    assert len(result_of(first)) == 2
    second = cursor.fetch(2)
    [(d, function, args)] = jobs  # "running in the thread"
    second.cancel()
    assert failure_of(second).check(CancelledError)
    assert s.open_cursors == 0 and s.idle_connections == 0  # closed, but the connection is still the thread's
    d.callback(function(*args))  # the job ends
    assert s.open_cursors == 0 and s.idle_connections == 1
    result_of(s.close())


def test_closing_while_the_connection_is_being_opened(tmp_path):
    jobs: list = []
    later = queued_runner(jobs)

    s = SQLiteTaskStore(str(tmp_path / "t.db"), writer=_at_once, reader=later, readers=1)
    cursor = s.cursor(TaskQuery())
    pending = cursor.fetch(2)
    cursor.close()
    d, function, args = jobs.pop()
    d.callback(function(*args))  # the connection arrives after the close: back to the pool
    assert result_of(pending) == []
    assert s.open_cursors == 0 and s.idle_connections == 1 and jobs == []
    result_of(s.close())


# --- the shared pool (streamsvc.tasks.store.Connections) -------------------------


class FakeConnection:
    def __init__(self, n: int) -> None:
        self.n = n
        self.closed = False
        self.broken = False

    def close(self) -> None:
        self.closed = True


def test_a_connection_not_usable_is_closed_and_the_next_waiter_gets_a_new_one():
    from streamsvc.tasks.store import Connections

    jobs: list = []
    made: list = []

    def open_connection():
        made.append(FakeConnection(len(made)))
        return made[-1]

    clock = Clock()
    pool = Connections(open_connection, queued_runner(jobs), 1, clock=clock, wait=5,
                       usable=lambda c: not c.broken)
    first = pool.checkout()
    d, function, args = jobs.pop()
    d.callback(function(*args))
    conn = result_of(first)
    waiting = pool.checkout()
    assert not waiting.called
    conn.broken = True
    pool.checkin(conn)
    assert conn.closed and not waiting.called  # a new one is being opened for it
    d, function, args = jobs.pop()
    d.callback(function(*args))
    assert result_of(waiting) is made[1] and not made[1].closed
    assert clock.getDelayedCalls() == []


def test_a_failed_open_fails_its_query_and_the_waiter_behind_it_tries_again():
    from streamsvc.tasks.store import Connections

    jobs: list = []
    clock = Clock()
    pool = Connections(lambda: FakeConnection(0), queued_runner(jobs), 1, clock=clock, wait=5)
    first = pool.checkout()
    second = pool.checkout()
    d, function, args = jobs.pop()
    d.errback(Failure(RuntimeError("database down")))
    assert failure_of(first).check(RuntimeError)
    assert not second.called and len(jobs) == 1  # its own attempt, not a 10 s wait for nothing
    d, function, args = jobs.pop()
    d.callback(function(*args))
    assert isinstance(result_of(second), FakeConnection)


def test_a_waiter_that_gave_up_while_its_connection_opened_leaves_it_in_the_pool():
    from streamsvc.tasks.store import Connections

    jobs: list = []
    clock = Clock()
    pool = Connections(lambda: FakeConnection(0), queued_runner(jobs), 1, clock=clock, wait=5)
    first = pool.checkout()
    second = pool.checkout()
    d1, f1, a1 = jobs.pop()
    d1.errback(Failure(RuntimeError("database down")))
    failure_of(first)
    clock.advance(6)  # the second waiter's deadline passes while its open runs
    assert failure_of(second).check(StoreBusy)
    d2, f2, a2 = jobs.pop()
    d2.callback(f2(*a2))
    assert pool.idle == 1  # not lost: the next query gets it
