# -*- test-case-name: tests.test_client -*-
"""
C{streamsvc-client put FILE URL}: the file streamed as the request body
through an C{IBodyProducer} (pause/resume honoured, the file closed at the
end or on failure), with C{Content-Digest} (sha-256, computed in a first
pass off the reactor) for the server to verify, and C{If-Match} /
C{If-None-Match: *} for a safe replace or create.

C{Expect: 100-continue}: Twisted's HTTP client has no API for the server's
C{100 Continue} (it drops 1xx answers) and would start the body at once, so
the body is held: a refusal (401, 412, 413...) then costs no body bytes at
all. The dropped 100 is still visible as the client's log event ("Ignoring
unexpected 100 response", from the parser of our request), and
L{ContinueWatch} starts the body when it sees it; a server that sends no
100 gets the body after C{hold} seconds (default 1), as curl does.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from streamsvc.client.errors import ClientError
from streamsvc.client.get import _status_error
from streamsvc.digests import field
from streamsvc.producers import FileProducer

#: How much of the file one write hands the transport.
CHUNK = 256 * 1024


def file_digest(path: str) -> bytes:
    """SHA-256 of a file, read 1 MiB at a time (run in a thread)."""
    hash_ = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1024 * 1024):
            hash_.update(chunk)
    return hash_.digest()


@implementer(IBodyProducer)
class HeldFileProducer:
    """
    A file (from C{offset} on) as a request body, started only after
    C{hold} seconds unless released first.
    """

    def __init__(self, path: str, *, reactor: Any, hold: float, offset: int = 0) -> None:
        self._file = open(path, "rb")
        self._offset = offset
        self.length = max(0, os.fstat(self._file.fileno()).st_size - offset)
        self._reactor = reactor
        self._hold = hold
        self._inner: FileProducer | None = None
        self._timer: Any = None
        self._consumer: Any = None
        self._done: Deferred[None] = Deferred()
        self.started = False

    def startProducing(self, consumer: Any) -> Deferred[None]:
        self._consumer = consumer
        if self._hold > 0:
            self._timer = self._reactor.callLater(self._hold, self._start)
        else:
            self._start()
        return self._done

    def _start(self) -> None:
        self._timer = None
        if self._file.closed:
            return
        self.started = True
        # streamsvc's own file producer, the one downloads use: 256 KiB preads
        # written until the transport pauses it. (FileBodyProducer runs on a
        # cooperator that works 10 ms, then idles 10 ms: half the speed.)
        self._inner = FileProducer.for_range(self._file, self._offset, self.length, chunk_size=CHUNK)
        self._inner.startProducing(self._consumer).chainDeferred(self._done)

    def release(self) -> None:
        """The server said C{100 Continue}: start the body now, not at the end of the hold."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
            self._start()

    def answered(self) -> None:
        """The final answer came before the body started: it never will."""
        if not self.started:
            self.stopProducing()

    def pauseProducing(self) -> None:
        if self._inner is not None:
            self._inner.pauseProducing()

    def resumeProducing(self) -> None:
        if self._inner is not None:
            self._inner.resumeProducing()

    def stopProducing(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._inner is not None:
            self._inner.stopProducing()
        self._file.close()


class ContinueWatch:
    """
    Releases a held body when Twisted's client logs that it dropped a
    C{100} for that body's request. It reads a log message, not an API: if
    Twisted words it differently the hold's timer still starts the body, one
    C{hold} later, so the degradation is a delay, never a hang.
    """

    def __init__(self, producer: HeldFileProducer) -> None:
        self._producer = producer

    def __enter__(self) -> ContinueWatch:
        from twisted.logger import globalLogPublisher

        globalLogPublisher.addObserver(self)
        return self

    def __exit__(self, *exc: object) -> None:
        from twisted.logger import globalLogPublisher

        globalLogPublisher.removeObserver(self)

    def __call__(self, event: dict[str, Any]) -> None:
        if event.get("code") != 100 or "Ignoring unexpected" not in (event.get("log_format") or ""):
            return
        request = getattr(event.get("log_source"), "request", None)
        if getattr(request, "bodyProducer", None) is self._producer:
            self._producer.release()


def preconditions(if_match: str | None, if_none_match: bool) -> dict[str, str]:
    """The headers of a safe replace (C{If-Match}) or create (C{If-None-Match: *})."""
    headers = {}
    if if_match:
        headers["If-Match"] = if_match
    if if_none_match:
        headers["If-None-Match"] = "*"
    return headers


async def upload(
    client: Any,
    path: str,
    url: str,
    *,
    reactor: Any = None,
    headers: dict[str, str] | None = None,
    digest: bool = True,
    if_match: str | None = None,
    if_none_match: bool = False,
    hold: float = 1.0,
) -> tuple[int, bytes, HeldFileProducer]:
    """PUT C{path} to C{url}; the status, the answer's body and the producer (did it send?)."""
    if reactor is None:
        from twisted.internet import reactor
    if not os.path.isfile(path):
        raise ClientError(f"not a file: {path}")
    asked = dict(headers or {})
    if digest:
        asked["Content-Digest"] = field({"sha-256": await deferToThread(file_digest, path)}).decode("ascii")
    asked.update(preconditions(if_match, if_none_match))
    asked["Expect"] = "100-continue"
    producer = HeldFileProducer(path, reactor=reactor, hold=hold)
    try:
        with ContinueWatch(producer):
            response = await client.put(url, data=producer, headers=asked)
    finally:
        producer.answered()
    body = await response.content()
    if response.code >= 300:
        raise _status_error(response, url)
    return response.code, body, producer
