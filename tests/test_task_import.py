"""
C{POST /tasks/import}: NDJSON and CSV parsed as the body arrives, stored in
batches, bad lines reported and skipped, memory bounded, the socket paused
while a batch is stored.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.internet.defer import Deferred

from streamsvc.tasks.encoders import CSVEncoder
from streamsvc.tasks.importer import Importer, csv_columns, csv_task, import_format, ndjson_task
from streamsvc.tasks.model import Invalid, NewTask, Task
from streamsvc.testing import MemoryTaskStore

from test_task_resource import AUTH, Harness, doc

NDJSON = {"Content-Type": "application/x-ndjson"}
CSV = {"Content-Type": "text/csv; charset=utf-8"}


@pytest.fixture
def h(tmp_path: Any) -> Harness:
    return Harness(tmp_path)


def lines(*documents: Any) -> bytes:
    return b"".join((d if isinstance(d, bytes) else json.dumps(d).encode()) + b"\n" for d in documents)


def test_ndjson_import(h: Harness) -> None:
    body = lines(*({"title": f"t{i}", "priority": i % 11} for i in range(1200)))
    r = h.call("POST", "/tasks/import", body, NDJSON)
    assert r.code == 200, r.body
    assert doc(r) == {"created": 1200, "failed": 0, "errors": []}
    assert len(h.store.tasks) == 1200 and h.store.tasks[1200].title == "t1199"


def test_bad_lines_are_reported_and_the_good_ones_kept(h: Harness) -> None:
    body = lines(
        {"title": "ok 1"},
        b"{not json",
        {"title": ""},
        b"",
        {"title": "x", "priority": True},
        b"   ",
        [1, 2],
        {"title": "ok 2", "status": "completed", "id": 99, "created_at": "whenever"},
        b"\xff\xfe",
        {"title": "x", "colour": "red"},
    ) + b'{"title": "last, without newline"}'
    r = h.call("POST", "/tasks/import", body, NDJSON)
    assert r.code == 200
    result = doc(r)
    assert result["created"] == 3 and result["failed"] == 6
    assert [e["line"] for e in result["errors"]] == [2, 3, 5, 7, 9, 10]
    assert "invalid JSON" in result["errors"][0]["error"]
    assert "title must not be empty" in result["errors"][1]["error"]
    assert "priority" in result["errors"][2]["error"]
    assert "UTF-8" in result["errors"][4]["error"]
    assert "colour" in result["errors"][5]["error"]
    assert [t.title for t in h.store.tasks.values()] == ["ok 1", "ok 2", "last, without newline"]
    assert h.store.tasks[2].id == 2  # the id in the line is ignored, a new one given


def test_at_most_100_errors_listed_all_counted(h: Harness) -> None:
    body = b"nope\n" * 250 + lines({"title": "fine"})
    result = doc(h.call("POST", "/tasks/import", body, NDJSON))
    assert result["failed"] == 250 and len(result["errors"]) == 100 and result["created"] == 1


def test_a_line_over_1_mib_is_an_error_not_a_memory_spike(h: Harness) -> None:
    huge = b'{"title": "' + b"x" * (3 * 1024 * 1024) + b'"}'
    body = lines({"title": "before"}, huge, {"title": "after"})
    result = doc(h.call("POST", "/tasks/import", body, NDJSON))
    assert result["created"] == 2 and result["failed"] == 1
    assert result["errors"][0]["line"] == 2 and "longer than" in result["errors"][0]["error"]


def test_importer_holds_at_most_a_line_of_an_endless_one() -> None:
    store = MemoryTaskStore()
    request = FakeRequest()
    importer = Importer(request, store, "ndjson", max_line=1024)
    for _ in range(1000):
        importer.write(b"y" * 4096)  # 4 MB, no newline
        assert importer._lines._held <= 1024
    importer.body_done()
    assert request.answer["failed"] == 1 and request.answer["created"] == 0


def test_csv_import_round_trips_an_export(h: Harness, tmp_path_factory: Any) -> None:
    titles = ["plain", "comma, here", 'quote "here"', "two\nlines", "crlf\r\nin", "=1+1", "-minus", "@at", "'tick", "ünïcödé"]
    for i, title in enumerate(titles):
        h.store.create(NewTask(title, i % 11, "in-progress" if i % 2 else "pending"))
    exported = h.call("GET", "/tasks/export.csv").body
    fresh = Harness(tmp_path_factory.mktemp("fresh"))
    r = fresh.call("POST", "/tasks/import", exported, CSV)
    assert doc(r) == {"created": len(titles), "failed": 0, "errors": []}
    assert [(t.title, t.priority, t.status) for t in fresh.store.tasks.values()] == [
        (t.title, t.priority, t.status) for t in h.store.tasks.values()
    ]


def test_csv_import_with_bom_and_partial_columns(h: Harness) -> None:
    body = "\ufefftitle,priority\r\nfirst,3\r\nsecond,\r\n".encode()
    r = h.call("POST", "/tasks/import", body, CSV)
    assert doc(r) == {"created": 2, "failed": 0, "errors": []}
    assert [(t.title, t.priority) for t in h.store.tasks.values()] == [("first", 3), ("second", 0)]


def test_csv_bad_records(h: Harness) -> None:
    body = (
        b"title,priority,status\r\n"
        b"ok,1,pending\r\n"
        b"short,1\r\n"
        b"x,eleven,pending\r\n"
        b"y,1,nope\r\n"
        b'"quoted\r\nover lines",2,completed\r\n'
        b'"unterminated,1,pending\r\n'
    )
    result = doc(h.call("POST", "/tasks/import", body, CSV))
    assert result["created"] == 2 and result["failed"] == 4
    assert [e["line"] for e in result["errors"]] == [3, 4, 5, 8]
    assert "expected 3 fields" in result["errors"][0]["error"]
    assert "unterminated" in result["errors"][3]["error"]
    assert h.store.tasks[2].title == "quoted\r\nover lines"


def test_csv_bad_header_is_400_and_nothing_stored(h: Harness) -> None:
    r = h.call("POST", "/tasks/import", b"title,owner\r\nx,me\r\n", CSV)
    assert r.code == 400 and "owner" in doc(r)["error"]
    r = h.call("POST", "/tasks/import", b"priority\r\n1\r\n", CSV)
    assert r.code == 400 and "title column" in doc(r)["error"]
    assert h.store.tasks == {}


def test_import_needs_a_known_content_type(h: Harness) -> None:
    r = h.call("POST", "/tasks/import", b'{"title":"x"}\n', {"Content-Type": "application/json"})
    assert r.code == 415
    r = h.call("POST", "/tasks/import", b"title\nx\n", {"Content-Type": "text/csv; charset=latin-1"})
    assert r.code == 415
    assert h.store.tasks == {}


def test_import_other_methods(h: Harness) -> None:
    assert h.call("GET", "/tasks/import").code == 405
    assert h.call("PUT", "/tasks/import", b"x", NDJSON).code == 405


def test_empty_import(h: Harness) -> None:
    assert doc(h.call("POST", "/tasks/import", b"", NDJSON)) == {"created": 0, "failed": 0, "errors": []}


def test_import_over_max_upload_bytes_is_413(tmp_path: Any) -> None:
    from streamsvc.config import AuthConfig, Config, LimitsConfig, ServerConfig
    from streamsvc.app import build_site
    from streamsvc.testing import SiteConnection
    from twisted.internet.task import Clock

    store = MemoryTaskStore()
    config = Config(server=ServerConfig(data_dir=str(tmp_path)), auth=AuthConfig(tokens=("s3cret-token",)),
                    limits=LimitsConfig(max_upload_bytes=1000))
    clock = Clock()
    conn = SiteConnection(build_site(config, reactor=clock, task_store=store))
    conn.request("POST", "/tasks/import", {**AUTH, **NDJSON}, lines(*({"title": "x" * 50} for _ in range(40))))
    conn.read_until_quiet(clock)
    assert conn.response().code == 413 and store.tasks == {}


# --- the consumer on its own -----------------------------------------------------


class FakeRequest:
    """The part of a BodyRequest the importer uses."""

    def __init__(self) -> None:
        self.paused = False
        self.pauses = 0
        self.answer: Any = None
        self.failed: Any = None
        self.method = b"POST"
        self.finished = False

    def pause_body(self) -> None:
        self.paused = True
        self.pauses += 1

    def resume_body(self) -> None:
        self.paused = False

    def fail_body(self, error: Any) -> None:
        self.failed = error

    # what respond() needs
    _disconnected = False

    def setResponseCode(self, code: int) -> None:
        self.code = code

    def setHeader(self, name: bytes, value: bytes) -> None:
        pass

    def write(self, data: bytes) -> None:
        self.answer = json.loads(data)

    def finish(self) -> None:
        self.finished = True


class SlowStore(MemoryTaskStore):
    """create_many answers only when the test says (a slow disk)."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[tuple[Deferred, list]] = []

    def create_many(self, tasks):  # type: ignore[override]
        d: Deferred = Deferred()
        self.pending.append((d, list(tasks)))
        return d

    def finish_one(self) -> None:
        d, tasks = self.pending.pop(0)
        d.callback(MemoryTaskStore.create_many(self, tasks).result)


