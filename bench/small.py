#!/usr/bin/env python3
"""
Small responses with the default configuration (issue #28), every figure
from one command, side by side, in one run:

  - 4 KiB and 64 KiB GETs, requests/s (C{wrk -t1 -c32}, keep-alive);
  - the same with two processes: streamsvc C{--workers 2} beside nginx
    C{worker_processes 1 -> 2}, each one's gain;
  - server RSS growth per slow client (300 clients reading a big file at
    20 KB/s);
  - that no access line is lost: streamsvc's access log holds at least as
    many lines for the file as wrk counted answers.

Servers, each its own process (tree) on an ephemeral port on 127.0.0.1,
serving the same temporary DATA/files, restarted before every run (one
process can be 10-15 % faster than another identical one for its whole
life), the order rotated run by run:

  floor         python bench/peers/twisted_floor.py: twisted.web's C{static.Data}
                from memory, C{Site} with no access log (4 and 64 KiB only)
  static.File   twistd -n web --path DATA/files (its access line through twistd's log)
  streamsvc     twistd -n streamsvc --data-dir DATA: no tap.conf, every default
                (the access log to DATA/logs/access.log, metrics, timeouts)
  streamsvc-w2  the same with --workers 2
  nginx         nginx 1.x, worker_processes 1, sendfile on, access_log to a file
  nginx-w2      the same with worker_processes 2

    python bench/small.py                 # 5 runs x 5 s per figure, ~10 min
    python bench/small.py --quick         # 2 runs x 3 s, fewer slow clients
    python bench/small.py --only rps      # or slow_rss

Targets (issue #28): streamsvc 4 KiB >= 0.9 x floor, 64 KiB >= 1.2 x
static.File, streamsvc-w2/streamsvc >= nginx-w2/nginx, slow client <= 10 KiB.

Needs wrk (C{apt-get install -y wrk}); nginx is installed with apt-get when
missing and we are root, else its rows are skipped.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import tempfile
import time

from _child import end_run, interrupt_on_signals, log, run_failed  # bench/ is sys.path[0] when run as a script
from _machine import other_cpu_users, tool_version, tree_check
from _report import table
from _runner import (
    HERE, Server, cpu_seconds, free_ports, interleaved, kill_children, nginx_binary, nginx_conf,
    slow_rss, wait_ready, wrk,
)

FLOOR = os.path.join(HERE, "peers", "twisted_floor.py")
SIZES = {"4k.bin": 4096, "64k.bin": 65536}
BIG = "big.bin"
SERVERS = ("floor", "static.File", "streamsvc", "streamsvc-w2", "nginx", "nginx-w2")


def make_servers(twistd: str, tmp: str, files: str, nginx: str | None) -> list[Server]:
    data = os.path.dirname(files)
    listen = ["--listen", "tcp:{port}:interface=127.0.0.1"]

    def twistd_server(name: str, args: list[str], **kw) -> Server:
        log_ = os.path.join(tmp, f"{name}.log")
        return Server(name, [twistd, "-n", "--pidfile=", f"--logfile={log_}"] + args,
                      "/files/" if args[0] == "streamsvc" else "/", log_,
                      os.path.join(tmp, f"{name}.out"), **kw)

    out = [
        Server("floor", [sys.executable, FLOOR, "--port", "{port}", "--root", files], "/", "",
               os.path.join(tmp, "floor.out")),
        twistd_server("static.File", ["web"] + listen + ["--path", files]),
        twistd_server("streamsvc", ["streamsvc", "--data-dir", data] + listen),
        twistd_server("streamsvc-w2", ["streamsvc", "--data-dir", data, "--workers", "2"] + listen,
                      procs=3, listeners=2),
    ]
    if nginx:
        for name, workers in (("nginx", 1), ("nginx-w2", 2)):
            prefix = os.path.join(tmp, name)
            os.makedirs(prefix)
            conf = os.path.join(prefix, "nginx.conf")
            out.append(Server(name, [nginx, "-c", conf, "-p", prefix + "/", "-e",
                                     os.path.join(prefix, "error.log"),
                                     "-g", f"pid {os.path.join(prefix, 'nginx.pid')};"],
                              "/", os.path.join(prefix, "error.log"), os.path.join(tmp, f"{name}.out"),
                              procs=1 + workers, listeners=1 + workers,
                              conf=(conf, nginx_conf(prefix, files, workers))))
    return out


def access_lines(data: str, path: str) -> int:
    """GETs of path answered 200 in streamsvc's access log (DATA/logs/access.log)."""
    try:
        with open(os.path.join(data, "logs", "access.log"), "rb") as f:
            return f.read().count(f'"GET {path} HTTP/1.1" 200 '.encode())
    except FileNotFoundError:
        return 0


