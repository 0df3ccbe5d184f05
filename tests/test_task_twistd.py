"""
The tasks API under a real C{twistd streamsvc}: the database is created at
start-up, an unusable one stops the start with one line, and SIGTERM with a
live event stream open ends that stream at once instead of waiting out
C{shutdown_timeout}. Then two hosts on one PostgreSQL database, and one
that cannot reach its database.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from pg_cluster import free_port
from test_tap import TWISTD, read_all, start_twistd, wait_listening

TOKEN = "tw1std-token"


def config(tmp_path: Path, shutdown_timeout: int = 30) -> str:
    conf = tmp_path / "tap.conf"
    conf.write_text(
        f"[server]\ndata_dir = {tmp_path / 'data'}\nshutdown_timeout = {shutdown_timeout}\n"
        f"[auth]\ntokens = {TOKEN}\n"
    )
    return str(conf)


def http(port: int, request: bytes, until: bytes | None = None) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(request)
        return read_all(s) if until is None else read_until(s, until)


def read_until(s: socket.socket, marker: bytes) -> bytes:
    """What C{s} sends until C{marker} has come (a live stream never ends by itself)."""
    got = b""
    while marker not in got:
        data = s.recv(65536)
        if not data:
            raise AssertionError(f"closed before {marker!r}: {got!r}")
        got += data
    return got


def test_tasks_under_twistd_and_sigterm_ends_event_streams(tmp_path: Path) -> None:
    proc, port = start_twistd(tmp_path, "--config", config(tmp_path))
    try:
        assert (tmp_path / "data" / "tasks.sqlite3").exists()
        body = json.dumps({"title": "from a real process"}).encode()
        reply = http(port, b"POST /tasks HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                     b"Authorization: Bearer " + TOKEN.encode() + b"\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body)
        assert reply.startswith(b"HTTP/1.1 201")
        events = socket.create_connection(("127.0.0.1", port), timeout=30)
        events.sendall(b"GET /tasks/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                       + TOKEN.encode() + b"\r\n\r\n")
        assert events.recv(4096).startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rest = read_all(events)
        events.close()
        assert rest.endswith(b"0\r\n\r\n")  # the stream was ended, cleanly
        assert proc.wait(timeout=30) == 0
        assert time.monotonic() - started < 10  # not the 30 s shutdown_timeout
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    # The task is still there for the next process.
    proc, port = start_twistd(tmp_path, "--config", config(tmp_path))
    try:
        reply = http(port, b"GET /tasks/1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                     b"Authorization: Bearer " + TOKEN.encode() + b"\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 200") and b"from a real process" in reply
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_an_unusable_database_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "data" / "tasks.sqlite3").mkdir(parents=True)  # a folder where the file should be
    out = subprocess.run(
        [TWISTD, "-n", "--pidfile=", "streamsvc", "--config", config(tmp_path)],
        capture_output=True, text=True, cwd=tmp_path, timeout=60,
    )
    assert out.returncode != 0
    assert "Traceback" not in out.stdout + out.stderr
    assert out.stderr.startswith("streamsvc: error: data_dir") and "tasks.sqlite3" in out.stderr
    assert out.stderr.strip().count("\n") == 0


def stop_hosts(*procs: subprocess.Popen[bytes]) -> list[str]:
    """SIGTERM to every host at once, then each must exit 0 (killed if not); their output."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    outputs = []
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=30)
            outputs.append(out.decode() if out else "")
            assert proc.returncode == 0, outputs[-1][-2000:]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return outputs


def postgres_config(tmp_path: Path, name: str, dsn: str) -> str:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "tasks.dsn").write_text(f"# the database every host shares\n{dsn}\n")
    conf = folder / "tap.conf"
    conf.write_text(
        f"[server]\ndata_dir = {folder / 'data'}\n[auth]\ntokens = {TOKEN}\n"
        "[tasks]\nstore = postgresql\ndsn_file = tasks.dsn\n"
    )
    return str(conf)


def test_an_unreachable_postgresql_stops_the_start_with_one_line(tmp_path: Path) -> None:
    pytest.importorskip("psycopg")
    dsn = f"postgresql://streamsvc:hunter2-pw@127.0.0.1:{free_port()}/tasks"
    started = time.monotonic()
    out = subprocess.run(
        [TWISTD, "-n", "--pidfile=", "streamsvc", "--config", postgres_config(tmp_path, "h", dsn)],
        capture_output=True, text=True, cwd=tmp_path, timeout=60,
    )
    assert time.monotonic() - started < 15
    assert out.returncode == 2
    text = out.stdout + out.stderr
    assert "Traceback" not in text and "hunter2" not in text
    assert out.stderr.startswith("streamsvc: error: cannot connect to the task database at 127.0.0.1:")
    assert out.stderr.strip().count("\n") == 0


