# -*- test-case-name: tests.test_cors -*-
"""
Browser access from other origins: C{[server] cors_origins}.

A page on another origin may C{fetch()} an NDJSON export, script a
player or upload with a Bearer token only if the server says so (CORS).
L{CORSResource} wraps the root of the tree, so every resource gets the
same answer, errors and 401s included (a browser hides a failed response
without them, and the page could not say why):

  - a preflight (C{OPTIONS} with C{Origin} and
    C{Access-Control-Request-Method}) from an allowed origin → 204 with the
    methods and headers allowed (C{Authorization} and C{Range} among them),
    cached by the browser for 10 minutes; from another origin → 403;
  - any other request from an allowed origin gets
    C{Access-Control-Allow-Origin} and C{Access-Control-Expose-Headers}
    (C{Content-Range}, C{Content-Length}, C{ETag}, C{Content-Digest},
    C{Content-Disposition}...), so a script can read them.

C{*} allows every origin, with C{Access-Control-Allow-Origin: *}: Bearer
tokens are sent in a header, not as cookies, so no credentials mode is
involved (and none is offered). A list of origins is matched exactly
(scheme, host and port, as browsers send them) and answered with the
origin itself and C{Vary: Origin}, so caches keep the answers apart.
"""

from __future__ import annotations

from collections.abc import Iterable

from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from zope.interface import implementer

from streamsvc.errors import HTTPError, JSONResource, render_error
from streamsvc.files.fields import add_vary

ALLOWED_METHODS = b"GET, HEAD, PUT, POST, PATCH, DELETE, OPTIONS"
ALLOWED_HEADERS = (
    b"Authorization, Range, If-Range, If-Match, If-None-Match, If-Modified-Since, "
    b"If-Unmodified-Since, Content-Type, Content-Digest, Repr-Digest, Last-Event-ID, Accept, Cache-Control, "
    # resumable uploads: the IETF draft's fields, then tus's (what tusd allows)
    b"Upload-Complete, Upload-Draft-Interop-Version, Upload-Offset, Upload-Length, "
    b"Tus-Resumable, Upload-Metadata, Upload-Checksum, Upload-Defer-Length, Upload-Concat, "
    b"X-HTTP-Method-Override, X-Requested-With"
)
EXPOSED_HEADERS = (
    b"Content-Range, Content-Length, Content-Type, ETag, Last-Modified, Content-Digest, Repr-Digest, "
    b"Content-Disposition, Accept-Ranges, Location, Retry-After, "
    b"Upload-Complete, Upload-Draft-Interop-Version, Upload-Offset, Upload-Length, Upload-Limit, "
    b"Tus-Resumable, Tus-Version, Tus-Extension, Tus-Max-Size, Tus-Checksum-Algorithm, "
    b"Upload-Metadata, Upload-Expires, Upload-Defer-Length, Upload-Concat"
)
#: Seconds a browser may keep a preflight's answer.
MAX_AGE = b"600"


class CORSPolicy:
    """Which origins may read responses: C{("*",)}, a list, or none."""

    def __init__(self, origins: Iterable[str]) -> None:
        self.origins = tuple(origins)
        self.any = "*" in self.origins
        self._allowed = frozenset(o.lower() for o in self.origins)

    def __bool__(self) -> bool:
        return bool(self.origins)

    def allow_origin(self, origin: bytes | None) -> bytes | None:
        """The C{Access-Control-Allow-Origin} value for C{origin}, or None."""
        if origin is None:
            return None
        if self.any:
            return b"*"
        text = origin.decode("latin-1").lower()
        return origin if text in self._allowed else None


@implementer(IResource)
class CORSResource:
    """The root of the tree, wrapped: CORS headers on every response, preflights answered."""

    isLeaf = False

    def __init__(self, wrapped: IResource, policy: CORSPolicy) -> None:
        self._wrapped = wrapped
        self._policy = policy

    def _mark(self, request: IRequest) -> Preflight | None:
        origin = request.getHeader(b"origin")
        allowed = self._policy.allow_origin(origin)
        if not self._policy.any:
            # Even without an Origin: a cache must not give this answer
            # (no Allow-Origin) to a page that sends one, nor one origin's
            # answer to another.
            add_vary(request, b"Origin")
        if request.method == b"OPTIONS" and origin is not None and request.getHeader(
            b"access-control-request-method"
        ) is not None:
            return Preflight(allowed)
        if allowed is not None:
            request.setHeader(b"access-control-allow-origin", allowed)
            request.setHeader(b"access-control-expose-headers", EXPOSED_HEADERS)
        return None

    def getChildWithDefault(self, path: bytes, request: IRequest) -> IResource:
        preflight = self._mark(request)
        if preflight is not None:
            return preflight
        return self._wrapped.getChildWithDefault(path, request)

    def render(self, request: IRequest) -> bytes | int:
        preflight = self._mark(request)
        if preflight is not None:
            return preflight.render(request)
        return self._wrapped.render(request)

    def putChild(self, path: bytes, child: IResource) -> None:
        self._wrapped.putChild(path, child)

    @property
    def children(self) -> dict[bytes, IResource]:
        return self._wrapped.children  # type: ignore[attr-defined, no-any-return]


class Preflight(JSONResource):
    """The answer to a CORS preflight, whatever the path (no body is ever read)."""

    isLeaf = True

    def __init__(self, allowed: bytes | None) -> None:
        super().__init__()
        self._allowed = allowed

    def render(self, request: IRequest) -> bytes:
        add_vary(request, b"Access-Control-Request-Method")
        add_vary(request, b"Access-Control-Request-Headers")
        if self._allowed is None:
            return render_error(request, HTTPError(403, "this origin may not use this server (cors_origins)"))
        request.setResponseCode(204)
        request.setHeader(b"access-control-allow-origin", self._allowed)
        request.setHeader(b"access-control-allow-methods", ALLOWED_METHODS)
        request.setHeader(b"access-control-allow-headers", ALLOWED_HEADERS)
        request.setHeader(b"access-control-max-age", MAX_AGE)
        request.setHeader(b"content-length", b"0")
        return b""
