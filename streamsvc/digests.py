# -*- test-case-name: tests.test_digests -*-
"""
Body digests: C{Content-Digest} and C{Repr-Digest} (RFC 9530) and the older C{Digest}
(RFC 3230), parsed into what a body must hash to, and written back.

Pure: no I/O, no reactor. L{expected_digests} turns the request's fields
into C{{algorithm: digest}}; L{Hashes} hashes a body as it streams; L{field}
writes the C{Content-Digest} of a stored body.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

#: The algorithms verified, by their RFC 9530 names (the IANA "Hash
#: Algorithms for HTTP Digest Fields" registry). Others a client lists are
#: ignored, as RFC 9530 §5 allows, so a field naming only those verifies
#: nothing; md5/sha (deprecated there) are not accepted as evidence.
ALGORITHMS: Final[Mapping[str, Callable[[], Any]]] = {
    "sha-256": hashlib.sha256,
    "sha-512": hashlib.sha512,
}

#: The digest every stored body gets and answers with.
STORED_ALGORITHM: Final = "sha-256"

#: tus's C{Upload-Checksum} algorithms (its checksum extension): a check
#: of one request's bytes against damage on the way, by a client that
#: chose the algorithm; not evidence of what a file is (that is
#: L{ALGORITHMS}'), so md5 and sha1 are fine here.
CHECKSUM_ALGORITHMS: Final[Mapping[str, Callable[[], Any]]] = {
    "sha1": hashlib.sha1,
    "md5": hashlib.md5,
    "sha256": hashlib.sha256,
    "sha512": hashlib.sha512,
}

#: A Content-Digest member: key=:base64: with optional ;parameters
#: (RFC 8941 §3.2 dictionary, byte-sequence values).
_MEMBER = re.compile(
    r"\s*([a-z*][a-z0-9_.*-]*)\s*=\s*:([A-Za-z0-9+/=]*):\s*(?:;[^,]*)?\s*", re.ASCII
)
#: A Digest (RFC 3230) instance: algorithm=base64, the algorithm in any case.
_LEGACY = re.compile(r"\s*([A-Za-z0-9-]+)\s*=\s*([A-Za-z0-9+/=]+)\s*", re.ASCII)


class DigestError(ValueError):
    """A digest field that cannot be read (answered 400: the client's mistake)."""


def _decode(value: str, algorithm: str) -> bytes:
    try:
        digest = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise DigestError(f"{algorithm} digest is not valid base64") from None
    if len(digest) != ALGORITHMS[algorithm]().digest_size:
        raise DigestError(f"{algorithm} digest has the wrong length")
    return digest


def _members(text: str) -> Iterable[str]:
    return (member for member in text.split(",") if member.strip())


def expected_digests(
    content_digest: str | None, digest: str | None, repr_digest: str | None = None
) -> dict[str, bytes]:
    """
    What the body must hash to, from the request's C{Content-Digest},
    C{Digest} and C{Repr-Digest} fields (each already joined across lines;
    None when absent).

    C{Repr-Digest} (RFC 9530 §3) covers the representation, which for a
    request with no content coding (the only kind taken: see the 415 of
    uploads) is the same bytes as the content, so it is checked the same
    way; a client may send either, or both.

    Every known algorithm listed is checked (so a client cannot pass a bad
    sha-512 beside a good sha-256); two different values for one algorithm
    can never both hold and are refused. Unknown algorithms are skipped.

    @raise DigestError: for a field that is malformed, or values that disagree.
    """
    found: dict[str, bytes] = {}

    def add(algorithm: str, value: str) -> None:
        if algorithm not in ALGORITHMS:
            return
        decoded = _decode(value, algorithm)
        if found.setdefault(algorithm, decoded) != decoded:
            raise DigestError(f"two different {algorithm} digests")

    for name, value in (("Content-Digest", content_digest), ("Repr-Digest", repr_digest)):
        if value is None:
            continue
        for member in _members(value):
            match = _MEMBER.fullmatch(member)
            if match is None:
                raise DigestError(f"malformed {name}")
            add(match[1], match[2])
    if digest is not None:
        for member in _members(digest):
            match = _LEGACY.fullmatch(member)
            if match is None:
                raise DigestError("malformed Digest")
            add(match[1].lower(), match[2])
    return found


class Hashes:
    """
    The running hashes of a body: L{STORED_ALGORITHM} always, and whatever
    else the client asked to have checked.

    L{update} may run in a worker thread (hashlib releases the GIL for large
    buffers), as long as one caller at a time uses it.
    """

    def __init__(self, algorithms: Iterable[str] = (), *,
                 table: Mapping[str, Callable[[], Any]] = ALGORITHMS, stored: bool = True) -> None:
        names = {STORED_ALGORITHM, *algorithms} if stored else set(algorithms)
        self._hashes = {name: table[name]() for name in sorted(names)}

    def update(self, data: bytes) -> None:
        for hash_ in self._hashes.values():
            hash_.update(data)

    def digests(self) -> dict[str, bytes]:
        return {name: hash_.digest() for name, hash_ in self._hashes.items()}


def mismatches(expected: Mapping[str, bytes], actual: Mapping[str, bytes]) -> list[str]:
    """The algorithms whose digest of the body is not the expected one."""
    return [
        name
        for name, digest in expected.items()
        if not hmac.compare_digest(digest, actual.get(name, b""))
    ]


def field(digests: Mapping[str, bytes]) -> bytes:
    """A C{Content-Digest} value: C{sha-256=:<base64>:}, members sorted by name."""
    return b", ".join(
        name.encode("ascii") + b"=:" + base64.b64encode(digest) + b":"
        for name, digest in sorted(digests.items())
    )
