"""
C{/tasks} over real loopback sockets, with the real SQLite store and its
threads: auth and CRUD through treq, a 100k-row import and its exports, a
client that leaves mid-export (cursor closed, connection back in the pool),
and an event subscriber that stops reading.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from typing import Any

import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred

from streamsvc.config import AuthConfig, EventsConfig, TasksConfig
from streamsvc.testing import parse_response

from test_integration import Server, get_request, raw, wait_for

TOKEN = "s0cket-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def started(tmp_path: Any, **sections: Any) -> Server:
    return await Server(tmp_path, auth=AuthConfig(tokens=(TOKEN,)), **sections).start()


async def stop(server: Server) -> None:
    await server.stop()
    await server.site.task_store.close()


async def call(server: Server, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
    all_headers = {**AUTH, **(headers or {})}
    data = None
    if isinstance(body, (dict, list)):
        data = json.dumps(body).encode()
        all_headers.setdefault("Content-Type", "application/json")
    elif body is not None:
        data = body
    response = await treq.request(method, server.url + path, data=data, headers=all_headers)
    content = await response.content()
    return response.code, response.headers, content


@pytest_twisted.ensureDeferred
async def test_auth_and_crud(tmp_path: Any) -> None:
    server = await started(tmp_path)
    try:
        response = await treq.get(server.url + "/tasks")
        assert response.code == 401
        await response.content()
        code, headers, body = await call(server, "POST", "/tasks", {"title": "over TCP", "priority": 4})
        assert code == 201 and headers.getRawHeaders(b"location") == [b"/tasks/1"]
        etag = headers.getRawHeaders(b"etag")[0].decode()
        code, _, body = await call(server, "GET", "/tasks/1")
        assert code == 200 and json.loads(body)["title"] == "over TCP"
        code, _, _ = await call(server, "PATCH", "/tasks/1", {"status": "completed"}, {"If-Match": etag})
        assert code == 200
        code, _, _ = await call(server, "PATCH", "/tasks/1", {"status": "pending"}, {"If-Match": etag})
        assert code == 412  # the first editor's change stands
        code, _, _ = await call(server, "DELETE", "/tasks/1")
        assert code == 204
        code, _, _ = await call(server, "GET", "/tasks/1")
        assert code == 404
    finally:
        await stop(server)


@pytest_twisted.ensureDeferred
async def test_import_100k_and_export_them(tmp_path: Any) -> None:
    server = await started(tmp_path)
    try:
        n = 100_000
        body = b"".join(
            json.dumps({"title": f"task, number {i} \"quoted\"", "priority": i % 11}).encode() + b"\n"
            for i in range(n)
        ) + b"not json\n"
        code, _, answer = await call(server, "POST", "/tasks/import", body, {"Content-Type": "application/x-ndjson"})
        result = json.loads(answer)
        assert code == 200 and result["created"] == n and result["failed"] == 1
        assert result["errors"] == [{"line": n + 1, "error": result["errors"][0]["error"]}]

        code, headers, data = await call(server, "GET", "/tasks/export.csv")
        rows = list(csv.reader(io.StringIO(data.decode(), newline="")))
        assert code == 200 and len(rows) == n + 1
        assert rows[n] == [str(n), f'task, number {n - 1} "quoted"', str((n - 1) % 11), "pending",
                           rows[n][4], rows[n][5]]

        code, _, data = await call(server, "GET", "/tasks/stream.ndjson?min_priority=10")
        lines = data.splitlines()
        assert len(lines) == len([i for i in range(n) if i % 11 == 10])
        assert all(json.loads(line)["priority"] == 10 for line in lines)

        client = await raw(server, get_request(
            "/tasks?limit=5&after_id=10", f"Authorization: Bearer {TOKEN}", "Accept-Encoding: gzip"))
        await client.closed
        response = parse_response(bytes(client.received))
        assert response.complete and response.header("content-encoding") == "gzip"
        assert [t["id"] for t in json.loads(gzip.decompress(response.body))] == [11, 12, 13, 14, 15]
        store = server.site.task_store
        await wait_for(lambda: store.open_cursors == 0)
    finally:
        await stop(server)


@pytest_twisted.ensureDeferred
async def test_client_gone_mid_export_closes_the_cursor(tmp_path: Any) -> None:
    server = await started(tmp_path)
    store = server.site.task_store
    try:
        body = b"".join(b'{"title": "row %d with some padding to make it longer"}\n' % i for i in range(50_000))
        code, _, _ = await call(server, "POST", "/tasks/import", body, {"Content-Type": "application/x-ndjson"})
        assert code == 200
        request = get_request("/tasks/export.csv", f"Authorization: Bearer {TOKEN}")
        client = await raw(server, request, pause_after=64 * 1024)
        await wait_for(lambda: client.paused)
        await wait_for(lambda: store.open_cursors == 1)
        await wait_for(lambda: store.idle_connections == 1)  # paused, it holds no reader
        client.transport.abortConnection()
        await client.closed
        await wait_for(lambda: store.open_cursors == 0)
        assert store.idle_connections == 1
        # the server stopped where the client stopped, not at the end of the table
        assert len(client.received) < 4 * 1024 * 1024
    finally:
        await stop(server)


@pytest_twisted.ensureDeferred
async def test_stalled_exports_past_the_readers_do_not_freeze_a_listing(tmp_path: Any) -> None:
    """#28 item 4: readers+1 clients ask for big exports and never read; a listing still answers at once."""
    readers = 2
    server = await started(tmp_path, tasks=TasksConfig(readers=readers))
    store = server.site.task_store
    stalled = []
    try:
        body = b"".join(b'{"title": "row %d with some padding to make it longer"}\n' % i for i in range(50_000))
        code, _, _ = await call(server, "POST", "/tasks/import", body, {"Content-Type": "application/x-ndjson"})
        assert code == 200
        for _ in range(readers + 1):
            request = get_request("/tasks/export.csv", f"Authorization: Bearer {TOKEN}")
            stalled.append(await raw(server, request, pause_after=1))
        await wait_for(lambda: all(client.paused for client in stalled))
        await wait_for(lambda: store.open_cursors == readers + 1)
        started_at = reactor.seconds()
        code, _, listing = await call(server, "GET", "/tasks?limit=1")
        assert code == 200 and [t["id"] for t in json.loads(listing)] == [1]
        assert reactor.seconds() - started_at < 5  # not held until send_timeout (60 s)
        assert all(len(client.received) < 4 * 1024 * 1024 for client in stalled)  # still stalled
    finally:
        for client in stalled:
            client.transport.abortConnection()
            await client.closed
        await wait_for(lambda: store.open_cursors == 0)
        await stop(server)


@pytest_twisted.ensureDeferred
async def test_event_subscriber_that_stops_reading(tmp_path: Any) -> None:
    server = await started(tmp_path, events=EventsConfig(queue_max=50, heartbeat=0))
    hub = server.site.events
    try:
        request = get_request("/tasks/events", f"Authorization: Bearer {TOKEN}")
        client = await raw(server, request, pause_after=1)
        await wait_for(lambda: hub.subscribers == 1 and client.paused)
        [subscription] = list(hub._subscriptions)
        # 20k events of 1 KiB: far more than the socket buffers hold.
        for i in range(20_000):
            hub.publish("updated", {"id": i, "title": "x" * 1000})
            if i % 500 == 0:
                d: Deferred[None] = Deferred()
                reactor.callLater(0, d.callback, None)
                await d
        assert subscription.queued <= 50
        await wait_for(lambda: subscription._paused)
        assert len(client.received) < 8 * 1024 * 1024  # not 20 MB
        client.resume()
        await wait_for(lambda: b'"id":19999' in client.received)
        assert b"event: dropped" in client.received
        client.transport.loseConnection()
        await client.closed
        await wait_for(lambda: hub.subscribers == 0)
    finally:
        await stop(server)
