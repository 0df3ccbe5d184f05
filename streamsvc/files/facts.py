# -*- test-case-name: tests.test_file_facts -*-
"""
What a response says about one version of a file (its media type, strong
ETag, Last-Modified), worked out once and kept briefly, so that a GET of a
small file that nothing has changed is one C{open}, one C{fstat}, one read
and one write.

A version is the file's I{identity}: device, inode, size, and the
nanosecond modification and change times. The change time moves on every
write, rename, link, unlink and chmod of the inode, so an unchanged
identity means the same bytes, still at the name where the full, race-free
walk (L{streamsvc.files.paths}) found them, with the same permissions.
Every use checks it against the C{fstat} of the file just opened, and the
body is read from that same descriptor: headers and body always describe
one version, and an upload that replaces the file is seen at once.

What an identity cannot see is a folder above the file being moved or
swapped (the file's own change time does not move then). That is why an
entry is trusted for at most L{FACTS_TTL} seconds: after that the next
request walks the path again from the root, as every request did before.
"""

from __future__ import annotations

import os
import time
from typing import Callable

import attrs

from streamsvc.files.media import is_active, last_suffixes, type_of_suffixes
from streamsvc.files.paths import FILE_FLAGS
from streamsvc.ranges import http_date, make_etag

#: Seconds an entry is used without walking its path again.
FACTS_TTL = 1.0
#: Entries kept; past it the oldest goes (a request path is at most a few
#: KiB, an entry a few hundred bytes: the cache stays well under 8 MiB).
FACTS_MAX = 1024

Identity = tuple[int, int, int, int, int]


def identity_of(st: os.stat_result) -> Identity:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@attrs.frozen
class FileFacts:
    """The headers one version of a file gets, in wire form (the same for every store)."""

    size: int
    mtime: int
    strong_etag: str
    content_type: bytes
    compressible: bool
    active: bool  # a type a browser would run (HTML, SVG...): sandboxed
    last_modified: bytes

    @classmethod
    def of(cls, name: str, size: int, mtime: int, strong_etag: str) -> FileFacts:
        """The facts of a version of the file C{name}: its type from the name, the rest given."""
        content_type, compressible = type_of_suffixes(last_suffixes(name))
        return cls(
            size=size,
            mtime=mtime,
            strong_etag=strong_etag,
            content_type=content_type.encode("ascii"),
            compressible=compressible,
            active=is_active(content_type),
            last_modified=http_date(mtime).encode("ascii"),
        )

    @classmethod
    def of_stat(cls, name: str, st: os.stat_result) -> FileFacts:
        """The facts of a file on disk, from its C{stat}."""
        return cls.of(name, st.st_size, int(st.st_mtime), make_etag(st.st_size, st.st_mtime_ns))


@attrs.frozen
class Known:
    """A small file the full walk found: its facts, where it is, which version, and when."""

    facts: FileFacts
    real: str
    identity: Identity
    checked: float  # when the full walk last found it, on the cache's clock


class FactsCache:
    """
    L{Known} files by request path (the URL's raw segments), each fresh
    for L{FACTS_TTL} seconds from the walk that found it; only for files of
    at most C{largest} bytes (those answered in one write), so that large
    downloads never push small files out.

    @param now: the clock (seconds); the reactor's in the server.
    """

    def __init__(
        self,
        now: Callable[[], float] = time.monotonic,
        *,
        largest: int,
        ttl: float = FACTS_TTL,
        size: int = FACTS_MAX,
    ) -> None:
        self._now = now
        self._largest = largest
        self._ttl = ttl
        self._size = size
        self._entries: dict[tuple[bytes, ...], Known] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def learn(self, key: tuple[bytes, ...], real: str, name: str, st: os.stat_result) -> FileFacts:
        """The facts of the file just opened at C{key} by the full walk, remembered if it is small."""
        facts = FileFacts.of_stat(name, st)
        entries = self._entries
        entries.pop(key, None)
        if facts.size > self._largest:
            return facts
        if len(entries) >= self._size:
            del entries[next(iter(entries))]  # the oldest: dicts keep insertion order
        entries[key] = Known(facts, real, identity_of(st), self._now())
        return facts

    def fresh(self, key: tuple[bytes, ...]) -> Known | None:
        """What is known of C{key} if the walk found it less than the TTL ago."""
        known = self._entries.get(key)
        if known is None:
            return None
        if self._now() - known.checked >= self._ttl:
            del self._entries[key]
            return None
        return known

    def open(self, key: tuple[bytes, ...], known: Known) -> int | None:
        """
        A descriptor of the file C{known} describes, if it is still that
        version; else None, and the entry is forgotten (the caller walks the
        path again, which also says why, if anything is wrong).
        """
        try:
            fd = os.open(known.real, FILE_FLAGS)
        except OSError:
            self._entries.pop(key, None)
            return None
        try:
            same = identity_of(os.fstat(fd)) == known.identity
        except OSError:
            same = False
        if not same:
            os.close(fd)
            self._entries.pop(key, None)
            return None
        return fd
