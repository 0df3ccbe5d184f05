# -*- test-case-name: tests.test_task_store -*-
"""
What every L{ITaskStore} shares, whatever the database: the errors the
resources answer, the rules a write applies, a bounded pool of connections
handed out on the reactor, and the keyset cursor every listing and export
reads through.

  - L{streamsvc.tasks.sqlite}: the embedded default, one file under the data dir;
  - L{streamsvc.tasks.postgres}: PostgreSQL, shared by several hosts.

Why the pool waits on the reactor: a query that finds every connection busy
waits in a queue here, with a deadline (L{StoreBusy}, a 503 before the
first byte of an answer), never in a thread, so a burst of requests holds
no thread while it waits and no wait is unbounded.

Why keyset batches: between two batches of a listing its client may stall
for as long as the send timeout. A cursor that held a connection (or a
server-side cursor, or a transaction) across that wait would let four
stalled exports pin every reader (#28 item 4) and, on PostgreSQL, keep a
snapshot open that stops vacuum. So each batch is one short query for the
next rows after the last id read, on a connection held for that query only.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.python.failure import Failure
from zope.interface import implementer

from streamsvc.errors import StoreUnavailable as _StoreUnavailable
from streamsvc.interfaces import ITaskCursor
from streamsvc.tasks.model import Task, TaskQuery

#: Runs a blocking function somewhere that is not the reactor; a Deferred of its result.
Runner = Callable[..., Deferred]

C = TypeVar("C")

#: Seconds a query waits for a connection before L{StoreBusy}.
READER_WAIT = 10.0


class TaskNotFound(LookupError):
    """No task has that id."""


class PreconditionFailed(Exception):
    """The task is there, but not as the client last saw it (If-Match)."""


class StoreBusy(Exception):
    """No connection freed within the store's wait (answered 503, Retry-After)."""


# The database cannot be reached or failed the query (answered 503,
# Retry-After): the one outage type every store raises.
StoreUnavailable = _StoreUnavailable


class SchemaTooNew(RuntimeError):
    """The database was made by a later streamsvc; this one cannot read it safely."""


def writable(task: Task | None, task_id: int, precondition: Callable[[Task], bool] | None) -> Task:
    """The task a write applies to, as every store decides it: there, and as the client last saw it."""
    if task is None:
        raise TaskNotFound(task_id)
    if precondition is not None and not precondition(task):
        raise PreconditionFailed(task_id)
    return task


def changed(task: Task, changes: dict[str, Any], stamp: str) -> Task:
    """C{task} with C{changes} applied: a new version, updated at C{stamp}."""
    return task._replace(**changes, updated_at=stamp, version=task.version + 1)


def change_event(kind: str, result: Task | Sequence[Task]) -> tuple[str, dict[str, Any]] | None:
    """
    The event a committed write announces, the same from every store:
    C{created}, C{updated} and C{deleted} carry the task as the API shows
    it; C{imported} (one L{ITaskStore.create_many} batch) its count and
    first and last ids. None for a batch of nothing.
    """
    if kind == "imported":
        tasks = list(result)  # type: ignore[arg-type]
        if not tasks:
            return None
        return kind, {"count": len(tasks), "first_id": tasks[0].id, "last_id": tasks[-1].id}
    assert isinstance(result, Task)
    return kind, result.as_json()


class LocalFeed:
    """
    L{ITaskStore.feed} for a store no other process writes to (SQLite, the
    in-memory one): each change, once committed, is published to the hub
    on the reactor, which numbers it (or has its relay number it: the
    workers of one host).
    """

    _hub: Any = None

    def feed(self, hub: Any) -> None:
        self._hub = hub

    def _announce(self, result: Any, kind: str) -> Any:
        """A callback: C{result} (what the write returns) announced as C{kind}, then passed on."""
        event = change_event(kind, result) if self._hub is not None else None
        if event is not None:
            self._hub.publish(*event)
        return result


