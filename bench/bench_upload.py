#!/usr/bin/env python3
"""
PUT /files: streamsvc's streamed upload vs what a twisted.web user writes
today, and vs cp of the same file as the disk's limit.

Each server runs in its own process, started by this script as

    python bench/bench_upload.py --serve streamsvc --port-file F --data-dir D --log L
    python bench/bench_upload.py --serve web       --port-file F --data-dir D --log L

which builds the server in-process and listens on an ephemeral port on
127.0.0.1.  streamsvc's Site comes from its own config parser and site builder
(``parse_config`` of a small tap.conf text with ``[auth] tokens = benchtoken``
and ``[limits] max_upload_bytes = 8GiB``, then ``prepare_data_dir`` and
``build_site``: exactly what ``twistd -n streamsvc`` serves).  Its ``PUT
/files/<path>`` streams the body to a temporary dot-file in the target folder
from thread jobs, fsyncs it, renames it into place and fsyncs the folder
(201 new / 204 replaced).  The peer is stock twisted.web: ``Site`` over a root
``Resource`` with a ``files`` leaf whose ``render_PUT`` checks the same Bearer
token, then (twisted.web has by then buffered the whole body into a
``tempfile.TemporaryFile``) copies ``request.content`` with
``shutil.copyfileobj`` into a temporary file in the target folder, ``os.fsync``,
``os.rename`` onto the target and fsync of the folder: the same durability,
written synchronously in ``render_PUT`` as a twisted.web user would (the
reactor is blocked meanwhile; that is part of what is measured), and a
``healthz`` leaf answering ``GET`` with ``{"status": "ok"}`` as streamsvc's
``/healthz`` does.  Both log access lines to a file through twisted.python.log,
as twistd would.

The client is curl:

    curl -s -o /dev/null -w '%{http_code} %{time_total} %{size_upload}' -T SRC \\
         -H 'Authorization: Bearer benchtoken' http://127.0.0.1:PORT/files/up/N.bin

with curl's default ``Expect: 100-continue`` (both servers answer it).  MiB/s =
size / curl's time_total.  The status is checked (201/204 streamsvc, 200/201/204
twisted.web), curl's size_upload must equal the size, and after each run the
stored file's size and sha256 must equal the source's (hashed once, as it is
written); the stored file is then deleted.

The source file is random bytes (os.urandom, 4 MiB blocks), fsync'ed, in the
temporary dir that also holds both data dirs (same filesystem).  The cp peer
copies it into the same temporary dir: ``cp SRC DST`` timed alone, and
``cp SRC DST`` + ``os.fsync(DST)`` + fsync of its folder timed as one.  cp
alone only reaches the page cache, while both servers fsync: "cp + fsync" is
the like-for-like disk limit.  The destination is deleted after each run.

Server memory is read from ``/proc/PID/status``: VmRSS just before a run;
VmHWM (peak RSS), reset to the current RSS just before the run by writing
``5`` to ``/proc/PID/clear_refs``; VmRSS again once curl has its answer.  Peak
growth = max(VmHWM, sampled VmRSS) - before; end growth = VmRSS after - before.
A watcher thread polls ``/proc/PID/fd`` every 50 ms for deleted regular files
(what ``TemporaryFile`` looks like on Linux) and records the largest: the temp
file twisted.web buffers the body in.

The server's event-loop responsiveness during the upload: a driver thread
sends ``GET /healthz`` every PROBE_INTERVAL s over one keep-alive connection
(http.client, 2 s socket timeout each) from just before curl starts (once a
first probe is answered) until curl exits, the probe then in flight being
finished.  Reported: probes answered and failed (timeouts, resets: counted,
the connection reopened), median and max latency of the answered ones, and
the longest gap between two consecutive answers: a reactor held by
synchronous work (twisted.web's render_PUT) shows there.

Every run does streamsvc, twisted.web, cp, cp + fsync, in an order rotated by
one each run; --runs runs (default 5; --quick 2) per size.  Before each
measurement the script waits until the server holds as many fds as it did idle
and calls sync(), so no run starts with another's dirty pages still being
written.  --sizes gives several sizes (MiB, comma-separated): one report block
each.  Standard library only (plus curl and cp); everything on 127.0.0.1;
server processes are killed on exit.  Run it with the Python of the venv
streamsvc is installed in (a regular install: ``pip install .`` first to
measure the working tree; the output says whether the installed copy is the
working tree or git HEAD).  The machine is shared and noisy: the output lists
other processes that were using CPU when the run started and ended; read the
individual runs.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

from _child import PortFileServer, Run, clean_env, log, publish_and_run, run_script  # bench/ is sys.path[0] when run as a script
from _machine import busy_warning, print_machine, filesystem_of, machine_lines, other_cpu_users, server_lines, tool_version
from _report import Results, table
from _proc import Watch, fd_count, kib_to_mib, proc_status, reset_hwm
from _runner import interleaved

HOST = "127.0.0.1"
MiB = 1024 * 1024
SCRIPT = os.path.abspath(__file__)
TOKEN = "benchtoken"
CURL = "/usr/bin/curl" if os.path.exists("/usr/bin/curl") else "curl"
BLOCK = 4 * MiB           # source written and files hashed in blocks of this size
RSS_TARGET_MIB = 16.0
WEB_TARGET = 1.5
CP_TARGET = 0.5
PROBE_TIMEOUT = 2.0      # socket timeout of each GET /healthz probe (s)
PROBE_INTERVAL = 0.01  # s between answered probes


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
            "[auth]\n"
            f"tokens = {TOKEN}\n"
            "[limits]\n"
            "max_upload_bytes = 8GiB\n"
        )
        config = parse_config(text, "bench_upload.conf")
        prepare_data_dir(config)
        site = build_site(config, reactor=reactor)
        info["streamsvc_file"] = os.path.dirname(os.path.abspath(streamsvc.__file__))
        info["max_upload_bytes"] = config.limits.max_upload_bytes
        info["body_timeout"] = config.limits.body_timeout
    elif args.serve == "web":
        files_root = os.path.join(data_dir, "files")
        os.makedirs(files_root, exist_ok=True)
        expected_auth = f"Bearer {TOKEN}".encode("ascii")

        class Files(Resource):
            """
            What a twisted.web user writes today: the buffered body copied to a
            temporary file next to the target, fsync'ed, renamed, folder fsync'ed.
            """

            isLeaf = True

            def render_PUT(self, request):  # noqa: N802 (Twisted API)
                if request.getHeader(b"authorization") != expected_auth:
                    request.setResponseCode(401)
                    request.setHeader(b"www-authenticate", b"Bearer")
                    return b"unauthorized\n"
                try:
                    segs = [s.decode("utf-8") for s in request.postpath]
                except UnicodeDecodeError:
                    segs = []
                if not segs or any(s in ("", ".", "..") or "/" in s or "\0" in s for s in segs):
                    request.setResponseCode(400)
                    return b"bad path\n"
                folder = os.path.join(files_root, *segs[:-1])
                os.makedirs(folder, exist_ok=True)
                target = os.path.join(folder, segs[-1])
                existed = os.path.exists(target)
                fd, temp = tempfile.mkstemp(prefix=".upload-", suffix=".tmp", dir=folder)
                try:
                    with os.fdopen(fd, "wb") as out:
                        request.content.seek(0)
                        shutil.copyfileobj(request.content, out)
                        out.flush()
                        os.fsync(out.fileno())
                    os.rename(temp, target)
                except BaseException:
                    try:
                        os.unlink(temp)
                    except OSError:
                        pass
                    raise
                fsync_dir(folder)
                request.setResponseCode(204 if existed else 201)
                return b""

        class Health(Resource):
            """GET /healthz, as streamsvc has it: what the responsiveness probe asks."""

            isLeaf = True

            def render_GET(self, request):  # noqa: N802 (Twisted API)
                request.setHeader(b"content-type", b"application/json")
                return b'{"status": "ok"}\n'

        root = Resource()
        root.putChild(b"files", Files())
        root.putChild(b"healthz", Health())
        site = Site(root)
        info["tempdir"] = tempfile.gettempdir()
    else:
        raise SystemExit(f"unknown server kind {args.serve!r}")

    port = reactor.listenTCP(0, site, interface=HOST)

    return publish_and_run(reactor, info, args.port_file, port=port.getHost().port)


# =========================================================================== /proc


class Probe:
    """
    The server's event-loop responsiveness while an upload runs: a thread
    sends ``GET /healthz`` every PROBE_INTERVAL s over one keep-alive connection
    (http.client, PROBE_TIMEOUT s socket timeout) and records each answer's
    latency and time.  A failed probe (timeout, reset, other status) is
    counted by kind, the connection is dropped and a new one opened.  After
    stop() the probe in flight is finished (answered or failed), no new one
    is sent; leaving the with block stops and joins the thread.
    """

    def __init__(self, port: int, timeout: float = PROBE_TIMEOUT) -> None:
        self.port, self.timeout = port, timeout
        self.latencies: list[float] = []   # s, answered probes
        self.answers: list[float] = []     # perf_counter when each answer was complete
        self.failures: dict[str, int] = {}
        self.connections = 0
        self.t_start = self.t_stop = 0.0
        self._stop = threading.Event()
        self._first = threading.Event()
        self._thread = threading.Thread(target=self._run, name="healthz-probe", daemon=True)

    def __enter__(self) -> "Probe":
        self.t_start = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
        self._thread.join(2 * self.timeout + 5)
        if self._thread.is_alive():
            self.failures["probe thread not joined"] = 1

    def wait_first(self, timeout: float) -> bool:
        """Wait for the first answer (the probe is under way before the upload starts)."""
        return self._first.wait(timeout)

    def stop(self) -> None:
        if not self._stop.is_set():
            self.t_stop = time.perf_counter()
            self._stop.set()

    def _fail(self, kind: str) -> None:
        self.failures[kind] = self.failures.get(kind, 0) + 1

    def _run(self) -> None:
        conn: http.client.HTTPConnection | None = None
        try:
            while not self._stop.is_set():
                if conn is None:
                    conn = http.client.HTTPConnection(HOST, self.port, timeout=self.timeout)
                    self.connections += 1
                t = time.perf_counter()
                try:
                    conn.request("GET", "/healthz")
                    r = conn.getresponse()
                    r.read()
                    done = time.perf_counter()
                    if r.status != 200:
                        raise http.client.HTTPException(f"status {r.status}")
                    if r.will_close:
                        conn.close()
                        conn = None
                except (OSError, http.client.HTTPException) as e:
                    done = time.perf_counter()
                    if isinstance(e, (socket.timeout, TimeoutError)):
                        self._fail("timeout")
                    elif isinstance(e, (ConnectionResetError, BrokenPipeError,
                                        http.client.RemoteDisconnected)):
                        self._fail("reset")
                    else:
                        self._fail(str(e) if str(e).startswith("status ") else type(e).__name__)
                    if conn is not None:
                        conn.close()
                        conn = None
                    if done - t < 0.01:       # refused or reset at once: do not spin
                        self._stop.wait(0.05)
                    continue
                self.latencies.append(done - t)
                self.answers.append(done)
                self._first.set()
                # Not back to back: a thousand probes a second competed with
                # the upload for the server's loop and the machine's two cores
                # (streamsvc's uploads ran 20-30 % slower); a stall of more
                # than PROBE_INTERVAL still shows as a gap.
                self._stop.wait(PROBE_INTERVAL)
        except BaseException as e:  # never let the probe take the run down
            self._fail(f"probe crashed: {type(e).__name__}: {e}")
        finally:
            if conn is not None:
                conn.close()

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    def values(self) -> dict[str, float]:
        lat = self.latencies
        a = self.answers
        gap = max((y - x for x, y in zip(a, a[1:])), default=float("nan"))
        return {"probe_n": float(len(lat)),
                "probe_fail": float(self.failed),
                "probe_med_ms": statistics.median(lat) * 1e3 if lat else float("nan"),
                "probe_max_ms": max(lat) * 1e3 if lat else float("nan"),
                "probe_gap_ms": gap * 1e3}

    def note(self) -> str:
        fails = (", ".join(f"{k} {v}" for k, v in sorted(self.failures.items()))
                 if self.failures else "none")
        span = self.t_stop - self.t_start
        head = (f"first answer {(self.answers[0] - self.t_start) * 1e3:.0f} ms after the probe started, "
                f"last {(self.answers[-1] - self.t_stop) * 1e3:+.0f} ms from curl's exit"
                if self.answers else "no probe answered")
        return (f"/healthz probes over {span:.2f}s: {len(self.latencies)} answered, failed: {fails}; "
                f"{self.connections} connection(s); {head}")


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

    @property
    def ok_codes(self) -> tuple[int, ...]:
        return (201, 204) if self.kind == "streamsvc" else (200, 201, 204)

    def stored(self, rel: str) -> str:
        return os.path.join(self.data_dir, "files", *rel.split("/"))

# --------------------------------------------------------------------------- files


def make_source(path: str, size: int) -> tuple[str, float]:
    """Random bytes, written in BLOCK-sized pieces and fsync'ed; (sha256, hash MiB/s)."""
    h = hashlib.sha256()
    hash_s = 0.0
    with open(path, "wb") as f:
        left = size
        while left:
            block = os.urandom(min(BLOCK, left))
            t = time.perf_counter()
            h.update(block)
            hash_s += time.perf_counter() - t
            f.write(block)
            left -= len(block)
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(os.path.dirname(path))
    return h.hexdigest(), (size / MiB / hash_s if hash_s > 0 else 0.0)


