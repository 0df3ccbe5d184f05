# -*- test-case-name: tests.test_files -*-
"""
C{/files}: the resource. Downloads (GET/HEAD) are answered here, done the
way static.File does not (see ANCHORS.md): strong ETags, every conditional
header, If-Range, safe multi-range, HEAD that mirrors GET without reading the
file, gzip that never touches a 206, and no way out of the root in any
spelling. Uploads (PUT/DELETE) are L{streamsvc.files.upload}'s.
"""

from __future__ import annotations

import json
import secrets
from typing import Any
from urllib.parse import quote

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from streamsvc.errors import HTTPError, JSONResource, answer_error, failure_error
from streamsvc.files.fields import (
    add_vary,
    escape_query,
    finish_without_body,
    list_header,
    singleton_header,
    wants_html,
)
from streamsvc.files.facts import FileFacts
from streamsvc.files.listing import HTMLPage, JSONArray, Listing
from streamsvc.files.local import LocalFileStore
from streamsvc.files.media import content_disposition
from streamsvc.files.resumable import ResumableUploads, wants_resumable
from streamsvc.files.tus import TusUploads, wants_tus
from streamsvc.files.upload import DEFAULT_MAX_UPLOAD_BYTES, Uploads
from streamsvc.interfaces import (
    IBodyConsumer,
    IFileStore,
    IReadAtOnce,
    IStoredFile,
    IStoredFolder,
    IStreamingBodyResource,
    IStreamProducer,
)
from streamsvc.signing import LinkSigner, check_duration
from streamsvc.producers import (
    DEFAULT_CHUNK_SIZE,
    IterableProducer,
    SourceTruncated,
    send_at_once,
    send_body,
    throttled,
)
from streamsvc.ranges import (
    ByteRange,
    RangeNotSatisfiable,
    body_length,
    evaluate_preconditions,
    if_range_allows_partial,
    multipart_byteranges,
    plan_ranges,
    unsatisfiable_content_range,
    weak,
)
from streamsvc.stages import GzipStage, accepts_gzip, is_compressible

#: Reads are capped at this size when the body is gzipped: a chunk is
#: compressed in one go, and 16 MiB at level 6 held the reactor for about
#: 500 ms here (256 KiB still ~7 ms: zlib does ~40 MiB/s on this kind of
#: machine); 64 KiB is a couple of milliseconds (BENCHMARKS.md).
GZIP_CHUNK_SIZE = 64 * 1024

log = Logger()

#: Request headers that make a GET ask for more than the whole file as it
#: is (in twisted.web's canonical spelling, which every name is given).
_DECIDING = frozenset(
    {b"Range", b"If-Match", b"If-None-Match", b"If-Modified-Since", b"If-Unmodified-Since", b"If-Range"}
)

#: What the log calls the store when it fails a read.
_WHAT = "file store"

#: The policy of the pages streamsvc makes (listings, /ui): its own scripts,
#: styles and media only, never inline, no frames, no plug-ins.
PAGE_CSP = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    b"connect-src 'self'; media-src 'self'; base-uri 'none'; form-action 'self'; "
    b"frame-ancestors 'none'"
)


@attrs.frozen
class _Body:
    """What a file response body is to be: spans of the file, maybe gzipped."""

    spans: list[bytes | ByteRange]
    gzip: bool


