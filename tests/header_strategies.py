"""
Hypothesis strategies for hostile header values, shared by the tests of the
pure parsers (test_ranges) and of the resource (test_files).

Imported as a plain module: pytest puts this folder on C{sys.path}.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

MONTH_NAMES = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


def either(*choices: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """One of C{choices}, each as likely (C{st.one_of} favours its first)."""
    return st.sampled_from(choices).flatmap(lambda choice: choice)


#: Years at and around the edges: 0000 (no such year), 0001-0099 (before
#: the epoch by far), the epoch, 9999; and any four digits.
_years = either(
    st.just(0),
    st.integers(0, 99),
    st.sampled_from([1, 69, 70, 99, 1969, 1970, 2023, 9999]),
    st.integers(0, 9999),
)
#: Mostly real days and times, so that the year decides; sometimes not.
_days = either(st.integers(1, 28), st.integers(0, 99))
_times = either(
    st.tuples(st.integers(0, 23), st.integers(0, 59), st.integers(0, 60)),
    st.tuples(st.integers(0, 99), st.integers(0, 99), st.integers(0, 99)),
)
_months = st.sampled_from(MONTH_NAMES)

#: HTTP-dates in all three forms (IMF-fixdate, asctime, rfc850), with odd
#: years and day, hour, minute and second fields in or out of their ranges.
odd_dates = either(
    st.builds(
        lambda d, m, y, t: "Sun, %02d %s %04d %02d:%02d:%02d GMT" % (d, m, y, *t),
        _days, _months, _years, _times,
    ),
    st.builds(
        lambda d, m, y, t: "Sun %s %2d %02d:%02d:%02d %04d" % (m, d, *t, y),
        _days, _months, _years, _times,
    ),
    st.builds(
        lambda d, m, y, t: "Sunday, %02d-%s-%02d %02d:%02d:%02d GMT" % (d, m, y % 100, *t),
        _days, _months, _years, _times,
    ),
)
