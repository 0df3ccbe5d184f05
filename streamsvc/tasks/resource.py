# -*- test-case-name: tests.test_task_resource -*-
"""
C{/tasks}: the HTTP face of an L{ITaskStore}.

  - C{POST /tasks}, C{GET|HEAD|PATCH|DELETE /tasks/{id}}: one task, JSON;
    C{ETag} on every task and C{If-Match} on PATCH/DELETE (412), so two
    editors cannot overwrite each other; C{If-None-Match} on GET (304).
  - C{GET /tasks} (a JSON array), C{/tasks/export.csv}, C{/tasks/stream.ndjson}:
    listings read from a cursor a batch at a time, only as fast as the
    client takes them (L{CursorProducer}), gzip-compressed when the client
    accepts it, with a sync flush after every batch so a slow trickle of
    rows is never stuck in zlib.
  - C{POST /tasks/import}: L{streamsvc.tasks.importer}.
  - C{GET /tasks/events}: L{streamsvc.tasks.events}.

Bodies (C{POST}, C{PATCH}) are taken as they arrive (L{streamsvc.body}),
at most 1 MiB, then parsed; every mistake in them is a 400 naming the field.
The whole tree sits behind the Bearer guard (L{streamsvc.app}).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from streamsvc._transport import request_over
from streamsvc.errors import ErrorPage, HTTPError, JSONResource, not_found, render_error
from streamsvc.files.fields import add_vary, event_stream_headers, finish_without_body, list_header
from streamsvc.interfaces import IBodyConsumer, IStreamingBodyResource, ITaskCursor, ITaskStore
from streamsvc.producers import StreamProducer, start_body
from streamsvc.ranges import etag_matches
from streamsvc.stages import GzipStage, accepts_gzip
from streamsvc.tasks.encoders import CSVEncoder, JSONArray, NDJSONEncoder
from streamsvc.tasks.events import CONTENT_TYPES, FORMATS, HubClosed
from streamsvc.tasks.model import (
    Invalid,
    Task,
    one_parameter,
    check_parameters,
    flag,
    new_task,
    parse_json,
    parse_query,
    parse_task_id,
    task_changes,
)
from streamsvc.tasks.store import PreconditionFailed, StoreBusy, StoreUnavailable, TaskNotFound

__all__ = ["CursorProducer", "EventsResource", "TaskResource", "TasksResource"]

log = Logger()

#: The longest JSON body of one task (C{POST}, C{PATCH}).
MAX_TASK_BODY = 1024 * 1024
#: Rows per cursor batch: one database round trip, one write, one gzip flush.
BATCH_ROWS = 500

JSON = b"application/json"


# --- answering -----------------------------------------------------------------------


def respond(request: IRequest, code: int, document: Any, headers: dict[bytes, bytes] | None = None) -> None:
    """Answer with a JSON document (or none, for 204/304), from outside C{render}."""
    if request_over(request):
        return
    request.setResponseCode(code)
    for name, value in (headers or {}).items():
        request.setHeader(name, value)
    if document is None:
        request.responseHeaders.removeHeader(b"content-type")
        finish_without_body(request)
        return
    body = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"
    request.setHeader(b"content-type", JSON)
    request.setHeader(b"content-length", b"%d" % len(body))
    if request.method != b"HEAD":
        request.write(body)
    request.finish()


def respond_error(request: IRequest, error: HTTPError) -> None:
    if request_over(request):
        return
    body = render_error(request, error)
    if body:
        request.write(body)
    request.finish()


def answer_failure(request: IRequest, failure: Failure) -> None:
    """A store's failure as the client should see it: 404, 412, 400, or a logged 500."""
    if failure.check(TaskNotFound):
        error = HTTPError(404, "no such task")
    elif failure.check(PreconditionFailed):
        error = HTTPError(412, "the task has changed (If-Match does not match its ETag)")
    elif failure.check(Invalid):
        error = HTTPError(400, str(failure.value))
    elif failure.check(HTTPError):
        error = failure.value
    elif failure.check(StoreBusy, StoreUnavailable):
        error = _unavailable(failure)
    else:
        log.failure("Task store failed for {method} {uri}", failure, method=request.method, uri=request.uri)
        error = HTTPError(500, "internal server error")
    respond_error(request, error)


def _task_headers(task: Task) -> dict[bytes, bytes]:
    return {b"etag": task.etag.encode("ascii"), b"cache-control": b"no-cache"}


def _if_match(request: IRequest) -> Callable[[Task], bool] | None:
    header = list_header(request, b"if-match")
    if header is None:
        return None
    return lambda task: etag_matches(header, task.etag, weak_comparison=False)


