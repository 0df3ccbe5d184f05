# -*- test-case-name: tests.test_upload -*-
"""
C{PUT} and C{DELETE /files}: a body streamed to disk as it arrives, and
installed whole or not at all.

An upload is decided when its headers arrive (token, path, preconditions,
digest fields: 401/400/403/404/409/412 before a byte of the body is read),
then streamed into a temporary dot-name in the target folder, never listed
nor served. Once the body is complete and its digests check out, the file
is C{fsync}'ed, put in place by one atomic rename and the folder
C{fsync}'ed: the previous version is served until that rename, and a
client that hears 201/204 knows the bytes are on disk. Every other ending
(the client leaves, the body passes the limit or stalls, a digest does not
match, the disk fails) removes the temporary file and leaves the old one
alone.

Disk work that can take long (writes when the page cache is full, fsync,
unlinking a big file) runs in a thread pool of the uploads' own, one job at a time
per upload. While a job runs, what arrives is kept, up to C{high_water}
bytes; past that the socket is not read (C{pause_body}) until the disk has
caught up: a client faster than the disk costs one buffer, not its body.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import secrets
import stat
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from streamsvc._threads import PoolRunner
from streamsvc._transport import request_over
from streamsvc.auth import TokenSet, check_bearer
from streamsvc.digests import (
    STORED_ALGORITHM,
    DigestError,
    Hashes,
    expected_digests,
    field,
    mismatches,
)
from streamsvc.errors import HTTPError, render_error
from streamsvc.files.fields import list_header, singleton_header
from streamsvc.files.paths import (
    RETRY_AFTER,
    fsync_folders,
    open_folder,
    remove_empty_folders,
    write_segments,
)
from streamsvc.interfaces import IBodyConsumer
from streamsvc.ranges import http_date, make_etag, write_allowed

log = Logger()


#: Runs a blocking call off the reactor and gives its result as a Deferred.
#: Tests pass one that runs it at once, or holds it to release later.
RunBlocking = Callable[..., Deferred]

#: Bytes an upload keeps while the disk is busy before the socket is paused:
#: large enough that each thread job writes a good run of bytes, far below
#: the 16 MiB an upload may cost (BENCHMARKS.md).
DEFAULT_HIGH_WATER = 1024 * 1024

#: The least a disk job writes (but the body's end): gathered from reads of
#: the socket, so that a thread hop is paid per 256 KiB, not per 64 KiB.
JOB_SIZE = 256 * 1024

#: Bytes between two requests to the disk to start writing (see
#: L{Upload._start_writeback}).
WRITEBACK_STEP = 8 * 1024 * 1024

#: Threads writing uploads: more would only queue in the disk.
DISK_THREADS = 4

#: The default longest upload (C{[limits] max_upload_bytes}).
DEFAULT_MAX_UPLOAD_BYTES = 1024**3

#: Temporary names: a dot-name (never listed, served nor writable through
#: the API). Start-up removes those no live upload holds locked
#: (L{remove_stale_uploads}); a DELETE renames its file to one before
#: unlinking it.
TEMP_PREFIX = ".streamsvc-upload-"
TEMP_SUFFIX = ".tmp"

#: Errors that mean the disk (or the quota) is full: 507.
_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
#: Errors that mean we are short of descriptors or memory for now: 503.
_BUSY = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM})
#: Errors about the name: it (or a folder on the way) is not there, or is a
#: symlink that may not be followed.
_NO_SUCH = frozenset({errno.ENOENT, errno.ELOOP})

_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW


def write_failed(error: OSError, what: str) -> HTTPError:
    """
    The answer to C{error}, raised writing C{what} (a path, for the log only).

    The client's own mistakes are 4xx (a name too long: 400; a folder in the
    way: 409; a path that leads nowhere: 404). A full disk is 507, a
    shortage of descriptors or memory a 503 to retry; anything else
    (permissions, a read-only disk, an I/O error) is the server's problem: a
    500, logged here with the errno, which the client's answer leaves out.
    """
    code = error.errno
    if code in _NO_SUCH:
        return HTTPError(404, "not found")
    if code == errno.ENAMETOOLONG:
        return HTTPError(400, "name too long")
    if code in (errno.EISDIR, errno.ENOTDIR, errno.ENOTEMPTY, errno.EEXIST):
        return HTTPError(409, "a folder or file is in the way of this path")
    log.error(
        "could not write {what}: {errno_name} ({strerror})",
        what=what,
        errno_name=errno.errorcode.get(code or 0, str(code)),
        strerror=error.strerror,
    )
    if code in _FULL:
        return HTTPError(507, "insufficient storage")
    if code in _BUSY:
        return HTTPError(
            503, "temporarily unable to store files", {b"retry-after": b"%d" % (RETRY_AFTER,)}
        )
    return HTTPError(500, "could not store the file")


def _current(folder_fd: int, name: str) -> tuple[str, int] | None:
    """
    The strong ETag and last-modified second of the regular file C{name}
    in the folder, None when there is none; 409 for anything else there (a
    folder, a symlink: neither is replaced nor deleted through the API).
    """
    try:
        st = os.stat(name, dir_fd=folder_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise write_failed(error, name) from None  # a name too long: 400
    if not stat.S_ISREG(st.st_mode):
        kind = "folder" if stat.S_ISDIR(st.st_mode) else "special file or symlink"
        raise HTTPError(409, f"a {kind} is at this path")
    return make_etag(st.st_size, st.st_mtime_ns), int(st.st_mtime)


class _Preconditions:
    """A write's If-Match / If-None-Match / If-Unmodified-Since, checked twice."""

    def __init__(self, request: IRequest) -> None:
        self.if_match = list_header(request, b"if-match")
        self.if_none_match = list_header(request, b"if-none-match")
        self.if_unmodified_since = singleton_header(request, b"if-unmodified-since")

    @property
    def create_only(self) -> bool:
        return self.if_none_match is not None and self.if_none_match.strip() == "*"

    def check(self, current: tuple[str, int] | None) -> None:
        allowed = write_allowed(
            current=current,
            if_match=self.if_match,
            if_none_match=self.if_none_match,
            if_unmodified_since=self.if_unmodified_since,
        )
        if not allowed:
            raise HTTPError(412, "precondition failed")


