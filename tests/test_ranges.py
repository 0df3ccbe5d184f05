"""
Tests for L{streamsvc.ranges}: Range parsing and planning, entity-tag
matching, HTTP dates, conditional requests, If-Range and the
multipart/byteranges layout. Everything is pure, so every case is a string in
and a value out.
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamsvc import ranges as ranges_module
from streamsvc.ranges import (
    ByteRange,
    RangeNotSatisfiable,
    body_length,
    etag_matches,
    evaluate_preconditions,
    http_date,
    if_range_allows_partial,
    make_etag,
    multipart_byteranges,
    parse_http_date,
    parse_range_header,
    plan_ranges,
    unsatisfiable_content_range,
    weak,
)

from header_strategies import either, odd_dates

#: RFC 9110's example instant, in its three spellings.
EXAMPLE_SECONDS = 784111777
IMF = "Sun, 06 Nov 1994 08:49:37 GMT"
RFC850 = "Sunday, 06-Nov-94 08:49:37 GMT"
ASCTIME = "Sun Nov  6 08:49:37 1994"

ETAG = '"2710-17a"'
OTHER_ETAG = '"2710-17b"'
MTIME = EXAMPLE_SECONDS


def plan(
    value: str | None, size: int = 10000, max_ranges: int = 16
) -> list[tuple[int, int]] | None:
    """L{plan_ranges} as (first, last) pairs, easier to read in assertions."""
    ranges = plan_ranges(value, size, max_ranges)
    return None if ranges is None else [(r.start, r.end) for r in ranges]


# --- ByteRange -----------------------------------------------------------------


def test_byte_range_end_and_content_range() -> None:
    """End is inclusive and Content-Range uses RFC 9110's first-last/size."""
    r = ByteRange(0, 500)
    assert r.end == 499
    assert r.content_range(1234) == "bytes 0-499/1234"
    assert ByteRange(1233, 1).content_range(1234) == "bytes 1233-1233/1234"


def test_byte_range_is_frozen_value() -> None:
    """ByteRange compares by value and cannot be changed after creation."""
    assert ByteRange(3, 4) == ByteRange(3, 4)
    assert ByteRange(3, 4) != ByteRange(3, 5)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        ByteRange(3, 4).start = 1  # type: ignore[misc]


@pytest.mark.parametrize(("start", "length"), [(-1, 5), (0, 0), (0, -3), (True, 1)])
def test_byte_range_rejects_impossible_values(start: int, length: int) -> None:
    """A negative start or an empty range cannot be written as Content-Range."""
    with pytest.raises(ValueError, match="ByteRange"):
        ByteRange(start, length)


def test_content_range_refuses_range_past_size() -> None:
    """A Content-Range promising bytes past the end is a bug, not a header."""
    with pytest.raises(ValueError, match="Content-Range"):
        ByteRange(0, 11).content_range(10)


def test_unsatisfiable_content_range() -> None:
    """A 416 carries the current length as C{bytes */size}."""
    assert unsatisfiable_content_range(1234) == "bytes */1234"
    assert unsatisfiable_content_range(0) == "bytes */0"


def test_range_not_satisfiable_is_value_error() -> None:
    """Callers that catch ValueError also catch the 416 case."""
    assert issubclass(RangeNotSatisfiable, ValueError)


# --- parse_range_header ----------------------------------------------------------


def test_parse_forms() -> None:
    """The three spec forms come back as (first, last) with None for the missing side."""
    assert parse_range_header("bytes=5-9") == [(5, 9)]
    assert parse_range_header("bytes=5-") == [(5, None)]
    assert parse_range_header("bytes=-500") == [(None, 500)]
    assert parse_range_header("bytes=0-0,-1,7-") == [(0, 0), (None, 1), (7, None)]
    assert parse_range_header("bytes=5-5") == [(5, 5)]


def test_parse_unit_is_case_insensitive() -> None:
    """RFC 9110 §14.1: range units compare case-insensitively."""
    assert parse_range_header("BYTES=1-2") == [(1, 2)]
    assert parse_range_header("Bytes=1-2") == [(1, 2)]


def test_parse_whitespace_around_commas_and_empty_elements() -> None:
    """The #rule allows OWS around commas and empty list elements, which are skipped."""
    assert parse_range_header("bytes=0-1 , 2-3,\t4-5") == [(0, 1), (2, 3), (4, 5)]
    assert parse_range_header("bytes=0-1,,2-3") == [(0, 1), (2, 3)]
    assert parse_range_header("bytes=,0-1,") == [(0, 1)]
    assert parse_range_header("  bytes=0-1  ") == [(0, 1)]


def test_parse_keeps_order_and_duplicates() -> None:
    """Parsing is syntax only: sorting and merging are plan_ranges' job."""
    assert parse_range_header("bytes=9-9,0-1,0-1") == [(9, 9), (0, 1), (0, 1)]


def test_parse_eighteen_digits_accepted() -> None:
    """An 18-digit number is the largest accepted, and leading zeros are just digits."""
    assert parse_range_header("bytes=" + "9" * 18 + "-") == [(10**18 - 1, None)]
    assert parse_range_header("bytes=007-010") == [(7, 10)]


