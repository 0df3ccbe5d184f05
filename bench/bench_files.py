#!/usr/bin/env python3
"""
Benchmark streamsvc's /files against other servers of the same files: stock
twisted.web (static.File), a bare Python sendfile server, aiohttp and nginx.

Every server is a separate process (tree) on an ephemeral port on 127.0.0.1,
serving the same temporary directory DATA/files (cwd = the temp dir TMP):

  streamsvc     twistd -n --pidfile= --logfile=LOG streamsvc --listen tcp:PORT:interface=127.0.0.1 --data-dir DATA
  streamsvc-w2  the same with --workers 2 (the main process and 2 workers sharing the
                listening socket) and --data-dir DATA-w2, whose files/ are hard links to
                DATA/files (a tasks database of its own, the same inodes); only when
                `twistd streamsvc --help` lists --workers, otherwise one line says it is skipped
  static.File   twistd -n --pidfile= --logfile=LOG web --listen tcp:PORT:interface=127.0.0.1 --path DATA/files
                (``twistd web --path`` is exactly ``Site(File(path))``)
  sendfile      python bench/peers/sendfile_server.py --port PORT --root DATA/files
                (stdlib, a thread per connection, keep-alive, the body by socket.sendfile:
                the physical reference; no access log)
  aiohttp       python bench/peers/aiohttp_server.py --port PORT --root DATA/files --access-log FILE
                (web.static, i.e. FileResponse and loop.sendfile; access log to a file);
                the Python is this one if it imports aiohttp, else a venv of its own,
                ~/.cache/streamsvc-bench/aiohttp-venv, created (pip install aiohttp) if needed
  nginx         nginx -c TMP/nginx/nginx.conf -p TMP/nginx/ -e TMP/nginx/error.log -g 'pid TMP/nginx/nginx.pid;'
                (daemon off, master_process on, worker_processes 1, sendfile on, tcp_nopush on,
                keepalive_requests 100000, access log to a file, root DATA/files); installed with
                `apt-get install -y nginx` when it is not on PATH and we are root

Every server but sendfile logs each request: streamsvc (both) to an access log
file of its own (--config TMP/NAME.conf: [server] access_log_file, README's
advice with workers), static.File to its twistd log (twistd web cannot do
otherwise), nginx and aiohttp to an access log file of their own.  Default servers: streamsvc,
streamsvc-w2 (if available) and static.File; --peers adds sendfile, aiohttp
and nginx; --servers NAME,... picks exactly those, in that order.  A peer that
cannot be had (no aiohttp venv, no nginx) is skipped with one line saying why.

Every measurement is repeated --runs times per server, interleaved server by
server (streamsvc run 1, static.File run 1, ..., streamsvc run 2, ...), and the
medians are reported, with each server's ratio to static.File and, for the big
download, to sendfile (the issue's targets: streamsvc >= 0.95x sendfile, >=
aiohttp, server CPU per GB <= nginx's).

Measurements (--only picks some):
  single      one big download (1 GiB; --quick 256 MiB) with curl (MiB/s, size verified),
              and the server's CPU seconds per GB (10^9 bytes) for it
  concurrent  8 concurrent downloads of the mid-size file (256 MiB; --quick 64 MiB) with
              curl (aggregate MiB/s, wall time), and the server's CPU seconds per GB
  rps         requests/s for a 4 KiB file, 32 connections (wrk -t2 -c32, or ab -k as a fallback)
  slow_rss    server RSS growth per slow client (bench/slow_clients.py; N clients reading
              the mid-size file at 20 KB/s each); every server restarted before each run
  abort_fds   server fds left open after M downloads aborted mid-way with an RST
  tls         (only when asked: --only tls; adds single) the big download over TLS, curl -k,
              for streamsvc, streamsvc-w2 and static.File, each given a second listener
              ssl:PORT:interface=127.0.0.1:privateKey=K:certKey=C with a self-signed
              certificate made in the temp dir (openssl req -x509, or the server Python's
              cryptography); reported beside the plain-TCP figure as a ratio

A server is a process tree (streamsvc-w2's workers, nginx's master and
worker): CPU (utime+stime from /proc/PID/stat, and the cutime+cstime of
children it reaped; in clock ticks, 10 ms at the usual HZ=100, so about
+-0.01 s per GB on a 1 GiB download), RSS and fds are summed over the
parent and all its descendants; it is ready once it answers and its tree has its processes, all
holding the listening socket; it is stopped by SIGTERM to the parent (which
stops its workers), then SIGKILL to whatever of the tree or its process group
is left after 10 s.

Standard library only (the aiohttp peer imports aiohttp in its own Python);
needs curl, and wrk or ab, on PATH.  Only 127.0.0.1 is ever contacted (and the
package registries, by pip and apt-get, when a peer has to be installed).

    python bench/bench_files.py                      # streamsvc[, streamsvc-w2], static.File
    python bench/bench_files.py --quick --runs 1 --peers
    python bench/bench_files.py --peers --runs 3 --only single,concurrent,rps,slow_rss
    python bench/bench_files.py --servers streamsvc,sendfile --only single
    python bench/bench_files.py --quick --only tls
    python bench/bench_files.py --store s3           # /files on S3 against the store itself (bench_s3.py)
"""

