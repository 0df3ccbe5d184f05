# -*- test-case-name: tests.test_producers -*-
"""
Public test doubles for code built on streamsvc, as treq and txacme ship
theirs: a consumer that records what a producer does, and a real
L{twisted.web.server.Site} connection on a L{StringTransport} that a test can
pause, resume and disconnect by hand — the only way to test flow control
deterministically (treq's in-memory agent never pauses anything); and an
in-memory L{ITaskStore}.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import attrs
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IConsumer, IProducer
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.server import Site
from zope.interface import implementer

from streamsvc.interfaces import ITaskCursor, ITaskStore
from streamsvc.tasks.model import NewTask, Task, TaskQuery, matches, now_iso
from streamsvc.tasks.store import LocalFeed, changed, writable


@implementer(IConsumer)
class RecordingConsumer:
    """
    A consumer that keeps every write and can push back.

    @ivar chunks: each C{write}, in order.
    @ivar pause_on_write: when true, pause the registered producer from
        inside every C{write}, as a TCP transport does when its buffer is full.
    """

    def __init__(self, *, pause_on_write: bool = False) -> None:
        self.chunks: list[bytes] = []
        self.pause_on_write = pause_on_write
        self.producer: IProducer | None = None
        self.streaming: bool | None = None

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        self.producer = producer
        self.streaming = streaming

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data: bytes) -> None:
        self.chunks.append(data)
        if self.pause_on_write and self.producer is not None:
            self.producer.pauseProducing()  # type: ignore[attr-defined]


def record_resumes(producer: Any) -> list[None]:
    """
    Count the C{resumeProducing} calls a producer gets from whoever drives
    it: returns a list that grows by one per call. What tells a waiting
    producer from one called in a busy loop.
    """
    calls: list[None] = []
    resume = producer.resumeProducing

    def counted() -> None:
        calls.append(None)
        resume()

    producer.resumeProducing = counted
    return calls


@attrs.frozen
class RawResponse:
    """An HTTP/1.1 response parsed from the bytes a server wrote."""

    code: int
    headers: Headers
    body: bytes
    complete: bool

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name)
        return None if values is None else values[0]


def parse_response(raw: bytes, *, head: bool = False) -> RawResponse:
    """
    Parse one response out of C{raw}. C{complete} says whether the body was
    fully framed (all of Content-Length, or the final chunk) — what tells a
    clean end from a truncated one.
    """
    return _parse_one(raw, head)[0]


def parse_responses(raw: bytes, heads: list[bool]) -> list[RawResponse]:
    """
    Parse the pipelined responses in C{raw}, one per entry of C{heads}
    (whether it answers a HEAD); stops after the first incomplete one, so
    fewer responses than asked for means the server stalled or broke off.
    """
    responses: list[RawResponse] = []
    for head in heads:
        if b"\r\n\r\n" not in raw:
            break
        response, raw = _parse_one(raw, head)
        responses.append(response)
        if not response.complete:
            break
    return responses


def _parse_one(raw: bytes, head: bool) -> tuple[RawResponse, bytes]:
    head_end = raw.index(b"\r\n\r\n")
    lines = raw[:head_end].split(b"\r\n")
    code = int(lines[0].split(b" ", 2)[1])
    headers = Headers()
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers.addRawHeader(name.strip(), value.strip())
    rest = raw[head_end + 4 :]
    if head or code in (204, 304):
        return RawResponse(code, headers, b"", True), rest
    length = headers.getRawHeaders(b"content-length")
    if length is not None:
        size = int(length[0])
        return RawResponse(code, headers, rest[:size], len(rest) >= size), rest[size:]
    if headers.getRawHeaders(b"transfer-encoding") == [b"chunked"]:
        return _dechunk(code, headers, rest)
    return RawResponse(code, headers, rest, False), b""


def _dechunk(code: int, headers: Headers, rest: bytes) -> tuple[RawResponse, bytes]:
    body = []
    while True:
        line_end = rest.find(b"\r\n")
        if line_end < 0:
            return RawResponse(code, headers, b"".join(body), False), b""
        size = int(rest[:line_end].split(b";")[0], 16)
        if size == 0:
            complete = rest[line_end:].startswith(b"\r\n\r\n")
            return RawResponse(code, headers, b"".join(body), complete), rest[line_end + 4 :]
        chunk = rest[line_end + 2 : line_end + 2 + size]
        body.append(chunk)
        if len(chunk) < size:
            return RawResponse(code, headers, b"".join(body), False), b""
        rest = rest[line_end + 2 + size + 2 :]


class ClientTransport(StringTransport):
    """
    A L{StringTransport} with a TCP transport's flow control: it pauses its
    streaming producer on any write that leaves more than C{buffer_size}
    unread bytes, and resumes it once the peer has read everything — what
    L{twisted.internet.abstract.FileDescriptor} does with a real socket.
    The peer reads only when a test says so (L{SiteConnection.read}).
    """

    def __init__(self, buffer_size: int = 64 * 1024) -> None:
        super().__init__()
        self.buffer_size = buffer_size
        self.unread = 0
        self.producer_paused = False

    def write(self, data: bytes) -> None:
        super().write(data)
        self.unread += len(data)
        self._maybe_pause()

    def writeSequence(self, data: Any) -> None:
        self.write(b"".join(data))

    def _maybe_pause(self) -> None:
        if self.producer is not None and self.streaming and self.unread > self.buffer_size:
            self.producer_paused = True
            self.producer.pauseProducing()

    #: Whether the server shut its side (L{loseWriteConnection}).
    write_closed = False

    def loseWriteConnection(self) -> None:
        """
        A half-close, as TCP's: the peer sees the end of what was written,
        and the server may still read (the transport is not
        C{disconnecting}), as it does while closing lingering.
        """
        self.write_closed = True

    @property
    def closed_by_server(self) -> bool:
        """Whether the server ended the connection: closed, aborted, or shut its side."""
        return bool(self.disconnecting or self.disconnected or self.write_closed)

    def peer_reads(self, nbytes: int | None = None) -> int:
        """The peer reads up to C{nbytes} (all, if None); returns how many."""
        taken = self.unread if nbytes is None else min(nbytes, self.unread)
        self.unread -= taken
        if self.unread == 0 and self.producer_paused and self.producer is not None:
            self.producer_paused = False
            self.producer.resumeProducing()
        return taken


class SiteConnection:
    """
    One client connection to a real Site, over a L{ClientTransport}.

    C{transport.producer} is the L{HTTPChannel}. The client reads only when
    told to (L{read}), so a test sees exactly what a server does for a client
    that stops reading; L{pause}/L{resume} drive the channel by hand.
    """

    def __init__(self, site: Site, *, buffer_size: int = 64 * 1024) -> None:
        self.transport = ClientTransport(buffer_size)
        self.protocol: Any = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        self.protocol.makeConnection(self.transport)

    def request(
        self, method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b""
    ) -> None:
        lines = [f"{method} {path} HTTP/1.1", "Host: test"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        if body:
            lines.append(f"Content-Length: {len(body)}")
        self.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)

    def send(self, raw: bytes) -> None:
        self.protocol.dataReceived(raw)

    def read(self, nbytes: int | None = None) -> int:
        """The client reads up to C{nbytes} of what the server wrote (all, if None)."""
        return self.transport.peer_reads(nbytes)

    def read_until_quiet(self, clock: Any, turns: int = 100_000) -> None:
        """
        The client reads everything, turn after turn of C{clock}, until the
        server writes nothing more. Bounded by C{turns}.
        """
        for _ in range(turns):
            before = len(self.transport.value())
            self.read()
            clock.advance(0)
            if len(self.transport.value()) == before and not self.transport.unread:
                return
        raise AssertionError("the server was still writing after %d turns" % (turns,))

    def pause(self) -> None:
        """The client stops reading: the transport's buffer is full."""
        self.transport.producer.pauseProducing()

    def resume(self) -> None:
        """The client drained the buffer."""
        self.transport.producer.resumeProducing()

    def disconnect(self) -> None:
        """The client goes away, in the order a real transport reports it."""
        if self.transport.producer is not None:
            self.transport.producer.stopProducing()
        self.protocol.connectionLost(Failure(ConnectionLost("client went away")))

    @property
    def aborted(self) -> bool:
        """Whether the server aborted the connection (C{abortConnection})."""
        return bool(self.transport.disconnected)

    def response(self, *, head: bool = False) -> RawResponse:
        return parse_response(self.transport.value(), head=head)


