#!/usr/bin/env python3
"""
A resumable upload cut at 50 % and resumed, against an uncut PUT of the
same file, side by side in one run.

The server is streamsvc exactly as bench_upload.py serves it (its own
config parser and site builder; ``[limits] max_upload_bytes = 8GiB``),
in its own process:

    python bench/bench_upload.py --serve streamsvc --port-file F --data-dir D --log L

The client is this script, the same for both, sending the file with
``os.sendfile`` (the kernel copies: the client costs next to nothing):

  - uncut: ``PUT /files/bench/plain.bin`` with the whole body; the time is
    from the first byte of the request to the answer (201/204);
  - cut and resumed: ``PUT /files/bench/resumed.bin`` with
    ``Upload-Complete: ?1`` (the IETF draft), the 104's ``Location`` read,
    half the body sent, the socket reset (``SO_LINGER`` 0: an RST, as a
    dropped network gives); then ``HEAD`` for the durable offset (asked
    again while the server still finishes the cut append: 409/old offset),
    and one ``PATCH`` with the rest. The time is from the first byte of the
    creation to the completing answer: the whole cost of the cut, the
    fsync of what arrived, the HEAD and the second request included.

Both stored files are checked (size, sha256) against the source, then
deleted. Server memory (``/proc/PID/status``): VmHWM reset to VmRSS
before each upload (``clear_refs``); growth = peak - before.

    python bench/bench_resumable.py [--size-mib 1024] [--runs 5]

Reported: medians over the runs of the MiB/s and seconds of each, the
ratio resumed / uncut (goal: at most 1.1), and the peak RSS growth during
each (goal: at most 16 MiB during the appends).
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _proc import proc_status, reset_hwm  # noqa: E402

TOKEN = "benchtoken"
HOST = "127.0.0.1"
MiB = 1024 * 1024


def start_server(tmp: str) -> tuple[subprocess.Popen, int]:
    data = os.path.join(tmp, "data")
    port_file = os.path.join(tmp, "port.json")
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "bench_upload.py"), "--serve", "streamsvc",
                             "--port-file", port_file, "--data-dir", data, "--log", os.path.join(tmp, "server.log")])
    deadline = time.monotonic() + 60
    while not os.path.exists(port_file):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the server did not start: see server.log")
        time.sleep(0.05)
    time.sleep(0.05)
    with open(port_file) as f:
        return proc, json.load(f)["port"]


def read_head(sock: socket.socket) -> tuple[list[bytes], bytes]:
    """The heads of the answers so far (1xx ones included) up to a final one, and what followed."""
    data = b""
    heads = []
    while True:
        while b"\r\n\r\n" not in data:
            more = sock.recv(65536)
            if not more:
                raise ConnectionError("closed before an answer")
            data += more
        head, _, data = data.partition(b"\r\n\r\n")
        heads.append(head)
        if not head.startswith(b"HTTP/1.1 1"):
            return heads, data


def field(head: bytes, name: bytes) -> bytes | None:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    return None


def code_of(head: bytes) -> int:
    return int(head.split(b" ", 2)[1])


def send_file(sock: socket.socket, fd: int, offset: int, count: int) -> None:
    while count:
        sent = os.sendfile(sock.fileno(), fd, offset, min(count, 16 * MiB))
        if sent == 0:
            raise ConnectionError("the server closed the connection")
        offset += sent
        count -= sent


def request(port: int, head: str, fd: int, offset: int, count: int) -> tuple[list[bytes], socket.socket]:
    sock = socket.create_connection((HOST, port))
    sock.sendall(head.encode("latin-1"))
    send_file(sock, fd, offset, count)
    heads, _ = read_head(sock)
    return heads, sock


def upload_plain(port: int, fd: int, size: int) -> float:
    t0 = time.perf_counter()
    heads, sock = request(port, f"PUT /files/bench/plain.bin HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}"
                                f"\r\nContent-Length: {size}\r\n\r\n", fd, 0, size)
    elapsed = time.perf_counter() - t0
    sock.close()
    assert code_of(heads[-1]) in (201, 204), heads[-1]
    return elapsed


def upload_cut_and_resumed(port: int, fd: int, size: int) -> tuple[float, int]:
    t0 = time.perf_counter()
    half = size // 2
    sock = socket.create_connection((HOST, port))
    sock.sendall((f"PUT /files/bench/resumed.bin HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                  f"Upload-Draft-Interop-Version: 8\r\nUpload-Complete: ?1\r\nContent-Length: {size}\r\n\r\n")
                 .encode("latin-1"))
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    informational = data.partition(b"\r\n\r\n")[0]
    assert code_of(informational) == 104, informational
    location = field(informational, b"location").decode()
    send_file(sock, fd, 0, half)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # an RST: the connection is lost mid-body
    offset = 0
    while True:
        conn = http.client.HTTPConnection(HOST, port, timeout=30)
        conn.request("HEAD", location, headers={"Authorization": f"Bearer {TOKEN}",
                                                "Upload-Draft-Interop-Version": "8"})
        answer = conn.getresponse()
        answer.read()
        conn.close()
        offset = int(answer.getheader("upload-offset"))
        sock = socket.create_connection((HOST, port))
        sock.sendall((f"PATCH {location} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                      f"Upload-Draft-Interop-Version: 8\r\nContent-Type: application/partial-upload\r\n"
                      f"Upload-Offset: {offset}\r\nUpload-Complete: ?1\r\n"
                      f"Content-Length: {size - offset}\r\nExpect: 100-continue\r\n\r\n").encode("latin-1"))
        data = b""
        while b"\r\n\r\n" not in data:
            more = sock.recv(65536)
            if not more:
                raise ConnectionError("closed before an answer")
            data += more
        first = data.partition(b"\r\n\r\n")[0]
        if code_of(first) == 409:  # the server still finishing the cut append: ask again
            sock.close()
            time.sleep(0.01)
            continue
        break
    assert code_of(first) == 100, first  # the 100 Continue: now the rest
    send_file(sock, fd, offset, size - offset)
    heads, _ = read_head(sock)
    sock.close()
    elapsed = time.perf_counter() - t0
    assert code_of(heads[-1]) in (201, 204), heads[-1]
    return elapsed, offset


def digest_of(path: str) -> str:
    hash_ = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MiB):
            hash_.update(chunk)
    return hash_.hexdigest()


def measured(pid: int, run) -> tuple[object, float]:
    """C{run()}'s result and the server's peak RSS growth meanwhile, in MiB."""
    before = proc_status(pid)["VmRSS"]
    reset_hwm(pid)
    result = run()
    peak = max(proc_status(pid)["VmHWM"], proc_status(pid)["VmRSS"])
    return result, (peak - before) / 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    size = args.size_mib * MiB
    with tempfile.TemporaryDirectory(prefix="bench-resumable-") as tmp:
        source = os.path.join(tmp, "source.bin")
        with open(source, "wb") as f:
            for _ in range(size // (4 * MiB)):
                f.write(os.urandom(4 * MiB))
            f.write(os.urandom(size % (4 * MiB)))
            f.flush()
            os.fsync(f.fileno())
        expected = digest_of(source)
        proc, port = start_server(tmp)
        files = os.path.join(tmp, "data", "files", "bench")
        rows: dict[str, list[float]] = {"plain_s": [], "resumed_s": [], "plain_rss": [], "resumed_rss": [],
                                        "offset": []}
        try:
            fd = os.open(source, os.O_RDONLY)
            for run in range(args.runs):
                # Alternating which goes first: neither always gets the warmer cache.
                order = ("plain", "resumed") if run % 2 == 0 else ("resumed", "plain")
                for which in order:
                    if which == "plain":
                        elapsed, rss = measured(proc.pid, lambda: upload_plain(port, fd, size))
                        rows["plain_s"].append(elapsed)  # type: ignore[arg-type]
                        rows["plain_rss"].append(rss)
                    else:
                        (elapsed, offset), rss = measured(proc.pid, lambda: upload_cut_and_resumed(port, fd, size))
                        rows["resumed_s"].append(elapsed)
                        rows["resumed_rss"].append(rss)
                        rows["offset"].append(offset / size)
                    stored = os.path.join(files, f"{which}.bin")
                    assert os.path.getsize(stored) == size and digest_of(stored) == expected, which
                    os.unlink(stored)
                print(f"run {run + 1}: uncut {rows['plain_s'][-1]:.2f} s, cut+resumed {rows['resumed_s'][-1]:.2f} s "
                      f"(resumed at {rows['offset'][-1]:.1%})", flush=True)
            os.close(fd)
            leftovers = os.listdir(os.path.join(tmp, "data", "uploads"))
            parts = [n for n in leftovers if n.endswith(".part")]
        finally:
            proc.terminate()
            proc.wait(10)
    med = {key: statistics.median(values) for key, values in rows.items()}
    mib = args.size_mib
    print()
    print(f"{mib} MiB, medians of {args.runs} runs (python {sys.version.split()[0]}, {os.cpu_count()} CPUs)")
    print("| upload | seconds | MiB/s | server peak RSS growth |")
    print("|---|---|---|---|")
    print(f"| uncut PUT | {med['plain_s']:.2f} | {mib / med['plain_s']:.0f} | {med['plain_rss']:.1f} MiB |")
    print(f"| cut at 50 % and resumed (HEAD + PATCH) | {med['resumed_s']:.2f} | {mib / med['resumed_s']:.0f} "
          f"| {med['resumed_rss']:.1f} MiB |")
    print(f"ratio resumed / uncut: {med['resumed_s'] / med['plain_s']:.2f}x (goal <= 1.1); "
          f"resumed at {med['offset']:.1%} of the file; pending data files left: {len(parts)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
