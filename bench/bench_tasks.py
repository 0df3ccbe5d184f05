#!/usr/bin/env python3
"""
Issue 14's benchmark: /tasks with a million tasks.  An NDJSON import through
``POST /tasks/import``, then the whole table exported as CSV, as NDJSON and
as gzipped CSV, against a plain Python loop reading the same SQLite file.

The server is the installed streamsvc under twistd, as in production, one
process per import run (each on a fresh data dir), started by this script as

    twistd -n --pidfile= --logfile=LOG streamsvc --config CONF --data-dir DATA \\
           --listen tcp:PORT:interface=127.0.0.1

in the temporary dir (so no ./tap.conf of the repository is read), where
CONF is ``[auth] tokens = benchtoken`` and nothing else (every other key at
its built-in default: access log combined into twistd's log, metrics on,
gzip level 6, 4 reader connections, synchronous = FULL).  PORT is a free
port (one retry if another process takes it first); the server is ready
when ``GET /healthz`` answers 200.

1. Import.  A file of ROWS NDJSON lines (1,000,000; --quick 100,000) is
   generated once in the temporary dir: titles of 20-60 characters made of
   words (about 10 % with a comma, 3 % with double quotes, 5 % with
   non-ASCII letters, 1 % starting with ``-`` or ``=``, which the CSV export
   guards), priorities 0-10 and the three statuses, from a fixed seed.  It is
   sent with

       curl -s -S -T FILE -X POST -H 'Content-Type: application/x-ndjson' \\
            -H 'Authorization: Bearer benchtoken' -o ANSWER \\
            -w '%{http_code} %{time_total} %{size_upload}' URL/tasks/import

   (a streamed upload with its Content-Length; curl's default ``Expect:
   100-continue`` left on).  rows/s = ROWS / curl's time_total.  The answer
   must be 200 with ``created`` = ROWS, ``failed`` = 0 and no errors.  Each
   import run has a fresh server on a fresh data dir, so every import fills
   an empty table; the server of the last run is kept for the exports.

2. Exports of that table (ROWS tasks): ``GET /tasks/export.csv``,
   ``GET /tasks/stream.ndjson``, and ``GET /tasks/export.csv`` with
   ``Accept-Encoding: gzip`` (``curl --compressed``: curl inflates it), read
   by curl writing to its stdout, a pipe this script reads and counts: the
   lines must be ROWS (+ 1 header line for CSV), the CSV header must be the
   export's columns and the last row the last task's id; the gzipped one must
   say ``Content-Encoding: gzip``.  rows/s = ROWS / curl's time_total; MB/s
   is bytes on the wire (compressed for gzip) / time_total.  Before the
   measured exports, one unmeasured warm-up of each kind with ``?limit=1000``
   (reader connections opened, code paths imported).

3. The peer, in the same runs, with the server idle: the driver's Python
   opens ``DATA/tasks.sqlite3`` with stdlib sqlite3 and runs
   ``SELECT id, title, priority, status, created_at, updated_at FROM tasks
   ORDER BY id``, ``csv.writer(open(os.devnull, "w", newline="",
   encoding="utf-8")).writerows(cursor)`` ("loop CSV"), timed from connect
   to the end.  "loop NDJSON" (no target, to read the NDJSON ratio by) writes
   each row as the server does: compact ``json.dumps`` of the task's six
   fields, ensure_ascii off, one per line.  The ratios are streamsvc's
   rows/s over loop CSV's, for the CSV and the NDJSON export (the issue's
   peer for both), and NDJSON over loop NDJSON as information.

Server memory (``/proc/PID/status``, PID = the twistd process; SQLite runs in
its threads): VmRSS just before a measurement; VmHWM reset to it by writing
``5`` to ``/proc/PID/clear_refs`` just before; VmRSS sampled every 50 ms
meanwhile; VmRSS once curl has exited.  Peak growth = max(VmHWM, sampled) -
before.  Responsiveness: during each import and export a driver thread sends
``GET /healthz`` every 10 ms over one keep-alive connection (bench_upload's
Probe: 2 s socket timeout, a failed probe counted and the connection
reopened) from just before curl starts until it exits; p50/p99/max are of
every probe, a failed one counted as infinitely slow.

Each measurement runs --runs times (default 3; --quick 1): the imports first
(one server each), then the exports and the loops, their order rotated by one
each run.  Before each one the script waits until the server holds its idle
number of fds and calls sync().  The tables show medians of the runs;
verdicts: rows/s ratios and /healthz p99 on the medians, RSS growth on the
worst run (as bench_upload.py).  Individual runs follow the tables.

Standard library only (plus curl); everything on 127.0.0.1; servers stopped
and the temporary dir removed on every exit (--keep keeps it).  Run it with
the Python of the venv streamsvc is installed in (``pip install .`` first to
measure the working tree: the output says whether the installed copy is the
tree).  The machine is shared and noisy: the output lists other processes
using CPU when the runs started and ended.  A default run takes about
1.5 minutes here, most of it the exports and the imports (--quick: under
10 s).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import shlex
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field

from _child import PortFileServer, Run, clean_env, log, run_script  # bench/ is sys.path[0] when run as a script
from _machine import print_machine, filesystem_of, machine_lines, other_cpu_users, tool_version, tree_check
from _report import Results, table
from _proc import Watch, fd_count, kib_to_mib, proc_status, reset_hwm
from _runner import HERE, free_ports, http_get, interleaved, settle_fds
from bench_upload import PROBE_INTERVAL, PROBE_TIMEOUT, Probe

HOST = "127.0.0.1"
MiB = 1024 * 1024
TOKEN = "benchtoken"
CURL = "/usr/bin/curl" if os.path.exists("/usr/bin/curl") else "curl"
SEED = 14
COLUMNS = ("id", "title", "priority", "status", "created_at", "updated_at")
SELECT = "SELECT id, title, priority, status, created_at, updated_at FROM tasks ORDER BY id"
IMPORT_RSS_TARGET = 32.0     # MiB, issue 14
EXPORT_RSS_TARGET = 20.0     # MiB, issue 14
P99_TARGET = 100.0           # ms, issue 14
RATIO_TARGET = 0.5           # streamsvc export rows/s / loop CSV rows/s, issue 14
WARM_LIMIT = 1000

EXPORTS = {  # name: (path, curl options, header lines)
    "CSV": ("/tasks/export.csv", [], 1),
    "NDJSON": ("/tasks/stream.ndjson", [], 0),
    "CSV gzip": ("/tasks/export.csv", ["-H", "Accept-Encoding: gzip", "--compressed"], 1),
}
LOOPS = ("loop CSV", "loop NDJSON")
ORDER = ("CSV", "NDJSON", "CSV gzip") + LOOPS


# --------------------------------------------------------------------------- the data


WORDS = ("review update fix deploy backup invoice report meeting budget draft release "
         "customer order email call schedule plan test migrate database cache index "
         "server client quarterly weekly team design docs onboarding security audit "
         "renew license contract vendor payroll expense laptop printer network sprint "
         "retro roadmap demo feedback survey hiring interview ticket incident follow-up "
         "with for the and on of to about before after new old old-style main").split()
ACCENTED = ("café", "Müller", "réunion", "Zürich", "façade", "naïve", "São Paulo", "Ångström",
            "東京", "crème brûlée")
STATUSES = ("pending", "in-progress", "completed")


def make_title(r: random.Random) -> str:
    want = r.randint(20, 60)
    words = [r.choice(WORDS).capitalize()]
    while len(" ".join(words)) < want:
        words.append(r.choice(WORDS))
    x = r.random()
    if x < 0.05:
        words[r.randrange(1, len(words))] = r.choice(ACCENTED)
    elif x < 0.15:
        k = r.randrange(1, len(words))
        words[k - 1] += ","
    elif x < 0.18:
        k = r.randrange(1, len(words))
        words[k] = f'"{words[k]}"'
    elif x < 0.19:
        words[0] = r.choice(("-", "=")) + words[0]
    title = " ".join(words)
    if len(title) > 60:
        title = title[:60].rstrip(" ,")
    return title


def make_ndjson(path: str, rows: int) -> tuple[int, float]:
    """The import body: `rows` NDJSON lines; (bytes, mean title length)."""
    r = random.Random(SEED)
    chars = 0
    with open(path, "w", encoding="utf-8") as f:
        lines = []
        for i in range(rows):
            title = make_title(r)
            chars += len(title)
            lines.append(json.dumps({"title": title, "priority": r.randint(0, 10),
                                     "status": r.choice(STATUSES)}, ensure_ascii=False))
            if len(lines) == 10000:
                f.write("\n".join(lines) + "\n")
                lines = []
        if lines:
            f.write("\n".join(lines) + "\n")
    return os.path.getsize(path), chars / rows


# --------------------------------------------------------------------------- the server


@dataclass
class Server(PortFileServer):
    name: str
    tmp: str
    data_dir: str
    twistd: str
    conffile: str
    port: int = 0
    idle_fds: int = 0
    info: dict = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    dsn: str = ""      # PostgreSQL: the database it serves (the conf's dsn_file holds it)
    kind = "twistd"    # PortFileServer's; the argv below is twistd's, not a --serve child

    @property
    def argv(self) -> list[str]:   # type: ignore[override]
        return [self.twistd, "-n", "--pidfile=", f"--logfile={self.logfile}", "streamsvc",
                "--config", self.conffile, "--data-dir", self.data_dir,
                "--listen", f"tcp:{self.port}:interface={HOST}"]

    @property
    def db(self) -> str:
        return os.path.join(self.data_dir, "tasks.sqlite3")

    def url(self, path: str) -> str:
        return f"http://{HOST}:{self.port}{path}"

    def start(self) -> None:   # type: ignore[override]
        """On a free port, with one retry; ready when /healthz answers."""
        for attempt in (1, 2):
            self.port = free_ports(1)[0]
            self.launch()
            try:
                self.wait_ready()
                break
            except RuntimeError:
                if attempt == 2 or self.alive() or "already in use" not in self.tail():
                    raise
                log(f"{self.name}: port {self.port} taken meanwhile; again on another")
        self.idle_fds = fd_count(self.pid)

    def wait_ready(self, timeout: float = 60.0) -> None:
        t0 = time.monotonic()
        last = ""
        while time.monotonic() - t0 < timeout:
            self.check_alive()
            try:
                status, _ = http_get(self.port, "/healthz", timeout=2.0)
                if status == 200:
                    return
                last = f"HTTP {status}"
            except OSError as e:
                last = repr(e)
            time.sleep(0.1)
        raise RuntimeError(f"{self.name}: /healthz not answering after {timeout:.0f}s ({last})\n"
                           + self.tail())


def write_conf(tmp: str, store: str, dsn: str = "", name: str = "") -> tuple[str, str]:
    """The server's config file for C{store} (and its DSN file); its path and text."""
    conffile = os.path.join(tmp, f"bench_tasks{('-' + name) if name else ''}.conf")
    conf = ("# written by bench/bench_tasks.py; every other key keeps its built-in default\n"
            f"[auth]\ntokens = {TOKEN}\n")
    if store == "postgresql":
        dsn_file = conffile + ".dsn"
        with open(dsn_file, "w") as f:
            f.write(dsn + "\n")
        conf += f"[tasks]\nstore = postgresql\ndsn_file = {os.path.basename(dsn_file)}\n"
    with open(conffile, "w") as f:
        f.write(conf)
    return conffile, conf