def request_bytes(method: str, path: str, body: bytes = b"", *headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: x", "Connection: close", f"Authorization: Bearer {TOKEN}",
             *headers]
    if body:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def split(reply: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = reply.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    if headers.get("transfer-encoding") == "chunked":
        out, rest = b"", body
        while rest:
            size, _, rest = rest.partition(b"\r\n")
            n = int(size, 16)
            if n == 0:
                break
            out, rest = out + rest[:n], rest[n + 2:]
        body = out
    return int(lines[0].split()[1]), headers, body


def test_two_hosts_share_one_postgresql_with_the_same_etags(tmp_path: Path, postgres_dsn: str) -> None:
    a, port_a = start_twistd(tmp_path, "--config", postgres_config(tmp_path, "a", postgres_dsn))
    b, port_b = start_twistd(tmp_path, "--config", postgres_config(tmp_path, "b", postgres_dsn))
    events_b = socket.create_connection(("127.0.0.1", port_b), timeout=30)
    try:
        assert not (tmp_path / "a" / "data" / "tasks.sqlite3").exists()
        events_b.sendall(b"GET /tasks/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                         + TOKEN.encode() + b"\r\n\r\n")
        assert read_until(events_b, b": streamsvc task events").startswith(b"HTTP/1.1 200")
        code, headers, body = split(http(port_a, request_bytes("POST", "/tasks", b'{"title": "on a"}')))
        assert code == 201
        task = json.loads(body)
        code, headers_b, body = split(http(port_b, request_bytes("GET", f"/tasks/{task['id']}")))
        assert code == 200 and json.loads(body)["title"] == "on a"
        assert headers_b["etag"] == headers["etag"]  # the same version, the same ETag, on every host
        etag = headers["etag"]
        code, _, _ = split(http(port_a, request_bytes("PATCH", f"/tasks/{task['id']}", b'{"title": "a2"}',
                                                      f"If-Match: {etag}")))
        assert code == 200
        code, _, body = split(http(port_b, request_bytes("PATCH", f"/tasks/{task['id']}", b'{"title": "b2"}',
                                                         f"If-Match: {etag}")))
        assert code == 412 and "error" in json.loads(body)
        code, _, body = split(http(port_b, request_bytes("GET", "/tasks/stream.ndjson")))
        assert code == 200 and [json.loads(line)["title"] for line in body.splitlines() if line] == ["a2"]
        # The change made on a reached b's live stream, with the database's id.
        live = read_until(events_b, b"event: updated")
        assert b"id: 1\nevent: created\n" in live and b'"title":"on a"' in live
        # A client that saw event 1 on b resumes on a with exactly event 2.
        resumed = http(port_a, b"GET /tasks/events?format=ndjson HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                       b"Last-Event-ID: 1\r\nAuthorization: Bearer " + TOKEN.encode() + b"\r\n\r\n",
                       until=b'"event":"updated"')
        assert b'{"id":2,"event":"updated"' in resumed and b"reset" not in resumed
    finally:
        events_b.close()
        stop_hosts(a, b)


def test_a_database_down_while_serving_is_a_quick_503_and_the_host_recovers(
    tmp_path: Path, postgres_cluster, postgres_dsn: str
) -> None:
    proc, port = start_twistd(tmp_path, "--config", postgres_config(tmp_path, "h", postgres_dsn))
    (tmp_path / "h" / "data" / "files" / "f.txt").write_bytes(b"still here")
    try:
        assert split(http(port, request_bytes("POST", "/tasks", b'{"title": "before"}')))[0] == 201
        postgres_cluster.stop()
        try:
            started = time.monotonic()
            code, headers, body = split(http(port, request_bytes("GET", "/tasks?limit=5")))
            assert code == 503 and headers["retry-after"] and "error" in json.loads(body)
            assert time.monotonic() - started < 6  # not a TCP timeout
            assert split(http(port, request_bytes("POST", "/tasks", b'{"title": "lost?"}')))[0] == 503
            assert split(http(port, request_bytes("GET", "/healthz")))[0] == 200
            assert split(http(port, request_bytes("GET", "/files/f.txt")))[2] == b"still here"
        finally:
            postgres_cluster.start()
        code, _, body = split(http(port, request_bytes("GET", "/tasks")))
        assert code == 200 and [t["title"] for t in json.loads(body)] == ["before"]
    finally:
        stop_hosts(proc)


def test_with_workers_each_listens_and_every_stream_sees_every_change(tmp_path: Path, postgres_dsn: str) -> None:
    proc, port = start_twistd(tmp_path, "--config", postgres_config(tmp_path, "w", postgres_dsn), "--workers", "2")
    streams = []
    try:
        for _ in range(6):  # the kernel spreads them over the workers
            s = socket.create_connection(("127.0.0.1", port), timeout=30)
            s.sendall(b"GET /tasks/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
                      + b"\r\n\r\n")
            assert read_until(s, b": streamsvc task events").startswith(b"HTTP/1.1 200")
            streams.append(s)
        for i in range(3):
            assert split(http(port, request_bytes("POST", "/tasks", b'{"title": "w%d"}' % i)))[0] == 201
        for s in streams:
            got = read_until(s, b'"title":"w2"')
            assert [line for line in got.split(b"\n") if line.startswith(b"id: ")] == [b"id: 1", b"id: 2", b"id: 3"]
    finally:
        for s in streams:
            s.close()
        stop_hosts(proc)


def test_two_hosts_starting_together_on_an_empty_database_both_come_up(tmp_path: Path, postgres_dsn: str) -> None:
    procs, ports = [], []
    for name in ("x", "y"):
        ports.append(free_port())
        procs.append(subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", "--logfile=-", "streamsvc", "--config",
             postgres_config(tmp_path, name, postgres_dsn), "--listen", f"tcp:{ports[-1]}:interface=127.0.0.1"],
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        ))
    try:
        for proc, port in zip(procs, ports):
            wait_listening(proc, port)
        for port in ports:
            assert split(http(port, request_bytes("GET", "/tasks")))[:1] == (200,)
    finally:
        logs = stop_hosts(*procs)
    # One of them made the tables, the other found them made.
    assert sum("created the task tables" in text for text in logs) == 1
    assert not any("Traceback" in text for text in logs)
