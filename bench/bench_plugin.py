#!/usr/bin/env python3
"""
What the machinery a plugin gets for free costs: the example plugin
(examples/streamsvc-logtail, C{/logs/NAME}) under C{twistd streamsvc}, against
the very same resource mounted on a bare twisted.web C{Site}.

  streamsvc  C{twistd -n streamsvc} with C{[plugins] enabled = logs}: the
             Bearer guard (a token sent), PluginMount, BodyRequest,
             GuardedChannel (limits, timeouts), the per-stream metrics
             (C{kind="plugin:logs"}) and the access log to its own file.
  bare       C{python bench/bench_plugin.py --serve-bare PORT DIR}: a stock
             twisted.web C{Site} whose root has the plugin's C{LogsResource}
             (built from a C{PluginContext} made by hand) at C{/logs}; no
             guard, no limits, no metrics, no access log. The same
             producers (IterableProducer, send_body) send the body.

Scenarios, each run --runs times (default 5), interleaved server by server;
the medians are printed with the runs and the ratio streamsvc / bare:

  stream   C{GET /logs/big.log?from=start&follow=no}: a --mib MiB log (default
           256) of 100-byte lines, read to the end with 1 MiB recv()s: MiB/s.
  small    --requests (default 2000) C{GET /logs/small.log?from=start&follow=no}
           (10 lines) one after the other on one kept-alive connection: requests/s.
  stalled  the big log from its start to a client with a 64 KiB receive buffer
           that never reads; after 3 s, the server's RSS growth (VmRSS - before).

Needs streamsvc and the example plugin installed in this Python
(`pip install . ./examples/streamsvc-logtail`). Everything on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HOST = "127.0.0.1"
MiB = 1024 * 1024
TOKEN = "bench-plugin-token"
HERE = os.path.dirname(os.path.abspath(__file__))
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


# --------------------------------------------------------------------- the bare peer (a subprocess)


def serve_bare(port: int, folder: str) -> None:
    from twisted.internet import reactor
    from twisted.internet.threads import deferToThread
    from twisted.logger import Logger
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    from streamsvc.plugin import PluginContext, PluginMetrics
    from streamsvc_logtail.plugin import logs
    from streamsvc_logtail.resource import LogsResource

    settings = {key: setting.default for key, setting in logs.settings.items()}
    settings["dir"] = folder
    context = PluginContext(
        name="logs", settings=settings, reactor=reactor, clock=reactor, metrics=PluginMetrics("logs", None),
        guard=lambda resource: resource, data_dir=folder, chunk_size=65536, run_in_thread=deferToThread,
        log=Logger(),
    )
    root = Resource()
    root.putChild(b"logs", LogsResource(context))
    reactor.listenTCP(port, Site(root), interface=HOST)
    reactor.run()


# --------------------------------------------------------------------- the client


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_listening(proc: subprocess.Popen, port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(f"server exited: {proc.communicate()[0]!r}")
            time.sleep(0.1)
    raise SystemExit("server did not listen")


def request(path: str, keep_alive: bool = False) -> bytes:
    connection = b"" if keep_alive else b"Connection: close\r\n"
    return (f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n").encode() + connection + b"\r\n"


def stream(port: int) -> float:
    with socket.create_connection((HOST, port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = bytearray(MiB)
        started = time.perf_counter()
        s.sendall(request("/logs/big.log?from=start&follow=no"))
        total = 0
        while True:
            n = s.recv_into(buf)
            if not n:
                break
            total += n
        elapsed = time.perf_counter() - started
    return total / MiB / elapsed


def small(port: int, count: int) -> float:
    with socket.create_connection((HOST, port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        raw = request("/logs/small.log?from=start&follow=no", keep_alive=True)
        started = time.perf_counter()
        for _ in range(count):
            s.sendall(raw)
            got = b""
            while not got.endswith(b"0\r\n\r\n"):  # the chunked body's end
                data = s.recv(65536)
                if not data:
                    raise SystemExit("connection closed")
                got += data
        elapsed = time.perf_counter() - started
    return count / elapsed


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def stalled(port: int, pid: int) -> float:
    before = rss_mib(pid)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    s.connect((HOST, port))
    s.sendall(request("/logs/big.log?from=start"))
    time.sleep(3)  # the server streams meanwhile, until the socket is full
    growth = rss_mib(pid) - before
    s.close()
    time.sleep(0.3)
    return growth


# --------------------------------------------------------------------- the runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve-bare", nargs=2, metavar=("PORT", "DIR"))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    if args.serve_bare:
        serve_bare(int(args.serve_bare[0]), args.serve_bare[1])
        return 0

    work = tempfile.mkdtemp(prefix="bench-plugin-")
    procs: list[subprocess.Popen] = []
    try:
        folder = os.path.join(work, "logs")
        os.mkdir(folder)
        line = b"x" * 99 + b"\n"
        with open(os.path.join(folder, "big.log"), "wb") as f:
            block = line * (MiB // 100)
            while f.tell() < args.mib * MiB:
                f.write(block)
        with open(os.path.join(folder, "small.log"), "wb") as f:
            f.write(line * 10)
        conf = os.path.join(work, "tap.conf")
        with open(conf, "w") as f:
            f.write(f"[server]\ndata_dir = {work}/data\n[auth]\ntokens = {TOKEN}\n"
                    f"[plugins]\nenabled = logs\n[plugin:logs]\ndir = {folder}\n")
        ports = {"streamsvc": free_port(), "bare": free_port()}
        servers = {
            "streamsvc": [TWISTD, "-n", "--pidfile=", "--logfile", os.path.join(work, "twistd.log"), "streamsvc",
                          "--config", conf, "--listen", f"tcp:{ports['streamsvc']}:interface={HOST}"],
            "bare": [sys.executable, os.path.abspath(__file__), "--serve-bare", str(ports["bare"]), folder],
        }
        pids = {}
        for name, argv in servers.items():
            proc = subprocess.Popen(argv, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            procs.append(proc)
            wait_listening(proc, ports[name])
            pids[name] = proc.pid
        results: dict[tuple[str, str], list[float]] = {}
        for run in range(args.runs):
            for name in (("streamsvc", "bare") if run % 2 == 0 else ("bare", "streamsvc")):
                port = ports[name]
                results.setdefault(("stream MiB/s", name), []).append(stream(port))
                results.setdefault(("small req/s", name), []).append(small(port, args.requests))
                results.setdefault(("stalled RSS growth MiB", name), []).append(stalled(port, pids[name]))
        print(f"bench_plugin: {args.mib} MiB log, {args.requests} small requests, {args.runs} runs, "
              f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
        print(f"{'scenario':<24} {'streamsvc':>10} {'bare':>10} {'ratio':>7}   runs (streamsvc | bare)")
        for scenario in ("stream MiB/s", "small req/s", "stalled RSS growth MiB"):
            ours, peer = results[(scenario, "streamsvc")], results[(scenario, "bare")]
            a, b = statistics.median(ours), statistics.median(peer)
            ratio = f"{a / b:.2f}" if b >= 0.5 else "-"  # (no ratio of two near-zero growths)
            runs = " ".join(f"{v:.1f}" for v in ours) + " | " + " ".join(f"{v:.1f}" for v in peer)
            print(f"{scenario:<24} {a:>10.1f} {b:>10.1f} {ratio:>7}   {runs}")
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
