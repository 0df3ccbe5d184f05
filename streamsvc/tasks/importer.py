# -*- test-case-name: tests.test_task_import -*-
"""
C{POST /tasks/import}: NDJSON (C{application/x-ndjson}) or CSV with its
header row (C{text/csv}), parsed as the body arrives and stored in batches,
one transaction each.

Memory stays flat whatever the body's size: lines are cut as they arrive
(one longer than 1 MiB is an error for that line, and the rest of it is
skipped unread into memory), and while a batch is being written the socket
is paused, so at most about one read (64 KiB) more is parsed meanwhile. A
bad line never stops the good ones: it is counted, and the first 100 are
reported with their line number. The answer, once the body has ended and
the last batch is stored: C{200 {"created": n, "failed": m, "errors": [...]}}.

What an import is not: one transaction. A client that goes away mid-body
keeps the batches already stored (each whole, never half). A database
failure stops the import with a 500 that says how many were created.

Events: one C{imported} event per stored batch (C{{"count", "first_id",
"last_id"}}: the batch's ids are the consecutive range first_id..last_id)
rather than one event per row, so a million-row import does not flood every
subscriber's queue (and push them into C{dropped}); a subscriber that mirrors
the tasks fetches C{GET /tasks?after_id=first_id-1&limit=count}.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from zope.interface import implementer

from streamsvc.errors import HTTPError, JSONResource
from streamsvc.interfaces import IBodyConsumer, IStreamingBodyResource, ITaskStore
from streamsvc.lines import Line, LineSplitter
from streamsvc.tasks.encoders import CSVRecords, unguard_cell
from streamsvc.tasks.model import COLUMNS, IMPORT_IGNORED, Invalid, NewTask, Task, new_task, parse_json
from streamsvc.tasks.resource import media_type, respond, respond_error
from streamsvc.tasks.store import StoreBusy, StoreUnavailable

log = Logger()

#: The longest line (NDJSON) or record (CSV) accepted.
MAX_LINE = 1024 * 1024
#: Rows stored per transaction.
BATCH_ROWS = 500
#: Errors listed in the answer (all are counted).
MAX_ERRORS = 100

NDJSON_TYPES = (b"application/x-ndjson", b"application/ndjson", b"application/jsonl", b"application/x-jsonlines")
CSV_TYPES = (b"text/csv",)


def import_format(content_type: bytes | None) -> str:
    """C{"ndjson"} or C{"csv"} from the body's Content-Type, or a 415."""
    media, utf8 = media_type(content_type)
    if not utf8:
        raise HTTPError(415, "import bodies must be UTF-8")
    if media in NDJSON_TYPES:
        return "ndjson"
    if media in CSV_TYPES:
        return "csv"
    raise HTTPError(
        415, "import takes application/x-ndjson (one task per line) or text/csv (with a header row)"
    )


# --- rows from lines (pure) ---------------------------------------------------------------


def ndjson_task(data: bytes) -> NewTask | None:
    """One NDJSON line as a task; None for a blank line; L{Invalid} for a bad one."""
    if not data.strip():
        return None
    return new_task(parse_json(data), ignored=IMPORT_IGNORED)


def csv_columns(cells: list[str]) -> list[str]:
    """The header row's columns, checked: C{title} needed, the export's columns allowed, once each."""
    columns = [cell.strip().lstrip("\ufeff").lower() for cell in cells]
    for column in columns:
        if column not in COLUMNS:
            raise Invalid(f"unknown column {column[:50]!r} (columns: {', '.join(COLUMNS)})")
        if columns.count(column) > 1:
            raise Invalid(f"column {column!r} given more than once")
    if "title" not in columns:
        raise Invalid("the header row must have a title column")
    return columns


def csv_task(columns: list[str], cells: list[str]) -> NewTask | None:
    """One CSV record as a task; None for an empty record; L{Invalid} for a bad one."""
    if not cells or cells == [""]:
        return None
    if len(cells) != len(columns):
        raise Invalid(f"expected {len(columns)} fields, got {len(cells)}")
    document: dict[str, Any] = {}
    for column, cell in zip(columns, cells):
        if column in IMPORT_IGNORED:
            continue
        value = unguard_cell(cell)
        if column == "title":
            document["title"] = value
        elif value == "":
            continue  # the default
        elif column == "priority":
            if not value.isascii() or not value.isdigit() or len(value) > 3:
                raise Invalid("priority must be an integer from 0 to 10")
            document["priority"] = int(value)
        else:
            document[column] = value
    return new_task(document)


# --- the consumer ----------------------------------------------------------------------------


