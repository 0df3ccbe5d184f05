# -*- test-case-name: tests.test_files -*-
"""
C{/files}: downloads from a directory, done the way static.File does not
(see ANCHORS.md): strong ETags, every conditional header, If-Range, safe
multi-range, HEAD that mirrors GET without reading the file, gzip that never
touches a 206, and no way out of the root in any spelling.
"""

from __future__ import annotations

import errno
import functools
import json
import mimetypes
import os
import re
import secrets
import stat
from typing import BinaryIO
from urllib.parse import quote

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.server import NOT_DONE_YET

from streamsvc.errors import HTTPError, JSONResource, render_error
from streamsvc.producers import DEFAULT_CHUNK_SIZE, FileProducer, IterableProducer, send_body
from streamsvc.interfaces import IStreamProducer
from streamsvc.ranges import (
    ByteRange,
    RangeNotSatisfiable,
    body_length,
    evaluate_preconditions,
    http_date,
    if_range_allows_partial,
    make_etag,
    multipart_byteranges,
    plan_ranges,
    unsatisfiable_content_range,
    weak,
)
from streamsvc.stages import GzipStage, accepts_gzip, is_compressible

#: Built from Python's own table only, not /etc/mime.types, so a file gets
#: the same type on every machine.
_MIME = mimetypes.MimeTypes()
for _type, _ext in [
    ("application/x-ndjson", ".ndjson"),
    ("application/x-ndjson", ".jsonl"),
    ("text/markdown", ".md"),
    ("application/yaml", ".yaml"),
    ("application/yaml", ".yml"),
    ("application/wasm", ".wasm"),
]:
    _MIME.add_type(_type, _ext)

#: A file that mimetypes calls "encoded" (x.tar.gz) is served as the archive
#: it is — never with Content-Encoding, which would make clients unpack it.
_ENCODED_TYPES = {
    "gzip": "application/gzip",
    "bzip2": "application/x-bzip2",
    "xz": "application/x-xz",
    "br": "application/x-brotli",
    "compress": "application/x-compress",
}

#: Types a browser would run scripts in. They are served as what they are,
#: but sandboxed (no scripts, an opaque origin), so a file placed under the
#: root cannot act as this service's origin (stored XSS).
ACTIVE_TYPES = frozenset(
    {"text/html", "application/xhtml+xml", "image/svg+xml", "application/xml", "text/xml"}
)

#: Entries per listing chunk: enough to keep writes large, few enough that one
#: chunk's stat() calls stay well under a millisecond or so.
LISTING_BATCH = 64

#: Reads are capped at this size when the body is gzipped: a chunk is
#: compressed in one go, and 16 MiB at level 6 held the reactor for about
#: 500 ms here (256 KiB still ~7 ms: zlib does ~40 MiB/s on this kind of
#: machine); 64 KiB is a couple of milliseconds (BENCHMARKS.md).
GZIP_CHUNK_SIZE = 64 * 1024

log = Logger()

#: The errors opening or stat-ing a name can give that say something about
#: the name itself: it is not there (or not as a path can reach it: ENOTDIR,
#: ELOOP for a symlink met with O_NOFOLLOW, ENAMETOOLONG), it may not be read
#: (EACCES, EPERM), or it is a FIFO or socket that O_NONBLOCK cannot open
#: (ENXIO). The client is told 404, as for any name that is not servable.
_NOT_SERVABLE_ERRNOS = frozenset(
    {
        errno.ENOENT,
        errno.ENOTDIR,
        errno.ELOOP,
        errno.EACCES,
        errno.EPERM,
        errno.ENAMETOOLONG,
        errno.ENXIO,
    }
)

#: Seconds a client is asked to wait after a 503: running out of descriptors
#: or memory is usually over as soon as other responses finish.
RETRY_AFTER = 1


def content_type_for(name: str) -> str:
    """The media type to announce for a file name; never text/html by default."""
    return _type_of_suffixes(_last_suffixes(name))[0]