def test_socket_paused_while_a_batch_is_stored_and_resumed_after() -> None:
    store = SlowStore()
    request = FakeRequest()
    published: list = []

    class Hub:
        def publish(self, kind, data):
            published.append((kind, data["count"]))

    store.feed(Hub())
    importer = Importer(request, store, "ndjson", batch_rows=10)
    importer.write(lines(*({"title": f"t{i}"} for i in range(25))))
    assert request.paused and len(store.pending) == 1  # one batch at a time
    assert len(importer._ready) == 1  # the second waits, parsed
    store.finish_one()
    assert request.paused and len(store.pending) == 1
    store.finish_one()
    assert not request.paused and store.pending == []  # caught up: read on
    importer.body_done()
    assert len(store.pending) == 1 and request.answer is None  # the last 5 are being stored
    store.finish_one()
    assert request.answer == {"created": 25, "failed": 0, "errors": []}
    assert published == [("imported", 10), ("imported", 10), ("imported", 5)]  # the store announced each batch


def test_client_gone_mid_import_keeps_stored_batches_drops_the_rest() -> None:
    store = SlowStore()
    request = FakeRequest()
    importer = Importer(request, store, "ndjson", batch_rows=10)
    importer.write(lines(*({"title": f"t{i}"} for i in range(25))))
    importer.body_failed(None)  # type: ignore[arg-type]
    store.finish_one()  # the batch already in the database's hands completes
    assert store.pending == [] and len(store.tasks) == 10
    assert request.answer is None