from __future__ import annotations

import argparse
import os
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

from _child import clean_env, interrupt_on_signals, log, run_failed  # bench/ is sys.path[0] when run as a script
from _machine import machine_lines, other_cpu_users, tool_version, tree_check
from _report import table
from _runner import (
    HOST, SLOW_CLIENTS, Server, aiohttp_python, children as _children, cpu_seconds, descendants,
    fds, free_ports, nginx_binary, nginx_conf, rss_kib, settle_fds, slow_rss, wait_ready,
    workers_missing, wrk,
)

MiB = 1024 * 1024
GB = 10 ** 9
HERE = os.path.dirname(os.path.abspath(__file__))
SENDFILE_SERVER = os.path.join(HERE, "peers", "sendfile_server.py")
AIOHTTP_SERVER = os.path.join(HERE, "peers", "aiohttp_server.py")

#: Every server, in the order they run; the peers only with --peers or --servers.
SERVERS = ("streamsvc", "streamsvc-w2", "static.File", "sendfile", "aiohttp", "nginx")
PEERS = ("sendfile", "aiohttp", "nginx")
W2_WORKERS = 2



# --------------------------------------------------------------------------- servers


def endpoint_quote(value: str) -> str:
    """A value in a Twisted endpoint description (":" and "\\" escaped)."""
    return value.replace("\\", "\\\\").replace(":", "\\:")


def make_certificate(tmp: str, server_python: str) -> tuple[str, str, str]:
    """A self-signed certificate for 127.0.0.1 in tmp: (key path, cert path, how it was made)."""
    key, cert = os.path.join(tmp, "tls-key.pem"), os.path.join(tmp, "tls-cert.pem")
    if shutil.which("openssl"):
        argv = ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost",
                "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"]
        how = "openssl req -x509 -newkey ec (P-256)"
    else:
        code = (
            "import datetime, ipaddress, sys\n"
            "from cryptography import x509\n"
            "from cryptography.hazmat.primitives import hashes, serialization\n"
            "from cryptography.hazmat.primitives.asymmetric import ec\n"
            "from cryptography.x509.oid import NameOID\n"
            "k = ec.generate_private_key(ec.SECP256R1())\n"
            "n = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, 'localhost')])\n"
            "now = datetime.datetime.now(datetime.timezone.utc)\n"
            "c = (x509.CertificateBuilder().subject_name(n).issuer_name(n).public_key(k.public_key())\n"
            "     .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))\n"
            "     .not_valid_after(now + datetime.timedelta(days=2))\n"
            "     .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address('127.0.0.1'))]),"
            " critical=False).sign(k, hashes.SHA256()))\n"
            "open(sys.argv[1], 'wb').write(k.private_bytes(serialization.Encoding.PEM,"
            " serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()))\n"
            "open(sys.argv[2], 'wb').write(c.public_bytes(serialization.Encoding.PEM))\n")
        argv = [server_python, "-c", code, key, cert]
        how = f"cryptography (P-256) in {server_python}"
    r = subprocess.run(argv, capture_output=True, text=True, env=clean_env(), timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"making the TLS certificate failed ({how}): {r.stderr.strip()[-300:]}")
    return key, cert, how


