# -*- test-case-name: tests.test_pull -*-
"""
L{PullDriver}: runs a pull producer for a consumer that only pushes back.

A TCP transport speaks push: it calls C{pauseProducing} whenever a write
leaves its buffer over the high-water mark, and C{resumeProducing} once, when
the buffer has drained. Those calls are not balanced: two writes over the
mark are two pauses, and one drain is one resume. twisted.web adapts a pull
producer to that with C{twisted.internet._producer_helpers._PullToPush},
which forwards them to a C{twisted.internet.task.CooperativeTask} — and a
task I{counts} pauses. Paused twice and resumed once, it never runs again: a
pull-registered response stalls for good after a pipelined response left the
buffer nearly full (the first write of a response is two transport writes,
headers then body). And when the buffer drains before the task was ever
paused, C{resume()} raises C{NotPaused} out of the transport's write handler.

L{PullDriver} is the same adapter with a flag instead of a count, so pause
and resume are idempotent, as C{IPushProducer} allows them to be. It also
asks the producer, when it can (L{streamsvc.interfaces.IStreamProducer}'s
C{when_ready}), whether another C{resumeProducing} would do anything: while
an asynchronous chunk is pending it waits for it instead of calling again —
C{_PullToPush} calls a producer that writes nothing some 300,000 times a
second, for as long as the source waits.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPullProducer, IPushProducer, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer


__all__ = [
    "PullDriver",
]

log = Logger()

#: At most this many C{resumeProducing} calls per reactor turn ...
DEFAULT_BURST = 16

#: ... and no more than this many seconds of them, so that one stream never
#: holds the reactor for long, whatever its chunks cost.
DEFAULT_TURN_BUDGET = 0.001


@implementer(IPushProducer)
class PullDriver:
    """
    Presents a pull producer to a push-only consumer.

    Register the driver (as a push producer) with the consumer instead of
    C{producer}, call L{start}, and call L{stop} when the producer has
    finished — the protocol of C{_PullToPush.startStreaming} /
    C{stopStreaming}. While it is neither paused nor stopped, the driver calls
    C{producer.resumeProducing()} up to C{burst} times per reactor turn (fewer
    if C{budget} seconds of the clock have passed), then again on the next
    turn. C{stopProducing} (the consumer has gone) stops driving and stops the
    producer.

    @param clock: schedules the turns and measures the budget (the reactor,
        or a C{twisted.internet.task.Clock} in tests).
    """

    def __init__(
        self,
        producer: IPullProducer,
        *,
        clock: IReactorTime,
        burst: int = DEFAULT_BURST,
        budget: float = DEFAULT_TURN_BUDGET,
    ) -> None:
        self.producer = producer
        self._clock = clock
        self._burst = burst
        self._budget = budget
        self._paused = False
        self._stopped = False
        self._started = False
        self._running = False
        self._waiting: Deferred[Any] | None = None
        self._tick: IDelayedCall | None = None

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else "paused" if self._paused else "driving"
        return f"<PullDriver {state} {self.producer!r}>"

    def start(self) -> None:
        """Begin pulling, from the next reactor turn."""
        if self._started or self._stopped:
            return
        self._started = True
        self._schedule()

    def stop(self) -> None:
        """Stop pulling (the producer is done); the producer itself is left alone."""
        self._stopped = True
        self._cancel_tick()
        self._waiting = None

    # IPushProducer, for the consumer

    def pauseProducing(self) -> None:
        self._paused = True
        self._cancel_tick()

    def resumeProducing(self) -> None:
        self._paused = False
        if self._started:
            self._pull()

    def stopProducing(self) -> None:
        if self._stopped:
            return
        self.stop()
        self.producer.stopProducing()

    # the machinery

    def _may_pull(self) -> bool:
        return not (self._paused or self._stopped or self._waiting is not None)

    def _pull(self) -> None:
        """
        Call the producer until paused, waiting, out of burst or out of
        budget. Re-entrant calls (the producer's write resuming us
        synchronously) return at once; the outer loop sees the new state.
        """
        if self._running:
            return
        self._cancel_tick()
        self._running = True
        try:
            deadline = self._clock.seconds() + self._budget
            for _ in range(self._burst):
                if not self._may_pull():
                    return
                self.producer.resumeProducing()
                self._wait_if_not_ready()
                if self._clock.seconds() >= deadline:
                    break
        finally:
            self._running = False
        self._schedule()

    def _wait_if_not_ready(self) -> None:
        when_ready = getattr(self.producer, "when_ready", None)
        ready = when_ready() if when_ready is not None else None
        if ready is None or self._stopped:
            return
        self._waiting = ready
        ready.addBoth(self._ready, ready)

    def _ready(self, result: object, which: Deferred[Any]) -> None:
        if self._waiting is not which:
            return  # stopped meanwhile
        self._waiting = None
        if not self._running:
            self._pull()

    def _schedule(self) -> None:
        if self._tick is None and self._may_pull():
            self._tick = self._clock.callLater(0, self._on_tick)

    def _on_tick(self) -> None:
        self._tick = None
        self._pull()

    def _cancel_tick(self) -> None:
        if self._tick is not None:
            tick, self._tick = self._tick, None
            if tick.active():
                tick.cancel()