def file_digest(path: str) -> tuple[int, str]:
    h = hashlib.sha256()
    n = 0
    buf = bytearray(BLOCK)
    mv = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while True:
            k = f.readinto(buf)
            if not k:
                break
            h.update(mv[:k])
            n += k
    return n, h.hexdigest()


@dataclass
class Source:
    path: str
    size: int
    digest: str


# --------------------------------------------------------------------------- measurements


def curl_put(port: int, src: str, rel: str, timeout: float) -> tuple[int, float, int, str]:
    argv = [CURL, "-s", "-S", "-o", "/dev/null", "-w", "%{http_code} %{time_total} %{size_upload}",
            "-T", src, "-H", f"Authorization: Bearer {TOKEN}", "--max-time", f"{timeout:g}",
            f"http://{HOST}:{port}/files/{rel}"]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 30,
                       env=clean_env(), stdin=subprocess.DEVNULL)
    parts = r.stdout.split()
    if r.returncode != 0 or len(parts) != 3:
        raise RuntimeError(f"curl exited {r.returncode}: stdout {r.stdout!r} stderr {r.stderr.strip()!r}")
    return int(parts[0]), float(parts[1]), int(float(parts[2])), shlex.join(argv)


def m_server(srv: Server, src: Source, rel: str, timeout: float) -> tuple[dict, str]:
    pre = srv.settle()
    os.sync()
    pid = srv.pid
    before = proc_status(pid)["VmRSS"]
    hwm_ok = reset_hwm(pid)
    with Watch(pid) as w, Probe(srv.port) as probe:
        probe.wait_first(PROBE_TIMEOUT + 0.5)   # the probe is answering before curl starts
        t0 = time.monotonic()
        try:
            code, total, uploaded, _ = curl_put(srv.port, src.path, rel, timeout)
        finally:
            probe.stop()                       # no new probe once curl has exited
        wall = time.monotonic() - t0
        st = proc_status(pid)
    srv.check_alive()
    what = f"{srv.name} PUT /files/{rel} ({src.size} bytes)"
    if code not in srv.ok_codes:
        raise RuntimeError(f"{what}: status {code}\n" + srv.tail(10))
    if uploaded != src.size:
        raise RuntimeError(f"{what}: curl uploaded {uploaded} bytes")
    stored = srv.stored(rel)
    t = time.monotonic()
    n, digest = file_digest(stored)
    verify_s = time.monotonic() - t
    if n != src.size:
        raise RuntimeError(f"{what}: stored file has {n} bytes")
    if digest != src.digest:
        raise RuntimeError(f"{what}: stored sha256 {digest[:16]} != source's {src.digest[:16]}")
    os.unlink(stored)
    peak = max(st["VmHWM"], w.max_rss) if hwm_ok else w.max_rss
    values = {"mib_s": src.size / MiB / total,
              "peak_mib": kib_to_mib(peak - before),
              "end_mib": kib_to_mib(st["VmRSS"] - before),
              "temp_mib": w.temp_max / MiB,
              **probe.values()}
    temp = (f"temp file {', '.join(sorted(w.temp_names))} up to {w.temp_max / MiB:.1f} MiB"
            if w.temp_names else "no deleted temp file seen")
    note = (f"{pre}{code}; curl {total:.2f}s (wall {wall:.2f}s); RSS before {kib_to_mib(before):.1f} MiB, "
            f"VmHWM {kib_to_mib(st['VmHWM']):.1f}"
            f"{'' if hwm_ok else ' (not reset: clear_refs failed; peak = max sampled VmRSS)'}, "
            f"max sampled {kib_to_mib(w.max_rss):.1f}, after {kib_to_mib(st['VmRSS']):.1f} MiB; {temp}; "
            f"size+sha256 ok (verified in {verify_s:.1f}s); {probe.note()}")
    return values, note


