"""
The example plugin (examples/streamsvc-logtail) as an operator meets it:
installed as a distribution of its own (the README's test command installs
it, as a user would), discovered by C{twistd streamsvc}, served only once
enabled, and over real sockets: a reader that stops reading holds the tail
back, a reader that leaves closes the file, SIGTERM drains it.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from test_tap import TWISTD, read_all, start_twistd

TOKEN = "example-token"
AUTH = b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"


def test_the_example_is_an_installed_distribution_with_one_dropin() -> None:
    dist = importlib.metadata.distribution("streamsvc-logtail")
    files = {str(f) for f in dist.files or ()}
    assert "streamsvc/plugins/streamsvc_logtail.py" in files
    # It must not replace streamsvc's own package files.
    assert not {"streamsvc/__init__.py", "streamsvc/plugins/__init__.py"} & files


def test_discovery_finds_it_from_the_installed_packages_alone() -> None:
    """In a fresh interpreter outside the checkout: no path hack, only what pip installed."""
    code = (
        "from streamsvc.plugin import discover\n"
        "import streamsvc\n"
        "import sys\n"
        "found = {p.name: (p.path, type(p).__name__) for p in discover()}\n"
        "assert 'streamsvc_logtail.resource' not in sys.modules, 'the scan imported the resource'\n"
        "print(found['logs'], streamsvc.__file__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("('logs', 'Plugin') ")
    assert "site-packages" in out.stdout  # the installed streamsvc, not the working tree


def conf(tmp_path: Path, *, enabled: bool = True, log_dir: Path | None = None, extra: str = "") -> str:
    folder = log_dir if log_dir is not None else tmp_path / "logs"
    folder.mkdir(exist_ok=True)
    path = tmp_path / "tap.conf"
    path.write_text(
        f"[server]\ndata_dir = {tmp_path / 'data'}\nshutdown_timeout = 2\n"
        f"[auth]\ntokens = {TOKEN}\n"
        f"[plugins]\nenabled = {'logs' if enabled else ''}\n"
        f"[plugin:logs]\ndir = {folder}\npoll_ms = 50\n{extra}"
    )
    return str(path)


def get(port: int, path: str, *, auth: bool = True) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".encode() + (AUTH if auth else b"") + b"\r\n")
        raw = read_all(s)
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def metric(port: int, name: str) -> float:
    code, body = get(port, "/metrics")
    assert code == 200
    match = re.search(rb"^" + re.escape(name.encode()) + rb" ([0-9.e+]+)$", body, re.M)
    assert match is not None, name
    return float(match.group(1))


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def test_installed_but_not_enabled_serves_nothing(tmp_path: Path) -> None:
    proc, port = start_twistd(tmp_path, "--config", conf(tmp_path, enabled=False))
    try:
        assert get(port, "/logs/")[0] == 404
        assert "/logs" not in json.loads(get(port, "/")[1])["endpoints"]
    finally:
        stop(proc)


def test_a_factory_failure_stops_twistd_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "tap.conf"
    path.write_text(f"[plugins]\nenabled = logs\n[plugin:logs]\ndir = {tmp_path / 'nope'}\n")
    out = subprocess.run(
        [TWISTD, "-n", "--pidfile=", "streamsvc", "--config", str(path), "--listen", "tcp:0:interface=127.0.0.1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [
        f"streamsvc: error: plugin 'logs' failed to start: ValueError: [plugin:logs] dir = "
        f"'{tmp_path / 'nope'}' is not a folder (at resource.py:{line_of('is not a folder')})"
    ]


def test_with_workers_a_factory_failure_stops_the_supervisor_not_a_crash_loop(tmp_path: Path) -> None:
    path = tmp_path / "tap.conf"
    path.write_text(f"[server]\nworkers = 2\n[plugins]\nenabled = logs\n[plugin:logs]\ndir = {tmp_path / 'nope'}\n")
    out = subprocess.run(
        [TWISTD, "-n", "--pidfile=twistd.pid", "--logfile=-", "streamsvc", "--config", str(path), "--listen", "tcp:0:interface=127.0.0.1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        f"streamsvc: error: plugin 'logs' failed to start: ValueError: [plugin:logs] dir = "
        f"'{tmp_path / 'nope'}' is not a folder (at resource.py:{line_of('is not a folder')})"
    ]
    assert "could not start" not in out.stdout and "restarting it" not in out.stdout
    assert "failed to start" in out.stdout  # the log has it too
    assert not (tmp_path / "twistd.pid").exists()


def line_of(text: str) -> int:
    """The line of the example's resource.py that holds C{text}."""
    import streamsvc_logtail.resource as module

    with open(module.__file__, encoding="utf-8") as f:
        return next(n for n, line in enumerate(f, 1) if text in line)