class BodySender(Protocol):
    """
    A client that sends C{head} (a request's line and headers), then C{total}
    bytes of body as fast as its socket takes them (pausing when the socket
    pushes back), and records the reply. With C{read=False} it never reads
    what comes back, as a client that stopped reading; C{sent} then says
    where the server's flow control stopped it.
    """

    def __init__(self, head: bytes, total: int, *, read: bool = True) -> None:
        self.head, self.total, self.read = head, total, read
        self.sent = 0
        self.received = bytearray()
        self.paused = False
        self.closed = False

    def connectionMade(self) -> None:
        self.transport.write(self.head)
        self.transport.registerProducer(self, True)
        if not self.read:
            self.transport.pauseProducing()
        self.resumeProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        while not self.paused and not self.closed and self.sent < self.total:
            piece = bytes([self.sent // 65536 % 256]) * 65536
            self.sent += len(piece)
            self.transport.write(piece)

    def pauseProducing(self) -> None:
        self.paused = True

    def stopProducing(self) -> None:
        self.closed = True

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any) -> None:
        self.closed = True


@implementer(ITaskStore)
class MemoryTaskStore(LocalFeed):
    """
    An L{ITaskStore} in a dict, for tests of code built on the tasks API:
    every Deferred has fired by the time it is returned (pass C{now} for
    fixed timestamps). It keeps the same rules as the SQLite store (ids
    never reused, versions, preconditions in the write, id order, the same
    filters) and counts cursors like it: C{open_cursors} drops when a
    cursor is closed or has run out.
    """

    def __init__(self, *, now: Callable[[], float] = lambda: 0.0) -> None:
        self.tasks: dict[int, Task] = {}
        self._next_id = 1
        self._now = now
        self.open_cursors = 0
        self.closed = False

    def create(self, task: NewTask) -> Deferred[Task]:
        return succeed(self._insert([task])[0]).addCallback(self._announce, "created")

    def create_many(self, tasks: Sequence[NewTask]) -> Deferred[list[Task]]:
        return succeed(self._insert(tasks)).addCallback(self._announce, "imported")

    def _insert(self, tasks: Sequence[NewTask]) -> list[Task]:
        stamp = now_iso(self._now())
        made = []
        for new in tasks:
            task = Task(self._next_id, new.title, new.priority, new.status, stamp, stamp, 1)
            self.tasks[task.id] = task
            self._next_id += 1
            made.append(task)
        return made

    def get(self, task_id: int) -> Deferred[Task | None]:
        return succeed(self.tasks.get(task_id))

    def update(
        self,
        task_id: int,
        changes: dict[str, Any],
        precondition: Callable[[Task], bool] | None = None,
    ) -> Deferred[Task]:
        try:
            task = writable(self.tasks.get(task_id), task_id, precondition)
        except Exception:
            return fail()
        if not changes:
            return succeed(task)
        task = changed(task, changes, now_iso(self._now()))
        self.tasks[task_id] = task
        return succeed(task).addCallback(self._announce, "updated")

    def delete(self, task_id: int, precondition: Callable[[Task], bool] | None = None) -> Deferred[Task]:
        try:
            task = writable(self.tasks.get(task_id), task_id, precondition)
        except Exception:
            return fail()
        del self.tasks[task_id]
        return succeed(task).addCallback(self._announce, "deleted")

    def cursor(self, query: TaskQuery) -> "_MemoryCursor":
        self.open_cursors += 1
        return _MemoryCursor(self, query)

    def close(self) -> Deferred[None]:
        self.closed = True
        return succeed(None)


@implementer(ITaskCursor)
class _MemoryCursor:
    """Walks the ids in order from the last one returned, so tasks added meanwhile may show up."""

    def __init__(self, store: MemoryTaskStore, query: TaskQuery) -> None:
        self._store = store
        self._query = query
        self._last = query.after_id
        self._left = query.limit
        self.closed = False

    def fetch(self, count: int) -> Deferred[list[Task]]:
        if self.closed:
            return succeed([])
        batch: list[Task] = []
        for task_id in sorted(i for i in self._store.tasks if i > self._last):
            if len(batch) >= count or self._left == 0:
                break
            task = self._store.tasks[task_id]
            self._last = task_id
            if matches(task, self._query):
                batch.append(task)
                if self._left is not None:
                    self._left -= 1
        if not batch:
            self.close()
        return succeed(batch)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._store.open_cursors -= 1
