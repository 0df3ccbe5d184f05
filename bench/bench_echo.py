#!/usr/bin/env python3
"""
POST /echo: streamsvc's streamed echo vs what a twisted.web user writes today.

Each server runs in its own process, started by this script as

    python bench/bench_echo.py --serve streamsvc --port-file F --data-dir D --log L
    python bench/bench_echo.py --serve web       --port-file F --data-dir D --log L

which builds the server in-process and listens on an ephemeral port on
127.0.0.1.  streamsvc's Site comes from its own config parser and site builder
(``parse_config`` of a small tap.conf text, then ``prepare_data_dir`` and
``build_site``: exactly what ``twistd -n streamsvc`` serves, defaults
everywhere, so ``/echo`` with its 1 GiB limit and 64 KiB BodyPipe buffer).  The
peer is stock twisted.web: ``Site`` over a root ``Resource`` with an ``echo``
leaf whose ``render_POST`` copies ``Content-Type`` and returns
``request.content.read()``.  twisted.web has by then read the whole body (into
a ``BytesIO`` under 100,000 bytes, a ``tempfile.TemporaryFile`` above) and
``Site`` sets ``Content-Length`` from the bytes returned.  Both log access lines
to a file through twisted.python.log, as twistd would.

The client is this script: one socket, non-blocking, one thread, ``poll()``:
it sends the request line and headers (``Content-Type:
application/octet-stream``, so twisted.web parses no form; ``Content-Length``;
``Connection: close``), then the body in 1 MiB ``send()`` calls whenever the
socket is writable, and reads whenever it is readable, so sending and reading
run concurrently.  The body is a 4 MiB + 4099 bytes random block repeated (the
odd length keeps the repeats from lining up with the 1 MiB sends and 64 KiB
reads); the echo is hashed (sha256) as it arrives and compared with the
body's own sha256, computed once before the runs, and its length with the
``Content-Length`` of the answer.

Server memory is read from ``/proc/PID/status`` of the server process: VmRSS
just before a run; VmHWM (peak RSS), reset to the current RSS just before the
run by writing ``5`` to ``/proc/PID/clear_refs``; VmRSS again at the point the
metric names.  A watcher thread polls ``/proc/PID/fd`` every 50 ms during the
runs for deleted regular files (what ``TemporaryFile`` looks like on Linux)
and records their largest size: the temp file twisted.web stores a body in.

Scenarios (--only takes a comma-separated subset of the names):

  ttfb    time to first echoed byte: a 64 MiB (--ttfb-mib) POST, timed from
          just before the first body byte is sent to the recv() that brought
          the first byte of the response body; the time to the last echoed
          byte from the same start is reported too (the whole echo is read
          and verified in every run).
  echo    throughput: 256 MiB (--quick 64 MiB; --echo-mib) through /echo;
          MiB/s = body size / (last echoed byte received - first body byte
          sent), echo verified by sha256; and the server's RSS: peak growth
          (VmHWM - VmRSS before), growth at the end (VmRSS when the last byte
          arrived, connection still open, - before), and the largest temp
          file the server held.
  stall   a sender that never reads: Content-Length 1 GiB (--stall-mib), the
          body sent as fast as the socket takes it and nothing ever read.  The
          run ends 2 s (--stall-s) after the last send() that made progress,
          whether the client stalled or sent it all, or 30 s (--cap-s) after
          the first body byte.  Reported: MiB sent, server RSS growth at that
          point (VmRSS then - before).  The connection is then held open, still
          never read, until the server's VmRSS has moved by at most 1 MiB over
          the last second (at most 10 s, --hold-s; twisted.web is typically
          still reading its temp file back at the stall point), and the growth
          then and the peak growth over the whole run (VmHWM - before) are
          reported too.  The notes give what sat in the client's socket queues
          at the stall point (FIONREAD: echoed bytes waiting to be read;
          TIOCOUTQ: sent bytes not yet acknowledged), the response status line
          peeked (MSG_PEEK) from the receive queue, and the queue after the hold.

Every scenario is repeated --runs times (default 5; --quick 2), interleaved
streamsvc / twisted.web, and the medians are printed with the individual runs
and the ratio.  Before each run the script waits until the server holds as
many fds as it did idle (at most 10 s), so a run starts after the previous
connection is gone.  Standard library only; everything on 127.0.0.1; server
processes are killed on exit.  Run it with the Python of the venv streamsvc is
installed in (a regular install: `pip install .` first to measure the working
tree; the output says whether the installed copy is the working tree or git
HEAD).  The machine is shared and noisy: the output lists other processes that
were using CPU when the run started and ended; read the individual runs.
A default run takes about 1.5 minutes on 2 vCPUs (--quick: about 30 s).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import select
import shlex
import socket
import subprocess
import sys
import tempfile
import termios
import time
from dataclasses import dataclass, field
from typing import Callable

from _child import PortFileServer, Run, log, publish_and_run, run_script  # bench/ is sys.path[0] when run as a script
from _machine import print_machine, filesystem_of, machine_lines, other_cpu_users, server_lines
from _proc import Watch, fd_count, kib_to_mib, proc_status, reset_hwm
from _report import Results, table

HOST = "127.0.0.1"
MiB = 1024 * 1024
SCRIPT = os.path.abspath(__file__)

SEND_CHUNK = 1 * MiB     # bytes per send() at most
RECV_BUF = 1 * MiB       # bytes per recv_into() at most
BLOCK_LEN = 4 * MiB + 4099


# =========================================================================== server side
# (runs in the --serve subprocess; imports Twisted only there)


def serve(args: argparse.Namespace) -> int:
    from twisted.internet import reactor
    from twisted.python import log as tlog
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    logfile = open(args.log, "a") if args.log else sys.stdout
    tlog.startLogging(logfile, setStdout=False)

    data_dir = os.path.abspath(args.data_dir)
    info: dict[str, object] = {"kind": args.serve}

    if args.serve == "streamsvc":
        import streamsvc
        from streamsvc.app import build_site, prepare_data_dir
        from streamsvc.config import parse_config

        text = (
            "[server]\n"
            f"listen = tcp:0:interface={HOST}\n"
            f"data_dir = {data_dir}\n"
        )
        config = parse_config(text, "bench_echo.conf")
        prepare_data_dir(config)
        site = build_site(config, reactor=reactor)
        info["streamsvc_file"] = os.path.dirname(os.path.abspath(streamsvc.__file__))
        info["body_timeout"] = config.limits.body_timeout
    elif args.serve == "web":

        class Echo(Resource):
            """What a twisted.web user writes today: the buffered body, returned."""

            isLeaf = True

            def render_POST(self, request):  # noqa: N802 (Twisted API)
                request.setHeader(b"content-type",
                                  request.getHeader(b"content-type") or b"application/octet-stream")
                return request.content.read()

        root = Resource()
        root.putChild(b"echo", Echo())
        site = Site(root)
        info["tempdir"] = tempfile.gettempdir()
    else:
        raise SystemExit(f"unknown server kind {args.serve!r}")

    port = reactor.listenTCP(0, site, interface=HOST)

    return publish_and_run(reactor, info, args.port_file, port=port.getHost().port)


# =========================================================================== client side


class Body:
    """The request body: a random block repeated; byte p is block[p % len(block)]."""

    def __init__(self, block_len: int = BLOCK_LEN) -> None:
        block = os.urandom(block_len)
        self.n = block_len
        self._mv = memoryview(block + block)
        self._digests: dict[int, str] = {}
        self.hash_mib_s = 0.0

    def view(self, pos: int, n: int) -> memoryview:
        off = pos % self.n
        return self._mv[off:off + min(n, self.n)]

    def digest(self, size: int) -> str:
        """sha256 of the first `size` bytes (computed once per size, before any run)."""
        if size not in self._digests:
            h = hashlib.sha256()
            t = time.perf_counter()
            pos = 0
            while pos < size:
                v = self.view(pos, min(SEND_CHUNK, size - pos))
                h.update(v)
                pos += len(v)
            dt = time.perf_counter() - t
            if size >= 16 * MiB:
                self.hash_mib_s = size / MiB / dt
            self._digests[size] = h.hexdigest()
        return self._digests[size]


def _ioctl_int(sock: socket.socket, req: int) -> int:
    try:
        return int.from_bytes(fcntl.ioctl(sock.fileno(), req, b"\0\0\0\0"), sys.byteorder, signed=True)
    except OSError:
        return -1


def exchange(port: int, body: Body, size: int, *, read: bool, stall_s: float = 2.0,
             cap_s: float = 30.0, timeout: float = 120.0,
             at_end: Callable[[socket.socket], dict] | None = None) -> dict:
    """
    POST /echo with a `size`-byte body, sending and (if `read`) reading concurrently.

    read=True: until the whole echo is in (or `timeout` s without progress either
    way: an error).  read=False: nothing is ever read; until `stall_s` without a
    send() making progress, or `cap_s` after the first body byte.  `at_end` is
    called before the socket is closed and its dict merged into the result.
    """
    head = (f"POST /echo HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {size}\r\n"
            f"Connection: close\r\n\r\n").encode("ascii")
    s = socket.create_connection((HOST, port), timeout=10)
    res: dict = {}
    try:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(head)
        s.setblocking(False)
        poller = select.poll()
        fd = s.fileno()
        poller.register(fd, 0)
        buf = bytearray(RECV_BUF)
        rmv = memoryview(buf)
        h = hashlib.sha256()
        hdr = bytearray()
        status_line = ""
        headers: dict[str, str] = {}
        clen: int | None = None
        sent = body_recvd = 0
        t_first_send = t_headers = t_first_body = t_last_body = None
        last_progress = time.monotonic()
        outcome = ""
        error = ""
        registered = -1
        while True:
            now = time.monotonic()
            if read:
                if clen is not None and body_recvd >= clen:
                    outcome = "complete"
                    break
                if now - last_progress > timeout:
                    raise RuntimeError(f"no progress for {timeout:.0f}s: sent {sent}, "
                                       f"echoed {body_recvd} of {size}")
                wait = 1.0
            else:
                if now - last_progress >= stall_s:
                    outcome = "sent all" if sent >= size else "stalled"
                    break
                if t_first_send is not None and now - t_first_send >= cap_s:
                    outcome = f"cap {cap_s:g}s"
                    break
                wait = min(last_progress + stall_s - now,
                           (t_first_send + cap_s - now) if t_first_send is not None else stall_s)
            want = (select.POLLOUT if sent < size else 0) | (select.POLLIN if read else 0)
            if want != registered:
                poller.modify(fd, want)
                registered = want
            if not want:
                time.sleep(max(0.0, wait))
                continue
            events = poller.poll(max(1, int(wait * 1000)))
            ev = 0
            for _, e in events:
                ev |= e
            if read and ev & (select.POLLIN | select.POLLHUP | select.POLLERR):
                try:
                    n = s.recv_into(buf)
                except BlockingIOError:
                    n = -1
                except ConnectionError as e:
                    raise RuntimeError(f"connection error while reading: {e!r} (sent {sent}, "
                                       f"echoed {body_recvd})") from None
                if n == 0:
                    raise RuntimeError(f"EOF after {body_recvd} echoed bytes of "
                                       f"{clen if clen is not None else '?'} (sent {sent}); "
                                       f"status {status_line!r}")
                if n > 0:
                    t = time.monotonic()
                    last_progress = t
                    data = rmv[:n]
                    if t_headers is None:
                        hdr += data
                        end = hdr.find(b"\r\n\r\n")
                        if end >= 0:
                            t_headers = t
                            lines = bytes(hdr[:end]).decode("latin-1").split("\r\n")
                            status_line = lines[0]
                            for line in lines[1:]:
                                k, _, v = line.partition(":")
                                headers[k.strip().lower()] = v.strip()
                            if not status_line.startswith("HTTP/1.1 200"):
                                raise RuntimeError(f"unexpected response {status_line!r}")
                            if "content-length" not in headers:
                                raise RuntimeError(f"no Content-Length in the answer: {headers}")
                            clen = int(headers["content-length"])
                            rest = bytes(hdr[end + 4:])
                            if rest:
                                t_first_body = t_last_body = t
                                h.update(rest)
                                body_recvd += len(rest)
                    else:
                        if t_first_body is None:
                            t_first_body = t
                        t_last_body = t
                        h.update(data)
                        body_recvd += n
            if ev & select.POLLOUT and sent < size:
                if t_first_send is None:
                    t_first_send = time.monotonic()
                try:
                    n = s.send(body.view(sent, min(SEND_CHUNK, size - sent)))
                except BlockingIOError:
                    n = 0
                except ConnectionError as e:
                    if read:
                        raise RuntimeError(f"connection error while sending: {e!r} (sent {sent})") from None
                    error = f"send failed after {sent} bytes: {e!r}"
                    outcome = "closed by server"
                    break
                if n > 0:
                    sent += n
                    last_progress = time.monotonic()
            elif not read and ev & (select.POLLHUP | select.POLLERR):
                outcome = "closed by server"
                error = f"poll events {ev:#x} after {sent} bytes"
                break
        t_end = time.monotonic()
        res.update(outcome=outcome, error=error, sent=sent, echoed=body_recvd, status=status_line,
                   headers=headers, clen=clen, digest=h.hexdigest(), t_first_send=t_first_send,
                   t_headers=t_headers, t_first_body=t_first_body, t_last_body=t_last_body,
                   t_end=t_end, last_progress=last_progress)
        if not read:
            res["rcvq"] = _ioctl_int(s, termios.FIONREAD)
            res["sndq"] = _ioctl_int(s, termios.TIOCOUTQ)
            try:
                peek = s.recv(256, socket.MSG_PEEK | socket.MSG_DONTWAIT)
                res["peek"] = peek.split(b"\r\n", 1)[0].decode("latin-1") if peek else "(nothing)"
            except (BlockingIOError, InterruptedError):
                res["peek"] = "(nothing)"
            except OSError as e:
                res["peek"] = f"({e!r})"
        if at_end is not None:
            res.update(at_end(s))
    finally:
        s.close()
    return res


# =========================================================================== driver


@dataclass
class Server(PortFileServer):
    name: str          # shown in the table
    kind: str          # streamsvc | web
    tmp: str
    data_dir: str
    port: int = 0
    idle_fds: int = 0
    info: dict = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    script = SCRIPT


# --------------------------------------------------------------------------- measurements


@dataclass
class Scenario:
    key: str
    title: str
    metrics: list[tuple[str, str, str, str]]   # (key, label, unit-format, better: lower|higher)
    results: Results = field(default_factory=Results)   # per server


def verify(srv: Server, res: dict, body: Body, size: int) -> None:
    what = f"{srv.name} POST /echo ({size} bytes)"
    if res["clen"] != size:
        raise RuntimeError(f"{what}: Content-Length {res['clen']}")
    if res["echoed"] != size:
        raise RuntimeError(f"{what}: {res['echoed']} bytes echoed")
    if res["digest"] != body.digest(size):
        raise RuntimeError(f"{what}: sha256 of the echo {res['digest'][:16]} != "
                           f"the body's {body.digest(size)[:16]}")
    ctype = res["headers"].get("content-type", "")
    if ctype != "application/octet-stream":
        raise RuntimeError(f"{what}: Content-Type {ctype!r} not copied")


def m_ttfb(srv: Server, body: Body, size: int) -> tuple[dict, str]:
    pre = srv.settle()
    res = exchange(srv.port, body, size, read=True)
    verify(srv, res, body, size)
    t0 = res["t_first_send"]
    ttfb = res["t_first_body"] - t0
    last = res["t_last_body"] - t0
    values = {"ttfb_ms": ttfb * 1000.0, "last_s": last}
    note = (f"{pre}response headers after {(res['t_headers'] - t0) * 1000:.1f}ms; "
            f"{size / MiB / last:.0f} MiB/s overall; sha256 ok")
    return values, note


def m_echo(srv: Server, body: Body, size: int) -> tuple[dict, str]:
    pre = srv.settle()
    pid = srv.pid
    before = proc_status(pid)["VmRSS"]
    hwm_ok = reset_hwm(pid)

    def at_end(sock: socket.socket) -> dict:
        st = proc_status(pid)
        return {"rss_end": st["VmRSS"], "hwm": st["VmHWM"]}

    with Watch(pid) as w:
        res = exchange(srv.port, body, size, read=True, at_end=at_end)
    verify(srv, res, body, size)
    wall = res["t_last_body"] - res["t_first_send"]
    peak = max(res["hwm"], w.max_rss) if hwm_ok else w.max_rss
    values = {"mib_s": size / MiB / wall,
              "peak_mib": kib_to_mib(peak - before),
              "end_mib": kib_to_mib(res["rss_end"] - before),
              "temp_mib": w.temp_max / MiB}
    temp = (f"temp file {', '.join(sorted(w.temp_names))} up to {w.temp_max / MiB:.1f} MiB"
            if w.temp_names else "no temp file seen")
    note = (f"{pre}RSS before {kib_to_mib(before):.1f} MiB, VmHWM {kib_to_mib(res['hwm']):.1f} MiB"
            f"{'' if hwm_ok else ' (not reset: clear_refs failed; peak = max sampled VmRSS)'}, "
            f"max sampled VmRSS {kib_to_mib(w.max_rss):.1f} MiB, at end {kib_to_mib(res['rss_end']):.1f} MiB; "
            f"first echoed byte after {(res['t_first_body'] - res['t_first_send']) * 1000:.1f}ms; "
            f"{wall:.2f}s; {temp}; sha256 ok")
    return values, note


def m_stall(srv: Server, body: Body, size: int, stall_s: float, cap_s: float,
            hold_s: float) -> tuple[dict, str]:
    pre = srv.settle()
    pid = srv.pid
    before = proc_status(pid)["VmRSS"]
    hwm_ok = reset_hwm(pid)
    box: dict = {}

    def at_end(sock: socket.socket) -> dict:
        # At the stall point, then held open (still never read) until the server's
        # RSS has not moved by more than 1 MiB for 1 s, at most hold_s.
        st = proc_status(pid)
        box["watch"].sample()
        out = {"rss_at": st["VmRSS"], "hwm_at": st["VmHWM"]}
        t0 = time.monotonic()
        hist: list[tuple[float, int]] = [(t0, st["VmRSS"])]
        while True:
            time.sleep(0.1)
            now = time.monotonic()
            rss = proc_status(pid)["VmRSS"]
            hist.append((now, rss))
            recent = [r for t, r in hist if t >= now - 1.0]
            if now - t0 >= 1.0 and max(recent) - min(recent) <= 1024:
                out["held"] = f"steady after {now - t0:.1f}s"
                break
            if now - t0 >= hold_s:
                out["held"] = f"not steady after {hold_s:g}s"
                break
        st = proc_status(pid)
        out.update(rss_held=st["VmRSS"], hwm=st["VmHWM"], rcvq_held=_ioctl_int(sock, termios.FIONREAD))
        return out

    with Watch(pid) as w:
        box["watch"] = w
        res = exchange(srv.port, body, size, read=False, stall_s=stall_s, cap_s=cap_s, at_end=at_end)
    peak = max(res["hwm"], w.max_rss) if hwm_ok else w.max_rss
    values = {"sent_mib": res["sent"] / MiB,
              "rss_mib": kib_to_mib(res["rss_at"] - before),
              "held_mib": kib_to_mib(res["rss_held"] - before),
              "peak_mib": kib_to_mib(peak - before)}
    t0 = res["t_first_send"] or res["t_end"]
    temp = (f"temp file up to {w.temp_max / MiB:.1f} MiB" if w.temp_names else "no temp file seen")
    note = (f"{pre}{res['outcome']}{' (' + res['error'] + ')' if res['error'] else ''}: "
            f"{res['sent']:,} bytes sent, last progress {res['last_progress'] - t0:.2f}s after the "
            f"first body byte; then client receive queue {res.get('rcvq', -1):,} B "
            f"(response so far: {res.get('peek')}), send queue {res.get('sndq', -1):,} B; "
            f"RSS before {kib_to_mib(before):.1f} MiB, then {kib_to_mib(res['rss_at']):.1f} MiB "
            f"(VmHWM {kib_to_mib(res['hwm_at']):.1f}); held open: {res['held']}, RSS "
            f"{kib_to_mib(res['rss_held']):.1f} MiB, VmHWM {kib_to_mib(res['hwm']):.1f} MiB, client "
            f"receive queue {res['rcvq_held']:,} B; {temp}")
    return values, note


# --------------------------------------------------------------------------- report


def fmt(v: float, unit: str) -> str:
    if unit == "ms":
        return f"{v:.1f}" if abs(v) < 1000 else f"{v:.0f}"
    if unit == "mibs":
        return f"{v:.0f}" if abs(v) >= 100 else f"{v:.1f}"
    return f"{v:.2f}" if abs(v) < 100 else f"{v:.1f}"


def machine_info(servers: list[Server], body: Body) -> list[str]:
    """
    The shared machine and server lines, with what only this script adds:
    the driver's sha256 speed (it hashes every echo), streamsvc's
    body_timeout and where twisted.web keeps its temp files.
    """
    return (machine_lines(driver_note=f"sha256 in the driver {body.hash_mib_s:.0f} MiB/s (one core)")
            + server_lines(servers,
                           streamsvc_note=lambda i: f"body_timeout {i.get('body_timeout')}s",
                           peer_note=lambda i: (f"temp files in {i.get('tempdir')} "
                                                f"({filesystem_of(str(i.get('tempdir')))})")))


def report(scenarios: list[Scenario], names: tuple[str, str]) -> None:
    a, b = names
    rows = [("scenario", "metric", f"{a} (median)", f"{b} (median)", f"ratio ({a}/{b})")]
    for sc in scenarios:
        for i, (key, label, unit, better) in enumerate(sc.metrics):
            ma, mb = sc.results.median(a, key), sc.results.median(b, key)
            ratio = f"{ma / mb:.3g}" if ma is not None and mb else "-"
            rows.append((sc.title if i == 0 else "", f"{label} [{better} is better]",
                         fmt(ma, unit) if ma is not None else "-",
                         fmt(mb, unit) if mb is not None else "-", ratio))
    table(rows)
    print("(RSS growth is against the server's VmRSS just before each run; it can be slightly "
          "negative when the run starts with memory still to be given back)")
    print()
    print("Individual runs (in run order):")
    for sc in scenarios:
        print(f"  {sc.title}")
        for name in names:
            res = sc.results.values.get(name, {})
            for key, label, unit, _ in sc.metrics:
                vals = res.get(key, [])
                print(f"    {name:<12} {label:<44} " + ", ".join(fmt(v, unit) for v in vals))
            for j, n in enumerate(sc.results.notes.get(name, []), 1):
                print(f"    {name:<12} run {j}: {n}")


# --------------------------------------------------------------------------- main


SCENARIOS = ("ttfb", "echo", "stall")


def bench(run: Run, args: argparse.Namespace, runs: int, selected: list[str]) -> None:
    """
    The whole run in C{run.tmp}, both servers in C{run.servers} (so they are
    stopped however it ends): digests, warm-up, the scenarios, the report.
    """
    quick = args.quick
    ttfb_size = args.ttfb_mib * MiB
    echo_size = (args.echo_mib or (64 if quick else 256)) * MiB
    stall_size = args.stall_mib * MiB
    load_before = other_cpu_users()
    log("before: " + load_before)
    tmp = run.tmp
    data = os.path.join(tmp, "data")
    os.makedirs(data)
    body = Body()
    t = time.monotonic()
    for size, key in ((ttfb_size, "ttfb"), (echo_size, "echo")):
        if key in selected:
            body.digest(size)
    body.digest(MiB)
    log(f"body digests ready after {time.monotonic() - t:.1f}s "
        f"(sha256 {body.hash_mib_s:.0f} MiB/s in the driver)")

    servers = [Server("streamsvc", "streamsvc", tmp, data), Server("twisted.web", "web", tmp, data)]
    run.servers.extend(servers)
    for s in servers:
        s.start()
    for s in servers:
        s.idle_fds = fd_count(s.pid)
        # Unmeasured warm-up: two 1 MiB echoes.
        for _ in range(2):
            verify(s, exchange(s.port, body, MiB, read=True), body, MiB)
        if s.settle(max_wait=5.0):   # fds opened lazily by the first requests: the new idle
            s.idle_fds = fd_count(s.pid)
        st = proc_status(s.pid)
        log(f"{s.name} (pid {s.pid}, port {s.port}) ready; RSS {kib_to_mib(st['VmRSS']):.1f} MiB, "
            f"{s.idle_fds} fds idle")
    for s in servers:
        print(f"server {s.name}: {shlex.join(s.argv)}   (cwd {tmp})", flush=True)

    scenarios: dict[str, Scenario] = {
        "ttfb": Scenario("ttfb", f"time to first echoed byte, {ttfb_size // MiB} MiB POST", [
            ("ttfb_ms", "first echoed byte after first body byte (ms)", "ms", "lower"),
            ("last_s", "last echoed byte after first body byte (s)", "s", "lower"),
        ]),
        "echo": Scenario("echo", f"echo {echo_size // MiB} MiB, read concurrently", [
            ("mib_s", "throughput (MiB/s)", "mibs", "higher"),
            ("peak_mib", "server peak RSS growth (MiB)", "mib", "lower"),
            ("end_mib", "server RSS growth at the last byte (MiB)", "mib", "lower"),
            ("temp_mib", "server temp file, largest (MiB)", "mib", "lower"),
        ]),
        "stall": Scenario("stall", f"sender never reads, up to {stall_size // MiB} MiB", [
            ("sent_mib", f"sent before {args.stall_s:g}s without progress (MiB)", "mib", "lower"),
            ("rss_mib", "server RSS growth at that point (MiB)", "mib", "lower"),
            ("held_mib", "server RSS growth, held until steady (MiB)", "mib", "lower"),
            ("peak_mib", "server peak RSS growth (MiB)", "mib", "lower"),
        ]),
    }
    print(f"runs per server: {runs} (interleaved streamsvc, twisted.web, ...); quick={quick}; "
          f"ttfb {ttfb_size // MiB} MiB; echo {echo_size // MiB} MiB; stall up to "
          f"{stall_size // MiB} MiB, {args.stall_s:g}s without progress, cap {args.cap_s:g}s, "
          f"then held until RSS steady (<= {args.hold_s:g}s); "
          f"client: one socket, poll(), send() <= {SEND_CHUNK // MiB} MiB, "
          f"recv_into() <= {RECV_BUF // MiB} MiB, sha256 of the echo; "
          f"scenarios: {','.join(selected)}", flush=True)

    for key in selected:
        sc = scenarios[key]
        for i in range(1, runs + 1):
            for s in servers:
                t0 = time.monotonic()
                if key == "ttfb":
                    v, note = m_ttfb(s, body, ttfb_size)
                elif key == "echo":
                    v, note = m_echo(s, body, echo_size)
                else:
                    v, note = m_stall(s, body, stall_size, args.stall_s, args.cap_s, args.hold_s)
                sc.results.add(s.name, v, note)
                unit = {k: u for k, _, u, _ in sc.metrics}
                shown = ", ".join(f"{k}={fmt(x, unit[k])}" for k, x in v.items())
                log(f"  [{key}] run {i}/{runs} {s.name}: {shown} [{note}] "
                    f"({time.monotonic() - t0:.1f}s)")
    for s in servers:
        s.settle()
    load_after = other_cpu_users()

    print()
    print_machine(machine_info(servers, body), load_before, load_after, warn=False)
    print()
    report([scenarios[k] for k in selected], ("streamsvc", "twisted.web"))
    print()


def main() -> int:
    ap = argparse.ArgumentParser(description="POST /echo: streamsvc vs a stock twisted.web echo")
    ap.add_argument("--runs", type=int, default=None, help="runs per server per scenario [5; --quick: 2]")
    ap.add_argument("--quick", action="store_true", help="2 runs, 64 MiB echo")
    ap.add_argument("--only", default=None, help=f"comma-separated subset of: {','.join(SCENARIOS)}")
    ap.add_argument("--ttfb-mib", type=int, default=64, help="body of the ttfb scenario [64]")
    ap.add_argument("--echo-mib", type=int, default=None, help="body of the echo scenario [256; --quick 64]")
    ap.add_argument("--stall-mib", type=int, default=1024,
                    help="Content-Length (and most sent) of the stall scenario [1024]")
    ap.add_argument("--stall-s", type=float, default=2.0,
                    help="stall scenario: end this long after the last send progress [2]")
    ap.add_argument("--cap-s", type=float, default=30.0,
                    help="stall scenario: end at the latest this long after the first body byte [30]")
    ap.add_argument("--hold-s", type=float, default=10.0,
                    help="stall scenario: then hold the connection until the server's RSS is "
                         "steady, at most this long [10]")
    ap.add_argument("--tmpdir", default=None, help="where to create the temporary dir [system default]")
    ap.add_argument("--keep", action="store_true", help="keep the temporary dir (logs) at the end")
    # internal modes
    ap.add_argument("--serve", choices=("streamsvc", "web"), help=argparse.SUPPRESS)
    ap.add_argument("--port-file", help=argparse.SUPPRESS)
    ap.add_argument("--data-dir", help=argparse.SUPPRESS)
    ap.add_argument("--log", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.serve:
        if not args.port_file or not args.data_dir:
            ap.error("--serve needs --port-file and --data-dir")
        return serve(args)

    runs = args.runs if args.runs is not None else (2 if args.quick else 5)
    selected = args.only.split(",") if args.only else list(SCENARIOS)
    unknown = set(selected) - set(SCENARIOS)
    if unknown:
        ap.error(f"unknown scenarios in --only: {', '.join(sorted(unknown))}")
    selected = [s for s in SCENARIOS if s in selected]
    return run_script(lambda run: bench(run, args, runs, selected), prefix="streamsvc-echo-",
                      tmpdir=args.tmpdir, keep=args.keep)


if __name__ == "__main__":
    sys.exit(main())