def _query(request: IRequest, extra: tuple[str, ...] = ()) -> Any:
    try:
        return parse_query(request.args, extra=extra)
    except Invalid as error:
        raise HTTPError(400, str(error)) from None


# --- JSON bodies -------------------------------------------------------------------------


def media_type(value: bytes | None) -> tuple[bytes, bool]:
    """
    A Content-Type's media type (lower case, no parameters) and whether
    its charset, if it names one, is UTF-8 (the only one these bodies take).
    """
    media, _, params = (value or b"").partition(b";")
    utf8 = True
    for param in params.split(b";"):
        name, _, charset = param.strip().partition(b"=")
        if name.strip().lower() == b"charset":
            utf8 = charset.strip().strip(b'"').lower() in (b"utf-8", b"utf8")
    return media.strip().lower(), utf8


def check_json_type(request: IRequest) -> None:
    """JSON bodies must say so (or say nothing); a form or text body is a 415."""
    value = request.getHeader(b"content-type")
    if value is None:
        return
    media, utf8 = media_type(value)
    if media != JSON and not media.endswith(b"+json"):
        raise HTTPError(415, "send the task as JSON (Content-Type: application/json)")
    if not utf8:
        raise HTTPError(415, "JSON bodies must be UTF-8")


@implementer(IBodyConsumer)
class JSONBody:
    """
    Collects a small JSON body (the request refuses one over the
    resource's C{max_body_bytes} before holding it) and hands the parsed
    document to C{then}, whose Deferred answers the request.
    """

    def __init__(self, request: IRequest, then: Callable[[object], Deferred[None]]) -> None:
        self._request = request
        self._then = then
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> None:
        self._parts.append(data)

    def body_done(self) -> None:
        body, self._parts = b"".join(self._parts), []
        request = self._request
        try:
            document = parse_json(body)
            done = self._then(document)
        except Invalid as error:
            respond_error(request, HTTPError(400, str(error)))
            return
        except HTTPError as error:
            respond_error(request, error)
            return
        done.addErrback(lambda failure: answer_failure(request, failure))

    def body_failed(self, reason: Failure) -> None:
        self._parts = []


def _empty_body(request: IRequest) -> None:
    """A POST/PATCH with no body at all (Content-Length: 0)."""
    check_json_type(request)
    raise HTTPError(400, "the body must be a JSON object")


# --- streamed listings ---------------------------------------------------------------------


class CursorProducer(StreamProducer):
    """
    Rows of an L{ITaskCursor}, encoded a batch at a time: the encoder's
    head, then one chunk per batch as the consumer takes them, then its end.
    One batch is read ahead: as a batch arrives the next is asked for, so
    the database reads it (in a thread, or on its server) while this one is
    encoded and written, rather than each waiting for the other. A client
    that stops reading stops it there: at most that one batch waits in
    memory, holding no connection. The cursor is closed whatever the
    ending: the last batch, an error, or the client leaving mid-export.
    """

    def __init__(self, cursor: ITaskCursor, encoder: Any, *, batch: int = BATCH_ROWS, **pacing: Any) -> None:
        super().__init__(**pacing)
        self._cursor = cursor
        self._encoder = encoder
        self._batch = batch
        self._stage = "head"  # head, rows, end, done
        self._ahead: Deferred[list[Task]] | None = None

    def _next_chunk(self) -> Any:
        if self._stage == "head":
            # The head goes out with the first batch, not before: the status
            # is committed only once the store has answered, so a store too
            # busy to (or failing to) is a 503 (or a 500), not a 200 and a
            # lone "[" followed by a hang or a cut.
            self._stage = "rows"
            head = self._encoder.head()
            return self._fetch().addCallback(lambda rows: head + rows)
        if self._stage == "rows":
            return self._fetch()
        if self._stage == "end":
            self._stage = "done"
            return self._encoder.end()
        return None

    def _fetch(self) -> Deferred[bytes]:
        ahead, self._ahead = self._ahead, None
        rows = ahead if ahead is not None else self._cursor.fetch(self._batch)
        return rows.addCallbacks(self._encode, _busy_as_503)

    def _encode(self, tasks: list[Task]) -> bytes:
        if not tasks:
            self._stage = "end"
            return b""
        if len(tasks) < self._batch:
            self._stage = "end"  # a short batch is the last: no query to learn it
        else:
            self._ahead = self._cursor.fetch(self._batch)
        return bytes(self._encoder.encode(tasks))

    def _release(self) -> None:
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            ahead.addErrback(lambda failure: None)  # read ahead for a client that left: nobody wants it
        self._cursor.close()


