#!/usr/bin/env python3
"""
The seeds' backpressure experiment (issue 13 section 6): a client that reads
a generated stream at 10 MiB/s, against streamsvc's GET /generate (a Python
generator pulled only as fast as the client reads), the same with a slow
source, and a stock twisted.web resource that ignores backpressure.

Each server runs in its own process, started by this script as

    python bench/backpressure.py --serve streamsvc --port-file F --data-dir D --log L
    python bench/backpressure.py --serve naive     --port-file F --data-dir D --log L

which builds the server in-process and listens on an ephemeral port on
127.0.0.1.  streamsvc's Site comes from its own config parser and site builder
(``parse_config`` of a small tap.conf text with ``[limits]
generate_max_bytes = 64GiB``, then ``prepare_data_dir`` and ``build_site``:
what ``twistd -n streamsvc`` serves).  Before the site is built the child
replaces ``streamsvc.generate.generated`` (the generator GET /generate pulls
its chunks from) with a wrapper that counts the bytes it yields, per response
and in total, and logs each response's count when the generator is closed;
a bench-only leaf ``/_produced`` answers those counters as JSON.  Two
streamsvc children run, one per URL:

  streamsvc        /generate?bytes=4GiB&chunk=1MiB
  streamsvc-delay  /generate?bytes=4GiB&chunk=1MiB&delay=50
                   (each 1 MiB chunk is a Deferred firing 50 ms later: a slow
                   source, 20 MiB/s at most)

The peer, ``naive``, is stock twisted.web: ``Site`` over a root ``Resource``
with a ``generate`` leaf whose ``render_GET`` sets ``Content-Length`` to
4 GiB and writes the same pattern (``byte[i] = i % 251``, a fresh 1 MiB bytes
object per chunk) with ``request.write`` from a loop scheduled through
``reactor.callLater(0, ...)``, with no producer, until done or until
``notifyFinish`` fires (the connection is gone): ignoring backpressure, as
the seeds put it.  It counts the bytes passed to ``request.write`` and has
the same ``/_produced`` leaf.  Both kinds log to a file through
twisted.python.log, as twistd would.

The client is curl:

    curl -s -o /dev/null --limit-rate 10M --max-time SECONDS \\
         -w '%{http_code} %{size_download} %{time_total}' URL

curl stops itself after --seconds (default 20; --quick 5) with exit code 28,
and prints how many body bytes it received (``%{size_download}``: delivered).
A killed curl prints nothing, so when the driver must stop it early (the
naive server's RSS passed the cap, 3 GiB, --cap-gib) it reads curl's
``wchar`` from ``/proc/PID/io`` (the body bytes it wrote to /dev/null) and
then kills it; the run is reported as capped.  Should the naive server still
grow past twice the cap after that, it is killed.

Per run, of the server process (``/proc/PID/status``): VmRSS just before
curl starts; VmHWM, reset to the current RSS by writing ``5`` to
``/proc/PID/clear_refs`` just before curl starts (and VmRSS sampled every
20 ms, the larger of the two is the peak); VmRSS and the fd count again 1 s
after curl has exited (the server has by then seen the disconnect).
Produced = the server's counter after minus before (read through
``/_produced`` once the run is over, after the "after" figures); the
response's own count, logged when its generator was closed, must agree.
Delivered = curl's ``size_download``.  Produced - delivered is what the
server made that the client never got: the server's own buffers plus the
kernel's socket queues plus curl's buffer.  About 0.2 s before the end the
driver samples those queues with ``ss`` (Send-Q of the server's socket +
Recv-Q of curl's), curl's wchar and the server's count, within a few ms of
each other, to show how much of it is the kernel's.

The naive server keeps the memory it buffered in its heap after the
connection is gone, which would make its next run start high and grow
little: it is restarted (and warmed up again) before each of its runs.  The
streamsvc servers run throughout.  Each server is warmed up (unmeasured)
with one full 8 MiB response first.

Every run does streamsvc, streamsvc-delay, naive, in an order rotated by one
each run; --runs runs (default 3; --quick 2).  Before each run the script
waits until the server holds as many fds as it did idle.  Standard library
only (plus curl and ss); everything on 127.0.0.1; server and curl processes
are killed on exit and the temporary dir removed.  Run it with the Python of
the venv streamsvc is installed in (the output says whether the installed
copy is the working tree or git HEAD).  The machine is shared and noisy: the
output lists other processes that were using CPU when the run started and
ended.  A default run takes about 2.5 minutes (--quick: about 50 s).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shlex
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from _child import PortFileServer, Run, clean_env, log, publish_and_run, run_script  # bench/ is sys.path[0] when run as a script
from _machine import busy_warning, print_machine, machine_lines, other_cpu_users, server_lines, tool_version
from _report import Results, table
from _proc import fd_count, kib_to_mib, proc_status, reset_hwm

HOST = "127.0.0.1"
MiB = 1024 * 1024
GiB = 1024 * MiB
SCRIPT = os.path.abspath(__file__)
CURL = "/usr/bin/curl" if os.path.exists("/usr/bin/curl") else "curl"
CHUNK = MiB                  # bytes per chunk, all servers
TOTAL = 4 * GiB              # Content-Length of every measured response
LIMIT_RATE = "10M"           # curl --limit-rate (curl's M is 1024 * 1024)
WARM_BYTES = 8 * MiB         # the unmeasured warm-up response
RSS_TARGET_MIB = 2.0         # issue 13: streamsvc's RSS growth at most this
CHUNK_TARGET = 2             # issue 13: produced <= delivered + this many chunks
SAMPLE_S = 0.02              # RSS sampling interval during a run
AFTER_S = 1.0                # wait after curl exits before the "after" figures
PERIOD = 251

URLS = {
    "streamsvc": "/generate?bytes=4GiB&chunk=1MiB",
    "streamsvc-delay": "/generate?bytes=4GiB&chunk=1MiB&delay=50",
    "naive": f"/generate?bytes={TOTAL}",
}
WARM_URLS = {
    "streamsvc": "/generate?bytes=8MiB&chunk=1MiB",
    "streamsvc-delay": "/generate?bytes=8MiB&chunk=1MiB&delay=50",
    "naive": f"/generate?bytes={WARM_BYTES}",
}
PEERS = ("streamsvc", "streamsvc-delay", "naive")


# =========================================================================== server side
# (runs in the --serve subprocess; imports Twisted only there)


def serve(args: argparse.Namespace) -> int:
    from twisted.internet import reactor
    from twisted.python import log as tlog
    from twisted.web.resource import Resource
    from twisted.web.server import NOT_DONE_YET, Site

    logfile = open(args.log, "a") if args.log else sys.stdout
    tlog.startLogging(logfile, setStdout=False)

    data_dir = os.path.abspath(args.data_dir)
    info: dict[str, object] = {"kind": args.serve}
    # produced: bytes in total; open: responses still producing; finished: the
    # count of each response whose production ended, in order.
    stats: dict[str, object] = {"produced": 0, "open": 0, "finished": []}

    class Produced(Resource):
        """GET /_produced: the counters, as JSON (bench only)."""

        isLeaf = True

        def render_GET(self, request):  # noqa: N802 (Twisted API)
            request.setHeader(b"content-type", b"application/json")
            request.setHeader(b"cache-control", b"no-store")
            return json.dumps(stats).encode("ascii") + b"\n"

    if args.serve == "streamsvc":
        import streamsvc
        import streamsvc.generate as gen
        from streamsvc.app import build_site, prepare_data_dir
        from streamsvc.config import parse_config

        original = gen.generated

        def counted(total: int, chunk: int):
            """streamsvc's generator, counting what it yields."""
            n = 0
            stats["open"] += 1
            try:
                for data in original(total, chunk):
                    n += len(data)
                    stats["produced"] += len(data)
                    yield data
            finally:
                stats["open"] -= 1
                stats["finished"].append(n)
                tlog.msg(f"bench: /generate generator closed after yielding {n} bytes "
                         f"({n / MiB:.1f} MiB) of {total}")

        gen.generated = counted   # GenerateResource.render_GET looks it up at each call

        text = (
            "[server]\n"
            f"listen = tcp:0:interface={HOST}\n"
            f"data_dir = {data_dir}\n"
            "[limits]\n"
            "generate_max_bytes = 64GiB\n"
        )
        config = parse_config(text, "backpressure.conf")
        prepare_data_dir(config)
        site = build_site(config, reactor=reactor)
        site.resource.putChild(b"_produced", Produced())
        info["streamsvc_file"] = os.path.dirname(os.path.abspath(streamsvc.__file__))
        info["generate_max_bytes"] = config.limits.generate_max_bytes
        info["rate_limit"] = config.limits.rate_limit
        info["client_rate_limit"] = config.limits.client_rate_limit
        info["conf"] = text
    elif args.serve == "naive":
        pattern = bytes(i % PERIOD for i in range(PERIOD)) * (CHUNK // PERIOD + 2)

        class Generate(Resource):
            """
            GET /generate?bytes=N (default 4 GiB): the pattern, written with
            request.write 1 MiB per reactor turn, no producer: it ignores
            backpressure.
            """

            isLeaf = True

            def render_GET(self, request):  # noqa: N802 (Twisted API)
                total = int(request.args.get(b"bytes", [b"%d" % TOTAL])[0])
                request.setHeader(b"content-type", b"application/octet-stream")
                request.setHeader(b"content-length", b"%d" % total)
                state = {"sent": 0, "done": False}
                stats["open"] += 1

                def finished(result):
                    state["done"] = True
                    stats["open"] -= 1
                    stats["finished"].append(state["sent"])
                    why = "finished" if result is None else "connection lost"
                    tlog.msg(f"bench: naive response {why} after writing {state['sent']} bytes "
                             f"({state['sent'] / MiB:.1f} MiB) of {total}")
                    return None  # the lost connection is expected: no unhandled error

                request.notifyFinish().addBoth(finished)

                def step():
                    if state["done"]:
                        return
                    sent = state["sent"]
                    size = min(CHUNK, total - sent)
                    if size <= 0:
                        request.finish()
                        return
                    start = sent % PERIOD
                    data = pattern[start:start + size]   # a fresh bytes object
                    state["sent"] = sent + size
                    stats["produced"] += size
                    request.write(data)
                    if state["sent"] >= total:
                        request.finish()
                    else:
                        reactor.callLater(0, step)

                reactor.callLater(0, step)
                return NOT_DONE_YET

        root = Resource()
        root.putChild(b"generate", Generate())
        root.putChild(b"_produced", Produced())
        site = Site(root)
    else:
        raise SystemExit(f"unknown server kind {args.serve!r}")

    port = reactor.listenTCP(0, site, interface=HOST)

    return publish_and_run(reactor, info, args.port_file, port=port.getHost().port)


# =========================================================================== driver


@dataclass
class Server(PortFileServer):
    name: str          # streamsvc | streamsvc-delay | naive
    kind: str          # streamsvc | naive
    tmp: str
    data_dir: str
    port: int = 0
    idle_fds: int = 0
    starts: int = 0
    info: dict = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    script = SCRIPT

    @property
    def label(self) -> str:
        return self.name.replace("-", "_")

    def url(self, path: str) -> str:
        return f"http://{HOST}:{self.port}{path}"

    def start(self) -> None:
        self.launch()
        self.starts += 1
        self.await_port()
        self.warm_up()

    def restart(self) -> None:
        self.stop()
        self.start()

    def warm_up(self) -> None:
        """One full WARM_BYTES response, unmeasured; then the idle fd count."""
        self.idle_fds = fd_count(self.pid)
        before = self.produced()["produced"]
        r = subprocess.run([CURL, "-s", "-S", "-o", "/dev/null", "-w", "%{http_code} %{size_download}",
                            "--max-time", "60", self.url(WARM_URLS[self.name])],
                           capture_output=True, text=True, timeout=90, env=clean_env(),
                           stdin=subprocess.DEVNULL)
        parts = r.stdout.split()
        if r.returncode != 0 or parts != ["200", str(WARM_BYTES)]:
            raise RuntimeError(f"{self.name} warm-up: curl rc {r.returncode}, {r.stdout!r} "
                               f"{r.stderr.strip()!r}\n" + self.tail(10))
        self.settle(max_wait=5.0)
        got = self.produced()["produced"] - before
        if got != WARM_BYTES:
            raise RuntimeError(f"{self.name} warm-up: server counted {got} bytes, not {WARM_BYTES}")
        self.settle(max_wait=5.0)   # fds opened lazily by the first requests: the new idle
        self.idle_fds = fd_count(self.pid)

    def produced(self) -> dict:
        """The server's /_produced counters."""
        conn = http.client.HTTPConnection(HOST, self.port, timeout=10)
        try:
            conn.request("GET", "/_produced", headers={"Connection": "close"})
            r = conn.getresponse()
            body = r.read()
            if r.status != 200:
                raise RuntimeError(f"{self.name} /_produced: status {r.status}")
            return json.loads(body)
        finally:
            conn.close()

    def closed_counts(self) -> list[int]:
        """The per-response counts the server logged when each response's production ended."""
        out = []
        try:
            with open(self.logfile, "rb") as fh:
                for line in fh.read().decode("utf-8", "replace").splitlines():
                    if "bench: " in line and " after " in line:
                        words = line.split(" after ", 1)[1].split()
                        if words[0] in ("yielding", "writing"):
                            out.append(int(words[1]))
        except (OSError, ValueError, IndexError):
            pass
        return out


# --------------------------------------------------------------------------- /proc, ss


def curl_wchar(pid: int) -> int | None:
    """Bytes curl has written (to /dev/null: the body), from /proc/PID/io."""
    try:
        with open(f"/proc/{pid}/io") as f:
            for line in f:
                if line.startswith("wchar:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def socket_queues(port: int) -> tuple[int, int] | None:
    """(Send-Q of the server's socket on `port`, Recv-Q of its peer's), from ss."""
    try:
        r = subprocess.run(["ss", "-tnH", "state", "established",
                            f"( sport = :{port} or dport = :{port} )"],
                           capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    send_q = recv_q = None
    for line in r.stdout.splitlines():
        f = line.split()
        if len(f) < 4:
            continue
        if f[2].rsplit(":", 1)[-1] == str(port):
            send_q = int(f[1])
        elif f[3].rsplit(":", 1)[-1] == str(port):
            recv_q = int(f[0])
    if send_q is None or recv_q is None:
        return None
    return send_q, recv_q


class Watch:
    """
    During a run: the server's VmRSS every SAMPLE_S s (the largest kept), the
    snapshot (socket queues, curl's wchar, the server's count) once at
    `queues_at` s, and the cap: past `cap_kib` of RSS,
    curl's wchar is read and curl killed; past twice that, the server too.
    """

    def __init__(self, srv: Server, curl: subprocess.Popen, queues_at: float,
                 cap_kib: int | None, baseline: int) -> None:
        self.srv, self.curl = srv, curl
        self.queues_at, self.cap_kib, self.baseline = queues_at, cap_kib, baseline
        self.t0 = time.monotonic()
        self.max_rss = 0
        self.queues: tuple[int, int] | None = None
        self.queues_t: float | None = None
        self.snap_wchar: int | None = None       # curl's wchar at the snapshot
        self.snap_produced: int | None = None    # the server's count at the snapshot
        self.capped_at: float | None = None     # s after curl started
        self.capped_rss = 0
        self.capped_wchar: int | None = None
        self.server_killed = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Watch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)

    def snapshot(self, t: float) -> None:
        """Socket queues, curl's wchar and the server's count, as close together as we can."""
        self.queues_t = t
        self.queues = socket_queues(self.srv.port)
        self.snap_wchar = curl_wchar(self.curl.pid)
        try:
            self.snap_produced = self.srv.produced()["produced"] - self.baseline
        except (OSError, RuntimeError, ValueError, http.client.HTTPException):
            self.snap_produced = None

    def _run(self) -> None:
        pid = self.srv.pid
        while not self._stop.is_set():
            try:
                rss = proc_status(pid).get("VmRSS", 0)
            except OSError:
                return
            self.max_rss = max(self.max_rss, rss)
            t = time.monotonic() - self.t0
            curl_running = self.curl.poll() is None
            if self.queues_t is None and curl_running and t >= self.queues_at:
                self.snapshot(t)
            if self.cap_kib is not None and rss > self.cap_kib:
                if self.capped_at is None and curl_running:
                    self.capped_at, self.capped_rss = t, rss
                    if self.queues_t is None:
                        self.snapshot(t)
                    self.capped_wchar = curl_wchar(self.curl.pid)
                    try:
                        self.curl.kill()
                    except OSError:
                        pass
                elif rss > 2 * self.cap_kib and not self.server_killed:
                    self.server_killed = True    # it did not stop when curl went away
                    self.srv.stop()
                    return
            self._stop.wait(SAMPLE_S)


# --------------------------------------------------------------------------- one run


def curl_argv(url: str, seconds: float) -> list[str]:
    return [CURL, "-s", "-o", "/dev/null", "--limit-rate", LIMIT_RATE, "--max-time", f"{seconds:g}",
            "-w", "%{http_code} %{size_download} %{time_total}", url]


def m_run(srv: Server, seconds: float, cap_kib: int) -> tuple[dict, str]:
    pre = srv.settle()
    pid = srv.pid
    c0 = srv.produced()
    closed0 = len(srv.closed_counts())
    pre += srv.settle(max_wait=5.0)
    fds_before = fd_count(pid)
    rss_before = proc_status(pid)["VmRSS"]
    hwm_ok = reset_hwm(pid)
    argv = curl_argv(srv.url(URLS[srv.name]), seconds)
    curl = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=clean_env(), stdin=subprocess.DEVNULL)
    killed_by_driver = False
    try:
        with Watch(srv, curl, max(seconds - 0.2, 0.0),
                   cap_kib if srv.kind == "naive" else None, c0["produced"]) as w:
            try:
                out, err = curl.communicate(timeout=seconds + 15)
            except subprocess.TimeoutExpired:
                killed_by_driver = True
                curl.kill()
                out, err = curl.communicate(timeout=10)
            curl_s = time.monotonic() - w.t0
            if w.server_killed:
                raise RuntimeError(f"{srv.name}: RSS passed twice the cap after curl was killed; "
                                   "server killed")
            time.sleep(AFTER_S)      # the server sees the disconnect
            st = proc_status(pid)
            fds_after = fd_count(pid)
    finally:
        if curl.poll() is None:
            curl.kill()
            curl.wait(10)
    # The response's production must be over: wait for it (a little), then count.
    t0 = time.monotonic()
    while True:
        c1 = srv.produced()
        if c1["open"] == 0 or time.monotonic() - t0 > 5:
            break
        time.sleep(0.1)
    srv.check_alive()
    produced = c1["produced"] - c0["produced"]
    new_finished = c1["finished"][len(c0["finished"]):]
    closed = srv.closed_counts()[closed0:]
    problems = []
    if c1["open"]:
        problems.append(f"{c1['open']} response(s) still producing {time.monotonic() - t0:.1f}s after the run")
    if new_finished != [produced]:
        problems.append(f"finished responses {new_finished} vs produced {produced}")
    if closed != new_finished:
        problems.append(f"logged counts {closed} vs counters {new_finished}")

    capped = w.capped_at is not None
    parts = out.split()
    if capped:
        if w.capped_wchar is None:
            raise RuntimeError(f"{srv.name}: capped, but curl's /proc/PID/io was not readable")
        delivered = w.capped_wchar
        how = (f"capped: RSS {kib_to_mib(w.capped_rss):.0f} MiB at {w.capped_at:.2f}s, curl killed; "
               f"delivered = curl's wchar then")
    else:
        if len(parts) != 3 or parts[0] != "200":
            raise RuntimeError(f"{srv.name}: curl rc {curl.returncode}, stdout {out!r}, "
                               f"stderr {err.strip()!r}\n" + srv.tail(10))
        delivered = int(float(parts[1]))
        how = f"curl rc {curl.returncode}{' (killed by the driver)' if killed_by_driver else ''}, " \
              f"time_total {float(parts[2]):.2f}s"
    curl_time = w.capped_at if capped else (float(parts[2]) if len(parts) == 3 else curl_s)
    peak = max(st["VmHWM"], w.max_rss) if hwm_ok else w.max_rss
    excess = produced - delivered
    kq = (w.queues[0] + w.queues[1]) if w.queues else None
    snap_excess = (w.snap_produced - w.snap_wchar
                   if w.snap_produced is not None and w.snap_wchar is not None else None)
    nan = float("nan")
    values = {
        "rate": delivered / MiB / curl_time if curl_time else float("nan"),
        "rss_before": kib_to_mib(rss_before),
        "rss_peak": kib_to_mib(peak),
        "rss_after": kib_to_mib(st["VmRSS"]),
        "peak_growth": kib_to_mib(peak - rss_before),
        "after_growth": kib_to_mib(st["VmRSS"] - rss_before),
        "produced": produced / MiB,
        "delivered": delivered / MiB,
        "excess_mib": excess / MiB,
        "excess_chunks": excess / CHUNK,
        "snap_excess": snap_excess / MiB if snap_excess is not None else nan,
        "kernel_q": kq / MiB if kq is not None else nan,
        "rest_chunks": ((snap_excess - kq) / CHUNK if snap_excess is not None and kq is not None
                        else nan),
        "fds_before": float(fds_before),
        "fds_after": float(fds_after),
        "capped": 1.0 if capped else 0.0,
    }
    q = (f"snapshot at {w.queues_t:.2f}s: produced {w.snap_produced}, curl wrote {w.snap_wchar}, "
         f"server Send-Q {w.queues[0]} + curl Recv-Q {w.queues[1]} bytes"
         if w.queues else "socket queues not sampled")
    note = (f"{pre}{how}; produced {produced} bytes, delivered {delivered} bytes, "
            f"difference {excess} bytes = {excess / CHUNK:.2f} chunks; {q}; "
            f"RSS before {kib_to_mib(rss_before):.1f} MiB, VmHWM {kib_to_mib(st['VmHWM']):.1f}"
            f"{'' if hwm_ok else ' (not reset: clear_refs failed)'}, max sampled "
            f"{kib_to_mib(w.max_rss):.1f}, after {kib_to_mib(st['VmRSS']):.1f} MiB; "
            f"fds {fds_before} -> {fds_after}"
            + (f"; PROBLEMS: {'; '.join(problems)}" if problems else "; counters and log agree"))
    return values, note


# --------------------------------------------------------------------------- report


METRICS = [  # key, label
    ("rate", "delivered rate (MiB/s)"),
    ("rss_before", "server RSS before (MiB)"),
    ("rss_peak", "server RSS peak, VmHWM (MiB)"),
    ("rss_after", "server RSS after (MiB)"),
    ("peak_growth", "server RSS peak growth (MiB) [lower is better]"),
    ("after_growth", "server RSS growth after (MiB)"),
    ("produced", "produced by the server (MiB)"),
    ("delivered", "delivered to curl (MiB)"),
    ("excess_mib", "produced - delivered (MiB) [lower is better]"),
    ("excess_chunks", "produced - delivered (1 MiB chunks)"),
    ("snap_excess", "~0.2 s before the end: produced - delivered (MiB)"),
    ("kernel_q", "  of it in the socket queues (MiB)"),
    ("rest_chunks", "  the rest, in the server or curl (1 MiB chunks)"),
    ("fds_before", "server fds before"),
    ("fds_after", "server fds after"),
    ("capped", "runs stopped at the RSS cap"),
]
COUNT_KEYS = ("fds_before", "fds_after")




def fmt(v: float | None, key: str) -> str:
    if v is None or v != v:
        return "-"
    if key in COUNT_KEYS:
        return f"{v:.0f}" if v == int(v) else f"{v:.1f}"
    if key == "capped":
        return f"{v:.0f}"
    return f"{v:.2f}" if abs(v) < 100 else f"{v:.1f}"


def report(res: Results, runs: int, seconds: float, cap_gib: float) -> None:
    print(f"Client reading at {LIMIT_RATE}/s for {seconds:g}s (medians of {runs} runs; "
          f"'runs stopped at the RSS cap' is a count)")
    rows = [("metric",) + PEERS]
    for key, label in METRICS:
        if key == "capped":
            rows.append((label,) + tuple(fmt(sum(res.all(p, key)), key) for p in PEERS))
        else:
            rows.append((label,) + tuple(fmt(res.median(p, key), key) for p in PEERS))
    table(rows, "  ")
    print()
    rows = [("check", "value", "target", "verdict")]
    for p in PEERS[:2]:
        peaks = res.all(p, "peak_growth")
        if peaks:
            worst = max(peaks)
            rows.append((f"{p} RSS peak growth, worst run", f"{worst:.2f} MiB (median "
                         f"{statistics.median(peaks):.2f})", f"<= {RSS_TARGET_MIB:g} MiB",
                         "PASS" if worst <= RSS_TARGET_MIB else "MISS"))
        ex = res.all(p, "excess_chunks")
        if ex:
            worst = max(ex)
            rows.append((f"{p} produced - delivered, worst run", f"{worst:.2f} chunks (median "
                         f"{statistics.median(ex):.2f})", f"<= {CHUNK_TARGET} chunks",
                         "PASS" if worst <= CHUNK_TARGET else "MISS"))
        fb, fa = res.all(p, "fds_before"), res.all(p, "fds_after")
        if fb and fa:
            leaked = max(a - b for a, b in zip(fa, fb))
            rows.append((f"{p} fds after - before, worst run", f"{leaked:+.0f}", "<= 0",
                         "PASS" if leaked <= 0 else "MISS"))
    s, n = res.median("streamsvc", "peak_growth"), res.median("naive", "peak_growth")
    rows.append(("naive / streamsvc RSS peak growth",
                 f"{n / s:.0f}x ({fmt(n, 'peak_growth')} / {fmt(s, 'peak_growth')} MiB)"
                 if s and n is not None and s > 0 else
                 f"{fmt(n, 'peak_growth')} vs {fmt(s, 'peak_growth')} MiB", "-", "-"))
    ne = res.all("naive", "excess_mib")
    if ne:
        rows.append(("naive produced - delivered, worst run", f"{max(ne):.0f} MiB (median "
                     f"{statistics.median(ne):.0f})", "-", "-"))
    capped = int(sum(res.all("naive", "capped")))
    rows.append(("naive runs stopped at the RSS cap", f"{capped} of {len(res.all('naive', 'capped'))}",
                 f"cap {cap_gib:g} GiB", "-"))
    table(rows, "  ")
    print()
    print("Notes: produced = bytes the server's generator yielded (streamsvc: a wrapper around "
          "streamsvc.generate.generated; naive: bytes passed to request.write), read from the "
          "server's /_produced counters after the run and checked against the count each "
          "response logged when it ended; delivered = curl's %{size_download} (for a run stopped "
          "at the cap: curl's wchar from /proc/PID/io just before it was killed).  "
          "Produced - delivered = the server's buffers + the kernel's socket queues + curl's "
          "buffer.  ~0.2 s before curl's end (or at the cap) the driver takes a snapshot within a "
          "few ms: the socket queues (ss: Send-Q of the server's socket + Recv-Q of curl's), "
          "curl's wchar (delivered) and the server's /_produced count; the rest is what the "
          "server process (or curl) held then (the three are read a few ms apart, in that order, "
          "so the rest can come out slightly negative).  Peak = max(VmHWM after clear_refs, VmRSS sampled "
          f"every {SAMPLE_S * 1e3:g} ms); 'after' is {AFTER_S:g} s after curl exited.  The naive "
          "server is restarted and warmed up before each of its runs (the memory it buffered "
          "stays in its heap); the streamsvc servers run throughout.")
    print()
    print("Individual runs (in run order):")
    for j, order in enumerate(res.orders, 1):
        print(f"  run {j} order: {order}")
    lw = max(len(label) for _, label in METRICS)
    for name in PEERS:
        for key, label in METRICS:
            if key in res.values.get(name, {}):
                print(f"  {name:<15} {label:<{lw}} " + ", ".join(fmt(v, key) for v in res.values[name][key]))
    for name in PEERS:
        for j, n in enumerate(res.notes.get(name, []), 1):
            print(f"  {name:<15} run {j}: {n}")


def machine_info(servers: list[Server]) -> list[str]:
    """
    The shared machine and server lines, plus what this experiment depends
    on: the kernel's socket buffer sizes (part of produced - delivered), the
    curl and ss that measure it, streamsvc's limits that could cap
    /generate, and how often each server was started (the naive one is
    restarted before each of its runs, so its pid is that of the last).
    """
    lines = machine_lines()
    tcp = []
    for k in ("tcp_rmem", "tcp_wmem"):
        try:
            with open(f"/proc/sys/net/ipv4/{k}") as f:
                tcp.append(f"{k} {' '.join(f.read().split())}")
        except OSError:
            pass
    if tcp:
        lines.append("socket buffers: " + ", ".join(tcp))
    lines.append(f"client: {tool_version([CURL, '--version'])}; {tool_version(['ss', '--version'])}")
    lines += server_lines(
        servers,
        streamsvc_note=lambda i: (f"generate_max_bytes {i.get('generate_max_bytes')}, rate_limit "
                                  f"{i.get('rate_limit')}, client_rate_limit {i.get('client_rate_limit')}"),
        peer_note=lambda i: ("stock twisted.web Site + Resource, request.write from "
                             "reactor.callLater(0, ...), no producer"))
    lines.append("server starts: " + ", ".join(f"{s.name} {s.starts}x" for s in servers))
    return lines


# --------------------------------------------------------------------------- main


def measure(run: Run, args: argparse.Namespace, runs: int, seconds: float, cap_kib: int) -> None:
    """
    The whole experiment in run.tmp: the three servers (in run.servers, so
    they are stopped however it ends) warmed up, --runs rotated runs, then
    the set-up, the machine and the report.
    """
    tmp = run.tmp
    servers: list[Server] = [
        Server("streamsvc", "streamsvc", tmp, os.path.join(tmp, "data-streamsvc")),
        Server("streamsvc-delay", "streamsvc", tmp, os.path.join(tmp, "data-streamsvc-delay")),
        Server("naive", "naive", tmp, os.path.join(tmp, "data-naive"))]
    run.servers.extend(servers)
    by_name = {s.name: s for s in servers}
    for s in servers:
        s.start()
        st = proc_status(s.pid)
        log(f"{s.name} (pid {s.pid}, port {s.port}) ready; RSS {kib_to_mib(st['VmRSS']):.1f} MiB, "
            f"{s.idle_fds} fds idle")

    load_before = other_cpu_users(ours={s.pid for s in servers})
    log("before: " + load_before)
    if busy_warning(load_before):
        log(busy_warning(load_before))

    res = Results()
    naive_runs = 0
    for i in range(1, runs + 1):
        k = (i - 1) % len(PEERS)
        order = list(PEERS[k:] + PEERS[:k])
        res.orders.append(", ".join(order))
        for name in order:
            srv = by_name[name]
            if srv.kind == "naive":
                if naive_runs:
                    srv.restart()    # the GiBs it buffered stay in its heap
                naive_runs += 1
            t0 = time.monotonic()
            v, note = m_run(srv, seconds, cap_kib)
            res.add(name, v, note)
            shown = ", ".join(f"{key}={fmt(x, key)}" for key, x in v.items())
            log(f"  run {i}/{runs} {name}: {shown} ({time.monotonic() - t0:.1f}s)")
    for s in servers:
        s.settle()
    load_after = other_cpu_users(ours={s.pid for s in servers})

    print(f"Backpressure (issue 13 section 6): a client reading at {LIMIT_RATE}/s for {seconds:g}s "
          f"from a 4 GiB generated stream; {runs} runs, order rotated each run "
          f"({', '.join(PEERS)}); quick={args.quick}")
    print("client: " + shlex.join(curl_argv("http://127.0.0.1:PORT" + URLS["streamsvc"], seconds)))
    for name in PEERS:
        print(f"  {name}: URL path {URLS[name]}")
    for s in servers:
        print(f"server {s.name}: {shlex.join(s.argv)}   (cwd {tmp})")
    conf = servers[0].info.get("conf", "")
    print("streamsvc tap.conf: " + " | ".join(l for l in str(conf).splitlines() if l))
    print()
    print_machine(machine_info(servers), load_before, load_after, servers)
    print()
    report(res, runs, seconds, args.cap_gib)
    print()


def main() -> int:
    ap = argparse.ArgumentParser(
        description="Backpressure: a 10 MiB/s client against streamsvc's /generate and a naive "
                    "twisted.web writer")
    ap.add_argument("--runs", type=int, default=None, help="runs [3; --quick: 2]")
    ap.add_argument("--seconds", type=float, default=None, help="seconds curl reads [20; --quick: 5]")
    ap.add_argument("--quick", action="store_true", help="2 runs of 5 s")
    ap.add_argument("--cap-gib", type=float, default=3.0,
                    help="stop a naive run when the server's RSS passes this [3]")
    ap.add_argument("--tmpdir", default=None, help="where to create the temporary dir [system default]")
    ap.add_argument("--keep", action="store_true", help="keep the temporary dir (logs) at the end")
    # internal modes
    ap.add_argument("--serve", choices=("streamsvc", "naive"), help=argparse.SUPPRESS)
    ap.add_argument("--port-file", help=argparse.SUPPRESS)
    ap.add_argument("--data-dir", help=argparse.SUPPRESS)
    ap.add_argument("--log", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.serve:
        if not args.port_file or not args.data_dir:
            ap.error("--serve needs --port-file and --data-dir")
        return serve(args)

    quick = args.quick
    runs = args.runs if args.runs is not None else (2 if quick else 3)
    seconds = args.seconds if args.seconds is not None else (5.0 if quick else 20.0)
    if runs < 1:
        ap.error("--runs must be at least 1")
    if seconds <= 0.5:
        ap.error("--seconds must be more than 0.5")
    if not 0.1 <= args.cap_gib <= 8:
        ap.error("--cap-gib must be between 0.1 and 8")
    cap_kib = int(args.cap_gib * GiB / 1024)

    return run_script(lambda run: measure(run, args, runs, seconds, cap_kib),
                      prefix="streamsvc-backpressure-", tmpdir=args.tmpdir, keep=args.keep)


if __name__ == "__main__":
    sys.exit(main())
