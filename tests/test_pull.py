"""
Tests for L{streamsvc.pull.PullDriver}: idempotent pause/resume (the
transport's calls are not balanced), no busy loop while the producer waits,
bounded work per reactor turn, and the start/stop protocol.

Everything runs on a L{Clock}; the pull producers are small fakes that
record how often they are called.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from streamsvc.pull import PullDriver


class Counting:
    """A pull producer that records its calls; can be made to wait like an async source."""

    def __init__(self, clock: Clock | None = None, cost: float = 0.0) -> None:
        self.resumes = 0
        self.stops = 0
        self.waiting: Deferred[None] | None = None
        self.clock = clock
        self.cost = cost  # seconds each call "takes" on the clock

    def resumeProducing(self) -> None:
        self.resumes += 1
        if self.clock is not None:
            self.clock.rightNow += self.cost  # time passes, no call runs

    def stopProducing(self) -> None:
        self.stops += 1

    def when_ready(self) -> Deferred[None] | None:
        return self.waiting


def turn(clock: Clock) -> None:
    """
    Run the calls due now, as one reactor turn would; not those they schedule
    (C{Clock.advance(0)} would run those too, forever, for a driver that
    always has more to do).
    """
    due = [call for call in clock.getDelayedCalls() if call.getTime() <= clock.seconds()]
    for call in due:
        clock.calls.remove(call)
        call.func(*call.args, **call.kw)


def started(producer: Any, clock: Clock, **kwargs: Any) -> PullDriver:
    driver = PullDriver(producer, clock=clock, **kwargs)
    driver.start()
    return driver


def test_provides_push_producer() -> None:
    """The driver is what gets registered with the transport: a push producer."""
    assert verifyObject(IPushProducer, PullDriver(Counting(), clock=Clock()))


def test_starts_on_the_next_turn_and_pulls_a_burst_per_turn() -> None:
    """Nothing inside start(); then C{burst} calls per turn, turn after turn."""
    clock, producer = Clock(), Counting()
    driver = started(producer, clock, burst=3)
    assert producer.resumes == 0
    turn(clock)
    assert producer.resumes == 3
    turn(clock)
    assert producer.resumes == 6
    driver.stop()


def test_two_pauses_then_one_resume_drives_again() -> None:
    """
    The transport pauses on every write over its mark and resumes once when
    drained. Twisted's _PullToPush counts pauses and stalls here for good.
    """
    clock, producer = Clock(), Counting()
    driver = started(producer, clock, burst=1)
    turn(clock)
    driver.pauseProducing()
    driver.pauseProducing()
    turn(clock)
    assert producer.resumes == 1 and clock.getDelayedCalls() == []
    driver.resumeProducing()
    assert producer.resumes == 2
    turn(clock)
    assert producer.resumes == 3
    driver.stop()


def test_resume_without_pause_is_harmless() -> None:
    """A drained buffer before the first pause must not raise (NotPaused with a CooperativeTask)."""
    clock, producer = Clock(), Counting()
    driver = started(producer, clock, burst=1)
    driver.resumeProducing()
    driver.resumeProducing()
    assert producer.resumes == 2
    driver.stop()


def test_paused_before_start_waits_for_resume() -> None:
    """Paused before its first turn: nothing is pulled until resumed."""
    clock, producer = Clock(), Counting()
    driver = PullDriver(producer, clock=clock)
    driver.pauseProducing()
    driver.start()
    turn(clock)
    assert producer.resumes == 0 and clock.getDelayedCalls() == []
    driver.resumeProducing()
    assert producer.resumes > 0
    driver.stop()


def test_waits_for_a_pending_chunk_without_calling_again() -> None:
    """
    While the producer says it is waiting (an async chunk pending), the
    driver schedules nothing and calls nothing: no busy loop.
    """
    clock, producer = Clock(), Counting()
    producer.waiting = Deferred()
    driver = started(producer, clock)
    turn(clock)
    assert producer.resumes == 1
    for _ in range(100):
        clock.advance(0.01)
    assert producer.resumes == 1 and clock.getDelayedCalls() == []
    ready, producer.waiting = producer.waiting, None
    ready.callback(None)
    assert producer.resumes > 1
    driver.stop()


def test_ready_firing_during_the_call_keeps_going() -> None:
    """A readiness Deferred that has already fired does not stall the driver."""
    clock, producer = Clock(), Counting()
    fired: Deferred[None] = Deferred()
    fired.callback(None)
    producer.waiting = fired
    driver = started(producer, clock, burst=4)
    turn(clock)
    assert producer.resumes == 4
    turn(clock)
    assert producer.resumes == 8
    driver.stop()


def test_budget_bounds_one_turn() -> None:
    """Calls that cost 3 ms each stop after the 4 ms budget, however big the burst."""
    clock = Clock()
    producer = Counting(clock, cost=0.003)
    driver = started(producer, clock, burst=100, budget=0.004)
    turn(clock)
    assert producer.resumes == 2
    driver.stop()


def test_stop_ends_driving_and_leaves_the_producer_alone() -> None:
    """stop() (the producer is done) cancels the next turn and does not stop the producer."""
    clock, producer = Clock(), Counting()
    driver = started(producer, clock)
    driver.stop()
    turn(clock)
    driver.resumeProducing()
    assert producer.resumes == 0 and producer.stops == 0
    assert clock.getDelayedCalls() == []


def test_stop_producing_stops_the_producer_once() -> None:
    """The consumer going away stops the producer, exactly once, and all scheduling."""
    clock, producer = Clock(), Counting()
    producer.waiting = Deferred()
    driver = started(producer, clock)
    turn(clock)
    driver.stopProducing()
    driver.stopProducing()
    assert producer.stops == 1
    producer.waiting.callback(None)  # a late readiness changes nothing
    assert producer.resumes == 1 and clock.getDelayedCalls() == []


def test_reentrant_pause_inside_resume_producing() -> None:
    """A write that pauses the transport from inside resumeProducing ends the burst."""
    clock = Clock()
    driver: PullDriver

    class PausesOnWrite(Counting):
        def resumeProducing(self) -> None:
            super().resumeProducing()
            driver.pauseProducing()

    producer = PausesOnWrite()
    driver = started(producer, clock, burst=10)
    turn(clock)
    assert producer.resumes == 1 and clock.getDelayedCalls() == []
    driver.stop()
