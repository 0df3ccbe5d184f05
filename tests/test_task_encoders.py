"""
The pure parts of the tasks API: validation and query parsing
(L{streamsvc.tasks.model}), and the encoders and import splitters
(L{streamsvc.tasks.encoders}), with hypothesis round trips for CSV quoting
and formula guarding.
"""

from __future__ import annotations

import csv
import io
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamsvc.lines import LineSplitter
from streamsvc.tasks.encoders import (
    BOM,
    CSVEncoder,
    CSVRecords,
    JSONArray,
    NDJSONEncoder,
    guard_cell,
    unguard_cell,
)
from streamsvc.tasks.model import (
    Invalid,
    NewTask,
    Task,
    TaskQuery,
    matches,
    new_task,
    now_iso,
    parse_query,
    parse_task_id,
    task_changes,
)

titles = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=60
).filter(lambda t: t.strip())
tasks = st.builds(
    Task,
    id=st.integers(1, 2**40),
    title=titles,
    priority=st.integers(0, 10),
    status=st.sampled_from(["pending", "in-progress", "completed"]),
    created_at=st.just("2026-12-02T07:36:02.123Z"),
    updated_at=st.just("2026-12-02T07:36:02.456Z"),
)


# --- model -------------------------------------------------------------------------


def test_now_iso() -> None:
    assert now_iso(0) == "1970-01-01T00:00:00.000Z"
    assert now_iso(1764660000.9999) == "2025-12-02T07:20:00.999Z"


def test_new_task_defaults_and_ignored_fields() -> None:
    assert new_task({"title": "x"}) == NewTask("x", 0, "pending")
    assert new_task({"title": "x", "id": 3}, ignored=("id",)) == NewTask("x")
    with pytest.raises(Invalid, match="unknown field 'id'"):
        new_task({"title": "x", "id": 3})


def test_task_changes_may_be_empty_but_not_wrong() -> None:
    assert task_changes({}) == {}
    assert task_changes({"priority": 10}) == {"priority": 10}
    with pytest.raises(Invalid, match="priority"):
        task_changes({"priority": None})


def test_etag_changes_with_version() -> None:
    t = Task(7, "x", 0, "pending", "a", "a", 3)
    assert t.etag == '"7.3"' and t._replace(version=4).etag != t.etag
    assert "version" not in t.as_json()


def args(**kw: str) -> dict[bytes, list[bytes]]:
    return {k.encode(): [v.encode()] for k, v in kw.items()}


def test_parse_query() -> None:
    assert parse_query({}) == TaskQuery()
    q = parse_query(args(status="completed", min_priority="4", q="milk", limit="10", after_id="99"))
    assert q == TaskQuery("completed", 4, "milk", 10, 99)
    assert parse_query(args(q="")) == TaskQuery()  # an empty q filters nothing
    with pytest.raises(Invalid, match="format"):
        parse_query(args(format="csv"))
    assert parse_query(args(bom="1"), extra=("bom",)) == TaskQuery()
    with pytest.raises(Invalid, match="UTF-8"):
        parse_query({b"q": [b"\xff"]})


@pytest.mark.parametrize("value", ["+1", " 1", "1_0", "١", "1e3", "0x1", ""])
def test_integers_are_plain_digits(value: str) -> None:
    with pytest.raises(Invalid, match="limit"):
        parse_query(args(limit=value))


def test_parse_task_id() -> None:
    assert parse_task_id(b"1") == 1 and parse_task_id(b"0042") == 42
    for bad in (b"0", b"-1", b"x", b"", b"1.0", b"9" * 20, b"\xd9\xa1"):
        assert parse_task_id(bad) is None


def test_matches() -> None:
    t = Task(5, "Buy MILK", 3, "pending", "a", "a")
    assert matches(t, TaskQuery(q="milk", min_priority=3, status="pending", after_id=4))
    assert not matches(t, TaskQuery(after_id=5))
    assert not matches(t, TaskQuery(min_priority=4))
    assert not matches(t, TaskQuery(status="completed"))
    assert not matches(Task(5, "ÉCLAIR", 0, "pending", "a", "a"), TaskQuery(q="éclair"))


# --- encoders ------------------------------------------------------------------------


@given(st.lists(tasks, max_size=20))
def test_ndjson_round_trip(batch: list[Task]) -> None:
    data = NDJSONEncoder().encode(batch)
    # Only the line ends are LF bytes (JSON escapes them inside strings);
    # split on LF alone, as NDJSON readers must (U+2028 and friends stay raw).
    assert [json.loads(line) for line in data.split(b"\n")[:-1]] == [t.as_json() for t in batch]