def _last_suffixes(name: str) -> str:
    """
    The part of a name that decides its type: its last two suffixes
    (C{"x.tar.gz"} → C{".tar.gz"}), which is all C{mimetypes} looks at.
    """
    last = name.rfind(".")
    if last <= 0:
        return ""
    before = name.rfind(".", 1, last)
    return name[before if before > 0 else last :]


@functools.lru_cache(maxsize=512)
def _type_of_suffixes(suffixes: str) -> tuple[str, bool]:
    """
    Media type and compressibility for a name ending in C{suffixes}.

    Cached: C{mimetypes} costs a few microseconds a call, which shows in
    small-file requests per second, and the suffixes of the names people
    serve are few (the cache is bounded all the same, since clients choose
    the names they ask for).
    """
    media, encoding = _MIME.guess_type("x" + suffixes, strict=False)
    if encoding is not None:
        media = _ENCODED_TYPES.get(encoding, "application/octet-stream")
    media = media or "application/octet-stream"
    return media, is_compressible(media)


def content_disposition(name: str) -> bytes:
    """C{attachment; filename*=UTF-8''...} (RFC 6266 / RFC 8187)."""
    return b"attachment; filename*=UTF-8''" + quote(name, safe="").encode("ascii")


@attrs.frozen
class Target:
    """A request path, checked and resolved inside the root."""

    real: str
    segments: tuple[str, ...]
    slash: bool  # the URL ended with "/"
    is_dir: bool
    followed_link: bool = False  # a symlink on the way was resolved (to inside the root)


@attrs.frozen
class _Body:
    """What a file response body is to be: spans of the file, maybe gzipped."""

    spans: list[bytes | ByteRange]
    gzip: bool


def _is_safe_segment(segment: str) -> bool:
    return bool(segment) and not segment.startswith(".") and not any(
        c in segment for c in "/\\\x00"
    )


def _inside(real: str, root: str) -> bool:
    """Whether C{real} (already resolved) is C{root} or below it, with no hidden component."""
    if real == root:
        return True
    if not real.startswith(root.rstrip(os.sep) + os.sep):
        return False
    return all(_is_safe_segment(part) for part in os.path.relpath(real, root).split(os.sep))


def resolve(root: str, postpath: list[bytes]) -> Target:
    """
    Map the decoded URL segments below C{/files} to a real path inside C{root}.

    twisted.web has already percent-decoded each segment exactly once, so
    C{%2e%2e} arrives as C{..} and C{%2f} as a C{/} inside a segment; both are
    refused here, as are backslashes, NUL, empty segments and dotfiles.
    A double-encoded C{%252e%252e} stays the literal name C{%2e%2e}.

    The path is then walked one C{lstat} per segment: a symlink is resolved
    where it stands and must land inside the root (and not on a dotfile).
    That costs one system call per segment in the common case, where
    C{os.path.realpath} would re-walk the root's own components every time.

    @raise HTTPError: 400 for a path that is not UTF-8, 404 for everything
        that is not a servable name (no hint as to why), 503 when the system
        fails to look (see L{_open_failed}).
    """
    slash = bool(postpath) and postpath[-1] == b""
    raw = postpath[:-1] if slash else postpath
    try:
        segments = tuple(s.decode("utf-8") for s in raw)
    except UnicodeDecodeError:
        raise HTTPError(400, "path is not valid UTF-8") from None
    if not all(_is_safe_segment(s) for s in segments):
        raise HTTPError(404, "not found")
    path = root
    mode = stat.S_IFDIR
    followed_link = False
    try:
        for segment in segments:
            if not stat.S_ISDIR(mode):
                raise HTTPError(404, "not found")
            path = os.path.join(path, segment)
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                followed_link = True
                path = os.path.realpath(path)
                if not _inside(path, root):
                    raise HTTPError(404, "not found")
                mode = os.stat(path).st_mode
    except OSError as error:
        raise _open_failed(error, path) from None
    return Target(path, segments, slash, stat.S_ISDIR(mode), followed_link)


