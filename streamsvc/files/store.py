# -*- test-case-name: tests.test_file_stores -*-
"""
The values the file-store contract (L{streamsvc.interfaces.IFileStore})
passes between C{/files} and a store: what a write must check at its
install (L{WritePreconditions}, L{WriteChecks}) and what an install
reports (L{Installed}). Pure: no I/O, the same for every store.
"""

from __future__ import annotations

import attrs
from twisted.web.iweb import IRequest

from streamsvc.digests import Hashes, mismatches
from streamsvc.errors import HTTPError
from streamsvc.files.fields import list_header, singleton_header
from streamsvc.ranges import write_allowed

#: What a store knows of the current version before a write: its strong
#: ETag and last-modified second, or None when there is no file.
Current = tuple[str, int] | None


class UploadAborted(Exception):
    """An upload's body will not be complete (L{streamsvc.interfaces.IUploadSink.abort})."""


@attrs.frozen
class WritePreconditions:
    """A write's C{If-Match} / C{If-None-Match} / C{If-Unmodified-Since}, checked when it is decided and again at the install."""

    if_match: str | None = None
    if_none_match: str | None = None
    if_unmodified_since: str | None = None

    @classmethod
    def of(cls, request: IRequest) -> WritePreconditions:
        return cls(
            if_match=list_header(request, b"if-match"),
            if_none_match=list_header(request, b"if-none-match"),
            if_unmodified_since=singleton_header(request, b"if-unmodified-since"),
        )

    @property
    def create_only(self) -> bool:
        """C{If-None-Match: *}: the write may only create, never replace."""
        return self.if_none_match is not None and self.if_none_match.strip() == "*"

    def check(self, current: Current) -> None:
        """Raise the 412 a write gets when C{current} (see L{Current}) fails these."""
        allowed = write_allowed(
            current=current,
            if_match=self.if_match,
            if_none_match=self.if_none_match,
            if_unmodified_since=self.if_unmodified_since,
        )
        if not allowed:
            raise HTTPError(412, "precondition failed")


@attrs.define
class WriteChecks:
    """
    What an upload is checked against just before its install: the
    preconditions, and the digests the client sent (C{expected}) against
    C{hashes}, which the store's sink feeds with every byte of the body in
    order (in a thread if it likes: one thread at a time).
    """

    preconditions: WritePreconditions
    expected: dict[str, bytes]
    hashes: Hashes = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.hashes = Hashes(self.expected)

    def check_digests(self) -> None:
        """The 400 a body gets when it does not match a digest it came with."""
        bad = mismatches(self.expected, self.hashes.digests())
        if bad:
            raise HTTPError(400, f"body does not match its {bad[0]} digest")


@attrs.frozen
class Installed:
    """A new version in place: what the upload's answer says of it."""

    etag: str  # strong, as GET will give it
    size: int
    mtime: int  # Unix seconds, for Last-Modified
    created: bool  # there was no file at the path before
