"""
C{/tasks} over an in-memory HTTP connection (L{SiteConnection} on a real
Site): CRUD, validation, ETags and preconditions, listings and exports with
their filters, gzip, flow control, the cursor closed on every ending, auth.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import zlib
from typing import Any

import pytest
from twisted.internet.task import Clock

from streamsvc.app import build_site
from streamsvc.config import AuthConfig, Config, ServerConfig
from streamsvc.tasks.model import NewTask, Task
from streamsvc.tasks.sqlite import SQLiteTaskStore
from streamsvc.tasks.store import _at_once
from streamsvc.testing import MemoryTaskStore, RawResponse, SiteConnection

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
T0 = 1_764_660_000.0


class Harness:
    def __init__(
        self, tmp_path: Any, store: Any = None, *, tokens: tuple[str, ...] = (TOKEN,), clock: Clock | None = None,
        **server: Any,
    ) -> None:
        self.clock = clock or Clock()
        self.clock.advance(T0)
        self.store = store if store is not None else MemoryTaskStore(now=self.clock.seconds)
        config = Config(server=ServerConfig(data_dir=str(tmp_path), **server), auth=AuthConfig(tokens=tokens))
        self.site = build_site(config, reactor=self.clock, task_store=self.store)

    def connect(self, **kw: Any) -> SiteConnection:
        return SiteConnection(self.site, **kw)

    def call(
        self, method: str, path: str, body: bytes | dict | list | None = None, headers: dict[str, str] | None = None,
        *, auth: bool = True,
    ) -> RawResponse:
        conn = self.connect()
        all_headers = dict(AUTH if auth else {})
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            all_headers.setdefault("Content-Type", "application/json")
        all_headers.update(headers or {})
        conn.request(method, path, all_headers, body or b"")
        conn.read_until_quiet(self.clock)
        return conn.response(head=method == "HEAD")

    def create(self, n: int, **fields: Any) -> None:
        for i in range(n):
            self.store.create(NewTask(fields.get("title", f"task {i}"), fields.get("priority", i % 11), fields.get("status", "pending")))


def doc(response: RawResponse) -> Any:
    return json.loads(response.body)


@pytest.fixture
def h(tmp_path: Any) -> Harness:
    return Harness(tmp_path)


# --- single tasks -----------------------------------------------------------------


def test_create_answers_201_with_the_task_location_and_etag(h: Harness) -> None:
    r = h.call("POST", "/tasks", {"title": "write tests", "priority": 3})
    assert r.code == 201
    task = doc(r)
    assert task == {
        "id": 1, "title": "write tests", "priority": 3, "status": "pending",
        "created_at": "2025-12-02T07:20:00.000Z", "updated_at": "2025-12-02T07:20:00.000Z",
    }
    assert r.header("location") == "/tasks/1"
    assert r.header("etag") == '"1.1"'
    assert r.header("content-type") == "application/json"
    assert h.store.tasks[1].title == "write tests"


@pytest.mark.parametrize(
    "body, message",
    [
        (b"{", "invalid JSON"),
        (b"[1]", "JSON object"),
        (b'"x"', "JSON object"),
        (b"{}", "title is required"),
        (b'{"title": ""}', "title must not be empty"),
        (b'{"title": "   "}', "title must not be empty"),
        (b'{"title": 5}', "title must be a string"),
        (b'{"title": "x", "priority": true}', "priority must be an integer"),
        (b'{"title": "x", "priority": 1.0}', "priority must be an integer"),
        (b'{"title": "x", "priority": 11}', "priority must be from 0 to 10"),
        (b'{"title": "x", "priority": -1}', "priority must be from 0 to 10"),
        (b'{"title": "x", "status": "done"}', "status must be one of"),
        (b'{"title": "x", "status": ["pending"]}', "status must be one of"),
        (b'{"title": "x", "owner": "me"}', "unknown field 'owner'"),
        (b'{"title": "x", "id": 5}', "unknown field 'id'"),
        (b'{"title": "x", "title": "y"}', "given more than once"),
        (b'{"title": "\\ud800"}', "valid Unicode"),
        (b'{"title": "a\\u0000b"}', "NUL"),
        (b'{"title": "' + b"x" * 501 + b'"}', "at most 500"),
        (b"\xff\xfe", "not UTF-8"),
        (b'{"title": "x", "priority": 1' + b"0" * 5000 + b"}", "invalid JSON"),
        (b"[" * 100000 + b"]" * 100000, "invalid JSON"),
    ],
)
def test_create_refuses_bad_bodies_naming_the_field(h: Harness, body: bytes, message: str) -> None:
    r = h.call("POST", "/tasks", body, {"Content-Type": "application/json"})
    assert r.code == 400, r.body
    assert message in doc(r)["error"]
    assert h.store.tasks == {}


def test_create_accepts_500_characters_and_unicode(h: Harness) -> None:
    title = "é" * 500
    r = h.call("POST", "/tasks", {"title": title, "status": "in-progress"})
    assert r.code == 201 and doc(r)["title"] == title and doc(r)["status"] == "in-progress"


def test_create_needs_json(h: Harness) -> None:
    r = h.call("POST", "/tasks", b"title=x", {"Content-Type": "application/x-www-form-urlencoded"})
    assert r.code == 415 and "application/json" in doc(r)["error"]
    r = h.call("POST", "/tasks", b'{"title":"x"}', {"Content-Type": "application/json; charset=latin-1"})
    assert r.code == 415
    r = h.call("POST", "/tasks", b'{"title":"x"}', {"Content-Type": "application/json; charset=UTF-8"})
    assert r.code == 201


def test_create_without_a_body(h: Harness) -> None:
    r = h.call("POST", "/tasks")
    assert r.code == 400 and "JSON object" in doc(r)["error"]


def test_create_body_over_1_mib_is_413(h: Harness) -> None:
    body = b'{"title": "' + b"x" * (1024 * 1024) + b'"}'
    r = h.call("POST", "/tasks", body, {"Content-Type": "application/json"})
    assert r.code == 413
    assert h.store.tasks == {}


def test_get_one(h: Harness) -> None:
    h.create(1)
    r = h.call("GET", "/tasks/1")
    assert r.code == 200 and doc(r)["title"] == "task 0" and r.header("etag") == '"1.1"'
    head = h.call("HEAD", "/tasks/1")
    assert head.code == 200 and head.body == b"" and head.header("content-length") == r.header("content-length")


@pytest.mark.parametrize("path", ["/tasks/2", "/tasks/0", "/tasks/abc", "/tasks/-1", "/tasks/1.5", "/tasks/99999999999999999999999", "/tasks/%31x", "/tasks/1/x"])
def test_get_missing_or_malformed_id_is_404(h: Harness, path: str) -> None:
    h.create(1)
    r = h.call("GET", path)
    assert r.code == 404 and "error" in doc(r)


def test_if_none_match_gives_304(h: Harness) -> None:
    h.create(1)
    r = h.call("GET", "/tasks/1", headers={"If-None-Match": '"x", "1.1"'})
    assert r.code == 304 and r.body == b"" and r.header("etag") == '"1.1"'
    assert h.call("GET", "/tasks/1", headers={"If-None-Match": '"1.2"'}).code == 200


def test_patch_changes_a_subset_and_the_etag(h: Harness) -> None:
    h.create(1)
    h.clock.advance(5)
    r = h.call("PATCH", "/tasks/1", {"status": "completed"})
    assert r.code == 200
    task = doc(r)
    assert task["status"] == "completed" and task["title"] == "task 0"
    assert task["updated_at"] == "2025-12-02T07:20:05.000Z" and task["created_at"] == "2025-12-02T07:20:00.000Z"
    assert r.header("etag") == '"1.2"'


def test_patch_validates_like_create(h: Harness) -> None:
    h.create(1)
    for body, message in [
        ({"priority": False}, "priority must be an integer"),
        ({"title": ""}, "title must not be empty"),
        ({"done": True}, "unknown field 'done'"),
        ([], "JSON object"),
    ]:
        r = h.call("PATCH", "/tasks/1", body)
        assert r.code == 400 and message in doc(r)["error"]
    assert h.store.tasks[1].version == 1


def test_patch_with_if_match(h: Harness) -> None:
    h.create(1)
    stale = h.call("PATCH", "/tasks/1", {"title": "b"}, {"If-Match": '"1.1"'})
    assert stale.code == 200
    r = h.call("PATCH", "/tasks/1", {"title": "c"}, {"If-Match": '"1.1"'})
    assert r.code == 412 and "ETag" in doc(r)["error"]
    assert h.store.tasks[1].title == "b"
    assert h.call("PATCH", "/tasks/1", {"title": "c"}, {"If-Match": "*"}).code == 200
    assert h.call("PATCH", "/tasks/1", {"title": "d"}, {"If-Match": 'W/"1.3"'}).code == 412  # weak never matches If-Match


def test_patch_missing_task_is_404(h: Harness) -> None:
    assert h.call("PATCH", "/tasks/7", {"title": "x"}).code == 404


def test_delete(h: Harness) -> None:
    h.create(2)
    assert h.call("DELETE", "/tasks/1", headers={"If-Match": '"1.9"'}).code == 412
    r = h.call("DELETE", "/tasks/1", headers={"If-Match": '"1.1"'})
    assert r.code == 204 and r.body == b""
    assert 1 not in h.store.tasks
    assert h.call("DELETE", "/tasks/1").code == 404
    assert h.call("GET", "/tasks/1").code == 404


def test_methods_not_allowed(h: Harness) -> None:
    r = h.call("PUT", "/tasks/1", {"title": "x"})
    assert r.code == 405 and r.header("allow") == "DELETE, GET, HEAD, PATCH"
    r = h.call("DELETE", "/tasks")
    assert r.code == 405 and "POST" in r.header("allow")
    r = h.call("PUT", "/tasks", {"title": "x"})
    assert r.code == 405


# --- auth -------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/tasks", "/tasks/1", "/tasks/export.csv", "/tasks/stream.ndjson", "/tasks/events", "/tasks/import"])
def test_every_path_needs_the_token(h: Harness, path: str) -> None:
    h.create(1)
    r = h.call("GET", path, auth=False)
    assert r.code == 401 and r.header("www-authenticate").startswith("Bearer")
    r = h.call("GET", path, headers={"Authorization": "Bearer wrong"}, auth=False)
    assert r.code == 401


def test_unauthenticated_post_is_refused_before_the_body(h: Harness) -> None:
    r = h.call("POST", "/tasks", {"title": "x"}, auth=False)
    assert r.code == 401 and h.store.tasks == {}
    r = h.call("POST", "/tasks/import", b'{"title":"x"}\n', {"Content-Type": "application/x-ndjson"}, auth=False)
    assert r.code == 401 and h.store.tasks == {}


def test_no_tokens_configured_is_403(tmp_path: Any) -> None:
    h = Harness(tmp_path, tokens=())
    r = h.call("GET", "/tasks")
    assert r.code == 403 and "tokens" in doc(r)["error"]


# --- listings ---------------------------------------------------------------------


def test_list_is_a_json_array_streamed(h: Harness) -> None:
    h.create(1234)
    r = h.call("GET", "/tasks")
    assert r.code == 200 and r.complete
    assert r.header("transfer-encoding") == "chunked" and r.header("content-length") is None
    tasks = doc(r)
    assert [t["id"] for t in tasks] == list(range(1, 1235))
    assert h.store.open_cursors == 0


def test_list_empty(h: Harness) -> None:
    assert doc(h.call("GET", "/tasks")) == []
    assert doc(h.call("GET", "/tasks/")) == []


def test_list_filters(h: Harness) -> None:
    h.store.create(NewTask("Buy milk", 1))
    h.store.create(NewTask("call mom", 7, "completed"))
    h.store.create(NewTask("buy bread", 9))

    def ids(query: str) -> list[int]:
        r = h.call("GET", "/tasks" + query)
        assert r.code == 200, r.body
        return [t["id"] for t in doc(r)]

    assert ids("?status=pending") == [1, 3]
    assert ids("?min_priority=7") == [2, 3]
    assert ids("?q=BUY") == [1, 3]
    assert ids("?limit=2") == [1, 2]
    assert ids("?after_id=1&limit=1") == [2]
    assert ids("?q=buy&min_priority=5") == [3]


@pytest.mark.parametrize(
    "query, name",
    [
        ("?status=done", "status"),
        ("?min_priority=11", "min_priority"),
        ("?min_priority=x", "min_priority"),
        ("?min_priority=-1", "min_priority"),
        ("?min_priority=%205", "min_priority"),
        ("?limit=0", "limit"),
        ("?limit=99999999999999999999", "limit"),
        ("?after_id=-3", "after_id"),
        ("?after_id=1&after_id=2", "after_id"),
        ("?q=" + "x" * 501, "q"),
        ("?q=%00zzz", "q"),
        ("?stauts=pending", "stauts"),
        ("?bom=1", "bom"),
    ],
)
def test_bad_filters_are_400_naming_the_parameter(h: Harness, query: str, name: str) -> None:
    r = h.call("GET", "/tasks" + query)
    assert r.code == 400 and name in doc(r)["error"]


def test_filters_shared_by_the_exports(h: Harness) -> None:
    for path in ("/tasks/export.csv", "/tasks/stream.ndjson"):
        assert h.call("GET", path + "?min_priority=99").code == 400
        assert h.call("GET", path + "?nope=1").code == 400
        assert doc(h.call("GET", path + "?q=%00zzz")) == {"error": "q must not contain NUL"}


def test_ndjson_export(h: Harness) -> None:
    h.create(700)
    r = h.call("GET", "/tasks/stream.ndjson?status=pending")
    assert r.code == 200 and r.complete
    assert r.header("content-type") == "application/x-ndjson"
    assert r.header("transfer-encoding") == "chunked" and r.header("content-length") is None
    lines = r.body.split(b"\n")
    assert lines[-1] == b""
    rows = [json.loads(line) for line in lines[:-1]]
    assert len(rows) == 700 and rows[0]["id"] == 1 and set(rows[0]) == {
        "id", "title", "priority", "status", "created_at", "updated_at"}


def test_csv_export(h: Harness) -> None:
    titles = ['plain', 'comma, inside', 'quote " inside', 'new\nline', 'crlf\r\nline', '=1+2', '+x', '-y', '@z', '\ttab', '\rcr', "'quoted", 'ünï']
    for title in titles:
        h.store.create(NewTask(title))
    r = h.call("GET", "/tasks/export.csv")
    assert r.code == 200 and r.complete
    assert r.header("content-type") == "text/csv; charset=utf-8"
    assert r.header("content-disposition") == 'attachment; filename="tasks.csv"'
    assert r.body.startswith(b"id,title,priority,status,created_at,updated_at\r\n")
    rows = list(csv.reader(io.StringIO(r.body.decode("utf-8"), newline="")))
    assert rows[0] == ["id", "title", "priority", "status", "created_at", "updated_at"]
    got = [row[1] for row in rows[1:]]
    guarded = [("'" + t) if t[:1] in ("=", "+", "-", "@", "\t", "\r", "'") else t for t in titles]
    assert got == guarded
    assert rows[1] == ["1", "plain", "0", "pending", "2025-12-02T07:20:00.000Z", "2025-12-02T07:20:00.000Z"]


def test_csv_bom(h: Harness) -> None:
    h.create(1)
    r = h.call("GET", "/tasks/export.csv?bom=1")
    assert r.body.startswith(b"\xef\xbb\xbfid,title")
    assert not h.call("GET", "/tasks/export.csv?bom=0").body.startswith(b"\xef")
    assert h.call("GET", "/tasks/export.csv?bom=maybe").code == 400


def test_head_of_a_listing_opens_no_cursor(h: Harness) -> None:
    h.create(3)
    opened = []
    cursor = h.store.cursor
    h.store.cursor = lambda q: opened.append(q) or cursor(q)
    r = h.call("HEAD", "/tasks/export.csv")
    assert r.code == 200 and r.body == b"" and r.header("content-type") == "text/csv; charset=utf-8"
    assert opened == []


@pytest.mark.parametrize("path", ["/tasks", "/tasks/export.csv", "/tasks/stream.ndjson"])
def test_listings_gzip_when_accepted(h: Harness, path: str) -> None:
    h.create(2000)
    plain = h.call("GET", path)
    r = h.call("GET", path, headers={"Accept-Encoding": "gzip"})
    assert r.code == 200 and r.header("content-encoding") == "gzip" and r.header("vary") == "Accept-Encoding"
    assert gzip.decompress(r.body) == plain.body
    assert len(r.body) < len(plain.body) / 3


def test_gzip_flushes_every_batch(h: Harness) -> None:
    """Each batch is sync-flushed: what reached the client so far decompresses to whole rows."""
    h.create(1200)
    conn = h.connect(buffer_size=10**9)
    store_cursor = h.store.cursor
    pending: list = []

    class SlowCursor:
        """A cursor whose batches arrive only when the test says (a slow database)."""

        def __init__(self, inner):
            self.inner = inner

        def fetch(self, n):
            from twisted.internet.defer import Deferred

            d = Deferred()
            pending.append((d, self.inner.fetch(n)))
            return d

        def close(self):
            self.inner.close()

    h.store.cursor = lambda q: SlowCursor(store_cursor(q))
    conn.request("GET", "/tasks/stream.ndjson", {**AUTH, "Accept-Encoding": "gzip"})
    h.clock.advance(0)
    d, inner = pending.pop()
    d.callback(inner.result)
    h.clock.advance(0)
    raw = conn.transport.value()
    body = raw[raw.index(b"\r\n\r\n") + 4 :]
    # de-chunk what is there
    data = b""
    while body:
        size_end = body.index(b"\r\n")
        size = int(body[:size_end], 16)
        data += body[size_end + 2 : size_end + 2 + size]
        body = body[size_end + 2 + size + 2 :]
    text = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data)
    lines = text.split(b"\n")
    assert len(lines) == 501 and lines[-1] == b""  # the whole first batch, nothing stuck in zlib
    for d, inner in pending:
        d.callback(inner.result)


def test_listing_pauses_with_the_client_and_reads_no_further(h: Harness) -> None:
    h.create(20_000)
    fetched: list[int] = []
    store_cursor = h.store.cursor

    def counting(q):
        c = store_cursor(q)
        fetch = c.fetch
        c.fetch = lambda n: fetch(n).addCallback(lambda rows: fetched.append(len(rows)) or rows)
        return c

    h.store.cursor = counting
    conn = h.connect(buffer_size=16 * 1024)
    conn.request("GET", "/tasks/stream.ndjson", AUTH)
    for _ in range(20):
        h.clock.advance(0)
    assert conn.transport.producer_paused
    assert sum(fetched) <= 1000  # a batch or two beyond what the buffer holds, not the table
    held = len(conn.transport.value())
    for _ in range(20):
        h.clock.advance(0)
    assert len(conn.transport.value()) == held  # paused: nothing more produced
    conn.read_until_quiet(h.clock)
    assert sum(fetched) == 20_000 and conn.response().complete
    assert h.store.open_cursors == 0


def test_client_gone_mid_export_closes_the_cursor(h: Harness) -> None:
    h.create(5000)
    conn = h.connect(buffer_size=8 * 1024)
    conn.request("GET", "/tasks/export.csv", AUTH)
    h.clock.advance(0)
    h.clock.advance(0)
    assert h.store.open_cursors == 1
    conn.disconnect()
    assert h.store.open_cursors == 0


def test_a_stalled_export_holds_no_sqlite_connection(tmp_path: Any) -> None:
    """Between batches the cursor holds nothing; its client leaving closes it."""
    store = SQLiteTaskStore(str(tmp_path / "t.db"), writer=_at_once, reader=_at_once, readers=1)
    store.create_many([NewTask(f"t{i}") for i in range(5000)])
    h = Harness(tmp_path, store)
    conn = h.connect(buffer_size=8 * 1024)
    conn.request("GET", "/tasks/stream.ndjson", AUTH)
    h.clock.advance(0)
    h.clock.advance(0)
    assert store.open_cursors == 1 and store.idle_connections == 1  # paused, holding nothing
    conn.disconnect()
    assert store.open_cursors == 0 and store.idle_connections == 1
    r = h.call("GET", "/tasks/stream.ndjson?limit=3")
    assert r.body.count(b"\n") == 3
    store.close()


def test_stalled_exports_past_the_readers_do_not_hold_up_a_listing(tmp_path: Any) -> None:
    """#28 item 4: readers+1 exports whose clients never read, then a listing: it answers whole."""
    readers = 2
    store = SQLiteTaskStore(str(tmp_path / "t.db"), writer=_at_once, reader=_at_once, readers=readers)
    store.create_many([NewTask(f"t{i}") for i in range(20_000)])
    h = Harness(tmp_path, store)
    stalled = []
    for path in ["/tasks/export.csv", "/tasks/stream.ndjson", "/tasks"][: readers + 1]:
        conn = h.connect(buffer_size=8 * 1024)
        conn.request("GET", path, AUTH)
        h.clock.advance(0)
        stalled.append(conn)
    assert store.open_cursors == readers + 1
    r = h.call("GET", "/tasks?limit=1")
    assert r.code == 200 and r.complete
    assert [t["id"] for t in json.loads(r.body)] == [1]
    for conn in stalled:
        assert conn.response().code == 200 and not conn.response().complete  # still stalled
        conn.disconnect()
    assert store.open_cursors == 0
    store.close()


