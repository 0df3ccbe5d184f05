# -*- test-case-name: tests.test_resumable -*-
"""
Resumable uploads, the IETF draft (draft-ietf-httpbis-resumable-upload,
interop version 8: drafts -09 to -11; version 7, drafts -06 to -08, is
accepted too: what we do is the same for both), over the pending store
(L{streamsvc.files.pending}).

  - Creation: a C{PUT} or C{POST} to C{/files/PATH} with C{Upload-Complete}
    and a token. The upload is saved, then (for a client that sent an
    interop version we speak) C{104 Upload Resumption Supported} with
    C{Location: /uploads/<id>} goes out before a byte of the body is read;
    then the body streams in as a PUT's does. Complete (C{?1}, whole): the
    usual upload answer, with C{Upload-Complete: ?1}. Otherwise C{201} with
    the C{Location} and C{Upload-Offset}; cut: what arrived is kept.
  - C{HEAD /uploads/<id>}: C{Upload-Offset} (durable bytes only),
    C{Upload-Complete}, C{Upload-Length} when known, C{Upload-Limit},
    C{Cache-Control: no-store}.
  - C{PATCH /uploads/<id>} (C{application/partial-upload}, C{Upload-Offset},
    C{Upload-Complete}): an append. A wrong offset is a 409 with the real
    C{Upload-Offset} and the draft's problem type.
  - C{DELETE /uploads/<id>}: 204, the data gone.

Every request needs a token, as a PUT does. The headers are Structured
Fields (RFC 9651): booleans C{?1}/C{?0}, non-negative integers; anything
else is a 400 that says which field.
"""

from __future__ import annotations

from typing import Any, Protocol
from urllib.parse import quote

from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from streamsvc._transport import request_over
from streamsvc.digests import DigestError, expected_digests
from streamsvc.errors import HTTPError, JSONResource, failure_error
from streamsvc.files.fields import count_field, list_header, media_type, one_header
from streamsvc.files.paths import write_segments
from streamsvc.files.pending import (
    Appended,
    Conflict,
    HeldBody,
    InconsistentLength,
    PendingState,
    PendingUploads,
    UploadCompleted,
)
from streamsvc.files.store import WriteChecks, WritePreconditions
from streamsvc.files.upload import Uploads, answer_installed, answer_no_content, answer_write_error
from streamsvc.interfaces import IBodyConsumer, IStreamingBodyResource

#: The interop versions we speak (C{Upload-Draft-Interop-Version}), and the one we prefer.
INTEROP_VERSIONS = frozenset({7, 8})
INTEROP_VERSION = 8

#: The media type of an append's body.
PARTIAL_UPLOAD = b"application/partial-upload"

#: The draft's problem types (IANA's HTTP problem types registry).
PROBLEMS = "https://iana.org/assignments/http-problem-types#"

_WHAT = "file store"


# -- the fields (pure) ---------------------------------------------------------


def sf_boolean(value: bytes | None, name: str) -> bool | None:
    """A Structured Field boolean (C{?1}, C{?0}), None when absent; 400 otherwise."""
    if value is None:
        return None
    value = value.strip()
    if value == b"?1":
        return True
    if value == b"?0":
        return False
    raise HTTPError(400, f"{name} must be ?1 or ?0")


#: A non-negative Structured Field integer, None when absent; 400 otherwise.
sf_integer = count_field


def interop_version(request: IRequest) -> int | None:
    """The draft interop version the client speaks, if it is one of ours."""
    try:
        version = sf_integer(request.getHeader(b"upload-draft-interop-version"), "Upload-Draft-Interop-Version")
    except HTTPError:
        return None
    return version if version in INTEROP_VERSIONS else None


def upload_limit(max_size: int, max_age: float) -> bytes:
    """The C{Upload-Limit} dictionary: the longest upload, and the seconds it has left."""
    return b"max-size=%d, max-age=%d" % (max_size, max(0, int(max_age)))


def wants_resumable(request: IRequest) -> bool:
    """Whether a PUT or POST to C{/files} asks for a resumable upload (it has C{Upload-Complete})."""
    return request.method in (b"PUT", b"POST") and request.requestHeaders.hasHeader(b"upload-complete")