INVALID_RANGES = [
    "bytes=5-2",  # last < first
    "bytes=5-4",  # last just below first
    "bytes=abc",
    "items=0-1",  # other unit
    "bytes 0-1",  # no "="
    "bytes=",  # no spec
    "bytes=,",  # only empty elements
    "bytes=-",
    "bytes=+1-2",
    "bytes=1-+2",
    "bytes=-+2",
    "bytes=1-2-3",
    "bytes=0x1-2",
    "bytes=--1",
    "bytes=1--2",
    "bytes=1 -2",  # whitespace inside a spec
    "bytes = 0-1",  # whitespace around "="
    "bytes=0-1;2-3",
    "bytes=1.5-2",
    "bytes=\u00b2-3",  # a Unicode digit, not ASCII
    "bytes=" + "1" * 19 + "-",  # 19 digits
    "bytes=" + str(10**18) + "-",  # 19 digits, the smallest such number
    "bytes=0-" + "1" * 19,
    "bytes=-" + "1" * 19,
    "bytes=0-1,5-2",  # one invalid spec spoils the list
    "bytes=0-1,x",
    "=0-1",
    "",
]


@pytest.mark.parametrize("value", INVALID_RANGES)
def test_parse_invalid_returns_none(value: str) -> None:
    """A malformed header is ignored (None), so the caller serves the whole 200."""
    assert parse_range_header(value) is None


@pytest.mark.parametrize("value", INVALID_RANGES)
def test_plan_invalid_serves_whole(value: str) -> None:
    """plan_ranges turns a malformed header into the full 200, never a 416."""
    assert plan_ranges(value, 10000, 16) is None


# --- plan_ranges -------------------------------------------------------------------


def test_plan_absent_or_blank() -> None:
    """No Range header, or a blank one, is a plain 200."""
    assert plan_ranges(None, 10000, 16) is None
    assert plan_ranges("", 10000, 16) is None
    assert plan_ranges("  ", 10000, 16) is None


def test_plan_single() -> None:
    """A simple int-range is one ByteRange with the right start and length."""
    assert plan_ranges("bytes=0-499", 10000, 16) == [ByteRange(0, 500)]
    assert plan("bytes=500-999") == [(500, 999)]


def test_plan_suffix() -> None:
    """The suffix -500 of a 10000-byte file is its last 500 bytes, 9500..9999."""
    assert plan_ranges("bytes=-500", 10000, 16) == [ByteRange(9500, 500)]


def test_plan_open() -> None:
    """An open range 9500- runs to the end of the file."""
    assert plan("bytes=9500-") == [(9500, 9999)]


def test_plan_clamps_last_past_end() -> None:
    """A last-pos at or past the end is clamped to size - 1."""
    assert plan("bytes=9000-20000") == [(9000, 9999)]
    assert plan("bytes=9999-10000") == [(9999, 9999)]
    assert plan("bytes=0-" + "9" * 18) == [(0, 9999)]


def test_plan_suffix_longer_than_file() -> None:
    """A suffix longer than the file selects the whole file, as a 206."""
    assert plan("bytes=-20000") == [(0, 9999)]
    assert plan("bytes=-10000") == [(0, 9999)]


def test_plan_whole_file_range() -> None:
    """C{0-} alone is exactly size bytes, which the sum rule allows."""
    assert plan("bytes=0-") == [(0, 9999)]


def test_plan_multiple_disjoint() -> None:
    """Disjoint ranges stay separate parts, for a multipart 206."""
    assert plan("bytes=0-99,200-299,-100") == [(0, 99), (200, 299), (9900, 9999)]


def test_plan_coalesces_overlap() -> None:
    """Overlapping ranges merge into one, so no byte is sent twice."""
    assert plan("bytes=0-99,50-149") == [(0, 149)]
    assert plan("bytes=0-99,10-20,300-399") == [(0, 99), (300, 399)]


def test_plan_coalesces_adjacent() -> None:
    """Touching ranges (99 then 100) merge; a one-byte gap does not."""
    assert plan("bytes=0-99,100-199") == [(0, 199)]
    assert plan("bytes=0-99,101-199") == [(0, 99), (101, 199)]


def test_plan_coalesces_suffix_with_int_range() -> None:
    """A suffix touching an int-range merges with it like any other range."""
    assert plan("bytes=9000-9499,-500") == [(9000, 9999)]


def test_plan_sorts_out_of_order() -> None:
    """Out-of-order specs come back sorted by start."""
    assert plan("bytes=500-599,0-99,200-299") == [(0, 99), (200, 299), (500, 599)]


def test_plan_coalescing_to_one_returns_single() -> None:
    """When merging leaves one range, the answer is a single-part 206."""
    ranges = plan_ranges("bytes=10-19,0-9,5-14", 10000, 16)
    assert ranges == [ByteRange(0, 20)]


def test_plan_cap_exceeded() -> None:
    """More specs than max_ranges get the whole 200; exactly max_ranges is fine."""
    four = "bytes=0-0,10-10,20-20,30-30"
    assert plan(four, max_ranges=3) is None
    assert plan(four, max_ranges=4) == [(0, 0), (10, 10), (20, 20), (30, 30)]


def test_plan_cap_counts_unsatisfiable_specs() -> None:
    """The cap counts every spec given, so junk specs cannot dodge it."""
    assert plan("bytes=0-0,20000-,30000-,40000-", max_ranges=3) is None


