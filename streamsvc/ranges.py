# -*- test-case-name: tests.test_ranges -*-
"""
Pure Range, If-Range and conditional-request logic (RFC 9110 §13 and §14).

Everything here works on header values as C{str} (the caller decodes bytes as
latin-1, so every byte maps to one character) and on sizes and times as
C{int}s. Nothing touches a request, a file or the clock, so every rule can be
tested on strings and the resource in L{streamsvc.files} only has to carry
the answers over.

Why not Twisted's own helpers: C{Request.setETag} compares the whole
If-None-Match value with one tag (lists and weak tags never match),
C{static.File} serves overlapping ranges as asked (an amplification vector)
and does not look at If-Range's date form. The rules below follow RFC 9110
and, where the RFC leaves room, nginx.

Failures are L{ValueError} subclasses whose messages name the header and the
offending value. Malformed request headers are I{not} errors: the RFC tells
a server to ignore them, so the parsing functions answer C{None} instead.
"""

from __future__ import annotations

import calendar
import functools
import math
import re
import time
from collections.abc import Callable
from typing import Final

import attrs

__all__ = [
    "ByteRange",
    "RangeNotSatisfiable",
    "body_length",
    "etag_matches",
    "evaluate_preconditions",
    "http_date",
    "if_range_allows_partial",
    "make_etag",
    "multipart_byteranges",
    "parse_http_date",
    "parse_range_header",
    "plan_ranges",
    "unsatisfiable_content_range",
    "weak",
    "write_allowed",
]


