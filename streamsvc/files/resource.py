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
import os
import secrets
import time
from typing import BinaryIO
from urllib.parse import quote

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from streamsvc.errors import HTTPError, JSONResource, render_error
from streamsvc.files.fields import (
    add_vary,
    escape_query,
    finish_without_body,
    list_header,
    singleton_header,
    wants_html,
)
from streamsvc.files.facts import FactsCache, FileFacts
from streamsvc.files.listing import DirectoryListing, HTMLPage, JSONArray
from streamsvc.files.media import content_disposition
from streamsvc.files.paths import LIST_FLAGS, Target, open_failed, open_inside, open_regular, resolve
from streamsvc.files.upload import DEFAULT_MAX_UPLOAD_BYTES, Uploads
from streamsvc.interfaces import IBodyConsumer, IStreamingBodyResource, IStreamProducer
from streamsvc._sendfile import SendfileProducer
from streamsvc.signing import LinkSigner, check_duration
from streamsvc.producers import (
    DEFAULT_CHUNK_SIZE,
    FileProducer,
    IterableProducer,
    SourceTruncated,
    read_spans,
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
    Serves the files below C{root}: GET and HEAD; PUT and DELETE through
    C{uploads}.

    @param root: the directory to serve; it must exist.
    @param chunk_size: bytes per read.
    @param max_ranges: more ranges than this in one request get the full 200.
    @param gzip: compress compressible types for clients that accept gzip.
    @param streaming: register producers as push (True) or pull producers.
    @param clock: the reactor, for scheduling push producers (tests pass a Clock).
    @param uploads: what takes PUT and DELETE (L{Uploads}); without it they
        are refused (403).
    @param max_upload_bytes: the longest PUT body (C{[limits]
        max_upload_bytes}).
    @param sendfile: send unencoded bodies to a plain TCP socket with
        C{os.sendfile} (L{streamsvc._sendfile}); the buffered path otherwise.
    """

    isLeaf = True

    def __init__(
        self,
        root: str,
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        max_ranges: int = 16,
        gzip: bool = True,
        gzip_level: int = 6,
        streaming: bool = True,
        clock: IReactorTime | None = None,
        uploads: Uploads | None = None,
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
        self.root = os.path.realpath(root)
        self.chunk_size = chunk_size
        self.max_ranges = max_ranges
        self.gzip = gzip
        self.gzip_level = gzip_level
        self.streaming = streaming
        self.clock = clock
        self.uploads = uploads
        self.max_body_bytes = max_upload_bytes
        self.sendfile = sendfile
        self.facts = FactsCache(clock.seconds if clock is not None else time.monotonic, largest=chunk_size)

    # IStreamingBodyResource: the body of a PUT goes to disk as it arrives.

    def body_consumer(self, request: IRequest) -> IBodyConsumer | None:
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
        if request.postpath and request.postpath[-1] == b"" and len(request.postpath) > 1:
            return self._uploads().make_folder(request)
        self._uploads().put(request).body_done()
        return NOT_DONE_YET  # type: ignore[no-any-return]

    def render_DELETE(self, request: IRequest) -> int:
        return self._uploads().delete(request)

    def render_GET(self, request: IRequest) -> bytes | int:
        return self._respond(request, head=False)

    def render_HEAD(self, request: IRequest) -> bytes | int:
        return self._respond(request, head=True)

    def render_POST(self, request: IRequest) -> bytes:
        """
        C{POST /files/<path>?sign=SECONDS} (a Bearer token, as for uploads):
        a signed link to GET that path for C{SECONDS} (L{streamsvc.signing}).
        """
        raw = request.args.get(b"sign")
        if self.links is None:
            raise HTTPError(405, "method not allowed", {b"allow": b"GET, HEAD, PUT, DELETE"})
        if raw is None or set(request.args) != {b"sign"} or len(raw) != 1:
            raise HTTPError(400, "POST /files/<path> takes one parameter: ?sign=SECONDS")
        self._uploads().authorize(request)
        # Not plain digits: 0, refused with the signer's one message.
        seconds = int(raw[0]) if raw[0].isdigit() and len(raw[0]) <= 9 else 0
        check_duration(seconds)  # before the path: a 400 whatever the path
        target = resolve(self.root, request.postpath)  # a 404 for what is not there
        segments = request.prepath + request.postpath
        if target.is_dir and not target.slash:
            segments = segments + [b""]  # the folder's own URL, which a link to it must name
        url, expires = self.links.link(segments, seconds)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps({"url": url, "expires": expires}).encode("ascii") + b"\n"

    def _respond(self, request: IRequest, *, head: bool) -> bytes | int:
        if self.links is not None:
            self.links.verify(request)  # a bad or expired link is a 403, even on a public file
        if not head:
            small = self._small_and_unchanged(request)
            if small is not None:
                return small
        target = resolve(self.root, request.postpath)
        if target.is_dir:
            if not target.slash:
                return self._redirect_to_slash(request)
            return self._listing(request, target, head=head)
        if target.slash:
            raise HTTPError(404, "not found")
        file: BinaryIO | None
        file, st = open_regular(target, self.root)
        try:
            facts = self.facts.learn(tuple(request.postpath), target.real, target.segments[-1], st)
            decided = self._file(request, target, facts, head=head)
            if not isinstance(decided, _Body):
                return decided
            if not decided.gzip and body_length(decided.spans) <= self.chunk_size and not throttled(request):
                try:
                    data = read_spans(file.fileno(), decided.spans)
                except (OSError, SourceTruncated) as error:
                    log.error("Reading {path} failed: {error}", path=target.real, error=error)
                    raise HTTPError(500, "the file could not be read") from None
                return send_at_once(request, data, kind="file")
            kind = SendfileProducer if self.sendfile and not decided.gzip else FileProducer
            producer = kind(
                file,
                decided.spans,
                chunk_size=min(self.chunk_size, GZIP_CHUNK_SIZE) if decided.gzip else self.chunk_size,
                streaming=self.streaming,
                clock=self.clock,
            )
            body = self._wrap(producer, decided.gzip)
            file = None  # the producer owns it now, and closes it however the stream ends
            send_body(request, body, clock=self.clock, kind="file")
            return NOT_DONE_YET  # type: ignore[no-any-return]
        finally:
            if file is not None:
                file.close()

    def _small_and_unchanged(self, request: IRequest) -> bytes | None:
        """
        The whole of a file of one chunk (the only ones L{FactsCache} keeps)
        that an earlier request walked to and that has not changed since
        (L{streamsvc.files.facts}), answered
        from what was learnt then: one open, fstat, read and write. None
        when anything about the request or the file needs the full path
        (a Range or condition, gzip, a download name, a throttle, a file
        that is new, large, stale or changed).
        """
        key = tuple(request.postpath)
        facts = self.facts.fresh(key)
        if facts is None:
            return None
        names = [name for name, _ in request.requestHeaders.getAllRawHeaders()]
        if not _DECIDING.isdisjoint(names):
            return None
        if self.gzip and facts.compressible and b"Accept-Encoding" in names:
            return None
        if b"download" in request.args or throttled(request):
            return None
        fd = self.facts.open(key, facts)
        if fd is None:
            return None
        try:
            data = read_spans(fd, [ByteRange(0, facts.size)] if facts.size else [])
        except (OSError, SourceTruncated):
            return None  # the full path finds out what is wrong, and says so
        finally:
            os.close(fd)
        self._file_headers(request, facts, facts.strong_etag)
        return send_at_once(request, data, kind="file")

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

    def _file(
        self,
        request: IRequest,
        target: Target,
        facts: FileFacts,
        *,
        head: bool,
    ) -> _Body | bytes | int:
        """
        Set status and headers for a file; return the finished response, or
        what the body must be when there is one to send.
        """
        size = facts.size
        mtime = facts.mtime
        name = target.segments[-1]
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
            return finish_without_body(request)
        if verdict == 412:
            return render_error(request, HTTPError(412, "precondition failed"))

        spans: list[bytes | ByteRange] = [ByteRange(0, size)] if size else []
        if range_header is not None and if_range_allows_partial(
            singleton_header(request, b"if-range"), strong_etag, mtime
        ):
            try:
                ranges = plan_ranges(range_header, size, self.max_ranges)
            except RangeNotSatisfiable:
                return render_error(
                    request,
                    HTTPError(
                        416,
                        "range not satisfiable",
                        {b"content-range": unsatisfiable_content_range(size).encode("ascii")},
                    ),
                )
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
            return finish_without_body(request)
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

    def _listing(self, request: IRequest, target: Target, *, head: bool) -> int:
        page = wants_html(request)
        try:
            fd = open_inside(target, self.root, LIST_FLAGS)
        except OSError as error:
            raise open_failed(error, target.real) from None
        form = HTMLPage(tuple(request.postpath[:-1])) if page else JSONArray()
        try:
            listing = DirectoryListing(target.real, self.root, fd=fd, form=form)
        except OSError as error:
            os.close(fd)
            raise open_failed(error, target.real) from None
        content_type = "text/html" if page else "application/json"
        gzip = self._gzip_wanted(request, is_compressible(content_type))
        request.setHeader(b"content-type", listing.content_type)
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
            listing.close()
            return finish_without_body(request)
        producer = IterableProducer(listing, streaming=self.streaming, clock=self.clock)
        send_body(request, self._wrap(producer, gzip), clock=self.clock, kind="listing")
        return NOT_DONE_YET  # type: ignore[no-any-return]