def like_pattern(q: str) -> str:
    """C{%q%} for C{LIKE ... ESCAPE '\\'}: the wildcards and the escape in C{q} taken literally."""
    return "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def listing_sql(
    query: TaskQuery, *, columns: str, mark: str, title_like: str, fold: Callable[[str], str], nothing: str
) -> tuple[str, list[Any]]:
    """
    The SQL (and its parameters) of one keyset batch of a listing, in any
    dialect: id order after C{after_id}, the filters of L{TaskQuery}.

    @param mark: the dialect's placeholder (C{?}, C{%s}).
    @param title_like: the clause matching the title against a C{LIKE}
        pattern with ASCII-only case folding (the rule of
        L{streamsvc.tasks.model.matches}), with one placeholder.
    @param fold: what the pattern goes through to match C{title_like}'s folding.
    @param nothing: an always-false clause: no title holds a NUL, so a C{q}
        with one matches nothing (SQLite's LIKE would stop at it, #28 item 5).
    """
    where, params = [f"id > {mark}"], [query.after_id]
    if query.status is not None:
        where.append(f"status = {mark}")
        params.append(query.status)
    if query.min_priority is not None:
        where.append(f"priority >= {mark}")
        params.append(query.min_priority)
    if query.q is not None and "\x00" in query.q:
        where.append(nothing)
    elif query.q is not None:
        where.append(title_like)
        params.append(like_pattern(fold(query.q)))
    sql = f"SELECT {columns} FROM tasks WHERE {' AND '.join(where)} ORDER BY id"
    if query.limit is not None:
        sql += f" LIMIT {mark}"
        params.append(query.limit)
    return sql, params


def at_once(function: Callable[..., Any], *args: Any) -> Deferred:
    """A L{Runner} for tests: runs the job right here."""
    return maybeDeferred(function, *args)


_at_once = at_once  # the name the tests have used


def _default_clock() -> Any:
    from twisted.internet import reactor

    return reactor


