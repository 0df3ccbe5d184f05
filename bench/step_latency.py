#!/usr/bin/env python3
"""
How long can one stream hold the Twisted reactor?  streamsvc vs twisted.web.static.File.

Each server runs in its own process, started by this script as

    python bench/step_latency.py --serve streamsvc --port-file F --data-dir D [--chunk-size N]
    python bench/step_latency.py --serve static    --port-file F --data-dir D

which builds the server in-process and listens on an ephemeral port on
127.0.0.1.  streamsvc's Site comes from its own config parser and site builder
(``parse_config`` of a small tap.conf text, then ``prepare_data_dir`` and
``build_site``: exactly what ``twistd -n streamsvc`` serves, so ``/files`` and
``/healthz``); the peer is ``Site`` over ``static.File(D/files)`` at ``/plain/``
and the same ``File`` wrapped for gzip at ``/gz/`` (an ``EncodingResourceWrapper``
with ``GzipEncoderFactory``, re-applied to every child on the way down, because
the wrapper does not wrap the children ``File`` returns).  Both log access lines
to a file through twisted.python.log, as twistd would.

Event-loop lag.  Each server process also listens on a second ephemeral port
(a control Site: ``/start`` and ``/stop``).  ``/start`` begins a heartbeat: a
``reactor.callLater(0.001, beat)`` chain in which each beat records how late it
fired (now - when it was due, both ``time.monotonic()``) and schedules the next
one 1 ms later.  A beat is late exactly as long as the reactor was busy with
something else (a producer step, a listing rendered in one go, a gzip of one
chunk) when it came due, so the largest lateness is the longest time the loop
was held without getting back to its timers (to within the 1 ms period; with
several streams, one turn runs all their steps before the timers come round
again).  ``/stop`` ends the heartbeat and returns the
lateness samples' max / p99 / p50 and the process's CPU time since ``/start``
(getrusage).  The heartbeat runs only between ``/start`` and ``/stop``.

Scenarios (--only takes a comma-separated subset of the names):

  listing_gz   one gzipped listing of a folder of 100,000 empty files (--quick
               20,000; --entries): streamsvc GET /files/bigN/ (JSON), the peer
               GET /gz/bigN/ (static.File's HTML listing, which it renders in
               one go); both with Accept-Encoding: gzip, read as fast as
               http.client can, entries counted.
  gzip_16m     one gzipped download of a 128 MiB (--quick 64 MiB; --text-mib)
               access-log-like text file; streamsvc started with [stream]
               chunk_size = 16M, the peer with its own chunking (64 KiB reads by
               a pull producer that Twisted's cooperator drives in ~10 ms slices)
               and GzipEncoderFactory's own level, 9 (streamsvc's is 6).
  gzip_64k     the same with streamsvc's default chunk_size (64 KiB).  When both
               gzip scenarios run, each static.File run counts for both rows.
  plain        a plain (identity) download of a 1 GiB (--quick 256 MiB;
               --plain-mib) file, default chunk size: the control.
  healthz      20 (--clients) concurrent plain listings of a folder of 20,000
               (--quick 10,000; --healthz-entries) files, while a probe sends GET
               /healthz (the peer: GET of a 10-byte file) on a fresh connection
               every 50 ms; probe latency median / p99, wall time of the 20.
               The listing clients are forked from this script and start
               together on one byte written to a shared pipe.
  healthz_gz   the same with gzipped listings.

The defaults are scaled so that a default run takes about 10 minutes on 2 vCPUs:
at 100,000 entries (the figure in the issue) one healthz run of static.File
alone takes ~90 s, because it renders the 20 listings back to back in one
reactor turn.  Probe latency for streamsvc depends on the work per reactor turn
times the number of streams, not on the folder size; a bigger folder only makes
the run longer (more probes).  For the issue's set-up exactly:
``--healthz-entries 100000 --text-mib 256`` (about 25 minutes).

Probe latency is measured from the moment each probe was *due* on the 50 ms
grid, with one probe in flight at a time.  When a probe takes longer than 50 ms,
the grid slots that came due while it was pending are recorded too, each with
the latency it would have had if it had been sent on time and answered when the
pending one was (the usual coordinated-omission correction; a lower bound for
what an open-loop client sending every 50 ms would see).  The raw latencies of
the probes actually sent are reported alongside.

Every scenario is repeated --runs times (default 5; --quick 2), interleaved
streamsvc / static.File, and the medians are printed with the individual runs
and the ratio.  Standard library only; everything on 127.0.0.1; server and client
processes are killed on exit.  Run it with the Python of the venv streamsvc is
installed in (a regular install: `pip install .` first to measure the working
tree; the output says whether the installed copy is the working tree or git
HEAD).  The machine is shared and noisy: the output lists other processes that
were using CPU when the run started and ended; read the individual runs.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import random
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import zlib
from dataclasses import dataclass, field

from _child import PortFileServer, Run, log, publish_and_run, run_script  # bench/ is sys.path[0] when run as a script
from _machine import print_machine, machine_lines, other_cpu_users, server_lines
from _report import table

HOST = "127.0.0.1"
MiB = 1024 * 1024
HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.abspath(__file__)

# Forked listing clients that must not outlive us (servers are tracked separately).
_forked: set[int] = set()


# =========================================================================== server side
# (runs in the --serve subprocess; imports Twisted only there)


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[k]


def serve(args: argparse.Namespace) -> int:
    import resource as rusage

    from twisted.internet import reactor
    from twisted.python import log as tlog
    from twisted.web.resource import EncodingResourceWrapper, Resource
    from twisted.web.server import GzipEncoderFactory, Site

    logfile = open(args.log, "a") if args.log else sys.stdout
    tlog.startLogging(logfile, setStdout=False)

    data_dir = os.path.abspath(args.data_dir)
    files = os.path.join(data_dir, "files")
    info: dict[str, object] = {"kind": args.serve}

    if args.serve == "streamsvc":
        import streamsvc
        from streamsvc.app import build_site, prepare_data_dir
        from streamsvc.config import parse_config

        text = (
            "[server]\n"
            f"listen = tcp:0:interface={HOST}\n"
            f"data_dir = {data_dir}\n"
            "[stream]\n"
            f"chunk_size = {args.chunk_size}\n"
        )
        config = parse_config(text, "step_latency.conf")
        prepare_data_dir(config)
        site = build_site(config, reactor=reactor)
        info["streamsvc_file"] = os.path.dirname(os.path.abspath(streamsvc.__file__))
        info["chunk_size"] = config.stream.chunk_size
    elif args.serve == "static":
        from twisted.web.static import File

        class GzipTree(EncodingResourceWrapper):
            """EncodingResourceWrapper that also wraps every child it leads to."""

            def getChildWithDefault(self, path, request):  # noqa: N802 (Twisted API)
                return GzipTree(self.original.getChildWithDefault(path, request),
                                self._encoders)

        # proxyForInterface keeps the wrapped resource as .original.
        root = Resource()
        root.putChild(b"plain", File(files))
        root.putChild(b"gz", GzipTree(File(files), [GzipEncoderFactory()]))
        site = Site(root)
    else:
        raise SystemExit(f"unknown server kind {args.serve!r}")

    interval = args.beat_ms / 1000.0

    class Heartbeat:
        def __init__(self) -> None:
            self.samples: list[float] = []
            self.call = None
            self.due = 0.0
            self.t0 = 0.0
            self.cpu0 = 0.0

        @staticmethod
        def cpu() -> float:
            r = rusage.getrusage(rusage.RUSAGE_SELF)
            return r.ru_utime + r.ru_stime

        def start(self) -> None:
            self.stop()
            self.samples = []
            self.t0 = time.monotonic()
            self.cpu0 = self.cpu()
            self.due = time.monotonic() + interval
            self.call = reactor.callLater(interval, self.beat)

        def beat(self) -> None:
            now = time.monotonic()
            self.samples.append(now - self.due)
            self.due = time.monotonic() + interval
            self.call = reactor.callLater(interval, self.beat)

        def stop(self) -> dict[str, object]:
            if self.call is not None and self.call.active():
                self.call.cancel()
            self.call = None
            s = sorted(self.samples)
            ms = 1000.0
            return {
                "beats": len(s),
                "max_ms": s[-1] * ms if s else float("nan"),
                "p99_ms": _percentile(s, 0.99) * ms,
                "p50_ms": _percentile(s, 0.50) * ms,
                "over_10ms": sum(1 for v in s if v > 0.010),
                "wall_s": time.monotonic() - self.t0,
                "cpu_s": self.cpu() - self.cpu0,
            }

    hb = Heartbeat()

    class Control(Resource):
        isLeaf = True

        def render_GET(self, request):  # noqa: N802 (Twisted API)
            request.setHeader(b"content-type", b"application/json")
            request.setHeader(b"connection", b"close")
            if request.path == b"/start":
                hb.start()
                return b'{"started": true}\n'
            if request.path == b"/stop":
                return json.dumps(hb.stop()).encode() + b"\n"
            if request.path == b"/ping":
                return b'{"ok": true}\n'
            request.setResponseCode(404)
            return b'{"error": "not found"}\n'

    ctl_site = Site(Control())
    ctl_site.log = lambda request: None  # keep the access log to the measured site

    port = reactor.listenTCP(0, site, interface=HOST)
    ctl = reactor.listenTCP(0, ctl_site, interface=HOST)

    return publish_and_run(reactor, info, args.port_file, port=port.getHost().port, ctl=ctl.getHost().port)


# =========================================================================== client side


LISTING_MARK = {"json": b'{"name": ', "html": b'<tr class="'}


def fetch(port: int, path: str, *, gzip: bool, kind: str, timeout: float = 900.0) -> dict:
    """
    GET path and read the whole body as fast as possible.

    kind: "json" / "html" (count listing entries), "bytes" (count decoded bytes).
    Returns status, wire bytes, decoded bytes, entries, t_start / t_end (monotonic).
    """
    t_start = time.monotonic()
    c = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        c.request("GET", path, headers={"Accept-Encoding": "gzip" if gzip else "identity",
                                        "Connection": "close"})
        r = c.getresponse()
        encoding = (r.getheader("content-encoding") or "").lower()
        d = zlib.decompressobj(16 + zlib.MAX_WBITS) if encoding == "gzip" else None
        mark = LISTING_MARK.get(kind)
        buf = bytearray(1 << 20)
        mv = memoryview(buf)
        wire = decoded = entries = 0
        tail = b""
        while True:
            n = r.readinto(buf)
            if not n:
                break
            wire += n
            if d is None and mark is None:
                decoded += n
                continue
            data = d.decompress(mv[:n]) if d is not None else bytes(mv[:n])
            decoded += len(data)
            if mark is not None and data:
                joined = tail + data
                entries += joined.count(mark)
                tail = joined[-(len(mark) - 1):]
        if d is not None:
            rest = d.flush()
            decoded += len(rest)
            if mark is not None and rest:
                entries += (tail + rest).count(mark)
            if not d.eof:
                raise RuntimeError(f"GET {path}: gzip stream incomplete after {wire} bytes")
        return {"status": r.status, "encoding": encoding, "wire": wire, "decoded": decoded,
                "entries": entries, "t_start": t_start, "t_end": time.monotonic()}
    finally:
        c.close()


def fork_fetchers(n: int, port: int, path: str, *, gzip: bool, kind: str) -> tuple[int, list[tuple[int, int]]]:
    """
    Fork n listing clients.  Each blocks reading one byte from the shared "go"
    pipe, then fetches, writes its result (JSON) to its own pipe and exits.
    Forked, not spawned: 20 fresh interpreters take seconds to start here.
    Returns (the go pipe's write end, [(pid, result pipe's read end)]).
    """
    go_r, go_w = os.pipe()
    kids = []
    for _ in range(n):
        res_r, res_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            code = 1
            try:
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                os.close(go_w)
                os.close(res_r)
                for _, r in kids:
                    os.close(r)
                if os.read(go_r, 1) == b"g":
                    try:
                        res = fetch(port, path, gzip=gzip, kind=kind)
                    except Exception as e:
                        res = {"error": f"{type(e).__name__}: {e}"}
                    data = json.dumps(res).encode()
                    while data:
                        data = data[os.write(res_w, data):]
                    code = 0
            finally:
                os._exit(code)
        _forked.add(pid)
        os.close(res_w)
        kids.append((pid, res_r))
    os.close(go_r)
    return go_w, kids


def reap(pid: int, kill: bool = False) -> None:
    if pid not in _forked:
        return
    if kill:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    os.waitpid(pid, 0)
    _forked.discard(pid)


class ForkedClients:
    """
    The forked listing clients still running, as one more entry of
    run.servers: end_run stops them first (with the signals ignored, as it
    stops the servers), so none outlives an interrupted or failed run.
    """

    name = "listing clients"
    proc = None   # no log for run_failed to show

    def stop(self) -> None:
        for pid in list(_forked):
            reap(pid, kill=True)


def http_get(port: int, path: str, timeout: float = 30.0) -> tuple[int, bytes]:
    """
    GET path with Connection: close.  Not _runner's http_get (which sends no
    Connection header): the healthz probes are measured, and asking the
    server to close keeps the probe requests and who ends each connection
    as the published figures were taken.
    """
    c = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        c.request("GET", path, headers={"Connection": "close"})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


class Prober:
    """One probe in flight at a time, due every `interval` s; see the module docstring."""

    def __init__(self, port: int, path: str, interval: float, timeout: float = 300.0) -> None:
        self.port, self.path, self.interval, self.timeout = port, path, interval, timeout
        self.raw: list[float] = []        # latency of each probe sent, from its send time
        self.corrected: list[float] = []  # latency of each grid slot, from its due time
        self._slots: list[tuple[float, float]] = []  # (due, latency from due)
        self.sent = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.t0 = 0.0

    def start(self, t0: float) -> None:
        self.t0 = t0
        self._thread.start()

    def stop(self, at: float) -> None:
        """Count no slot due after `at`; wait for the probe in flight."""
        self._stop_at = at
        self._stop.set()
        self._thread.join(self.timeout + 10)
        self.corrected = [lat for due, lat in self._slots if due <= at]

    def _run(self) -> None:
        slot = 0
        while True:
            due = self.t0 + slot * self.interval
            now = time.monotonic()
            if due > now and self._stop.wait(due - now):
                return
            if self._stop.is_set() and due > self._stop_at:
                return
            sent = time.monotonic()
            try:
                status, body = http_get(self.port, self.path, timeout=self.timeout)
                if status != 200:
                    self.failures.append(f"HTTP {status}")
            except OSError as e:
                self.failures.append(repr(e))
            end = time.monotonic()
            self.sent += 1
            self.raw.append(end - sent)
            self._slots.append((due, end - due))
            slot += 1
            # Slots that came due while this probe was pending.
            while self.t0 + slot * self.interval < end:
                due = self.t0 + slot * self.interval
                self._slots.append((due, end - due))
                slot += 1


# =========================================================================== driver


@dataclass
class Server(PortFileServer):
    name: str          # shown in the table
    kind: str          # streamsvc | static
    chunk_size: int
    tmp: str
    data_dir: str
    beat_ms: float
    port: int = 0
    ctl: int = 0
    info: dict = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    script = SCRIPT

    @property
    def label(self) -> str:
        return self.name.replace(" ", "_").replace("=", "").replace(".", "_")

    @property
    def argv(self) -> list[str]:
        a = super().argv + ["--beat-ms", str(self.beat_ms)]
        if self.kind == "streamsvc":
            a += ["--chunk-size", str(self.chunk_size)]
        return a

    def start(self) -> None:
        self.launch()
        self.await_port()
        self.ctl = self.info["ctl"]

    def lag_start(self) -> None:
        status, body = http_get(self.ctl, "/start")
        if status != 200:
            raise RuntimeError(f"{self.name}: /start -> {status} {body!r}")

    def lag_stop(self) -> dict:
        status, body = http_get(self.ctl, "/stop", timeout=900)
        if status != 200:
            raise RuntimeError(f"{self.name}: /stop -> {status} {body!r}")
        return json.loads(body)

    # paths
    def listing(self, folder: str, gzip: bool) -> str:
        if self.kind == "streamsvc":
            return f"/files/{folder}/"
        return f"/{'gz' if gzip else 'plain'}/{folder}/"

    def file(self, name: str, gzip: bool) -> str:
        if self.kind == "streamsvc":
            return f"/files/{name}"
        return f"/{'gz' if gzip else 'plain'}/{name}"

    def probe_path(self, tiny: str) -> str:
        return "/healthz" if self.kind == "streamsvc" else f"/plain/{tiny}"

    @property
    def listing_kind(self) -> str:
        return "json" if self.kind == "streamsvc" else "html"


# --------------------------------------------------------------------------- data


WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike "
         "november oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee "
         "zulu files healthz stream chunk producer consumer reactor gzip listing request "
         "response header body range etag deferred transport buffer socket client server "
         "worker queue cache index report export archive upload download session token").split()


def text_block(size: int, seed: int = 1) -> bytes:
    """
    Access-log-like lines (increasing timestamps, words from a small vocabulary,
    random sizes): gzip -6 makes them about 5.5x smaller, like real logs.  The
    block is repeated to fill the file; repeats are 16 MiB apart, far beyond
    zlib's 32 KiB window, so every chunk costs zlib the same as fresh text.
    """
    rnd = random.Random(seed)
    levels = ("INFO", "INFO", "INFO", "INFO", "DEBUG", "WARN")
    methods = ("GET", "GET", "GET", "HEAD")
    statuses = (200, 200, 200, 200, 206, 304, 404)
    out: list[str] = []
    n = ms = 0
    while n < size:
        ms += rnd.randrange(50)
        sec, msec = divmod(ms, 1000)
        mnt, sec = divmod(sec, 60)
        hour, mnt = divmod(mnt, 60)
        line = (f"2026-11-23T{hour % 24:02d}:{mnt:02d}:{sec:02d}.{msec:03d}Z {rnd.choice(levels):5} "
                f"worker-{rnd.randrange(8)} {rnd.choice(methods)} /files/{rnd.choice(WORDS)}/"
                f"{rnd.choice(WORDS)}.txt {rnd.choice(statuses)} {rnd.randrange(100000)} bytes "
                f"{rnd.randrange(100)}ms\n")
        out.append(line)
        n += len(line)
    return "".join(out).encode()[:size]


def zlib_calibration(path: str, size: int = 16 * MiB) -> str:
    """gzip ratio and zlib speed (level 6, as streamsvc; 9 is GzipEncoderFactory's) on the file."""
    with open(path, "rb") as f:
        data = f.read(size)
    parts = []
    for level in (6, 9):
        c = zlib.compressobj(level, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        t = time.perf_counter()
        out = len(c.compress(data)) + len(c.flush())
        dt = time.perf_counter() - t
        parts.append(f"level {level}: ratio {len(data) / out:.2f}, {len(data) / MiB / dt:.0f} MiB/s, "
                     f"{dt * 1000:.0f} ms per {len(data) // MiB} MiB chunk")
    return "; ".join(parts)


def make_file(path: str, size: int, block: bytes) -> None:
    if os.path.isfile(path) and os.path.getsize(path) == size:
        return
    tmp = path + ".part"
    with open(tmp, "wb") as f:
        left = size
        while left:
            n = min(left, len(block))
            f.write(block[:n] if n < len(block) else block)
            left -= n
    os.rename(tmp, path)


def make_folder(path: str, entries: int) -> None:
    names = [f"f{i:06d}" for i in range(entries)]
    if os.path.isdir(path):
        with os.scandir(path) as it:
            present = {e.name for e in it}
        if present == set(names):
            return
        shutil.rmtree(path)
    tmp = path + ".part"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    for n in names:
        os.close(os.open(os.path.join(tmp, n), os.O_CREAT | os.O_WRONLY, 0o644))
    os.rename(tmp, path)


def warm_cache(path: str) -> None:
    with open(path, "rb", buffering=0) as f:
        while f.read(16 * MiB):
            pass


# --------------------------------------------------------------------------- measurements


@dataclass
class Scenario:
    key: str
    title: str
    metrics: list[tuple[str, str, str]]   # (key, label, unit-format)
    results: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    notes: dict[str, list[str]] = field(default_factory=dict)

    def add(self, server: str, values: dict[str, float], note: str) -> None:
        r = self.results.setdefault(server, {})
        for k, v in values.items():
            r.setdefault(k, []).append(v)
        self.notes.setdefault(server, []).append(note)


LAG_METRICS = [
    ("max_ms", "max reactor lag (ms)", "ms"),
    ("p99_ms", "p99 reactor lag (ms)", "ms"),
    ("wall_s", "stream wall time (s)", "s"),
    ("cpu_s", "server CPU during stream (s)", "s"),
]
HEALTHZ_METRICS = [
    ("probe_p50_ms", "probe latency median (ms)", "ms"),
    ("probe_p99_ms", "probe latency p99 (ms)", "ms"),
    ("wall_s", "wall time for the listings (s)", "s"),
    ("max_ms", "max reactor lag (ms)", "ms"),
    ("cpu_s", "server CPU (s)", "s"),
]


def m_single(srv: Server, path: str, *, gzip: bool, kind: str, expect: int) -> tuple[dict, str]:
    srv.check_alive()
    srv.lag_start()
    try:
        res = fetch(srv.port, path, gzip=gzip, kind=kind)
    finally:
        stats = srv.lag_stop()
    what = f"{srv.name} GET {path}"
    if res["status"] != 200:
        raise RuntimeError(f"{what}: HTTP {res['status']}")
    if gzip and res["encoding"] != "gzip":
        raise RuntimeError(f"{what}: not gzipped (Content-Encoding {res['encoding']!r})")
    if not gzip and res["encoding"]:
        raise RuntimeError(f"{what}: unexpected Content-Encoding {res['encoding']!r}")
    got = res["entries"] if kind in LISTING_MARK else res["decoded"]
    if got != expect:
        raise RuntimeError(f"{what}: got {got} {'entries' if kind in LISTING_MARK else 'bytes'}, "
                           f"expected {expect}")
    wall = res["t_end"] - res["t_start"]
    values = {"max_ms": stats["max_ms"], "p99_ms": stats["p99_ms"], "wall_s": wall,
              "cpu_s": stats["cpu_s"]}
    note = (f"p50 {stats['p50_ms']:.2f}ms, {stats['beats']} beats, {stats['over_10ms']} >10ms, "
            f"{res['wire'] / MiB:.1f} MiB on the wire")
    return values, note


def m_healthz(srv: Server, folder: str, *, gzip: bool, entries: int, clients: int,
              interval: float, tiny: str) -> tuple[dict, str]:
    srv.check_alive()
    go_w, kids = fork_fetchers(clients, srv.port, srv.listing(folder, gzip), gzip=gzip,
                               kind=srv.listing_kind)
    outs: list[dict] = []
    try:
        srv.lag_start()
        prober = Prober(srv.port, srv.probe_path(tiny), interval)
        go = time.monotonic()
        os.write(go_w, b"g" * clients)
        prober.start(go)
        try:
            for pid, r in kids:
                chunks = []
                while True:
                    b = os.read(r, 65536)
                    if not b:
                        break
                    chunks.append(b)
                reap(pid)
                if not chunks:
                    raise RuntimeError(f"{srv.name} listing client {pid} exited without a result")
                outs.append(json.loads(b"".join(chunks)))
        finally:
            last = max((o.get("t_end", 0.0) for o in outs), default=0.0)
            prober.stop(last if len(outs) == len(kids) else time.monotonic())
            stats = srv.lag_stop()
    finally:
        os.close(go_w)
        for pid, r in kids:
            os.close(r)
            reap(pid, kill=True)
    for o in outs:
        if "error" in o:
            raise RuntimeError(f"{srv.name} listing client: {o['error']}")
        if o["status"] != 200 or o["entries"] != entries:
            raise RuntimeError(f"{srv.name} listing client: HTTP {o['status']}, "
                               f"{o['entries']} entries (expected {entries})")
        if gzip != (o["encoding"] == "gzip"):
            raise RuntimeError(f"{srv.name} listing client: Content-Encoding {o['encoding']!r}")
    if prober.failures:
        raise RuntimeError(f"{srv.name} probe failures: {prober.failures[:5]}")
    if not prober.corrected:
        raise RuntimeError(f"{srv.name}: no probe was sent")
    wall = max(o["t_end"] for o in outs) - go
    each = sorted(o["t_end"] - o["t_start"] for o in outs)
    corr, raw = sorted(prober.corrected), sorted(prober.raw)
    ms = 1000.0
    values = {"probe_p50_ms": _percentile(corr, 0.5) * ms, "probe_p99_ms": _percentile(corr, 0.99) * ms,
              "wall_s": wall, "max_ms": stats["max_ms"], "cpu_s": stats["cpu_s"]}
    note = (f"{len(corr)} slots, {prober.sent} probes sent: raw p50 {_percentile(raw, 0.5) * ms:.0f}ms "
            f"p99 {_percentile(raw, 0.99) * ms:.0f}ms max {raw[-1] * ms:.0f}ms; "
            f"listing each {each[0]:.1f}-{each[-1]:.1f}s")
    return values, note


# --------------------------------------------------------------------------- report


def fmt(v: float, unit: str) -> str:
    if unit == "ms":
        return f"{v:.1f}" if v < 1000 else f"{v:.0f}"
    return f"{v:.2f}"


def machine_info(servers: list[Server]) -> list[str]:
    """The shared machine and server lines; each streamsvc child with the chunk_size it parsed."""
    return machine_lines() + server_lines(servers, streamsvc_note=lambda i: f"chunk_size {i.get('chunk_size')}")


def report(scenarios: list[Scenario], names: tuple[str, str]) -> None:
    a, b = names
    rows = [("scenario", "metric", f"{a} (median)", f"{b} (median)", f"ratio ({a}/{b})")]
    for sc in scenarios:
        ra, rb = sc.results.get(a, {}), sc.results.get(b, {})
        for i, (key, label, unit) in enumerate(sc.metrics):
            va, vb = ra.get(key, []), rb.get(key, [])
            ma = statistics.median(va) if va else None
            mb = statistics.median(vb) if vb else None
            ratio = f"{ma / mb:.3g}" if ma is not None and mb else "-"
            rows.append((sc.title if i == 0 else "", label,
                         fmt(ma, unit) if ma is not None else "-",
                         fmt(mb, unit) if mb is not None else "-", ratio))
    table(rows)
    print("(lower is better everywhere; ratio < 1 means streamsvc holds the reactor less / answers sooner)")
    print()
    print("Individual runs (in run order):")
    for sc in scenarios:
        print(f"  {sc.title}")
        for name in names:
            res = sc.results.get(name, {})
            for key, label, unit in sc.metrics:
                vals = res.get(key, [])
                print(f"    {name:<12} {label:<32} " + ", ".join(fmt(v, unit) for v in vals))
            for j, n in enumerate(sc.notes.get(name, []), 1):
                print(f"    {name:<12} run {j}: {n}")


# --------------------------------------------------------------------------- main


SCENARIOS = ("listing_gz", "gzip_16m", "gzip_64k", "plain", "healthz", "healthz_gz")


def measure(run: Run, args: argparse.Namespace, selected: list[str], runs: int, entries: int,
            hz_entries: int, text_size: int, plain_size: int) -> None:
    """
    The whole comparison: the test files (in --data-dir, or run.tmp), the
    servers (in run.servers, so they are stopped however it ends, after the
    forked listing clients) warmed up, each selected scenario's runs, then
    the machine and the report.
    """
    quick = args.quick
    tmp = run.tmp
    run.servers.append(ForkedClients())
    load_before = other_cpu_users(ours=set(_forked))
    log("before: " + load_before)
    data = os.path.abspath(args.data_dir) if args.data_dir else os.path.join(tmp, "data")
    files = os.path.join(data, "files")
    os.makedirs(files, exist_ok=True)
    folder = f"big{entries}"
    hz_folder = f"big{hz_entries}"
    text_name = f"log{text_size // MiB}M.txt"
    plain_name = f"plain{plain_size // MiB}M.bin"
    tiny = "10b.txt"
    calibration = ""
    t = time.monotonic()
    log(f"test files in {files} ...")
    if "listing_gz" in selected:
        make_folder(os.path.join(files, folder), entries)
    if {"healthz", "healthz_gz"} & set(selected):
        make_folder(os.path.join(files, hz_folder), hz_entries)
    make_folder(os.path.join(files, "small"), 10)
    if {"gzip_16m", "gzip_64k"} & set(selected):
        make_file(os.path.join(files, text_name), text_size, text_block(16 * MiB))
        warm_cache(os.path.join(files, text_name))
        calibration = zlib_calibration(os.path.join(files, text_name))
    if "plain" in selected:
        make_file(os.path.join(files, plain_name), plain_size, os.urandom(16 * MiB))
        warm_cache(os.path.join(files, plain_name))
    with open(os.path.join(files, tiny), "wb") as f:
        f.write(b"0123456789")
    for d in {folder, hz_folder}:
        if os.path.isdir(os.path.join(files, d)):
            with os.scandir(os.path.join(files, d)) as it:   # warm the dentry/inode cache
                for e in it:
                    e.stat()
    log(f"  ready after {time.monotonic() - t:.1f}s")

    svc = Server("streamsvc", "streamsvc", 65536, tmp, data, args.beat_ms)
    peer = Server("static.File", "static", 0, tmp, data, args.beat_ms)
    svc16 = Server("streamsvc chunk_size=16M", "streamsvc", 16 * MiB, tmp, data, args.beat_ms)
    servers = [svc, peer] + ([svc16] if "gzip_16m" in selected else [])
    run.servers.extend(servers)
    for s in servers:
        s.start()
    for s in servers:
        # Unmeasured warm-up: small listing both ways, a probe, the start of a gzip download.
        for gz in (False, True):
            fetch(s.port, s.listing("small", gz), gzip=gz, kind=s.listing_kind)
        status, _ = http_get(s.port, s.probe_path(tiny))
        if status != 200:
            raise RuntimeError(f"{s.name}: probe {s.probe_path(tiny)} -> {status}")
        s.lag_start()
        idle = (time.sleep(0.5), s.lag_stop())[1]
        log(f"{s.name} (pid {s.proc.pid}, port {s.port}, control {s.ctl}) ready; "
            f"idle lag over 0.5s: max {idle['max_ms']:.2f}ms p99 {idle['p99_ms']:.2f}ms "
            f"({idle['beats']} beats)")
    for s in servers:
        print(f"server {s.name}: {shlex.join(s.argv)}   (cwd {tmp})", flush=True)

    N, HN = f"{entries:,}", f"{hz_entries:,}"
    scenarios: dict[str, Scenario] = {
        "listing_gz": Scenario("listing_gz", f"1 gzipped listing, {N} entries", LAG_METRICS),
        "gzip_16m": Scenario("gzip_16m", f"1 gzip download {text_size // MiB} MiB text, "
                             f"streamsvc chunk_size=16M", LAG_METRICS),
        "gzip_64k": Scenario("gzip_64k", f"1 gzip download {text_size // MiB} MiB text, "
                             f"chunk_size default", LAG_METRICS),
        "plain": Scenario("plain", f"1 plain download {plain_size // MiB} MiB (control)", LAG_METRICS),
        "healthz": Scenario("healthz", f"{args.clients} x plain listing {HN}, "
                            f"probe every {args.probe_ms:g}ms", HEALTHZ_METRICS),
        "healthz_gz": Scenario("healthz_gz", f"{args.clients} x gzip listing {HN}, "
                               f"probe every {args.probe_ms:g}ms", HEALTHZ_METRICS),
    }
    print(f"runs per server: {runs} (interleaved streamsvc, static.File, ...); quick={quick}; "
          f"listing_gz entries={entries}; healthz entries={hz_entries}; text {text_size // MiB} MiB; "
          f"plain {plain_size // MiB} MiB; heartbeat every {args.beat_ms:g} ms; "
          f"scenarios: {','.join(selected)}", flush=True)

    # Jobs: (scenario keys filled, [(server, column, keys it fills)]).  The two gzip
    # scenarios share the peer's runs: static.File is configured the same for both.
    jobs: list[tuple[list[str], list[tuple[Server, str, list[str]]]]] = []
    for key in selected:
        if key == "gzip_64k" and "gzip_16m" in selected:
            continue
        if key == "gzip_16m":
            keys = ["gzip_16m"] + (["gzip_64k"] if "gzip_64k" in selected else [])
            members = [(svc16, "streamsvc", ["gzip_16m"])]
            if "gzip_64k" in keys:
                members.append((svc, "streamsvc", ["gzip_64k"]))
            members.append((peer, "static.File", keys))
        else:
            keys = [key]
            members = [(svc, "streamsvc", keys), (peer, "static.File", keys)]
        jobs.append((keys, members))

    for keys, members in jobs:
        key = keys[0]
        for i in range(1, runs + 1):
            for s, name, fills in members:
                t0 = time.monotonic()
                if key == "listing_gz":
                    v, note = m_single(s, s.listing(folder, True), gzip=True,
                                       kind=s.listing_kind, expect=entries)
                elif key in ("gzip_16m", "gzip_64k"):
                    v, note = m_single(s, s.file(text_name, True), gzip=True, kind="bytes",
                                       expect=text_size)
                elif key == "plain":
                    v, note = m_single(s, s.file(plain_name, False), gzip=False, kind="bytes",
                                       expect=plain_size)
                else:
                    v, note = m_healthz(s, hz_folder, gzip=key == "healthz_gz", entries=hz_entries,
                                        clients=args.clients, interval=args.probe_ms / 1000.0,
                                        tiny=tiny)
                for k in fills:
                    scenarios[k].add(name, v, note + (" (one run for both gzip rows)"
                                                      if len(fills) > 1 else ""))
                shown = ", ".join(f"{k}={fmt(x, 'ms' if k.endswith('ms') else 's')}"
                                  for k, x in v.items())
                log(f"  [{'+'.join(fills)}] run {i}/{runs} {s.name}: {shown} [{note}] "
                    f"({time.monotonic() - t0:.1f}s)")
                time.sleep(0.3)
    for s in servers:
        s.check_alive()
    load_after = other_cpu_users(ours=set(_forked))

    print()
    lines = machine_info(servers)
    if calibration:
        lines.append(f"text file {text_name}, zlib in the driver: {calibration}")
    print_machine(lines, load_before, load_after, warn=False)
    print()
    report([scenarios[k] for k in selected], ("streamsvc", "static.File"))
    print()


def main() -> int:
    ap = argparse.ArgumentParser(description="event-loop lag per stream: streamsvc vs static.File")
    ap.add_argument("--runs", type=int, default=None, help="runs per server per scenario [5; --quick: 2]")
    ap.add_argument("--quick", action="store_true",
                    help="2 runs, 20,000 / 10,000 entries, 64 MiB gzip file, 256 MiB plain file")
    ap.add_argument("--only", default=None, help=f"comma-separated subset of: {','.join(SCENARIOS)}")
    ap.add_argument("--entries", type=int, default=None,
                    help="entries in the folder of listing_gz [100000; --quick 20000]")
    ap.add_argument("--healthz-entries", type=int, default=None,
                    help="entries in the folder the healthz scenarios list [20000; --quick 10000]")
    ap.add_argument("--text-mib", type=int, default=None, help="size of the gzipped text file [128; --quick 64]")
    ap.add_argument("--plain-mib", type=int, default=None, help="size of the plain file [1024; --quick 256]")
    ap.add_argument("--clients", type=int, default=20, help="concurrent listings in healthz scenarios [20]")
    ap.add_argument("--probe-ms", type=float, default=50.0, help="probe interval [50]")
    ap.add_argument("--beat-ms", type=float, default=1.0, help="heartbeat interval in the servers [1]")
    ap.add_argument("--data-dir", default=None,
                    help="reuse/create the test files here (kept; files are only created when missing)")
    ap.add_argument("--tmpdir", default=None, help="where to create the temporary dir [system default]")
    ap.add_argument("--keep", action="store_true", help="keep the temporary dir (data, logs) at the end")
    # internal modes
    ap.add_argument("--serve", choices=("streamsvc", "static"), help=argparse.SUPPRESS)
    ap.add_argument("--port-file", help=argparse.SUPPRESS)
    ap.add_argument("--log", help=argparse.SUPPRESS)
    ap.add_argument("--chunk-size", default="65536", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.serve:
        if not args.port_file or not args.data_dir:
            ap.error("--serve needs --port-file and --data-dir")
        return serve(args)

    quick = args.quick
    runs = args.runs if args.runs is not None else (2 if quick else 5)
    entries = args.entries if args.entries is not None else (20_000 if quick else 100_000)
    hz_entries = (args.healthz_entries if args.healthz_entries is not None
                  else (10_000 if quick else 20_000))
    text_size = (args.text_mib or (64 if quick else 128)) * MiB
    plain_size = (args.plain_mib or (256 if quick else 1024)) * MiB
    selected = args.only.split(",") if args.only else list(SCENARIOS)
    unknown = set(selected) - set(SCENARIOS)
    if unknown:
        ap.error(f"unknown scenarios in --only: {', '.join(sorted(unknown))}")
    selected = [s for s in SCENARIOS if s in selected]

    return run_script(lambda run: measure(run, args, selected, runs, entries, hz_entries, text_size,
                                          plain_size),
                      prefix="streamsvc-lag-", tmpdir=args.tmpdir, keep=args.keep)


if __name__ == "__main__":
    sys.exit(main())
