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
from typing import Any

from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from zope.interface import alsoProvides

from streamsvc.errors import ErrorPage, HTTPError, render_error
from streamsvc.interfaces import IStreamingBodyResource

#: RFC 6750 §2.1 b64token.
_BEARER = re.compile(rb"[Bb][Ee][Aa][Rr][Ee][Rr] +([A-Za-z0-9\-._~+/]+=*) *")

#: The auth-scheme that starts a credentials value (RFC 9110 §11.4: a token).
_SCHEME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")

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


def _uses_bearer_scheme(authorization: bytes) -> bool:
    """
    Whether an C{Authorization} value names the Bearer scheme (compared
    case-insensitively, RFC 9110 §11.1), well-formed or not.
    """
    match = _SCHEME.match(authorization)
    return match is not None and match[0].lower() == b"bearer"


def check_bearer(request: IRequest, tokens: TokenSet) -> HTTPError | None:
    """
    None when the request carries an accepted token; otherwise the error to
    answer with, as RFC 6750 §3.1 sorts them:

      - no credentials for us (no C{Authorization}, or one of another
        scheme, such as Basic): 401 with a bare challenge, because the
        client may simply not know that a Bearer token is needed;
      - C{Authorization} on more than one line, or a Bearer value that is
        malformed (no token, two tokens, characters a b64token cannot
        hold): 400 C{invalid_request}. Two lines are refused rather than one
        picked: a proxy or log that reads the first would disagree with us
        about who is asking;
      - a well-formed token we do not know: 401 C{invalid_token}.

    The token itself is never part of the answer, nor logged.
    """
    values = request.requestHeaders.getRawHeaders(b"authorization")
    if values is None:
        return HTTPError(401, "authentication required", {b"www-authenticate": REALM})
    if len(values) > 1:
        return _invalid_request("more than one Authorization header")
    if not _uses_bearer_scheme(values[0]):
        return HTTPError(401, "bearer token required", {b"www-authenticate": REALM})
    token = bearer_token(values[0])
    if token is None:
        return _invalid_request("malformed bearer credentials")
    if not tokens.accepts(token):
        return HTTPError(
            401,
            "invalid bearer token",
            {b"www-authenticate": REALM + b', error="invalid_token"'},
        )
    return None


def _invalid_request(message: str) -> HTTPError:
    return HTTPError(
        400, message, {b"www-authenticate": REALM + b', error="invalid_request"'}
    )


class BearerGuard(Resource):
    """
    Puts C{wrapped} (and everything below it) behind a Bearer token.

    It is a leaf exactly when C{wrapped} is, so traversal either stops here
    (and L{render} checks) or goes through L{getChildWithDefault} (which
    checks before descending).
    """

    def __init__(self, wrapped: IResource, tokens: TokenSet, *, links: Any = None) -> None:
        super().__init__()
        self._wrapped = wrapped
        self._tokens = tokens
        # A signed link (streamsvc.signing.LinkSigner) stands in for a token
        # on GET and HEAD of the path it was made for.
        self._links = links
        self.isLeaf = getattr(wrapped, "isLeaf", False)
        if IStreamingBodyResource.providedBy(wrapped):
            # A leaf that takes bodies must still be seen to take them, and
            # a body refused here before it is read (401, not a 413).
            alsoProvides(self, IStreamingBodyResource)

    @property
    def max_body_bytes(self) -> int:
        return int(self._wrapped.max_body_bytes)  # type: ignore[attr-defined]

    def body_consumer(self, request: IRequest) -> Any:
        error = check_bearer(request, self._tokens)
        if error is not None:
            raise error
        return self._wrapped.body_consumer(request)  # type: ignore[attr-defined]

    def _check(self, request: IRequest) -> HTTPError | None:
        if self._links is not None:
            try:
                if self._links.verify(request):
                    return None
            except HTTPError as error:
                return error
        return check_bearer(request, self._tokens)

    def getChildWithDefault(self, path: bytes, request: IRequest) -> IResource:
        error = self._check(request)
        if error is not None:
            return ErrorPage(error)
        return self._wrapped.getChildWithDefault(path, request)

    def render(self, request: IRequest) -> bytes | int:
        error = self._check(request)
        if error is not None:
            return render_error(request, error)
        return self._wrapped.render(request)