class Connections(Generic[C]):
    """
    At most C{size} connections, opened in C{run}'s threads when first
    needed (not at construction, which twistd does before it forks), handed
    out on the reactor one query at a time.

    @param open_connection: makes a connection (runs in a thread).
    @param run: runs the jobs, C{size} threads of its own.
    @param clock: times a wait for a connection; C{wait} is its limit.
    @param usable: whether a connection given back may serve again (one
        the database dropped is closed and forgotten instead, so the next
        query opens a fresh one: the store recovers by itself).
    @param alive: asked of an idle connection before it is handed out, on
        the reactor, so must not block: false for one the server closed
        while it sat idle (a restart), which is then replaced rather than
        failing the query it was given to.
    """

    def __init__(
        self,
        open_connection: Callable[[], C],
        run: Runner,
        size: int,
        *,
        clock: Any = None,
        wait: float = READER_WAIT,
        usable: Callable[[C], bool] = lambda connection: True,
        alive: Callable[[C], bool] = lambda connection: True,
    ) -> None:
        if size < 1:
            raise ValueError("a pool needs at least 1 connection")
        self._open_connection = open_connection
        self._run = run
        self._size = size
        self._clock = clock
        self._wait = wait
        self._usable = usable
        self._alive = alive
        self._idle: list[C] = []
        self._count = 0  # opened or being opened, not yet closed
        self._waiting: deque[Deferred[C]] = deque()
        self._closed = False

    @property
    def idle(self) -> int:
        """Connections back in the pool (what a closed cursor returns)."""
        return len(self._idle)

    def checkout(self) -> Deferred[C]:
        """A connection: an idle one, a new one, or the next given back (L{StoreBusy} past the wait)."""
        while self._idle:
            connection = self._idle.pop()
            if self._alive(connection):
                return succeed(connection)
            self._count -= 1
            _close_quietly(connection)
        if self._count < self._size:
            self._count += 1
            return self._run(self._open_connection).addErrback(self._not_opened)
        clock = self._clock if self._clock is not None else _default_clock()
        waiter: Deferred[C] = Deferred(self._leave_queue)
        self._waiting.append(waiter)
        # Past the wait, the waiter is cancelled (out of the queue) and fails as StoreBusy.
        waiter.addTimeout(
            self._wait,
            clock,
            onTimeoutCancel=lambda result, timeout: Failure(
                StoreBusy(f"no database connection free within {timeout:g} s")
            ),
        )
        return waiter

    def _leave_queue(self, waiter: Deferred[C]) -> None:
        if waiter in self._waiting:
            self._waiting.remove(waiter)

    def _not_opened(self, failure: Failure) -> Failure:
        self._count -= 1
        self._open_for_next()
        return failure

    def _open_for_next(self) -> None:
        """A place came free with a query waiting: open a connection for it (it fails as that fails)."""
        if self._closed or not self._waiting:
            return
        waiter = self._waiting.popleft()

        def hand(result: Any) -> None:
            if not waiter.called:
                waiter.callback(result) if not isinstance(result, Failure) else waiter.errback(result)
            elif not isinstance(result, Failure):
                self.checkin(result)  # it gave up meanwhile (its deadline): the next one may use it

        self.checkout().addBoth(hand)

    def checkin(self, connection: C) -> None:
        """Give C{connection} back: to the next waiter, to the idle ones, or closed."""
        if self._closed or not self._usable(connection):
            self._count -= 1
            _close_quietly(connection)
            self._open_for_next()
        elif self._waiting:
            self._waiting.popleft().callback(connection)
        else:
            self._idle.append(connection)

    def withdraw(self, waiting: Deferred[Any]) -> None:
        """Cancel C{waiting} if it is a wait still in the queue (a connection being opened runs on)."""
        if waiting in self._waiting:
            waiting.cancel()

    def run(
        self, function: Callable[..., Any], *args: Any, wanted: Callable[[], bool] = lambda: True
    ) -> tuple[Deferred[Any], Deferred[Any]]:
        """
        Run C{function(connection, *args)} in a thread on a pooled
        connection, given back once the job has ended (never while it runs:
        closing a statement under a running fetch is a crash in SQLite). If
        C{wanted()} is false once the connection is in hand (its cursor
        closed meanwhile), nothing runs and the result is C{[]}.

        Returns the wait for a connection (which may be cancelled while it is
        queued, see L{withdraw}) and the result, a Deferred not to be cancelled.
        """
        checkout = self.checkout()

        def run(connection: C) -> Any:
            if not wanted():
                self.checkin(connection)
                return []

            def checkin(result: Any) -> Any:
                self.checkin(connection)
                return result

            return self._run(function, connection, *args).addBoth(checkin)

        return checkout, checkout.addCallback(run)

    def query(self, function: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """L{run}'s result alone: a one-off query."""
        return self.run(function, *args)[1]

    def close(self) -> None:
        """Fail the waits, close the idle connections; those in use close as they come back."""
        if self._closed:
            return
        self._closed = True
        for waiter in list(self._waiting):
            waiter.cancel()
        idle, self._idle = self._idle, []
        for connection in idle:
            self._count -= 1
            _close_quietly(connection)


def _close_quietly(connection: Any) -> None:
    try:
        connection.close()
    except Exception:
        pass  # a connection the server already dropped: nothing left to release


@implementer(ITaskCursor)
class KeysetCursor:
    """
    One listing, read in keyset batches: each fetch is one query,
    C{select(connection, query)} for the next C{count} rows after the last
    id returned, on a connection of C{connections} held for that query
    only. Between fetches it holds nothing, so a client that stops reading
    pins no connection. States: idle, a fetch in flight (waiting for a
    connection, or running in a thread), closed.

    C{owner} counts it in its C{open_cursors} while it is open.
    """

    def __init__(
        self,
        owner: Any,
        connections: Connections[Any],
        select: Callable[[Any, TaskQuery], list[Task]],
        query: TaskQuery,
    ) -> None:
        self._owner = owner
        self._connections = connections
        self._select = select
        self._query = query
        self._last_id = query.after_id
        self._left = query.limit
        self._waiting: Deferred[Any] | None = None
        self._in_flight = False
        self._closed = False
        owner.open_cursors += 1

    def fetch(self, count: int) -> Deferred[list[Task]]:
        if self._closed:
            return succeed([])
        if self._in_flight:
            raise RuntimeError("one fetch at a time")
        size = count if self._left is None else min(count, self._left)
        if size <= 0:
            self.close()
            return succeed([])
        self._in_flight = True
        self._waiting, job = self._connections.run(
            self._select, self._query._replace(after_id=self._last_id, limit=size), wanted=self._open
        )
        # The caller gets a Deferred of its own: cancelling it (a producer
        # stopped mid-fetch) closes the cursor; the job itself runs to its
        # end, and only then is its connection given back (see Connections.run).
        answer: Deferred[list[Task]] = Deferred(lambda d: self.close())
        job.addBoth(self._fetched).addBoth(lambda result: None if answer.called else answer.callback(result))
        return answer

    def _open(self) -> bool:
        return not self._closed

    def _fetched(self, result: Any) -> Any:
        self._in_flight = False
        self._waiting = None
        if self._closed:
            return []  # (a wait withdrawn by close(), or a result no one wants)
        if not isinstance(result, list) or not result:
            self.close()  # the end, or a failure: the cursor is finished either way
            return result
        self._last_id = result[-1].id
        if self._left is not None:
            self._left -= len(result)
        return result

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._owner.open_cursors -= 1
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            # Only a wait in the queue is withdrawn; a connection being
            # opened in a thread is let finish, and goes back to the pool.
            self._connections.withdraw(waiting)
