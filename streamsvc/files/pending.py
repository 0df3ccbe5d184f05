# -*- test-case-name: tests.test_pending -*-
"""
Resumable uploads' pending store: the uploads that have begun and not yet
been installed, kept on disk so that they outlive a cut connection and a
restart of the server. The protocols (L{streamsvc.files.resumable}, the
IETF draft; L{streamsvc.files.tus}, tus 1.0) are thin adapters over it.

Layout, under C{DATA_DIR/uploads/} (never under C{files/}: partial data is
never listed nor served):

  - C{<id>.json}: the state (L{PendingState}): the target path, the
    durable offset, the length when known, the digests and preconditions of
    the creating request, when it was last touched. Replaced whole: written
    to C{<id>.json.tmp}, C{fsync}'ed, renamed, and the folder C{fsync}'ed.
  - C{<id>.part}: the bytes received, in order. Only the first C{offset}
    count: the state is written after the bytes are C{fsync}'ed, so a crash
    between the two leaves bytes past the offset, cut at the next append.

An offset is reported only once its bytes are on disk. An append writes at
the durable offset with L{streamsvc.files.disk_upload.DiskWriter} (the
socket paused while the disk is behind, as for a PUT), and whichever way
its body ends (complete, or cut: what arrived is kept) the bytes are
C{fsync}'ed and then the new offset saved. Two appends to one upload never
interleave: the second is refused (409) while the first holds the upload
(in this process, and by C{flock} on the data file across processes).

The completing append checks the whole representation (its length, the
digests the creating request announced, through hashes kept as the bytes
were written, or computed again after a restart) and has the store install
the file (L{streamsvc.interfaces.IFileStore.install_file}), which checks
the preconditions of the creating request at that moment. The state then
stays, marked complete and without data, until it expires: a late append
gets the draft's error, not a 404.

Uploads untouched for C{expiry} seconds are removed by L{PendingUploads.sweep}
(periodically, and at start-up).
"""

from __future__ import annotations

import base64
import errno
import fcntl
import json
import os
import re
import secrets
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import attrs
from zope.interface import implementer
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest

from streamsvc.digests import ALGORITHMS, Hashes, mismatches
from streamsvc.errors import HTTPError
from streamsvc.files.disk_upload import DEFAULT_HIGH_WATER, DiskThreadPool, DiskWriter, RunBlocking, write_failed
from streamsvc.files.store import Installed, WriteChecks, WritePreconditions
from streamsvc.interfaces import IBodyConsumer, IFileStore

log = Logger()

#: Random bytes in an upload's id: 144 bits, URL-safe base64 (24 characters).
ID_BYTES = 18
_ID = re.compile(r"[A-Za-z0-9_-]{24}\Z")

#: Seconds an upload may go untouched before it is removed (C{[files] upload_expiry}).
DEFAULT_EXPIRY = 24 * 3600

#: Uploads pending at once, at most (C{[files] max_pending_uploads}).
DEFAULT_MAX_PENDING = 1000

#: Bytes per read when the hashes must be computed again (after a restart).
REHASH_CHUNK = 1024 * 1024

STATE = ".json"
DATA = ".part"
TEMP = ".tmp"


def is_upload_id(text: str) -> bool:
    """Whether C{text} could be an upload's id (anything else is a 404 without a look at the disk)."""
    return bool(_ID.match(text))