def test_plan_sum_exceeds_size() -> None:
    """Ranges adding up to more than the file get the 200 (nginx's amplification rule)."""
    assert plan("bytes=0-,0-") is None
    assert plan("bytes=" + ",".join(["0-"] * 200), max_ranges=1000) is None
    assert plan("bytes=0-5000,4000-9999") is None  # 5001 + 6000 > 10000


def test_plan_sum_equal_to_size_allowed() -> None:
    """Exactly size bytes in total is not amplification."""
    assert plan("bytes=0-4999,5000-9999") == [(0, 9999)]
    assert plan("bytes=0-1,-2", size=4) == [(0, 3)]


def test_plan_sum_uses_clamped_lengths() -> None:
    """The sum counts bytes actually selected, after clamping, not what was asked."""
    assert plan("bytes=0-4999,9000-99999") == [(0, 4999), (9000, 9999)]


def test_plan_unsatisfiable_raises() -> None:
    """No spec inside the file means 416."""
    with pytest.raises(RangeNotSatisfiable, match="Range"):
        plan_ranges("bytes=10000-", 10000, 16)
    with pytest.raises(RangeNotSatisfiable):
        plan_ranges("bytes=20000-30000,10000-10001", 10000, 16)
    with pytest.raises(RangeNotSatisfiable):
        plan_ranges("bytes=-0", 10000, 16)


def test_plan_empty_file_is_unsatisfiable() -> None:
    """Nothing can be selected from zero bytes, whatever the form."""
    for value in ("bytes=0-", "bytes=0-0", "bytes=-5"):
        with pytest.raises(RangeNotSatisfiable):
            plan_ranges(value, 0, 16)


def test_plan_error_names_header_and_value() -> None:
    """The 416 exception's message names the header and the value, for logs."""
    with pytest.raises(RangeNotSatisfiable) as info:
        plan_ranges("bytes=500-", 100, 16)
    assert "Range" in str(info.value)
    assert "bytes=500-" in str(info.value)


def test_plan_drops_unsatisfiable_among_satisfiable() -> None:
    """An unsatisfiable spec next to good ones is dropped, not a 416."""
    assert plan("bytes=0-9,20000-30000") == [(0, 9)]
    assert plan("bytes=-0,0-9,50-59") == [(0, 9), (50, 59)]


def test_plan_one_byte_file() -> None:
    """Edge sizes: the only byte of a 1-byte file, by each form."""
    for value in ("bytes=0-0", "bytes=0-", "bytes=-1", "bytes=-9"):
        assert plan_ranges(value, 1, 16) == [ByteRange(0, 1)]
    with pytest.raises(RangeNotSatisfiable):
        plan_ranges("bytes=1-", 1, 16)


# --- plan_ranges properties --------------------------------------------------------

_spec = st.one_of(
    st.tuples(st.integers(0, 2 * 10**6), st.none()),
    st.tuples(st.none(), st.integers(0, 2 * 10**6)),
    st.tuples(st.integers(0, 2 * 10**6), st.integers(0, 2 * 10**6)).map(
        lambda t: (min(t), max(t))
    ),
)


def _spell(spec: tuple[int | None, int | None]) -> str:
    first, last = spec
    return ("" if first is None else str(first)) + "-" + ("" if last is None else str(last))


@given(
    size=st.integers(1, 10**6),
    specs=st.lists(_spec, min_size=1, max_size=5),
    max_ranges=st.integers(1, 6),
)
def test_property_plan_is_safe(
    size: int, specs: list[tuple[int | None, int | None]], max_ranges: int
) -> None:
    """
    Whatever is asked, the plan is the 200, a 416, or sorted, non-overlapping,
    non-adjacent ranges inside the file adding up to at most its size.
    """
    value = "bytes=" + ",".join(_spell(s) for s in specs)
    assert parse_range_header(value) == specs
    try:
        ranges = plan_ranges(value, size, max_ranges)
    except RangeNotSatisfiable:
        return
    if ranges is None:
        return
    assert ranges
    assert len(ranges) <= max_ranges
    for r in ranges:
        assert 0 <= r.start <= r.end < size
    for a, b in zip(ranges, ranges[1:]):
        assert a.end + 1 < b.start
    assert sum(r.length for r in ranges) <= size


@given(
    size=st.integers(0, 64),
    specs=st.lists(
        st.one_of(
            st.tuples(st.integers(0, 80), st.none()),
            st.tuples(st.none(), st.integers(0, 80)),
            st.tuples(st.integers(0, 80), st.integers(0, 80)).map(lambda t: (min(t), max(t))),
        ),
        min_size=1,
        max_size=5,
    ),
)
def test_property_plan_selects_exactly_the_requested_bytes(
    size: int, specs: list[tuple[int | None, int | None]]
) -> None:
    """
    Against a brute-force model on small files: a 206 covers exactly the union
    of the requested bytes, a 416 happens exactly when that union is empty, and
    the 200 fallback happens exactly when the selected lengths add up past size.
    """
    wanted: set[int] = set()
    total = 0
    for first, last in specs:
        if first is None:
            assert last is not None
            chosen = set(range(max(0, size - last), size))
        else:
            chosen = set(range(first, min(size - 1, last if last is not None else size) + 1))
        wanted |= chosen
        total += len(chosen)
    value = "bytes=" + ",".join(_spell(s) for s in specs)
    if not wanted:
        with pytest.raises(RangeNotSatisfiable):
            plan_ranges(value, size, 16)
        return
    ranges = plan_ranges(value, size, 16)
    if total > size:
        assert ranges is None
        return
    assert ranges is not None
    covered = [i for r in ranges for i in range(r.start, r.end + 1)]
    assert sorted(covered) == covered
    assert set(covered) == wanted
    assert len(covered) == len(wanted)