def _int_at_least(minimum: int) -> Callable[[object, attrs.Attribute[int], int], None]:
    """
    An attrs validator: a plain C{int} (not C{bool}) of at least C{minimum}.
    A ByteRange with a negative start or no bytes would produce a
    Content-Range no client can parse, so it is refused when built.
    """

    def check(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ValueError(
                f"ByteRange {attribute.name} must be an int >= {minimum}, not {value!r}"
            )

    return check


@attrs.frozen
class ByteRange:
    """
    C{length} bytes of the representation starting at offset C{start}.

    Kept as start and length rather than RFC-style inclusive first/last,
    because that is what C{os.pread} and a Content-Length need; L{end} gives
    the inclusive form for Content-Range. An empty range cannot be expressed
    in Content-Range, so it cannot be built.
    """

    start: int = attrs.field(validator=_int_at_least(0))
    length: int = attrs.field(validator=_int_at_least(1))

    @property
    def end(self) -> int:
        """The inclusive offset of the last byte, as Content-Range writes it."""
        return self.start + self.length - 1

    def content_range(self, size: int) -> str:
        """
        The Content-Range value of this range in a representation of C{size}
        bytes (RFC 9110 §14.4), e.g. C{"bytes 0-499/1234"}.

        A range that reaches past C{size} would promise bytes that do not
        exist, so it is refused rather than written.
        """
        if self.end >= size:
            raise ValueError(
                f"Content-Range: range {self.start}-{self.end} does not fit in {size} bytes"
            )
        return f"bytes {self.start}-{self.end}/{size}"


class RangeNotSatisfiable(ValueError):
    """
    No range of a syntactically valid Range header overlaps the
    representation: the answer is 416 with L{unsatisfiable_content_range}.
    """


def unsatisfiable_content_range(size: int) -> str:
    """
    The Content-Range of a 416 (RFC 9110 §14.4, §15.5.17): C{"bytes */1234"}.

    It tells the client the current length so it can ask again correctly.
    """
    return f"bytes */{size}"


# --- Range (RFC 9110 §14.1, §14.2) -------------------------------------------

#: A number has at most 18 digits, so it always fits in a signed 64-bit
#: offset (10**18 - 1 < 2**63) and a hostile header cannot make us build
#: huge integers. nginx refuses offsets that overflow off_t for the same reason.
_MAX_DIGITS: Final = 18

#: int-range = first-pos "-" [ last-pos ] / suffix-range = "-" suffix-length,
#: ASCII digits only (str.isdigit would take "²" or Arabic-Indic digits).
_RANGE_SPEC: Final = re.compile(
    r"(?:(?P<first>[0-9]{1,%d})-(?P<last>[0-9]{1,%d})?|-(?P<suffix>[0-9]{1,%d}))"
    % (_MAX_DIGITS, _MAX_DIGITS, _MAX_DIGITS)
)

#: OWS = *( SP / HTAB ), RFC 9110 §5.6.3.
_OWS: Final = " \t"


def parse_range_header(value: str) -> list[tuple[int | None, int | None]] | None:
    """
    The range specs of a Range header, syntax only: C{(5, 9)} for C{"5-9"},
    C{(5, None)} for C{"5-"}, C{(None, 500)} for the suffix C{"-500"}.

    Returns C{None} for a header that is not a valid C{bytes} ranges-specifier,
    so that the caller ignores it and serves the whole representation, as
    RFC 9110 §14.2 allows ("a server MAY ignore the Range header field"),
    instead of failing a request that a plain GET would satisfy. Invalid
    means: a unit other than C{bytes} (compared case-insensitively, §14.1),
    no C{"="}, a spec whose last-pos is below its first-pos (§14.1.1 calls it
    invalid), anything but ASCII digits and one C{"-"} in a spec (signs, hex,
    C{"-"} alone, C{"1-2-3"}), a number of more than 18 digits, or no spec.

    Lists follow the C{#rule} (RFC 9110 §5.6.1): whitespace around commas is
    allowed and empty elements (C{"0-1,,2-3"}) are skipped. Whitespace inside
    a spec or around C{"="} is not in the grammar, so it makes the header
    invalid. Satisfiability is not judged here: that needs the size, see
    L{plan_ranges}.
    """
    unit, equals, range_set = value.strip(_OWS).partition("=")
    if not equals or unit.lower() != "bytes":
        return None
    specs: list[tuple[int | None, int | None]] = []
    for element in range_set.split(","):
        element = element.strip(_OWS)
        if not element:
            continue
        match = _RANGE_SPEC.fullmatch(element)
        if match is None:
            return None
        if match["suffix"] is not None:
            specs.append((None, int(match["suffix"])))
            continue
        first = int(match["first"])
        last = None if match["last"] is None else int(match["last"])
        if last is not None and last < first:
            return None
        specs.append((first, last))
    return specs or None


def _satisfiable(spec: tuple[int | None, int | None], size: int) -> ByteRange | None:
    """
    The bytes C{spec} selects in C{size} bytes, clamped to the
    representation, or C{None} when it selects none (RFC 9110 §14.1.2).
    """
    first, last = spec
    if first is None:
        assert last is not None
        suffix = min(last, size)
        return ByteRange(size - suffix, suffix) if suffix else None
    if first >= size:
        return None
    end = size - 1 if last is None else min(last, size - 1)
    return ByteRange(first, end - first + 1)


def _coalesce(ranges: list[ByteRange]) -> list[ByteRange]:
    """Sort by start and merge ranges that overlap or touch."""
    merged: list[ByteRange] = []
    for byte_range in sorted(ranges, key=lambda r: (r.start, r.length)):
        if merged and byte_range.start <= merged[-1].end + 1:
            last = merged[-1]
            end = max(last.end, byte_range.end)
            merged[-1] = ByteRange(last.start, end - last.start + 1)
        else:
            merged.append(byte_range)
    return merged


def plan_ranges(value: str | None, size: int, max_ranges: int) -> list[ByteRange] | None:
    """
    What a GET with Range header C{value} gets, for a representation of
    C{size} bytes: C{None} for the whole 200, one L{ByteRange} for a
    single-part 206, several for a multipart/byteranges 206.

    The whole 200 is the answer when there is no usable header (absent,
    blank, or invalid per L{parse_range_header}), when more than
    C{max_ranges} specs are given, or when the satisfiable specs add up to
    more than C{size} bytes. The last two are nginx's defences against
    amplification (C{max_ranges}, and its "sum of ranges larger than the
    file" rule): two hundred C{"0-"} specs would otherwise turn one small
    request into two hundred copies of the file. RFC 9110 §14.2 lets a server
    ignore Range, so these fall back to 200 rather than an error.

    Raises L{RangeNotSatisfiable} (answer 416) when no spec selects any byte:
    every first-pos is at or past C{size}, a suffix length is 0, or the
    representation is empty. For an empty representation RFC 9110 §14.1.1
    calls a non-zero suffix "satisfiable", but it selects nothing and no
    Content-Range can describe zero bytes, so it is a 416 like nginx's.

    Satisfiable specs are clamped to the representation (a last-pos past the
    end, a suffix longer than the file), unsatisfiable ones among them are
    dropped, and what is left is sorted and coalesced where ranges overlap or
    touch: §14.2 allows it, it defeats "many overlapping small ranges"
    attacks, and it means multipart parts never repeat bytes. The cap counts
    every spec given, satisfiable or not, so parsing work is bounded too.
    """
    if value is None or not value.strip(_OWS):
        return None
    specs = parse_range_header(value)
    if specs is None or len(specs) > max_ranges:
        return None
    ranges = [r for r in (_satisfiable(spec, size) for spec in specs) if r is not None]
    if not ranges:
        raise RangeNotSatisfiable(
            f"Range: {value!r} selects no byte of a {size}-byte representation"
        )
    if sum(r.length for r in ranges) > size:
        return None
    return _coalesce(ranges)


# --- Entity tags (RFC 9110 §8.8.3) -------------------------------------------


def make_etag(size: int, mtime_ns: int) -> str:
    """
    A strong validator C{'"<size hex>-<mtime_ns hex>"'} (with the quotes).

    Built from what a stat gives, like nginx's (which uses seconds); the
    nanosecond mtime makes two writes within one second still change the
    tag, which a strong validator needs to be trusted for ranges
    (RFC 9110 §8.8.1). Hex keeps it short and within etagc.
    """
    return f'"{size:x}-{mtime_ns:x}"'


def weak(etag: str) -> str:
    """
    The weak form C{W/"..."} of C{etag}, for a gzip-encoded variant.

    A compressed body is not byte-for-byte the file, so it must not share the
    file's strong tag (nginx weakens the ETag when gzip applies); a weak tag
    still lets If-None-Match revalidate it. Already weak tags are returned as
    they are, so weakening twice cannot produce C{W/W/"..."}.
    """
    return etag if etag.startswith("W/") else "W/" + etag


#: etagc = %x21 / %x23-7E / obs-text (%x80-FF): visible ASCII but DQUOTE.
_ETAGC: Final = frozenset(
    chr(c) for c in [0x21, *range(0x23, 0x7F), *range(0x80, 0x100)]
)


def _scan_etag(text: str, start: int) -> tuple[bool, str, int] | None:
    """
    Read one entity-tag at C{text[start:]}: C{(is_weak, opaque, end)} or
    C{None} when none is there. Commas are legal inside an opaque-tag, so a
    list cannot simply be split on commas.
    """
    is_weak = text.startswith("W/", start)
    i = start + 2 if is_weak else start
    if not text.startswith('"', i):
        return None
    close = text.find('"', i + 1)
    if close < 0:
        return None
    opaque = text[i + 1 : close]
    if not all(c in _ETAGC for c in opaque):
        return None
    return is_weak, opaque, close + 1


def _parse_etag_list(header: str) -> list[tuple[bool, str]]:
    """
    The entity-tags of an If-Match / If-None-Match list, as
    C{(is_weak, opaque)}. A malformed member is skipped up to the next
    comma, so one bad tag does not hide the good ones.
    """
    tags: list[tuple[bool, str]] = []
    i, n = 0, len(header)
    while i < n:
        while i < n and header[i] in " \t,":
            i += 1
        if i >= n:
            break
        scanned = _scan_etag(header, i)
        if scanned is not None:
            is_weak, opaque, j = scanned
            while j < n and header[j] in _OWS:
                j += 1
            if j >= n or header[j] == ",":
                tags.append((is_weak, opaque))
                i = j
                continue
        comma = header.find(",", i)
        i = n if comma < 0 else comma
    return tags


def _own_etag(etag: str) -> tuple[bool, str]:
    """Parse the server's own ETag; a malformed one is a programming error."""
    scanned = _scan_etag(etag, 0)
    if scanned is None or scanned[2] != len(etag):
        raise ValueError(f"ETag: {etag!r} is not a valid entity-tag")
    return scanned[0], scanned[1]


def etag_matches(header: str, etag: str, *, weak_comparison: bool) -> bool:
    """
    Whether an If-Match / If-None-Match value matches C{etag}.

    C{"*"} matches any current representation (RFC 9110 §13.1.1, §13.1.2);
    the caller only asks when there is one. Otherwise the value is a list
    (C{'"a", "b"'}, C{'"a","b"'}) of possibly weak (C{W/"x"}) tags, compared
    per RFC 9110 §8.8.3.2: strongly (both tags strong and the opaque-tags
    equal, as If-Match and If-Range need) or weakly (opaque-tags equal
    whatever the C{W/}, as If-None-Match needs). A malformed member is
    skipped rather than failing the whole header. Twisted's C{setETag}
    compares the raw header with one tag, so it gets lists and weak tags
    wrong: hence this function.
    """
    if header.strip(_OWS) == "*":
        return True
    own_weak, own_opaque = _own_etag(etag)
    if not weak_comparison and own_weak:
        return False
    for tag_weak, opaque in _parse_etag_list(header):
        if opaque == own_opaque and (weak_comparison or not tag_weak):
            return True
    return False


# --- HTTP-date (RFC 9110 §5.6.7) ---------------------------------------------

_DAYS: Final = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_LONG_DAYS: Final = (
    "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday",
)
_MONTHS: Final = (
    "Jan", "Feb", "Mar", "Apr", "May", "Jun",
    "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
)

_TIME: Final = r"(?P<hour>[0-9]{2}):(?P<minute>[0-9]{2}):(?P<second>[0-9]{2})"
_MONTH: Final = r"(?P<month>%s)" % "|".join(_MONTHS)

#: IMF-fixdate: "Sun, 06 Nov 1994 08:49:37 GMT"
_IMF_FIXDATE: Final = re.compile(
    r"(?:%s), (?P<day>[0-9]{2}) %s (?P<year>[0-9]{4}) %s GMT"
    % ("|".join(_DAYS), _MONTH, _TIME)
)
#: rfc850-date: "Sunday, 06-Nov-94 08:49:37 GMT"
_RFC850_DATE: Final = re.compile(
    r"(?:%s), (?P<day>[0-9]{2})-%s-(?P<year>[0-9]{2}) %s GMT"
    % ("|".join(_LONG_DAYS), _MONTH, _TIME)
)
#: asctime-date: "Sun Nov  6 08:49:37 1994" (day is 2DIGIT or SP 1DIGIT)
_ASCTIME_DATE: Final = re.compile(
    r"(?:%s) %s (?P<day>[0-9]{2}| [0-9]) %s (?P<year>[0-9]{4})"
    % ("|".join(_DAYS), _MONTH, _TIME)
)


def _this_year() -> int:
    return time.gmtime().tm_year


def _full_year(two_digits: int, this_year: int | None = None) -> int:
    """
    The year of an rfc850-date: RFC 9110 §5.6.7 says a two-digit year more
    than 50 years in the future is the most recent past year with the same
    last two digits.
    """
    if this_year is None:
        this_year = _this_year()
    year = this_year - this_year % 100 + two_digits
    if year > this_year + 50:
        year -= 100
    return year


def parse_http_date(value: str | None) -> int | None:
    """
    Seconds since the epoch of an HTTP-date in any of its three forms
    (RFC 9110 §5.6.7: IMF-fixdate, the obsolete RFC 850 and asctime forms,
    which recipients must still accept), or C{None} when C{value} is absent
    or not a valid date.

    C{None} rather than an exception because an invalid date makes the
    conditional header be ignored (RFC 9110 §13.1.3, §13.1.4), which is what
    callers do with C{None}. The grammar is checked strictly (field widths,
    names, "GMT", real calendar dates) instead of Twisted's
    C{stringToDatetime}, which accepts "32 Nov" or hour 99 and normalises
    them into another instant. The day name is not checked against the date:
    it carries no information, and nginx ignores it too. A leap second
    (C{:60}) is accepted and counts as the next second. Year C{0000} matches
    the grammar but names no real year (C{calendar} refuses it), so it is
    not a date either. This function never raises, whatever the string: a
    client's header must not be able to turn a request into a 500.
    """
    if value is None:
        return None
    text = value.strip(_OWS)
    match = _IMF_FIXDATE.fullmatch(text) or _ASCTIME_DATE.fullmatch(text)
    if match is not None:
        year = int(match["year"])
    else:
        match = _RFC850_DATE.fullmatch(text)
        if match is None:
            return None
        year = _full_year(int(match["year"]))
    month = _MONTHS.index(match["month"]) + 1
    day = int(match["day"])
    hour, minute, second = int(match["hour"]), int(match["minute"]), int(match["second"])
    if not (1 <= year <= 9999 and hour <= 23 and minute <= 59 and second <= 60):
        # Year 0000 fits the four digits of the grammar but is no year of the
        # Gregorian calendar (1 BC is followed by AD 1), so no instant.
        return None
    try:
        if not 1 <= day <= calendar.monthrange(year, month)[1]:
            return None
        return calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    except (ValueError, OverflowError):  # pragma: no cover - every field is checked above
        # A header is client input: whatever calendar thinks of it, it must
        # only ever make the condition be ignored, never fail the request.
        return None


@functools.lru_cache(maxsize=256)
def http_date(seconds: float) -> str:
    """
    The IMF-fixdate of C{seconds} since the epoch, e.g.
    C{"Sun, 06 Nov 1994 08:49:37 GMT"} (RFC 9110 §5.6.7).

    Fractions are dropped (floored, so a date never lies in the future of
    the instant it describes); day and month names are fixed English, never
    the locale's, which C{time.strftime} would use. Cached, since the same
    few modification times are formatted on every request for them.
    """
    t = time.gmtime(math.floor(seconds))
    return "%s, %02d %s %04d %02d:%02d:%02d GMT" % (
        _DAYS[t.tm_wday],
        t.tm_mday,
        _MONTHS[t.tm_mon - 1],
        t.tm_year,
        t.tm_hour,
        t.tm_min,
        t.tm_sec,
    )


# --- Conditional requests (RFC 9110 §13) -------------------------------------

_SAFE_FOR_304: Final = ("GET", "HEAD")


def evaluate_preconditions(
    *,
    method: str,
    etag: str,
    last_modified: int,
    if_match: str | None = None,
    if_none_match: str | None = None,
    if_modified_since: str | None = None,
    if_unmodified_since: str | None = None,
) -> int | None:
    """
    The outcome of the preconditions of a request on an existing
    representation: C{412}, C{304}, or C{None} to carry on.

    The order is RFC 9110 §13.2.2's, because the headers can disagree and the
    RFC settles which one wins:

      1. If-Match present: no strong match → 412 (§13.1.1 requires the strong
         comparison, so a weak C{etag} never satisfies it, except C{*}).
      2. Otherwise If-Unmodified-Since with a valid date: modified after that
         date → 412. An invalid date is ignored (§13.1.4).
      3. If-None-Match present: a weak match → 304 for GET and HEAD, 412 for
         any other method (§13.1.2).
      4. Otherwise If-Modified-Since with a valid date, for GET or HEAD only:
         not modified since that date → 304 (§13.1.3).

    A header is present when it is not C{None}, even if empty: an empty
    If-Match lists no tag, so nothing matches (as in nginx). Methods are
    compared case-sensitively (RFC 9110 §9.1). C{last_modified} is in whole
    seconds, as an HTTP-date is.
    """
    if if_match is not None:
        if not etag_matches(if_match, etag, weak_comparison=False):
            return 412
    elif if_unmodified_since is not None:
        date = parse_http_date(if_unmodified_since)
        if date is not None and last_modified > date:
            return 412
    if if_none_match is not None:
        if etag_matches(if_none_match, etag, weak_comparison=True):
            return 304 if method in _SAFE_FOR_304 else 412
    elif if_modified_since is not None and method in _SAFE_FOR_304:
        date = parse_http_date(if_modified_since)
        if date is not None and last_modified <= date:
            return 304
    return None


def write_allowed(
    *,
    current: tuple[str, int] | None,
    if_match: str | None = None,
    if_none_match: str | None = None,
    if_unmodified_since: str | None = None,
) -> bool:
    """
    Whether a write (PUT, DELETE) may go ahead given its preconditions.

    C{current} is the strong ETag and last-modified second of what is there
    now, or None when nothing is. With nothing there, If-Match (even C{*})
    fails (§13.1.1: it needs a current representation) and If-None-Match
    always holds; If-Unmodified-Since is ignored, as for any representation
    without a date (§13.1.4). Otherwise it is L{evaluate_preconditions}
    for an unsafe method: C{If-None-Match: *} (create only) then fails.
    """
    if current is None:
        return if_match is None
    etag, last_modified = current
    return (
        evaluate_preconditions(
            method="PUT",
            etag=etag,
            last_modified=last_modified,
            if_match=if_match,
            if_none_match=if_none_match,
            if_unmodified_since=if_unmodified_since,
        )
        is None
    )


def if_range_allows_partial(if_range: str | None, etag: str, last_modified: int) -> bool:
    """
    Whether a Range may be honoured given If-Range (RFC 9110 §13.1.5).

    True when If-Range is absent, when it is an entity-tag that strongly
    matches C{etag} (a weak tag never does: §13.1.5 requires the strong
    comparison, since bytes spliced from two versions would be corrupt), or
    when it is an HTTP-date exactly equal to C{last_modified} (equal, not
    "not later": a date is only a weak validator, so anything but an exact
    match may be another version). Anything else (a stale or weak tag, a
    stale, future or invalid date, an empty value) is False: the client gets
    the whole representation with a 200, which is always safe.
    """
    if if_range is None:
        return True
    value = if_range.strip(_OWS)
    if value.startswith(('"', "W/")):
        scanned = _scan_etag(value, 0)
        if scanned is None or scanned[2] != len(value):
            return False
        tag_weak, opaque, _ = scanned
        own_weak, own_opaque = _own_etag(etag)
        return not tag_weak and not own_weak and opaque == own_opaque
    date = parse_http_date(value)
    return date is not None and date == last_modified


# --- multipart/byteranges (RFC 9110 §14.6) -----------------------------------

#: bchars of RFC 2046 §5.1.1; a boundary is 1 to 70 of them, not ending in a
#: space. Checked because a bad one would corrupt the body silently.
_BOUNDARY: Final = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")


def multipart_byteranges(
    ranges: list[ByteRange], size: int, content_type: str, boundary: str
) -> list[bytes | ByteRange]:
    """
    The body of a multipart/byteranges 206 (RFC 9110 §14.6), as literal
    bytes and L{ByteRange}s to copy from the file, in order.

    Each part is C{--BOUNDARY CRLF}, its Content-Type and Content-Range,
    a blank line, the bytes, then C{CRLF}; the body ends with
    C{--BOUNDARY-- CRLF}. The CRLF after a part's bytes belongs to the next
    delimiter (RFC 2046 §5.1.1), and the body starts directly with the first
    one, with no preamble. Keeping the ranges as values rather than reading
    them here lets the producer stream them with C{pread} and lets
    L{body_length} compute Content-Length before a byte is read. Adjacent
    literals are merged so the producer writes fewer, larger chunks.

    Raises L{ValueError} for no ranges, a range outside C{size}, an invalid
    boundary, or a content type that would break out of its header line.
    """
    if not ranges:
        raise ValueError("multipart/byteranges: no ranges")
    if _BOUNDARY.fullmatch(boundary) is None:
        raise ValueError(f"multipart/byteranges: invalid boundary {boundary!r}")
    if any(c in content_type for c in "\r\n\0"):
        raise ValueError(f"Content-Type: {content_type!r} contains a line break")
    delimiter = b"--" + boundary.encode("ascii")
    type_line = b"Content-Type: " + content_type.encode("latin-1") + b"\r\n"
    parts: list[bytes | ByteRange] = []
    pending = b""
    for byte_range in ranges:
        pending += (
            delimiter
            + b"\r\n"
            + type_line
            + b"Content-Range: "
            + byte_range.content_range(size).encode("ascii")
            + b"\r\n\r\n"
        )
        parts.append(pending)
        parts.append(byte_range)
        pending = b"\r\n"
    parts.append(pending + delimiter + b"--\r\n")
    return parts


def body_length(parts: list[bytes | ByteRange]) -> int:
    """
    The Content-Length of a body made of C{parts}: literal lengths plus range
    lengths, known before any file byte is read (so HEAD can answer it too).
    """
    return sum(len(p) if isinstance(p, bytes) else p.length for p in parts)
