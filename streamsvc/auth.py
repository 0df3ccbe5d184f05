# -*- test-case-name: tests.test_auth -*-
"""
Bearer tokens (RFC 6750), as a wrapper any resource can be put behind.

Tokens are compared in constant time, each against every known token, so
neither a token's prefix nor which token matched can be learned from timing;
they are kept only as SHA-256 digests, never logged and never repr'd.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable

from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource

from streamsvc.errors import ErrorPage, HTTPError, render_error

#: RFC 6750 §2.1 b64token.
_BEARER = re.compile(rb"[Bb][Ee][Aa][Rr][Ee][Rr] +([A-Za-z0-9\-._~+/]+=*) *")

REALM = b'Bearer realm="streamsvc"'


def _digest(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()


class TokenSet:
    """The accepted tokens. Holds digests only; C{repr} shows a count."""

    def __init__(self, tokens: Iterable[str]) -> None:
        self._digests = tuple(_digest(t.encode("utf-8")) for t in tokens)

    def __len__(self) -> int:
        return len(self._digests)

    def __repr__(self) -> str:
        return f"<TokenSet of {len(self._digests)} tokens>"

    def accepts(self, token: bytes) -> bool:
        candidate = _digest(token)
        found = False
        for known in self._digests:
            found |= hmac.compare_digest(candidate, known)
        return found


def bearer_token(authorization: bytes | None) -> bytes | None:
    """The token in an C{Authorization: Bearer ...} value, or None if malformed."""
    if authorization is None:
        return None
    match = _BEARER.fullmatch(authorization)
    return match.group(1) if match else None


def check_bearer(request: IRequest, tokens: TokenSet) -> HTTPError | None:
    """
    None when the request carries an accepted token; otherwise the 401 to
    answer with, its C{WWW-Authenticate} saying whether a token was missing
    or wrong.
    """
    header = request.getHeader(b"authorization")
    if header is None:
        return HTTPError(401, "authentication required", {b"www-authenticate": REALM})
    token = bearer_token(header)
    if token is None or not tokens.accepts(token):
        return HTTPError(
            401,
            "invalid or malformed bearer token",
            {b"www-authenticate": REALM + b', error="invalid_token"'},
        )
    return None


class BearerGuard(Resource):
    """
    Puts C{wrapped} (and everything below it) behind a Bearer token.

    It is a leaf exactly when C{wrapped} is, so traversal either stops here
    (and L{render} checks) or goes through L{getChildWithDefault} (which
    checks before descending).
    """

    def __init__(self, wrapped: IResource, tokens: TokenSet) -> None:
        super().__init__()
        self._wrapped = wrapped
        self._tokens = tokens
        self.isLeaf = getattr(wrapped, "isLeaf", False)

    def getChildWithDefault(self, path: bytes, request: IRequest) -> IResource:
        error = check_bearer(request, self._tokens)
        if error is not None:
            return ErrorPage(error)
        return self._wrapped.getChildWithDefault(path, request)

    def render(self, request: IRequest) -> bytes | int:
        error = check_bearer(request, self._tokens)
        if error is not None:
            return render_error(request, error)
        return self._wrapped.render(request)