def _open_failed(error: OSError, what: str) -> HTTPError:
    """
    The answer to C{error}, raised opening or stat-ing C{what} (a path, for
    the log only).

    Only an error about the name (L{_NOT_SERVABLE_ERRNOS}) is a 404. Anything
    else (out of descriptors or memory, an I/O error...) says nothing about
    whether the file exists, and a 404 would tell clients and caches that it
    is gone: that is a 503 the client may retry soon and nobody may store,
    logged here once, with the errno and path that the body leaves out (the
    path is the server's business, the errno name of no use to a client).
    Every site that opens or stats a request's path goes through here, so
    they cannot drift apart.
    """
    if error.errno in _NOT_SERVABLE_ERRNOS:
        return HTTPError(404, "not found")
    log.error(
        "could not open {what}: {errno_name} ({strerror})",
        what=what,
        errno_name=errno.errorcode.get(error.errno, str(error.errno)),
        strerror=error.strerror,
    )
    return HTTPError(
        503,
        "temporarily unable to serve this path",
        {b"retry-after": b"%d" % (RETRY_AFTER,), b"cache-control": b"no-store"},
    )


_FILE_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOFOLLOW
_LIST_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_DIRECTORY | os.O_NOFOLLOW
#: Folders on the way are only walked through: O_PATH needs search (x)
#: permission, not read, exactly like opening by the full path would.
_WALK_FLAGS = getattr(os, "O_PATH", os.O_RDONLY) | os.O_CLOEXEC | os.O_DIRECTORY
_HAS_DIR_FD = os.open in os.supports_dir_fd


def _open_inside(target: Target, root: str, flags: int) -> int:
    """
    Open what C{target} names below C{root}, so that nothing outside the root
    can be opened whatever changes on disk meanwhile; C{OSError} otherwise.

    L{resolve} checked the path, but a folder on it could be swapped for a
    symlink before it is opened. So the usual path (no symlink in it) is
    opened one component at a time from the root, each with C{O_NOFOLLOW}: a
    component that has become a symlink fails to open instead of leading
    outside. A path through a symlink (inside the root, as L{resolve}
    checked) is opened by its resolved name and then checked once more by
    what the kernel says was opened (Linux's C{/proc/self/fd}); that costs
    more, and such paths are rare.
    """
    if target.followed_link or not _HAS_DIR_FD:
        fd = os.open(target.real, flags)
        if not _opened_inside(fd, root):
            os.close(fd)
            # ENOENT: to the client it is a name that is not servable (404).
            raise FileNotFoundError(errno.ENOENT, "opened outside the root", target.real)
        return fd
    if not target.segments:
        return os.open(root, flags & ~os.O_NOFOLLOW)  # the root itself may be a symlink
    dir_fd = os.open(root, _WALK_FLAGS)
    try:
        for segment in target.segments[:-1]:
            next_fd = os.open(segment, _WALK_FLAGS | os.O_NOFOLLOW, dir_fd=dir_fd)
            os.close(dir_fd)
            dir_fd = next_fd
        return os.open(target.segments[-1], flags, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)


def _open_regular(target: Target, root: str) -> tuple[BinaryIO, os.stat_result]:
    """
    Open the regular file C{target} names (see L{_open_inside}); anything
    else is a 404, and a failure to open it is answered by L{_open_failed}.
    C{O_NONBLOCK} keeps a FIFO from blocking the reactor.
    """
    try:
        fd = _open_inside(target, root, _FILE_FLAGS)
    except OSError as error:
        raise _open_failed(error, target.real) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise HTTPError(404, "not found")
        return os.fdopen(fd, "rb", buffering=0), st
    except OSError as error:
        os.close(fd)
        raise _open_failed(error, target.real) from None
    except BaseException:
        os.close(fd)
        raise


def _opened_inside(fd: int, root: str) -> bool:
    """Whether the open file C{fd} is below C{root}, when the OS can tell us."""
    try:
        real = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return True  # no /proc (not Linux): resolve()'s check is all there is
    return _inside(real, root)


