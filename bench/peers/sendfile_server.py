#!/usr/bin/env python3
"""
The physical reference of bench/bench_files.py: the least a Python HTTP/1.1
file server can do (stdlib only).

One thread per connection, blocking sockets, keep-alive: ``GET /NAME`` (or
``HEAD``) of a regular file directly in --root is answered with
``Content-Length`` and the body through ``socket.sendfile`` (os.sendfile, zero
copy); anything else gets a 404 (405 for other methods, 400 for a request it
cannot read).  The response head goes out with MSG_MORE, so it leaves in the
same segment as the start of the body; TCP_NODELAY, so the last segment of a
response is not held back.  No access log; errors to stderr.

    python sendfile_server.py --port PORT --root DIR [--host 127.0.0.1]

SIGTERM or SIGINT: the listening socket is closed and the process exits
(connections in progress are cut).  Only loopback addresses are accepted.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import socket
import stat
import sys
import threading
import urllib.parse

MAX_HEAD = 65536


def read_head(conn: socket.socket, buf: bytes) -> tuple[bytes | None, bytes]:
    """One request head (up to the blank line) and what followed it; None at EOF."""
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            return buf[:end], buf[end + 4:]
        if len(buf) > MAX_HEAD:
            raise ValueError("request head too long")
        data = conn.recv(65536)
        if not data:
            return None, b""
        buf += data


def close_header(keep: bool) -> str:
    return "" if keep else "Connection: close\r\n"


def respond(conn: socket.socket, status: str, keep: bool, body: bytes = b"", head_only: bool = False) -> None:
    head = (f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\nContent-Type: text/plain\r\n"
            f"{close_header(keep)}\r\n").encode()
    conn.sendall(head + (b"" if head_only else body))


def serve_file(conn: socket.socket, root: str, target: str, keep: bool, head_only: bool) -> bool:
    """Send the file NAME of /NAME; False if there is none (the caller answers 404)."""
    path = urllib.parse.unquote(urllib.parse.urlsplit(target).path)
    name = path[1:]
    if not path.startswith("/") or not name or "/" in name or name in (".", ".."):
        return False
    try:
        f = open(os.path.join(root, name), "rb")
    except OSError:
        return False
    with f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            return False
        size = st.st_size
        head = (f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n"
                f"Content-Type: application/octet-stream\r\n"
                f"{close_header(keep)}\r\n").encode()
        if head_only or size == 0:
            conn.sendall(head)
            return True
        view = memoryview(head)
        while view:   # the head waits (MSG_MORE) for the first body bytes
            view = view[conn.send(view, socket.MSG_MORE):]
        sent = conn.sendfile(f, 0, size)
        if sent != size:
            raise ConnectionError(f"sendfile sent {sent} of {size} bytes")
    return True


def handle(conn: socket.socket, root: str) -> None:
    buf = b""
    try:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            try:
                head, buf = read_head(conn, buf)
            except ValueError:
                respond(conn, "400 Bad Request", False, b"bad request\n")
                return
            if head is None:
                return
            lines = head.decode("latin-1").split("\r\n")
            parts = lines[0].split(" ")
            if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
                respond(conn, "400 Bad Request", False, b"bad request\n")
                return
            method, target, version = parts
            headers = {}
            for line in lines[1:]:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
            connection = headers.get("connection", "").lower()
            keep = ("close" not in connection if version == "HTTP/1.1" else "keep-alive" in connection)
            try:
                length = int(headers.get("content-length", "0") or "0")
            except ValueError:
                respond(conn, "400 Bad Request", False, b"bad request\n")
                return
            while len(buf) < length:   # a request body is read and dropped
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
            buf = buf[length:]
            if method not in ("GET", "HEAD"):
                respond(conn, "405 Method Not Allowed", keep, b"method not allowed\n")
            elif not serve_file(conn, root, target, keep, method == "HEAD"):
                respond(conn, "404 Not Found", keep, b"not found\n", method == "HEAD")
            if not keep:
                return
    except (ConnectionError, TimeoutError):
        pass   # the client went away (an RST mid-body is what the abort test does)
    except OSError as e:
        print(f"sendfile_server: connection error: {e!r}", file=sys.stderr, flush=True)
    finally:
        conn.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--root", required=True, help="directory whose files are served as /NAME")
    args = ap.parse_args()
    if not ipaddress.ip_address(args.host).is_loopback:
        ap.error("only loopback addresses are accepted")
    root = os.path.abspath(args.root)

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((args.host, args.port))
    listener.listen(1024)

    def on_signal(signum, frame):
        raise KeyboardInterrupt
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    print(f"sendfile_server: pid {os.getpid()} serving {root} on {args.host}:{args.port}", flush=True)
    try:
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=handle, args=(conn, root), daemon=True).start()
    except KeyboardInterrupt:
        return 0
    finally:
        listener.close()


if __name__ == "__main__":
    sys.exit(main())