# --------------------------------------------------------------------------- measurements


def curl_argv(url: str, max_time: float, insecure: bool = False) -> list[str]:
    return (["curl", "-s", "--noproxy", "*", "--max-time", str(int(max_time))] + (["-k"] if insecure else [])
            + ["-o", "/dev/null", "-w", "%{http_code} %{size_download} %{speed_download}", url])


def parse_curl(out: str, expect: int, what: str) -> tuple[int, float]:
    parts = out.split()
    if len(parts) != 3:
        raise RuntimeError(f"{what}: unexpected curl output {out!r}")
    code, size, speed = int(parts[0]), int(float(parts[1])), float(parts[2])
    if code != 200 or size != expect:
        raise RuntimeError(f"{what}: HTTP {code}, {size} bytes (expected 200, {expect})")
    return size, speed


def m_single(srv: Server, name: str, size: int, key: str = "single") -> None:
    """One download (key "tls": over TLS); also the server's CPU seconds per GB ("<key>_cpu")."""
    tls = key == "tls"
    c0 = cpu_seconds(srv.pid)
    r = subprocess.run(curl_argv(srv.url(name, tls), 600, insecure=tls), capture_output=True, text=True,
                       env=clean_env())
    cpu = cpu_seconds(srv.pid) - c0
    if r.returncode != 0:
        raise RuntimeError(f"curl failed rc={r.returncode}: {r.stderr.strip()}")
    _, speed = parse_curl(r.stdout, size, f"{'TLS' if tls else 'single'} download")
    srv.add(key, speed / MiB)
    srv.add(key + "_cpu", cpu / (size / GB), f"{cpu:.2f}s")


def m_concurrent(srv: Server, name: str, size: int, n: int) -> None:
    argv = curl_argv(srv.url(name), 600)
    env = clean_env()
    procs = []
    c0 = cpu_seconds(srv.pid)
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
    cpu = cpu_seconds(srv.pid) - c0
    for p in procs:
        _children.remove(p)
    total = 0
    for rc, out, err in outs:
        if rc != 0:
            raise RuntimeError(f"curl failed rc={rc}: {err.strip()}")
        got, _ = parse_curl(out, size, "concurrent download")
        total += got
    srv.add("concurrent", total / MiB / wall, f"{wall:.2f}s")
    srv.add("concurrent_cpu", cpu / (total / GB), f"{cpu:.2f}s")


def m_rps(srv: Server, name: str, tool: str, seconds: int) -> None:
    if tool == "wrk":
        rps, _, notes = wrk(srv.url(name), seconds)
    else:
        r = subprocess.run(["ab", "-q", "-k", "-c", "32", "-n", "20000", srv.url(name)],
                           capture_output=True, text=True, env=clean_env(), timeout=seconds + 300)
        m = re.search(r"Requests per second:\s+([\d.]+)", r.stdout)
        if r.returncode != 0 or not m:
            raise RuntimeError(f"ab failed rc={r.returncode}:\n{r.stdout}\n{r.stderr}")
        rps = float(m.group(1))
        notes = "; ".join(m2.group(0).strip() for pat in (r"Non-2xx responses:\s+(\d+)",
                                                           r"Failed requests:\s+([1-9]\d*)")
                          if (m2 := re.search(pat, r.stdout)))
    if notes:
        log(f"    warning: {srv.name} {tool}: {notes}")
    srv.add("rps", rps, notes)