def _unavailable(failure: Failure) -> HTTPError:
    """
    A store with no connection free in time, or whose database cannot be
    reached: the client may retry soon (a 503 with Retry-After). The
    reason is logged once here; the client gets no more than that it was
    the database.
    """
    if failure.check(StoreBusy):
        return HTTPError(503, "the task store is busy, try again soon", {b"retry-after": b"1"})
    log.warn("Task store unavailable: {reason}", reason=str(failure.value))
    return HTTPError(503, "the task database is unavailable, try again soon", {b"retry-after": b"5"})


def _busy_as_503(failure: Failure) -> Failure:
    """Before the first byte of a listing, a store that cannot answer is a 503."""
    failure.trap(StoreBusy, StoreUnavailable)
    raise _unavailable(failure)


class _Listing:
    """What the three listings share: filters, headers, gzip, the streamed cursor."""

    def __init__(self, resource: "TasksResource", content_type: bytes, encoder: Callable[[IRequest], Any],
                 extra: tuple[str, ...] = (), disposition: bytes | None = None) -> None:
        self._resource = resource
        self._content_type = content_type
        self._encoder = encoder
        self._extra = extra
        self._disposition = disposition

    def render(self, request: IRequest, *, head: bool) -> int:
        owner = self._resource
        query = _query(request, self._extra)
        encoder = self._encoder(request)
        gzip = owner.gzip and accepts_gzip(list_header(request, b"accept-encoding"))
        request.setHeader(b"content-type", self._content_type)
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"cache-control", b"no-store")
        if self._disposition is not None:
            request.setHeader(b"content-disposition", self._disposition)
        if owner.gzip:
            add_vary(request, b"Accept-Encoding")
        if gzip:
            request.setHeader(b"content-encoding", b"gzip")
        if head:
            return finish_without_body(request)
        producer: Any = CursorProducer(owner.store.cursor(query), encoder, clock=owner.clock)
        if gzip:
            producer = GzipStage(producer, level=owner.gzip_level, flush=True)
        start_body(request, producer, clock=owner.clock, kind="export")
        return NOT_DONE_YET  # type: ignore[no-any-return]


class _ListingResource(JSONResource):
    isLeaf = True

    def __init__(self, listing: _Listing) -> None:
        super().__init__()
        self._listing = listing

    def render_GET(self, request: IRequest) -> int:
        return self._listing.render(request, head=False)

    def render_HEAD(self, request: IRequest) -> int:
        return self._listing.render(request, head=True)


# --- the tree ---------------------------------------------------------------------------------


@implementer(IStreamingBodyResource)
class TasksResource(JSONResource):
    """
    C{/tasks}. C{events} is an L{streamsvc.tasks.events.EventHub} (or None:
    no live events, no C{/tasks/events}), fed by C{store}; C{importer} makes the resource of
    C{/tasks/import} (see L{streamsvc.tasks.importer.ImportResource}).
    """

    max_body_bytes = MAX_TASK_BODY

    def __init__(
        self,
        store: ITaskStore,
        *,
        events: Any = None,
        clock: IReactorTime | None = None,
        gzip: bool = True,
        gzip_level: int = 6,
        children: dict[bytes, IResource] | None = None,
    ) -> None:
        super().__init__()
        self.store = store
        self.events = events
        if events is not None:
            # Every change the store commits, from any request (or, with a
            # shared database, any host), reaches the hub: the store says
            # how (ITaskStore.feed); the resources publish nothing themselves.
            store.feed(events)
        self.clock = clock
        self.gzip = gzip
        self.gzip_level = gzip_level
        self._array = _Listing(self, b"application/json; charset=utf-8", lambda r: JSONArray())
        self._listings = {
            b"export.csv": _ListingResource(
                _Listing(
                    self,
                    b"text/csv; charset=utf-8",
                    lambda request: CSVEncoder(bom=_bom(request)),
                    extra=("bom",),
                    disposition=b'attachment; filename="tasks.csv"',
                )
            ),
            b"stream.ndjson": _ListingResource(
                _Listing(self, b"application/x-ndjson", lambda r: NDJSONEncoder())
            ),
        }
        self._children = dict(children or {})

    def getChild(self, path: bytes, request: IRequest) -> IResource:
        if path == b"" and not request.postpath:
            return self  # /tasks/
        if request.postpath:
            return not_found()  # /tasks/1/x
        child = self._listings.get(path) or self._children.get(path)
        if child is not None:
            return child
        task_id = parse_task_id(path)
        if task_id is None:
            return ErrorPage(HTTPError(404, "no such task"))
        return TaskResource(self, task_id)

    # GET /tasks

    def render_GET(self, request: IRequest) -> int:
        return self._array.render(request, head=False)

    def render_HEAD(self, request: IRequest) -> int:
        return self._array.render(request, head=True)

    # POST /tasks

    def body_consumer(self, request: IRequest) -> JSONBody | None:
        if request.method != b"POST":
            if request.method in (b"GET", b"HEAD"):
                return None
            raise HTTPError(405, "method not allowed", {b"allow": b"GET, HEAD, POST"})
        check_json_type(request)
        return JSONBody(request, lambda document: self._create(request, document))

    def render_POST(self, request: IRequest) -> bytes:
        _empty_body(request)
        return b""  # not reached

    def _create(self, request: IRequest, document: object) -> Deferred[None]:
        task = new_task(document)

        def created(task: Task) -> None:
            headers = _task_headers(task)
            headers[b"location"] = b"/tasks/%d" % task.id
            respond(request, 201, task.as_json(), headers)

        return self.store.create(task).addCallback(created)