@given(st.text(max_size=40))
def test_property_parse_never_raises(value: str) -> None:
    """Any header text gives specs or None, never an exception."""
    result = parse_range_header(value)
    assert result is None or (
        result and all(isinstance(f, int) or isinstance(l, int) for f, l in result)
    )


@given(st.text(alphabet="bytes=0123456789-, x+", max_size=30), st.integers(0, 1000))
def test_property_plan_never_raises_anything_else(value: str, size: int) -> None:
    """On arbitrary near-miss headers plan_ranges only answers or raises RangeNotSatisfiable."""
    try:
        plan_ranges(value, size, 5)
    except RangeNotSatisfiable:
        pass


# --- entity tags -----------------------------------------------------------------


def test_make_etag() -> None:
    """The strong tag is quoted size-hex dash mtime_ns-hex."""
    assert make_etag(10000, 378) == '"2710-17a"'
    assert make_etag(0, 0) == '"0-0"'


def test_make_etag_changes_with_size_and_mtime() -> None:
    """Any change of size or nanosecond mtime changes the strong validator."""
    base = make_etag(10, 1_700_000_000_000_000_000)
    assert make_etag(11, 1_700_000_000_000_000_000) != base
    assert make_etag(10, 1_700_000_000_000_000_001) != base


def test_weak() -> None:
    """weak() prefixes W/ once; weakening a weak tag leaves it alone."""
    assert weak('"abc"') == 'W/"abc"'
    assert weak('W/"abc"') == 'W/"abc"'


@pytest.mark.parametrize(
    ("header", "strong", "weak_"),
    [
        ('"a"', True, True),
        ('"a", "b"', True, True),
        ('"a","b"', True, True),
        ('"b", "a"', True, True),
        ('"b","a"', True, True),
        ('"b" ,\t"a" ', True, True),
        ('W/"a"', False, True),
        ('W/"a", "b"', False, True),
        ('"b", W/"a"', False, True),
        ("*", True, True),
        (" * ", True, True),
        ('"b"', False, False),
        ('"b", "c"', False, False),
        ('W/"b"', False, False),
        ('"A"', False, False),  # opaque-tags are case-sensitive
        ('"a ', False, False),  # unterminated
        ("a", False, False),  # unquoted
        ("", False, False),
        ("w/\"a\"", False, False),  # W/ is case-sensitive
    ],
)
def test_etag_matches_strong_etag(header: str, strong: bool, weak_: bool) -> None:
    """Lists, spacing, weak tags and '*' against the strong tag "a", both comparisons."""
    assert etag_matches(header, '"a"', weak_comparison=False) is strong
    assert etag_matches(header, '"a"', weak_comparison=True) is weak_


@pytest.mark.parametrize(
    ("header", "weak_"),
    [('"a"', True), ('W/"a"', True), ('"b", W/"a"', True), ('"b"', False)],
)
def test_etag_matches_weak_etag(header: str, weak_: bool) -> None:
    """A weak own tag never matches strongly, but matches weakly on the opaque-tag."""
    assert etag_matches(header, 'W/"a"', weak_comparison=False) is False
    assert etag_matches(header, 'W/"a"', weak_comparison=True) is weak_


def test_etag_matches_skips_malformed_members() -> None:
    """A malformed member is skipped and the good ones after it still count."""
    assert etag_matches('junk, "a"', '"a"', weak_comparison=False)
    assert etag_matches('"x" junk, "a"', '"a"', weak_comparison=False)
    assert etag_matches('W/junk, W/"a"', '"a"', weak_comparison=True)
    assert not etag_matches('"a" junk', '"a"', weak_comparison=True)
    assert etag_matches('"a", *', '"a"', weak_comparison=False)
    assert not etag_matches('"b", *', '"a"', weak_comparison=False)


def test_etag_matches_comma_inside_opaque_tag() -> None:
    """Commas are legal in an opaque-tag, so the list is scanned, not split."""
    assert etag_matches('"x,y", "z"', '"x,y"', weak_comparison=False)
    assert not etag_matches('"x,y"', '"x"', weak_comparison=False)


def test_etag_matches_real_tags() -> None:
    """Tags made by make_etag/weak round-trip through matching as the files resource uses them."""
    strong = make_etag(10000, 1_700_000_000_123_456_789)
    assert etag_matches(f'"nope", {strong}', strong, weak_comparison=False)
    assert etag_matches(strong, weak(strong), weak_comparison=True)
    assert not etag_matches(strong, weak(strong), weak_comparison=False)


def test_etag_matches_rejects_malformed_own_etag() -> None:
    """A malformed server ETag is a bug and is reported, naming the header."""
    with pytest.raises(ValueError, match="ETag"):
        etag_matches('"a"', "a", weak_comparison=True)


# --- HTTP dates ------------------------------------------------------------------