def table_facts(srv: Server) -> tuple[int, int]:
    """(count, max id) of the server's tasks table, read beside it."""
    if srv.dsn:
        import psycopg

        with psycopg.connect(srv.dsn) as c:
            return tuple(c.execute("SELECT count(*), max(id) FROM tasks").fetchone())  # type: ignore[return-value]
    c = sqlite3.connect(srv.db)
    try:
        return c.execute("SELECT count(*), max(id) FROM tasks").fetchone()
    finally:
        c.close()


def table_mib(srv: Server) -> float:
    if srv.dsn:
        import psycopg

        with psycopg.connect(srv.dsn) as c:
            return c.execute("SELECT pg_total_relation_size('tasks')").fetchone()[0] / MiB
    return sum(os.path.getsize(srv.db + x) for x in ("", "-wal") if os.path.exists(srv.db + x)) / MiB


def server_runtime(twistd: str, tmp: str) -> dict:
    """What the server's Python has: versions, where streamsvc is imported from, SQLite."""
    py = os.path.join(os.path.dirname(twistd), "python")
    code = ("import json, os, platform, sqlite3, sys, twisted, streamsvc\n"
            "from importlib.metadata import version\n"
            "print(json.dumps({'python': f'{platform.python_version()} ({sys.executable})',"
            " 'twisted': twisted.__version__, 'streamsvc_version': version('streamsvc'),"
            " 'streamsvc_file': os.path.dirname(os.path.abspath(streamsvc.__file__)),"
            " 'sqlite': sqlite3.sqlite_version}))")
    try:
        r = subprocess.run([py, "-c", code], capture_output=True, text=True, timeout=60,
                           cwd=tmp, env=clean_env(), stdin=subprocess.DEVNULL)
        return json.loads(r.stdout)
    except (OSError, subprocess.SubprocessError, ValueError):
        return {}