def _refuse_partial(request: IRequest) -> None:
    """
    A PUT with C{Content-Range} is a 400 (RFC 9110 §14.5: storing the
    fragment as the whole file would destroy it). (One with a
    C{Content-Encoding} never gets here: a 415 from L{streamsvc.body}, as
    for every body no resource decodes.)
    """
    if request.requestHeaders.hasHeader(b"content-range"):
        raise HTTPError(400, "PUT with Content-Range (partial update) is not supported")


class Uploads:
    """
    PUT and DELETE below C{root}, for L{streamsvc.files.FilesResource}.

    Every request needs a Bearer token from C{tokens}; with none configured
    uploads are disabled (403, whatever the credentials).

    @param run_blocking: runs a blocking call off the reactor and returns a
        Deferred of its result. By default a thread pool of the uploads' own
        (started with C{reactor}, stopped at its shutdown), so a slow disk
        cannot starve DNS lookups and whatever else uses the reactor's pool.
    """

    def __init__(
        self,
        root: str,
        tokens: TokenSet,
        *,
        reactor: Any = None,
        run_blocking: RunBlocking | None = None,
        high_water: int = DEFAULT_HIGH_WATER,
    ) -> None:
        self.root = os.path.realpath(root)
        self._tokens = tokens
        self._high_water = high_water
        if run_blocking is None:
            if reactor is None:
                from twisted.internet import reactor as default_reactor

                reactor = default_reactor
            run_blocking = DiskThreadPool(reactor)
        self._run_blocking = run_blocking

    def authorize(self, request: IRequest) -> None:
        """Raise the L{HTTPError} a request without the right to write gets."""
        if not len(self._tokens):
            raise HTTPError(403, "uploads are disabled: no tokens are configured")
        error = check_bearer(request, self._tokens)
        if error is not None:
            raise error

    def put(self, request: IRequest) -> Upload:
        """
        Decide on a PUT, when its headers are in; the L{Upload} that takes
        its body, or an L{HTTPError} (answered before the body is read).
        """
        self.authorize(request)
        segments = write_segments(request.postpath)
        _refuse_partial(request)
        try:
            expected = expected_digests(
                list_header(request, b"content-digest"),
                list_header(request, b"digest"),
                list_header(request, b"repr-digest"),
            )
        except DigestError as error:
            raise HTTPError(400, str(error)) from None
        preconditions = _Preconditions(request)
        folders, name = segments[:-1], segments[-1]
        path = os.path.join(self.root, *segments)
        try:
            try:
                folder_fd, created = open_folder(self.root, folders, create=False)
            except FileNotFoundError:
                # No folder, so no file: decided before anything is created.
                preconditions.check(None)
                folder_fd, created = open_folder(self.root, folders, create=True)
        except OSError as error:
            raise write_failed(error, path) from None
        try:
            preconditions.check(_current(folder_fd, name))
            temp = _temp_name()
            try:
                fd = os.open(temp, _TEMP_FLAGS, 0o644, dir_fd=folder_fd)
            except OSError as error:
                raise write_failed(error, path) from None
            # Held while the upload lives: start-up cleaning (of another
            # process sharing the folder) leaves a locked temporary file alone.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BaseException:
            os.close(folder_fd)
            if created:
                remove_empty_folders(self.root, folders, created)
            raise
        return Upload(
            request,
            root=self.root,
            folder_fd=folder_fd,
            fd=fd,
            temp=temp,
            segments=segments,
            created=created,
            expected=expected,
            preconditions=preconditions,
            run_blocking=self._run_blocking,
            high_water=self._high_water,
        )

    def delete(self, request: IRequest) -> int:
        """
        C{DELETE}: 204 once the name is gone from the folder (on disk).

        The check and the removal of the name happen together on the
        reactor: the file is renamed to a temporary name right after its
        preconditions held (so no upload can be installed in between and
        then deleted), and unlinked, which frees its blocks and can take
        long for a big file, in a thread.
        """
        self.authorize(request)
        segments = write_segments(request.postpath)
        preconditions = _Preconditions(request)
        path = os.path.join(self.root, *segments)
        try:
            folder_fd, _ = open_folder(self.root, segments[:-1], create=False)
        except OSError as error:
            raise write_failed(error, path) from None
        temp = _temp_name()
        try:
            current = _current(folder_fd, segments[-1])
            if current is None:
                raise HTTPError(404, "not found")
            preconditions.check(current)
            try:
                os.rename(segments[-1], temp, src_dir_fd=folder_fd, dst_dir_fd=folder_fd)
            except OSError as error:
                raise write_failed(error, path) from None
        except BaseException:
            os.close(folder_fd)
            raise

        def remove() -> None:
            try:
                os.unlink(temp, dir_fd=folder_fd)
                os.fsync(folder_fd)
            finally:
                os.close(folder_fd)

        def done(_: None) -> None:
            if not request_over(request):
                request.setResponseCode(204)
                request.write(b"")
                request.finish()

        def failed(reason: Failure) -> None:
            # The name is gone already; what failed is freeing or syncing.
            log.failure("DELETE {path}: could not finish removing it", failure=reason, path=path)
            error = reason.value
            _answer_error(
                request,
                write_failed(error, path)
                if isinstance(error, OSError)
                else HTTPError(500, "could not delete the file"),
            )

        self._run_blocking(remove).addCallbacks(done, failed)
        return NOT_DONE_YET  # type: ignore[no-any-return]


    def make_folder(self, request: IRequest) -> int:
        """
        C{PUT /files/<path>/} without a body: the folder (and those on the
        way) made, 201, or 200 when it was there already; 409 when a file
        is in the way. The folders holding the new ones are fsync'ed in a
        thread before the answer, as after an upload.
        """
        self.authorize(request)
        segments = write_segments(request.postpath[:-1])
        path = os.path.join(self.root, *segments)
        try:
            fd, created = open_folder(self.root, segments, create=True)
        except OSError as error:
            raise write_failed(error, path) from None
        os.close(fd)

        def done(_: None) -> None:
            if not request_over(request):
                request.setResponseCode(201 if created else 200)
                request.setHeader(b"content-type", b"application/json")
                request.write(json.dumps({"folder": "/".join(segments), "created": bool(created)}).encode() + b"\n")
                request.finish()

        def failed(reason: Failure) -> None:
            log.failure("PUT {path}/: could not sync the new folder", failure=reason, path=path)
            _answer_error(request, HTTPError(500, "could not create the folder"))

        self._run_blocking(fsync_folders, self.root, segments, created).addCallbacks(done, failed)
        return NOT_DONE_YET  # type: ignore[no-any-return]


