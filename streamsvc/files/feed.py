# -*- test-case-name: tests.test_pending -*-
"""
A complete local file fed into an L{streamsvc.interfaces.IUploadSink}, as
a request body would be: how a store that cannot move a file into place
(an object store) installs a resumable upload's bytes
(L{streamsvc.interfaces.IFileStore.install_file}).

The file is read in a thread, a chunk at a time, and the sink paces the
reading exactly as it paces a socket: it calls C{pause_body()} on its
flow, which is this feed, and the next read waits for C{resume_body()}.
The file is removed once the sink has ended, whichever way.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from streamsvc.files.store import Installed

log = Logger()

#: Bytes per read of the file.
FEED_CHUNK = 1024 * 1024


class FileFeed:
    """
    The reader of one file into one sink: the sink's flow (C{pause_body},
    C{resume_body}). It owns the file's descriptor and the file itself, and
    closes and removes both once the sink's C{done} has fired.
    """

    def __init__(self, path: str, run_blocking: Any, chunk: int = FEED_CHUNK) -> None:
        self._path = path
        self._run_blocking = run_blocking
        self._chunk = chunk
        self._fd: int | None = None
        self._sink: Any = None
        self._paused = False
        self._reading = False
        self._ended = False
        self._idle: Deferred[None] | None = None  # fires once no read runs, after the end

    def start(self, sink: Any) -> Deferred[Installed]:
        """Feed the file into C{sink}; its C{done}, once the file is closed and gone."""
        self._sink = sink
        done: Deferred[Installed] = Deferred()

        def ended(result: Installed | Failure) -> Deferred[Any]:
            self._ended = True
            self._idle = Deferred()
            if not self._reading:
                self._idle.callback(None)
            d = self._idle.addCallback(lambda _: self._run_blocking(self._close_and_remove))
            d.addErrback(lambda f: log.failure("could not remove {path}", failure=f, path=self._path))
            return d.addCallback(lambda _: result)

        sink.done.addBoth(ended).chainDeferred(done)
        self._reading = True  # the open counts as a read: the end waits for it
        self._run_blocking(os.open, self._path, os.O_RDONLY | os.O_CLOEXEC).addCallbacks(self._opened, self._failed)
        return done

    # the sink's flow

    def pause_body(self, *, ours: bool = True) -> None:
        self._paused = True

    def resume_body(self) -> None:
        self._paused = False
        self._read()

    # reading

    def _opened(self, fd: int) -> None:
        self._fd = fd
        self._not_reading()
        if self._ended:
            return
        self._read()

    def _read(self) -> None:
        if self._reading or self._paused or self._ended or self._fd is None:
            return
        self._reading = True
        self._run_blocking(os.read, self._fd, self._chunk).addCallbacks(self._got, self._failed)

    def _got(self, data: bytes) -> None:
        self._not_reading()
        if self._ended:
            return
        if not data:
            self._ended = True
            self._sink.finish()
            return
        self._sink.write(data)
        self._read()

    def _not_reading(self) -> None:
        self._reading = False
        if self._idle is not None and not self._idle.called:
            self._idle.callback(None)

    def _failed(self, reason: Failure) -> None:
        self._not_reading()
        log.failure("could not read {path}", failure=reason, path=self._path)
        if not self._ended:
            self._sink.abort()

    def _close_and_remove(self) -> None:
        """In a thread, once the sink has ended."""
        fd, self._fd = self._fd, None
        try:
            if fd is not None:
                os.close(fd)
        finally:
            try:
                os.unlink(self._path)
            except FileNotFoundError:
                pass
