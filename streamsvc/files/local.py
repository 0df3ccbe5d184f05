# -*- test-case-name: tests.test_files,tests.test_file_stores -*-
"""
The local store: C{/files} as a folder on this machine's disk (the
default, C{[files] store = local}).

Reads open the request's path race-free below the root (L{paths}), so no
spelling and no change on disk leads outside it, and the body is read from
the very descriptor whose C{fstat} gave the headers: headers and bytes
always describe one version. A small file an earlier request walked to is
opened again by its real path while it is fresh (L{FactsCache}): one
C{open}, C{fstat} and read. Writes go through L{streamsvc.files.disk_upload}:
a temporary dot-name, C{fsync}, one atomic rename.
"""

from __future__ import annotations

import os
import time
from typing import Any, BinaryIO

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from streamsvc._sendfile import SendfileProducer
from streamsvc.errors import HTTPError
from streamsvc.files import disk_upload
from streamsvc.files.disk_upload import (
    DEFAULT_HIGH_WATER,
    DiskThreadPool,
    RunBlocking,
    remove_stale_uploads,
)
from streamsvc.files.facts import FactsCache, FileFacts
from streamsvc.files.listing import DiskEntries
from streamsvc.files.paths import LIST_FLAGS, Target, open_failed, open_inside, open_regular, resolve
from streamsvc.files.store import Installed, WriteChecks, WritePreconditions
from streamsvc.interfaces import IFileStore, IReadAtOnce, IStoredFile, IStoredFolder, IStreamProducer
from streamsvc.producers import DEFAULT_CHUNK_SIZE, FileProducer, read_spans


@implementer(IStoredFile, IReadAtOnce)
class LocalFile:
    """A regular file opened below the root: its descriptor and facts."""

    __slots__ = ("facts", "name", "real", "_fd", "_file")

    def __init__(self, facts: FileFacts, name: str, real: str, *, fd: int | None = None,
                 file: BinaryIO | None = None) -> None:
        self.facts = facts
        self.name = name
        self.real = real  # for the log only
        self._file = file
        self._fd = file.fileno() if file is not None else fd

    def read(self, spans: list[Any]) -> bytes:
        assert self._fd is not None, "read after the file was handed over"
        return read_spans(self._fd, spans)

    def producer(self, spans: list[Any], *, chunk_size: int, streaming: bool,
                 clock: IReactorTime | None, sendfile: bool) -> IStreamProducer:
        file, self._file, fd, self._fd = self._file, None, self._fd, None
        if file is None:
            assert fd is not None, "a second producer of one opened file"
            file = os.fdopen(fd, "rb", buffering=0)
        kind = SendfileProducer if sendfile else FileProducer
        return kind(file, spans, chunk_size=chunk_size, streaming=streaming, clock=clock)

    def close(self) -> None:
        file, self._file, fd, self._fd = self._file, None, self._fd, None
        if file is not None:
            file.close()
        elif fd is not None:
            os.close(fd)


@implementer(IStoredFolder)
class LocalFolder:
    """A folder below the root, its descriptor opened (for a listing) when the path ended with C{/}."""

    def __init__(self, target: Target, root: str) -> None:
        self.slash = target.slash
        self._target = target
        self._root = root
        self._fd: int | None = None
        if target.slash:
            try:
                self._fd = open_inside(target, root, LIST_FLAGS)
            except OSError as error:
                raise open_failed(error, target.real) from None

    def entries(self) -> DiskEntries:
        fd, self._fd = self._fd, None
        assert fd is not None, "entries() of a folder asked for without a slash, or twice"
        try:
            return DiskEntries(self._target.real, self._root, fd=fd)
        except OSError as error:
            os.close(fd)
            raise open_failed(error, self._target.real) from None

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


@implementer(IFileStore)
class LocalFileStore:
    """
    The files below C{root}, a folder that must exist.

    @param largest: files up to this size are remembered briefly
        (L{FactsCache}): those a response sends in one write.
    @param clock: for the cache's freshness (the reactor; tests pass a Clock).
    @param run_blocking: runs slow disk work (writes, fsync, unlink) off the
        reactor; by default a thread pool of the store's own
        (L{DiskThreadPool}), started with C{reactor}.
    @param high_water: bytes an upload keeps while the disk is busy before
        its socket is paused.
    """

    def __init__(
        self,
        root: str,
        *,
        largest: int = DEFAULT_CHUNK_SIZE,
        clock: IReactorTime | None = None,
        reactor: Any = None,
        run_blocking: RunBlocking | None = None,
        high_water: int = DEFAULT_HIGH_WATER,
    ) -> None:
        self.root = os.path.realpath(root)
        self.facts = FactsCache(clock.seconds if clock is not None else time.monotonic, largest=largest)
        self._high_water = high_water
        self._reactor = reactor if reactor is not None else clock
        self._run_blocking = run_blocking

    def remove_stale_uploads(self) -> int:
        """Remove what stopped processes left half-uploaded (at start-up); how many."""
        return remove_stale_uploads(self.root)

    @property
    def run_blocking(self) -> RunBlocking:
        if self._run_blocking is None:  # made when first needed: a store that only reads needs no threads
            reactor = self._reactor
            if reactor is None:
                from twisted.internet import reactor
            self._run_blocking = DiskThreadPool(reactor)
        return self._run_blocking

    # reading

    def open(self, postpath: list[bytes]) -> Deferred[LocalFile | LocalFolder]:
        try:
            return succeed(self.open_now(postpath))
        except Exception:  # a 404, a 409, a 503: the Deferred's, as the contract says
            return fail()

    def open_now(self, postpath: list[bytes]) -> LocalFile | LocalFolder:
        """L{open}, at once: the local disk answers without waiting."""
        key = tuple(postpath)
        known = self.facts.fresh(key)
        if known is not None:
            fd = self.facts.open(key, known)
            if fd is not None:
                return LocalFile(known.facts, os.fsdecode(postpath[-1]), known.real, fd=fd)
        target = resolve(self.root, postpath)
        if target.is_dir:
            return LocalFolder(target, self.root)
        if target.slash:
            raise HTTPError(404, "not found")
        file, st = open_regular(target, self.root)
        name = target.segments[-1]
        return LocalFile(self.facts.learn(key, target.real, name, st), name, target.real, file=file)

    # writing

    def begin_upload(self, segments: tuple[str, ...], checks: WriteChecks, flow: Any) -> disk_upload.DiskUpload:
        return disk_upload.begin(self.root, segments, checks, flow, self.run_blocking, self._high_water)

    def install_file(self, segments: tuple[str, ...], checks: WriteChecks, path: str) -> Deferred[Installed]:
        try:
            upload = disk_upload.begin(self.root, segments, checks, None, self.run_blocking, self._high_water)
        except Exception:  # a 404, a 409, a 412: the Deferred's, as the contract says
            return fail()
        upload.adopt(path)
        return upload.done

    def delete(self, segments: tuple[str, ...], preconditions: WritePreconditions) -> Deferred[None]:
        try:
            return disk_upload.delete(self.root, segments, preconditions, self.run_blocking)
        except Exception:  # a 404, a 409, a 503: the Deferred's, as the contract says
            return fail()

    def make_folder(self, segments: tuple[str, ...]) -> Deferred[bool]:
        try:
            return disk_upload.make_folder(self.root, segments, self.run_blocking)
        except Exception:  # a 404, a 409, a 503: the Deferred's, as the contract says
            return fail()