@implementer(IBodyConsumer)
class Importer:
    """
    Parses an import body as it arrives and stores it in batches.

    States: reading (parsing what arrives), a batch being stored (the
    socket paused; batches parsed meanwhile wait in C{_ready}), body ended
    (the last batches being stored), answered. The store announces each
    stored batch (an C{imported} event).
    """

    def __init__(
        self,
        request: Any,
        store: ITaskStore,
        fmt: str,
        *,
        batch_rows: int = BATCH_ROWS,
        max_line: int = MAX_LINE,
        max_errors: int = MAX_ERRORS,
    ) -> None:
        self._request = request
        self._store = store
        self._csv = fmt == "csv"
        self._max_line = max_line
        self._lines = LineSplitter(max_line, count_quotes=self._csv)
        self._records = CSVRecords(max_line) if self._csv else None
        self._columns: list[str] | None = None
        self._batch_rows = batch_rows
        self._max_errors = max_errors
        self._batch: list[NewTask] = []
        self._ready: list[list[NewTask]] = []
        self._storing = False
        self._body_ended = False
        self._stopped = False
        self.created = 0
        self.failed = 0
        self.errors: list[dict[str, Any]] = []

    # IBodyConsumer

    def write(self, data: bytes) -> None:
        if self._stopped:
            return
        for line in self._lines.feed(data):
            self._line(line)
            if self._stopped:
                return

    def body_done(self) -> None:
        if self._stopped:
            return
        for line in self._lines.end():
            self._line(line)
        if self._records is not None and not self._stopped:
            record = self._records.end()
            if record is not None:
                self._fail_row(record.number, record.error or "malformed CSV")
        if self._stopped:
            return
        self._body_ended = True
        self._cut_batch()
        self._store_next()

    def body_failed(self, reason: Failure) -> None:
        # The client left (or passed the size limit): what is stored stays,
        # what was parsed but not stored is dropped.
        self._stopped = True
        self._batch, self._ready = [], []

    # parsing

    def _line(self, line: Line) -> None:
        if self._records is None:
            if line.data is None:
                self._fail_row(line.number, f"line longer than {self._max_line} bytes")
                return
            self._row(line.number, lambda: ndjson_task(line.data))  # type: ignore[arg-type]
            return
        record = self._records.add(line)
        if record is None:
            return
        if record.cells is None:
            self._fail_row(record.number, record.error or "malformed CSV")
        elif self._columns is None:
            try:
                self._columns = csv_columns(record.cells)
            except Invalid as error:
                self._refuse(HTTPError(400, f"line {record.number}: {error}"))
        else:
            columns, cells = self._columns, record.cells
            self._row(record.number, lambda: csv_task(columns, cells))

    def _row(self, number: int, parse: Callable[[], NewTask | None]) -> None:
        try:
            task = parse()
        except Invalid as error:
            self._fail_row(number, str(error))
            return
        if task is None:
            return
        self._batch.append(task)
        if len(self._batch) >= self._batch_rows:
            self._cut_batch()
            self._store_next()

    def _fail_row(self, number: int, message: str) -> None:
        self.failed += 1
        if len(self.errors) < self._max_errors:
            self.errors.append({"line": number, "error": message})

    # storing

    def _cut_batch(self) -> None:
        if self._batch:
            self._ready.append(self._batch)
            self._batch = []

    def _store_next(self) -> None:
        if self._storing or self._stopped:
            return
        if not self._ready:
            if self._body_ended:
                self._answer()
            else:
                self._request.resume_body()
            return
        batch = self._ready.pop(0)
        self._storing = True
        self._request.pause_body()
        self._store.create_many(batch).addCallbacks(self._stored, self._store_failed)

    def _stored(self, tasks: list[Task]) -> None:
        self._storing = False
        self.created += len(tasks)
        self._store_next()

    def _store_failed(self, failure: Failure) -> None:
        self._storing = False
        if failure.check(StoreBusy, StoreUnavailable):
            # The database, not the import: the client may send the rest again soon.
            log.warn("Storing an import batch failed: {reason}", reason=str(failure.value))
            self._refuse(HTTPError(
                503, f"the task database is unavailable; {self.created} tasks were created before",
                {b"retry-after": b"5"},
            ))
            return
        log.failure("Storing an import batch failed", failure)
        self._refuse(HTTPError(500, f"could not store the tasks; {self.created} were created before"))

    # answering

    def _refuse(self, error: HTTPError) -> None:
        """End the import now: nothing more is read or stored."""
        self._stopped = True
        self._batch, self._ready = [], []
        if self._body_ended:
            respond_error(self._request, error)
        else:
            self._request.fail_body(error)

    def _answer(self) -> None:
        self._stopped = True
        respond(
            self._request,
            200,
            {"created": self.created, "failed": self.failed, "errors": self.errors},
            {b"cache-control": b"no-store"},
        )


@implementer(IStreamingBodyResource)
class ImportResource(JSONResource):
    """C{/tasks/import}; C{tasks} is the L{streamsvc.tasks.resource.TasksResource} it imports into."""

    isLeaf = True

    def __init__(self, tasks: Any, *, max_body_bytes: int) -> None:
        super().__init__()
        self._tasks = tasks
        self.max_body_bytes = max_body_bytes

    def body_consumer(self, request: IRequest) -> Importer:
        if request.method != b"POST":
            raise HTTPError(405, "method not allowed", {b"allow": b"POST"})
        if request.args:
            raise HTTPError(400, "this resource takes no query parameters")
        fmt = import_format(request.getHeader(b"content-type"))
        return Importer(request, self._tasks.store, fmt)

    def render_POST(self, request: IRequest) -> bytes:
        """A POST with an empty body: nothing to import."""
        import_format(request.getHeader(b"content-type"))
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return b'{"created":0,"failed":0,"errors":[]}\n'