def test_store_failure_stops_the_import_with_500() -> None:
    from twisted.internet.defer import fail

    class Broken(MemoryTaskStore):
        def create_many(self, tasks):  # type: ignore[override]
            return fail(OSError("disk full"))

    request = FakeRequest()
    importer = Importer(request, Broken(), "ndjson", batch_rows=2)
    importer.write(lines({"title": "a"}, {"title": "b"}, {"title": "c"}))
    assert request.failed.code == 500 and "0 were created" in request.failed.message


def test_a_database_gone_mid_import_is_a_503_saying_what_was_stored() -> None:
    from twisted.internet.defer import fail

    from streamsvc.tasks.store import StoreUnavailable

    class GoesAway(MemoryTaskStore):
        calls = 0

        def create_many(self, tasks):  # type: ignore[override]
            self.calls += 1
            if self.calls == 1:
                return MemoryTaskStore.create_many(self, tasks)
            return fail(StoreUnavailable("the task database at db:5432/t failed: server closed the connection"))

    request = FakeRequest()
    importer = Importer(request, GoesAway(), "ndjson", batch_rows=2)
    importer.write(lines({"title": "a"}, {"title": "b"}, {"title": "c"}, {"title": "d"}))
    assert request.failed.code == 503 and request.failed.headers == {b"retry-after": b"5"}
    assert "2 tasks were created before" in request.failed.message and "db:5432" not in request.failed.message


def test_import_events_one_per_batch(h: Harness) -> None:
    events: list = []
    h.site.events.publish = lambda kind, data: events.append((kind, data))  # type: ignore[method-assign]
    h.call("POST", "/tasks/import", lines(*({"title": f"t{i}"} for i in range(1100))), NDJSON)
    assert events == [
        ("imported", {"count": 500, "first_id": 1, "last_id": 500}),
        ("imported", {"count": 500, "first_id": 501, "last_id": 1000}),
        ("imported", {"count": 100, "first_id": 1001, "last_id": 1100}),
    ]


# --- pure parts --------------------------------------------------------------------


def test_import_format() -> None:
    assert import_format(b"application/x-ndjson") == "ndjson"
    assert import_format(b"Application/JSONL; charset=utf-8") == "ndjson"
    assert import_format(b"text/csv; header=present") == "csv"
    for bad in (None, b"", b"text/plain", b"application/json"):
        with pytest.raises(Exception) as info:
            import_format(bad)
        assert info.value.code == 415  # type: ignore[attr-defined]