@pytest.fixture
def year_2026(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two-digit years depend on today's year: pin it, so these tests never age."""
    monkeypatch.setattr(ranges_module, "_this_year", lambda: 2026)


@pytest.mark.parametrize(
    ("two_digits", "this_year", "expected"),
    [(94, 2026, 1994), (15, 2026, 2015), (76, 2026, 2076), (77, 2026, 1977), (94, 2050, 2094)],
)
def test_full_year_window(two_digits: int, this_year: int, expected: int) -> None:
    """RFC 9110 §5.6.7: more than 50 years ahead means the previous century."""
    assert ranges_module._full_year(two_digits, this_year) == expected


@pytest.mark.parametrize("text", [IMF, RFC850, ASCTIME])
def test_parse_http_date_three_formats(text: str, year_2026: None) -> None:
    """All three RFC 9110 §5.6.7 forms of the same instant give the same seconds."""
    assert parse_http_date(text) == EXAMPLE_SECONDS


def test_parse_http_date_asctime_two_digit_day() -> None:
    """asctime's day is SP-padded below 10 and two digits from 10 on."""
    assert parse_http_date("Thu Nov 10 08:49:37 1994") == EXAMPLE_SECONDS + 4 * 86400


def test_parse_http_date_rfc850_recent_century(year_2026: None) -> None:
    """A two-digit year is read as the recent past or near future, not the 1900s."""
    assert parse_http_date("Thursday, 01-Jan-15 00:00:00 GMT") == 1420070400


def test_parse_http_date_absent() -> None:
    """An absent header is None."""
    assert parse_http_date(None) is None


@pytest.mark.parametrize(
    "text",
    [
        "",
        "garbage",
        "yesterday",
        "1994-11-06T08:49:37Z",
        "784111777",
        "Sun, 06 Nov 1994 08:49:37",  # no GMT
        "Sun, 06 Nov 1994 08:49:37 UTC",
        "Sun, 06 Nov 1994 08:49:37 +0000",
        "Sun, 6 Nov 1994 08:49:37 GMT",  # day must be two digits
        "Sun, 06 Nov 94 08:49:37 GMT",
        "Sun, 06 November 1994 08:49:37 GMT",
        "Sun, 06 Foo 1994 08:49:37 GMT",
        "Xyz, 06 Nov 1994 08:49:37 GMT",
        "Sun, 32 Nov 1994 08:49:37 GMT",
        "Sun, 31 Nov 1994 08:49:37 GMT",
        "Sun, 29 Feb 1995 08:49:37 GMT",
        "Sun, 00 Nov 1994 08:49:37 GMT",
        "Sun, 06 Nov 1994 24:00:00 GMT",
        "Sun, 06 Nov 1994 08:60:00 GMT",
        "Sun, 06 Nov 1994 08:49:61 GMT",
        "Sun, 06 Nov 1994 8:49:37 GMT",
        "Sunday, 06-Nov-1994 08:49:37 GMT",
        "Sun Nov 6 08:49:37 1994",  # asctime needs SP SP before a 1-digit day
        "Sun Nov  6 08:49:37 94",
        "Sun, 06 Nov 1994 08:49:37 GMT garbage",
        "Sun, 01 Jan 0000 00:00:00 GMT",  # no year 0 in the Gregorian calendar
        "Sat, 29 Feb 0000 00:00:00 GMT",
        "Sun Jan  1 00:00:00 0000",
        "Fri Dec 31 23:59:59 0000",
    ],
)
def test_parse_http_date_invalid(text: str) -> None:
    """Anything but the three exact forms of a real date is None (the condition is ignored)."""
    assert parse_http_date(text) is None


def test_parse_http_date_first_years() -> None:
    """Years 0001-0099 are real (if long past) years, before the epoch: negative seconds."""
    assert parse_http_date("Mon, 01 Jan 0001 00:00:00 GMT") == -62135596800
    assert parse_http_date("Fri Dec 31 23:59:59 0099") == -59011459201
    assert parse_http_date("Fri, 31 Dec 9999 23:59:59 GMT") == 253402300799


def test_year_zero_dates_make_conditions_ignored() -> None:
    """
    A year-0000 date in If-Modified-Since, If-Unmodified-Since or If-Range is
    no date: the first two are ignored, If-Range matches nothing.
    """
    zero = "Sun, 01 Jan 0000 00:00:00 GMT"
    assert pre(if_modified_since=zero) is None
    assert pre(if_unmodified_since="Sun Jan  1 00:00:00 0000") is None
    assert if_range_allows_partial(zero, ETAG, MTIME) is False


def test_parse_http_date_surrounding_whitespace() -> None:
    """Optional whitespace around the field value is not part of it."""
    assert parse_http_date(f"  {IMF}\t") == EXAMPLE_SECONDS


def test_parse_http_date_leap_day_and_leap_second() -> None:
    """29 Feb of a leap year is a date; a :60 leap second counts as the next second."""
    assert parse_http_date("Thu, 29 Feb 1996 00:00:00 GMT") == 825552000
    assert parse_http_date("Sat, 31 Dec 2016 23:59:60 GMT") == 1483228800


def test_http_date() -> None:
    """IMF-fixdate, English names, fractions dropped."""
    assert http_date(EXAMPLE_SECONDS) == IMF
    assert http_date(EXAMPLE_SECONDS + 0.999) == IMF
    assert http_date(0) == "Thu, 01 Jan 1970 00:00:00 GMT"
    assert http_date(1709164800) == "Thu, 29 Feb 2024 00:00:00 GMT"


@given(st.integers(0, 253402300799))  # up to 9999-12-31T23:59:59Z
def test_property_http_date_round_trip(seconds: int) -> None:
    """Formatting then parsing any whole second gives it back."""
    assert parse_http_date(http_date(seconds)) == seconds


# --- evaluate_preconditions --------------------------------------------------------


def pre(
    method: str = "GET", etag: str = ETAG, last_modified: int = MTIME, **headers: str
) -> int | None:
    """evaluate_preconditions with the usual representation."""
    return evaluate_preconditions(method=method, etag=etag, last_modified=last_modified, **headers)


EARLIER = http_date(MTIME - 1)
LATER = http_date(MTIME + 1)
SAME = http_date(MTIME)


def test_no_preconditions() -> None:
    """Without conditional headers the request proceeds."""
    assert pre() is None
    assert pre(method="PUT") is None


def test_if_match() -> None:
    """If-Match: a strong match (in a list, or '*') proceeds; anything else is 412."""
    assert pre(if_match=ETAG) is None
    assert pre(if_match=f'"x", {ETAG}') is None
    assert pre(if_match="*") is None
    assert pre(if_match=OTHER_ETAG) == 412
    assert pre(if_match=weak(ETAG)) == 412  # weak tags never match strongly
    assert pre(if_match="") == 412  # present but empty: lists nothing


def test_if_match_with_weak_etag() -> None:
    """A weak representation tag (gzip variant) never satisfies If-Match, except '*'."""
    assert pre(etag=weak(ETAG), if_match=ETAG) == 412
    assert pre(etag=weak(ETAG), if_match=weak(ETAG)) == 412
    assert pre(etag=weak(ETAG), if_match="*") is None


def test_if_unmodified_since() -> None:
    """If-Unmodified-Since: modified after the date is 412; at or before proceeds."""
    assert pre(if_unmodified_since=EARLIER) == 412
    assert pre(if_unmodified_since=SAME) is None
    assert pre(if_unmodified_since=LATER) is None


def test_if_unmodified_since_invalid_ignored() -> None:
    """An invalid If-Unmodified-Since date is ignored, not a 412."""
    assert pre(if_unmodified_since="not a date") is None


def test_if_unmodified_since_ignored_when_if_match_present() -> None:
    """§13.2.2 step 2 only applies without If-Match: a matching If-Match wins."""
    assert pre(if_match=ETAG, if_unmodified_since=EARLIER) is None
    assert pre(if_match=OTHER_ETAG, if_unmodified_since=LATER) == 412


def test_if_none_match() -> None:
    """If-None-Match: a weak match is 304 for GET/HEAD; no match proceeds."""
    assert pre(if_none_match=ETAG) == 304
    assert pre(method="HEAD", if_none_match=ETAG) == 304
    assert pre(if_none_match=weak(ETAG)) == 304
    assert pre(etag=weak(ETAG), if_none_match=ETAG) == 304
    assert pre(if_none_match=f'"x", {ETAG}') == 304
    assert pre(if_none_match="*") == 304
    assert pre(if_none_match=OTHER_ETAG) is None


def test_if_none_match_other_methods_412() -> None:
    """For methods other than GET/HEAD a matching If-None-Match is 412."""
    assert pre(method="POST", if_none_match=ETAG) == 412
    assert pre(method="PUT", if_none_match="*") == 412
    assert pre(method="DELETE", if_none_match=OTHER_ETAG) is None


def test_if_modified_since() -> None:
    """If-Modified-Since: not modified since the date is 304; modified after proceeds."""
    assert pre(if_modified_since=SAME) == 304
    assert pre(if_modified_since=LATER) == 304
    assert pre(method="HEAD", if_modified_since=SAME) == 304
    assert pre(if_modified_since=EARLIER) is None


def test_if_modified_since_ignored() -> None:
    """Invalid dates and methods other than GET/HEAD ignore If-Modified-Since."""
    assert pre(if_modified_since="garbage") is None
    assert pre(method="POST", if_modified_since=LATER) is None
    assert pre(method="get", if_modified_since=LATER) is None  # methods are case-sensitive


def test_if_modified_since_accepts_obsolete_forms(year_2026: None) -> None:
    """If-Modified-Since in RFC 850 or asctime form works like IMF-fixdate."""
    assert pre(if_modified_since=RFC850) == 304
    assert pre(if_modified_since=ASCTIME) == 304


def test_if_match_beats_if_none_match() -> None:
    """A failed If-Match is 412 even when If-None-Match would give 304."""
    assert pre(if_match=OTHER_ETAG, if_none_match=ETAG) == 412
    assert pre(if_match=ETAG, if_none_match=ETAG) == 304


def test_if_unmodified_since_beats_if_none_match() -> None:
    """A failed If-Unmodified-Since is 412 before If-None-Match is looked at."""
    assert pre(if_unmodified_since=EARLIER, if_none_match=ETAG) == 412


def test_if_none_match_beats_if_modified_since() -> None:
    """With If-None-Match present, If-Modified-Since is not evaluated at all."""
    assert pre(if_none_match=OTHER_ETAG, if_modified_since=LATER) is None
    assert pre(if_none_match=ETAG, if_modified_since=EARLIER) == 304
    assert pre(if_none_match="", if_modified_since=LATER) is None


# --- If-Range --------------------------------------------------------------------


def test_if_range_absent() -> None:
    """Without If-Range the Range is honoured."""
    assert if_range_allows_partial(None, ETAG, MTIME) is True


def test_if_range_etag() -> None:
    """A strongly matching tag allows the range; a stale or weak one does not."""
    assert if_range_allows_partial(ETAG, ETAG, MTIME) is True
    assert if_range_allows_partial(f" {ETAG} ", ETAG, MTIME) is True
    assert if_range_allows_partial(OTHER_ETAG, ETAG, MTIME) is False
    assert if_range_allows_partial(weak(ETAG), ETAG, MTIME) is False
    assert if_range_allows_partial(ETAG, weak(ETAG), MTIME) is False


def test_if_range_malformed_etag() -> None:
    """A malformed tag, a list, or '*' is not a validator: whole 200."""
    assert if_range_allows_partial('"2710-17a', ETAG, MTIME) is False
    assert if_range_allows_partial(f"{ETAG}, {ETAG}", ETAG, MTIME) is False
    assert if_range_allows_partial("*", ETAG, MTIME) is False
    assert if_range_allows_partial("", ETAG, MTIME) is False


def test_if_range_date(year_2026: None) -> None:
    """Only a date exactly equal to Last-Modified allows the range."""
    assert if_range_allows_partial(SAME, ETAG, MTIME) is True
    assert if_range_allows_partial(RFC850, ETAG, MTIME) is True
    assert if_range_allows_partial(EARLIER, ETAG, MTIME) is False
    assert if_range_allows_partial(LATER, ETAG, MTIME) is False


def test_if_range_invalid_date() -> None:
    """An invalid date is not a validator either: whole 200."""
    assert if_range_allows_partial("yesterday", ETAG, MTIME) is False
    assert if_range_allows_partial("Sun, 32 Nov 1994 08:49:37 GMT", ETAG, MTIME) is False


# --- multipart/byteranges ----------------------------------------------------------


def test_multipart_layout_exact() -> None:
    """The parts of a two-range body, byte for byte, with literals merged."""
    ranges = [ByteRange(0, 3), ByteRange(7, 2)]
    parts = multipart_byteranges(ranges, 10, "text/plain", "XYZ")
    assert parts == [
        b"--XYZ\r\nContent-Type: text/plain\r\nContent-Range: bytes 0-2/10\r\n\r\n",
        ByteRange(0, 3),
        b"\r\n--XYZ\r\nContent-Type: text/plain\r\nContent-Range: bytes 7-8/10\r\n\r\n",
        ByteRange(7, 2),
        b"\r\n--XYZ--\r\n",
    ]


def assemble(parts: list[bytes | ByteRange], data: bytes) -> bytes:
    """The body a producer would send for C{parts} over file C{data}."""
    return b"".join(
        p if isinstance(p, bytes) else data[p.start : p.start + p.length] for p in parts
    )


def test_multipart_assembled_body_and_length() -> None:
    """The assembled body is the expected document and body_length is its length."""
    data = b"0123456789"
    parts = multipart_byteranges(
        [ByteRange(0, 3), ByteRange(7, 2)], len(data), "text/plain", "XYZ"
    )
    body = assemble(parts, data)
    assert body == (
        b"--XYZ\r\nContent-Type: text/plain\r\nContent-Range: bytes 0-2/10\r\n\r\n"
        b"012\r\n"
        b"--XYZ\r\nContent-Type: text/plain\r\nContent-Range: bytes 7-8/10\r\n\r\n"
        b"78\r\n"
        b"--XYZ--\r\n"
    )
    assert body_length(parts) == len(body)


def test_multipart_parses_as_mime() -> None:
    """A standard MIME parser reads back each part's headers and bytes."""
    import email.parser
    import email.policy

    data = bytes(range(256)) * 4
    ranges = plan_ranges("bytes=0-9,500-599,-16", len(data), 16)
    assert ranges is not None and len(ranges) == 3
    boundary = "b0undary"
    parts = multipart_byteranges(ranges, len(data), "application/octet-stream", boundary)
    body = assemble(parts, data)
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: multipart/byteranges; boundary=" + boundary.encode() + b"\r\n\r\n" + body
    )
    mime_parts = list(message.iter_parts())
    assert [p["Content-Range"] for p in mime_parts] == [r.content_range(len(data)) for r in ranges]
    assert [p.get_payload(decode=True) for p in mime_parts] == [
        data[r.start : r.end + 1] for r in ranges
    ]


