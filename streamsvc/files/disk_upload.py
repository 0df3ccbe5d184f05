# -*- test-case-name: tests.test_upload,tests.test_file_stores -*-
"""
The local store's writes (L{streamsvc.files.local}): a body streamed to
disk as it arrives, and installed whole or not at all; deletes; folders.

An upload is decided when its headers arrive (path, preconditions:
404/409/412 before a byte of the body is read, L{begin}), then streamed into a temporary dot-name in the target folder, never listed
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
import os
import secrets
import stat
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from streamsvc._threads import PoolRunner
from streamsvc.errors import HTTPError
from streamsvc.files.paths import (
    RETRY_AFTER,
    fsync_folders,
    open_folder,
    remove_empty_folders,
)
from streamsvc.files.store import Installed, UploadAborted, WriteChecks, WritePreconditions
from streamsvc.interfaces import IUploadSink
from streamsvc.ranges import make_etag

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


def begin(
    root: str,
    segments: tuple[str, ...],
    checks: WriteChecks,
    flow: Any,
    run_blocking: RunBlocking,
    high_water: int,
) -> DiskUpload:
    """
    The L{DiskUpload} of a new version of C{segments} below C{root}: the
    folders on the way opened (or made: no folder means no file, so the
    preconditions are decided first), the current file checked against the
    preconditions, the locked temporary file made.
    """
    preconditions = checks.preconditions
    folders, name = segments[:-1], segments[-1]
    path = os.path.join(root, *segments)
    try:
        try:
            folder_fd, created = open_folder(root, folders, create=False)
        except FileNotFoundError:
            # No folder, so no file: decided before anything is created.
            preconditions.check(None)
            folder_fd, created = open_folder(root, folders, create=True)
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
            remove_empty_folders(root, folders, created)
        raise
    return DiskUpload(
        flow,
        root=root,
        folder_fd=folder_fd,
        fd=fd,
        temp=temp,
        segments=segments,
        created=created,
        checks=checks,
        run_blocking=run_blocking,
        high_water=high_water,
    )


def delete(
    root: str, segments: tuple[str, ...], preconditions: WritePreconditions, run_blocking: RunBlocking
) -> Deferred[None]:
    """
    Remove the file at C{segments}; a Deferred that fires once its name is
    gone from the folder, on disk.

    The check and the removal of the name happen together on the reactor:
    the file is renamed to a temporary name right after its preconditions
    held (so no upload can be installed in between and then deleted), and
    unlinked, which frees its blocks and can take long for a big file, in
    a thread.
    """
    path = os.path.join(root, *segments)
    try:
        folder_fd, _ = open_folder(root, segments[:-1], create=False)
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

    def failed(reason: Failure) -> None:
        # The name is gone already; what failed is freeing or syncing.
        log.failure("DELETE {path}: could not finish removing it", failure=reason, path=path)
        error = reason.value
        raise (
            write_failed(error, path)
            if isinstance(error, OSError)
            else HTTPError(500, "could not delete the file")
        )

    return run_blocking(remove).addErrback(failed)


def make_folder(root: str, segments: tuple[str, ...], run_blocking: RunBlocking) -> Deferred[bool]:
    """
    Make the folder at C{segments} (and those on the way); a Deferred of
    whether it was new, once the folders holding the new ones are
    C{fsync}'ed (in a thread), as after an upload. A file in the way: 409.
    """
    path = os.path.join(root, *segments)
    try:
        fd, created = open_folder(root, segments, create=True)
    except OSError as error:
        raise write_failed(error, path) from None
    os.close(fd)

    def failed(reason: Failure) -> None:
        log.failure("PUT {path}/: could not sync the new folder", failure=reason, path=path)
        raise HTTPError(500, "could not create the folder")

    return run_blocking(fsync_folders, root, segments, created).addCallbacks(lambda _: bool(created), failed)


def _temp_name() -> str:
    return f"{TEMP_PREFIX}{secrets.token_hex(8)}{TEMP_SUFFIX}"


def DiskThreadPool(reactor: Any, *, threads: int = DISK_THREADS) -> PoolRunner:
    """The uploads' L{RunBlocking}: a pool of their own, stopped at C{reactor}'s shutdown."""
    return PoolRunner(reactor, threads, "streamsvc-disk", stop_at_shutdown=True)


class DiskWriter:
    """
    Bytes that arrive on the reactor, written to C{fd} where it stands by
    thread jobs (one at a time, at least L{JOB_SIZE} each but the last) and
    fed into C{hashes} on the way; the socket is paused (C{flow.pause_body()})
    while C{high_water} bytes wait, and resumed below half of it. A PUT's
    body (L{DiskUpload}) and an append to a resumable upload
    (L{streamsvc.files.pending}) are written by one.

    A job that fails stops the writer: L{failed} is called with the failure
    (and a L{flush} waiting fails with it). The writer never closes C{fd}:
    its owner does, once L{idle} has fired.
    """

    def __init__(self, fd: int, hashes: Any, flow: Any, run_blocking: RunBlocking, high_water: int,
                 failed: Callable[[Failure], None]) -> None:
        self._fd = fd
        self._hashes = hashes
        self._flow = flow  # pause_body() / resume_body(): the request
        self._run_blocking = run_blocking
        self._high_water = high_water
        self._failed = failed
        # A thread job per read of the socket (64 KiB) would cost a thread
        # hop each; a job takes what gathered, at least this much.
        self._job_size = min(JOB_SIZE, high_water)
        self._written_bytes = 0  # (these two: the thread job's own)
        self._flushed_to = 0
        self._buffer = bytearray()
        self._busy = False  # a thread job is using the file
        self._paused = False
        self._stopped = False
        self._flushing: Deferred[None] | None = None
        self._waiting: list[Deferred[None]] = []
        self.size = 0  # bytes given to write()

    def write(self, data: bytes) -> None:
        if self._stopped:
            return
        self._buffer += data
        self.size += len(data)
        if not self._busy and len(self._buffer) >= self._job_size:
            self._write_buffer()
        elif len(self._buffer) >= self._high_water and not self._paused:
            self._paused = True
            self._flow.pause_body()  # the disk is behind: our wait, not the client's

    def flush(self) -> Deferred[None]:
        """A Deferred that fires once every byte given is in the file (not yet synced)."""
        assert self._flushing is None
        self._flushing = d = Deferred()
        if not self._busy:
            self._write_buffer() if self._buffer else self._flushed()
        return d

    def stop(self) -> Deferred[None]:
        """Write nothing more (what waits is dropped); a Deferred that fires once no job uses the file."""
        self._stopped = True
        self._buffer = bytearray()
        self._paused = False
        return self.idle()

    def idle(self) -> Deferred[None]:
        """A Deferred that fires once no job uses the file (at once, if none does)."""
        d: Deferred[None] = Deferred()
        if self._busy:
            self._waiting.append(d)
        else:
            d.callback(None)
        return d

    def _write_buffer(self) -> None:
        data, self._buffer = self._buffer, bytearray()  # the thread's alone now
        self._busy = True
        self._run_blocking(self._write_all, self._fd, data).addCallbacks(self._written, self._job_failed)

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
        if self._stopped:
            self._wake()
            return
        if self._paused and len(self._buffer) < self._high_water // 2:
            self._paused = False
            self._flow.resume_body()
        if len(self._buffer) >= self._job_size or (self._buffer and self._flushing is not None):
            self._write_buffer()
        elif self._flushing is not None:
            self._flushed()
        else:
            self._wake()

    def _flushed(self) -> None:
        flushing, self._flushing = self._flushing, None
        self._wake()
        if flushing is not None:
            flushing.callback(None)

    def _job_failed(self, reason: Failure) -> None:
        self._busy = False
        self._stopped = True
        self._buffer = bytearray()
        self._wake()
        flushing, self._flushing = self._flushing, None
        if flushing is not None:
            flushing.errback(reason)
        else:
            self._failed(reason)

    def _wake(self) -> None:
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)


@implementer(IUploadSink)
class DiskUpload:
    """
    One PUT's body on its way to disk: the temporary file, written by a
    L{DiskWriter} (which feeds C{checks.hashes}), and the install at the end.

    States: receiving (the writer's), then either installing (body done:
    digests checked, fsync, rename, fsync of the folders, answer) or
    discarding (any failure: the temporary file, and the folders this
    upload created, are removed once no job uses them). It owns C{fd} and
    C{folder_fd} and closes both exactly once, whichever way it ends.
    """

    def __init__(
        self,
        flow: Any,
        *,
        root: str,
        folder_fd: int,
        fd: int,
        temp: str,
        segments: tuple[str, ...],
        created: list[int],
        checks: WriteChecks,
        run_blocking: RunBlocking,
        high_water: int,
    ) -> None:
        self.done: Deferred[Installed] = Deferred()
        self._root = root
        self._folder_fd: int | None = folder_fd
        self._fd: int | None = fd
        self._temp = temp
        self._segments = segments
        self._created = created  # folders to remove if this upload fails
        self._created_installed: list[int] = []  # ... or to fsync once it is in place
        self._old: int | None = None  # the replaced version, open until released
        self._checks = checks
        self._preconditions = checks.preconditions
        self._run_blocking = run_blocking
        self._writer = DiskWriter(fd, checks.hashes, flow, run_blocking, high_water, self._disk_failed)
        self._busy = False  # an install job (fsync, rename's sync) is using the file
        self._ended = False  # installed or discarded: nothing more to do

    @property
    def path(self) -> str:
        return "/".join(self._segments)

    @property
    def size(self) -> int:
        return self._writer.size

    # IUploadSink

    def write(self, data: bytes) -> None:
        if not self._ended:
            self._writer.write(data)

    def finish(self) -> None:
        if not self._ended:
            self._writer.flush().addCallbacks(lambda _: self._install(), self._disk_failed)

    def abort(self) -> None:
        """The body will not be complete: nothing is installed."""
        if not self._ended:
            self._discard()
            self._settle(Failure(UploadAborted()))

    def adopt(self, path: str) -> None:
        """
        Take the complete file at C{path} (whose bytes C{checks.hashes} has
        seen) as this upload's body, instead of writing one
        (L{streamsvc.interfaces.IFileStore.install_file}): moved over the
        temporary file (copied, on another disk), then installed as a body
        that has ended is.
        """
        self._busy = True
        self._run_blocking(self._move_in, path).addCallback(self._moved_in).addErrback(self._disk_failed)

    def _move_in(self, path: str) -> int | None:
        """In a thread: C{path} as the temporary file; the descriptor on it, if it is a new one."""
        assert self._fd is not None and self._folder_fd is not None
        try:
            os.rename(path, self._temp, dst_dir_fd=self._folder_fd)
        except OSError as error:
            if error.errno != errno.EXDEV:
                raise
            with open(path, "rb") as source:  # another disk: copied into the temporary file
                while os.sendfile(self._fd, source.fileno(), None, 1 << 30):
                    pass
            os.unlink(path)
            return None
        fd = os.open(self._temp, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW, dir_fd=self._folder_fd)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd

    def _moved_in(self, fd: int | None) -> None:
        self._busy = False
        if fd is not None:
            old, self._fd = self._fd, fd
            if old is not None:
                os.close(old)  # the empty file it replaced
        if self._ended:
            self._release()
        else:
            self._install()

    # installing

    def _install(self) -> None:
        if self._ended:
            return
        try:
            self._checks.check_digests()
        except HTTPError as error:
            self._fail(error)
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
            self._settle(Installed(make_etag(st.st_size, st.st_mtime_ns), st.st_size, int(st.st_mtime), created))
        finally:
            self._release()  # after the answer: freeing a replaced file takes a while

    def _settle(self, result: Installed | Failure) -> None:
        """Fire L{done}, once."""
        if not self.done.called:
            if isinstance(result, Failure):
                self.done.errback(result)
            else:
                self.done.callback(result)

    # failing

    def _disk_failed(self, reason: Failure) -> None:
        self._busy = False
        if self._ended:
            return
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
        self._settle(Failure(error))

    def _discard(self) -> None:
        self._ended = True
        if not self._busy:
            self._writer.stop().addCallback(lambda _: self._release())

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