def _problem(error: HTTPError, state: PendingState | None = None, provided: int | None = None) -> HTTPError:
    """C{error} with the draft's problem type, when it has one, and the upload's fields."""
    headers = dict(error.headers)
    headers[b"upload-complete"] = b"?0"
    problem: dict[str, Any] | None = None
    if isinstance(error, Conflict):
        state = error.state
        headers[b"upload-offset"] = b"%d" % (state.offset,)
        if provided is not None and provided != state.offset:
            problem = {"type": PROBLEMS + "mismatching-upload-offset", "expected-offset": state.offset,
                       "provided-offset": provided}
    elif isinstance(error, InconsistentLength):
        problem = {"type": PROBLEMS + "inconsistent-upload-length"}
    elif isinstance(error, UploadCompleted):
        problem = {"type": PROBLEMS + "completed-upload"}
        headers[b"upload-complete"] = b"?1"
    return HTTPError(error.code, error.message, headers, problem=problem or error.problem)


# -- the protocol --------------------------------------------------------------


class ResumableUploads:
    """
    The IETF draft on C{pending}: creations from C{/files} (L{create}) and
    the upload resources (L{UploadsResource}), under C{uploads_path}.
    """

    def __init__(self, pending: PendingUploads, uploads: Uploads, *, files_path: str = "/files",
                 uploads_path: str = "/uploads") -> None:
        self.pending = pending
        self.uploads = uploads
        self.files_path = files_path
        self.uploads_path = uploads_path

    def location(self, state: PendingState) -> bytes:
        return f"{self.uploads_path}/{quote(state.id)}".encode("ascii")

    def limit(self, state: PendingState) -> bytes:
        max_size = self.pending.max_bytes if state.length is None else state.length
        return upload_limit(max_size, self.pending.seconds_left(state))

    def create(self, request: IRequest, *, paused: bool) -> CreationBody:
        """
        Decide on a creation when its headers are in: the L{CreationBody}
        that takes its body, or an L{HTTPError} (before the body is read).
        """
        self.uploads.authorize(request)
        segments = write_segments(request.postpath)
        if request.requestHeaders.hasHeader(b"content-range"):
            raise HTTPError(400, "a resumable upload takes no Content-Range")
        complete = sf_boolean(one_header(request, b"upload-complete"), "Upload-Complete")
        length = sf_integer(one_header(request, b"upload-length"), "Upload-Length")
        body_length = getattr(request, "body_length", None)
        if complete and body_length is not None:
            if length is not None and length != body_length:
                raise _problem(InconsistentLength(None, "Upload-Length is not the length of the body"))
            length = body_length
        try:
            expected = expected_digests(
                # The whole representation's digest; Content-Digest is this
                # request's content, which is the representation only when complete.
                list_header(request, b"content-digest") if complete else None,
                list_header(request, b"digest") if complete else None,
                list_header(request, b"repr-digest"),
            )
        except DigestError as error:
            raise HTTPError(400, str(error)) from None
        checks = WriteChecks(WritePreconditions.of(request), expected)
        return CreationBody(self, request, segments, checks, complete=bool(complete), length=length,
                            version=interop_version(request), paused=paused)

    def answer(self, request: IRequest, appended: Appended, *, created: bool) -> None:
        """The answer to a creation or an append whose body was received whole."""
        if request_over(request):
            return
        state = appended.state
        if appended.installed is not None:
            request.setHeader(b"upload-complete", b"?1")
            assert appended.digests is not None
            answer_installed(request, appended.installed, self.files_path, state.segments, appended.digests)
            return
        request.setHeader(b"upload-complete", b"?0")
        request.setHeader(b"upload-offset", b"%d" % (state.offset,))
        request.setHeader(b"upload-limit", self.limit(state))
        request.setHeader(b"cache-control", b"no-store")
        if created:
            request.setResponseCode(201)
            request.setHeader(b"location", self.location(state))
            body = b'{"upload": "%s", "offset": %d}\n' % (self.location(state), state.offset)
            request.setHeader(b"content-type", b"application/json")
            request.setHeader(b"content-length", b"%d" % (len(body),))
            request.write(body)
            request.finish()
        else:
            answer_no_content(request)

    # UploadProtocol: the requests on /uploads/<id>

    def prepare(self, request: IRequest) -> None:
        pass

    def options(self, request: IRequest) -> None:
        request.setHeader(b"accept-patch", PARTIAL_UPLOAD)
        request.setHeader(b"upload-limit", b"max-size=%d" % (self.pending.max_bytes,))

    def append(self, request: IRequest, state: PendingState) -> IBodyConsumer:
        if media_type(request) != PARTIAL_UPLOAD:
            raise _problem(HTTPError(415, "an append's body must be application/partial-upload"))
        offset = sf_integer(one_header(request, b"upload-offset"), "Upload-Offset")
        complete = sf_boolean(one_header(request, b"upload-complete"), "Upload-Complete")
        if offset is None or complete is None:
            raise _problem(HTTPError(400, "an append needs Upload-Offset and Upload-Complete"))
        length = sf_integer(one_header(request, b"upload-length"), "Upload-Length")
        body_length = getattr(request, "body_length", None)
        if state.complete:
            error: HTTPError = UploadCompleted(state)
            if body_length:
                error = InconsistentLength(state, "the upload is complete already")
            raise _problem(error)
        if length is not None and state.length is not None and length != state.length:
            raise _problem(InconsistentLength(state, f"the upload's length is {state.length}, not {length}"))
        if complete and body_length is not None and length is not None and offset + body_length != length:
            raise _problem(InconsistentLength(state, "Upload-Length is not where this append ends"))
        try:
            content = expected_digests(list_header(request, b"content-digest"), None, None)
        except DigestError as error:
            raise HTTPError(400, str(error)) from None
        try:
            append = self.pending.append(state, request, offset=offset, complete=complete,
                                         content_length=body_length, content_digests=content)
        except HTTPError as error:
            raise _problem(error, provided=offset) from None
        append.done.addCallbacks(lambda appended: self.answer(request, appended, created=False),
                                 lambda failure: self.answer_failure(request, failure, offset))
        return append  # the body's consumer: it exists already, nothing to hold back

    def head(self, request: IRequest, state: PendingState) -> bytes:
        request.setResponseCode(204)
        request.setHeader(b"upload-offset", b"%d" % (state.offset,))
        request.setHeader(b"upload-complete", b"?1" if state.complete else b"?0")
        if state.length is not None:
            request.setHeader(b"upload-length", b"%d" % (state.length,))
        request.setHeader(b"upload-limit", self.limit(state))
        request.setHeader(b"cache-control", b"no-store")
        return b""

    def delete(self, request: IRequest, state: PendingState) -> int:
        self.pending.cancel(state).addCallbacks(
            lambda _: answer_no_content(request), lambda failure: self.answer_failure(request, failure))
        return NOT_DONE_YET  # type: ignore[no-any-return]

    def answer_failure(self, request: IRequest, failure: Failure, provided: int | None = None) -> None:
        answer_write_error(request, _problem(failure_error(request, failure, _WHAT), provided=provided))