# --------------------------------------------------------------------------- measurements


def percentile(values: list[float], q: float) -> float:
    """Nearest rank; NaN for none."""
    if not values:
        return float("nan")
    s = sorted(values)
    return s[max(0, math.ceil(q * len(s)) - 1)]


def probe_values(probe: Probe) -> dict[str, float]:
    lat = [x * 1e3 for x in probe.latencies] + [math.inf] * probe.failed
    return {"p50_ms": percentile(lat, 0.50), "p99_ms": percentile(lat, 0.99),
            "max_ms": max(lat) if lat else float("nan"),
            "probes": float(len(probe.latencies)), "probe_fail": float(probe.failed)}


class Measured:
    """Around one server measurement: settle, sync, RSS before/peak/after, the /healthz probe."""

    def __init__(self, srv: Server, settle: bool = True) -> None:
        self.srv = srv
        self.pre = srv.settle() if settle else ""
        os.sync()
        self.pid = srv.pid
        self.before = proc_status(self.pid)["VmRSS"]
        self.hwm_ok = reset_hwm(self.pid)
        self.watch = Watch(self.pid)
        self.probe = Probe(srv.port)

    def __enter__(self) -> "Measured":
        self.watch.__enter__()
        self.probe.__enter__()
        self.probe.wait_first(PROBE_TIMEOUT + 0.5)   # answering before curl starts
        return self

    def curl_done(self) -> None:
        self.probe.stop()            # no new probe once curl has exited
        self.status = proc_status(self.pid)

    def __exit__(self, *exc) -> None:
        self.probe.__exit__(*exc)
        self.watch.__exit__(*exc)

    def values(self) -> dict[str, float]:
        st = self.status
        peak = max(st["VmHWM"], self.watch.max_rss) if self.hwm_ok else self.watch.max_rss
        return {"rss_before": kib_to_mib(self.before), "rss_peak": kib_to_mib(peak),
                "rss_after": kib_to_mib(st["VmRSS"]), "growth": kib_to_mib(peak - self.before),
                **probe_values(self.probe)}

    def note(self) -> str:
        st = self.status
        return (f"{self.pre}RSS before {kib_to_mib(self.before):.1f} MiB, VmHWM "
                f"{kib_to_mib(st['VmHWM']):.1f}{'' if self.hwm_ok else ' (not reset)'}, max sampled "
                f"{kib_to_mib(self.watch.max_rss):.1f}, after {kib_to_mib(st['VmRSS']):.1f} MiB; "
                f"{self.probe.note()}")