def test_body_length() -> None:
    """body_length adds literal lengths and range lengths."""
    assert body_length([]) == 0
    assert body_length([ByteRange(0, 10)]) == 10
    assert body_length([b"abc", ByteRange(5, 100), b"\r\n"]) == 105


@pytest.mark.parametrize(
    ("ranges", "content_type", "boundary", "match"),
    [
        ([], "text/plain", "XYZ", "no ranges"),
        ([ByteRange(0, 3)], "text/plain", "", "boundary"),
        ([ByteRange(0, 3)], "text/plain", "a" * 71, "boundary"),
        ([ByteRange(0, 3)], "text/plain", "ends with space ", "boundary"),
        ([ByteRange(0, 3)], "text/plain", "bad\r\nboundary", "boundary"),
        ([ByteRange(0, 3)], "text/plain\r\nX-Evil: 1", "XYZ", "Content-Type"),
        ([ByteRange(8, 3)], "text/plain", "XYZ", "Content-Range"),
    ],
)
def test_multipart_rejects_bad_input(
    ranges: list[ByteRange], content_type: str, boundary: str, match: str
) -> None:
    """Inputs that would corrupt the body or inject headers are refused."""
    with pytest.raises(ValueError, match=match):
        multipart_byteranges(ranges, 10, content_type, boundary)


