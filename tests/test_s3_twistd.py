"""
C{/files} on S3 under real C{twistd streamsvc} processes: two hosts on one
bucket serve each other's uploads (the same ETags, ranges, conditionals,
unicode names, listings, deletes), a host started against a bucket that is
not there stops with one line, a big upload and a slow reader keep each
host's memory flat, and a restarted store is used again without a restart
of the hosts.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from itertools import count
from pathlib import Path
from urllib.parse import quote

import pytest

pytest.importorskip("botocore")

from s3_server import ACCESS_KEY, REGION, SECRET_KEY  # noqa: E402
from test_tap import TWISTD  # noqa: E402
from test_task_twistd import TOKEN, http, request_bytes, split, start_twistd, stop_hosts  # noqa: E402

MiB = 1024 * 1024
_prefixes = count(1)


def s3_conf(tmp_path: Path, name: str, s3_server, prefix: str, bucket: str | None = None) -> str:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "s3-secret").write_text(SECRET_KEY + "\n")
    conf = folder / "tap.conf"
    conf.write_text(
        f"[server]\ndata_dir = {folder / 'data'}\n[auth]\ntokens = {TOKEN}\n"
        f"[limits]\nmax_upload_bytes = 1GiB\n"
        "[files]\nstore = s3\n"
        f"[s3]\nendpoint = {s3_server.endpoint}\nbucket = {bucket or s3_server.bucket}\nregion = {REGION}\n"
        f"access_key = {ACCESS_KEY}\nsecret_key_file = s3-secret\nprefix = {prefix}\npart_size = 5MiB\n"
        "timeout = 10\n"
    )
    return str(conf)


@pytest.fixture
def prefix() -> str:
    return f"twistd{next(_prefixes)}-{os.getpid()}"


def rss(proc: subprocess.Popen[bytes]) -> int:
    with open(f"/proc/{proc.pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def put(port: int, path: str, body: bytes, *headers: str) -> tuple[int, dict[str, str], bytes]:
    head = [f"PUT {path} HTTP/1.1", "Host: x", "Connection: close", f"Authorization: Bearer {TOKEN}",
            f"Content-Length: {len(body)}", *headers]
    return split(http(port, ("\r\n".join(head) + "\r\n\r\n").encode() + body))


def get(port: int, path: str, *headers: str) -> tuple[int, dict[str, str], bytes]:
    return split(http(port, request_bytes("GET", path, b"", *headers)))


def test_two_hosts_share_one_bucket(tmp_path: Path, s3_server, prefix: str) -> None:
    a, port_a = start_twistd(tmp_path, "--config", s3_conf(tmp_path, "a", s3_server, prefix))
    b, port_b = start_twistd(tmp_path, "--config", s3_conf(tmp_path, "b", s3_server, prefix))
    try:
        body = os.urandom(300_000)
        name = "dossier ünï/report #1 100%.bin"
        path = "/files/" + quote(name)
        code, created, _ = put(port_a, path, body)
        assert code == 201
        code, headers, got = get(port_b, path)
        assert code == 200 and got == body and headers["etag"] == created["etag"]
        code, headers, got = get(port_b, path, "Range: bytes=1000-1999")
        assert code == 206 and got == body[1000:2000]
        code, _, got = get(port_b, path, f"If-None-Match: {created['etag']}")
        assert code == 304 and got == b""
        code, _, _ = put(port_b, path, b"x", "If-None-Match: *")
        assert code == 412
        code, _, listing = get(port_b, "/files/" + quote("dossier ünï") + "/")
        assert code == 200 and [e["name"] for e in json.loads(listing)] == ["report #1 100%.bin"]
        code, _, _ = split(http(port_b, request_bytes("DELETE", path)))
        assert code == 204
        assert get(port_a, path)[0] == 404
        # Nothing of this was on either host's disk.
        assert not any(list((tmp_path / host / "data" / "files").iterdir()) for host in ("a", "b"))
    finally:
        stop_hosts(a, b)


def test_a_missing_bucket_stops_the_start_with_one_line(tmp_path: Path, s3_server, prefix: str) -> None:
    conf = s3_conf(tmp_path, "m", s3_server, prefix, bucket="not-a-bucket-here")
    result = subprocess.run([TWISTD, "-n", "--pidfile=", "--logfile=-", "streamsvc", "--config", conf,
                             "--listen", "tcp:0:interface=127.0.0.1"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "not-a-bucket-here" in output and "Traceback" not in output
    assert SECRET_KEY not in output


def test_a_big_upload_and_a_slow_reader_keep_the_hosts_flat(tmp_path: Path, s3_server, prefix: str) -> None:
    """300 MiB up through A (memory: about two parts), then read from B at 2 MB/s (memory: flat)."""
    a, port_a = start_twistd(tmp_path, "--config", s3_conf(tmp_path, "a", s3_server, prefix))
    b, port_b = start_twistd(tmp_path, "--config", s3_conf(tmp_path, "b", s3_server, prefix))
    try:
        total = 300 * MiB
        block = os.urandom(MiB)
        base_a = rss(a)
        peak_a = base_a
        with socket.create_connection(("127.0.0.1", port_a), timeout=60) as s:
            s.sendall(f"PUT /files/big.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {TOKEN}\r\n"
                      f"Content-Length: {total}\r\n\r\n".encode())
            for i in range(total // MiB):
                s.sendall(block)
                if i % 16 == 0:
                    peak_a = max(peak_a, rss(a))
            reply = b""
            while chunk := s.recv(65536):
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 201"), reply[:300]
        # A part filling, one in flight, and the allocator's slack.
        assert peak_a - base_a < 40 * MiB, (peak_a - base_a) / MiB

        base_b = rss(b)
        with socket.create_connection(("127.0.0.1", port_b), timeout=60) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            s.sendall(b"GET /files/big.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            received, started, peak_b = 0, time.monotonic(), base_b
            while received < 12 * MiB:  # six seconds at 2 MB/s
                received += len(s.recv(64 * 1024))
                ahead = received / (2 * MiB) - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)  # the client's pace, not a wait for the server
                peak_b = max(peak_b, rss(b))
        assert peak_b - base_b < 8 * MiB, (peak_b - base_b) / MiB
    finally:
        stop_hosts(a, b)


def test_the_hosts_use_a_restarted_store_again(tmp_path: Path, s3_server, prefix: str) -> None:
    a, port_a = start_twistd(tmp_path, "--config", s3_conf(tmp_path, "a", s3_server, prefix))
    try:
        assert put(port_a, "/files/kept.txt", b"kept")[0] == 201
        s3_server.stop()
        try:
            code, headers, body = get(port_a, "/files/kept.txt")
            assert code == 503 and headers["retry-after"] == "5" and "error" in json.loads(body)
            assert get(port_a, "/healthz")[0] == 200
        finally:
            s3_server.start()
        code, _, body = get(port_a, "/files/kept.txt")
        assert code == 200 and body == b"kept"
    finally:
        stop_hosts(a)
