# -*- test-case-name: tests.test_tus -*-
"""
Resumable uploads by tus 1.0 (https://tus.io/protocols/resumable-upload):
the core protocol and the creation, creation-with-upload, termination,
expiration and checksum extensions, over the pending store
(L{streamsvc.files.pending}), beside the IETF draft
(L{streamsvc.files.resumable}). What the existing tus clients speak:
tus-js-client and Uppy in browsers, tuspy, tus-java-client.

  - C{POST /files/DIR/} (the name from C{Upload-Metadata}'s C{filename})
    or C{POST /files/PATH}, with C{Tus-Resumable: 1.0.0},
    C{Upload-Length} and a token: 201 with C{Location: /uploads/<id>}
    and C{Upload-Expires}. A body (C{application/offset+octet-stream}) is
    the first append (creation-with-upload).
  - C{HEAD /uploads/<id>}: C{Upload-Offset} (durable bytes only),
    C{Upload-Length}, C{Upload-Metadata}, C{Upload-Expires},
    C{Cache-Control: no-store}.
  - C{PATCH /uploads/<id>} (C{application/offset+octet-stream},
    C{Upload-Offset}, optionally C{Upload-Checksum}): an append; 204 with
    the new C{Upload-Offset}. A wrong offset is a 409, a checksum that
    does not match 460 (nothing appended), an algorithm we lack 400. The
    append that reaches C{Upload-Length} completes the upload: its checks
    run and the store installs the file, before the 204.
  - C{DELETE /uploads/<id>}: 204, the data gone.
  - C{OPTIONS}: C{Tus-Version}, C{Tus-Extension}, C{Tus-Max-Size},
    C{Tus-Checksum-Algorithm}.

Every request but C{OPTIONS} carries C{Tus-Resumable: 1.0.0} (412 with
C{Tus-Version} otherwise), every answer has it. C{X-HTTP-Method-Override}
turns a POST into the method it names, for clients behind proxies that
only pass GET and POST.

Not offered: creation-defer-length (the length must be known at the
creation: the limits are checked before a byte is stored) and
concatenation (parallel parts).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from urllib.parse import quote

from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from streamsvc._transport import request_over
from streamsvc.digests import CHECKSUM_ALGORITHMS
from streamsvc.errors import HTTPError, failure_error
from streamsvc.files.fields import count_field, media_type, one_header
from streamsvc.files.paths import write_segments
from streamsvc.files.pending import (
    Appended,
    Conflict,
    ContentMismatch,
    HeldBody,
    PendingState,
    PendingUploads,
)
from streamsvc.files.store import WriteChecks, WritePreconditions
from streamsvc.files.upload import Uploads, answer_no_content, answer_write_error
from streamsvc.interfaces import IBodyConsumer
from streamsvc.ranges import http_date

#: The protocol version we speak (C{Tus-Resumable}, C{Tus-Version}).
TUS_VERSION = b"1.0.0"
#: The extensions we offer (C{Tus-Extension}).
TUS_EXTENSIONS = b"creation,creation-with-upload,termination,expiration,checksum"
#: The media type of an append's body.
OFFSET_OCTET_STREAM = b"application/offset+octet-stream"
#: The status of an append whose C{Upload-Checksum} does not match its bytes.
CHECKSUM_MISMATCH = 460
#: C{Tus-Checksum-Algorithm}.
CHECKSUMS = ",".join(CHECKSUM_ALGORITHMS).encode("ascii")
#: The longest C{Upload-Metadata} (it is kept in the upload's state).
MAX_METADATA = 8192
#: Methods C{X-HTTP-Method-Override} may name.
OVERRIDABLE = frozenset({b"PATCH", b"DELETE", b"HEAD"})

_WHAT = "file store"


# -- the fields (pure) ---------------------------------------------------------


def parse_metadata(value: bytes | None) -> dict[str, str]:
    """
    C{Upload-Metadata}: comma-separated C{key base64value} pairs (the value
    may be absent); keys unique, ASCII, without spaces or commas; values
    UTF-8. A 400 that says what is wrong otherwise.
    """
    metadata: dict[str, str] = {}
    if value is None or not value.strip():
        return metadata
    if len(value) > MAX_METADATA:
        raise HTTPError(400, f"Upload-Metadata is longer than {MAX_METADATA} bytes")
    for pair in value.split(b","):
        parts = pair.strip().split(b" ")
        if len(parts) > 2 or not parts[0]:
            raise HTTPError(400, "Upload-Metadata must be comma-separated 'key base64value' pairs")
        try:
            key = parts[0].decode("ascii")
            text = base64.b64decode(parts[1], validate=True).decode("utf-8") if len(parts) == 2 else ""
        except (UnicodeDecodeError, binascii.Error):
            raise HTTPError(400, "Upload-Metadata values must be base64 of UTF-8 text") from None
        if not key.isprintable() or key in metadata:
            raise HTTPError(400, "Upload-Metadata keys must be printable and unique")
        metadata[key] = text
    return metadata


def encode_metadata(metadata: dict[str, str]) -> bytes:
    """C{Upload-Metadata} for C{metadata} (what L{parse_metadata} reads)."""
    return b",".join(
        key.encode("ascii") + (b" " + base64.b64encode(text.encode("utf-8")) if text else b"")
        for key, text in metadata.items()
    )


def parse_checksum(value: bytes | None) -> dict[str, bytes]:
    """
    C{Upload-Checksum: ALGORITHM BASE64}: the digest an append's bytes must
    have, by algorithm (empty when absent); 400 for an algorithm we lack or
    a malformed value.
    """
    if value is None:
        return {}
    name, _, encoded = value.strip().partition(b" ")
    algorithm = name.decode("latin-1").lower()
    factory = CHECKSUM_ALGORITHMS.get(algorithm)
    if factory is None:
        raise HTTPError(400, f"Upload-Checksum: unsupported algorithm (these are: {CHECKSUMS.decode()})")
    try:
        digest = base64.b64decode(encoded.strip(), validate=True)
    except binascii.Error:
        raise HTTPError(400, "Upload-Checksum: the checksum must be base64") from None
    if len(digest) != factory().digest_size:
        raise HTTPError(400, f"Upload-Checksum: not a {algorithm} digest")
    return {algorithm: digest}


def wants_tus(request: IRequest) -> bool:
    """Whether a request to C{/files} is a tus creation (a POST with C{Tus-Resumable})."""
    return request.method == b"POST" and request.requestHeaders.hasHeader(b"tus-resumable")


def check_version(request: IRequest) -> None:
    """
    Every answer says C{Tus-Resumable}; a request (but an C{OPTIONS}) in
    another version is a 412 with the one we speak.
    """
    request.setHeader(b"tus-resumable", TUS_VERSION)
    if request.method == b"OPTIONS":
        return
    if (request.getHeader(b"tus-resumable") or b"").strip() != TUS_VERSION:
        raise HTTPError(412, "this server speaks tus 1.0.0 (Tus-Resumable)", {b"tus-version": TUS_VERSION})


def override_method(request: IRequest) -> None:
    """A POST with C{X-HTTP-Method-Override: PATCH|DELETE|HEAD} becomes that method."""
    override = request.getHeader(b"x-http-method-override")
    if override is None or request.method != b"POST":
        return
    method = override.strip().upper()
    if method not in OVERRIDABLE:
        raise HTTPError(400, "X-HTTP-Method-Override may be PATCH, DELETE or HEAD")
    request.method = method


# -- the protocol --------------------------------------------------------------


class TusUploads:
    """
    tus 1.0 on C{pending}: creations from C{/files} (L{create}), and the
    requests on the uploads (an L{streamsvc.files.resumable.UploadProtocol}
    for L{streamsvc.files.resumable.UploadsResource}).
    """

    def __init__(self, pending: PendingUploads, uploads: Uploads, *, uploads_path: str = "/uploads") -> None:
        self.pending = pending
        self.uploads = uploads
        self.uploads_path = uploads_path

    def location(self, state: PendingState) -> bytes:
        return f"{self.uploads_path}/{quote(state.id)}".encode("ascii")

    def _expires(self, request: IRequest, state: PendingState) -> None:
        request.setHeader(b"upload-expires", http_date(state.expires_at(self.pending.expiry)))

    # creations

    def create(self, request: IRequest, *, paused: bool) -> TusCreation:
        """
        Decide on a creation when its headers are in: the L{TusCreation}
        that takes its body (if any) and answers, or an L{HTTPError}.
        """
        check_version(request)
        self.uploads.authorize(request)
        if request.requestHeaders.hasHeader(b"upload-defer-length"):
            raise HTTPError(400, "Upload-Defer-Length is not supported: send Upload-Length")
        if request.requestHeaders.hasHeader(b"upload-concat"):
            raise HTTPError(400, "Upload-Concat (concatenation) is not supported")
        length = count_field(one_header(request, b"upload-length"), "Upload-Length")
        if length is None:
            raise HTTPError(400, "a tus creation needs Upload-Length")
        if length > self.pending.max_bytes:
            raise HTTPError(413, f"upload too large: at most {self.pending.max_bytes} bytes")
        metadata = parse_metadata(one_header(request, b"upload-metadata"))
        postpath = list(request.postpath)
        if not postpath or postpath[-1] == b"":  # a folder: the name is the file's
            name = metadata.get("filename")
            if not name:
                raise HTTPError(400, "a POST to a folder needs Upload-Metadata with a filename")
            postpath = postpath[:-1] + [name.encode("utf-8")]
        segments = write_segments(postpath)
        body_length = getattr(request, "body_length", None)
        if body_length != 0 and media_type(request) != OFFSET_OCTET_STREAM and (
                body_length is not None or request.requestHeaders.hasHeader(b"transfer-encoding")):
            raise HTTPError(415, "the body of a tus creation must be application/offset+octet-stream")
        if body_length is not None and body_length > length:
            raise HTTPError(413, f"the body is longer than Upload-Length ({length})")
        checksum = parse_checksum(one_header(request, b"upload-checksum"))
        checks = WriteChecks(WritePreconditions.of(request), {})
        return TusCreation(self, request, segments, checks, length=length, metadata=metadata, checksum=checksum,
                           paused=paused)

    def answer_created(self, request: IRequest, appended: Appended) -> None:
        if request_over(request):
            return
        state = appended.state
        request.setResponseCode(201)
        request.setHeader(b"location", self.location(state))
        request.setHeader(b"upload-offset", b"%d" % (state.offset,))
        self._expires(request, state)
        body = b'{"upload": "%s", "offset": %d, "length": %d}\n' % (
            self.location(state), state.offset, state.length or 0)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"content-length", b"%d" % (len(body),))
        request.write(body)
        request.finish()

    def answer_failure(self, request: IRequest, failure: Failure) -> None:
        error = failure_error(request, failure, _WHAT)
        if isinstance(error, ContentMismatch):
            error = HTTPError(CHECKSUM_MISMATCH, "Upload-Checksum does not match the bytes: nothing appended")
        elif isinstance(error, Conflict):
            headers = dict(error.headers)
            headers[b"upload-offset"] = b"%d" % (error.state.offset,)
            error = HTTPError(409, error.message, headers)
        answer_write_error(request, error)

    # UploadProtocol: the requests on /uploads/<id>

    def prepare(self, request: IRequest) -> None:
        check_version(request)
        override_method(request)

    def options(self, request: IRequest) -> None:
        options(request, self.pending.max_bytes)

    def head(self, request: IRequest, state: PendingState) -> bytes:
        request.setResponseCode(200)
        request.setHeader(b"upload-offset", b"%d" % (state.offset,))
        if state.length is not None:
            request.setHeader(b"upload-length", b"%d" % (state.length,))
        if state.metadata:
            request.setHeader(b"upload-metadata", encode_metadata(state.metadata))
        self._expires(request, state)
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"content-length", b"0")
        return b""

    def append(self, request: IRequest, state: PendingState) -> IBodyConsumer:
        if media_type(request) != OFFSET_OCTET_STREAM:
            raise HTTPError(415, "an append's body must be application/offset+octet-stream")
        offset = count_field(one_header(request, b"upload-offset"), "Upload-Offset")
        if offset is None:
            raise HTTPError(400, "an append needs Upload-Offset")
        length = count_field(one_header(request, b"upload-length"), "Upload-Length")
        if length is not None and length != state.length:
            raise HTTPError(400, f"the upload's length is {state.length}, not {length}")
        checksum = parse_checksum(one_header(request, b"upload-checksum"))
        body_length = getattr(request, "body_length", None)
        if state.complete:
            if offset != state.offset:
                raise self._conflict(state, offset)
            if body_length != 0:
                raise HTTPError(413, "the upload is complete: nothing more can be appended")
            return _Answered(lambda: self._answer_append(request, Appended(state)))
        try:
            append = self.pending.append(state, request, offset=offset, complete=None, content_length=body_length,
                                         content_digests=checksum, content_algorithms=CHECKSUM_ALGORITHMS)
        except Conflict as error:
            raise self._conflict(error.state, offset) from None
        append.done.addCallbacks(lambda appended: self._answer_append(request, appended),
                                 lambda failure: self.answer_failure(request, failure))
        return append

    def _conflict(self, state: PendingState, offset: int) -> HTTPError:
        if offset == state.offset:
            message = "another append to this upload is in progress"
        else:
            message = f"the upload's offset is {state.offset}, not {offset}"
        return HTTPError(409, message, {b"upload-offset": b"%d" % (state.offset,)})

    def _answer_append(self, request: IRequest, appended: Appended) -> None:
        if request_over(request):
            return
        state = appended.state
        request.setHeader(b"upload-offset", b"%d" % (state.offset,))
        self._expires(request, state)
        if appended.installed is not None:
            request.setHeader(b"etag", appended.installed.etag.encode("ascii"))  # the installed file's
        answer_no_content(request)

    def delete(self, request: IRequest, state: PendingState) -> int:
        self.pending.cancel(state).addCallbacks(
            lambda _: answer_no_content(request), lambda failure: self.answer_failure(request, failure))
        return NOT_DONE_YET  # type: ignore[no-any-return]


def options(request: IRequest, max_size: int) -> None:
    """The headers of an C{OPTIONS} answer that say what we offer of tus."""
    request.setHeader(b"tus-resumable", TUS_VERSION)
    request.setHeader(b"tus-version", TUS_VERSION)
    request.setHeader(b"tus-extension", TUS_EXTENSIONS)
    request.setHeader(b"tus-max-size", b"%d" % (max_size,))
    request.setHeader(b"tus-checksum-algorithm", CHECKSUMS)


class TusCreation(HeldBody):
    """A tus creation: the upload saved, then its body (if any) appended, then the 201."""

    def __init__(self, tus: TusUploads, request: IRequest, segments: tuple[str, ...], checks: WriteChecks, *,
                 length: int, metadata: dict[str, str], checksum: dict[str, bytes], paused: bool) -> None:
        super().__init__(request, paused)
        self._tus = tus
        self._checksum = checksum
        tus.pending.create(segments, checks, length=length, protocol="tus", metadata=metadata).addCallbacks(
            self._created, self._refused)

    def _created(self, state: PendingState) -> None:
        request, tus = self._request, self._tus
        try:
            append = tus.pending.append(state, request, offset=0, complete=None,
                                        content_length=getattr(request, "body_length", None),
                                        content_digests=self._checksum, content_algorithms=CHECKSUM_ALGORITHMS)
        except HTTPError as error:
            self._cannot_begin()
            tus.answer_failure(request, Failure(error))
            return
        append.done.addCallbacks(lambda appended: tus.answer_created(request, appended),
                                 lambda failure: tus.answer_failure(request, failure))
        self._begin(append)

    def _refused(self, failure: Failure) -> None:
        self._cannot_begin()
        self._tus.answer_failure(self._request, failure)


@implementer(IBodyConsumer)
class _Answered:
    """The consumer of an empty append to a complete upload: nothing to store, the answer at its end."""

    def __init__(self, answer: Callable[[], None]) -> None:
        self._answer = answer

    def write(self, data: bytes) -> None:
        pass

    def body_done(self) -> None:
        self._answer()

    def body_failed(self, reason: Failure) -> None:
        pass