def _temp_name() -> str:
    return f"{TEMP_PREFIX}{secrets.token_hex(8)}{TEMP_SUFFIX}"


def DiskThreadPool(reactor: Any, *, threads: int = DISK_THREADS) -> PoolRunner:
    """The uploads' L{RunBlocking}: a pool of their own, stopped at C{reactor}'s shutdown."""
    return PoolRunner(reactor, threads, "streamsvc-disk", stop_at_shutdown=True)


def _answer_error(request: IRequest, error: HTTPError) -> None:
    """Answer C{error} if the request can still be answered; abort if it began."""
    if request_over(request):
        return
    if request.startedWriting:
        request.channel.transport.abortConnection()
        return
    fail = getattr(request, "fail_body", None)
    if fail is not None:
        fail(error)  # a BodyRequest: it also stops reading what is left
        return
    request.write(render_error(request, error))
    request.finish()


@implementer(IBodyConsumer)
class Upload:
    """
    One PUT's body on its way to disk: the temporary file, its hashes, and
    the install at the end.

    States: receiving (bytes written by one thread job at a time), then
    either installing (body done: digests checked, fsync, rename, fsync of
    the folders, answer) or discarding (any failure: the temporary file, and
    the folders this upload created, are removed once no job uses them). It
    owns C{fd} and C{folder_fd} and closes both exactly once, whichever way
    it ends.
    """

    def __init__(
        self,
        request: IRequest,
        *,
        root: str,
        folder_fd: int,
        fd: int,
        temp: str,
        segments: tuple[str, ...],
        created: list[int],
        expected: dict[str, bytes],
        preconditions: _Preconditions,
        run_blocking: RunBlocking,
        high_water: int,
    ) -> None:
        self._request = request
        self._root = root
        self._folder_fd: int | None = folder_fd
        self._fd: int | None = fd
        self._temp = temp
        self._segments = segments
        self._created = created  # folders to remove if this upload fails
        self._created_installed: list[int] = []  # ... or to fsync once it is in place
        self._old: int | None = None  # the replaced version, open until released
        self._expected = expected
        self._preconditions = preconditions
        self._run_blocking = run_blocking
        self._high_water = high_water
        # A thread job per read of the socket (64 KiB) would cost a thread
        # hop each; a job takes what gathered, at least this much.
        self._job_size = min(JOB_SIZE, high_water)
        self._hashes = Hashes(expected)
        self._written_bytes = 0  # (these two: the thread job's own)
        self._flushed_to = 0
        self._buffer = bytearray()
        self._busy = False  # a thread job is using the file
        self._paused = False
        self._body_done = False
        self._ended = False  # installed or discarded: nothing more to do
        self.size = 0

    @property
    def path(self) -> str:
        return "/".join(self._segments)

    # IBodyConsumer

    def write(self, data: bytes) -> None:
        if self._ended:
            return
        self._buffer += data
        self.size += len(data)
        if not self._busy and len(self._buffer) >= self._job_size:
            self._write_buffer()
        elif len(self._buffer) >= self._high_water and not self._paused:
            self._paused = True
            self._request.pause_body()  # the disk is behind: our wait, not the client's

    def body_done(self) -> None:
        if self._ended:
            return
        self._body_done = True
        if not self._busy:
            self._write_buffer() if self._buffer else self._install()

    def body_failed(self, reason: Failure) -> None:
        """The body will not be complete: nothing is installed."""
        if not self._ended:
            self._discard()

    # receiving

    def _write_buffer(self) -> None:
        data, self._buffer = self._buffer, bytearray()  # the thread's alone now
        self._busy = True
        self._run_blocking(self._write_all, self._fd, data).addCallback(self._written).addErrback(
            self._disk_failed
        )

    def _write_all(self, fd: int, data: bytearray) -> None:
        """
        In a thread: all of C{data} to the file, and into the hashes; and
        every L{WRITEBACK_STEP} bytes, the disk asked to start writing what
        came before (see L{_start_writeback}).
        """
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        self._hashes.update(data)
        self._written_bytes += len(data)
        if self._written_bytes - self._flushed_to >= 2 * WRITEBACK_STEP:
            _start_writeback(fd, self._flushed_to, WRITEBACK_STEP)
            self._flushed_to += WRITEBACK_STEP

    def _written(self, _: None) -> None:
        self._busy = False
        if self._ended:  # failed meanwhile: the file can go now
            self._release()
            return
        if self._paused and len(self._buffer) < self._high_water // 2:
            self._paused = False
            self._request.resume_body()
        if len(self._buffer) >= self._job_size or (self._buffer and self._body_done):
            self._write_buffer()
        elif self._body_done:
            self._install()

    # installing

    def _install(self) -> None:
        bad = mismatches(self._expected, self._hashes.digests())
        if bad:
            self._fail(HTTPError(400, f"body does not match its {bad[0]} digest"))
            return
        self._busy = True
        self._run_blocking(os.fsync, self._fd).addCallback(self._synced).addErrback(
            self._disk_failed
        )

    def _synced(self, _: None) -> None:
        """
        The bytes are on disk: put them in place. On the reactor, so no
        other upload of this process comes between the last check of the
        preconditions and the rename.
        """
        self._busy = False
        if self._ended:
            self._release()
            return
        assert self._fd is not None and self._folder_fd is not None
        folder_fd, name = self._folder_fd, self._segments[-1]
        st = os.fstat(self._fd)
        current = _current(folder_fd, name)
        self._preconditions.check(current)
        # Replacing a big file frees its blocks when its last name and
        # descriptor go; held open here, that happens in a thread (once
        # answered: see _release), not inside rename() on the reactor
        # (a second or more, for gigabytes).
        self._old = old = _open_quietly(name, folder_fd) if current is not None else None
        try:
            if self._preconditions.create_only:
                # link() cannot replace: a file that another process created
                # since the check stays, and this upload is refused.
                try:
                    os.link(self._temp, name, src_dir_fd=folder_fd, dst_dir_fd=folder_fd)
                except FileExistsError:
                    raise HTTPError(412, "precondition failed") from None
                try:
                    os.unlink(self._temp, dir_fd=folder_fd)
                except OSError as error:  # installed all the same: say so, not fail
                    log.warn("could not remove {temp}: {error}", temp=self._temp, error=error)
            else:
                os.rename(self._temp, name, src_dir_fd=folder_fd, dst_dir_fd=folder_fd)
        except BaseException:
            self._old = None
            if old is not None:
                os.close(old)
            raise
        self._temp = ""  # installed: nothing to remove any more
        self._created_installed = self._created
        self._created = []  # they hold the file now
        self._busy = True
        self._run_blocking(self._make_durable, folder_fd).addCallback(
            self._installed, st, current is None
        ).addErrback(self._disk_failed)

    def _make_durable(self, folder_fd: int) -> None:
        """In a thread: the new names on disk (the folder's, and new folders')."""
        os.fsync(folder_fd)
        if self._created_installed:
            fsync_folders(self._root, self._segments[:-1], self._created_installed)

    def _installed(self, _: None, st: os.stat_result, created: bool) -> None:
        self._busy = False
        self._ended = True
        try:
            self._answer(st, created)
        finally:
            self._release()  # after the answer: freeing a replaced file takes a while

    def _answer(self, st: os.stat_result, created: bool) -> None:
        request = self._request
        if request_over(request):
            return
        etag = make_etag(st.st_size, st.st_mtime_ns)
        digest = field({STORED_ALGORITHM: self._hashes.digests()[STORED_ALGORITHM]})
        request.setHeader(b"etag", etag.encode("ascii"))
        request.setHeader(b"last-modified", http_date(int(st.st_mtime)).encode("ascii"))
        # Repr-Digest, not Content-Digest: it describes the stored file (the
        # representation), where Content-Digest would have to describe this
        # answer's own body (RFC 9530 §2, §3).
        request.setHeader(b"repr-digest", digest)
        if not created:
            request.setResponseCode(204)
            request.write(b"")
            request.finish()
            return
        location = "/" + "/".join(
            quote(s.decode("utf-8", "surrogateescape"), safe="") for s in request.prepath
        )
        location += "/" + "/".join(quote(s, safe="") for s in self._segments)
        body = json.dumps(
            {"path": self.path, "size": st.st_size, "etag": etag, "digest": digest.decode()}
        ).encode() + b"\n"
        request.setResponseCode(201)
        request.setHeader(b"location", location.encode("ascii"))
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"content-length", b"%d" % (len(body),))
        request.write(body)
        request.finish()

    # failing

    def _disk_failed(self, reason: Failure) -> None:
        self._busy = False
        error = reason.value
        if isinstance(error, HTTPError):
            self._fail(error)  # a precondition that no longer holds, a folder in the way
        elif isinstance(error, OSError):
            self._fail(write_failed(error, os.path.join(*self._segments)))
        else:
            log.failure("upload of {path} failed", failure=reason, path=self.path)
            self._fail(HTTPError(500, "could not store the file"))

    def _fail(self, error: HTTPError) -> None:
        self._discard()
        _answer_error(self._request, error)

    def _discard(self) -> None:
        self._ended = True
        self._buffer = bytearray()
        self._paused = False
        if not self._busy:
            self._release()

    def _release(self) -> None:
        """
        Close both descriptors and remove the temporary file (and the
        folders this upload created, if still empty), once.
        """
        fd, self._fd = self._fd, None
        folder_fd, self._folder_fd = self._folder_fd, None
        old, self._old = self._old, None
        temp, self._temp = self._temp, ""
        created, self._created = self._created, []
        if fd is None or folder_fd is None:
            return
        root, folders = self._root, self._segments[:-1]

        def release() -> None:
            try:
                if temp:  # before closing: a close that fails (NFS) must not keep it
                    os.unlink(temp, dir_fd=folder_fd)
            finally:
                try:
                    os.close(fd)
                finally:
                    os.close(folder_fd)
                    if old is not None:
                        os.close(old)  # the replaced version: its blocks freed here
            if created:
                remove_empty_folders(root, folders, created)

        def failed(reason: Failure) -> None:
            log.failure("could not remove the temporary file {temp}", failure=reason, temp=temp)

        # Unlinking a big file can take a while: off the reactor too.
        self._run_blocking(release).addErrback(failed)