def test_no_reader_free_in_time_is_a_503_before_the_status_line(tmp_path: Any) -> None:
    """A store whose readers are all busy past reader_wait: 503 + Retry-After, not a 200 and a hang."""
    from streamsvc.tasks.model import TaskQuery
    from test_task_store import queued_runner

    jobs: list = []
    clock = Clock()
    store = SQLiteTaskStore(
        str(tmp_path / "t.db"), writer=_at_once, reader=queued_runner(jobs), readers=1, clock=clock, reader_wait=5
    )
    store.create_many([NewTask("a")])
    h = Harness(tmp_path, store, clock=clock)
    busy = store.cursor(TaskQuery())
    busy.fetch(1)  # its connection being opened in a (held) thread job
    conn = h.connect()
    conn.request("GET", "/tasks", AUTH)
    clock.advance(0)
    assert conn.transport.value() == b""  # no status line while it waits
    clock.advance(5.1)
    r = conn.response()
    assert r.code == 503 and r.header("retry-after") == "1"
    assert json.loads(r.body) == {"error": "the task store is busy, try again soon"}
    assert store.open_cursors == 1  # (only the held one)
    busy.close()
    d, function, args = jobs.pop()
    d.callback(function(*args))
    assert store.open_cursors == 0 and store.idle_connections == 1
    store.close()


