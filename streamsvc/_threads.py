"""
Blocking work off the reactor, on a thread pool of its own: the uploads'
disk jobs and the task store's database connections each get one, so
neither can starve the other, nor DNS lookups and whatever else uses the
reactor's shared pool.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, fail
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

T = TypeVar("T")


class PoolRunner:
    """
    Runs C{function(*args)} in a pool of C{threads} threads; a Deferred of
    the result. The pool is made when first used (nothing starts threads at
    import or configuration time) and, with C{stop_at_shutdown}, stopped
    after the jobs in hand at the reactor's shutdown; after L{stop} jobs are
    refused.
    """

    def __init__(self, reactor: Any, threads: int, name: str, *, stop_at_shutdown: bool = False) -> None:
        self._reactor = reactor
        self._threads = threads
        self._name = name
        self._stop_at_shutdown = stop_at_shutdown
        self._pool: ThreadPool | None = None
        self._stopped = False

    def __call__(self, function: Callable[..., T], *args: Any) -> Deferred[T]:
        if self._stopped:
            return fail(RuntimeError(f"{self._name} is stopped"))
        if self._pool is None:
            self._pool = ThreadPool(minthreads=0, maxthreads=self._threads, name=self._name)
            self._pool.start()
            if self._stop_at_shutdown:
                self._reactor.addSystemEventTrigger("during", "shutdown", self.stop)
        return deferToThreadPool(self._reactor, self._pool, function, *args)

    @property
    def joined(self) -> bool:
        """Whether its threads have been stopped and joined (or never started)."""
        return self._pool is None or bool(self._pool.joined)

    def stop(self) -> None:
        """Stop the threads, after the job in hand (a join: only at shutdown)."""
        if self._stopped:
            return
        self._stopped = True
        if self._pool is not None:
            self._pool.stop()
