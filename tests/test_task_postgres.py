"""
What only the PostgreSQL task store has (L{streamsvc.tasks.postgres}),
against a real, throw-away server (conftest.py): migrations under an
advisory lock, writes that stay safe across hosts, a database that is
down, slow or restarted, and messages that never show a password. The
contract every store obeys is in test_task_store.py.
"""

from __future__ import annotations

import threading
import time

import pytest

psycopg = pytest.importorskip("psycopg")

from twisted.python.failure import Failure  # noqa: E402

from pg_cluster import free_port  # noqa: E402
from streamsvc.tasks import postgres  # noqa: E402
from streamsvc.tasks.model import NewTask, TaskQuery  # noqa: E402
from streamsvc.tasks.postgres import (  # noqa: E402
    SCHEMA_VERSION,
    PostgresTaskStore,
    describe,
    prepare_database,
)
from streamsvc.tasks.store import PreconditionFailed, SchemaTooNew, StoreUnavailable, at_once  # noqa: E402
from test_task_store import failure_of, result_of  # noqa: E402


def store_at(dsn: str, **kw) -> PostgresTaskStore:
    return PostgresTaskStore(dsn, runner=at_once, pool_size=kw.pop("pool_size", 2), **kw)


def test_the_schema_is_made_once_and_its_version_recorded(postgres_dsn):
    assert prepare_database(postgres_dsn) == 0
    assert prepare_database(postgres_dsn) == SCHEMA_VERSION
    with psycopg.connect(postgres_dsn) as c:
        assert c.execute("SELECT version FROM streamsvc_schema").fetchall() == [(SCHEMA_VERSION,)]


def test_hosts_starting_together_on_an_empty_database_all_come_up(postgres_dsn):
    """Eight starts at once: the advisory lock queues them; one creates, the others find it done."""
    results: list = []
    start = threading.Barrier(8)

    def host() -> None:
        start.wait()
        try:
            results.append(prepare_database(postgres_dsn))
        except BaseException as e:  # pragma: no cover - what the test is for
            results.append(e)

    threads = [threading.Thread(target=host) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results) == [0] + [SCHEMA_VERSION] * 7
    with psycopg.connect(postgres_dsn) as c:
        assert c.execute("SELECT count(*) FROM streamsvc_schema").fetchone() == (1,)


def test_a_newer_schema_is_refused(postgres_dsn):
    prepare_database(postgres_dsn)
    with psycopg.connect(postgres_dsn, autocommit=True) as c:
        c.execute("UPDATE streamsvc_schema SET version = %s", (SCHEMA_VERSION + 1,))
    with pytest.raises(SchemaTooNew, match="schema version 2"):
        prepare_database(postgres_dsn)


def test_a_stale_etag_from_another_host_is_refused(postgres_dsn):
    a, b = store_at(postgres_dsn), store_at(postgres_dsn)
    task = result_of(a.create(NewTask("shared")))
    seen_on_b = result_of(b.get(task.id))
    assert seen_on_b == task and seen_on_b.etag == task.etag  # the same ETag on every host
    result_of(a.update(task.id, {"title": "changed on a"}, lambda t: t.etag == task.etag))
    refused = failure_of(b.update(task.id, {"title": "lost?"}, lambda t: t.etag == seen_on_b.etag))
    assert refused.check(PreconditionFailed)
    assert failure_of(b.delete(task.id, lambda t: t.etag == seen_on_b.etag)).check(PreconditionFailed)
    assert result_of(b.get(task.id)).title == "changed on a"


