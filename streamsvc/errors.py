# -*- test-case-name: tests.test_errors -*-
"""
The one place where failures become C{{"error": ...}} responses.

Resources raise L{HTTPError} (or return L{ErrorPage}) for the client's
mistakes; anything unexpected reaches L{Request.processingFailed}, which logs
the traceback and answers a generic JSON 500 — never an HTML traceback, never
the exception text, which may carry paths or secrets.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import resource, server
from twisted.web.iweb import IRequest


__all__ = [
    "ErrorPage",
    "HTTPError",
    "JSONResource",
    "Request",
    "StoreUnavailable",
    "allowed_methods",
    "answer_error",
    "error_body",
    "failure_error",
    "not_found",
    "render_error",
    "unavailable_error",
]

log = Logger()


class HTTPError(Exception):
    """
    A response other than success, decided before the body started.

    @ivar code: the HTTP status code (4xx or 5xx).
    @ivar message: a short human-readable reason, sent as C{{"error": message}}.
    @ivar headers: extra response headers (e.g. C{Allow}, C{WWW-Authenticate}).
    @ivar problem: for an error a protocol gives a problem type (RFC 9457),
        its C{type} and members: the body is then C{application/problem+json}
        with them, C{title} and, as always, C{error}.
    """

    def __init__(
        self, code: int, message: str, headers: Mapping[bytes, bytes] | None = None,
        *, problem: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.headers = dict(headers or {})
        self.problem = dict(problem) if problem else None


def error_body(message: str) -> bytes:
    """The JSON document every error response carries."""
    return json.dumps({"error": message}).encode("utf-8") + b"\n"


def render_error(request: IRequest, error: HTTPError) -> bytes:
    """
    Set status and headers for C{error} on C{request} and return the body
    (empty for HEAD).

    Headers a success path may already have set (Content-Length,
    Content-Encoding, Content-Range, ETag...) describe a body that will not be
    sent, so they are dropped first.
    """
    for name in (
        b"content-length",
        b"content-encoding",
        b"content-range",
        b"content-disposition",
        b"etag",
        b"last-modified",
        b"accept-ranges",
    ):
        request.responseHeaders.removeHeader(name)
    request.setResponseCode(error.code)
    for name, value in error.headers.items():
        request.setHeader(name, value)
    body = error_body(error.message)
    content_type = b"application/json"
    if error.problem is not None:
        body = json.dumps({**error.problem, "title": error.message, "error": error.message}).encode() + b"\n"
        content_type = b"application/problem+json"
    if not request.responseHeaders.hasHeader(b"cache-control"):
        # An error is about this moment (a 404 may be a file not uploaded
        # yet, a 503 a shortage): no cache in front may keep it.
        request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"content-type", content_type)
    request.setHeader(b"x-content-type-options", b"nosniff")
    request.setHeader(b"content-length", b"%d" % (len(body),))
    # HEAD gets the headers GET would (Content-Length included) and no body;
    # returning one would make twisted.web log that it is "eating" it.
    return b"" if request.method == b"HEAD" else body


class StoreUnavailable(Exception):
    """
    A store (the task database, the object store behind C{/files}) cannot be
    reached, timed out or failed what it was asked: the client may retry
    (L{unavailable_error}). The message names the server, never a secret.

    @ivar status: 503 by default; a store that can tell says 502 (it
        answered nonsense) or 504 (it did not answer in time).
    @ivar retry_after: seconds the client is asked to wait.
    """

    def __init__(self, message: str, *, status: int = 503, retry_after: int = 5) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


def unavailable_error(error: StoreUnavailable, what: str) -> HTTPError:
    """The answer to a store outage: its status, C{Retry-After}, and no more than C{what} failed."""
    reason = {502: "gave a bad answer", 504: "did not answer in time"}.get(error.status, "is unavailable")
    return HTTPError(
        error.status,
        f"the {what} {reason}, try again soon",
        {b"retry-after": b"%d" % (error.retry_after,)},
    )


def failure_error(request: IRequest, failure: Failure, what: str) -> HTTPError:
    """
    What the client is told of C{failure} (a Deferred's, before the body
    started): an L{HTTPError} as it is, a store outage from
    L{unavailable_error} (logged as one line), anything else a logged 500.
    """
    if failure.check(HTTPError):
        return failure.value  # type: ignore[no-any-return]
    if failure.check(StoreUnavailable):
        log.warn("{what} unavailable for {method} {uri}: {reason}", what=what,
                 method=request.method, uri=request.uri, reason=str(failure.value))
        return unavailable_error(failure.value, what)
    log.failure("{what} failed for {method} {uri}", failure, what=what, method=request.method, uri=request.uri)
    return HTTPError(500, "internal server error")


def answer_error(request: IRequest, error: HTTPError) -> None:
    """
    Answer C{error} now, outside C{render}: nothing if the request is over
    (its client left, or it was answered), an aborted connection if its
    body began (a clean short body would lie), else the JSON error.
    """
    if request.finished or getattr(request, "_disconnected", False):
        return
    if request.startedWriting:
        request.channel.transport.abortConnection()
        return
    body = render_error(request, error)
    if body:
        request.write(body)
    request.finish()


class ErrorPage(resource.Resource):
    """
    A leaf that answers every method with one JSON error.

    Used in place of twisted.web's HTML C{resource.NoResource} and friends.
    """

    isLeaf = True

    def __init__(self, error: HTTPError) -> None:
        super().__init__()
        self._error = error

    @property
    def error(self) -> HTTPError:
        """The error every request here gets."""
        return self._error

    def render(self, request: IRequest) -> bytes:
        return render_error(request, self._error)


def not_found() -> ErrorPage:
    """A JSON 404 page, for C{getChild} to return."""
    return ErrorPage(HTTPError(404, "not found"))


class JSONResource(resource.Resource):
    """
    A resource whose C{render_*} methods may raise L{HTTPError}, and whose
    unsupported methods get a JSON 405 with an C{Allow} header rather than
    twisted.web's HTML page.
    """

    def render(self, request: IRequest) -> bytes | int:
        method = request.method.decode("ascii", "replace")
        allowed = _own_methods(self)
        try:
            if method not in allowed:
                raise HTTPError(
                    405,
                    "method not allowed",
                    {b"allow": ", ".join(sorted(allowed)).encode("ascii")},
                )
            return getattr(self, "render_" + method)(request)
        except HTTPError as error:
            return render_error(request, error)


def allowed_methods(obj: object) -> frozenset[str] | None:
    """
    The methods a resource answers, when it says (a L{JSONResource}: any
    other gets a 405); None for a resource that does not say.
    """
    return _own_methods(obj) if isinstance(obj, JSONResource) else None


def _own_methods(obj: object) -> frozenset[str]:
    """
    The HTTP methods an object's class really implements (cached per class).

    twisted.web's C{Resource.render_HEAD} silently runs C{render_GET} and
    throws the body away (ANCHORS E7); streaming resources must define their
    own, so an inherited one does not count.
    """
    cls = type(obj)
    methods = _METHODS.get(cls)
    if methods is None:
        names = {name[len("render_") :] for name in dir(cls) if name.startswith("render_")}
        if getattr(cls, "render_HEAD", None) is resource.Resource.render_HEAD:
            names.discard("HEAD")
        methods = _METHODS[cls] = frozenset(names)
    return methods


_METHODS: dict[type, frozenset[str]] = {}


class Request(server.Request):
    """
    twisted.web's Request, with unexpected failures answered as JSON.

    The traceback goes to the log, the client gets C{{"error": "internal
    server error"}}; if the body had already started, the connection is
    aborted so the client sees a broken body rather than a clean short one.
    """

    def processingFailed(self, reason: Failure) -> None:
        log.failure(
            "Unhandled error while rendering {uri}", failure=reason, uri=self.uri
        )
        if self._disconnected or self.finished:
            return None
        if self.startedWriting:
            self.channel.transport.abortConnection()
            return None
        body = render_error(self, HTTPError(500, "internal server error"))
        self.write(body)
        self.finish()
        return None