def measure(s: Server, args: argparse.Namespace, data: str) -> None:
    s.start(cwd=os.path.dirname(data), port=free_ports(1)[0])
    try:
        wait_ready(s, s.path("4k.bin"), 4096)
        if "rps" in args.only:
            wrk(s.url("4k.bin"), 1, threads=1)   # warm-up, not counted
            for name in SIZES:
                key = f"rps_{name.split('.')[0]}"
                before = access_lines(data, s.path(name)) if s.name.startswith("streamsvc") else 0
                cpu0 = cpu_seconds(s.pid)
                rps, n, notes = wrk(s.url(name), args.seconds, threads=1)
                cpu = cpu_seconds(s.pid) - cpu0
                if notes:
                    log(f"    warning: {s.name} {name}: {notes}")
                if s.name.startswith("streamsvc"):
                    deadline = time.monotonic() + 3
                    while (got := access_lines(data, s.path(name)) - before) < n and time.monotonic() < deadline:
                        time.sleep(0.1)   # the buffered log is flushed within a second
                    s.add(f"lost_{key}", max(0, n - got), f"{got} lines for {n} answers")
                s.add(key, rps, notes)
                s.add(f"cpu_{key}", cpu / n * 1e6 if n else float("nan"))
        if "slow_rss" in args.only and s.name != "floor":
            per, note = slow_rss(s, s.path(BIG), args.clients, 20_000, args.steady, 2.0)
            s.add("slow_rss", per, note)
    finally:
        s.stop()


def med(s: Server, key: str) -> float | None:
    v = [x for x in s.results.get(key, []) if x == x]
    return statistics.median(v) if v else None


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a is not None and b else "-"