def test_a_settings_mistake_stops_twistd_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "tap.conf"
    path.write_text(f"[plugins]\nenabled = logs\n[plugin:logs]\ndir = {tmp_path}\npoll_ms = fast\n")
    out = subprocess.run([TWISTD, "-n", "--pidfile=", "streamsvc", "--config", str(path)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert out.stderr.strip() == (
        f"streamsvc: error: {path}: [plugin:logs] poll_ms = 'fast': expected an integer from 20 to 60000"
    )


def test_follow_over_a_socket_slow_reader_disconnect_and_drain(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    big = logs / "big.log"
    line = b"z" * 127 + b"\n"
    with big.open("wb") as f:
        for _ in range(32):
            f.write(line * 8192)  # 32 MiB, 262144 lines
    proc, port = start_twistd(tmp_path, "--config", conf(tmp_path, log_dir=logs))
    try:
        assert get(port, "/logs/big.log?follow=no")[0] == 200  # from the end: nothing, at once
        assert get(port, "/logs/big.log", auth=False)[0] == 401

        # A reader that stops reading: the tail stops reading the file.
        slow = socket.socket()
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        slow.connect(("127.0.0.1", port))
        slow.sendall(b"GET /logs/big.log?from=start HTTP/1.1\r\nHost: x\r\n" + AUTH + b"\r\n")
        sent = settled(lambda: metric(port, "streamsvc_plugin_logs_lines_sent_total"))
        assert 0 < sent < 262144 / 4  # a few socket buffers' worth, not the 32 MiB file
        assert metric(port, 'streamsvc_streams_active{kind="plugin:logs"}') == 1
        assert open_by(proc.pid, big)

        # It leaves: the file is closed, the stream counted as the client's going.
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        slow.close()  # RST
        settled(lambda: metric(port, 'streamsvc_streams_total{kind="plugin:logs",outcome="client_gone"}'), want=1)
        assert not open_by(proc.pid, big)
        assert metric(port, "streamsvc_plugin_logs_followers") == 0
        assert metric(port, 'streamsvc_producer_pauses_total{kind="plugin:logs"}') >= 1

        # A follower that keeps up gets the lines as they are written...
        follower = socket.create_connection(("127.0.0.1", port), timeout=30)
        follower.sendall(b"GET /logs/big.log HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n" + AUTH + b"\r\n")
        assert follower.recv(4096).startswith(b"HTTP/1.1 200")
        with big.open("ab") as f:
            f.write(b"hello\n")
        got = b""
        while b"data: hello" not in got:
            got += follower.recv(4096)
        assert b"id: %d\n" % (32 * 1024 * 1024 + 6) in got
        # ...and SIGTERM drains it: it is cut when shutdown_timeout (2 s) is up, and twistd exits 0.
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        read_all(follower)
        follower.close()
        assert proc.wait(timeout=30) == 0
        assert time.monotonic() - started < 15
    finally:
        stop(proc)


def settled(read: Any, *, want: float | None = None, timeout: float = 30) -> float:
    """Poll a figure of the child process until it stops moving (or reaches C{want})."""
    deadline = time.monotonic() + timeout
    last = read()
    while time.monotonic() < deadline:
        time.sleep(0.3)  # the child process works meanwhile: waiting on it, not on logic
        now = read()
        if (want is not None and now >= want) or (want is None and now == last and now > 0):
            return now
        last = now
    raise AssertionError(f"still moving (or short of {want}): {last}")


def open_by(pid: int, path: Path) -> bool:
    folder = f"/proc/{pid}/fd"
    for fd in os.listdir(folder):
        try:
            if os.readlink(f"{folder}/{fd}") == str(path):
                return True
        except OSError:
            continue
    return False