def m_cp(src: Source, dst: str, sync: bool) -> tuple[dict, str]:
    os.sync()
    t0 = time.perf_counter()
    r = subprocess.run(["cp", src.path, dst], capture_output=True, text=True, timeout=900)
    t1 = time.perf_counter()
    if r.returncode != 0:
        raise RuntimeError(f"cp exited {r.returncode}: {r.stderr.strip()}")
    if sync:
        fd = os.open(dst, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(os.path.dirname(dst))
    t2 = time.perf_counter()
    n = os.stat(dst).st_size
    os.unlink(dst)
    if n != src.size:
        raise RuntimeError(f"cp: {dst} has {n} bytes, not {src.size}")
    total = t2 - t0
    values = {"mib_s": src.size / MiB / total}
    note = (f"cp {t1 - t0:.2f}s" + (f" + fsync file and folder {t2 - t1:.2f}s = {total:.2f}s" if sync else "")
            + "; size ok")
    return values, note


# --------------------------------------------------------------------------- report


PEERS = ("streamsvc", "twisted.web", "cp", "cp + fsync")
METRICS = [  # key, label, applies to
    ("mib_s", "throughput (MiB/s) [higher is better]", PEERS),
    ("peak_mib", "server peak RSS growth (MiB) [lower is better]", PEERS[:2]),
    ("end_mib", "server RSS growth at the end (MiB)", PEERS[:2]),
    ("temp_mib", "server temp file, largest (MiB)", PEERS[:2]),
    ("probe_n", "/healthz probes answered during the upload", PEERS[:2]),
    ("probe_fail", "/healthz probes failed (timeouts, resets) [lower is better]", PEERS[:2]),
    ("probe_med_ms", "/healthz latency, median (ms) [lower is better]", PEERS[:2]),
    ("probe_max_ms", "/healthz latency, max (ms) [lower is better]", PEERS[:2]),
    ("probe_gap_ms", "/healthz longest gap between answers (ms) [lower is better]", PEERS[:2]),
]
COUNT_KEYS = ("probe_n", "probe_fail")


@dataclass(kw_only=True)
class Block(Results):
    """One size's runs (L{Results}: a NaN, no probe answered, is left out of the medians)."""

    size: int


def fmt(v: float | None, key: str) -> str:
    if v is None or v != v:   # None or NaN
        return "-"
    if key in COUNT_KEYS:
        return f"{v:.0f}"
    if key == "mib_s":
        return f"{v:.0f}" if abs(v) >= 100 else f"{v:.1f}"
    return f"{v:.2f}" if abs(v) < 100 else f"{v:.1f}"


def report(blocks: list[Block]) -> None:
    for b in blocks:
        print(f"Upload {b.size // MiB} MiB (medians of {len(b.orders)} runs)")
        rows = [("metric",) + PEERS]
        for key, label, applies in METRICS:
            rows.append((label,) + tuple(fmt(b.median(p, key), key) if p in applies else ""
                                         for p in PEERS))
        table(rows, "  ")
        print()
        s = b.median("streamsvc", "mib_s")
        rows = [("ratio", "value", "target", "verdict")]

        def ratio(peer: str, target: float | None, tlabel: str) -> None:
            m = b.median(peer, "mib_s")
            if s is None or not m:
                rows.append((f"streamsvc / {peer} throughput", "-", tlabel, "-"))
                return
            r = s / m
            verdict = "-" if target is None else ("PASS" if r >= target else "MISS")
            rows.append((f"streamsvc / {peer} throughput", f"{r:.2f}x", tlabel, verdict))

        ratio("twisted.web", WEB_TARGET, f">= {WEB_TARGET}x")
        ratio("cp", CP_TARGET, f">= {CP_TARGET}x (the issue's target; cp alone stops at the page cache)")
        ratio("cp + fsync", CP_TARGET, f">= {CP_TARGET}x read against the like-for-like disk limit")
        peaks = b.values.get("streamsvc", {}).get("peak_mib", [])
        if peaks:
            worst = max(peaks)
            rows.append(("streamsvc peak RSS growth, worst run",
                         f"{worst:.2f} MiB (median {statistics.median(peaks):.2f})",
                         f"<= {RSS_TARGET_MIB:g} MiB", "PASS" if worst <= RSS_TARGET_MIB else "MISS"))
        sm, wm = b.median("streamsvc", "probe_max_ms"), b.median("twisted.web", "probe_max_ms")
        rows.append(("twisted.web / streamsvc max /healthz latency",
                     f"{wm / sm:.1f}x ({fmt(wm, 'probe_max_ms')} / {fmt(sm, 'probe_max_ms')} ms)"
                     if sm and wm is not None else "-", "-", "-"))
        wpeaks = b.values.get("twisted.web", {}).get("peak_mib", [])
        if wpeaks:
            rows.append(("twisted.web peak RSS growth, worst run",
                         f"{max(wpeaks):.2f} MiB (median {statistics.median(wpeaks):.2f})", "-", "-"))
        table(rows, "  ")
        print()
    print("Notes: cp alone only reaches the page cache, while both servers fsync the file and its "
          "folder before answering; \"cp + fsync\" (cp, then fsync of the copy and of its folder, "
          "timed as one) is the like-for-like disk limit.  twisted.web writes every byte twice "
          "(its buffering temp file, then the copy).  RSS growth is against the server's VmRSS "
          "just before each run (it can be slightly negative when memory is given back).  "
          "sync() runs before every measurement, untimed.  /healthz: while curl uploads, one "
          f"driver thread sends GET /healthz every {PROBE_INTERVAL * 1e3:g} ms over one keep-alive connection "
          f"({PROBE_TIMEOUT:g}s socket timeout; a timed-out or reset probe is counted as failed and "
          "the connection reopened), from just before curl starts until it exits (the probe then in "
          "flight is finished); latencies are of answered probes only, so a held reactor shows "
          "as failures and as the longest gap between two answers rather than as a latency above "
          f"{PROBE_TIMEOUT:g}s.")
    print()
    print("Individual runs (in run order):")
    lw = max(len(label) for _, label, _ in METRICS)
    for b in blocks:
        print(f"  upload {b.size // MiB} MiB")
        for j, order in enumerate(b.orders, 1):
            print(f"    run {j} order: {order}")
        for name in PEERS:
            res = b.values.get(name, {})
            for key, label, applies in METRICS:
                if name in applies and key in res:
                    print(f"    {name:<12} {label:<{lw}} " + ", ".join(fmt(v, key) for v in res[key]))
        for name in PEERS:
            for j, n in enumerate(b.notes.get(name, []), 1):
                print(f"    {name:<12} run {j}: {n}")


def vm_dirty() -> str:
    """The kernel's dirty page limits: when buffered writes (cp alone) start waiting for the disk."""
    try:
        dirty = []
        for k in ("dirty_ratio", "dirty_background_ratio", "dirty_bytes", "dirty_background_bytes"):
            with open(f"/proc/sys/vm/{k}") as f:
                dirty.append(f"{k} {f.read().strip()}")
        return "vm: " + ", ".join(dirty)
    except OSError:
        return ""


def machine_info(servers: list[Server], tmp: str, hash_mib_s: float) -> list[str]:
    """
    The shared machine and server lines, with what only this script adds:
    the driver's sha256 speed (it hashes every stored file), the vm dirty
    settings, the filesystem everything is written to, the curl and cp
    versions, streamsvc's limits and where twisted.web buffers the bodies.
    """
    du = shutil.disk_usage(tmp)
    return (machine_lines(driver_note=f"sha256 in the driver {hash_mib_s:.0f} MiB/s (one core)",
                          memory_note=vm_dirty())
            + [f"data dirs, source and cp copies in {tmp}: {filesystem_of(tmp, device=True)}, "
               f"{du.free // (1024 ** 3)} GiB free",
               f"client: {tool_version([CURL, '--version'])}; {tool_version(['cp', '--version'])}"]
            + server_lines(servers,
                           streamsvc_note=lambda i: (f"max_upload_bytes {i.get('max_upload_bytes')}, "
                                                     f"body_timeout {i.get('body_timeout')}s"),
                           peer_note=lambda i: (f"twisted.web buffers bodies in {i.get('tempdir')} "
                                                f"({filesystem_of(str(i.get('tempdir')), device=True)})")))


# --------------------------------------------------------------------------- main


def bench(run: Run, args: argparse.Namespace, runs: int, sizes: list[int]) -> None:
    """
    The whole run in C{run.tmp}, both servers in C{run.servers} (so they are
    stopped however it ends): warm-up, each size's source and runs, the report.
    """
    tmp = run.tmp
    need = 3 * max(sizes) * MiB + 256 * MiB   # source + a stored file + twisted.web's temp file
    free = shutil.disk_usage(tmp).free
    if free < need:
        raise RuntimeError(f"{tmp}: {free // MiB} MiB free, {need // MiB} MiB needed")
    svc = Server("streamsvc", "streamsvc", tmp, os.path.join(tmp, "data-streamsvc"))
    peer = Server("twisted.web", "web", tmp, os.path.join(tmp, "data-web"))
    servers = [svc, peer]
    run.servers.extend(servers)
    for s in servers:
        s.start()
    cp_dir = os.path.join(tmp, "cp")
    os.makedirs(cp_dir)

    # Unmeasured warm-up: two 1 MiB uploads each (the thread pool, lazily opened fds).
    warm_path = os.path.join(tmp, "warm.bin")
    warm = Source(warm_path, MiB, make_source(warm_path, MiB)[0])
    for s in servers:
        s.idle_fds = fd_count(s.pid)
        for i in range(2):
            m_server(s, warm, f"up/warm-{i}.bin", 60)
        s.settle(max_wait=5.0)   # fds opened lazily by the first requests: the new idle
        s.idle_fds = fd_count(s.pid)
        st = proc_status(s.pid)
        log(f"{s.name} (pid {s.pid}, port {s.port}) ready; RSS {kib_to_mib(st['VmRSS']):.1f} MiB, "
            f"{s.idle_fds} fds idle")
    os.unlink(warm_path)

    load_before = other_cpu_users(ours={s.pid for s in servers})
    log("before: " + load_before)
    if busy_warning(load_before):
        log(busy_warning(load_before))

    blocks: list[Block] = []
    hash_mib_s = 0.0
    for size_m in sizes:
        size = size_m * MiB
        src_path = os.path.join(tmp, f"src-{size_m}.bin")
        t = time.monotonic()
        digest, hs = make_source(src_path, size)
        if size >= 16 * MiB:
            hash_mib_s = hs
        src = Source(src_path, size, digest)
        log(f"source {size_m} MiB written and hashed in {time.monotonic() - t:.1f}s")
        block = Block(size=size)
        blocks.append(block)
        for i, order in interleaved(list(PEERS), runs):
            n = i + 1
            block.orders.append(", ".join(order))
            for name in order:
                t0 = time.monotonic()
                if name == "streamsvc":
                    v, note = m_server(svc, src, f"up/{size_m}-{n}.bin", args.timeout)
                elif name == "twisted.web":
                    v, note = m_server(peer, src, f"up/{size_m}-{n}.bin", args.timeout)
                else:
                    v, note = m_cp(src, os.path.join(cp_dir, f"{size_m}-{n}.bin"),
                                   sync=(name == "cp + fsync"))
                block.add(name, v, note)
                shown = ", ".join(f"{key}={fmt(x, key)}" for key, x in v.items())
                log(f"  [{size_m} MiB] run {n}/{runs} {name}: {shown} [{note}] "
                    f"({time.monotonic() - t0:.1f}s)")
        os.unlink(src_path)
    for s in servers:
        s.settle()
    load_after = other_cpu_users(ours={s.pid for s in servers})

    print(f"PUT /files: streamsvc vs stock twisted.web vs cp; sizes {','.join(map(str, sizes))} MiB; "
          f"{runs} runs per size, order rotated each run (streamsvc, twisted.web, cp, cp + fsync); "
          f"quick={args.quick}")
    print("client: " + shlex.join([CURL, "-s", "-o", "/dev/null", "-w",
                                   "%{http_code} %{time_total} %{size_upload}", "-T", "SRC",
                                   "-H", "Authorization: Bearer benchtoken",
                                   "http://127.0.0.1:PORT/files/up/N.bin"])
          + "  (Expect: 100-continue left on; MiB/s = size / time_total)")
    for s in servers:
        print(f"server {s.name}: {shlex.join(s.argv)}   (cwd {tmp})")
    print()
    print_machine(machine_info(servers, tmp, hash_mib_s), load_before, load_after, servers)
    print()
    report(blocks)
    print()


def main() -> int:
    ap = argparse.ArgumentParser(
        description="PUT /files: streamsvc vs a stock twisted.web upload vs cp")
    ap.add_argument("--runs", type=int, default=None, help="runs per size [5; --quick: 2]")
    ap.add_argument("--quick", action="store_true", help="2 runs, 256 MiB")
    ap.add_argument("--size-mib", type=int, default=None, help="upload size [1024; --quick 256]")
    ap.add_argument("--sizes", default=None,
                    help="comma-separated upload sizes in MiB, one report block each "
                         "[just --size-mib]")
    ap.add_argument("--only", default="upload", help="scenarios: upload (the only one)")
    ap.add_argument("--timeout", type=float, default=600.0, help="curl --max-time per upload [600]")
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

    if set(args.only.split(",")) != {"upload"}:
        ap.error("--only: the one scenario is 'upload'")
    quick = args.quick
    runs = args.runs if args.runs is not None else (2 if quick else 5)
    if runs < 1:
        ap.error("--runs must be at least 1")
    size_mib = args.size_mib if args.size_mib is not None else (256 if quick else 1024)
    try:
        sizes = [int(x) for x in args.sizes.split(",")] if args.sizes else [size_mib]
    except ValueError:
        ap.error("--sizes: comma-separated whole numbers of MiB")
    if any(s < 1 for s in sizes):
        ap.error("sizes must be at least 1 MiB")

    return run_script(lambda run: bench(run, args, runs, sizes), prefix="streamsvc-upload-",
                      tmpdir=args.tmpdir, keep=args.keep)


if __name__ == "__main__":
    sys.exit(main())