@given(
    size=st.integers(1, 2000),
    specs=st.lists(
        st.tuples(st.integers(0, 2000), st.integers(0, 2000)).map(lambda t: (min(t), max(t))),
        min_size=2,
        max_size=5,
    ),
)
def test_property_body_length_matches_assembled_body(
    size: int, specs: list[tuple[int, int]]
) -> None:
    """For any planned ranges, body_length equals the length of the assembled body."""
    try:
        ranges = plan_ranges("bytes=" + ",".join(f"{a}-{b}" for a, b in specs), size, 16)
    except RangeNotSatisfiable:
        return
    if ranges is None:
        return
    data = bytes(i % 251 for i in range(size))
    parts = multipart_byteranges(ranges, size, "application/octet-stream", "0123456789abcdef")
    body = assemble(parts, data)
    assert body_length(parts) == len(body)
    for r in ranges:
        assert data[r.start : r.end + 1] in body


# --- hostile input, as a property ---------------------------------------------------

#: Any value a client can put in a header as twisted.web hands it to us:
#: text, bytes decoded as latin-1, huge numbers, range sets of huge numbers,
#: entity-tag look-alikes, odd dates (more often: each date field must be
#: right for the year to matter), and two "lines" joined as RFC 9110 §5.3
#: joins them.
_one_line = either(
    st.text(max_size=40),
    st.binary(max_size=40).map(lambda b: b.decode("latin-1")),
    st.integers(0, 10**60).map(str),
    st.lists(st.integers(0, 10**30).map(str) | st.just(""), min_size=1, max_size=6).map(
        lambda numbers: "bytes=" + "-".join(numbers)
    ),
    odd_dates,
    st.text(alphabet='W/"*, \t', max_size=20),
    st.sampled_from([ETAG, weak(ETAG), "*", IMF, RFC850, ASCTIME]),
)
_hostile = either(_one_line, odd_dates, st.tuples(_one_line, _one_line).map(", ".join))


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(
    value=_hostile,
    size=st.integers(0, 10**6) | st.integers(0, 2**63),
    etag=st.sampled_from([ETAG, weak(ETAG)]),
    last_modified=st.integers(-(2**40), 2**40),
    method=st.sampled_from(["GET", "HEAD", "PUT", "get", ""]) | st.text(max_size=5),
)
def test_property_no_parser_raises_on_any_header(
    value: str, size: int, etag: str, last_modified: int, method: str
) -> None:
    """
    No parser here raises on any header value (only L{plan_ranges}'s own
    L{RangeNotSatisfiable}, which is an answer: 416), and each answers a
    value of the type it promises. A header must never make a 500.
    """
    date = parse_http_date(value)
    assert date is None or isinstance(date, int)
    specs = parse_range_header(value)
    assert specs is None or (isinstance(specs, list) and specs)
    try:
        ranges = plan_ranges(value, size, 16)
    except RangeNotSatisfiable:
        pass
    else:
        assert ranges is None or all(0 <= r.start <= r.end < size for r in ranges)
    assert isinstance(etag_matches(value, etag, weak_comparison=True), bool)
    assert isinstance(etag_matches(value, etag, weak_comparison=False), bool)
    assert isinstance(if_range_allows_partial(value, etag, last_modified), bool)
    for field in ("if_match", "if_none_match", "if_modified_since", "if_unmodified_since"):
        verdict = evaluate_preconditions(
            method=method, etag=etag, last_modified=last_modified, **{field: value}
        )
        assert verdict in (None, 304, 412)
    assert evaluate_preconditions(
        method=method, etag=etag, last_modified=last_modified, if_match=value,
        if_none_match=value, if_modified_since=value, if_unmodified_since=value,
    ) in (None, 304, 412)