class CreationBody(HeldBody):
    """A creating request's body: the upload saved, the 104 sent, then the body appended."""

    def __init__(self, resumable: ResumableUploads, request: IRequest, segments: tuple[str, ...],
                 checks: WriteChecks, *, complete: bool, length: int | None, version: int | None,
                 paused: bool) -> None:
        super().__init__(request, paused)
        self._resumable = resumable
        self._complete = complete
        self._version = version
        resumable.pending.create(segments, checks, length=length, protocol="ietf").addCallbacks(
            self._created, self._refused)

    def _created(self, state: PendingState) -> None:
        request, resumable = self._request, self._resumable
        if self._version is not None and not request_over(request) and not request.startedWriting:
            _informational(request, [
                (b"Location", resumable.location(state)),
                (b"Upload-Draft-Interop-Version", b"%d" % (self._version,)),
                (b"Upload-Limit", resumable.limit(state)),
            ])
        try:
            append = resumable.pending.append(state, request, offset=0, complete=self._complete,
                                              content_length=getattr(request, "body_length", None))
        except HTTPError as error:
            self._cannot_begin()
            resumable.answer_failure(request, Failure(error))
            return
        append.done.addCallbacks(lambda appended: resumable.answer(request, appended, created=True),
                                 lambda failure: resumable.answer_failure(request, failure))
        self._begin(append)

    def _refused(self, failure: Failure) -> None:
        self._cannot_begin()
        self._resumable.answer_failure(self._request, failure)


