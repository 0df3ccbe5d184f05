# -*- test-case-name: tests.test_task_pgfeed -*-
"""
Live task events across hosts: what feeds a host's
L{streamsvc.tasks.events.EventHub} when the tasks live in PostgreSQL.

Every write commits its event in the same transaction as the change, into
C{task_events}, whose ids are one sequence for all hosts, committed in id
order (L{streamsvc.tasks.postgres._record}); its C{NOTIFY} carries the id.
Each host (each worker process) C{LISTEN}s on one connection of its own, in
a thread of its own, and on every notification reads the events after the
last it delivered, in id order, and hands them to its hub on the reactor
(C{hub.deliver}, ids as they are in the table). So:

  - a C{Last-Event-ID} taken from host B means the same on host A, whose
    hub holds the same events under the same ids (at start-up it loads the
    newest C{history} of them from the table);
  - the notification is only a wake-up: what is delivered is always read
    from the table, so a notification lost with a dropped connection loses
    nothing. After a drop the feed reconnects (0.2 s, doubling to 5 s) and
    delivers what was committed meanwhile; if the table no longer holds it
    (pruned while the host was cut off), every open stream gets
    C{event: reset} (L{EventHub.lost_events}) rather than a silent gap.

The thread blocks in the driver only (C{notifies} with a timeout, so that
a stop is seen within L{POLL} seconds); the hub is touched on the reactor
only.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

from streamsvc.tasks.store import StoreUnavailable

log = Logger()

#: Seconds between looks at the stop flag while no notification comes.
POLL = 1.0
#: Events read per query when catching up.
BATCH = 500
#: The listener's name in C{pg_stat_activity}.
APPLICATION_NAME = "streamsvc task events"
#: Seconds before reconnecting after a failure: the first, and the most.
RETRY_FIRST, RETRY_MAX = 0.2, 5.0


class PostgresFeed:
    """
    Feeds C{hub} from the events table. C{connect} makes a connection
    (L{streamsvc.tasks.postgres.connect}); C{where} names the database in
    log lines; C{history}, how many of the newest events to load at start.
    States: made, started (a thread listening or reconnecting), stopped.
    """

    def __init__(self, connect: Callable[[], Any], hub: Any, reactor: Any, *, where: str, history: int) -> None:
        self._connect = connect
        self._hub = hub
        self._reactor = reactor
        self._where = where
        self._history = history
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._last: int | None = None  # the last id handed to the hub (the thread's own)
        self.connected = threading.Event()  # for tests and status: listening now
        self.sessions = 0  # listening connections made so far (reconnections after the first)

    def start(self) -> None:
        if self._thread is not None or self._stopping.is_set():
            return
        self._thread = threading.Thread(target=self._run, name="streamsvc-task-events", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop listening; the thread ends within L{POLL} seconds (it is a daemon: nothing waits for it)."""
        self._stopping.set()

    # -- the thread ------------------------------------------------------------

    def _run(self) -> None:
        from streamsvc.tasks.postgres import EVENTS_CHANNEL

        delay = RETRY_FIRST
        cut_off = False
        while not self._stopping.is_set():
            connection = None
            try:
                connection = self._connect()
                # Named, so that an operator sees each host's listener in pg_stat_activity.
                connection.execute("SELECT set_config('application_name', %s, false)", (APPLICATION_NAME,))
                connection.execute(f"LISTEN {EVENTS_CHANNEL}")
                self._catch_up(connection)  # what was committed before LISTEN took effect
                self.sessions += 1
                self.connected.set()
                if cut_off:
                    self._log("info", "Listening to task events at {where} again")
                    cut_off = False
                delay = RETRY_FIRST
                while not self._stopping.is_set():
                    woken = False
                    for _ in connection.notifies(timeout=POLL, stop_after=1):
                        woken = True
                    if woken:
                        self._catch_up(connection)
            except Exception as e:  # the driver's, or StoreUnavailable from connect
                self.connected.clear()
                if self._stopping.is_set():
                    break
                if not cut_off:
                    reason = str(e) if isinstance(e, StoreUnavailable) else " ".join(str(e).split())
                    self._log("warn", "Task events from {where} cut off ({reason}); reconnecting", reason=reason)
                    cut_off = True
            finally:
                if connection is not None:
                    try:
                        connection.close()
                    except Exception:
                        pass
            self._stopping.wait(delay)
            delay = min(delay * 2, RETRY_MAX)
        self.connected.clear()

    def _catch_up(self, connection: Any) -> None:
        """Hand the hub every event after the last one handed, in id order (all of them, in batches)."""
        if self._last is None:
            self._load_tail(connection)
            return
        while not self._stopping.is_set():
            rows = connection.execute(
                "SELECT id, kind, payload FROM task_events WHERE id > %s ORDER BY id LIMIT %s",
                (self._last, BATCH),
            ).fetchall()
            if not rows:
                return
            lost = False
            if rows[0][0] > self._last + 1:
                # A gap: ids rolled back (nothing lost) or events pruned
                # before we read them (lost) — the latter when nothing older
                # than the gap's end is left in the table.
                (oldest,) = connection.execute("SELECT min(id) FROM task_events").fetchone()
                lost = oldest == rows[0][0]
            self._hand(rows, self._last, lost)
            self._last = rows[-1][0]
            if len(rows) < BATCH:
                return

    def _load_tail(self, connection: Any) -> None:
        """At start: the newest C{history} events, so reconnecting clients can resume here too."""
        rows = connection.execute(
            "SELECT id, kind, payload FROM (SELECT id, kind, payload FROM task_events"
            " ORDER BY id DESC LIMIT %s) AS newest ORDER BY id",
            (max(self._history, 1),),
        ).fetchall()
        if rows:
            self._reactor.callFromThread(self._hub.advance_to, rows[0][0] - 1)
            self._hand(rows, rows[0][0] - 1, False)
            self._last = rows[-1][0]
        else:
            self._last = 0

    def _hand(self, rows: list[tuple[int, str, str]], before: int, lost: bool) -> None:
        self._reactor.callFromThread(self._deliver, rows, before, lost)

    def _log(self, level: str, text: str, **fields: Any) -> None:
        self._reactor.callFromThread(getattr(log, level), text, where=self._where, **fields)

    # -- the reactor -----------------------------------------------------------

    def _deliver(self, rows: list[tuple[int, str, str]], before: int, lost: bool) -> None:
        hub = self._hub
        if lost:
            hub.lost_events(rows[0][0] - 1)
            before = rows[0][0] - 1
        for seq, kind, payload in rows:
            hub.deliver(seq, kind, payload.encode("utf-8"), after=before)
            before = seq