def test_store_failure_mid_export_aborts(h: Harness) -> None:
    from twisted.internet.defer import fail, succeed

    h.create(10)
    calls = []

    class Failing:
        def fetch(self, n):
            calls.append(n)
            # A full first batch (a short one would be the last), then a failure.
            return succeed([h.store.tasks[1]] * n) if len(calls) == 1 else fail(RuntimeError("disk I/O error"))

        def close(self):
            calls.append("closed")

    h.store.cursor = lambda q: Failing()
    conn = h.connect()
    conn.request("GET", "/tasks/stream.ndjson", AUTH)
    conn.read_until_quiet(h.clock)
    assert calls[-1] == "closed"
    assert conn.aborted
    assert not conn.response().complete


def test_store_failure_before_the_first_row_is_500(h: Harness) -> None:
    from twisted.internet.defer import fail

    class Failing:
        def fetch(self, n):
            return fail(RuntimeError("no"))

        def close(self):
            pass

    h.store.cursor = lambda q: Failing()
    r = h.call("GET", "/tasks/export.csv")
    # The CSV header row goes out with the first batch: the failure comes before any byte.
    assert r.code == 500 and json.loads(r.body) == {"error": "internal server error"}


@pytest.mark.parametrize("streaming", [True, False])
def test_cursor_producer_push_and_pull(streaming: bool) -> None:
    """CursorProducer registered either way: every row once, in order, then the cursor closed."""
    from streamsvc.tasks.encoders import NDJSONEncoder
    from streamsvc.tasks.resource import CursorProducer
    from streamsvc.tasks.model import TaskQuery
    from streamsvc.testing import RecordingConsumer

    store = MemoryTaskStore()
    store.create_many([NewTask(f"t{i}") for i in range(1200)])
    clock = Clock()
    producer = CursorProducer(store.cursor(TaskQuery()), NDJSONEncoder(), streaming=streaming, clock=clock, batch=100)
    consumer = RecordingConsumer()
    consumer.registerProducer(producer, streaming)
    done = producer.startProducing(consumer)
    for _ in range(100):
        if done.called:
            break
        if streaming:
            clock.advance(0)
        else:
            producer.resumeProducing()  # the consumer asks for each chunk
    assert done.called
    rows = [json.loads(line) for line in b"".join(consumer.chunks).splitlines()]
    assert [r["id"] for r in rows] == list(range(1, 1201))
    assert store.open_cursors == 0
    if not streaming:
        assert len(consumer.chunks) == 12  # one batch per resumeProducing