def m_import(srv: Server, src: str, rows: int, timeout: float) -> tuple[dict, str]:
    answer = os.path.join(srv.tmp, "import-answer.json")
    argv = [CURL, "-s", "-S", "-T", src, "-X", "POST", "-H", "Content-Type: application/x-ndjson",
            "-H", f"Authorization: Bearer {TOKEN}", "-o", answer, "--max-time", f"{timeout:g}",
            "-w", "%{http_code} %{time_total} %{size_upload} %{time_starttransfer}",
            srv.url("/tasks/import")]
    with Measured(srv) as m:
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 30,
                               env=clean_env(), stdin=subprocess.DEVNULL)
        finally:
            m.curl_done()
    srv.check_alive()
    parts = r.stdout.split()
    if r.returncode != 0 or len(parts) != 4:
        raise RuntimeError(f"import: curl exited {r.returncode}: {r.stdout!r} {r.stderr.strip()!r}")
    code, total, uploaded, first = int(parts[0]), float(parts[1]), int(float(parts[2])), float(parts[3])
    with open(answer, "rb") as f:
        body = f.read()
    os.unlink(answer)
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if code != 200 or not isinstance(doc, dict):
        raise RuntimeError(f"import: HTTP {code}: {body[:300]!r}")
    if doc.get("created") != rows or doc.get("failed") != 0 or doc.get("errors"):
        raise RuntimeError(f"import: expected created={rows}, failed=0; got "
                           f"created={doc.get('created')}, failed={doc.get('failed')}, "
                           f"errors {json.dumps(doc.get('errors'))[:300]}")
    if uploaded != os.path.getsize(src):
        raise RuntimeError(f"import: curl uploaded {uploaded} of {os.path.getsize(src)} bytes")
    values = {"rows_s": rows / total, "mb_s": uploaded / 1e6 / total, **m.values()}
    note = (f"200 created={rows} failed=0; curl {total:.2f}s (first answer byte at {first:.2f}s); "
            + m.note())
    return values, note


def m_export(srv: Server, kind: str, rows: int, last_id: int, timeout: float,
             limit: int | None = None) -> tuple[dict, str]:
    """One export read by curl into a pipe this process counts; the rows checked."""
    path, opts, header_lines = EXPORTS[kind]
    if limit is not None:
        path += f"?limit={limit}"
    headers = os.path.join(srv.tmp, "export-headers.txt")
    argv = [CURL, "-s", "-S", *opts, "-H", f"Authorization: Bearer {TOKEN}", "-D", headers,
            "--max-time", f"{timeout:g}",
            "-w", "%{stderr}\nwrite-out: %{http_code} %{time_total} %{size_download} %{time_starttransfer}",
            srv.url(path)]
    lines = 0
    first = b""
    tail = b""
    with Measured(srv, settle=limit is None) as m:
        curl = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=clean_env(), stdin=subprocess.DEVNULL)
        try:
            while True:
                chunk = curl.stdout.read(1 << 16)
                if not chunk:
                    break
                lines += chunk.count(b"\n")
                if len(first) < 4096 and b"\n" not in first:
                    first += chunk[:4096]
                tail = (tail + chunk)[-4096:]
            err = curl.stderr.read().decode("utf-8", "replace")
            rc = curl.wait(timeout + 30)
        finally:
            if curl.poll() is None:
                curl.kill()
                curl.wait(10)
            curl.stdout.close()
            curl.stderr.close()
            m.curl_done()
    srv.check_alive()
    out = [line for line in err.splitlines() if line.startswith("write-out: ")]
    parts = out[-1].split()[1:] if out else []
    if rc != 0 or len(parts) != 4:
        raise RuntimeError(f"{kind} export: curl exited {rc}: {err.strip()!r}")
    code, total, size, first_byte = int(parts[0]), float(parts[1]), int(float(parts[2])), float(parts[3])
    with open(headers, "rb") as f:
        head = f.read().decode("latin-1").lower()
    os.unlink(headers)
    what = f"{kind} export {path}"
    want_rows = rows if limit is None else min(limit, rows)
    if code != 200:
        raise RuntimeError(f"{what}: HTTP {code}")
    if lines != want_rows + header_lines:
        raise RuntimeError(f"{what}: {lines} lines, expected {want_rows + header_lines}")
    if ("gzip" in kind) != ("content-encoding: gzip" in head):
        raise RuntimeError(f"{what}: response headers {head.strip()!r}")
    last = tail.rstrip(b"\n").rsplit(b"\n", 1)[-1]
    want_last = last_id if limit is None else None
    if kind.startswith("CSV"):
        if first.split(b"\n", 1)[0].rstrip(b"\r").decode() != ",".join(COLUMNS):
            raise RuntimeError(f"{what}: header line {first[:200]!r}")
        got_last = int(last.split(b",", 1)[0])
    else:
        got_last = json.loads(last)["id"]
    if want_last is not None and got_last != want_last:
        raise RuntimeError(f"{what}: last row has id {got_last}, expected {want_last}")
    values = {"rows_s": want_rows / total, "mb_s": size / 1e6 / total, "mb": size / 1e6, **m.values()}
    note = (f"200, {lines} lines, last id {got_last}, {size} bytes on the wire; curl {total:.2f}s "
            f"(first byte at {first_byte:.3f}s); " + m.note())
    return values, note


