"""
The tasks API under a real C{twistd streamsvc}: the database is created at
start-up, an unusable one stops the start with one line, and SIGTERM with a
live event stream open ends that stream at once instead of waiting out
C{shutdown_timeout}.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from pathlib import Path

from test_tap import TWISTD, read_all, start_twistd

TOKEN = "tw1std-token"


def config(tmp_path: Path, shutdown_timeout: int = 30) -> str:
    conf = tmp_path / "tap.conf"
    conf.write_text(
        f"[server]\ndata_dir = {tmp_path / 'data'}\nshutdown_timeout = {shutdown_timeout}\n"
        f"[auth]\ntokens = {TOKEN}\n"
    )
    return str(conf)


def http(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(request)
        return read_all(s)


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
