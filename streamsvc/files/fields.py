# -*- test-case-name: tests.test_files -*-
"""
Reading request header fields the way RFC 9110 says (list fields joined,
singleton fields on several lines ignored), and small response helpers the
/files resources share.
"""

from __future__ import annotations

import re

from twisted.web.iweb import IRequest
from twisted.web.server import NOT_DONE_YET

from streamsvc.errors import HTTPError

def event_stream_headers(request: IRequest, content_type: bytes) -> None:
    """The headers of a live stream (events, status): never stored, never buffered by a proxy."""
    request.setHeader(b"content-type", content_type)
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"x-accel-buffering", b"no")  # nginx in front: do not buffer the stream
    request.setHeader(b"x-content-type-options", b"nosniff")


def add_vary(request: IRequest, name: bytes) -> None:
    """
    Add C{name} to the response's C{Vary} (several parts of the server add
    to it: gzip negotiation, CORS, content negotiation), once.
    """
    current = request.responseHeaders.getRawHeaders(b"vary") or []
    names = [part.strip() for value in current for part in value.split(b",") if part.strip()]
    if name.lower() not in (n.lower() for n in names):
        names.append(name)
    request.responseHeaders.setRawHeaders(b"vary", [b", ".join(names)])


def _quality(accept: str, media: str) -> float:
    """The q a C{Accept} value gives C{media}: its own entry, else C{type/*}, else C{*/*}."""
    main = media.split("/")[0] + "/*"
    found: dict[str, float] = {}
    for part in accept.split(","):
        name, *params = (p.strip() for p in part.split(";"))
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = max(0.0, min(1.0, float(value)))
                except ValueError:
                    q = 0.0
        found.setdefault(name.lower(), q)
    for candidate in (media, main, "*/*"):
        if candidate in found:
            return found[candidate]
    return 0.0


def wants_html(request: IRequest) -> bool:
    """
    Whether a listing should be the HTML page: C{?format=html}, or an
    C{Accept} that prefers C{text/html} to C{application/json} (a browser's
    does; curl's C{*/*} and fetch()'s do not, so programs keep JSON).

    @raise HTTPError: 400 for a C{format} other than C{html} or C{json}.
    """
    formats = request.args.get(b"format")
    if formats is not None:
        if formats not in ([b"html"], [b"json"]):
            raise HTTPError(400, "format must be html or json")
        return formats == [b"html"]
    accept = list_header(request, b"accept")
    if accept is None:
        return False
    return _quality(accept, "text/html") > _quality(accept, "application/json")


def list_header(request: IRequest, name: bytes) -> str | None:
    """
    The value of the list-valued field C{name} (If-Match, If-None-Match,
    Accept-Encoding), as latin-1 text, or None when absent.

    Several lines of one field are, by RFC 9110 §5.3, one value joined with
    commas; twisted.web's C{getHeader} would keep only the last line, so an
    C{If-None-Match} on two lines would lose the tags of the first.
    """
    values = request.requestHeaders.getRawHeaders(name)
    return None if values is None else b", ".join(values).decode("latin-1")


#: What L{singleton_header} answers for a singleton field given on more than
#: one line: an empty value, which no parser in L{streamsvc.ranges} takes for
#: a valid one (Range, If-Modified-Since and If-Unmodified-Since are then
#: ignored, If-Range matches nothing).
_SEVERAL_LINES = ""


def singleton_header(request: IRequest, name: bytes) -> str | None:
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


def media_type(request: IRequest) -> bytes:
    """The request body's media type, lower case, without parameters (C{b""} when none is given)."""
    return (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()


def one_header(request: IRequest, name: bytes) -> bytes | None:
    """
    The value of a field that must come once (a resumable upload's
    C{Upload-Offset}, C{Upload-Length}...), None when absent; given on two
    lines, a 400 (which one the client meant is anyone's guess).
    """
    values = request.requestHeaders.getRawHeaders(name)
    if values is None:
        return None
    if len(values) > 1:
        raise HTTPError(400, f"{name.decode('latin-1')} given more than once")
    return values[0]


#: The longest count a field may hold: a Structured Field integer's 15 digits (RFC 9651 §3.3.1).
_MAX_DIGITS = 15


def count_field(value: bytes | None, name: str) -> int | None:
    """
    A non-negative integer field (an offset, a length: digits only, at most
    15 of them, as a Structured Field integer), None when absent; 400 otherwise.
    """
    if value is None:
        return None
    value = value.strip()
    if not value.isdigit() or len(value) > _MAX_DIGITS:
        raise HTTPError(400, f"{name} must be a non-negative integer")
    return int(value)


def finish_without_body(request: IRequest) -> int:
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