def m_loop(srv: Server, kind: str, rows: int) -> tuple[dict, str]:
    """
    The peer: a plain Python loop over the same table, writing to /dev/null:
    stdlib sqlite3 on the SQLite file, or psycopg on PostgreSQL through a
    named (server-side) cursor fetching 2,000 rows a round trip, so the
    bare loop streams in constant memory as the server must.
    """
    os.sync()
    t0 = time.perf_counter()
    if srv.dsn:
        import psycopg

        connection = psycopg.connect(srv.dsn)
        cursor = connection.cursor(name="bench_loop")
        cursor.itersize = 2000
        cursor.execute(SELECT)
    else:
        connection = sqlite3.connect(srv.db)
        cursor = connection.execute(SELECT)
    try:
        with open(os.devnull, "w", newline="", encoding="utf-8") as out:
            if kind == "loop CSV":
                csv.writer(out).writerows(cursor)
            else:
                dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
                for id_, title, priority, status, created, updated in cursor:
                    out.write(dumps({"id": id_, "title": title, "priority": priority, "status": status,
                                     "created_at": created, "updated_at": updated}) + "\n")
        total = time.perf_counter() - t0
    finally:
        connection.close()
    return {"rows_s": rows / total}, f"{total:.2f}s"


# --------------------------------------------------------------------------- report




COLS = [  # key, header
    ("rows_s", "rows/s"),
    ("mb_s", "MB/s"),
    ("rss_before", "RSS before"),
    ("rss_peak", "RSS peak"),
    ("rss_after", "RSS after"),
    ("growth", "peak growth"),
    ("p50_ms", "healthz p50 ms"),
    ("p99_ms", "healthz p99 ms"),
    ("max_ms", "healthz max ms"),
    ("probes", "probes"),
    ("probe_fail", "failed"),
]


def fmt(v: float | None, key: str) -> str:
    if v is None or v != v:
        return "-"
    if v == math.inf:
        return "inf"
    if key in ("rows_s", "probes", "probe_fail"):
        return f"{v:,.0f}"
    if key.endswith("_ms"):
        return f"{v:.1f}"
    return f"{v:.1f}"


def report(res: Results, rows: int, runs: int, loop_what: str = "sqlite3") -> None:
    names = ["import"] + list(EXPORTS) + list(LOOPS)
    print(f"/tasks with {rows:,} tasks (medians of {runs} run(s); RSS in MiB, of the server process)")
    t = [("measurement",) + tuple(h for _, h in COLS)]
    for n in names:
        if n in res.values:
            t.append((n,) + tuple(fmt(res.median(n, k), k) if k in res.values[n] else "" for k, _ in COLS))
    table(t, "  ")
    print()
    loop = res.median("loop CSV", "rows_s")
    checks = [("check", "value", "target", "verdict")]

    def verdict(ok: bool | None) -> str:
        return "-" if ok is None else ("PASS" if ok else "MISS")

    def growth(name: str, target: float) -> None:
        g = res.all(name, "growth")
        if g:
            checks.append((f"{name}: server RSS peak growth, worst run",
                           f"{max(g):.1f} MiB (median {statistics.median(g):.1f})",
                           f"<= {target:g} MiB", verdict(max(g) <= target)))

    # m_import raises on any other answer: reaching the report means every run had these.
    checks.append(("import answer, every run: created / failed", f"{rows:,} / 0", f"{rows:,} / 0", "PASS"))
    growth("import", IMPORT_RSS_TARGET)
    for kind in EXPORTS:
        s = res.median(kind, "rows_s")
        target = kind != "CSV gzip"
        if s is not None and loop:
            checks.append((f"{kind} export rows/s / loop CSV rows/s",
                           f"{s / loop:.2f} ({s:,.0f} / {loop:,.0f})",
                           f">= {RATIO_TARGET:g}" if target else "- (no target)",
                           verdict(s / loop >= RATIO_TARGET) if target else "-"))
        if target:
            growth(kind, EXPORT_RSS_TARGET)
        p = res.median(kind, "p99_ms")
        worst = max(res.all(kind, "p99_ms"), default=None)
        if p is not None:
            checks.append((f"{kind} export: /healthz p99", f"{fmt(p, 'p99_ms')} ms (worst run "
                           f"{fmt(worst, 'p99_ms')})", f"<= {P99_TARGET:g} ms" if target else "-",
                           verdict(p <= P99_TARGET) if target else "-"))
    s, ln = res.median("NDJSON", "rows_s"), res.median("loop NDJSON", "rows_s")
    if s is not None and ln:
        checks.append(("NDJSON export rows/s / loop NDJSON rows/s", f"{s / ln:.2f} ({s:,.0f} / {ln:,.0f})",
                       "- (information)", "-"))
    gz, plain = res.median("CSV gzip", "mb"), res.median("CSV", "mb")
    if gz and plain:
        checks.append(("CSV gzip: bytes on the wire / plain CSV", f"{gz / plain:.3f} ({gz:.1f} / "
                       f"{plain:.1f} MB)", "-", "-"))
    table(checks, "  ")
    print()
    print("Notes: rows/s = rows / curl's time_total (import: the whole upload until the answer; "
          "exports: until the last byte).  MB/s = bytes on the wire (10^6) / time_total.  RSS "
          "growth = max(VmHWM after clear_refs, VmRSS sampled every 50 ms) - VmRSS just before, of "
          "the twistd process.  /healthz: one keep-alive connection, a probe every "
          f"{PROBE_INTERVAL * 1e3:g} ms after the last answer ({PROBE_TIMEOUT:g} s timeout); "
          "percentiles by nearest rank over every probe sent, a failed one counted as infinite.  "
          f"The loops ({loop_what}) run in the driver with the server idle, timed from connect to the last row, "
          "and have no RSS or /healthz figures.  Verdicts: ratios and p99 on the medians, RSS "
          "growth on the worst run.")
    print()
    print("Individual runs (in run order):")
    for j, order in enumerate(res.orders, 1):
        print(f"  export run {j} order: {order}")
    for n in names:
        for k, h in COLS + [("mb", "MB")]:
            if k in res.values.get(n, {}):
                print(f"  {n:<12} {h:<15} " + ", ".join(fmt(v, k) for v in res.values[n][k]))
    for n in names:
        for j, note in enumerate(res.notes.get(n, []), 1):
            print(f"  {n:<12} run {j}: {note}")