def test_ndjson_task() -> None:
    assert ndjson_task(b'{"title": "a", "priority": 2}\r') == NewTask("a", 2)
    assert ndjson_task(b"  \r") is None
    with pytest.raises(Invalid, match="invalid JSON"):
        ndjson_task(b"{")
    # The same validation as POST /tasks (#28 item 6: was stored as "b").
    with pytest.raises(Invalid, match="field 'title' given more than once"):
        ndjson_task(b'{"title": "a", "title": "b"}')


def test_a_stray_quote_does_not_lose_the_rest_of_a_csv_import(h: Harness) -> None:
    """#28 item 8: was created 0, failed 1 for the whole body."""
    rows = 150_000
    body = b'title,priority\n"oops,1\n' + b"".join(b"t%d,1\n" % i for i in range(rows))
    result = doc(h.call("POST", "/tasks/import", body, CSV))
    assert result["failed"] == 1
    (error,) = result["errors"]
    assert error["line"] == 2
    first, last = map(int, error["error"].split("lines ")[1].split(" ")[0].split("-"))
    skipped = last - first + 1
    assert first == 2 and f"({skipped} lines)" in error["error"]
    assert skipped * 8 < 1.1 * 1024 * 1024  # only up to the 1 MiB record limit
    assert result["created"] == rows - (skipped - 1)  # every row after the span


@pytest.mark.parametrize("coding", ["gzip", "br", "identity, gzip"])
def test_a_coded_body_is_a_415_at_the_headers(h: Harness, coding: str) -> None:
    """Nothing decodes it: a gzip import read every line as "not UTF-8" (#28 item 7)."""
    import gzip

    for path, body, kind in (
        ("/tasks/import", gzip.compress(b'{"title":"a"}\n'), NDJSON),
        ("/tasks/import", b'{"title":"plain but claims gzip"}\n', NDJSON),
        ("/tasks", b'{"title":"x"}', {"Content-Type": "application/json"}),
    ):
        r = h.call("POST", path, body, {**kind, "Content-Encoding": coding})
        assert r.code == 415, (path, r.body)
        assert "Content-Encoding" in doc(r)["error"]
    assert doc(h.call("GET", "/tasks")) == []


def test_identity_coding_is_no_coding(h: Harness) -> None:
    r = h.call("POST", "/tasks/import", b'{"title":"a"}\n', {**NDJSON, "Content-Encoding": "identity"})
    assert r.code == 200 and doc(r)["created"] == 1


def test_an_import_line_with_a_duplicate_key_fails_alone(h: Harness) -> None:
    body = b'{"title":"a","title":"b"}\n{"title":"good"}\n'
    result = doc(h.call("POST", "/tasks/import", body, NDJSON))
    assert result["created"] == 1 and result["failed"] == 1
    assert result["errors"] == [{"line": 1, "error": "field 'title' given more than once"}]
    assert [t["title"] for t in doc(h.call("GET", "/tasks"))] == ["good"]


def test_csv_columns_and_tasks() -> None:
    columns = csv_columns(["ID", " title", "priority", "status", "created_at", "updated_at"])
    assert columns == ["id", "title", "priority", "status", "created_at", "updated_at"]
    assert csv_task(columns, ["7", "'=x", "3", "", "t", "t"]) == NewTask("=x", 3, "pending")
    assert csv_task(columns, []) is None and csv_task(columns, [""]) is None
    with pytest.raises(Invalid, match="title column"):
        csv_columns(["priority"])
    with pytest.raises(Invalid, match="more than once"):
        csv_columns(["title", "title"])
    with pytest.raises(Invalid, match="priority"):
        csv_task(["title", "priority"], ["x", "+3"])


def test_encoder_export_and_import_agree_on_guarding() -> None:
    tasks = [Task(1, t, 0, "pending", "a", "b") for t in ("'", "''", "=", "x")]
    encoder = CSVEncoder()
    data = encoder.head() + encoder.encode(tasks)
    request = FakeRequest()
    store = MemoryTaskStore()
    importer = Importer(request, store, "csv")
    importer.write(data)
    importer.body_done()
    assert [t.title for t in store.tasks.values()] == ["'", "''", "=", "x"]