def m_slow_rss(srv: Server, name: str, clients: int, rate: int, steady: float,
               window: float) -> None:
    per_client, note = slow_rss(srv, srv.path(name), clients, rate, steady, window)
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
    if metric.endswith("_cpu"):
        return f"{v:.3f}"
    return f"{v:.1f}"


def machine_info(twistd: str, tmp: str, servers: list[Server], peers: dict[str, str]) -> list[str]:
    lines = machine_lines()
    py = os.path.join(os.path.dirname(twistd), "python")
    if os.path.exists(py):
        # Asked from the temp dir, so a ./streamsvc of the working directory cannot stand in.
        code = ("import os, sys, platform, importlib.metadata as m\n"
                "def v(n):\n"
                "    try: return m.version(n)\n"
                "    except Exception: return 'not installed'\n"
                "import streamsvc\n"
                "print(os.path.dirname(os.path.abspath(streamsvc.__file__)))\n"
                "print(f'server Python: {platform.python_version()} ({sys.executable}); '"
                "      f'Twisted {v(\"twisted\")}; streamsvc {v(\"streamsvc\")}')")
        r = subprocess.run([py, "-c", code], cwd=tmp, capture_output=True, text=True, env=clean_env())
        out = r.stdout.splitlines()
        if r.returncode == 0 and len(out) >= 2:
            lines.append(out[1] + f"; streamsvc from {out[0]}")
            lines.append("  " + tree_check(out[0]))
        else:
            lines.append(r.stderr.strip()[-200:] or f"{py} failed")
    else:
        r = subprocess.run([twistd, "--version"], capture_output=True, text=True)
        lines.append(r.stdout.splitlines()[0] if r.stdout else "twistd --version failed")
    for name, what in peers.items():
        lines.append(f"{name}: {what}")
    for tool in ("curl", "wrk", "ab"):
        path = shutil.which(tool)
        lines.append(f"{tool}: {path or 'missing'}"
                     + (f" ({tool_version([tool, '--version'], or_stderr=True)})" if path and tool != "ab" else ""))
    lines.append("server processes at the end: " + "; ".join(
        f"{s.name} {len(descendants(s.pid))}" for s in servers if s.alive()))
    return lines


def ratio_cell(a: float, b: float, key: str) -> str:
    """a relative to b (the reference), as the report shows it."""
    if key == "abort_fds":
        return f"{a - b:+.0f} (diff)"
    if key == "slow_rss" and b <= 1.0:
        return f"{a - b:+.1f} KiB (diff)"
    return f"{a / b:.2f}" if b else "n/a"


def median(s: Server, key: str) -> float | None:
    v = s.results.get(key, [])
    return statistics.median(v) if v else None