def machine_info(info: dict, tmp: str, twistd: str) -> list[str]:
    """
    The common lines (the driver's SQLite with them: the loops use it), then
    what is this script's own: the disk the data dirs are on, curl, and the
    server's runtime. Not L{server_lines}: the server is twistd itself, not a
    C{--serve} child with a port file, so its C{info} is what
    L{server_runtime} asked its Python (no reactor; SQLite, which it has).
    """
    lines = machine_lines(driver_note=f"SQLite {sqlite3.sqlite_version} (the loops)")
    du = shutil.disk_usage(tmp)
    lines.append(f"data dirs and the import file in {tmp}: {filesystem_of(tmp, device=True)}, "
                 f"{du.free // (1024 ** 3)} GiB free")
    lines.append(f"client: {tool_version([CURL, '--version'])}")
    lines.append(f"server: {twistd}: Python {info.get('python', '?')}; Twisted {info.get('twisted', '?')}; "
                 f"streamsvc {info.get('streamsvc_version', '?')} from {info.get('streamsvc_file', '?')}; "
                 f"SQLite {info.get('sqlite', '?')}")
    if info.get("streamsvc_file"):
        lines.append("  " + tree_check(info["streamsvc_file"]))
    return lines


# --------------------------------------------------------------------------- main


def m_events(a: Server, b: Server, n: int) -> tuple[dict, str]:
    """
    Cross-host event latency: a subscriber of host B's C{/tasks/events}
    (SSE, a raw socket read by a thread), and C{n} tasks POSTed one after
    another to host A over one keep-alive connection; each latency is from
    just before A's POST is sent to the moment B's stream has that task's
    C{created} event. The two hosts share one PostgreSQL database.
    """
    import http.client
    import socket
    import threading

    seen: dict[str, float] = {}
    arrived = threading.Condition()
    sock = socket.create_connection((HOST, b.port), timeout=30)
    sock.sendall(b"GET /tasks/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
                 + b"\r\n\r\n")
    stop = threading.Event()

    def read() -> None:
        buf = b""
        while not stop.is_set():
            try:
                data = sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            now = time.perf_counter()
            buf += data
            *lines, buf = buf.split(b"\n")
            for line in lines:
                if line.startswith(b"data: ") and b'"title":"lat-' in line:
                    title = json.loads(line[6:])["title"]
                    with arrived:
                        seen[title] = now
                        arrived.notify_all()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    conn = http.client.HTTPConnection(HOST, a.port, timeout=30)
    latencies = []
    try:
        time.sleep(0.5)  # the subscription is open (its opening line sent) before the first POST
        for i in range(n):
            title = f"lat-{i}"
            body = json.dumps({"title": title})
            t0 = time.perf_counter()
            conn.request("POST", "/tasks", body, {"Content-Type": "application/json",
                                                  "Authorization": f"Bearer {TOKEN}"})
            r = conn.getresponse()
            r.read()
            if r.status != 201:
                raise RuntimeError(f"event latency: POST answered {r.status}")
            with arrived:
                if not arrived.wait_for(lambda: title in seen, timeout=10):
                    raise RuntimeError(f"event latency: {title} never reached host B")
            latencies.append((seen[title] - t0) * 1e3)
    finally:
        stop.set()
        conn.close()
        sock.close()
    return ({"p50_ms": percentile(latencies, 0.5), "p99_ms": percentile(latencies, 0.99),
             "max_ms": max(latencies)}, f"{n} events, POST on A to the event on B")