def _header(request: IRequest, name: bytes) -> str | None:
    """
    The value of the list-valued field C{name} (If-Match, If-None-Match,
    Accept-Encoding), as latin-1 text, or None when absent.

    Several lines of one field are, by RFC 9110 §5.3, one value joined with
    commas; twisted.web's C{getHeader} would keep only the last line, so an
    C{If-None-Match} on two lines would lose the tags of the first.
    """
    values = request.requestHeaders.getRawHeaders(name)
    return None if values is None else b", ".join(values).decode("latin-1")


#: What L{_singleton_header} answers for a singleton field given on more than
#: one line: an empty value, which no parser in L{streamsvc.ranges} takes for
#: a valid one (Range, If-Modified-Since and If-Unmodified-Since are then
#: ignored, If-Range matches nothing).
_SEVERAL_LINES = ""


def _singleton_header(request: IRequest, name: bytes) -> str | None:
    """
    The value of a field that holds one value (Range, If-Range,
    If-Modified-Since, If-Unmodified-Since), or None when absent.

    Such a field on several lines has no valid value (RFC 9110 §5.3 joins
    lines into a list, which these grammars do not allow), so it is answered
    as L{_SEVERAL_LINES} and ignored, explicitly rather than by trusting the
    joined text to fail to parse: C{Range: bytes=0-1} and C{Range: 5-6} join
    into the valid C{bytes=0-1, 5-6}, and C{If-Range: Sun} with
    C{If-Range: 06 Nov 1994 08:49:37 GMT} into a valid date. Serving either
    line instead would be a guess: a cache that reads the first line while
    we read the last would store the wrong bytes under the right name. The
    whole 200 is what RFC 9110 §13.1.3-§13.1.5 and §14.2 allow a server that
    ignores those headers, and it is always correct.
    """
    values = request.requestHeaders.getRawHeaders(name)
    if values is None:
        return None
    if len(values) > 1:
        return _SEVERAL_LINES
    return values[0].decode("latin-1")


def _finish_without_body(request: IRequest) -> int:
    """
    End a response that has no body (HEAD, 304, redirects) ourselves, so
    twisted.web's C{render} does not add a C{Content-Length: 0} of its own.
    """
    request.write(b"")
    request.finish()
    return NOT_DONE_YET  # type: ignore[no-any-return]


#: A byte that may not stand as it is in a URI query (RFC 3986 §3.4: query =
#: *( pchar / "/" / "?" ), pchar = unreserved / pct-encoded / sub-delims / ":"
#: / "@"), or a "%" that does not start a pct-encoded triplet.
_NOT_IN_QUERY = re.compile(rb"[^A-Za-z0-9\-._~!$&'()*+,;=:@/?%]|%(?![0-9A-Fa-f]{2})")


def escape_query(query: bytes) -> bytes:
    """
    C{query} (the part of a request target after C{?}) made a valid URI
    query: every byte RFC 3986 does not allow there is percent-encoded,
    everything else, existing C{%XX} escapes included, is kept as it is.

    The query is copied into a redirect's C{Location}; as the client sent it,
    it could carry C{<}, quotes, spaces or control bytes into a header that
    other software parses and may show. Keeping what is allowed byte for byte
    keeps the query's meaning: C{a=1&b=2} or C{q=%2F} reach the folder as
    they were sent.
    """
    return _NOT_IN_QUERY.sub(lambda match: b"%%%02X" % match[0][0], query)


