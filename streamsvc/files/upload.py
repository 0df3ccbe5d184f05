# -*- test-case-name: tests.test_upload -*-
"""
C{PUT} and C{DELETE /files}, the HTTP side: who may write, what a request
asks for, and the answers. Where the bytes go is the store's
(L{streamsvc.interfaces.IFileStore}): the local disk or an object store,
each installing a new version whole or not at all.

An upload is decided when its headers arrive (token, path, preconditions,
digest fields: 401/400/403/404/409/412 before a byte of the body is read),
then its body streamed into the store's L{IUploadSink} as it arrives, paced
by the sink (the socket is not read while the store is behind), and
answered once the sink says the new version is in place: 201 with its
C{Location}, or 204 for a replaced file, with its ETag and C{Repr-Digest}.
"""

from __future__ import annotations

import json
from urllib.parse import quote

from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from streamsvc._transport import request_over
from streamsvc.auth import TokenSet, check_bearer
from streamsvc.digests import STORED_ALGORITHM, DigestError, expected_digests, field
from streamsvc.errors import HTTPError, answer_error, failure_error
from streamsvc.files.fields import list_header
from streamsvc.files.paths import write_segments
from streamsvc.files.store import Installed, UploadAborted, WriteChecks, WritePreconditions
from streamsvc.interfaces import IBodyConsumer, IFileStore, IUploadSink
from streamsvc.ranges import http_date

#: The default longest upload (C{[limits] max_upload_bytes}).
DEFAULT_MAX_UPLOAD_BYTES = 1024**3

#: What the log calls a store that failed a write.
_WHAT = "file store"


def _refuse_partial(request: IRequest) -> None:
    """
    A PUT with C{Content-Range} is a 400 (RFC 9110 §14.5: storing the
    fragment as the whole file would destroy it). (One with a
    C{Content-Encoding} never gets here: a 415 from L{streamsvc.body}, as
    for every body no resource decodes.)
    """
    if request.requestHeaders.hasHeader(b"content-range"):
        raise HTTPError(400, "PUT with Content-Range (partial update) is not supported")


def answer_write_error(request: IRequest, error: HTTPError) -> None:
    """
    Answer C{error} to a write (a PUT, a resumable upload's request) if the
    request can still be answered; also stop reading a body still coming.
    """
    if request_over(request) or request.startedWriting:
        answer_error(request, error)
        return
    fail = getattr(request, "fail_body", None)
    if fail is not None:
        fail(error)  # a BodyRequest: it also stops reading what is left
        return
    answer_error(request, error)


class Uploads:
    """
    PUT and DELETE into C{store}, for L{streamsvc.files.FilesResource}.

    Every request needs a Bearer token from C{tokens}; with none configured
    uploads are disabled (403, whatever the credentials).
    """

    def __init__(self, store: IFileStore, tokens: TokenSet) -> None:
        self.store = store
        self._tokens = tokens

    def authorize(self, request: IRequest) -> None:
        """Raise the L{HTTPError} a request without the right to write gets."""
        if not len(self._tokens):
            raise HTTPError(403, "uploads are disabled: no tokens are configured")
        error = check_bearer(request, self._tokens)
        if error is not None:
            raise error

    def put(self, request: IRequest) -> UploadBody:
        """
        Decide on a PUT, when its headers are in; the L{UploadBody} that
        takes its body, or an L{HTTPError} (answered before the body is read).
        """
        self.authorize(request)
        segments = write_segments(request.postpath)
        _refuse_partial(request)
        try:
            expected = expected_digests(
                list_header(request, b"content-digest"),
                list_header(request, b"digest"),
                list_header(request, b"repr-digest"),
            )
        except DigestError as error:
            raise HTTPError(400, str(error)) from None
        checks = WriteChecks(WritePreconditions.of(request), expected)
        sink = self.store.begin_upload(segments, checks, request)
        return UploadBody(request, sink, segments, checks)

    def delete(self, request: IRequest) -> int:
        """C{DELETE}: 204 once the name is gone (durably)."""
        self.authorize(request)
        segments = write_segments(request.postpath)

        self.store.delete(segments, WritePreconditions.of(request)).addCallbacks(
            lambda _: answer_no_content(request), lambda failure: answer_error(request, failure_error(request, failure, _WHAT))
        )
        return NOT_DONE_YET  # type: ignore[no-any-return]

    def make_folder(self, request: IRequest) -> int:
        """
        C{PUT /files/<path>/} without a body: the folder (and those on the
        way) made, 201, or 200 when it was there already; 409 when a file
        is in the way.
        """
        self.authorize(request)
        segments = write_segments(request.postpath[:-1])

        def done(created: bool) -> None:
            if not request_over(request):
                request.setResponseCode(201 if created else 200)
                request.setHeader(b"content-type", b"application/json")
                request.write(json.dumps({"folder": "/".join(segments), "created": created}).encode() + b"\n")
                request.finish()

        self.store.make_folder(segments).addCallbacks(
            done, lambda failure: answer_error(request, failure_error(request, failure, _WHAT))
        )
        return NOT_DONE_YET  # type: ignore[no-any-return]


