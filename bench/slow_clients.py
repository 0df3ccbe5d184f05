#!/usr/bin/env python3
"""
Many slow HTTP/1.1 download clients in one process (stdlib only).

Opens N sockets to 127.0.0.1:PORT, sends a raw ``GET PATH HTTP/1.1`` with
``Connection: close`` on each, and then reads every socket at RATE bytes/s using
a per-socket token bucket (a socket is only polled for reading while it has
tokens, so the kernel receive buffer fills and TCP flow control pushes back on
the server).  After DURATION seconds (counted from the moment every client has
its response headers, or from the header timeout) everything is closed.

Progress lines on stdout (one line each, flushed), for a driver to follow:

    ready headers=<n> clients=<N> status200=<n> elapsed=<s>
    done headers=<n> clients=<N> open=<n> eof=<n> errors=<n> bytes=<total>

``ready`` is printed once every client got its headers (or --header-timeout
expired); ``open`` in ``done`` is how many were still connected (no EOF, no
error) just before the final close.

Only loopback addresses are accepted.
"""

from __future__ import annotations

import argparse
import errno
import heapq
import ipaddress
import selectors
import socket
import sys
import time

RECV_MAX = 65536


class Client:
    __slots__ = (
        "sock", "idx", "state", "out", "head", "tokens", "last", "bytes",
        "status", "registered_mask", "error",
    )

    def __init__(self, sock: socket.socket, idx: int, request: bytes, burst: float):
        self.sock = sock
        self.idx = idx
        self.state = "connecting"  # connecting -> sending -> headers -> body -> eof/error
        self.out = request
        self.head = b""
        self.tokens = burst
        self.last = time.monotonic()
        self.bytes = 0
        self.status = None
        self.registered_mask = 0
        self.error = None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", required=True, help="request path, e.g. /files/big.bin")
    p.add_argument("--clients", type=int, default=300)
    p.add_argument("--rate", type=float, default=20_000, help="bytes/s per client [20000]")
    p.add_argument("--duration", type=float, default=25.0,
                   help="seconds to keep reading after all headers arrived [25]")
    p.add_argument("--header-timeout", type=float, default=30.0,
                   help="max seconds to wait for all clients' headers [30]")
    p.add_argument("--rcvbuf", type=int, default=0,
                   help="SO_RCVBUF for each client socket (0 = kernel default)")
    a = p.parse_args(argv)

    if not ipaddress.ip_address(a.host).is_loopback:
        p.error("only loopback hosts are allowed")

    rate = a.rate
    burst = max(rate * 0.25, 4096.0)     # at most 1/4 s worth of tokens at once
    min_read = min(4096.0, burst)        # wait until at least this many tokens
    request = (
        f"GET {a.path} HTTP/1.1\r\nHost: {a.host}:{a.port}\r\n"
        "User-Agent: streamsvc-bench-slow\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    ).encode("ascii")

    sel = selectors.DefaultSelector()
    clients: list[Client] = []
    wakeups: list[tuple[float, int]] = []   # (time, idx): re-arm reading when tokens are back
    t0 = time.monotonic()

    def set_mask(c: Client, mask: int) -> None:
        if mask == c.registered_mask:
            return
        if c.registered_mask and mask:
            sel.modify(c.sock, mask, c)
        elif mask:
            sel.register(c.sock, mask, c)
        else:
            sel.unregister(c.sock)
        c.registered_mask = mask

    def finish(c: Client, state: str, err: str | None = None) -> None:
        set_mask(c, 0)
        c.state = state
        c.error = err

    for i in range(a.clients):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        if a.rcvbuf:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, a.rcvbuf)
        c = Client(s, i, request, burst)
        clients.append(c)
        rc = s.connect_ex((a.host, a.port))
        if rc not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
            finish(c, "error", errno.errorcode.get(rc, str(rc)))
            continue
        set_mask(c, selectors.EVENT_WRITE)

    headers_done = 0
    status200 = 0
    ready_at: float | None = None
    header_deadline = t0 + a.header_timeout

    def refill(c: Client, now: float) -> None:
        c.tokens = min(burst, c.tokens + (now - c.last) * rate)
        c.last = now

    def all_settled() -> bool:
        return all(c.state in ("body", "eof", "error") for c in clients)

    while True:
        now = time.monotonic()
        if ready_at is None and (all_settled() or now >= header_deadline):
            ready_at = now
            print(f"ready headers={headers_done} clients={a.clients} status200={status200} "
                  f"elapsed={now - t0:.2f}", flush=True)
        if ready_at is not None and now >= ready_at + a.duration:
            break

        # Re-arm sockets whose buckets have refilled.
        while wakeups and wakeups[0][0] <= now:
            _, idx = heapq.heappop(wakeups)
            c = clients[idx]
            if c.state in ("headers", "body"):
                set_mask(c, selectors.EVENT_READ)

        timeout = 0.25
        if wakeups:
            timeout = min(timeout, max(0.0, wakeups[0][0] - now))
        if ready_at is not None:
            timeout = min(timeout, max(0.0, ready_at + a.duration - now))
        events = sel.select(timeout) if sel.get_map() else (time.sleep(timeout) or [])
        now = time.monotonic()
        for key, mask in events:
            c: Client = key.data
            try:
                if c.state == "connecting":
                    err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        finish(c, "error", errno.errorcode.get(err, str(err)))
                        continue
                    c.state = "sending"
                if c.state == "sending":
                    n = c.sock.send(c.out)
                    c.out = c.out[n:]
                    if not c.out:
                        c.state = "headers"
                        c.last = now
                        set_mask(c, selectors.EVENT_READ)
                    continue
                # Reading (headers or body), limited by the bucket.
                refill(c, now)
                want = int(c.tokens)
                if want < 1:
                    set_mask(c, 0)
                    heapq.heappush(wakeups, (now + (min_read - c.tokens) / rate, c.idx))
                    continue
                data = c.sock.recv(min(want, RECV_MAX))
                if not data:
                    finish(c, "eof")
                    continue
                c.tokens -= len(data)
                c.bytes += len(data)
                if c.state == "headers":
                    c.head += data
                    end = c.head.find(b"\r\n\r\n")
                    if end >= 0:
                        line = c.head.split(b"\r\n", 1)[0].split()
                        c.status = int(line[1]) if len(line) > 1 and line[1].isdigit() else -1
                        headers_done += 1
                        if c.status == 200:
                            status200 += 1
                        c.head = b""
                        c.state = "body"
                    elif len(c.head) > 65536:
                        finish(c, "error", "headers too long")
                        continue
                if c.tokens < min_read:
                    set_mask(c, 0)
                    heapq.heappush(wakeups, (now + (min_read - c.tokens) / rate, c.idx))
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as e:
                finish(c, "error", errno.errorcode.get(e.errno or 0, str(e)))

    open_ = sum(1 for c in clients if c.state in ("connecting", "sending", "headers", "body"))
    eof = sum(1 for c in clients if c.state == "eof")
    errors = [c.error for c in clients if c.state == "error"]
    total = sum(c.bytes for c in clients)
    for c in clients:
        try:
            c.sock.close()
        except OSError:
            pass
    sel.close()
    err_summary = ""
    if errors:
        kinds: dict[str, int] = {}
        for e in errors:
            kinds[str(e)] = kinds.get(str(e), 0) + 1
        err_summary = " error_kinds=" + ",".join(f"{k}:{v}" for k, v in sorted(kinds.items()))
    print(f"done headers={headers_done} clients={a.clients} open={open_} eof={eof} "
          f"errors={len(errors)} bytes={total}{err_summary}", flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