def wait_for_a_lock_wait(dsn: str, timeout: float = 10.0) -> None:
    """Until some session of the database waits for a lock (asked of the server itself)."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as watcher:
        while time.monotonic() < deadline:
            waiting = watcher.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock'"
            ).fetchone()
            if waiting and waiting[0]:
                return
    raise AssertionError("no session came to wait for the row lock")


def test_if_match_is_checked_inside_the_writing_transaction(postgres_dsn):
    """
    Another host changes the row between our read and our write: the
    write waits on the row lock, then sees the new version and refuses.
    """
    store = store_at(postgres_dsn)
    task = result_of(store.create(NewTask("contended")))
    other = psycopg.connect(postgres_dsn)
    other.execute("SELECT 1 FROM tasks WHERE id = %s FOR UPDATE", (task.id,))  # holds the row
    outcome: list = []
    writer = threading.Thread(
        target=lambda: store.update(task.id, {"title": "mine"}, lambda t: t.version == 1).addBoth(outcome.append)
    )
    writer.start()
    wait_for_a_lock_wait(postgres_dsn)
    assert outcome == []
    other.execute("UPDATE tasks SET title = 'theirs', version = 2 WHERE id = %s", (task.id,))
    other.commit()
    writer.join(10)
    other.close()
    assert isinstance(outcome[0], Failure) and outcome[0].check(PreconditionFailed)
    assert result_of(store.get(task.id)).title == "theirs"


def test_an_unreachable_database_is_a_prompt_unavailable_naming_host_and_port():
    dsn = f"postgresql://streamsvc:hunter2-secret@127.0.0.1:{free_port()}/tasks"
    store = store_at(dsn)
    started = time.monotonic()
    failure = failure_of(store.get(1))
    assert time.monotonic() - started < 3
    assert failure.check(StoreUnavailable)
    message = str(failure.value)
    assert "127.0.0.1:" in message and "/tasks" in message and "refused" in message.lower()
    assert "hunter2" not in message and "hunter2" not in repr(store)
    with pytest.raises(StoreUnavailable) as info:
        prepare_database(dsn)
    assert "hunter2" not in str(info.value) and "cannot connect to the task database at 127.0.0.1:" in str(info.value)


def test_describe_names_the_server_never_the_password():
    assert describe("postgresql://u:pw@db.example:6543/tasks") == "db.example:6543/tasks"
    assert describe("host=h1 dbname=d user=u password=pw") == "h1:5432/d"
    with pytest.raises(ValueError, match="not a valid DSN"):
        describe("postgresql://[broken")


def test_a_query_past_statement_timeout_is_unavailable_not_a_hang(postgres_dsn):
    prepare_database(postgres_dsn)
    store = store_at(postgres_dsn, statement_timeout=0.2)
    blocker = psycopg.connect(postgres_dsn)
    blocker.execute("LOCK TABLE tasks IN ACCESS EXCLUSIVE MODE")
    try:
        started = time.monotonic()
        failure = failure_of(store.get(1))
        assert failure.check(StoreUnavailable) and "statement_timeout" in str(failure.value)
        assert time.monotonic() - started < 2
    finally:
        blocker.rollback()
        blocker.close()
    assert result_of(store.get(1)) is None  # the connection served again


def test_the_store_recovers_by_itself_after_a_database_restart(postgres_cluster, postgres_dsn):
    store = store_at(postgres_dsn, pool_size=1)
    task = result_of(store.create(NewTask("survives")))
    assert store.idle_connections == 1
    postgres_cluster.restart()
    # The idle connection died with the server: it is seen to be closed
    # before it is handed out, and a new one serves the query.
    assert result_of(store.get(task.id)) == task
    assert store.idle_connections == 1


def test_a_connection_the_server_ended_while_idle_is_replaced_not_failed(postgres_dsn):
    """An administrator (or idle_session_timeout) ends our idle session: the next batch still works."""
    store = store_at(postgres_dsn, pool_size=1)
    result_of(store.create_many([NewTask(f"t{i}") for i in range(5)]))
    with psycopg.connect(postgres_dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        wait_until_ended(admin)
    cursor = store.cursor(TaskQuery())
    assert [t.title for t in result_of(cursor.fetch(10))] == [f"t{i}" for i in range(5)]
    cursor.close()
    assert store.open_cursors == 0 and store.idle_connections == 1


def wait_until_ended(admin, timeout: float = 10.0) -> None:
    """Until the server has no other session on this database (pg_terminate_backend only signals)."""
    deadline = time.monotonic() + timeout
    while admin.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                        " AND pid <> pg_backend_pid()").fetchone()[0]:
        assert time.monotonic() < deadline, "the session did not end"


def test_without_the_driver_the_message_names_the_extra(monkeypatch):
    monkeypatch.setattr(postgres, "psycopg", None)
    with pytest.raises(postgres.DriverMissing, match=r"pip install 'streamsvc\[postgresql\]'"):
        PostgresTaskStore("postgresql://x@127.0.0.1/tasks")
