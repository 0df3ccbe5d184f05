# -*- test-case-name: tests.test_task_store -*-
"""
L{ITaskStore} on SQLite (stdlib C{sqlite3}), off the reactor.

Threads, and why two kinds:

  - one writer: SQLite takes one writer at a time anyway, so every write
    (and every single-task read, which must see the writes before it) runs
    on one connection in a thread of its own, one job after another;
  - readers for cursors: a listing or export reads in keyset batches
    (C{id > last id read ... LIMIT n}), each one short query on a
    connection taken from a pool of their own (C{readers} connections) for
    that query only, in a reader thread, so they cannot hold up the writes.
    Between batches a cursor holds nothing: a client that stops reading
    pins no connection (four stalled exports used to hold every reader
    until the send timeout, and each listing behind them hung after its
    C{[}). More queries than connections wait their turn, at most
    L{READER_WAIT} seconds (then L{StoreBusy}: a 503 before the first byte).

The database is in WAL mode, so a batch sees a consistent snapshot while
writes go on, and since no statement stays open across batches a slow
client never stops the WAL being checkpointed. An export is consistent per
batch, not as a whole: each row appears at most once, in id order, as it
was when its batch was read; rows created meanwhile appear at its end.
C{synchronous = FULL}: a task answered 201 survives a power cut.

Schema versions: C{PRAGMA user_version} says which migrations have run;
L{MIGRATIONS} is the list, each a script run in a transaction.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from streamsvc._threads import PoolRunner
from streamsvc.interfaces import ITaskCursor, ITaskStore
from streamsvc.tasks.model import NewTask, Task, TaskQuery, now_iso
from streamsvc.tasks.store import (
    READER_WAIT,
    Connections,
    KeysetCursor,
    LocalFeed,
    Runner,
    SchemaTooNew,
    changed,
    listing_sql,
    writable,
)

MIGRATIONS = (
    """
    CREATE TABLE tasks (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        title TEXT NOT NULL,
        priority INTEGER NOT NULL DEFAULT 0,
        status TEXT NOT NULL DEFAULT 'pending',
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        version INTEGER NOT NULL DEFAULT 1
    );
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)

_COLUMNS = "id, title, priority, status, created_at, updated_at, version"


def connect(path: str) -> sqlite3.Connection:
    """
    A connection as every thread of the store uses it: autocommit (each
    method opens its own transaction), WAL, full fsync, a busy wait
    rather than an immediate 'database is locked'.
    """
    connection = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("PRAGMA synchronous = FULL")
    connection.execute("PRAGMA busy_timeout = 5000")
    return connection


def prepare_database(path: str) -> int:
    """
    Create or migrate the database at C{path} and close it again (at
    start-up, so a database that cannot be used stops the start with one
    line); the schema version it was at.
    """
    connection = connect(path)
    try:
        return migrate(connection)
    finally:
        connection.close()


def migrate(connection: sqlite3.Connection) -> int:
    """Bring the schema to L{SCHEMA_VERSION}; the version it was at."""
    (version,) = connection.execute("PRAGMA user_version").fetchone()
    if version > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"the tasks database is at schema version {version}; "
            f"this streamsvc knows up to {SCHEMA_VERSION}"
        )
    for number in range(version, SCHEMA_VERSION):
        connection.execute("BEGIN IMMEDIATE")
        try:
            # Read again under the write lock: another process starting on
            # the same data dir may have migrated since the read above.
            (current,) = connection.execute("PRAGMA user_version").fetchone()
            if current > number:
                connection.execute("COMMIT")
                continue
            for statement in MIGRATIONS[number].split(";"):
                if statement.strip():
                    connection.execute(statement)
            connection.execute(f"PRAGMA user_version = {number + 1}")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")
    return int(version)


def select_for(query: TaskQuery) -> tuple[str, list[Any]]:
    """The SQL (and its parameters) of a listing batch: SQLite's LIKE folds ASCII case only, as the rule says."""
    return listing_sql(
        query, columns=_COLUMNS, mark="?", title_like="title LIKE ? ESCAPE '\\'", fold=lambda q: q, nothing="0"
    )