@implementer(IBodyConsumer)
class UploadBody:
    """
    One PUT's body on its way into the store's C{sink}, and the answer once
    the sink has installed it (or the error, as soon as the sink fails).
    """

    def __init__(self, request: IRequest, sink: IUploadSink, segments: tuple[str, ...],
                 checks: WriteChecks) -> None:
        self._request = request
        self._sink = sink
        self._segments = segments
        self._checks = checks
        self._failed = False
        sink.done.addCallbacks(self._answer, self._sink_failed)

    @property
    def path(self) -> str:
        return "/".join(self._segments)

    # IBodyConsumer

    def write(self, data: bytes) -> None:
        self._sink.write(data)

    def body_done(self) -> None:
        self._sink.finish()

    def body_failed(self, reason: Failure) -> None:
        """The body will not be complete (the request side answers, if anyone): nothing is installed."""
        self._failed = True
        self._sink.abort()

    # the answer

    def _sink_failed(self, reason: Failure) -> None:
        if self._failed or reason.check(UploadAborted):
            return  # the body failed first: the request side has answered it
        answer_write_error(self._request, failure_error(self._request, reason, _WHAT))

    def _answer(self, installed: Installed) -> None:
        base = "/" + "/".join(quote(s.decode("utf-8", "surrogateescape"), safe="") for s in self._request.prepath)
        answer_installed(self._request, installed, base, self._segments, self._checks.hashes.digests())


def answer_no_content(request: IRequest) -> None:
    """A 204, now (if the request is still there to answer)."""
    if not request_over(request):
        request.setResponseCode(204)
        request.write(b"")
        request.finish()


def answer_installed(request: IRequest, installed: Installed, base: str, segments: tuple[str, ...],
                     digests: dict[str, bytes]) -> None:
    """
    The answer to a write that installed a new version (a PUT, the
    completing request of a resumable upload): 201 with its C{Location} and
    a JSON description for a new file, 204 for a replaced one; its ETag,
    Last-Modified and C{Repr-Digest} either way. C{base} is the URL path
    the files are served under (C{/files}), quoted.
    """
    if request_over(request):
        return
    digest = field({STORED_ALGORITHM: digests[STORED_ALGORITHM]})
    request.setHeader(b"etag", installed.etag.encode("ascii"))
    request.setHeader(b"last-modified", http_date(installed.mtime).encode("ascii"))
    # Repr-Digest, not Content-Digest: it describes the stored file (the
    # representation), where Content-Digest would have to describe this
    # answer's own body (RFC 9530 §2, §3).
    request.setHeader(b"repr-digest", digest)
    if not installed.created:
        request.setResponseCode(204)
        request.write(b"")
        request.finish()
        return
    location = base + "/" + "/".join(quote(s, safe="") for s in segments)
    body = json.dumps(
        {"path": "/".join(segments), "size": installed.size, "etag": installed.etag, "digest": digest.decode()}
    ).encode() + b"\n"
    request.setResponseCode(201)
    request.setHeader(b"location", location.encode("ascii"))
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"content-length", b"%d" % (len(body),))
    request.write(body)
    request.finish()