def measure_store(run: Run, args: argparse.Namespace, store: str, runs: int, rows: int, src: str,
                  cluster) -> tuple[Results, Server, str, str, float, int]:
    """
    One store's imports (a fresh server on a fresh data dir, and on
    PostgreSQL a fresh database, each run), then its exports and loops on
    the last import's table. Returns the results, the kept server, its
    config text, the cross-host event line (PostgreSQL), the table's size
    and last id.
    """
    def new_server(label: str) -> Server:
        dsn = cluster.new_database() if store == "postgresql" else ""
        conffile, conf = write_conf(run.tmp, store, dsn, label)
        s = Server(label, run.tmp, os.path.join(run.tmp, f"data-{label}"), args.twistd, conffile, dsn=dsn)
        s.conf_text = conf  # type: ignore[attr-defined]
        run.servers.append(s)
        s.start()
        log(f"{s.name} (pid {s.pid}, port {s.port}) ready; RSS "
            f"{kib_to_mib(proc_status(s.pid)['VmRSS']):.1f} MiB, {s.idle_fds} fds idle")
        return s

    res = Results()
    srv: Server | None = None
    for i in range(1, runs + 1):
        if srv is not None:
            srv.stop()
            shutil.rmtree(srv.data_dir, ignore_errors=True)
        srv = new_server(f"{store}-import{i}")
        t0 = time.monotonic()
        v, note = m_import(srv, src, rows, args.timeout)
        res.add("import", v, note)
        log(f"  {store} run {i}/{runs} import: {v['rows_s']:,.0f} rows/s, RSS growth {v['growth']:.1f} MiB, "
            f"healthz p99 {fmt(v['p99_ms'], 'p99_ms')} ms ({time.monotonic() - t0:.1f}s)")
    assert srv is not None
    count, last_id = table_facts(srv)
    if count != rows:
        raise RuntimeError(f"{srv.name}: {count} tasks, expected {rows}")
    size = table_mib(srv)
    for kind in EXPORTS:   # unmeasured warm-up
        m_export(srv, kind, rows, last_id, args.timeout, limit=WARM_LIMIT)
    # Now with the store's connections open: the count once unchanged for
    # 0.5 s. The server is one process (no --workers), so the count of its
    # tree is that of its pid, which settle() compares it with.
    srv.idle_fds = settle_fds(srv.pid, max_wait=5.0, stable_for=0.5)[0]
    for i, order in interleaved(list(ORDER), runs):
        res.orders.append(", ".join(order))
        for kind in order:
            t0 = time.monotonic()
            if kind in LOOPS:
                v, note = m_loop(srv, kind, rows)
            else:
                v, note = m_export(srv, kind, rows, last_id, args.timeout)
            res.add(kind, v, note)
            extra = ("" if kind in LOOPS else f", RSS growth {v['growth']:.1f} MiB, healthz p99 "
                     f"{fmt(v['p99_ms'], 'p99_ms')} ms")
            log(f"  {store} run {i + 1}/{runs} {kind}: {v['rows_s']:,.0f} rows/s{extra} "
                f"({time.monotonic() - t0:.1f}s)")
    events = ""
    if store == "postgresql":
        # A second host on the same database, for the cross-host event latency.
        conffile, _ = write_conf(run.tmp, store, srv.dsn, "host-b")
        b = Server("postgresql-host-b", run.tmp, os.path.join(run.tmp, "data-host-b"), args.twistd,
                   conffile, dsn=srv.dsn)
        run.servers.append(b)
        b.start()
        for i in range(runs):
            v, note = m_events(srv, b, args.events)
            res.add("events", v, note)
            log(f"  events run {i + 1}/{runs}: p50 {v['p50_ms']:.2f} ms, p99 {v['p99_ms']:.2f} ms")
        events = (f"{args.events} events a run: POST on host A to the event on host B's /tasks/events, "
                  f"p50 {res.median('events', 'p50_ms'):.2f} ms, p99 {res.median('events', 'p99_ms'):.2f} ms, "
                  f"max {max(res.all('events', 'max_ms')):.2f} ms (medians of {runs})")
        b.stop()
    srv.settle()
    return res, srv, srv.conf_text, events, size, last_id  # type: ignore[attr-defined]