def _bom(request: IRequest) -> bool:
    try:
        return flag(request.args, "bom")
    except Invalid as error:
        raise HTTPError(400, str(error)) from None


@implementer(IStreamingBodyResource)
class TaskResource(JSONResource):
    """C{/tasks/{id}}."""

    isLeaf = True
    max_body_bytes = MAX_TASK_BODY

    def __init__(self, tasks: TasksResource, task_id: int) -> None:
        super().__init__()
        self._tasks = tasks
        self._id = task_id

    def render_GET(self, request: IRequest) -> int:
        return self._show(request)

    def render_HEAD(self, request: IRequest) -> int:
        return self._show(request)

    def _show(self, request: IRequest) -> int:
        if request.args:
            raise HTTPError(400, "this resource takes no query parameters")

        def found(task: Task | None) -> None:
            if task is None:
                raise TaskNotFound(self._id)
            headers = _task_headers(task)
            none_match = list_header(request, b"if-none-match")
            if none_match is not None and etag_matches(none_match, task.etag, weak_comparison=True):
                respond(request, 304, None, headers)
            else:
                respond(request, 200, task.as_json(), headers)

        self._tasks.store.get(self._id).addCallback(found).addErrback(
            lambda failure: answer_failure(request, failure)
        )
        return NOT_DONE_YET  # type: ignore[no-any-return]

    def body_consumer(self, request: IRequest) -> JSONBody | None:
        if request.method != b"PATCH":
            if request.method in (b"GET", b"HEAD", b"DELETE"):
                return None
            raise HTTPError(405, "method not allowed", {b"allow": b"DELETE, GET, HEAD, PATCH"})
        check_json_type(request)
        precondition = _if_match(request)
        return JSONBody(request, lambda document: self._patch(request, document, precondition))

    def render_PATCH(self, request: IRequest) -> bytes:
        _empty_body(request)
        return b""  # not reached

    def _patch(self, request: IRequest, document: object, precondition: Any) -> Deferred[None]:
        changes = task_changes(document)

        def updated(task: Task) -> None:
            respond(request, 200, task.as_json(), _task_headers(task))

        return self._tasks.store.update(self._id, changes, precondition).addCallback(updated)

    def render_DELETE(self, request: IRequest) -> int:
        def deleted(task: Task) -> None:
            respond(request, 204, None)

        self._tasks.store.delete(self._id, _if_match(request)).addCallbacks(
            deleted, lambda failure: answer_failure(request, failure)
        )
        return NOT_DONE_YET  # type: ignore[no-any-return]


class EventsResource(JSONResource):
    """
    C{GET /tasks/events}: live changes, as Server-Sent Events or, with
    C{?format=ndjson}, as lines (see L{streamsvc.tasks.events}). Not
    gzipped: a stream of small events gains little, and proxies handle an
    uncompressed event stream best.
    """

    isLeaf = True

    def __init__(self, tasks: TasksResource) -> None:
        super().__init__()
        self._tasks = tasks

    def _headers(self, request: IRequest) -> str:
        """Check the query, set the headers; the format asked for."""
        try:
            check_parameters(request.args, ("format",))
            fmt = one_parameter(request.args, "format") or "sse"
        except Invalid as error:
            raise HTTPError(400, str(error)) from None
        if fmt not in FORMATS:
            raise HTTPError(400, f"format must be one of {', '.join(FORMATS)}")
        event_stream_headers(request, CONTENT_TYPES[fmt])
        return fmt

    def render_GET(self, request: IRequest) -> int:
        fmt = self._headers(request)
        last = request.getHeader(b"last-event-id")
        try:
            subscription = self._tasks.events.subscribe(
                last_event_id=None if last is None else last.decode("latin-1"), fmt=fmt, opening=True
            )
        except HubClosed:
            raise HTTPError(503, "shutting down", {b"retry-after": b"1"}) from None
        start_body(request, subscription, clock=self._tasks.clock, kind="events")
        return NOT_DONE_YET  # type: ignore[no-any-return]

    def render_HEAD(self, request: IRequest) -> int:
        self._headers(request)
        return finish_without_body(request)
