# -*- test-case-name: tests.test_producers -*-
"""
Public test doubles for code built on streamsvc, as treq and txacme ship
theirs: a consumer that records what a producer does, and a real
C{twisted.web.server.Site} connection on a C{StringTransport} that a test can
pause, resume and disconnect by hand — the only way to test flow control
deterministically (treq's in-memory agent never pauses anything); an
in-memory L{ITaskStore}; and for plugin authors, L{PluginSite} (a plugin
mounted as the server mounts it), L{trickle} (a slow reader),
L{open_files} and L{CloseProbe} (was it let go?).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
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


__all__ = [
    "BodySender",
    "ClientTransport",
    "CloseProbe",
    "MemoryTaskStore",
    "PluginSite",
    "RawResponse",
    "RecordingConsumer",
    "SiteConnection",
    "open_files",
    "parse_response",
    "parse_responses",
    "record_resumes",
    "trickle",
]


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
    A C{StringTransport} with a TCP transport's flow control: it pauses its
    streaming producer on any write that leaves more than C{buffer_size}
    unread bytes, and resumes it once the peer has read everything — what
    C{twisted.internet.abstract.FileDescriptor} does with a real socket.
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

    C{transport.producer} is the C{HTTPChannel}. The client reads only when
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


class PluginSite:
    """
    A plugin mounted on a real streamsvc Site, as C{twistd streamsvc} would
    mount it (the guard, the limits, the metrics, the access log), on a
    C{Clock}, for tests without sockets::

        site = PluginSite(logs, tmp_path, settings={"dir": str(tmp_path / "logs")})
        response = site.get("/logs/app.log?follow=no")
        assert response.code == 200

    @param plugin: the L{streamsvc.interfaces.IStreamsvcPlugin} (need not
        be installed).
    @param data_dir: the Site's C{[server] data_dir}.
    @param settings: the raw C{[plugin:NAME]} section, as it would be in
        C{tap.conf} (strings, parsed by the plugin's settings).
    @param config: the rest of the configuration (limits, auth...); its
        C{data_dir} and C{[plugins]} are replaced.
    @ivar clock: the C{Clock} everything runs on: advance it to let
        timers and producers run.
    @ivar site: the C{Site}; C{site.metrics}, C{site.open_streams} are there.
    """

    def __init__(
        self, plugin: Any, data_dir: Any, *, settings: Mapping[str, str] | None = None, config: Any = None
    ) -> None:
        from twisted.internet.task import Clock

        from streamsvc.app import build_site, prepare_data_dir
        from streamsvc.config import Config, PluginsConfig
        from streamsvc.plugin import prepare_plugins, select_plugins

        self.clock = Clock()
        base = config if config is not None else Config()
        sections = ((plugin.name, tuple((settings or {}).items())),)
        self.config = attrs.evolve(
            base,
            server=attrs.evolve(base.server, data_dir=str(data_dir)),
            plugins=PluginsConfig(enabled=(plugin.name,), sections=sections, source="PluginSite"),
        )
        self.plugins = select_plugins(self.config, [plugin])
        prepare_data_dir(self.config)
        prepare_plugins(self.config, self.plugins)
        self.site = build_site(self.config, reactor=self.clock, plugins=self.plugins)

    def connect(self, *, buffer_size: int = 64 * 1024) -> SiteConnection:
        """A client connection that reads only when told (L{SiteConnection.read}): a slow or stopped reader."""
        return SiteConnection(self.site, buffer_size=buffer_size)

    def get(self, path: str, headers: Mapping[str, str] | None = None, *, method: str = "GET") -> RawResponse:
        """One request on a connection of its own, read to the end (until the server writes nothing more)."""
        conn = self.connect()
        conn.request(method, path, dict(headers or {}))
        conn.read_until_quiet(self.clock)
        conn.disconnect()
        return conn.response(head=method == "HEAD")

    def metrics(self) -> str:
        """The text C{/metrics} would show (empty with C{[server] metrics = no})."""
        from prometheus_client import generate_latest

        metrics = getattr(self.site, "metrics", None)
        return generate_latest(metrics.registry).decode("utf-8") if metrics is not None else ""


def trickle(conn: SiteConnection, clock: Any, *, nbytes: int, every: float, times: int) -> int:
    """
    A slow client: C{times} times, advance C{clock} by C{every} seconds and
    read C{nbytes}. Returns how many bytes it read in all.
    """
    total = 0
    for _ in range(times):
        clock.advance(every)
        total += conn.read(nbytes)
    return total


def open_files() -> set[str]:
    """
    The paths this process holds open now (Linux: C{/proc/self/fd}), for
    asserting that a stream let go of its file::

        conn.disconnect()
        assert str(log_file) not in open_files()
    """
    import os

    paths = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            paths.add(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            continue  # closed meanwhile (the listing's own descriptor)
    return paths


class CloseProbe:
    """
    An iterator that remembers whether it was closed: wrap a plugin's
    generator in it to assert that a stream closed it (on disconnect, on
    error), as L{streamsvc.producers.IterableProducer} must.
    """

    def __init__(self, iterable: Any) -> None:
        self._iterator = iter(iterable)
        self.closed = False

    def __iter__(self) -> "CloseProbe":
        return self

    def __next__(self) -> Any:
        return next(self._iterator)

    def close(self) -> None:
        self.closed = True
        close = getattr(self._iterator, "close", None)
        if close is not None:
            close()


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
