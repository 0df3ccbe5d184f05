# -*- test-case-name: tests.test_task_encoders -*-
"""
Lines out of a byte stream, in bounded memory: pure, no I/O, no reactor.

Shared by the server (the tasks import) and the client (C{streamsvc-client
tail}), which imports nothing of the server's own packages.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

__all__ = ["Line", "LineSplitter"]


class Line(NamedTuple):
    """
    A line of a body: its number (from 1), its bytes without the LF (a CR
    before it is kept: inside a quoted CSV field it is data), or None if it
    was too long; and how many C{"} it held (counted only when asked for).
    """

    number: int
    data: bytes | None
    quotes: int = 0


class LineSplitter:
    """
    Cuts a stream of bytes into lines at LF, holding at most C{max_line}
    bytes of a line: a longer one is reported as C{data=None} and the rest
    of it skipped as it arrives, so a body without newlines is an error for
    one line, not a memory spike. With C{count_quotes}, each line says how
    many C{"} it had, skipped parts included, so L{CSVRecords} keeps track
    of quoted fields across a line too long to keep.
    """

    def __init__(self, max_line: int, *, count_quotes: bool = False) -> None:
        self._max = max_line
        self._count_quotes = count_quotes
        self._partial: list[bytes] = []
        self._held = 0
        self._quotes = 0
        self._too_long = False
        self._number = 0

    def feed(self, data: bytes) -> Iterator[Line]:
        start = 0
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                self._hold(data[start:])
                return
            yield self._line(data[start:end])
            start = end + 1

    def end(self) -> Iterator[Line]:
        """The last line, when the body did not end with a newline."""
        if self._held or self._too_long:
            yield self._line(b"")

    def _hold(self, piece: bytes) -> None:
        if not piece:
            return
        if self._count_quotes:
            self._quotes += piece.count(b'"')
        if self._too_long:
            return
        if self._held + len(piece) > self._max:
            self._partial, self._held, self._too_long = [], 0, True
            return
        self._partial.append(piece)
        self._held += len(piece)

    def _line(self, tail: bytes) -> Line:
        self._number += 1
        quotes = self._quotes + (tail.count(b'"') if self._count_quotes else 0)
        too_long = self._too_long or self._held + len(tail) > self._max
        data = None if too_long else b"".join(self._partial) + tail
        self._partial, self._held, self._quotes, self._too_long = [], 0, 0, False
        return Line(self._number, data, quotes)