# --- write_allowed (PUT/DELETE preconditions) ----------------------------------------


@pytest.mark.parametrize(
    "current, headers, allowed",
    [
        (None, {}, True),
        (None, {"if_none_match": "*"}, True),
        (None, {"if_match": "*"}, False),
        (None, {"if_match": '"a"'}, False),
        (None, {"if_unmodified_since": "Sun, 06 Nov 1994 08:49:37 GMT"}, True),
        (('"a"', 100), {}, True),
        (('"a"', 100), {"if_none_match": "*"}, False),
        (('"a"', 100), {"if_none_match": '"b"'}, True),
        (('"a"', 100), {"if_match": '"a"'}, True),
        (('"a"', 100), {"if_match": 'W/"a"'}, False),
        (('"a"', 100), {"if_match": '"b", "a"'}, True),
        (('"a"', 100), {"if_match": "*"}, True),
        (('"a"', 784111777), {"if_unmodified_since": "Sun, 06 Nov 1994 08:49:37 GMT"}, True),
        (('"a"', 784111778), {"if_unmodified_since": "Sun, 06 Nov 1994 08:49:37 GMT"}, False),
    ],
)
def test_write_allowed(current: Any, headers: dict[str, str], allowed: bool) -> None:
    from streamsvc.ranges import write_allowed

    assert write_allowed(current=current, **headers) is allowed
