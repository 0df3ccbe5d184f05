# -*- test-case-name: tests.test_file_stores,tests.test_s3_files -*-
"""
The object store: C{/files} in a bucket of an S3-compatible service
(C{[files] store = s3}: AWS S3, MinIO, SeaweedFS, Ceph RGW, R2, B2), over
L{streamsvc.files.s3client}.

Keys: C{prefix} + the path's segments joined by C{/}. A folder is a key
prefix (C{a/b/} when some key starts with it); C{PUT /files/a/b/} makes it
visible while empty with a zero-byte marker object C{a/b/}, as the S3
consoles do. Names are UTF-8 (the keys S3 has); a path that is not, or that
has a segment L{is_safe_segment} refuses (dot-names, empty segments), is a
404 as on the local disk.

Downloads: a HEAD gives the facts (size, Last-Modified, the object's own
ETag, strong), and each byte range of the body is a ranged GET with
C{If-Match} on that ETag, streamed by L{ObjectProducer}: what arrives from
the store is written to the client as it comes, and when the client's
transport pauses the producer the store's socket is no longer read (its
transport paused) until the client drains: a slow client holds a few
pieces of 8 KiB here (L{SLOW_READ}), and the rest waits in the kernel and
at the store. A client that leaves closes the store connection at once. A store
connection lost mid-range is asked again for the rest (with C{If-Match}, so
never another version's bytes), a few times; a store that stops sending
for C{timeout} seconds fails the stream (the client's connection is
aborted, never finished short).

Uploads (L{ObjectUpload}): a body no bigger than one part is one PutObject;
a bigger one a multipart upload, one part in flight and the next one
filling (so at most about two parts in memory), the socket paused while
both are full. A body that is cut, fails its digest or its precondition
at the end is aborted (AbortMultipartUpload): the old object stays. The
preconditions are checked before the body is read and again, by a HEAD,
right before the install (CompleteMultipartUpload or PutObject); between
that HEAD and the install another host's write can still slip in — S3
offers no compare-and-swap every service implements, so say so.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, FirstError, ensureDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.iweb import IBodyProducer
from twisted.web.http import PotentialDataLoss
from zope.interface import implementer

from streamsvc._threads import PoolRunner
from streamsvc._transport import set_read_size, set_send_buffer
from streamsvc.errors import HTTPError, StoreUnavailable
from streamsvc.files.facts import FileFacts
from streamsvc.files.feed import FileFeed
from streamsvc.files.listing import Batch, entry_item
from streamsvc.files.paths import is_safe_segment
from streamsvc.files.s3client import ListPage, ObjectInfo, S3Client, S3Error
from streamsvc.files.store import Installed, UploadAborted, WriteChecks, WritePreconditions
from streamsvc.interfaces import IFileStore, IStoredFile, IStoredFolder, IUploadSink
from streamsvc.producers import SourceTruncated, StreamProducer, default_clock
from streamsvc.ranges import ByteRange

log = Logger()

#: The multipart part size by default (C{[s3] part_size}); S3 allows 5 MiB
#: to 5 GiB (the last part may be smaller) and 10,000 parts, so 8 MiB parts
#: carry objects up to 78 GiB.
DEFAULT_PART_SIZE = 8 * 1024 * 1024
MIN_PART_SIZE = 5 * 1024 * 1024
MAX_PART_SIZE = 5 * 1024**3
MAX_PARTS = 10_000

#: Entries per ListObjectsV2 page (S3's own maximum).
LIST_PAGE = 1000

#: Times a range whose store connection was lost mid-way is asked again.
RANGE_RETRIES = 3

#: Parts of one upload sent and waiting for the store's answer, at most
#: (they hold no bytes here: a part's chunks go once written).
PARTS_AWAITED = 2

#: Threads hashing upload parts (hashlib lets go of the GIL for big buffers).
HASH_THREADS = 2

#: Bytes per read of the store's socket, and at most per write to the client,
#: for a download that has shown its client is fast. Most of a proxied
#: byte's CPU is the kernel's (send and recv on two sockets), the rest is
#: paid per read: 512 KiB takes a fifth less CPU per GiB than 128 KiB and a
#: third less than Twisted's 64 KiB (BENCHMARKS.md). A fast client holds
#: about one such read while it drains.
STORE_READ = 512 * 1024

#: ... and until then, or for good once its client has shown it is slow (a
#: pause that lasted L{SLOW_PAUSE} seconds; a fast client's last
#: milliseconds). Every download starts here: the kernel's socket buffers make
#: any client look fast for its first megabytes, and what a slow client holds
#: is a few pieces (its transport's buffer, one read queued), so they must be
#: small from the first.
SLOW_READ = 8 * 1024
SLOW_PAUSE = 0.5

#: Bytes a download delivers, with no long pause, before it takes
#: L{STORE_READ}s: more than the socket buffers of a slow client can absorb.
FAST_AFTER = 16 * 1024 * 1024


def object_segments(postpath: list[bytes]) -> tuple[tuple[str, ...], bool]:
    """
    The key segments of a request path, and whether it ended with C{/}; a
    404 for a path no key can be (not UTF-8, a dot-name, an empty segment,
    a slash or backslash inside a segment).
    """
    slash = bool(postpath) and postpath[-1] == b""
    raw = postpath[:-1] if slash else postpath
    try:
        segments = tuple(s.decode("utf-8") for s in raw)
    except UnicodeDecodeError:
        raise HTTPError(404, "not found") from None
    if not all(is_safe_segment(s) for s in segments):
        raise HTTPError(404, "not found")
    return segments, slash


def store_failed(failure: Failure) -> Failure:
    """
    The store's own failures as the contract says them: a 5xx of the store
    is a 502 (it answered, but not with what was asked), a 403 a 503 (our
    credentials or the bucket's policy: the operator's to fix, not the
    client's), 404 for a key that is not there; L{S3Unavailable} passes on.
    """
    error = failure.value
    if isinstance(error, S3Error):
        if error.status == 404:
            raise HTTPError(404, "not found")
        if error.status in (401, 403):
            raise StoreUnavailable(f"the object store refused our credentials: {error.code}", status=503)
        raise StoreUnavailable(f"the object store failed: {error}", status=502)
    return failure


def _facts(name: str, info: ObjectInfo) -> FileFacts:
    return FileFacts.of(name, info.size, int(info.last_modified), info.etag)


@implementer(IStoredFile)
class ObjectFile:
    """One version of an object (the HEAD's facts), read by ranged GETs."""

    def __init__(self, store: S3FileStore, key: str, name: str, facts: FileFacts) -> None:
        self.facts = facts
        self.name = name
        self.key = key
        self._store = store

    def producer(self, spans: list[Any], *, chunk_size: int, streaming: bool,
                 clock: IReactorTime | None, sendfile: bool) -> ObjectProducer:
        return ObjectProducer(self._store.client, self.key, self.facts.strong_etag, spans,
                              timeout=self._store.timeout, streaming=streaming, clock=clock)

    def close(self) -> None:
        pass  # nothing is held until a producer asks the store


@implementer(IStoredFolder)
class ObjectFolder:
    """A key prefix, listed page by page (folders, then files, within each page)."""

    def __init__(self, store: S3FileStore, prefix: str, slash: bool, first: ListPage | None = None) -> None:
        self.slash = slash
        self._store = store
        self._prefix = prefix
        self._first = first

    def entries(self) -> ObjectEntries:
        first, self._first = self._first, None
        return ObjectEntries(self._store.client, self._prefix, first)

    def close(self) -> None:
        pass


class ObjectEntries:
    """
    The entries below C{prefix}: one ListObjectsV2 page per batch, asked
    for only when the listing wants the next one (so a slow client holds
    one page). Within a page the folders come first, as C{delimiter=/}
    gives them; across pages the order is S3's (by key), and the page's
    script sorts what it shows, as for a local folder. The folder's own
    marker object is left out, and so are names L{is_safe_segment} refuses.
    """

    def __init__(self, client: S3Client, prefix: str, first: ListPage | None = None) -> None:
        self._client = client
        self._prefix = prefix
        self._first = first  # read before the answer began (see S3FileStore.open)
        self._token: str | None = None
        self._ended = False
        self._pending: Deferred[Any] | None = None

    def __iter__(self) -> ObjectEntries:
        return self

    def __next__(self) -> Batch | Deferred[Batch]:
        if self._ended:
            raise StopIteration
        first, self._first = self._first, None
        if first is not None:
            return self._page(first)
        self._pending = d = self._client.list_page(self._prefix, self._token, max_keys=LIST_PAGE)
        return d.addCallback(self._page).addErrback(store_failed)

    def _page(self, page: Any) -> Batch:
        self._pending = None
        start = len(self._prefix)
        items = []
        for prefix in page.prefixes:
            name = prefix[start:].rstrip("/")
            if is_safe_segment(name):
                items.append(entry_item(name.encode("utf-8"), "dir", None, 0.0))
        for key, info in page.objects:
            name = key[start:]
            if is_safe_segment(name):
                items.append(entry_item(name.encode("utf-8"), "file", info.size, info.last_modified))
        self._token = page.next_token
        self._ended = page.next_token is None
        return Batch(items, last=self._ended)

    def close(self) -> None:
        self._ended = True
        pending, self._pending = self._pending, None
        if pending is not None and not pending.called:
            pending.cancel()


class _RangeBody(Protocol):
    """
    The body of one ranged GET, handed over as it arrives: L{take} gives
    what is queued, or a Deferred of the next bytes. Whatever arrives
    while nobody waits is queued and the store's transport paused, so at
    most one socket read waits here.
    """

    def __init__(self, expected: int, timeout: float, clock: IReactorTime, what: str) -> None:
        self.expected = expected
        self.received = 0
        self.ended = False
        self.failure: Failure | None = None
        self._queue: list[bytes] = []
        self._waiter: Deferred[bytes] | None = None
        self._paused = False
        self._timeout = timeout
        self._clock = clock
        self._timer: IDelayedCall | None = None
        self._waiting_since = 0.0
        self._what = what
        self._piece = SLOW_READ  # bytes per read of the store, and at most per take

    def connectionMade(self) -> None:
        set_read_size(self.transport, self._piece)

    def set_piece(self, size: int) -> None:
        """Read the store, and hand the bytes on, C{size} bytes at a time from now on."""
        self._piece = size
        if self.transport is not None:
            set_read_size(self.transport, size)

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        if self.received > self.expected:
            self._end(Failure(StoreUnavailable(f"{self._what}: the store sent more than the range", status=502)))
            self.abort()
            return
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.callback(data)
            return
        self._queue.append(data)
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pauseProducing()

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: B008
        if self.ended:
            return
        if self.received == self.expected and reason.check(ResponseDone, PotentialDataLoss):
            self._end(None)
        else:
            self._end(reason)

    def _end(self, failure: Failure | None) -> None:
        self.ended = True
        self.failure = failure
        self._stop_timer()
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            if failure is None or self._queue:
                waiter.callback(self._drain())
            else:
                waiter.errback(failure)

    @property
    def queued(self) -> bool:
        """Whether bytes that arrived wait to be taken."""
        return bool(self._queue)

    def complete(self) -> bool:
        """Whether every byte of the range has been taken."""
        return self.ended and self.failure is None and not self._queue

    def take(self) -> bytes | Deferred[bytes]:
        """
        The bytes queued, or a Deferred of the next ones (C{b""} once the
        range is over, whichever way: the caller looks at L{failure}).
        """
        if self._queue:
            data = self._drain()
            if not self._queue:
                self._resume()
            return data
        if self.ended:
            return b""
        self._resume()
        self._waiter = Deferred()
        self._waiting_since = self._clock.seconds()
        if self._timer is None:  # one watchdog per wait, not a timer per chunk
            self._timer = self._clock.callLater(self._timeout, self._watch)
        return self._waiter

    def _drain(self) -> bytes:
        data = b"".join(self._queue) if len(self._queue) > 1 else self._queue[0] if self._queue else b""
        if len(data) > self._piece:
            self._queue = [data[self._piece :]]
            return data[: self._piece]
        self._queue = []
        return data

    def _resume(self) -> None:
        if self._paused and not self.ended and self.transport is not None:
            self._paused = False
            self.transport.resumeProducing()

    def _watch(self) -> None:
        """The watchdog: a wait for bytes longer than C{timeout} fails the range; a shorter one is watched on."""
        self._timer = None
        if self._waiter is None or self.ended:
            return  # not waiting: the next wait starts the watchdog again
        left = self._waiting_since + self._timeout - self._clock.seconds()
        if left > 0:
            self._timer = self._clock.callLater(left, self._watch)
            return
        self._end(Failure(StoreUnavailable(
            f"{self._what}: no bytes from the store for {self._timeout:g} s", status=504)))
        self.abort()

    def _stop_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def abort(self) -> None:
        """Close the store's connection now (the rest of the range is not wanted)."""
        self.ended = True
        self._stop_timer()
        self._queue = []
        if self.transport is not None:
            self.transport.stopProducing()  # the client's TransportProxyProducer: the connection is closed


class ObjectProducer(StreamProducer):
    """
    Streams byte ranges of one version of an object (C{etag}), interleaved
    with literal bytes, as L{streamsvc.producers.FileProducer} does for a
    file on disk: each range a ranged GET, its bytes written as they
    arrive, the store's socket paused while the consumer is (L{_RangeBody}).

    It owns the store request in flight and closes its connection whichever
    way the stream ends: complete, failed, or stopped by the client leaving.
    """

    def __init__(self, client: S3Client, key: str, etag: str, spans: Sequence[bytes | ByteRange], *,
                 timeout: float = 30.0, **pacing: Any) -> None:
        super().__init__(**pacing)
        self.spans = tuple(spans)
        self.length = sum(len(s) if isinstance(s, bytes) else s.length for s in self.spans)
        self._client = client
        self._key = key
        self._etag = etag
        self._timeout = timeout
        self._index = 0
        self._done_in_span = 0
        self._retries = 0
        self._body: _RangeBody | None = None
        self._asking: Deferred[Any] | None = None
        self._piece = SLOW_READ  # see SLOW_READ and STORE_READ
        self._slow = False  # the client has shown it is slow: small pieces for good
        self._delivered = 0
        self._paused_at: float | None = None

    def startProducing(self, consumer: Any) -> Deferred[None]:
        # Every byte passes through user space here (no sendfile): the
        # client's transport pauses us once 8 KiB wait in it, not 64 KiB.
        set_send_buffer(getattr(getattr(consumer, "channel", None), "transport", None), SLOW_READ)
        return super().startProducing(consumer)

    def pauseProducing(self) -> None:
        super().pauseProducing()
        if not self._slow and self.streaming and self._paused_at is None:
            self._paused_at = self._get_clock().seconds()

    def resumeProducing(self) -> None:
        paused_at, self._paused_at = self._paused_at, None
        if paused_at is not None and not self._slow and self._get_clock().seconds() - paused_at >= SLOW_PAUSE:
            self._slow = True
            self._set_piece(SLOW_READ)
        super().resumeProducing()

    def _set_piece(self, size: int) -> None:
        self._piece = size
        if self._body is not None:
            self._body.set_piece(size)

    def _next_chunk(self) -> bytes | Deferred[bytes] | None:
        body = self._body
        if body is not None:
            if not body.complete():
                if body.ended and body.failure is not None and not body.queued:
                    return self._ask_again(body)
                return self._taken(body.take())
            self._body = None
            self._index += 1
            self._done_in_span = 0
            self._retries = 0
        if self._index >= len(self.spans):
            return None
        span = self.spans[self._index]
        if isinstance(span, bytes):
            self._index += 1
            return span
        return self._ask(span.start, span.length)

    def _taken(self, data: bytes | Deferred[bytes]) -> bytes | Deferred[bytes]:
        if isinstance(data, Deferred):
            return data.addCallbacks(self._count, self._lost)
        return self._count(data)

    def _lost(self, failure: Failure) -> Deferred[bytes]:
        """The range's connection failed while we waited for its bytes: the rest asked again, if it may be."""
        body = self._body
        if body is None or body.failure is not failure or self.finished:
            return failure  # type: ignore[return-value]
        return self._ask_again(body)

    def _count(self, data: bytes) -> bytes:
        self._done_in_span += len(data)
        self._delivered += len(data)
        if self._piece < STORE_READ and not self._slow and self._delivered >= FAST_AFTER:
            self._set_piece(STORE_READ)  # a client that keeps up: bigger pieces, less CPU
        return data

    def _ask_again(self, body: _RangeBody) -> Deferred[bytes]:
        """The rest of a range whose connection was lost, asked again (with If-Match: the same version)."""
        failure = body.failure
        assert failure is not None
        if self._retries >= RANGE_RETRIES or failure.check(StoreUnavailable):
            failure.raiseException()
        self._retries += 1
        span = self.spans[self._index]
        assert isinstance(span, ByteRange)
        log.info("{key}: store connection lost at {offset} of a range, asking again", key=self._key,
                 offset=span.start + self._done_in_span)
        return self._ask(span.start + self._done_in_span, span.length - self._done_in_span)

    def _ask(self, start: int, length: int) -> Deferred[bytes]:
        self._asking = d = self._client.get_object(self._key, start, start + length - 1, {"If-Match": self._etag})
        return d.addCallback(self._answered, length).addErrback(self._refused)

    def _answered(self, response: Any, length: int) -> bytes | Deferred[bytes]:
        self._asking = None
        if self.finished:
            response.deliverBody(_Discard())
            return b""
        self._body = body = _RangeBody(length, self._timeout, self._get_clock(), self._key)
        body.set_piece(self._piece)
        response.deliverBody(body)
        # Nothing more is read from the store's headers, and the parser keeps
        # them for as long as the body flows: for a slow client, about a
        # tenth of what its download holds here.
        for name, _ in list(response.headers.getAllRawHeaders()):
            response.headers.removeHeader(name)
        return self._taken(body.take())

    def _refused(self, failure: Failure) -> Failure:
        self._asking = None
        if failure.check(S3Error) and failure.value.status in (404, 412):
            raise SourceTruncated(f"{self._key} changed or went while it was being sent")
        return store_failed(failure)

    def _release(self) -> None:
        body, self._body = self._body, None
        if body is not None and not body.complete():
            body.abort()
        asking, self._asking = self._asking, None
        if asking is not None and not asking.called:
            asking.cancel()  # the request not yet answered: its connection goes


class _Discard(Protocol):
    """The body of an answer nobody wants any more: its connection closed."""

    def connectionMade(self) -> None:
        self.transport.stopProducing()

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: B008
        pass


@implementer(IFileStore)
class S3FileStore:
    """
    The files of one bucket, below C{prefix} (ending with C{/} unless empty).

    @param client: the L{S3Client} of the bucket.
    @param part_size: bytes per multipart part (L{MIN_PART_SIZE} to L{MAX_PART_SIZE}).
    @param timeout: seconds a store answer, or the next bytes of a body, may take.
    @param clock: for the stall timers (the reactor; tests pass a Clock).
    @param run_blocking: hashes upload parts off the reactor; a small
        thread pool of the store's own by default.
    """

    def __init__(self, client: S3Client, *, prefix: str = "", part_size: int = DEFAULT_PART_SIZE,
                 timeout: float = 30.0, clock: IReactorTime | None = None,
                 run_blocking: Any = None) -> None:
        if not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
            raise ValueError(f"part_size must be 5 MiB to 5 GiB, not {part_size}")
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        self.client = client
        self.prefix = prefix
        self.part_size = part_size
        self.timeout = timeout
        self.clock = clock
        self._run_blocking = run_blocking

    def __repr__(self) -> str:
        return f"<S3FileStore {self.client.where}/{self.prefix}>"

    @property
    def run_blocking(self) -> Any:
        if self._run_blocking is None:
            self._run_blocking = PoolRunner(self.clock or default_clock(), HASH_THREADS, "streamsvc-s3-hash",
                                            stop_at_shutdown=True)
        return self._run_blocking

    def key(self, segments: Sequence[str]) -> str:
        return self.prefix + "/".join(segments)

    def check(self) -> Deferred[None]:
        """That the bucket is there and ours to use (at start-up): L{S3Error} or L{S3Unavailable} if not."""
        return self.client.head_bucket()

    # reading

    def open(self, postpath: list[bytes]) -> Deferred[ObjectFile | ObjectFolder]:
        return ensureDeferred(self._open(postpath)).addErrback(store_failed)

    async def _open(self, postpath: list[bytes]) -> ObjectFile | ObjectFolder:
        segments, slash = object_segments(postpath)
        if not segments:
            first = await self.client.list_page(self.prefix, max_keys=LIST_PAGE) if slash else None
            return ObjectFolder(self, self.prefix, slash, first)
        key = self.key(segments)
        if not slash:
            info = await self.client.head_object(key)
            if info is not None:
                return ObjectFile(self, key, segments[-1], _facts(segments[-1], info))
            if await self._is_folder(key):
                return ObjectFolder(self, key + "/", slash)
            raise HTTPError(404, "not found")
        # The first page now, before the answer's status is decided: a store
        # that cannot list is a 503 (not a body that breaks off), an empty
        # prefix a 404.
        first = await self.client.list_page(key + "/", max_keys=LIST_PAGE)
        if not (first.prefixes or first.objects):
            raise HTTPError(404, "not found")
        return ObjectFolder(self, key + "/", slash, first)

    def _folders_on_the_way(self, segments: Sequence[str]) -> list[str]:
        """The keys of the folders above C{segments} (where no file may be)."""
        return [self.key(segments[:depth]) for depth in range(1, len(segments))]

    async def _heads(self, keys: list[str]) -> list[ObjectInfo | None]:
        """HeadObject of every key at once: what each is, None where there is none."""
        results = await DeferredList([self.client.head_object(key) for key in keys],
                                     fireOnOneErrback=True, consumeErrors=True)
        return [info for _, info in results]

    async def _is_folder(self, key: str) -> bool:
        page = await self.client.list_page(key + "/", max_keys=1)
        return bool(page.prefixes or page.objects)

    async def _current(self, segments: Sequence[str], *, ancestors: bool) -> tuple[str, int] | None:
        """
        The (ETag, last-modified second) of the object at C{segments}, None
        when there is none; a 409 when a folder is there, or (with
        C{ancestors}) a file where a folder on the way must be.
        """
        key = self.key(segments)
        infos = await self._heads([key] + (self._folders_on_the_way(segments) if ancestors else []))
        if any(info is not None for info in infos[1:]):
            raise HTTPError(409, "a folder or file is in the way of this path")
        info = infos[0]
        if info is None:
            if await self._is_folder(key):
                raise HTTPError(409, "a folder is at this path")
            return None
        return info.etag, int(info.last_modified)

    # writing

    def begin_upload(self, segments: tuple[str, ...], checks: WriteChecks, flow: Any) -> ObjectUpload:
        return ObjectUpload(self, segments, checks, flow)

    def install_file(self, segments: tuple[str, ...], checks: WriteChecks, path: str) -> Deferred[Installed]:
        # A bucket cannot take a local file by a rename: it is uploaded as a
        # body would be, and hashed again on the way (the digests checked
        # against what was sent, as for any PUT).
        feed = FileFeed(path, self.run_blocking)
        return feed.start(self.begin_upload(segments, WriteChecks(checks.preconditions, checks.expected), feed))

    def delete(self, segments: tuple[str, ...], preconditions: WritePreconditions) -> Deferred[None]:
        async def run() -> None:
            current = await self._current(segments, ancestors=False)
            if current is None:
                raise HTTPError(404, "not found")
            preconditions.check(current)
            await self.client.delete_object(self.key(segments))

        return ensureDeferred(run()).addErrback(_unwrap).addErrback(store_failed)

    def make_folder(self, segments: tuple[str, ...]) -> Deferred[bool]:
        async def run() -> bool:
            key = self.key(segments)
            if any(info is not None for info in await self._heads(self._folders_on_the_way(segments) + [key])):
                raise HTTPError(409, "a file is in the way of this folder")
            if await self._is_folder(key):
                return False
            await self.client.put_object(key + "/", b"")
            return True

        return ensureDeferred(run()).addErrback(_unwrap).addErrback(store_failed)


def _unwrap(failure: Failure) -> Failure:
    """A DeferredList's FirstError as the failure inside it."""
    if failure.check(FirstError):
        return failure.value.subFailure  # type: ignore[no-any-return]
    return failure


@implementer(IUploadSink)
class ObjectUpload:
    """
    One PUT's body on its way into the bucket: decided (a HEAD: the
    preconditions, no folder in the way) while the body waits, then
    gathered a part at a time, each part hashed in a thread and sent while
    the next fills. States: deciding, receiving, installing, then ended
    (installed, or aborted with the multipart upload, if any, aborted too).
    """

    def __init__(self, store: S3FileStore, segments: tuple[str, ...], checks: WriteChecks, flow: Any) -> None:
        self.done: Deferred[Installed] = Deferred()
        self._store = store
        self._client = store.client
        self._segments = segments
        self._key = store.key(segments)
        self._checks = checks
        self._flow = flow
        self._part_size = store.part_size
        self._filling: list[bytes] = []  # the next part's chunks, as they came (no copy)
        self._filled = 0
        self._parts: list[Deferred[str]] = []  # each part's ETag, once the store has it
        self._upload_id: str | None = None
        self._busy = False  # a part (or the decision, or the install) is in flight
        self._body_done = False
        self._ended = False
        self._paused = True
        self.size = 0
        flow.pause_body()  # until decided: nothing of the body is read before the HEAD says yes
        self._job(self._decide())

    # IUploadSink

    def write(self, data: bytes) -> None:
        if self._ended:
            return
        self._filling.append(data)
        self._filled += len(data)
        self.size += len(data)
        if len(self._parts) >= MAX_PARTS - 1 and self._filled > self._part_size:
            self._fail(Failure(HTTPError(413, "too large for the object store's part count")))
            return
        if not self._busy and self._filled >= self._part_size:
            self._send_part()
        elif self._filled >= self._part_size and not self._paused:
            self._paused = True
            self._flow.pause_body()  # a part in flight and the next one full: the store is behind

    def finish(self) -> None:
        if self._ended:
            return
        self._body_done = True
        if not self._busy:
            self._next()

    def abort(self) -> None:
        if not self._ended:
            self._fail(Failure(UploadAborted()))

    # the steps, one in flight at a time

    def _job(self, coroutine: Any) -> None:
        self._busy = True
        ensureDeferred(coroutine).addCallbacks(self._job_done, self._job_failed)

    def _job_done(self, _: object) -> None:
        self._busy = False
        if self._ended:
            self._cleanup()
            return
        self._next()

    def _job_failed(self, failure: Failure) -> None:
        self._busy = False
        failure = _unwrap(failure)
        if failure.check(S3Error):
            try:
                store_failed(failure)
            except Exception:
                failure = Failure()
        self._fail(failure)

    def _next(self) -> None:
        if self._paused and self._filled < self._part_size:
            self._paused = False
            self._flow.resume_body()
        if self._filled >= self._part_size:
            self._send_part()
        elif self._body_done:
            self._job(self._install())

    async def _decide(self) -> None:
        current = await self._store._current(self._segments, ancestors=True)
        self._checks.preconditions.check(current)

    def _take(self) -> list[bytes]:
        """The chunks of the next part (all that came, or a part's worth, the rest kept for the next)."""
        chunks, self._filling, self._filled = self._filling, [], 0
        total = sum(len(c) for c in chunks)
        if total > self._part_size:
            last = chunks[-1]
            keep = total - self._part_size
            chunks[-1] = last[: len(last) - keep]
            self._filling, self._filled = [last[len(last) - keep :]], keep
        return chunks

    def _send_part(self) -> None:
        self._job(self._upload_part(self._take()))

    async def _upload_part(self, chunks: list[bytes]) -> None:
        """
        Send a part; done (the next may start) once its bytes are written and
        hashed: its answer is waited for at the install, so the store's time
        to take a part overlaps the next one's sending. At most
        L{PARTS_AWAITED} parts wait for their answers.
        """
        if self._upload_id is None:
            self._upload_id = await self._client.create_multipart(self._key)
        if self._ended:
            return
        awaited = [d for d in self._parts if not d.called]
        if len(awaited) >= PARTS_AWAITED:
            await DeferredList(awaited, fireOnOneErrback=True, consumeErrors=True)
        # Hashed in a thread while the same chunks go to the store.
        hashed = self._store.run_blocking(_hash_chunks, self._checks.hashes, chunks)
        body = ChunksBody(chunks)
        answer = self._client.upload_part(self._key, self._upload_id, len(self._parts) + 1, body)
        answer.addErrback(self._part_failed)
        self._parts.append(answer)
        await DeferredList([hashed, body.written], fireOnOneErrback=True, consumeErrors=True)

    def _part_failed(self, failure: Failure) -> Failure:
        """A part the store refused (or lost): the upload fails now, not at the install."""
        if not self._busy:
            self._job_failed(failure)
        return failure

    async def _install(self) -> None:
        chunks = self._take()
        last = b"".join(chunks)
        if last:
            await self._store.run_blocking(_hash_chunks, self._checks.hashes, chunks)
        self._checks.check_digests()
        current = await self._store._current(self._segments, ancestors=False)
        self._checks.preconditions.check(current)
        if self._upload_id is None:
            await self._client.put_object(self._key, last)
        else:
            if last or not self._parts:
                self._parts.append(self._client.upload_part(self._key, self._upload_id, len(self._parts) + 1, last))
            answers = await DeferredList(self._parts, fireOnOneErrback=True, consumeErrors=True)
            await self._client.complete_multipart(self._key, self._upload_id, [etag for _, etag in answers])
            self._upload_id = None  # complete: nothing to abort
        info = await self._client.head_object(self._key)
        if info is None:
            raise StoreUnavailable(f"{self._key}: the object store lost the object it just stored", status=502)
        self._ended = True
        self.done.callback(Installed(info.etag, info.size, int(info.last_modified), current is None))

    # ending badly

    def _fail(self, failure: Failure) -> None:
        if not self._ended:
            self._ended = True
            self._filling, self._filled = [], 0
            if not self.done.called:
                self.done.errback(failure)
        if not self._busy:
            self._cleanup()

    def _cleanup(self) -> None:
        """
        Abort the multipart upload, if one was begun and not completed, once
        the parts still on their way have been answered (a part that lands
        after the abort would be left behind): no parts left.
        """
        upload_id, self._upload_id = self._upload_id, None
        parts, self._parts = self._parts, []
        if upload_id is None:
            for part in parts:
                part.addErrback(lambda _: None)
            return

        def failed(reason: Failure) -> None:
            log.warn("could not abort the multipart upload of {key} ({reason}); the bucket's lifecycle "
                     "rule for incomplete uploads will remove its parts", key=self._key,
                     reason=reason.getErrorMessage())

        DeferredList(parts, consumeErrors=True).addCallback(
            lambda _: self._client.abort_multipart(self._key, upload_id)).addErrback(failed)


def _hash_chunks(hashes: Any, chunks: list[bytes]) -> None:
    """In a thread: C{chunks} into the running hashes, in order."""
    for chunk in chunks:
        hashes.update(chunk)


@implementer(IBodyProducer)
class ChunksBody:
    """
    A part's chunks as a request body, written as the store's socket takes
    them (a push producer the HTTP client registers with its transport),
    never joined into one copy.
    """

    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = chunks
        self.length = sum(len(c) for c in chunks)
        self._index = 0
        self._paused = False
        self._consumer: Any = None
        self._done: Deferred[None] | None = None
        #: Fires once every chunk has been handed to the transport (before the store's answer).
        self.written: Deferred[None] = Deferred()

    def startProducing(self, consumer: Any) -> Deferred[None]:
        self._consumer = consumer
        self._done = done = Deferred()  # never fires once stopped (IBodyProducer)
        self._write()
        return done

    def _write(self) -> None:
        while not self._paused and self._done is not None and self._index < len(self._chunks):
            chunk = self._chunks[self._index]
            self._index += 1
            self._consumer.write(chunk)  # may pause us, re-entrantly
        if self._index >= len(self._chunks) and self._done is not None:
            done, self._done = self._done, None
            self._chunks = []  # the HTTP client keeps its last request (and us) while the connection is pooled
            done.callback(None)
            if not self.written.called:
                self.written.callback(None)

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._write()

    def stopProducing(self) -> None:
        self._done = None
        self._chunks = []
        if not self.written.called:
            self.written.errback(Failure(StoreUnavailable("the object store's connection was lost mid-part")))