def _informational(request: IRequest, headers: list[tuple[bytes, bytes]]) -> None:
    """A C{104 Upload Resumption Supported} before the final answer (HTTP/1.1 only: 1.0 has no 1xx)."""
    if request.clientproto != b"HTTP/1.1":
        return
    lines = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
    request.channel.transport.write(b"HTTP/1.1 104 Upload Resumption Supported\r\n" + lines + b"\r\n")


class UploadProtocol(Protocol):
    """What answers the requests on one protocol's uploads, for L{UploadsResource}."""

    def prepare(self, request: IRequest) -> None:
        """Before the upload is looked up: this protocol's checks of any request (its version...)."""

    def head(self, request: IRequest, state: PendingState) -> bytes: ...

    def append(self, request: IRequest, state: PendingState) -> IBodyConsumer:
        """The consumer of a PATCH's body (it answers), or an L{HTTPError}."""

    def delete(self, request: IRequest, state: PendingState) -> int: ...

    def options(self, request: IRequest) -> None:
        """The headers of an C{OPTIONS} answer that say what this protocol offers."""


@implementer(IStreamingBodyResource)
class UploadsResource(JSONResource):
    """
    C{/uploads/<id>}: HEAD, PATCH and DELETE on one pending upload, by the
    protocol that created it (C{protocols}: L{PendingState.protocol} ->
    L{UploadProtocol}). A request is that protocol's when it says so
    (C{Tus-Resumable}), the draft's otherwise.
    """

    isLeaf = True

    def __init__(self, pending: PendingUploads, uploads: Uploads, protocols: dict[str, UploadProtocol],
                 max_body_bytes: int) -> None:
        super().__init__()
        self.pending = pending
        self.uploads = uploads
        self.protocols = protocols
        self.max_body_bytes = max_body_bytes

    def _asked(self, request: IRequest) -> UploadProtocol:
        """The protocol the request speaks, its checks done."""
        asked = "tus" if request.requestHeaders.hasHeader(b"tus-resumable") else "ietf"
        protocol = self.protocols.get(asked) or self.protocols["ietf"]
        protocol.prepare(request)
        return protocol

    def _state(self, request: IRequest) -> tuple[UploadProtocol, PendingState]:
        self._asked(request)
        return self._found(request)

    def _found(self, request: IRequest) -> tuple[UploadProtocol, PendingState]:
        """The upload the request names and the protocol that answers it (the request's checks done)."""
        self.uploads.authorize(request)
        if len(request.postpath) != 1:
            raise HTTPError(404, "no such upload")
        state = self.pending.find(request.postpath[0].decode("latin-1"))
        if state is None or state.protocol not in self.protocols:
            raise HTTPError(404, "no such upload")
        return self.protocols[state.protocol], state

    def body_consumer(self, request: IRequest) -> IBodyConsumer | None:
        self._asked(request)  # (a method override makes a POST a PATCH)
        if request.method != b"PATCH":
            return None
        protocol, state = self._found(request)
        return protocol.append(request, state)

    def render_PATCH(self, request: IRequest) -> int:
        protocol, state = self._state(request)
        protocol.append(request, state).body_done()  # an empty append (it may complete the upload)
        return NOT_DONE_YET  # type: ignore[no-any-return]

    def render_POST(self, request: IRequest) -> bytes | int:
        self._asked(request)
        if request.method == b"POST":
            raise HTTPError(405, "method not allowed", {b"allow": b"HEAD, PATCH, DELETE, OPTIONS"})
        return self.render(request)  # overridden (X-HTTP-Method-Override): its checks run again, and pass

    def render_HEAD(self, request: IRequest) -> bytes:
        protocol, state = self._state(request)
        return protocol.head(request, state)

    def render_DELETE(self, request: IRequest) -> int:
        protocol, state = self._state(request)
        return protocol.delete(request, state)

    def render_OPTIONS(self, request: IRequest) -> bytes:
        """What the protocols offer (no token needed: it says nothing of any upload)."""
        self._asked(request)
        request.setResponseCode(204)
        request.setHeader(b"allow", b"HEAD, PATCH, DELETE, OPTIONS")
        for protocol in self.protocols.values():
            protocol.options(request)
        return b""

    def render_GET(self, request: IRequest) -> bytes:
        self._state(request)
        raise HTTPError(405, "an upload is read with HEAD", {b"allow": b"HEAD, PATCH, DELETE, OPTIONS"})