def test_cursor_producer_stopped_closes_the_cursor() -> None:
    from streamsvc.tasks.encoders import CSVEncoder
    from streamsvc.tasks.resource import CursorProducer
    from streamsvc.tasks.model import TaskQuery
    from streamsvc.testing import RecordingConsumer

    store = MemoryTaskStore()
    store.create_many([NewTask("x")])
    producer = CursorProducer(store.cursor(TaskQuery()), CSVEncoder(), clock=Clock())
    done = producer.startProducing(RecordingConsumer())
    assert store.open_cursors == 1
    producer.stopProducing()
    assert store.open_cursors == 0
    done.addErrback(lambda f: None)


def test_cursor_producer_reads_one_batch_ahead_and_no_further() -> None:
    """While a batch is written the next is read; a paused client stops the reading there."""
    from twisted.internet.defer import Deferred

    from streamsvc.tasks.encoders import NDJSONEncoder
    from streamsvc.tasks.resource import CursorProducer
    from streamsvc.testing import RecordingConsumer

    task = Task(1, "t", 0, "pending", "x", "x", 1)
    pending: list[Deferred] = []
    closed: list[bool] = []

    class Slow:
        def fetch(self, n):
            pending.append(Deferred())
            return pending[-1]

        def close(self):
            closed.append(True)

    clock = Clock()
    producer = CursorProducer(Slow(), NDJSONEncoder(), clock=clock, batch=2)
    consumer = RecordingConsumer()
    consumer.registerProducer(producer, True)
    done = producer.startProducing(consumer)
    clock.advance(0)
    assert len(pending) == 1
    producer.pauseProducing()
    pending[0].callback([task, task])  # the first batch arrives: the next is asked for at once
    clock.advance(0)
    assert len(pending) == 2 and len(consumer.chunks) == 1
    pending[1].callback([task, task])  # read ahead, and held: we are paused
    clock.advance(1)
    assert len(pending) == 2 and len(consumer.chunks) == 1
    producer.resumeProducing()
    clock.advance(0)
    assert len(pending) == 3 and len(consumer.chunks) == 2
    pending[2].errback(Exception("a failure nobody reads"))  # ahead for a client that then leaves
    producer.stopProducing()
    assert closed == [True]
    done.addErrback(lambda f: None)