class _Transaction:
    """C{with _Transaction(connection):} — BEGIN IMMEDIATE … COMMIT, or ROLLBACK on any error."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    def __enter__(self) -> sqlite3.Connection:
        self._connection.execute("BEGIN IMMEDIATE")
        return self._connection

    def __exit__(self, kind: object, error: object, trace: object) -> None:
        self._connection.execute("COMMIT" if kind is None else "ROLLBACK")


@implementer(ITaskStore)
class SQLiteTaskStore(LocalFeed):
    """
    Tasks in one SQLite file, created or migrated when first used (and,
    under twistd, by L{prepare_database} at start-up, before anything
    listens).

    @param reactor: the reactor the thread pools report to; with
        C{writer}/C{reader} runners given (tests), not needed.
    @param clock: times a query's wait for a reader connection (by default
        C{reactor}, or the global reactor); C{reader_wait} is that limit.
    """

    def __init__(
        self,
        path: str,
        *,
        reactor: Any = None,
        readers: int = 4,
        writer: Runner | None = None,
        reader: Runner | None = None,
        now: Callable[[], float] = time.time,
        clock: Any = None,
        reader_wait: float = READER_WAIT,
    ) -> None:
        if readers < 1:
            raise ValueError("readers must be at least 1")
        self.path = path
        self._now = now
        self._pools: list[PoolRunner] = []
        if writer is None:
            writer = self._pool(reactor, 1, "streamsvc-tasks-writer")
        if reader is None:
            reader = self._pool(reactor, readers, "streamsvc-tasks-reader")
        self._run_writer = writer
        # Connections are made where they are used, in their threads, on
        # first use: not at construction, which twistd does before it forks
        # (SQLite connections must not cross a fork).
        self._writer_connection: sqlite3.Connection | None = None
        self._readers: Connections[sqlite3.Connection] = Connections(
            lambda: connect(path), reader, readers,
            clock=clock if clock is not None else reactor, wait=reader_wait,
        )
        self.open_cursors = 0
        self._closed = False

    @property
    def _writer(self) -> sqlite3.Connection:
        """The writer's connection (only ever used in the writer's thread), made and migrated when first needed."""
        if self._writer_connection is None:
            connection = connect(self.path)
            try:
                migrate(connection)
            except BaseException:
                connection.close()
                raise
            self._writer_connection = connection
        return self._writer_connection

    def _pool(self, reactor: Any, threads: int, name: str) -> Runner:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        pool = PoolRunner(reactor, threads, name)
        self._pools.append(pool)
        return pool

    # -- single tasks (the writer) -------------------------------------------

    def create(self, task: NewTask) -> Deferred[Task]:
        stamp = now_iso(self._now())
        made = self._run_writer(self._insert, [task], stamp).addCallback(lambda tasks: tasks[0])
        return made.addCallback(self._announce, "created")

    def create_many(self, tasks: Sequence[NewTask]) -> Deferred[list[Task]]:
        stamp = now_iso(self._now())
        return self._run_writer(self._insert, list(tasks), stamp).addCallback(self._announce, "imported")

    def _insert(self, tasks: list[NewTask], stamp: str) -> list[Task]:
        with _Transaction(self._writer) as db:
            made = []
            for task in tasks:
                cursor = db.execute(
                    "INSERT INTO tasks (title, priority, status, created_at, updated_at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (task.title, task.priority, task.status, stamp, stamp),
                )
                made.append(
                    Task(int(cursor.lastrowid or 0), task.title, task.priority, task.status, stamp, stamp, 1)
                )
            return made

    def get(self, task_id: int) -> Deferred[Task | None]:
        return self._run_writer(self._get, task_id)

    def _get(self, task_id: int) -> Task | None:
        row = self._writer.execute(f"SELECT {_COLUMNS} FROM tasks WHERE id = ?", (task_id,)).fetchone()
        return None if row is None else Task._make(row)

    def update(
        self,
        task_id: int,
        changes: dict[str, Any],
        precondition: Callable[[Task], bool] | None = None,
    ) -> Deferred[Task]:
        stamp = now_iso(self._now())
        done = self._run_writer(self._update, task_id, dict(changes), precondition, stamp)
        return done.addCallback(self._announce, "updated") if changes else done

    def _update(
        self, task_id: int, changes: dict[str, Any], precondition: Callable[[Task], bool] | None, stamp: str
    ) -> Task:
        with _Transaction(self._writer) as db:
            task = writable(self._get(task_id), task_id, precondition)
            if not changes:
                return task
            updated = changed(task, changes, stamp)
            db.execute(
                "UPDATE tasks SET title = ?, priority = ?, status = ?, updated_at = ?, version = ?"
                " WHERE id = ?",
                (updated.title, updated.priority, updated.status, stamp, updated.version, task_id),
            )
            return updated

    def delete(self, task_id: int, precondition: Callable[[Task], bool] | None = None) -> Deferred[Task]:
        return self._run_writer(self._delete, task_id, precondition).addCallback(self._announce, "deleted")

    def _delete(self, task_id: int, precondition: Callable[[Task], bool] | None) -> Task:
        with _Transaction(self._writer) as db:
            task = writable(self._get(task_id), task_id, precondition)
            db.execute("DELETE FROM tasks WHERE id = ?", (task_id,))
            return task

    # -- cursors (the readers) -------------------------------------------------

    def cursor(self, query: TaskQuery) -> ITaskCursor:
        if self._closed:
            raise RuntimeError("the task store is closed")
        return KeysetCursor(self, self._readers, _select, query)

    @property
    def _waiting(self) -> Any:
        """The queries waiting for a reader connection (for tests)."""
        return self._readers._waiting

    @property
    def idle_connections(self) -> int:
        """Reader connections back in the pool (what a closed cursor returns)."""
        return self._readers.idle

    def close(self) -> Deferred[None]:
        """
        Stop the threads (a job still running is waited for: a few
        milliseconds at most, and only at shutdown), then close every
        connection; open cursors close theirs as they end.
        """
        if self._closed:
            return succeed(None)
        self._closed = True
        self._readers.close()
        for pool in self._pools:
            pool.stop()
        if self._writer_connection is not None:
            self._writer_connection.close()
            self._writer_connection = None
        return succeed(None)


def _select(connection: sqlite3.Connection, query: TaskQuery) -> list[Task]:
    """One keyset batch (runs in a reader thread)."""
    sql, params = select_for(query)
    cursor = connection.execute(sql, params)
    try:
        return list(map(Task._make, cursor.fetchall()))
    finally:
        cursor.close()