@implementer(IStreamingBodyResource)
class FilesResource(JSONResource):
    """
    Serves the files of C{store}: GET and HEAD; PUT and DELETE through
    C{uploads}. Only the store contract (L{IFileStore}) is used: the same
    plan (ranges, conditionals, gzip, download names) for every store.

    @param store: where the files are (L{IFileStore}); a path is shorthand
        for a L{LocalFileStore} of that folder, which must exist.
    @param chunk_size: bytes per read.
    @param max_ranges: more ranges than this in one request get the full 200.
    @param gzip: compress compressible types for clients that accept gzip.
    @param streaming: register producers as push (True) or pull producers.
    @param clock: the reactor, for scheduling push producers (tests pass a Clock).
    @param uploads: what takes PUT and DELETE (L{Uploads}); without it they
        are refused (403).
    @param resumable: what takes a PUT or POST with C{Upload-Complete} (a
        resumable upload, L{streamsvc.files.resumable}); without it such a
        request is an ordinary PUT (and a POST a 400).
    @param tus: what takes a POST with C{Tus-Resumable} (a tus 1.0
        creation, L{streamsvc.files.tus}).
    @param max_upload_bytes: the longest PUT body (C{[limits]
        max_upload_bytes}).
    @param sendfile: send unencoded bodies to a plain TCP socket with
        C{os.sendfile} (L{streamsvc._sendfile}); the buffered path otherwise.
    """

    isLeaf = True

    def __init__(
        self,
        store: IFileStore | str,
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        max_ranges: int = 16,
        gzip: bool = True,
        gzip_level: int = 6,
        streaming: bool = True,
        clock: IReactorTime | None = None,
        uploads: Uploads | None = None,
        resumable: ResumableUploads | None = None,
        tus: TusUploads | None = None,
        max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
        sendfile: bool = True,
        sandbox_html: bool = True,
        links: LinkSigner | None = None,
    ) -> None:
        super().__init__()
        self.sandbox_html = sandbox_html
        self.links = links
        if not 1 <= gzip_level <= 9:
            raise ValueError(f"gzip_level must be 1-9, not {gzip_level}")
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, not {chunk_size}")
        if isinstance(store, str):
            store = LocalFileStore(store, largest=chunk_size, clock=clock)
        self.store = store
        self.chunk_size = chunk_size
        self.max_ranges = max_ranges
        self.gzip = gzip
        self.gzip_level = gzip_level
        self.streaming = streaming
        self.clock = clock
        self.uploads = uploads
        self.resumable = resumable
        self.tus = tus
        self.max_body_bytes = max_upload_bytes
        self.sendfile = sendfile

    # IStreamingBodyResource: the body of a PUT goes to disk as it arrives.

    def body_consumer(self, request: IRequest) -> IBodyConsumer | None:
        if self.resumable is not None and wants_resumable(request):
            return self.resumable.create(request, paused=True)
        if self.tus is not None and wants_tus(request):
            return self.tus.create(request, paused=True)
        if request.method != b"PUT":
            return None  # no other method here takes a body
        if request.postpath and request.postpath[-1] == b"" and len(request.postpath) > 1:
            self._uploads().authorize(request)
            raise HTTPError(400, "a PUT of a folder (a path ending in /) takes no body")
        return self._uploads().put(request)

    def _uploads(self) -> Uploads:
        if self.uploads is None:
            raise HTTPError(403, "uploads are disabled")
        return self.uploads

    def render_PUT(self, request: IRequest) -> int:
        """A PUT without a body (the only kind rendered): an empty file, or a folder."""
        if self.resumable is not None and wants_resumable(request):
            self.resumable.create(request, paused=False).body_done()  # an empty creation
            return NOT_DONE_YET  # type: ignore[no-any-return]
        if request.postpath and request.postpath[-1] == b"" and len(request.postpath) > 1:
            return self._uploads().make_folder(request)
        self._uploads().put(request).body_done()
        return NOT_DONE_YET  # type: ignore[no-any-return]

    def render_DELETE(self, request: IRequest) -> int:
        return self._uploads().delete(request)

    def render_OPTIONS(self, request: IRequest) -> bytes:
        """
        What may be done here: the methods, and what the resumable upload
        protocols offer (tus's C{Tus-*} headers, the draft's C{Upload-Limit}).
        """
        request.setResponseCode(204)
        request.setHeader(b"allow", b"GET, HEAD, PUT, POST, DELETE, OPTIONS")
        if self.resumable is not None:
            self.resumable.options(request)
            request.responseHeaders.removeHeader(b"accept-patch")  # (the uploads' own: PATCH is not here)
        if self.tus is not None:
            self.tus.options(request)
        request.setHeader(b"content-length", b"0")
        return b""

    def render_GET(self, request: IRequest) -> bytes | int:
        return self._respond(request, head=False)

    def render_HEAD(self, request: IRequest) -> bytes | int:
        return self._respond(request, head=True)

    def render_POST(self, request: IRequest) -> int:
        """
        C{POST /files/<path>?sign=SECONDS} (a Bearer token, as for uploads):
        a signed link to GET that path for C{SECONDS} (L{streamsvc.signing}).
        """
        if self.resumable is not None and wants_resumable(request):
            self.resumable.create(request, paused=False).body_done()  # an empty creation
            return NOT_DONE_YET  # type: ignore[no-any-return]
        if self.tus is not None and wants_tus(request):
            self.tus.create(request, paused=False).body_done()  # a creation without a body
            return NOT_DONE_YET  # type: ignore[no-any-return]
        raw = request.args.get(b"sign")
        if self.links is None:
            raise HTTPError(405, "method not allowed", {b"allow": b"GET, HEAD, PUT, DELETE"})
        if raw is None or set(request.args) != {b"sign"} or len(raw) != 1:
            raise HTTPError(400, "POST /files/<path> takes one parameter: ?sign=SECONDS")
        self._uploads().authorize(request)
        # Not plain digits: 0, refused with the signer's one message.
        seconds = int(raw[0]) if raw[0].isdigit() and len(raw[0]) <= 9 else 0
        check_duration(seconds)  # before the path: a 400 whatever the path
        links = self.links

        def found(stored: Any) -> None:
            stored.close()
            segments = request.prepath + request.postpath
            if IStoredFolder.providedBy(stored) and not stored.slash:
                segments = segments + [b""]  # the folder's own URL, which a link to it must name
            url, expires = links.link(segments, seconds)
            request.setHeader(b"content-type", b"application/json")
            request.setHeader(b"cache-control", b"no-store")
            respond_whole(request, json.dumps({"url": url, "expires": expires}).encode("ascii") + b"\n")

        self.store.open(request.postpath).addCallback(found).addErrback(self._failed, request)  # 404: not there
        return NOT_DONE_YET  # type: ignore[no-any-return]

    def _respond(self, request: IRequest, *, head: bool) -> int:
        if self.links is not None:
            self.links.verify(request)  # a bad or expired link is a 403, even on a public file
        self.store.open(request.postpath).addCallback(self._opened, request, head).addErrback(
            self._failed, request
        )
        return NOT_DONE_YET  # type: ignore[no-any-return]

    def _failed(self, failure: Any, request: IRequest) -> None:
        answer_error(request, failure_error(request, failure, _WHAT))

    def _opened(self, stored: Any, request: IRequest, head: bool) -> None:
        if IStoredFolder.providedBy(stored):
            if not stored.slash:
                stored.close()
                self._redirect_to_slash(request)
                return
            self._listing(request, stored, head=head)
            return
        try:
            if not head and self._plain_whole(request, stored):
                self._file_headers(request, stored.facts, stored.facts.strong_etag)
                self._send_small(request, stored, [ByteRange(0, stored.facts.size)] if stored.facts.size else [])
                return
            decided = self._file(request, stored, head=head)
            if decided is None:
                return
            if self._small(request, stored, decided):
                self._send_small(request, stored, decided.spans)
                return
            producer = stored.producer(
                decided.spans,
                chunk_size=min(self.chunk_size, GZIP_CHUNK_SIZE) if decided.gzip else self.chunk_size,
                streaming=self.streaming,
                clock=self.clock,
                sendfile=self.sendfile and not decided.gzip,
            )
            send_body(request, self._wrap(producer, decided.gzip), clock=self.clock, kind="file")
        finally:
            stored.close()  # nothing if the producer took it

    def _plain_whole(self, request: IRequest, stored: IStoredFile) -> bool:
        """
        Whether C{request} asks for no more than the whole of a file of one
        chunk, as it is, from a store that reads at once: the headers are then
        the file's own and the plan is skipped (no Range or condition, no gzip,
        no download name, no throttle).
        """
        facts = stored.facts
        if facts.size > self.chunk_size or not IReadAtOnce.providedBy(stored):
            return False
        names = [name for name, _ in request.requestHeaders.getAllRawHeaders()]
        if not _DECIDING.isdisjoint(names):
            return False
        if self.gzip and facts.compressible and b"Accept-Encoding" in names:
            return False
        return b"download" not in request.args and not throttled(request)

    def _small(self, request: IRequest, stored: IStoredFile, decided: _Body) -> bool:
        """Whether the planned body is one chunk, unencoded and unthrottled, from a store that reads at once."""
        return (
            not decided.gzip
            and body_length(decided.spans) <= self.chunk_size
            and IReadAtOnce.providedBy(stored)
            and not throttled(request)
        )

    def _send_small(self, request: IRequest, stored: Any, spans: list[bytes | ByteRange]) -> None:
        """A body of one chunk, read at once and sent with the headers."""
        try:
            data = stored.read(spans)
        except (OSError, SourceTruncated) as error:
            log.error("Reading {path} failed: {error}", path=getattr(stored, "real", stored.name), error=error)
            answer_error(request, HTTPError(500, "the file could not be read"))
            return
        respond_whole(request, send_at_once(request, data, kind="file"))

    def _file_headers(self, request: IRequest, facts: FileFacts, etag: str) -> None:
        """The headers of every response with (a part of) the file's bytes."""
        request.setHeader(b"content-type", facts.content_type)
        request.setHeader(b"x-content-type-options", b"nosniff")
        if self.sandbox_html and facts.active:
            request.setHeader(b"content-security-policy", b"sandbox")
        request.setHeader(b"accept-ranges", b"bytes")
        request.setHeader(b"last-modified", facts.last_modified)
        request.setHeader(b"etag", etag.encode("ascii"))
        if self.gzip and facts.compressible:
            add_vary(request, b"Accept-Encoding")

    def _gzip_wanted(self, request: IRequest, compressible: bool) -> bool:
        """Whether to gzip a body whose type is (or is not) C{compressible}."""
        return (
            self.gzip
            and compressible
            and accepts_gzip(list_header(request, b"accept-encoding"))
        )

    def _wrap(self, producer: IStreamProducer, gzip: bool) -> IStreamProducer:
        return GzipStage(producer, level=self.gzip_level) if gzip else producer

    def _file(self, request: IRequest, stored: IStoredFile, *, head: bool) -> _Body | None:
        """
        Set status and headers for a file; answer it (None) when there is no
        body to send, or return what the body must be.
        """
        facts = stored.facts
        size = facts.size
        mtime = facts.mtime
        name = stored.name
        content_type = facts.content_type.decode("ascii")
        strong_etag = facts.strong_etag
        range_header = singleton_header(request, b"range")
        gzip = range_header is None and self._gzip_wanted(request, facts.compressible)
        self._file_headers(request, facts, weak(strong_etag) if gzip else strong_etag)
        if request.args.get(b"download", [b""])[0].lower() in (b"1", b"true", b"yes"):
            request.setHeader(b"content-disposition", content_disposition(name))

        verdict = evaluate_preconditions(
            method=request.method.decode("ascii"),
            # The file's own (strong) tag: If-Match needs a strong comparison,
            # which the weak tag of a gzipped response could never pass, and
            # If-None-Match compares weakly, so either spelling matches it.
            etag=strong_etag,
            last_modified=mtime,
            if_match=list_header(request, b"if-match"),
            if_none_match=list_header(request, b"if-none-match"),
            if_modified_since=singleton_header(request, b"if-modified-since"),
            if_unmodified_since=singleton_header(request, b"if-unmodified-since"),
        )
        if verdict == 304:
            request.setResponseCode(304)
            for name_ in (b"content-disposition", b"accept-ranges", b"content-type"):
                request.responseHeaders.removeHeader(name_)
            finish_without_body(request)
            return None
        if verdict == 412:
            answer_error(request, HTTPError(412, "precondition failed"))
            return None

        spans: list[bytes | ByteRange] = [ByteRange(0, size)] if size else []
        if range_header is not None and if_range_allows_partial(
            singleton_header(request, b"if-range"), strong_etag, mtime
        ):
            try:
                ranges = plan_ranges(range_header, size, self.max_ranges)
            except RangeNotSatisfiable:
                answer_error(
                    request,
                    HTTPError(
                        416,
                        "range not satisfiable",
                        {b"content-range": unsatisfiable_content_range(size).encode("ascii")},
                    ),
                )
                return None
            if ranges is not None:
                request.setResponseCode(206)
                if len(ranges) == 1:
                    spans = list(ranges)
                    request.setHeader(
                        b"content-range", ranges[0].content_range(size).encode("ascii")
                    )
                else:
                    boundary = secrets.token_hex(16)
                    spans = multipart_byteranges(ranges, size, content_type, boundary)
                    request.setHeader(
                        b"content-type",
                        b"multipart/byteranges; boundary=" + boundary.encode("ascii"),
                    )

        if head:
            if gzip:
                request.setHeader(b"content-encoding", b"gzip")
            else:
                request.setHeader(b"content-length", b"%d" % (body_length(spans),))
            finish_without_body(request)
            return None
        if gzip:
            request.setHeader(b"content-encoding", b"gzip")
        return _Body(spans, gzip)

    def _redirect_to_slash(self, request: IRequest) -> int:
        location = "/" + "/".join(quote(s, safe="") for s in request.prepath + request.postpath) + "/"
        query = escape_query(request.uri.partition(b"?")[2])
        request.setResponseCode(301)
        request.setHeader(
            b"location", location.encode("ascii") + (b"?" + query if query else b"")
        )
        request.setHeader(b"content-length", b"0")
        return finish_without_body(request)

    def _listing(self, request: IRequest, folder: IStoredFolder, *, head: bool) -> None:
        page = wants_html(request)
        entries = folder.entries()  # for HEAD too: a folder that cannot be listed is a 404 (or 503) either way
        if head:
            entries.close()
        form = HTMLPage(tuple(request.postpath[:-1])) if page else JSONArray()
        content_type = "text/html" if page else "application/json"
        gzip = self._gzip_wanted(request, is_compressible(content_type))
        request.setHeader(b"content-type", form.content_type)
        request.setHeader(b"x-content-type-options", b"nosniff")
        add_vary(request, b"Accept")
        if page:
            request.setHeader(b"content-security-policy", PAGE_CSP)
            # Opened by a signed link, the page's URL holds the signature:
            # never send it on as a Referer.
            request.setHeader(b"referrer-policy", b"no-referrer")
            request.setHeader(b"cache-control", b"no-cache")
        if self.gzip:
            add_vary(request, b"Accept-Encoding")
        if gzip:
            request.setHeader(b"content-encoding", b"gzip")
        if head:
            finish_without_body(request)
            return
        producer = IterableProducer(Listing(entries, form), streaming=self.streaming, clock=self.clock)
        send_body(request, self._wrap(producer, gzip), clock=self.clock, kind="listing")


def respond_whole(request: IRequest, body: bytes) -> None:
    """
    Answer with C{body} in one write, as twisted.web does with what
    C{render} returns (for answers decided after C{render}, once a store
    has answered): its Content-Length, and no body for HEAD.
    """
    request.setHeader(b"content-length", b"%d" % (len(body),))
    if request.method != b"HEAD":
        request.write(body)
    request.finish()
