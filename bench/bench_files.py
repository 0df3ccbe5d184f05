#!/usr/bin/env python3
"""
Benchmark streamsvc's /files against twisted.web.static.File on the same files.

Both servers run as separate twistd processes (same twistd, same logging to a
file) on ephemeral ports on 127.0.0.1, serving the same temporary directory:

    twistd -n --pidfile= --logfile=LOG streamsvc --listen tcp:PORT:interface=127.0.0.1 --data-dir DATA
    twistd -n --pidfile= --logfile=LOG web --listen tcp:PORT:interface=127.0.0.1 --path DATA/files

(``twistd web --path`` is exactly ``Site(File(path))``.)  Every measurement is
repeated --runs times per server, interleaved server by server (streamsvc run 1,
static run 1, streamsvc run 2, ...), and the medians are reported.

Measurements:
  1. one big download with curl (MiB/s, size verified)
  2. 8 concurrent downloads of the mid-size file with curl (aggregate MiB/s, wall time)
  3. requests/s for a 4 KiB file, 32 connections (wrk, or ab -k as a fallback)
  4. server RSS growth per slow client (bench/slow_clients.py; N clients reading
     the mid-size file at 20 KB/s each)
  5. server fds left open after M downloads aborted mid-way with an RST

Standard library only; needs curl, and wrk or ab, on PATH.  Only 127.0.0.1 is
ever contacted.
"""

from __future__ import annotations

import argparse
import http.client
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

from _child import ChildServer, clean_env, interrupt_on_signals, log, run_failed  # bench/ is sys.path[0] when run as a script
from _proc import fd_count

HOST = "127.0.0.1"
MiB = 1024 * 1024
HERE = os.path.dirname(os.path.abspath(__file__))
SLOW_CLIENTS = os.path.join(HERE, "slow_clients.py")

# Child processes that must not outlive us (clients; servers are tracked separately).
_children: list[subprocess.Popen] = []


# --------------------------------------------------------------------------- servers


@dataclass
class Server(ChildServer):
    name: str
    argv_template: list[str]   # "{port}" is replaced by the port
    url_path: str              # path prefix of the files, ending in "/"
    logfile: str
    outfile: str
    port: int = 0
    proc: subprocess.Popen | None = None
    starts: int = 0
    results: dict[str, list[float]] = field(default_factory=dict)
    notes: dict[str, list[str]] = field(default_factory=dict)

    @property
    def argv(self) -> list[str]:
        return [a.replace("{port}", str(self.port)) for a in self.argv_template]

    def url(self, name: str) -> str:
        return f"http://{HOST}:{self.port}{self.url_path}{name}"

    def path(self, name: str) -> str:
        return self.url_path + name

    def start(self, cwd: str, port: int) -> None:
        self.port = port
        self.starts += 1
        out = open(self.outfile, "ab")
        try:
            self.proc = subprocess.Popen(
                self.argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, env=clean_env(), start_new_session=True,
            )
        finally:
            out.close()


    def add(self, metric: str, value: float, note: str = "") -> None:
        self.results.setdefault(metric, []).append(value)
        self.notes.setdefault(metric, []).append(note)


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    c = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def wait_ready(srv: Server, path: str, size: int, timeout: float = 60.0) -> float:
    t0 = time.monotonic()
    last = ""
    while time.monotonic() - t0 < timeout:
        srv.check_alive()
        try:
            status, body = http_get(srv.port, path, timeout=2.0)
            if status == 200 and len(body) == size:
                return time.monotonic() - t0
            last = f"HTTP {status}, {len(body)} bytes"
        except OSError as e:
            last = repr(e)
        time.sleep(0.1)
    raise RuntimeError(f"{srv.name} did not answer GET {path} within {timeout:.0f}s ({last})\n" + srv.tail())


