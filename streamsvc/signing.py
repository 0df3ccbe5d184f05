# -*- test-case-name: tests.test_signing -*-
"""
Signed, expiring links: C{POST /files/<path>?sign=SECONDS} gives a URL that
lets anyone GET or HEAD that one path until it expires, without a header,
so C{<video>}, C{<a download>}, curl and wget can fetch a protected file
(the idea of S3's presigned URLs and nginx's C{secure_link}).

A link is C{/files/<path>?expires=T&sig=S}: C{S} is HMAC-SHA256, keyed by
C{[auth] link_secret} (or a random secret made at start-up, shared by the
workers, when unset: links then die with the process), over the method
(always C{GET}: a HEAD is a GET without the body), the path in one
canonical spelling (each segment percent-encoded again from its bytes, so
C{%41} and C{A} sign alike and no spelling escapes the signature), and
C{T}, in unpadded base64url. The check is constant-time; the access log
never shows query values, so a signature is never logged.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from streamsvc.errors import HTTPError

#: The longest a link may live: 7 days.
MAX_SECONDS = 7 * 24 * 3600
_DIGITS = re.compile(rb"[0-9]{1,12}")
_SIGNATURE = re.compile(rb"[A-Za-z0-9_-]{43}")


def canonical_path(segments: Sequence[bytes]) -> str:
    """C{[b"files", b"a b.txt"]} → C{/files/a%20b.txt}: the one spelling that is signed."""
    return "/" + "/".join(quote(segment, safe="") for segment in segments)


def check_duration(seconds: int) -> None:
    """A link's life must be 1 s to L{MAX_SECONDS}; else the client's 400."""
    if not 1 <= seconds <= MAX_SECONDS:
        raise HTTPError(400, f"sign must be a number of seconds from 1 to {MAX_SECONDS} (7 days)")


class LinkSigner:
    """Makes and checks signed links with C{secret}, on C{clock} (C{seconds()})."""

    def __init__(self, secret: bytes, clock: Any) -> None:
        if len(secret) < 16:
            raise ValueError("a link secret must be at least 16 bytes")
        self._secret = secret
        self._clock = clock

    def __repr__(self) -> str:
        return "<LinkSigner>"  # never the secret

    def signature(self, path: str, expires: int) -> str:
        message = f"GET\n{path}\n{expires}".encode("ascii")
        digest = hmac.new(self._secret, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")

    def link(self, segments: Sequence[bytes], seconds: int) -> tuple[str, int]:
        """The signed URL for the path C{segments} and its expiry (Unix time)."""
        check_duration(seconds)
        expires = int(self._clock.seconds()) + seconds
        path = canonical_path(segments)
        return f"{path}?expires={expires}&sig={self.signature(path, expires)}", expires

    def verify(self, request: Any) -> bool:
        """
        Whether C{request} (a GET or HEAD) carries a valid signed link for its
        path: False when it carries none; L{HTTPError} 403 when it carries a
        bad, expired or malformed one (never a silent fall-back to asking
        for a token: the client meant the link).
        """
        args = request.args
        if b"sig" not in args and b"expires" not in args:
            return False
        if request.method not in (b"GET", b"HEAD"):
            raise HTTPError(403, "a signed link allows only GET and HEAD")
        expires, sig = args.get(b"expires", []), args.get(b"sig", [])
        if (
            len(expires) != 1
            or len(sig) != 1
            or _DIGITS.fullmatch(expires[0]) is None
            or _SIGNATURE.fullmatch(sig[0]) is None
        ):
            raise HTTPError(403, "malformed signed link")
        when = int(expires[0])
        path = canonical_path(request.prepath + request.postpath)
        expected = self.signature(path, when).encode("ascii")
        if not hmac.compare_digest(expected, sig[0]):
            raise HTTPError(403, "bad signature")
        if when < self._clock.seconds():
            raise HTTPError(403, "this link has expired")
        return True
