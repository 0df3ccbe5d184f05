# -*- test-case-name: tests.test_client -*-
"""
A response body read the way a well-behaved client reads: handed to
C{write} chunk by chunk (never collected), no faster than C{rate} bytes a
second — by pausing the transport, so TCP pushes back on the server rather
than bytes piling up here — and given up when nothing arrives for C{stall}
seconds (treq's own timeout only covers the headers).

The rate is the server's own token bucket (L{streamsvc.stages.TokenBucket}).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss

from streamsvc._transport import set_read_size
from streamsvc.stages import TokenBucket

#: Bytes per recv while a body streams in (Twisted reads 64 KiB by default).
READ_SIZE = 256 * 1024


class BodyStalled(Exception):
    """No body byte arrived for the stall timeout."""


class _Reader(Protocol):
    def __init__(self, write: Callable[[bytes], None], reactor: Any, rate: float | None, stall: float | None) -> None:
        self._write = write
        self._reactor = reactor
        self._bucket = TokenBucket(rate, reactor, burst=rate) if rate else None
        self._stall = stall
        self._stall_timer: IDelayedCall | None = None
        self._resume_timer: IDelayedCall | None = None
        self.done: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        if self._bucket is None:  # (with --rate, small reads keep the pace smooth)
            set_read_size(self.transport, READ_SIZE)
        self._arm()

    def dataReceived(self, data: bytes) -> None:
        try:
            self._write(data)
        except BaseException:
            self._cancel()
            self.transport.stopProducing()
            if not self.done.called:
                self.done.errback(Failure())
            return
        self._arm()
        if self._bucket is not None:
            self._bucket.take(len(data))
            wait = self._bucket.wait()
            if wait > 0 and self._resume_timer is None:
                self.transport.pauseProducing()
                self._resume_timer = self._reactor.callLater(wait, self._resume)

    def _resume(self) -> None:
        self._resume_timer = None
        self.transport.resumeProducing()

    def _arm(self) -> None:
        if not self._stall:
            return
        if self._stall_timer is not None and self._stall_timer.active():
            self._stall_timer.reset(self._stall)
        else:
            self._stall_timer = self._reactor.callLater(self._stall, self._stalled)

    def _stalled(self) -> None:
        self._stall_timer = None
        self._cancel()
        if not self.done.called:
            self.done.errback(BodyStalled(f"no data for {self._stall:g} s"))
        self.transport.stopProducing()

    def _cancel(self) -> None:
        for timer in (self._stall_timer, self._resume_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._stall_timer = self._resume_timer = None

    def connectionLost(self, reason: Failure = ResponseDone()) -> None:
        self._cancel()
        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(None)
        else:
            self.done.errback(reason)


def read_body(
    response: Any, write: Callable[[bytes], None], *, reactor: Any, rate: float | None = None,
    stall: float | None = None,
) -> Deferred[None]:
    """Deliver C{response}'s body to C{write}; fires when it has ended (or fails)."""
    reader = _Reader(write, reactor, rate, stall)
    response.deliverBody(reader)
    return reader.done