def report(servers: list[Server], rows_def: list[tuple[str, str, str]], big_mib: int) -> None:
    by_name = {s.name: s for s in servers}
    rows = [("metric (median)",) + tuple(s.name for s in servers)]
    for key, label, better in rows_def:
        rows.append((label,) + tuple("-" if median(s, key) is None else fmt(median(s, key), key)
                                     for s in servers))
    table(rows)

    ref = by_name.get("static.File")
    others = [s for s in servers if s is not ref]
    if ref is not None and others:
        print()
        print("Ratio to static.File (server / static.File; abort_fds, and slow_rss when static.File "
              "grew <= 1 KiB/client: difference):")
        rows = [("metric",) + tuple(s.name for s in others)]
        for key, label, better in rows_def:
            mb = median(ref, key)
            cells = tuple("-" if mb is None or median(s, key) is None else ratio_cell(median(s, key), mb, key)
                          for s in others)
            if any(c != "-" for c in cells):
                rows.append((f"{label} [{better} is better]",) + cells)
        table(rows)

    sf = by_name.get("sendfile")
    if sf is not None and median(sf, "single") is not None:
        print()
        print(f"{big_mib} MiB download, each server against sendfile (the bare Python socket.sendfile server):")
        rows = [("server", "MiB/s", "x sendfile", "server CPU s/GB", "x sendfile")]
        for s in servers:
            v, c = median(s, "single"), median(s, "single_cpu")
            vs, cs = median(sf, "single"), median(sf, "single_cpu")
            rows.append((s.name, "-" if v is None else fmt(v, "single"),
                         "-" if v is None or not vs else f"{v / vs:.2f}",
                         "-" if c is None else fmt(c, "single_cpu"),
                         "-" if c is None or not cs else f"{c / cs:.2f}"))
        table(rows)

    targets = []
    for name in ("streamsvc", "streamsvc-w2"):
        s = by_name.get(name)
        if s is None or median(s, "single") is None:
            continue
        v, c = median(s, "single"), median(s, "single_cpu")
        for peer, key, want, sign in (("sendfile", "single", 0.95, ">="), ("aiohttp", "single", 1.0, ">="),
                                      ("nginx", "single_cpu", 1.0, "<=")):
            p = by_name.get(peer)
            pv = None if p is None else median(p, key)
            if not pv:
                continue
            r = (v if key == "single" else c) / pv
            met = r >= want if sign == ">=" else r <= want
            what = "MiB/s" if key == "single" else "server CPU s/GB"
            targets.append(f"  {name} / {peer}, {big_mib} MiB download {what}: {r:.2f} "
                           f"(target {sign} {want:.2f}: {'met' if met else 'NOT met'})")
    if targets:
        print()
        print("Issue targets:")
        for line in targets:
            print(line)

    tls = [s for s in servers if median(s, "tls") is not None]
    if tls:
        print()
        print(f"{big_mib} MiB download over TLS (curl -k) beside plain TCP:")
        rows = [("server", "TCP MiB/s", "TLS MiB/s", "TLS/TCP", "TCP CPU s/GB", "TLS CPU s/GB")]
        for s in tls:
            v, t = median(s, "single"), median(s, "tls")
            rows.append((s.name, "-" if v is None else fmt(v, "single"), fmt(t, "tls"),
                         "-" if not v else f"{t / v:.2f}",
                         "-" if median(s, "single_cpu") is None else fmt(median(s, "single_cpu"), "single_cpu"),
                         fmt(median(s, "tls_cpu"), "tls_cpu")))
        table(rows)

    print()
    print("Individual runs (in run order):")
    for key, label, _ in rows_def:
        for s in servers:
            vals = s.results.get(key, [])
            if not vals:
                continue
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
    if "--store" in sys.argv[1:]:  # --store s3: the object-store benchmark (bench/bench_s3.py)
        import bench_s3

        return bench_s3.main(sys.argv[1:])
    default_twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    ap = argparse.ArgumentParser(description="streamsvc /files vs static.File, a bare sendfile server, "
                                             "aiohttp and nginx")
    ap.add_argument("--runs", type=int, default=None, help="runs per server per metric [5; --quick: 2]")
    ap.add_argument("--quick", action="store_true",
                    help="2 runs, 256 MiB / 64 MiB files, 50 slow clients, 50 aborts, shorter wrk and steady phase")
    ap.add_argument("--twistd", default=default_twistd, help=f"twistd to run streamsvc and static.File with [{default_twistd}]")
    ap.add_argument("--tmpdir", default=None, help="where to create the temporary data dir [system default]")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs) at the end")
    ap.add_argument("--only", default=None,
                    help="comma-separated subset of: single,concurrent,rps,slow_rss,abort_fds,tls "
                         "[all but tls; tls adds single]")
    which = ap.add_mutually_exclusive_group()
    which.add_argument("--peers", action="store_true",
                       help="also the peers: sendfile, aiohttp (a venv of its own if needed), nginx "
                            "(apt-get installed if needed)")
    which.add_argument("--servers", default=None,
                       help=f"comma-separated servers to run, in this order, from: {','.join(SERVERS)} "
                            "[streamsvc,streamsvc-w2,static.File; with --peers all]")
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
        ("tls", f"1 download {big // MiB} MiB over TLS, curl -k (MiB/s)", "higher"),
    ]
    # The rows of the report: each measurement, and the server CPU per GB after the downloads.
    cpu_rows = {
        "single": ("single_cpu", f"server CPU s per GB, 1 download {big // MiB} MiB (GB = 10^9 bytes)", "lower"),
        "concurrent": ("concurrent_cpu", f"server CPU s per GB, {n_concurrent} concurrent x {mid // MiB} MiB",
                       "lower"),
        "tls": ("tls_cpu", f"server CPU s per GB, 1 download {big // MiB} MiB over TLS", "lower"),
    }
    known = {m[0] for m in all_metrics}
    selected = set(args.only.split(",")) if args.only else known - {"tls"}
    unknown = selected - known
    if unknown:
        ap.error(f"unknown metrics in --only: {', '.join(sorted(unknown))}")
    if "tls" in selected and "single" not in selected:
        selected.add("single")   # the plain-TCP figure the TLS one is shown beside
        log("--only tls: single added, for the plain-TCP figure beside the TLS one")
    metrics = [m for m in all_metrics if m[0] in selected]
    rows_def = []
    for m in metrics:
        rows_def.append(m)
        if m[0] in cpu_rows:
            rows_def.append(cpu_rows[m[0]])

    if args.servers:
        wanted = list(dict.fromkeys(n.strip() for n in args.servers.split(",") if n.strip()))
        bad = [n for n in wanted if n not in SERVERS]
        if bad or not wanted:
            ap.error(f"unknown servers in --servers: {', '.join(bad) or '(none given)'} "
                     f"(known: {', '.join(SERVERS)})")
    else:
        wanted = [n for n in SERVERS if args.peers or n not in PEERS]

    interrupt_on_signals()

    started_at = time.monotonic()
    print("command: " + shlex.join([sys.executable] + sys.argv), flush=True)
    tmp = tempfile.mkdtemp(prefix="streamsvc-bench-", dir=args.tmpdir)
    servers: list[Server] = []
    ok = False
    try:
        # Which servers can run: the ones that need something may be skipped, one line each.
        peers: dict[str, str] = {}
        aiohttp_py, nginx = None, None
        skipped = []
        for name in wanted:
            why = ""
            if name == "streamsvc-w2":
                why = workers_missing(args.twistd, tmp)
            elif name == "aiohttp":
                aiohttp_py, what = aiohttp_python()
                if aiohttp_py:
                    peers["aiohttp"] = what
                else:
                    why = what
            elif name == "nginx":
                nginx, why = nginx_binary()
                if nginx:
                    peers["nginx"] = f"{nginx} ({tool_version([nginx, '-v'], or_stderr=True)})"
            if why:
                skipped.append(name)
                print(f"server {name}: skipped: {why}", flush=True)
        wanted = [n for n in wanted if n not in skipped]
        if not wanted:
            raise RuntimeError("no server left to measure")

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

        tls_listen: list[str] = []
        if "tls" in selected:
            key, cert, how = make_certificate(tmp, os.path.join(os.path.dirname(args.twistd), "python"))
            tls_listen = ["--listen", f"ssl:{{tls_port}}:interface={HOST}:privateKey={endpoint_quote(key)}"
                                      f":certKey={endpoint_quote(cert)}"]
            print(f"tls: self-signed certificate for 127.0.0.1 by {how}: {key}, {cert}", flush=True)

        def twistd_server(name: str, log_name: str, plugin: list[str], **kw) -> Server:
            logfile = os.path.join(tmp, f"{log_name}.log")
            return Server(name, [args.twistd, "-n", "--pidfile=", f"--logfile={logfile}"] + plugin,
                          "/files/" if plugin[0] == "streamsvc" else "/", logfile,
                          os.path.join(tmp, f"{log_name}.out"), **kw)

        tcp = ["--listen", f"tcp:{{port}}:interface={HOST}"]

        def streamsvc_conf(log_name: str) -> list[str]:
            # The access log on, to a file of its own, as nginx's and aiohttp's
            # (README: with workers, the way to run it).
            conf = os.path.join(tmp, f"{log_name}.conf")
            with open(conf, "w") as f:
                f.write(f"[server]\naccess_log_file = {os.path.join(tmp, log_name + '-access.log')}\n")
            return ["--config", conf]

        for name in wanted:
            if name == "streamsvc":
                s = twistd_server(name, "streamsvc", ["streamsvc"] + streamsvc_conf("streamsvc") + tcp + tls_listen
                                  + ["--data-dir", data], tls=bool(tls_listen))
            elif name == "streamsvc-w2":
                # A data dir of its own (two streamsvc on one would share its tasks
                # database), files/ hard links to the same files: the same inodes.
                data_w2 = os.path.join(tmp, "data-w2")
                os.makedirs(os.path.join(data_w2, "files"))
                for n in names.values():
                    os.link(os.path.join(files, n), os.path.join(data_w2, "files", n))
                s = twistd_server(name, "streamsvc-w2", ["streamsvc"] + streamsvc_conf("streamsvc-w2") + tcp
                                  + tls_listen + ["--data-dir", data_w2,
                                  "--workers", str(W2_WORKERS)],
                                  procs=1 + W2_WORKERS, listeners=W2_WORKERS, tls=bool(tls_listen))
            elif name == "static.File":
                s = twistd_server(name, "static", ["web"] + tcp + tls_listen + ["--path", files],
                                  tls=bool(tls_listen))
            elif name == "sendfile":
                s = Server(name, [sys.executable, SENDFILE_SERVER, "--port", "{port}", "--root", files],
                           "/", "", os.path.join(tmp, "sendfile.out"))
            elif name == "aiohttp":
                assert aiohttp_py is not None
                s = Server(name, [aiohttp_py, AIOHTTP_SERVER, "--port", "{port}", "--root", files,
                                  "--access-log", os.path.join(tmp, "aiohttp-access.log")],
                           "/", "", os.path.join(tmp, "aiohttp.out"))
            else:
                assert nginx is not None
                prefix = os.path.join(tmp, "nginx")
                os.makedirs(prefix)
                conf = os.path.join(prefix, "nginx.conf")
                s = Server(name, [nginx, "-c", conf, "-p", prefix + "/", "-e", os.path.join(prefix, "error.log"),
                                  "-g", f"pid {os.path.join(prefix, 'nginx.pid')};"],
                           "/", os.path.join(prefix, "error.log"), os.path.join(tmp, "nginx.out"),
                           procs=2, listeners=2, conf=(conf, nginx_conf(prefix, files)))
            servers.append(s)

        def start_all() -> None:
            # Fresh ephemeral ports each time; cwd = temp dir, so no stray
            # ./tap.conf is picked up.
            ports = free_ports(2 * len(servers))
            for i, s in enumerate(servers):
                s.start(cwd=tmp, port=ports[2 * i], tls_port=ports[2 * i + 1] if s.tls else 0)
            for s in servers:
                t = wait_ready(s, s.path(names["small"]), small)
                # Exercise the big-file code path once (1 MiB, then RST), not measured.
                abort_one(s.port, s.path(names["mid"]), MiB)
                settle_fds(s.pid, max_wait=5.0, stable_for=0.5)
                tree = descendants(s.pid)
                log(f"{s.name} (pid {s.pid}{', tree ' + ' '.join(map(str, tree)) if len(tree) > 1 else ''}, "
                    f"port {s.port}{f', TLS port {s.tls_port}' if s.tls else ''}) ready after {t:.1f}s, "
                    f"RSS {rss_kib(s.pid)} KiB, {fds(s.pid)} fds")

        start_all()
        for s in servers:
            print(f"server {s.name}: " + shlex.join(s.argv) + f"   (cwd {tmp})", flush=True)
            if s.conf is not None:
                print(f"  {s.conf[0]}: " + " ".join(s.conf[1].replace("{port}", str(s.port)).split()), flush=True)
        print(f"clients: {shlex.join(curl_argv('URL', 600))}; "
              f"{'wrk -t2 -c32 -d%ds URL' % wrk_seconds if rps_tool == 'wrk' else 'ab -q -k -c 32 -n 20000 URL'}; "
              f"{os.path.basename(SLOW_CLIENTS)} --clients {slow_clients} --rate {slow_rate} "
              f"(steady {slow_steady:.0f}s, max RSS over last {slow_window:.0f}s; all servers "
              f"restarted on fresh ports before each RSS run); "
              f"{n_aborts} x (GET, read 1 MiB, SO_LINGER(1,0) close)"
              + ("; TLS: the same curl with -k and https://" if "tls" in selected else ""), flush=True)
        print(f"rps tool: {rps_tool}", flush=True)

        # Warm the page cache and every server once (not measured).
        for s in servers:
            for n, size in (("big", big), ("mid", mid)):
                r = subprocess.run(curl_argv(s.url(names[n]), 600), capture_output=True,
                                   text=True, env=clean_env())
                parse_curl(r.stdout, size, f"warm-up {s.name} {n}")
            if s.tls:
                r = subprocess.run(curl_argv(s.url(names["mid"], tls=True), 600, insecure=True),
                                   capture_output=True, text=True, env=clean_env())
                parse_curl(r.stdout, mid, f"warm-up {s.name} mid over TLS")

        ours = {p for s in servers for p in descendants(s.pid)}
        load_before = other_cpu_users(ours=ours)
        log("before: " + load_before)
        for key, label, _ in metrics:
            for run in range(1, runs + 1):
                if key == "slow_rss":
                    # Restart every server before each RSS run: a process that already
                    # served N slow clients keeps (some of) that memory, so later runs
                    # on the same process would measure only growth beyond the
                    # earlier high-water mark.
                    for s in servers:
                        s.stop()
                    start_all()
                for s in servers:
                    if key == "tls" and not s.tls:
                        continue
                    s.check_alive()
                    if s.procs > 1 and len(descendants(s.pid)) < s.procs:
                        log(f"    warning: {s.name}: {len(descendants(s.pid))} process(es) in its tree, "
                            f"expected {s.procs}")
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
                    elif key == "tls":
                        m_single(s, names["big"], big, key="tls")
                    shown = [f"{fmt(s.results[k][-1], k)}"
                             + (f" [{s.notes[k][-1]}]" if s.notes[k][-1] else "")
                             for k in (key, key + "_cpu") if k in s.results]
                    log(f"  [{key}] run {run}/{runs} {s.name}: {', CPU s/GB '.join(shown)} "
                        f"({time.monotonic() - t0:.1f}s)")
        for s in servers:
            s.check_alive()
        ours = {p for s in servers for p in descendants(s.pid)}
        load_after = other_cpu_users(ours=ours)

        print()
        print("Machine:")
        for line in machine_info(args.twistd, tmp, servers, peers):
            print("  " + line)
        print(f"  at start: {load_before}")
        print(f"  at end:   {load_after}")
        print(f"runs per server: {runs} (interleaved {', '.join(s.name for s in servers)}, ...); "
              f"quick={quick}; total time {time.monotonic() - started_at:.0f}s"
              + (f"; skipped: {', '.join(skipped)}" if skipped else ""))
        print()
        report(servers, rows_def, big // MiB)
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