def report(servers: list[Server]) -> None:
    by = {s.name: s for s in servers}
    rows_def = [("rps_4k", "4 KiB, wrk -t1 -c32 (req/s)", 0), ("rps_64k", "64 KiB (req/s)", 0),
                ("cpu_rps_4k", "server CPU µs per 4 KiB request", 0),
                ("cpu_rps_64k", "server CPU µs per 64 KiB request", 0),
                ("slow_rss", "RSS growth per slow client (KiB)", 1),
                ("lost_rps_4k", "access lines missing, 4 KiB run", 0),
                ("lost_rps_64k", "access lines missing, 64 KiB run", 0)]
    rows = [("metric (median)",) + tuple(s.name for s in servers)]
    for key, label, digits in rows_def:
        cells = tuple(f"{m:.{digits}f}" if (m := med(s, key)) is not None else "-" for s in servers)
        if any(c != "-" for c in cells):
            rows.append((label,) + cells)
    table(rows)
    print()
    m = {name: {k: med(s, k) for k in ("rps_4k", "rps_64k", "slow_rss")} for name, s in by.items()}

    def get(name: str, key: str) -> float | None:
        return m.get(name, {}).get(key)

    lines = [
        ("streamsvc / floor, 4 KiB", ratio(get("streamsvc", "rps_4k"), get("floor", "rps_4k")), ">= 0.90"),
        ("streamsvc / static.File, 4 KiB", ratio(get("streamsvc", "rps_4k"), get("static.File", "rps_4k")), "(~2x)"),
        ("streamsvc / static.File, 64 KiB", ratio(get("streamsvc", "rps_64k"), get("static.File", "rps_64k")), ">= 1.20"),
        ("streamsvc-w2 / streamsvc, 4 KiB", ratio(get("streamsvc-w2", "rps_4k"), get("streamsvc", "rps_4k")),
         f">= nginx's {ratio(get('nginx-w2', 'rps_4k'), get('nginx', 'rps_4k'))}"),
        ("streamsvc-w2 / streamsvc, 64 KiB", ratio(get("streamsvc-w2", "rps_64k"), get("streamsvc", "rps_64k")),
         f">= nginx's {ratio(get('nginx-w2', 'rps_64k'), get('nginx', 'rps_64k'))}"),
        ("streamsvc RSS per slow client (KiB)",
         f"{v:.1f}" if (v := get("streamsvc", "slow_rss")) is not None else "-",
         f"<= 10 (nginx {f'{n:.1f}' if (n := get('nginx', 'slow_rss')) is not None else '-'})"),
    ]
    table([("issue #28", "this run", "target")] + lines)
    print("\nIndividual runs (in run order):")
    for s in servers:
        for key, values in s.results.items():
            if not key.startswith("lost_"):
                print(f"  {s.name} {key}: " + ", ".join(f"{v:.1f}" for v in values))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=5.0, help="each wrk run")
    ap.add_argument("--clients", type=int, default=300, help="slow clients")
    ap.add_argument("--steady", type=float, default=8.0, help="seconds of slow clients measured")
    ap.add_argument("--only", default="rps,slow_rss")
    ap.add_argument("--servers", default=",".join(SERVERS))
    ap.add_argument("--quick", action="store_true", help="2 runs, 3 s, 100 slow clients")
    ap.add_argument("--twistd", default=os.path.join(os.path.dirname(sys.executable), "twistd"))
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.runs, args.seconds, args.clients, args.steady = 2, 3.0, 100, 5.0
    args.only = set(args.only.split(","))
    interrupt_on_signals()
    print("command: " + shlex.join([sys.executable] + sys.argv), flush=True)
    tmp = tempfile.mkdtemp(prefix="streamsvc-small-")
    servers: list[Server] = []
    ok = False
    try:
        nginx, why = nginx_binary()
        if not nginx:
            print(f"nginx rows skipped: {why}")
        files = os.path.join(tmp, "data", "files")
        os.makedirs(files)
        for name, size in SIZES.items():
            with open(os.path.join(files, name), "wb") as f:
                f.write(os.urandom(size))
        with open(os.path.join(files, BIG), "wb") as f:
            block = os.urandom(1 << 20)
            for _ in range(64):
                f.write(block)
        wanted = args.servers.split(",")
        servers = [s for s in make_servers(args.twistd, tmp, files, nginx) if s.name in wanted]
        import streamsvc

        print(f"machine: {os.cpu_count()} CPUs; wrk {tool_version(['wrk', '-v'], or_stderr=True)}; "
              f"nginx {tool_version([nginx, '-v'], or_stderr=True) if nginx else 'missing'}")
        print(f"streamsvc: {tree_check(os.path.dirname(streamsvc.__file__))}")
        print(f"at start: other processes using CPU: {other_cpu_users()}")
        for s in servers:
            print(f"server {s.name}: {shlex.join(s.argv_template)}")
        t0 = time.monotonic()
        for run, order in interleaved([s.name for s in servers], args.runs):
            log(f"run {run + 1}/{args.runs}: {', '.join(order)}")
            for name in order:
                measure(next(s for s in servers if s.name == name), args, os.path.join(tmp, "data"))
        print(f"runs: {args.runs}, {args.seconds:g} s per wrk run, {args.clients} slow clients; "
              f"total {time.monotonic() - t0:.0f} s; at end: other processes using CPU: {other_cpu_users()}\n")
        report(servers)
        ok = True
        return 0
    except (RuntimeError, OSError) as error:
        return run_failed(error, servers)
    finally:
        kill_children()
        end_run(servers, tmp, keep=args.keep, ok=ok)


if __name__ == "__main__":
    sys.exit(main())