# --------------------------------------------------------------------------- /proc


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(b")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def rss_kib(pid: int) -> int:
    """VmRSS of the process and any descendants, in KiB."""
    total = 0
    for p in descendants(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total


def settle_fds(pid: int, target: int | None = None, max_wait: float = 10.0,
               stable_for: float = 2.0) -> tuple[int, float]:
    """Poll the fd count until it equals target, or is unchanged for stable_for s, or max_wait."""
    t0 = time.monotonic()
    last = fd_count(pid)
    since = t0
    while True:
        now = time.monotonic()
        if target is not None and last == target:
            return last, now - t0
        if now - since >= stable_for or now - t0 >= max_wait:
            return last, now - t0
        time.sleep(0.1)
        cur = fd_count(pid)
        if cur != last:
            last, since = cur, time.monotonic()


# --------------------------------------------------------------------------- measurements


def curl_argv(url: str, max_time: float) -> list[str]:
    return ["curl", "-s", "--noproxy", "*", "--max-time", str(int(max_time)), "-o", "/dev/null",
            "-w", "%{http_code} %{size_download} %{speed_download}", url]


def parse_curl(out: str, expect: int, what: str) -> tuple[int, float]:
    parts = out.split()
    if len(parts) != 3:
        raise RuntimeError(f"{what}: unexpected curl output {out!r}")
    code, size, speed = int(parts[0]), int(float(parts[1])), float(parts[2])
    if code != 200 or size != expect:
        raise RuntimeError(f"{what}: HTTP {code}, {size} bytes (expected 200, {expect})")
    return size, speed


def m_single(srv: Server, name: str, size: int) -> None:
    r = subprocess.run(curl_argv(srv.url(name), 600), capture_output=True, text=True, env=clean_env())
    if r.returncode != 0:
        raise RuntimeError(f"curl failed rc={r.returncode}: {r.stderr.strip()}")
    _, speed = parse_curl(r.stdout, size, "single download")
    srv.add("single", speed / MiB)


def m_concurrent(srv: Server, name: str, size: int, n: int) -> None:
    argv = curl_argv(srv.url(name), 600)
    env = clean_env()
    procs = []
    t0 = time.monotonic()
    for _ in range(n):
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        _children.append(p)
        procs.append(p)
    outs = []
    for p in procs:
        out, err = p.communicate()
        outs.append((p.returncode, out, err))
    wall = time.monotonic() - t0
    for p in procs:
        _children.remove(p)
    total = 0
    for rc, out, err in outs:
        if rc != 0:
            raise RuntimeError(f"curl failed rc={rc}: {err.strip()}")
        got, _ = parse_curl(out, size, "concurrent download")
        total += got
    srv.add("concurrent", total / MiB / wall, f"{wall:.2f}s")


def m_rps(srv: Server, name: str, tool: str, seconds: int) -> None:
    url = srv.url(name)
    if tool == "wrk":
        argv = ["wrk", "-t2", "-c32", f"-d{seconds}s", url]
    else:
        argv = ["ab", "-q", "-k", "-c", "32", "-n", "20000", url]
    r = subprocess.run(argv, capture_output=True, text=True, env=clean_env(), timeout=seconds + 300)
    pat = r"Requests/sec:\s+([\d.]+)" if tool == "wrk" else r"Requests per second:\s+([\d.]+)"
    m = re.search(pat, r.stdout)
    if r.returncode != 0 or not m:
        raise RuntimeError(f"{tool} failed rc={r.returncode}:\n{r.stdout}\n{r.stderr}")
    notes = []
    for pat2 in (r"Non-2xx or 3xx responses:\s+(\d+)", r"Socket errors:[^\n]*",
                 r"Non-2xx responses:\s+(\d+)", r"Failed requests:\s+([1-9]\d*)"):
        m2 = re.search(pat2, r.stdout)
        if m2:
            notes.append(m2.group(0).strip())
    if notes:
        log(f"    warning: {srv.name} {tool}: " + "; ".join(notes))
    srv.add("rps", float(m.group(1)), "; ".join(notes))


def m_slow_rss(srv: Server, name: str, clients: int, rate: int, steady: float,
               window: float) -> None:
    pid = srv.pid
    # Let anything from the previous measurement drain first.
    settle_fds(pid, max_wait=10.0, stable_for=1.0)
    before = rss_kib(pid)
    argv = [sys.executable, SLOW_CLIENTS, "--host", HOST, "--port", str(srv.port),
            "--path", srv.path(name), "--clients", str(clients), "--rate", str(rate),
            "--duration", str(steady + 2.0), "--header-timeout", "60"]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=clean_env())
    _children.append(p)
    try:
        assert p.stdout is not None
        ready = p.stdout.readline().strip()
        if not ready.startswith("ready"):
            raise RuntimeError(f"slow_clients: unexpected output {ready!r}")
        t_ready = time.monotonic()
        kv = dict(x.split("=", 1) for x in ready.split()[1:])
        # Sample the last `window` seconds of the steady period.
        time.sleep(max(0.0, steady - window))
        samples = []
        end = t_ready + steady
        while True:
            samples.append(rss_kib(pid))
            if time.monotonic() >= end:
                break
            time.sleep(0.25)
        conns = fd_count(pid)
        done = p.stdout.readline().strip()
        p.wait(30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        _children.remove(p)
    dkv = dict(x.split("=", 1) for x in done.split()[1:]) if done.startswith("done") else {}
    during = max(samples)
    per_client = (during - before) / clients
    note = (f"before={before}KiB during={during}KiB headers={kv.get('headers')}/{clients} "
            f"200s={kv.get('status200')} open_at_end={dkv.get('open', '?')} fds={conns}")
    if kv.get("headers") != str(clients) or dkv.get("open") != str(clients):
        log(f"    warning: {srv.name} slow clients: {ready} | {done}")
    srv.add("slow_rss", per_client, note)


def abort_one(port: int, path: str, read_bytes: int) -> None:
    s = socket.create_connection((HOST, port), timeout=30)
    try:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n\r\n".encode())
        got = 0
        head = b""
        while got < read_bytes:
            data = s.recv(262144)
            if not data:
                raise RuntimeError(f"abort client: EOF after {got} bytes; head={head[:80]!r}")
            if got == 0:
                head = data
                if not data.startswith(b"HTTP/1.1 200"):
                    raise RuntimeError(f"abort client: unexpected response {data[:80]!r}")
            got += len(data)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    finally:
        s.close()   # with SO_LINGER (1, 0): RST


def m_aborts(srv: Server, name: str, n: int) -> None:
    pid = srv.pid
    before, _ = settle_fds(pid, max_wait=10.0, stable_for=1.0)
    for _ in range(n):
        abort_one(srv.port, srv.path(name), MiB)
    after, waited = settle_fds(pid, target=before, max_wait=10.0, stable_for=2.0)
    srv.add("abort_fds", after - before, f"{before}->{after} settled in {waited:.1f}s")


# --------------------------------------------------------------------------- report


def fmt(v: float, metric: str) -> str:
    if metric == "abort_fds":
        return f"{v:+.0f}" if v else "0"
    if metric == "rps":
        return f"{v:.0f}"
    return f"{v:.1f}"


def machine_info(twistd: str) -> list[str]:
    lines = [f"nproc: {os.cpu_count()} (affinity {len(os.sched_getaffinity(0))})",
             f"kernel: {platform.release()}",
             f"bench Python: {platform.python_version()} ({sys.executable})"]
    try:
        with open("/proc/cpuinfo") as f:
            model = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "?")
        lines.append(f"cpu: {model}")
    except OSError:
        pass
    py = os.path.join(os.path.dirname(twistd), "python")
    if os.path.exists(py):
        code = ("import sys, platform, importlib.metadata as m\n"
                "def v(n):\n"
                "    try: return m.version(n)\n"
                "    except Exception: return 'not installed'\n"
                "print(f'server Python: {platform.python_version()} ({sys.executable}); '"
                "      f'Twisted {v(\"twisted\")}; streamsvc {v(\"streamsvc\")}')")
        r = subprocess.run([py, "-c", code], capture_output=True, text=True)
        lines.append(r.stdout.strip() or r.stderr.strip())
    else:
        r = subprocess.run([twistd, "--version"], capture_output=True, text=True)
        lines.append(r.stdout.splitlines()[0] if r.stdout else "twistd --version failed")
    for tool in ("curl", "wrk", "ab"):
        path = shutil.which(tool)
        lines.append(f"{tool}: {path or 'missing'}")
    return lines


def report(servers: list[Server], metrics: list[tuple[str, str, str]]) -> None:
    a, b = servers
    rows = [("metric", f"{a.name} (median)", f"{b.name} (median)", f"ratio ({a.name}/{b.name})")]
    for key, label, better in metrics:
        va, vb = a.results.get(key, []), b.results.get(key, [])
        if not va or not vb:
            rows.append((label, "-", "-", "-"))
            continue
        ma, mb = statistics.median(va), statistics.median(vb)
        if key == "abort_fds":
            ratio = f"n/a: difference {ma - mb:+.0f} (lower is better; 0 expected)"
        elif key == "slow_rss":
            ratio = (f"{ma / mb:.2f} (lower is better)" if mb > 1.0
                     else f"n/a: difference {ma - mb:+.1f} KiB (lower is better)")
        else:
            ratio = f"{ma / mb:.2f} (higher is better)" if mb else "n/a"
        rows.append((label, fmt(ma, key), fmt(mb, key), ratio))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    sep = "-+-".join("-" * w for w in widths)
    for i, r in enumerate(rows):
        print(" | ".join(c.ljust(w) for c, w in zip(r, widths)))
        if i == 0:
            print(sep)
    print()
    print("Individual runs (in run order):")
    for key, label, _ in metrics:
        for s in servers:
            vals = s.results.get(key, [])
            notes = s.notes.get(key, [])
            shown = ", ".join(fmt(v, key) + (f" [{n}]" if n else "") for v, n in zip(vals, notes))
            print(f"  {label} / {s.name}: {shown}")


# --------------------------------------------------------------------------- main


def make_file(path: str, size: int, block: bytes) -> None:
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, len(block))
            f.write(block[:n] if n < len(block) else block)
            left -= n