class FilesResource(JSONResource):
    """
    Serves the files below C{root}: GET and HEAD.

    @param root: the directory to serve; it must exist.
    @param chunk_size: bytes per read.
    @param max_ranges: more ranges than this in one request get the full 200.
    @param gzip: compress compressible types for clients that accept gzip.
    @param streaming: register producers as push (True) or pull producers.
    @param clock: the reactor, for scheduling push producers (tests pass a Clock).
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
    ) -> None:
        super().__init__()
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

    def render_GET(self, request: IRequest) -> bytes | int:
        return self._respond(request, head=False)

    def render_HEAD(self, request: IRequest) -> bytes | int:
        return self._respond(request, head=True)

    def _respond(self, request: IRequest, *, head: bool) -> bytes | int:
        target = resolve(self.root, request.postpath)
        if target.is_dir:
            if not target.slash:
                return self._redirect_to_slash(request)
            return self._listing(request, target, head=head)
        if target.slash:
            raise HTTPError(404, "not found")
        file: BinaryIO | None
        file, st = _open_regular(target, self.root)
        try:
            decided = self._file(request, target, st, head=head)
            if not isinstance(decided, _Body):
                return decided
            producer = FileProducer(
                file,
                decided.spans,
                chunk_size=min(self.chunk_size, GZIP_CHUNK_SIZE) if decided.gzip else self.chunk_size,
                streaming=self.streaming,
                clock=self.clock,
            )
            body = self._wrap(producer, decided.gzip)
            file = None  # the producer owns it now, and closes it however the stream ends
            send_body(request, body, clock=self.clock)
            return NOT_DONE_YET  # type: ignore[no-any-return]
        finally:
            if file is not None:
                file.close()

    def _gzip_wanted(self, request: IRequest, compressible: bool) -> bool:
        """Whether to gzip a body whose type is (or is not) C{compressible}."""
        return (
            self.gzip
            and compressible
            and accepts_gzip(_header(request, b"accept-encoding"))
        )

    def _wrap(self, producer: IStreamProducer, gzip: bool) -> IStreamProducer:
        return GzipStage(producer, level=self.gzip_level) if gzip else producer

    def _file(
        self,
        request: IRequest,
        target: Target,
        st: os.stat_result,
        *,
        head: bool,
    ) -> _Body | bytes | int:
        """
        Set status and headers for a file; return the finished response, or
        what the body must be when there is one to send.
        """
        size = st.st_size
        mtime = int(st.st_mtime)
        name = target.segments[-1]
        content_type, compressible = _type_of_suffixes(_last_suffixes(name))
        strong_etag = make_etag(size, st.st_mtime_ns)
        range_header = _singleton_header(request, b"range")
        gzip = range_header is None and self._gzip_wanted(request, compressible)
        etag = weak(strong_etag) if gzip else strong_etag

        request.setHeader(b"content-type", content_type.encode("ascii"))
        request.setHeader(b"x-content-type-options", b"nosniff")
        if content_type in ACTIVE_TYPES:
            request.setHeader(b"content-security-policy", b"sandbox")
        request.setHeader(b"accept-ranges", b"bytes")
        request.setHeader(b"last-modified", http_date(mtime).encode("ascii"))
        request.setHeader(b"etag", etag.encode("ascii"))
        if self.gzip and compressible:
            request.setHeader(b"vary", b"Accept-Encoding")
        if request.args.get(b"download", [b""])[0].lower() in (b"1", b"true", b"yes"):
            request.setHeader(b"content-disposition", content_disposition(name))

        verdict = evaluate_preconditions(
            method=request.method.decode("ascii"),
            # The file's own (strong) tag: If-Match needs a strong comparison,
            # which the weak tag of a gzipped response could never pass, and
            # If-None-Match compares weakly, so either spelling matches it.
            etag=strong_etag,
            last_modified=mtime,
            if_match=_header(request, b"if-match"),
            if_none_match=_header(request, b"if-none-match"),
            if_modified_since=_singleton_header(request, b"if-modified-since"),
            if_unmodified_since=_singleton_header(request, b"if-unmodified-since"),
        )
        if verdict == 304:
            request.setResponseCode(304)
            for name_ in (b"content-disposition", b"accept-ranges", b"content-type"):
                request.responseHeaders.removeHeader(name_)
            return _finish_without_body(request)
        if verdict == 412:
            return render_error(request, HTTPError(412, "precondition failed"))

        spans: list[bytes | ByteRange] = [ByteRange(0, size)] if size else []
        if range_header is not None and if_range_allows_partial(
            _singleton_header(request, b"if-range"), strong_etag, mtime
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
            return _finish_without_body(request)
        if gzip:
            request.setHeader(b"content-encoding", b"gzip")
        return _Body(spans, gzip)

    def _redirect_to_slash(self, request: IRequest) -> int:
        location = "/" + "/".join(
            quote(s.decode("utf-8", "surrogateescape"), safe="")
            for s in request.prepath + request.postpath
        ) + "/"
        query = escape_query(request.uri.partition(b"?")[2])
        request.setResponseCode(301)
        request.setHeader(
            b"location", location.encode("ascii") + (b"?" + query if query else b"")
        )
        request.setHeader(b"content-length", b"0")
        return _finish_without_body(request)

    def _listing(self, request: IRequest, target: Target, *, head: bool) -> int:
        try:
            fd = _open_inside(target, self.root, _LIST_FLAGS)
        except OSError as error:
            raise _open_failed(error, target.real) from None
        try:
            listing = DirectoryListing(target.real, self.root, fd=fd)
        except OSError as error:
            os.close(fd)
            raise _open_failed(error, target.real) from None
        gzip = self._gzip_wanted(request, is_compressible("application/json"))
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"x-content-type-options", b"nosniff")
        if self.gzip:
            request.setHeader(b"vary", b"Accept-Encoding")
        if gzip:
            request.setHeader(b"content-encoding", b"gzip")
        if head:
            listing.close()
            return _finish_without_body(request)
        producer = IterableProducer(listing, streaming=self.streaming, clock=self.clock)
        send_body(request, self._wrap(producer, gzip), clock=self.clock)
        return NOT_DONE_YET  # type: ignore[no-any-return]


class DirectoryListing:
    """
    A directory as a JSON array, a batch of entries per item, in directory
    order (sorting would mean holding every name in memory first).

    C{path} names the directory; C{fd}, when given, is the directory already
    opened safely (see L{_open_inside}), is what is actually read, and
    belongs to the listing once the constructor returns.

    The directory is opened by the constructor, so one that cannot be read
    is an C{OSError} the resource answers (404) before any byte is sent,
    rather than a body that breaks off after its C{[}. L{close} releases
    the handle whether or not iteration ever began; L{IterableProducer}
    calls it at once when the client goes away.

    Each item looks at no more than C{batch} entries, however many of them
    are left out (dotfiles, special files, symlinks that resolve outside
    C{root}), so one step never walks a huge directory in a single go.
    """

    def __init__(
        self, path: str, root: str, *, fd: int | None = None, batch: int = LISTING_BATCH
    ) -> None:
        self._entries = os.scandir(path if fd is None else fd)
        self._fd = fd  # owned from here on: the entries stat() through it
        self._path = path
        self._root = root
        self._batch = batch
        self._started = False
        self._empty = True
        self._ended = False

    def __iter__(self) -> DirectoryListing:
        return self

    def __next__(self) -> bytes:
        if self._ended:
            raise StopIteration
        parts = [] if self._started else [b"["]
        self._started = True
        for _ in range(self._batch):
            entry = next(self._entries, None)
            if entry is None:
                parts.append(b"]\n")
                self._ended = True
                self.close()
                break
            item = _entry(entry, self._path, self._root)
            if item is not None:
                parts.append((b"" if self._empty else b",") + json.dumps(item).encode("utf-8"))
                self._empty = False
        return b"".join(parts)

    def close(self) -> None:
        self._entries.close()
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def _entry(entry: os.DirEntry[str], folder: str, root: str) -> dict[str, object] | None:
    if not _is_safe_segment(entry.name):
        return None
    try:
        link = os.path.join(folder, entry.name)
        if entry.is_symlink() and not _inside(os.path.realpath(link), root):
            return None
        st = entry.stat()
    except OSError:
        return None
    if stat.S_ISDIR(st.st_mode):
        kind, size = "dir", None
    elif stat.S_ISREG(st.st_mode):
        kind, size = "file", st.st_size
    else:
        return None
    return {"name": entry.name, "size": size, "mtime": st.st_mtime, "type": kind}