def bench(run: Run, args: argparse.Namespace, runs: int, rows: int) -> None:
    """
    Per store (SQLite; with --store postgresql, PostgreSQL too, on a
    throw-away cluster of this script's): the imports, then the exports and
    the loops; then the reports side by side. In C{run.tmp}, every server in
    C{run.servers} (L{run_script} stops them).
    """
    info = server_runtime(args.twistd, run.tmp)
    src = os.path.join(run.tmp, "tasks.ndjson")
    t = time.monotonic()
    src_bytes, title_len = make_ndjson(src, rows)
    log(f"import file: {rows:,} rows, {src_bytes / MiB:.1f} MiB, mean title {title_len:.1f} chars "
        f"({time.monotonic() - t:.1f}s)")
    stores = ["sqlite"] + (["postgresql"] if args.store == "postgresql" else [])
    cluster = None
    if "postgresql" in stores:
        sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
        from pg_cluster import PostgresCluster, server_binaries

        binaries = server_binaries()
        if binaries is None:
            raise RuntimeError("--store postgresql: PostgreSQL's server is not installed "
                               "(Debian: apt-get install postgresql)")
        cluster = PostgresCluster(binaries, durable=True)
        cluster.start()
        run.servers.append(ClusterStopper(cluster))
        log(f"PostgreSQL cluster on port {cluster.port} ({binaries}; fsync on, as SQLite's synchronous = FULL)")

    load_before = other_cpu_users()
    log("before: " + load_before)
    measured = {store: measure_store(run, args, store, runs, rows, src, cluster) for store in stores}
    load_after = other_cpu_users(ours={s.pid for s in run.servers if getattr(s, "proc", None)})

    peers = "a plain Python loop over the same SQLite file" + (
        "; and on PostgreSQL, a bare psycopg loop over the same table" if cluster else "")
    print(f"/tasks: import {rows:,} NDJSON rows, then export them as CSV, NDJSON and gzipped CSV, "
          f"against {peers}; stores: {', '.join(stores)}; {runs} run(s); quick={args.quick}")
    print(f"import file: {src_bytes:,} bytes ({src_bytes / rows:.0f} bytes a row, mean title "
          f"{title_len:.1f} characters, seed {SEED})")
    for store, (res, srv, conf, events, size, last_id) in measured.items():
        print(f"{store}: table {size:.1f} MiB ({'tasks.sqlite3 + -wal' if store == 'sqlite' else 'pg_total_relation_size'}),"
              f" last id {last_id}; server: " + shlex.join(srv.argv) + f"   (cwd {run.tmp}; one per import run)")
        print("  CONF: " + " ".join(line for line in conf.splitlines()[1:]))
    print("import: " + shlex.join([CURL, "-s", "-S", "-T", "FILE", "-X", "POST", "-H",
                                   "Content-Type: application/x-ndjson", "-H",
                                   "Authorization: Bearer benchtoken", "URL/tasks/import"]))
    print("exports: " + shlex.join([CURL, "-s", "-S", "-H", "Authorization: Bearer benchtoken",
                                    "URL/tasks/{export.csv,stream.ndjson}"])
          + " | (this script counts the lines); gzip: + -H 'Accept-Encoding: gzip' --compressed")
    print()
    lines = machine_info(info, run.tmp, args.twistd)
    if cluster is not None:
        lines.append(f"PostgreSQL: {tool_version([os.path.join(cluster.binaries, 'postgres'), '--version'])}; "
                     "a cluster of this run, on 127.0.0.1, default settings (fsync on)")
    print_machine(lines, load_before, load_after, run.servers)
    print()
    for store, (res, srv, conf, events, size, last_id) in measured.items():
        print(f"== {store} ==")
        report(res, rows, runs, loop_what="psycopg" if store == "postgresql" else "sqlite3")
        print()
    if cluster is not None:
        pg, lite = measured["postgresql"][0], measured["sqlite"][0]
        checks = [("check", "value", "target", "verdict")]
        a, b = pg.median("import", "rows_s"), lite.median("import", "rows_s")
        checks.append(("PostgreSQL import rows/s / SQLite store's", f"{a / b:.2f} ({a:,.0f} / {b:,.0f})",
                       ">= 0.5", "PASS" if a / b >= 0.5 else "MISS"))
        for kind in ("CSV", "NDJSON"):
            a, b = pg.median(kind, "rows_s"), pg.median("loop CSV", "rows_s")
            checks.append((f"PostgreSQL {kind} export rows/s / bare psycopg CSV loop", f"{a / b:.2f} "
                           f"({a:,.0f} / {b:,.0f})", ">= 0.5", "PASS" if a / b >= 0.5 else "MISS"))
        g = max(pg.all("CSV", "growth") + pg.all("NDJSON", "growth"))
        checks.append((f"PostgreSQL export: host RSS growth, worst run ({rows:,} rows)", f"{g:.1f} MiB",
                       "<= 32 MiB", "PASS" if g <= 32 else "MISS"))
        p99 = pg.median("events", "p99_ms")
        checks.append(("cross-host event latency p99 (median of runs)", f"{p99:.2f} ms "
                       f"(p50 {pg.median('events', 'p50_ms'):.2f})", "<= 50 ms", "PASS" if p99 <= 50 else "MISS"))
        a = pg.median("CSV", "p99_ms")
        checks.append(("PostgreSQL CSV export: /healthz p99", f"{fmt(a, 'p99_ms')} ms "
                       f"(SQLite {fmt(lite.median('CSV', 'p99_ms'), 'p99_ms')} ms)", "-", "-"))
        print("== PostgreSQL against SQLite and the bare loop ==")
        table(checks, "  ")
        print("  " + measured["postgresql"][3])
        print()


class ClusterStopper:
    """In C{run.servers}, so that L{run_script}'s end stops the PostgreSQL cluster too."""

    name = "postgresql"
    proc = None

    def __init__(self, cluster) -> None:
        self.cluster = cluster

    def stop(self) -> None:
        self.cluster.destroy()


def main() -> int:
    default_twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    ap = argparse.ArgumentParser(
        description="/tasks with a million tasks: NDJSON import, CSV/NDJSON/gzip exports, "
                    "against a plain Python loop over the same SQLite file")
    ap.add_argument("--runs", type=int, default=None, help="runs of each measurement [3; --quick: 1]")
    ap.add_argument("--rows", type=int, default=None, help="tasks imported [1000000; --quick: 100000]")
    ap.add_argument("--quick", action="store_true", help="a smoke test: 100,000 rows, 1 run")
    ap.add_argument("--timeout", type=float, default=600.0, help="curl --max-time per request [600]")
    ap.add_argument("--twistd", default=default_twistd, help=f"twistd to run the server with [{default_twistd}]")
    ap.add_argument("--tmpdir", default=None, help="where to create the temporary dir [system default]")
    ap.add_argument("--keep", action="store_true", help="keep the temporary dir (logs, data) at the end")
    ap.add_argument("--store", choices=("sqlite", "postgresql"), default="sqlite",
                    help="sqlite, or postgresql: PostgreSQL too, side by side with SQLite, on a "
                         "throw-away cluster, with the cross-host event latency [sqlite]")
    ap.add_argument("--events", type=int, default=None, help="events per latency run [500; --quick: 100]")
    args = ap.parse_args()
    if args.events is None:
        args.events = 100 if args.quick else 500

    runs = args.runs if args.runs is not None else (1 if args.quick else 3)
    rows = args.rows if args.rows is not None else (100_000 if args.quick else 1_000_000)
    if runs < 1:
        ap.error("--runs must be at least 1")
    if rows < WARM_LIMIT:
        ap.error(f"--rows must be at least {WARM_LIMIT}")
    if not os.path.exists(args.twistd):
        ap.error(f"twistd not found at {args.twistd} (use --twistd)")

    return run_script(lambda run: bench(run, args, runs, rows), prefix="streamsvc-tasks-",
                      tmpdir=args.tmpdir, keep=args.keep)


if __name__ == "__main__":
    sys.exit(main())