def main() -> int:
    default_twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    ap = argparse.ArgumentParser(description="streamsvc /files vs twisted.web.static.File")
    ap.add_argument("--runs", type=int, default=None, help="runs per server per metric [5; --quick: 2]")
    ap.add_argument("--quick", action="store_true",
                    help="2 runs, 256 MiB / 64 MiB files, 50 slow clients, 50 aborts, shorter wrk and steady phase")
    ap.add_argument("--twistd", default=default_twistd, help=f"twistd to run both servers with [{default_twistd}]")
    ap.add_argument("--tmpdir", default=None, help="where to create the temporary data dir [system default]")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs) at the end")
    ap.add_argument("--only", default=None,
                    help="comma-separated subset of: single,concurrent,rps,slow_rss,abort_fds")
    args = ap.parse_args()

    quick = args.quick
    runs = args.runs if args.runs is not None else (2 if quick else 5)
    big = (256 if quick else 1024) * MiB
    mid = (64 if quick else 256) * MiB
    small = 4096
    n_concurrent = 8
    slow_clients = 50 if quick else 300
    slow_rate = 20_000
    slow_steady = 10.0 if quick else 20.0
    slow_window = 5.0
    n_aborts = 50 if quick else 200
    wrk_seconds = 5 if quick else 10
    rps_tool = "wrk" if shutil.which("wrk") else ("ab" if shutil.which("ab") else None)

    if not os.path.exists(args.twistd):
        ap.error(f"twistd not found at {args.twistd} (use --twistd)")
    if not shutil.which("curl"):
        ap.error("curl is required")
    if rps_tool is None:
        ap.error("wrk or ab is required")

    all_metrics = [
        ("single", f"1 download {big // MiB} MiB, curl (MiB/s)", "higher"),
        ("concurrent", f"{n_concurrent} concurrent x {mid // MiB} MiB, curl (aggregate MiB/s)", "higher"),
        ("rps", f"4 KiB file, 32 conns, {rps_tool} (req/s)", "higher"),
        ("slow_rss", f"RSS growth per slow client ({slow_clients} x {mid // MiB} MiB @ 20 KB/s) (KiB/client)", "lower"),
        ("abort_fds", f"fds left after {n_aborts} aborted downloads", "lower"),
    ]
    selected = set(args.only.split(",")) if args.only else {m[0] for m in all_metrics}
    unknown = selected - {m[0] for m in all_metrics}
    if unknown:
        ap.error(f"unknown metrics in --only: {', '.join(sorted(unknown))}")
    metrics = [m for m in all_metrics if m[0] in selected]

    interrupt_on_signals()

    started = time.monotonic()
    print("command: " + shlex.join([sys.executable] + sys.argv), flush=True)
    tmp = tempfile.mkdtemp(prefix="streamsvc-bench-", dir=args.tmpdir)
    servers: list[Server] = []
    ok = False
    try:
        data = os.path.join(tmp, "data")
        files = os.path.join(data, "files")
        os.makedirs(files)
        log(f"creating test files in {files} ...")
        block = os.urandom(16 * MiB)
        names = {"big": "big.bin", "mid": "mid.bin", "small": "4k.bin"}
        make_file(os.path.join(files, names["big"]), big, block)
        make_file(os.path.join(files, names["mid"]), mid, block)
        make_file(os.path.join(files, names["small"]), small, os.urandom(small))
        del block

        svc_log, web_log = os.path.join(tmp, "streamsvc.log"), os.path.join(tmp, "static.log")
        servers = [
            Server("streamsvc",
                   [args.twistd, "-n", "--pidfile=", f"--logfile={svc_log}", "streamsvc",
                    "--listen", f"tcp:{{port}}:interface={HOST}", "--data-dir", data],
                   "/files/", svc_log, os.path.join(tmp, "streamsvc.out")),
            Server("static.File",
                   [args.twistd, "-n", "--pidfile=", f"--logfile={web_log}", "web",
                    "--listen", f"tcp:{{port}}:interface={HOST}", "--path", files],
                   "/", web_log, os.path.join(tmp, "static.out")),
        ]

        def start_all() -> None:
            # Fresh ephemeral ports each time; cwd = temp dir, so no stray
            # ./streamsvc.ini is picked up.
            for s, port in zip(servers, free_ports(len(servers))):
                s.start(cwd=tmp, port=port)
            for s in servers:
                t = wait_ready(s, s.path(names["small"]), small)
                # Exercise the big-file code path once (1 MiB, then RST), not measured.
                abort_one(s.port, s.path(names["mid"]), MiB)
                settle_fds(s.pid, max_wait=5.0, stable_for=0.5)
                log(f"{s.name} (pid {s.pid}, port {s.port}) ready after {t:.1f}s, "
                    f"RSS {rss_kib(s.pid)} KiB, {fd_count(s.pid)} fds")

        start_all()
        for s in servers:
            print(f"server {s.name}: " + shlex.join(s.argv) + f"   (cwd {tmp})", flush=True)
        print(f"clients: {shlex.join(curl_argv('URL', 600))}; "
              f"{'wrk -t2 -c32 -d%ds URL' % wrk_seconds if rps_tool == 'wrk' else 'ab -q -k -c 32 -n 20000 URL'}; "
              f"{os.path.basename(SLOW_CLIENTS)} --clients {slow_clients} --rate {slow_rate} "
              f"(steady {slow_steady:.0f}s, max RSS over last {slow_window:.0f}s; both servers "
              f"restarted on fresh ports before each RSS run); "
              f"{n_aborts} x (GET, read 1 MiB, SO_LINGER(1,0) close)", flush=True)
        print(f"rps tool: {rps_tool}", flush=True)

        # Warm the page cache and both servers once (not measured).
        for s in servers:
            for n, size in (("big", big), ("mid", mid)):
                r = subprocess.run(curl_argv(s.url(names[n]), 600), capture_output=True,
                                   text=True, env=clean_env())
                parse_curl(r.stdout, size, f"warm-up {s.name} {n}")

        for key, label, _ in metrics:
            for run in range(1, runs + 1):
                if key == "slow_rss":
                    # Restart both servers before each RSS run: a process that already
                    # served N slow clients keeps (some of) that memory, so later runs
                    # on the same process would measure only growth beyond the
                    # earlier high-water mark.
                    for s in servers:
                        s.stop()
                    start_all()
                for s in servers:
                    s.check_alive()
                    t0 = time.monotonic()
                    if key == "single":
                        m_single(s, names["big"], big)
                    elif key == "concurrent":
                        m_concurrent(s, names["mid"], mid, n_concurrent)
                    elif key == "rps":
                        m_rps(s, names["small"], rps_tool, wrk_seconds)
                    elif key == "slow_rss":
                        m_slow_rss(s, names["mid"], slow_clients, slow_rate, slow_steady, slow_window)
                    elif key == "abort_fds":
                        m_aborts(s, names["mid"], n_aborts)
                    v, note = s.results[key][-1], s.notes[key][-1]
                    log(f"  [{key}] run {run}/{runs} {s.name}: {fmt(v, key)}"
                        f"{' [' + note + ']' if note else ''} ({time.monotonic() - t0:.1f}s)")
        for s in servers:
            s.check_alive()

        print()
        print("Machine:")
        for line in machine_info(args.twistd):
            print("  " + line)
        print(f"runs per server: {runs} (interleaved {servers[0].name}, {servers[1].name}, ...); "
              f"quick={quick}; total time {time.monotonic() - started:.0f}s")
        print()
        report(servers, metrics)
        ok = True
        return 0
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    except Exception as e:
        return run_failed(e, servers)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for p in list(_children):
            if p.poll() is None:
                p.kill()
                p.wait()
        for s in servers:
            s.stop()
        if args.keep or not ok and os.environ.get("BENCH_KEEP_ON_ERROR"):
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