@given(st.lists(st.lists(tasks, max_size=5), max_size=5))
def test_json_array_in_batches_is_one_array(batches: list[list[Task]]) -> None:
    encoder = JSONArray()
    data = encoder.head() + b"".join(encoder.encode(b) for b in batches) + encoder.end()
    assert json.loads(data) == [t.as_json() for b in batches for t in b]


@given(st.lists(tasks, max_size=20), st.booleans())
@settings(max_examples=200)
def test_csv_round_trip_through_the_csv_module(batch: list[Task], bom: bool) -> None:
    encoder = CSVEncoder(bom=bom)
    data = encoder.head() + encoder.encode(batch[:7]) + encoder.encode(batch[7:]) + encoder.end()
    assert data.startswith(BOM) == bom
    text = data.decode("utf-8").removeprefix("\ufeff")
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert rows[0] == ["id", "title", "priority", "status", "created_at", "updated_at"]
    assert len(rows) == len(batch) + 1
    for row, task in zip(rows[1:], batch):
        assert row[0] == str(task.id) and row[2] == str(task.priority) and row[3] == task.status
        assert unguard_cell(row[1]) == task.title
        assert not row[1].startswith(("=", "+", "-", "@", "\t", "\r"))  # never a formula


@given(st.text(max_size=30))
def test_guard_and_unguard(cell: str) -> None:
    guarded = guard_cell(cell)
    assert unguard_cell(guarded) == cell
    assert not guarded.startswith(("=", "+", "-", "@", "\t", "\r"))


@given(st.lists(tasks, max_size=20), st.integers(1, 50))
@settings(max_examples=200)
def test_csv_export_splits_back_into_records(batch: list[Task], piece: int) -> None:
    """What the importer does with an export cut at any byte boundary: the very same cells."""
    encoder = CSVEncoder()
    data = encoder.head() + encoder.encode(batch)
    splitter, records = LineSplitter(1 << 20, count_quotes=True), CSVRecords(1 << 20)
    got = []
    for start in range(0, len(data), piece):
        for line in splitter.feed(data[start : start + piece]):
            record = records.add(line)
            if record is not None:
                got.append(record)
    for line in splitter.end():
        record = records.add(line)
        if record is not None:
            got.append(record)
    assert records.end() is None
    assert all(r.error is None for r in got)
    assert [unguard_cell(r.cells[1]) for r in got[1:]] == [t.title for t in batch]


@given(st.lists(st.binary(max_size=40).filter(lambda b: b"\n" not in b), max_size=20), st.integers(1, 30))
def test_line_splitter_any_boundaries(lines: list[bytes], piece: int) -> None:
    data = b"".join(line + b"\n" for line in lines)
    splitter = LineSplitter(1000)
    out = []
    for start in range(0, len(data), piece):
        out.extend(splitter.feed(data[start : start + piece]))
    out.extend(splitter.end())
    assert [line.data for line in out] == lines
    assert [line.number for line in out] == list(range(1, len(lines) + 1))


def test_a_stray_quote_costs_the_lines_up_to_the_limit_not_the_rest() -> None:
    """#28 item 8: reading resyncs at the line where the record passed the limit."""
    records = CSVRecords(40)
    split = LineSplitter(100, count_quotes=True)
    body = b'"oops,1\n' + b"".join(b"row %d,1\n" % i for i in range(20))
    got = [r for line in split.feed(body) if (r := records.add(line)) is not None]
    assert records.end() is None
    (lost, *good) = got
    assert lost.number == 1 and lost.cells is None
    assert lost.error == "record too long (an unclosed quote?): lines 1-6 skipped (6 lines)"
    assert [r.cells for r in good] == [[f"row {i}", "1"] for i in range(5, 20)]
    assert [r.number for r in good] == list(range(7, 22))


def test_line_splitter_too_long_lines() -> None:
    splitter = LineSplitter(10)
    out = list(splitter.feed(b"short\n" + b"x" * 25)) + list(splitter.feed(b"yy\nok\n" + b"z" * 11))
    out += list(splitter.end())
    assert [(line.number, line.data) for line in out] == [(1, b"short"), (2, None), (3, b"ok"), (4, None)]


def test_csv_records_errors() -> None:
    records = CSVRecords(20)
    split = LineSplitter(100, count_quotes=True)
    got = []
    for line in split.feed(b'a,b\n"' + b"x" * 30 + b'",c\n\xff,x\nok\n"open\n'):
        record = records.add(line)
        if record is not None:
            got.append(record)
    got.append(records.end())
    assert [(r.number, r.cells, r.error) for r in got] == [
        (1, ["a", "b"], None),
        (2, None, "record too long"),
        (3, None, "not UTF-8"),
        (4, ["ok"], None),
        (5, None, "unterminated quoted field"),
    ]