_QUIET_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def _open_quietly(name: str, folder_fd: int) -> int | None:
    """A descriptor on the file being replaced (see L{Upload._synced}), or None."""
    try:
        return os.open(name, _QUIET_FLAGS, dir_fd=folder_fd)
    except OSError:
        return None


def _start_writeback(fd: int, offset: int, length: int) -> None:
    """
    Start writing C{length} bytes at C{offset} to disk, without waiting.

    Without it every byte waits in the page cache for the final fsync,
    which then takes as long as the whole disk write (the upload's time is
    network plus disk, instead of the larger of the two), and an upload
    fills the page cache, pushing out the files being served. On Linux,
    C{POSIX_FADV_DONTNEED} starts the writeback of dirty pages (and drops
    the pages already written): the C{sync_file_range} trick for Python,
    which lacks it. Elsewhere it is a hint, or nothing.
    """
    advise = getattr(os, "posix_fadvise", None)
    if advise is not None:
        try:
            advise(fd, offset, length, os.POSIX_FADV_DONTNEED)
        except OSError:
            pass  # a hint: the final fsync is what makes it durable


def remove_stale_uploads(root: str) -> int:
    """
    Remove the temporary files of uploads nobody is writing any more (a
    crash, a kill), anywhere below C{root}; return how many. Run at start-up,
    before anything listens. A live upload holds an exclusive C{flock} on
    its file, so one of another process sharing the folder is left alone.
    """
    removed = 0
    for folder, _dirs, names in os.walk(root):
        for name in names:
            if name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX):
                removed += _remove_if_unlocked(os.path.join(folder, name))
    return removed


def _remove_if_unlocked(path: str) -> int:
    try:
        fd = os.open(path, _QUIET_FLAGS)
    except OSError:
        return 0
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return 0  # an upload in progress
    try:
        os.unlink(path)
        return 1
    except OSError:
        return 0
    finally:
        os.close(fd)
