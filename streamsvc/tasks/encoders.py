# -*- test-case-name: tests.test_task_encoders -*-
"""
Tasks to bytes and back, a batch at a time: pure functions and small
stateful encoders/splitters with no I/O, so exports and imports stream in
constant memory and every rule is testable on its own.

Out: a JSON array (C{GET /tasks}), NDJSON (one task per line), CSV (RFC 4180:
CRLF line ends, fields quoted when they hold a comma, quote, CR or LF, quotes
doubled). CSV cells are guarded against formula injection (OWASP "CSV
injection"): a cell starting with C{=}, C{+}, C{-}, C{@}, tab or CR gets a
leading C{'}, so a spreadsheet shows it as text instead of running it. A
cell that already starts with C{'} gets one too, and the importer removes
exactly one leading C{'}: an export therefore imports back to the very same
titles.

In: L{streamsvc.lines.LineSplitter} cuts a body into lines without ever
holding a line past its limit, and L{CSVRecords} joins physical lines into CSV records (a quoted
field may hold newlines) before the csv module parses each one.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from typing import NamedTuple

from streamsvc.lines import Line
from streamsvc.tasks.model import COLUMNS, Task

#: What a formula-guarded cell may start with (plus the guard itself, see above).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "'")
#: Excel wants this to read a CSV file as UTF-8.
BOM = "\ufeff".encode("utf-8")


#: Made once: C{json.dumps} with options builds a new encoder on every call,
#: which was a third of an NDJSON export's time per row.
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _json_rows(tasks: Iterable[Task], separator: str) -> str:
    return separator.join([_JSON(task.as_json()) for task in tasks])


class NDJSONEncoder:
    """One task per line. Encoders share C{head()}, C{encode(tasks)}, C{end()}."""

    def head(self) -> bytes:
        return b""

    def encode(self, tasks: Iterable[Task]) -> bytes:
        text = _json_rows(tasks, "\n")
        return (text + "\n").encode("utf-8") if text else b""

    def end(self) -> bytes:
        return b""


class JSONArray:
    """A JSON array written a batch at a time: C{[}, the tasks, C{]}."""

    def __init__(self) -> None:
        self._started = False

    def head(self) -> bytes:
        return b"["

    def encode(self, tasks: Iterable[Task]) -> bytes:
        text = _json_rows(tasks, ",\n")
        if not text:
            return b""
        lead = ",\n" if self._started else "\n"
        self._started = True
        return (lead + text).encode("utf-8")

    def end(self) -> bytes:
        return b"\n]\n" if self._started else b"]\n"


def guard_cell(value: str) -> str:
    """A CSV cell a spreadsheet will not run as a formula (see the module docstring)."""
    return "'" + value if value.startswith(FORMULA_STARTS) else value


def unguard_cell(value: str) -> str:
    """What L{guard_cell} did, undone: one leading C{'} removed."""
    return value[1:] if value.startswith("'") else value


class CSVEncoder:
    """CSV rows (RFC 4180, CRLF) for batches of tasks, the header row first."""

    def __init__(self, *, bom: bool = False) -> None:
        self._buffer = io.StringIO()
        self._writer = csv.writer(self._buffer, lineterminator="\r\n")
        self._bom = bom

    def head(self) -> bytes:
        self._writer.writerow(COLUMNS)
        return (BOM if self._bom else b"") + self._take()

    def encode(self, tasks: Iterable[Task]) -> bytes:
        # Every cell of the row is guarded; in practice only a title can
        # start with a guarded character (ids, priorities, statuses and
        # dates cannot).
        self._writer.writerows(
            (t.id, guard_cell(t.title), t.priority, t.status, t.created_at, t.updated_at)
            for t in tasks
        )
        return self._take()

    def end(self) -> bytes:
        return b""

    def _take(self) -> bytes:
        text = self._buffer.getvalue()
        self._buffer.seek(0)
        self._buffer.truncate()
        return text.encode("utf-8")


# --- import: lines and records ------------------------------------------------------


class Record(NamedTuple):
    """A CSV record: the number of its first line, its cells (None: too long or malformed)."""

    number: int
    cells: list[str] | None
    error: str | None = None


class CSVRecords:
    """
    Joins lines into CSV records: a record ends at a line end outside
    quotes, which is exactly when its count of C{"} is even (RFC 4180
    doubles quotes inside quoted fields). A record is at most C{max_record}
    bytes; a longer one, or one that is not UTF-8, is an error record.

    A record that passes C{max_record} ends at the end of the line where it
    did, quotes or not: reading starts afresh on the next line. So one
    stray C{"} (C{"oops,1}) costs the lines up to the limit, reported as
    one error naming them, not the whole rest of the body (which, counted
    as inside a quoted field, would never end). No record is ever kept
    past the limit, so what is lost is at most C{max_record} bytes of lines.
    """

    def __init__(self, max_record: int) -> None:
        self._max = max_record
        self._lines: list[bytes] = []
        self._size = 0
        self._quotes = 0
        self._first = 0
        self._broken: str | None = None

    def add(self, line: Line) -> Record | None:
        if not self._lines and self._broken is None:
            self._first = line.number
        if line.data is None:
            self._broken, self._lines = "record too long", []
        elif self._broken is None:
            self._size += len(line.data) + 1
            if self._size > self._max:
                self._broken, self._lines = "record too long", []
            else:
                self._lines.append(line.data)
        self._quotes += line.quotes
        if self._broken is None and self._quotes % 2:
            return None  # inside a quoted field: the record goes on
        return self._take(line.number)

    def end(self) -> Record | None:
        """What is left at the end of the body: an unterminated quoted field."""
        if not self._lines and self._broken is None:
            return None
        self._broken = self._broken or "unterminated quoted field"
        return self._take(None)

    def _take(self, last: int | None) -> Record:
        lines, broken, first = self._lines, self._broken, self._first
        self._lines, self._size, self._quotes, self._broken = [], 0, 0, None
        if broken is not None:
            if last is not None and last > first:
                broken += f" (an unclosed quote?): lines {first}-{last} skipped ({last - first + 1} lines)"
            return Record(first, None, broken)
        raw = b"\n".join(lines)
        if raw.endswith(b"\r"):
            raw = raw[:-1]  # the record's own CRLF; CRs inside quotes stay
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return Record(first, None, "not UTF-8")
        try:
            rows = list(csv.reader([text], strict=True))
        except csv.Error as e:
            return Record(first, None, f"malformed CSV: {e}")
        if len(rows) != 1:
            return Record(first, None, "malformed CSV")
        return Record(first, rows[0])