@attrs.frozen
class PendingState:
    """What is known of one pending upload; saved as JSON (L{to_json})."""

    id: str
    segments: tuple[str, ...]
    created: float
    touched: float
    offset: int = 0
    length: int | None = None
    complete: bool = False
    protocol: str = "ietf"
    #: The digests the creating request announced for the whole
    #: representation: algorithm -> base64 of the digest.
    expected: dict[str, str] = attrs.field(factory=dict)
    preconditions: WritePreconditions = WritePreconditions()
    metadata: dict[str, str] = attrs.field(factory=dict)
    #: Once complete: what the install reported (etag, size, mtime, created).
    installed: dict[str, Any] | None = None
    #: The last append was cut: the next one resumes the upload (metrics).
    interrupted: bool = False

    def to_json(self) -> bytes:
        value = attrs.asdict(self, recurse=True)
        value["segments"] = list(self.segments)
        return json.dumps(value, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> PendingState:
        """The state in C{data}; ValueError if it is not one."""
        try:
            value = json.loads(data)
            value["segments"] = tuple(value["segments"])
            value["preconditions"] = WritePreconditions(**value["preconditions"])
            state = cls(**value)
        except (TypeError, KeyError, AttributeError) as error:
            raise ValueError(f"not an upload state: {error}") from None
        if not is_upload_id(state.id) or state.offset < 0:
            raise ValueError("not an upload state")
        return state

    def expected_digests(self) -> dict[str, bytes]:
        return {name: base64.b64decode(value) for name, value in self.expected.items()}

    def expires_at(self, expiry: float) -> float:
        return self.touched + expiry


def encode_digests(digests: dict[str, bytes]) -> dict[str, str]:
    return {name: base64.b64encode(value).decode("ascii") for name, value in digests.items()}


@attrs.frozen
class Appended:
    """How an append ended: the upload's state after it, and the install if it completed the upload."""

    state: PendingState
    installed: Installed | None = None
    #: The SHA-256 and other digests of the whole representation, once installed.
    digests: dict[str, bytes] | None = None


class UploadEvents(Protocol):
    """
    What the pending store reports as it goes (L{streamsvc.metrics.Metrics}
    provides it): C{event} is one of started, resumed, completed,
    cancelled, expired.
    """

    def upload_event(self, protocol: str, event: str) -> None: ...

    def upload_appended(self, protocol: str, size: int) -> None: ...


class _NoEvents:
    def upload_event(self, protocol: str, event: str) -> None:
        pass

    def upload_appended(self, protocol: str, size: int) -> None:
        pass


class PendingUploads:
    """
    The pending uploads below C{folder}, installed into C{store} when complete.

    @param run_blocking: runs disk work (writes, fsync, renames) off the reactor.
    @param clock: C{seconds()} is wall-clock time here (the expiry survives restarts).
    @param max_bytes: the longest upload (C{[limits] max_upload_bytes}).
    @param events: told of uploads started, resumed, completed, cancelled,
        expired, and of the bytes appended (the metrics).
    """

    def __init__(self, folder: str, store: IFileStore, *, run_blocking: RunBlocking | None = None, clock: Any,
                 expiry: float = DEFAULT_EXPIRY, max_pending: int = DEFAULT_MAX_PENDING,
                 max_bytes: int = 1024**3, high_water: int = DEFAULT_HIGH_WATER,
                 events: UploadEvents | None = None) -> None:
        self.folder = folder
        self.events: UploadEvents = events if events is not None else _NoEvents()
        self.store = store
        self.expiry = expiry
        self.max_pending = max_pending
        self.max_bytes = max_bytes
        self._run_blocking_given = run_blocking
        self._clock = clock
        self._high_water = high_water
        self._appending: dict[str, Append] = {}
        self._sweeping = False
        #: Hashes of an upload's first bytes, kept while this process lives:
        #: id -> (the offset they reach, the hashes).
        self._hashes: dict[str, tuple[int, Hashes]] = {}

    @property
    def _run_blocking(self) -> RunBlocking:
        if self._run_blocking_given is None:  # made when first needed, as the local store's
            self._run_blocking_given = DiskThreadPool(self._clock)
        return self._run_blocking_given

    # -- paths ----------------------------------------------------------------

    def _path(self, upload_id: str, suffix: str) -> str:
        return os.path.join(self.folder, upload_id + suffix)

    # -- start-up and the sweep -----------------------------------------------

    def prepare(self) -> int:
        """
        At start-up, before anything listens: the folder made, what an
        interrupted save left removed, the expired uploads removed; how many
        uploads were removed. Blocking.
        """
        os.makedirs(self.folder, mode=0o700, exist_ok=True)
        for name in os.listdir(self.folder):
            if name.endswith(TEMP):
                _unlink(os.path.join(self.folder, name))
        return self._sweep_now()

    def sweep(self) -> Deferred[int]:
        """Remove the uploads untouched for C{expiry} seconds (in a thread); a Deferred of how many."""
        if self._sweeping:
            return succeed(0)  # the last one is still at it
        self._sweeping = True
        return self._run_blocking(self._sweep_now).addBoth(self._swept)

    def _swept(self, removed: Any) -> Any:
        self._sweeping = False
        if isinstance(removed, int) and removed:
            log.info("removed {n} expired upload(s)", n=removed)
        return removed

    def _sweep_now(self) -> int:
        """
        In a thread (or at start-up): each upload (an id with a state, or a
        data file left without one) removed when expired or unreadable.
        """
        now = self._clock.seconds()
        ids = set()
        for name in os.listdir(self.folder):
            upload_id, suffix = os.path.splitext(name)
            if suffix in (STATE, DATA) and is_upload_id(upload_id) and upload_id not in self._appending:
                ids.add(upload_id)
        removed = 0
        for upload_id in ids:
            state = self._read(upload_id)
            if state is not None and state.expires_at(self.expiry) > now:
                continue
            if _appending_elsewhere(self._path(upload_id, DATA)):
                continue  # another worker's append, longer than the expiry: its upload is alive
            _unlink(self._path(upload_id, DATA))
            _unlink(self._path(upload_id, STATE))
            self._hashes.pop(upload_id, None)
            if state is not None and not state.complete:
                self.events.upload_event(state.protocol, "expired")
            removed += 1
        return removed

    # -- reading and saving states --------------------------------------------

    def _read(self, upload_id: str) -> PendingState | None:
        try:
            with open(self._path(upload_id, STATE), "rb") as f:
                return PendingState.from_json(f.read(64 * 1024))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            log.warn("upload {id}: unreadable state ({error})", id=upload_id, error=error)
            return None

    def find(self, upload_id: str) -> PendingState | None:
        """
        The upload C{upload_id}, or None (no such id, removed, expired).
        Reads a small file on the reactor, as a stat would.
        """
        if not is_upload_id(upload_id):
            return None
        state = self._read(upload_id)
        if state is None or state.expires_at(self.expiry) <= self._clock.seconds():
            return None
        return state

    def _save_now(self, state: PendingState) -> None:
        """In a thread: C{state} on disk, durably, in place of the one before."""
        temp = self._path(state.id, STATE + TEMP)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            data = state.to_json()
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temp, self._path(state.id, STATE))
        _fsync_folder(self.folder)

    def seconds_left(self, state: PendingState) -> float:
        """How long C{state} has before it expires, untouched."""
        return state.expires_at(self.expiry) - self._clock.seconds()

    def touched(self, state: PendingState, **changes: Any) -> PendingState:
        return attrs.evolve(state, touched=self._clock.seconds(), **changes)

    # -- creating and cancelling ----------------------------------------------

    def create(self, segments: tuple[str, ...], checks: WriteChecks, *, length: int | None,
               protocol: str, metadata: dict[str, str] | None = None) -> Deferred[PendingState]:
        """
        A new upload of C{segments} (its data file made, its state saved
        durably: what the client is told of exists); 413 for a length past
        the limit, 503 when too many are pending.
        """
        if length is not None and length > self.max_bytes:
            return fail(HTTPError(413, f"upload too large: at most {self.max_bytes} bytes"))
        now = self._clock.seconds()
        state = PendingState(
            id=secrets.token_urlsafe(ID_BYTES), segments=segments, created=now, touched=now, length=length,
            protocol=protocol, expected=encode_digests(checks.expected), preconditions=checks.preconditions,
            metadata=dict(metadata or {}),
        )
        self._hashes[state.id] = (0, Hashes(checks.expected))

        def make() -> PendingState:
            pending = sum(1 for name in os.listdir(self.folder) if name.endswith(STATE))
            if pending >= self.max_pending:
                raise HTTPError(503, "too many uploads pending: try again later", {b"retry-after": b"60"})
            # The state first: a sweep meanwhile (another thread, another
            # worker) takes a data file without a state for a leftover.
            self._save_now(state)
            fd = os.open(self._path(state.id, DATA), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            os.close(fd)
            return state

        def made(state: PendingState) -> PendingState:
            self.events.upload_event(protocol, "started")
            return state

        return self._run_blocking(make).addCallbacks(made, self._disk_failed, errbackArgs=(state,))

    def cancel(self, state: PendingState) -> Deferred[None]:
        """Remove the upload and its data (409 while an append holds it)."""
        if state.id in self._appending:
            return fail(HTTPError(409, "an append to this upload is in progress"))
        self._hashes.pop(state.id, None)

        def remove() -> None:
            _unlink(self._path(state.id, STATE))
            _unlink(self._path(state.id, DATA))
            _fsync_folder(self.folder)

        def removed(_: None) -> None:
            if not state.complete:
                self.events.upload_event(state.protocol, "cancelled")

        return self._run_blocking(remove).addCallback(removed)

    def _disk_failed(self, reason: Failure, state: PendingState) -> Failure:
        if reason.check(OSError):
            self._hashes.pop(state.id, None)
            raise write_failed(reason.value, f"upload {state.id}")
        return reason

    # -- appending ------------------------------------------------------------

    def append(self, state: PendingState, flow: Any, *, offset: int, complete: bool | None,
               content_length: int | None, content_digests: dict[str, bytes] | None = None,
               content_algorithms: Mapping[str, Callable[[], Any]] = ALGORITHMS) -> Append:
        """
        Begin an append of the request body (the C{flow}) at C{offset}:
        the L{Append} that takes the body, or the L{HTTPError} refusing it
        (L{Conflict} for a wrong offset or an append in progress).

        @param complete: whether this body ends the upload (the draft says
            so in each request); None: it does if it reaches the upload's
            length (tus: the length is known from the start).
        @param content_digests: what this body's own digests must be
            (L{ContentMismatch} otherwise: nothing appended), by the names
            of C{content_algorithms}.
        """
        if state.complete:
            raise UploadCompleted(state)
        if offset != state.offset:
            raise Conflict(state, f"the upload's offset is {state.offset}, not {offset}")
        if state.id in self._appending:
            raise Conflict(state, "another append to this upload is in progress")
        limit = self.max_bytes if state.length is None else state.length
        if content_length is not None and offset + content_length > limit:
            raise HTTPError(413, f"upload too large: at most {limit} bytes")
        if complete and state.length is not None and content_length is not None and \
                offset + content_length != state.length:
            raise InconsistentLength(state, "this append does not end the upload at its length")
        try:
            fd = os.open(self._path(state.id, DATA), os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise HTTPError(404, "no such upload") from None
        except OSError as error:
            raise write_failed(error, f"upload {state.id}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another process's append
        except OSError:
            os.close(fd)
            raise Conflict(state, "another append to this upload is in progress") from None
        try:
            _position(fd, offset)  # a crash may have left bytes past the durable offset
        except OSError as error:
            os.close(fd)
            raise write_failed(error, f"upload {state.id}") from None
        hashed = self._hashes.get(state.id)
        hashes = hashed[1] if hashed is not None and hashed[0] == offset else None
        append = Append(self, state, fd, flow, hashes=hashes, complete=complete, limit=limit - offset,
                        content_digests=content_digests or {}, content_algorithms=content_algorithms)
        self._appending[state.id] = append
        if state.interrupted:
            self.events.upload_event(state.protocol, "resumed")
        return append

    def _append_ended(self, append: Append) -> None:
        self._appending.pop(append.state.id, None)

    def _hashes_reach(self, upload_id: str, offset: int, hashes: Hashes | None) -> None:
        if hashes is None:
            self._hashes.pop(upload_id, None)
        else:
            self._hashes[upload_id] = (offset, hashes)

    def _rehash(self, state: PendingState) -> Deferred[Hashes]:
        """The hashes of the upload's first C{offset} bytes, read again (in a thread)."""
        algorithms = state.expected_digests()

        def read() -> Hashes:
            hashes = Hashes(algorithms)
            left = state.offset
            with open(self._path(state.id, DATA), "rb") as f:
                while left:
                    data = f.read(min(REHASH_CHUNK, left))
                    if not data:
                        raise OSError(errno.EIO, "the upload's data is shorter than its offset")
                    hashes.update(data)
                    left -= len(data)
            return hashes

        return self._run_blocking(read)

    def _complete(self, state: PendingState, hashes: Hashes | None) -> Deferred[Appended]:
        """Check the whole representation and have the store install it; the state saved as complete."""
        if state.length is not None and state.offset != state.length:
            return fail(InconsistentLength(state, f"the upload ends at {state.offset}, not at its length {state.length}"))
        got = succeed(hashes) if hashes is not None else self._rehash(state)
        digests: dict[str, bytes] = {}

        def install(hashes: Hashes) -> Deferred[Installed]:
            checks = WriteChecks(state.preconditions, state.expected_digests())
            checks.hashes = hashes
            digests.update(hashes.digests())
            bad = mismatches(checks.expected, digests)
            if bad:
                raise HTTPError(400, f"the upload does not match its {bad[0]} digest")
            # The data file is the store's from here, whichever way it ends.
            return self.store.install_file(state.segments, checks, self._path(state.id, DATA))

        def installed(done: Installed) -> Deferred[Appended]:
            self.events.upload_event(state.protocol, "completed")
            final = self.touched(state, complete=True, length=state.offset,
                                 installed={"etag": done.etag, "size": done.size, "mtime": done.mtime,
                                            "created": done.created})
            return self._run_blocking(self._save_now, final).addCallback(
                lambda _: Appended(final, done, digests))

        def failed(reason: Failure) -> Failure:
            # The upload cannot become that file: it goes (the client starts again).
            self._hashes.pop(state.id, None)
            self._run_blocking(_unlink_both, self._path(state.id, STATE), self._path(state.id, DATA))
            return reason

        return got.addCallback(install).addCallback(installed).addErrback(failed)


class Conflict(HTTPError):
    """409: the offset is not the upload's, or another append holds it; C{state} says the real offset."""

    def __init__(self, state: PendingState, message: str) -> None:
        super().__init__(409, message)
        self.state = state


class ContentMismatch(HTTPError):
    """400: an append's body is not what its own digest (C{Content-Digest}, tus's C{Upload-Checksum}) says."""

    def __init__(self, algorithm: str) -> None:
        super().__init__(400, f"the content does not match its {algorithm} digest")
        self.algorithm = algorithm


class UploadCompleted(HTTPError):
    """An append to an upload that is complete already."""

    def __init__(self, state: PendingState) -> None:
        super().__init__(400, "the upload is complete already")
        self.state = state


class InconsistentLength(HTTPError):
    """A length that contradicts the one known, or an upload completed short of its length (C{state}: None at a creation)."""

    def __init__(self, state: PendingState | None, message: str) -> None:
        super().__init__(400, message)
        self.state = state


@implementer(IBodyConsumer)
class Append:
    """
    One request body appended to a pending upload: written at its offset
    by a L{DiskWriter}, then (complete or cut) C{fsync}'ed and the new
    offset saved; the completing one installed. L{done} fires with an
    L{Appended} (also for a cut body: what arrived is kept), or fails.

    It owns the data file's descriptor (and its lock) and closes it once
    the offset is saved, whichever way the body ended.
    """

    def __init__(self, uploads: PendingUploads, state: PendingState, fd: int, flow: Any, *,
                 hashes: Hashes | None, complete: bool | None, limit: int, content_digests: dict[str, bytes],
                 content_algorithms: Mapping[str, Callable[[], Any]] = ALGORITHMS) -> None:
        self.uploads = uploads
        self.state = state
        self.done: Deferred[Appended] = Deferred()
        self.limit = limit  # bytes this body may have
        self._fd: int | None = fd
        self._complete = complete
        self._hashes = hashes
        self._content = Hashes(content_digests, table=content_algorithms, stored=False) if content_digests else None
        self._content_expected = content_digests
        self._writer = DiskWriter(fd, _Tee(hashes, self._content), flow, uploads._run_blocking,
                                  uploads._high_water, self._write_failed)
        self._ended = False

    @property
    def received(self) -> int:
        return self._writer.size

    # IBodyConsumer

    def write(self, data: bytes) -> None:
        if self._ended:
            return
        if self._writer.size + len(data) > self.limit:
            self._ended = True
            self._writer.write(data[: self.limit - self._writer.size])
            self._end(HTTPError(413, f"upload too large: at most {self.state.offset + self.limit} bytes"))
            return
        self._writer.write(data)

    def body_done(self) -> None:
        if not self._ended:
            self._ended = True
            self._end(None)

    def body_failed(self, reason: Failure) -> None:
        """The body was cut: what arrived is kept."""
        if not self._ended:
            self._ended = True
            self._end(reason.value if isinstance(reason.value, HTTPError) else None, cut=True)

    # ending

    def _end(self, error: HTTPError | None, *, cut: bool = False) -> None:
        if self.done.called:
            return  # the disk failed already
        self._writer.flush().addCallback(self._flushed, error, cut).addErrback(self._failed)

    def _flushed(self, _: None, error: HTTPError | None, cut: bool) -> Deferred[Any]:
        uploads, size = self.uploads, self._writer.size
        bad = []
        if self._content is not None:
            bad = mismatches(self._content_expected, self._content.digests())
        if bad and not cut:
            # This request's content is not what it said: not appended (the
            # offset stays, so its bytes do not count), and the hashes of the
            # representation have seen them: computed again if needed.
            uploads._hashes_reach(self.state.id, -1, None)
            return self._finish_with(self.state, ContentMismatch(bad[0]))
        if cut and self._content is not None:
            size = 0  # a digest of a whole body cannot vouch for a part of it
        state = uploads.touched(self.state, offset=self.state.offset + size, interrupted=cut)
        completing = self._complete if self._complete is not None else (
            not cut and error is None and state.length is not None and state.offset == state.length)
        valid = self._hashes is not None and not (cut and self._content is not None)
        uploads._hashes_reach(self.state.id, state.offset, self._hashes if valid else None)

        def saved(_: None) -> Any:
            self.state = state
            if size:
                uploads.events.upload_appended(state.protocol, size)
            if error is not None or cut or not completing:
                return self._finish_with(state, error)
            self._close()
            uploads._append_ended(self)
            hashes = self._hashes
            return uploads._complete(state, hashes).addCallbacks(self._settle, self._settle_failure)

        return uploads._run_blocking(_sync_and_save, self._fd, uploads, state).addCallback(saved)

    def _finish_with(self, state: PendingState, error: HTTPError | None) -> None:
        self._close()
        self.uploads._append_ended(self)
        if error is not None:
            self._settle_failure(Failure(error))
        else:
            self._settle(Appended(state))

    def _write_failed(self, reason: Failure) -> None:
        self._ended = True
        self._failed(reason)

    def _failed(self, reason: Failure) -> None:
        """The disk failed: the durable offset stays what it was."""
        if self.done.called:
            return
        self._writer.stop().addCallback(lambda _: self._close())
        self.uploads._append_ended(self)
        self.uploads._hashes_reach(self.state.id, -1, None)
        error = reason.value
        if isinstance(error, OSError):
            error = write_failed(error, f"upload {self.state.id}")
        elif not isinstance(error, HTTPError):
            log.failure("append to upload {id} failed", failure=reason, id=self.state.id)
            error = HTTPError(500, "could not store the upload")
        self._settle_failure(Failure(error))

    def _close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # the lock goes with it

    def _settle(self, result: Appended) -> None:
        if not self.done.called:
            self.done.callback(result)

    def _settle_failure(self, reason: Failure) -> None:
        if not self.done.called:
            self.done.errback(reason)


@implementer(IBodyConsumer)
class HeldBody:
    """
    A creating request's body on its way into an L{Append}, held back
    until there is one (the upload is being saved): what arrives before
    (one socket read, the socket paused meanwhile) is kept, then handed on
    in order. The protocols' creations subclass it.
    """

    def __init__(self, request: IRequest, paused: bool) -> None:
        self._request = request
        self._append: Append | None = None
        self._queue: list[bytes] = []
        self._ended: Failure | bool = False  # True: done; a Failure: failed
        self._paused = paused
        if paused:
            request.pause_body()

    def _begin(self, append: Append) -> None:
        self._append = append
        for data in self._queue:
            append.write(data)
        self._queue = []
        ended = self._ended
        if ended is True:
            append.body_done()
        elif isinstance(ended, Failure):
            append.body_failed(ended)
        if self._paused:
            self._paused = False
            self._request.resume_body()

    def _cannot_begin(self) -> None:
        """No append will come (the request is answered): nothing more to hand on."""
        self._queue = []
        if self._paused:
            self._paused = False

    def write(self, data: bytes) -> None:
        if self._append is not None:
            self._append.write(data)
        elif self._ended is False:
            self._queue.append(data)

    def body_done(self) -> None:
        if self._append is not None:
            self._append.body_done()
        else:
            self._ended = True

    def body_failed(self, reason: Failure) -> None:
        if self._append is not None:
            self._append.body_failed(reason)
        else:
            self._ended = reason


class _Tee:
    """The hashes of the representation (if still valid) and of this request's content, fed together."""

    def __init__(self, *hashes: Hashes | None) -> None:
        self._all = [h for h in hashes if h is not None]

    def update(self, data: bytes) -> None:
        for h in self._all:
            h.update(data)


def _appending_elsewhere(path: str) -> bool:
    """Whether another process's append holds the data file's lock (L{PendingUploads.append} takes it)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return False  # no data file: nothing holds it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # (the lock, if taken, goes with it)
    return False


def _position(fd: int, offset: int) -> None:
    """In a thread: the file cut at C{offset} and the next write placed there."""
    if os.fstat(fd).st_size != offset:
        os.ftruncate(fd, offset)
    os.lseek(fd, offset, os.SEEK_SET)


def _sync_and_save(fd: int | None, uploads: PendingUploads, state: PendingState) -> None:
    """In a thread: the bytes on disk, then the offset that counts them."""
    if fd is not None:
        os.fsync(fd)
    uploads._save_now(state)


def _fsync_folder(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _unlink_both(state_path: str, data_path: str) -> None:
    _unlink(state_path)
    _unlink(data_path)


