"""
Following one growing file: reading what was added, in lines, and noticing
rotation. No Twisted here, and no timers: the resource decides when to
look again (L{streamsvc_logtail.resource}), which keeps this testable with
plain files.
"""

from __future__ import annotations

import os
from typing import NamedTuple


class Line(NamedTuple):
    """A line (without its end of line) and the byte offset just after it."""

    text: bytes
    end: int


#: What L{Follower.check} found.
ROTATED = "rotated"
TRUNCATED = "truncated"


class Follower:
    """
    Reads the lines appended to the file at C{path}, from C{position}.

    It owns the file descriptor C{fd} (opened by the caller, who may then
    forget it) and closes it in L{close}, which is idempotent. A partial
    last line is held until its end arrives, but never more than
    C{max_line} bytes of it: a longer line is given in pieces.
    """

    def __init__(self, path: str, fd: int, position: int, *, max_line: int, chunk_size: int) -> None:
        self.path = path
        self.fd: int | None = fd
        self.position = position  # the offset of the next byte to read
        self.max_line = max_line
        self.chunk_size = chunk_size
        self._held = b""  # a line begun, not ended yet

    def read(self) -> list[Line]:
        """
        The complete lines in the next C{chunk_size} bytes (empty at the end
        of the file). One bounded C{pread}: a few microseconds from the page
        cache, never the whole file.
        """
        assert self.fd is not None, "read after close"
        data = os.pread(self.fd, self.chunk_size, self.position)
        if not data:
            return []
        start = self.position - len(self._held)
        self.position += len(data)
        data = self._held + data
        lines = []
        begin = 0
        while True:
            newline = data.find(b"\n", begin)
            if newline < 0:
                break
            lines.append(Line(data[begin:newline].rstrip(b"\r"), start + newline + 1))
            begin = newline + 1
        rest = data[begin:]
        while len(rest) > self.max_line:
            lines.append(Line(rest[: self.max_line], start + begin + self.max_line))
            begin += self.max_line
            rest = rest[self.max_line :]
        self._held = rest
        return lines

    @property
    def at_end(self) -> bool:
        """Whether the last read found nothing more (what L{check} waits for)."""
        assert self.fd is not None
        return os.fstat(self.fd).st_size <= self.position

    def check(self) -> str | None:
        """
        At the end of the file: whether the log was rotated (C{path} is now
        another file: it is opened from its start) or truncated (C{copytruncate}:
        read again from 0); None if neither. A path that is gone for now
        keeps the old file open.
        """
        assert self.fd is not None
        try:
            now = os.stat(self.path)
        except OSError:
            return None  # renamed away, the new one not made yet
        mine = os.fstat(self.fd)
        if (now.st_dev, now.st_ino) != (mine.st_dev, mine.st_ino):
            try:
                fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return None
            os.close(self.fd)
            self.fd, self.position, self._held = fd, 0, b""
            return ROTATED
        if mine.st_size < self.position:
            self.position, self._held = 0, b""
            return TRUNCATED
        return None

    def close(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)
