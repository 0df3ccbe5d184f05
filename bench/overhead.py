#!/usr/bin/env python3
"""
What the features added by issue 13 cost on the 4 KiB requests/s benchmark
(bench_files.py's ``rps`` scenario: ``wrk -t2 -c32 -d10s`` on a 4 KiB file),
each feature on and off, side by side in one run.

Every variant is its own twistd process on an ephemeral port on 127.0.0.1,
all serving the same temporary DATA/files, each logging to its own file
(twistd --logfile, which rotates it at 1 MB), as in production.  All of them
are (re)started on fresh ports before every run: one process can be 10-15 %
faster or slower than another with the same settings for its whole life
(seen on a 2-vCPU VM; the cause is not pinned down), so one process per
variant would bias all its runs alike; --same-process keeps them instead.

    twistd -n --pidfile= --logfile=LOG streamsvc --config CONF --data-dir DATA --listen tcp:PORT:interface=127.0.0.1
    twistd -n --pidfile= --logfile=LOG web --listen tcp:PORT:interface=127.0.0.1 --path DATA/files [--logfile /dev/null]

streamsvc variants (CONF is a tap.conf holding only the keys below; every
other key keeps its built-in default):

  all-on            access_log = combined (to DATA_DIR/logs/access.log), metrics = yes, send_timeout = 60,
                    header_timeout = 15, idle_timeout = 60,
                    max_connections = 1024  (the built-in defaults)
  log-off           all-on with [server] access_log = off
  log-twistd        all-on with [server] access_log_file = twistd (the lines through
                    twistd's log, the default before DATA_DIR/logs/access.log)
  metrics-off       all-on with [server] metrics = no
  send-timeout-off  all-on with [limits] send_timeout = 0
  all-off           access_log = off, metrics = no, send_timeout = 0,
                    header_timeout = 0, idle_timeout = 0, max_connections as
                    high as the fd hard limit allows (1000000, or less when
                    2 * N + 64 would pass ulimit -Hn: streamsvc refuses to
                    start otherwise). The connection accounting
                    (ConnectionLimits.admit/release, once per connection) is
                    always there: no setting removes it.

Peers, twisted.web.static.File (``twistd web --path`` is Site(File(path))):

  static.File            its access line (combined) goes through twistd's
                         log to LOG, the default
  static.File log->null  ``twistd web --logfile /dev/null``: twisted.web has
                         no option to turn its access log off; this one still
                         formats the line and writes it (line buffered, one
                         write(2) each) to /dev/null, but skips twistd's
                         logging system. The closest to "off" without code.

Before measuring (after each start), each variant is checked: GET of the 4 KiB file answers 200
with the file's 4096 bytes (and Content-Length 4096); streamsvc's GET /metrics
answers 200 with metrics on and 404 with them off; the access line of that
GET is in the log exactly when the log is on.  Then each is warmed up with an
unmeasured wrk run.

Each run measures every variant once with ``wrk -t2 -c32 -dNs URL`` (or
``ab -q -k -c 32 -n 20000 URL`` when wrk is missing), the order rotated by
one each run; the median of the runs is reported with each variant's ratio to
all-off and to static.File, and each feature's cost from all-on: 1 - all-on /
(all-on without that feature).  Server CPU per request (utime + stime of the
server process over the wrk run / requests wrk counted) is reported too: it
is less noisy than req/s when the load generator shares the CPUs.

The target (issue 13 section 6): everything issue 13 adds, the access log
included, costs at most 10 % of 4 KiB req/s against access_log = off, i.e.
all-on / log-off >= 0.90; all-on / all-off >= 0.90 is reported beside it.

``--profile`` instead runs all-on and log-off (``--profile-variants``) each
under ``twistd --profile=F --profiler=cprofile --savestats`` for one wrk run
and prints the top functions by own time, per request.

Standard library only; needs wrk (or ab) on PATH.  Only 127.0.0.1 is ever
contacted.
"""

from __future__ import annotations

import argparse
import glob
import http.client
import os
import pstats
import re
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field

from _child import ChildServer, Run, clean_env, log, run_script  # bench/ is sys.path[0] when run as a script
from _machine import busy_warning, print_machine, machine_lines, other_cpu_users, tool_version, tree_check
from _report import table
from _runner import children, free_ports, interleaved, kill_children, wait_ready, wrk_argv

HOST = "127.0.0.1"
SMALL = 4096
SMALL_NAME = "4k.bin"
TARGET = 0.90
MAX_CONNECTIONS_OFF = 1_000_000
FD_RESERVE = 64   # streamsvc.limits.FD_RESERVE: 2 fds a connection + 64

DEFAULTS = {
    "server": {"access_log": "combined", "metrics": "yes"},
    "limits": {"send_timeout": "60", "header_timeout": "15", "idle_timeout": "60",
               "max_connections": "1024"},
}


def max_connections_off() -> tuple[int, str]:
    """The largest max_connections streamsvc will start with here (at most 1000000)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or 2 * MAX_CONNECTIONS_OFF + FD_RESERVE <= hard:
        return MAX_CONNECTIONS_OFF, ""
    n = (hard - FD_RESERVE) // 2
    return n, (f"max_connections = {n}, not {MAX_CONNECTIONS_OFF}: streamsvc needs 2 fds a "
               f"connection + {FD_RESERVE} and the hard fd limit (ulimit -Hn) here is {hard}")


def variant_settings() -> tuple[list[tuple[str, dict[str, dict[str, str]] | None, bool]], str]:
    """(name, streamsvc settings or None for a peer, access log on?) in the default order."""
    def with_(section: str, key: str, value: str) -> dict[str, dict[str, str]]:
        s = {sec: dict(kv) for sec, kv in DEFAULTS.items()}
        s[section][key] = value
        return s
    maxc, note = max_connections_off()
    all_off = {"server": {"access_log": "off", "metrics": "no"},
               "limits": {"send_timeout": "0", "header_timeout": "0", "idle_timeout": "0",
                          "max_connections": str(maxc)}}
    return [
        # The built-in default: the access log in a file of its own (buffered,
        # flushed once a second): not in twistd's log, so its "access line in
        # its log" check says no.
        ("all-on", with_("server", "access_log", "combined"), False),
        ("log-off", with_("server", "access_log", "off"), False),
        ("log-twistd", with_("server", "access_log_file", "twistd"), True),
        ("metrics-off", with_("server", "metrics", "no"), False),
        ("send-timeout-off", with_("limits", "send_timeout", "0"), False),
        ("all-off", all_off, False),
        ("static.File", None, True),
        ("static.File log->null", None, False),
    ], note


def conf_text(settings: dict[str, dict[str, str]]) -> str:
    out = ["# written by bench/overhead.py; every other key keeps its built-in default"]
    for section, kv in settings.items():
        out.append(f"\n[{section}]")
        out.extend(f"{k} = {v}" for k, v in kv.items())
    return "\n".join(out) + "\n"


def settings_line(settings: dict[str, dict[str, str]]) -> str:
    return " ".join(f"{k}={v}" for kv in settings.values() for k, v in kv.items())


# --------------------------------------------------------------------------- servers


@dataclass
class Variant(ChildServer):
    name: str
    settings: dict[str, dict[str, str]] | None   # None: static.File
    log_on: bool
    tmp: str
    twistd: str
    profile: str | None = None
    port: int = 0
    proc: subprocess.Popen | None = None
    rps: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)
    requests: list[int] = field(default_factory=list)
    steal: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warm_requests: int = 0
    # For _runner.wait_ready: the tree once ready is the twistd process alone,
    # holding the listening socket itself (no --workers).
    procs = 1
    listeners = 1

    @property
    def slug(self) -> str:
        return re.sub(r"[^a-zA-Z0-9]+", "-", self.name).strip("-")

    @property
    def is_streamsvc(self) -> bool:
        return self.settings is not None

    @property
    def logfile(self) -> str:   # type: ignore[override]
        return os.path.join(self.tmp, f"{self.slug}.log")

    @property
    def outfile(self) -> str:   # type: ignore[override]
        return os.path.join(self.tmp, f"{self.slug}.out")

    @property
    def conffile(self) -> str:
        return os.path.join(self.tmp, f"{self.slug}.conf")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def data(self) -> str:
        return os.path.join(self.tmp, "data")

    @property
    def path(self) -> str:
        return ("/files/" if self.is_streamsvc else "/") + SMALL_NAME

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}{self.path}"

    @property
    def argv(self) -> list[str]:
        head = [self.twistd, "-n", "--pidfile=", f"--logfile={self.logfile}"]
        if self.profile:
            head += [f"--profile={self.profile}", "--profiler=cprofile", "--savestats"]
        listen = f"tcp:{self.port}:interface={HOST}"
        if self.is_streamsvc:
            return head + ["streamsvc", "--config", self.conffile, "--data-dir", self.data,
                           "--listen", listen]
        argv = head + ["web", "--listen", listen, "--path", os.path.join(self.data, "files")]
        if not self.log_on:
            argv += ["--logfile", "/dev/null"]
        return argv

    def start(self, port: int) -> None:
        self.port = port
        if self.settings is not None:
            with open(self.conffile, "w") as f:
                f.write(conf_text(self.settings))
        out = open(self.outfile, "ab")
        try:
            # cwd = the temp dir: no stray ./tap.conf is picked up.
            self.proc = subprocess.Popen(
                self.argv, cwd=self.tmp, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, env=clean_env(), start_new_session=True,
            )
        finally:
            out.close()

    def log_paths(self) -> list[str]:
        """The log and its rotated parts (twistd's LogFile rotates at 1 MB: LOG.1, LOG.2...)."""
        rotated = [p for p in glob.glob(glob.escape(self.logfile) + ".*")
                   if p.rsplit(".", 1)[1].isdigit()]
        return sorted(rotated, key=lambda p: -int(p.rsplit(".", 1)[1])) + [self.logfile]

    def log_text(self) -> str:
        parts = []
        for path in self.log_paths():
            try:
                with open(path, "rb") as f:
                    parts.append(f.read().decode("utf-8", "replace"))
            except OSError:
                pass
        return "".join(parts)

    def access_lines(self) -> int:
        """Access lines of GET SMALL_NAME answered 200 with 4096 bytes in the server's log."""
        return self.log_text().count(f'"GET {self.path} HTTP/1.1" 200 {SMALL} ')

    def log_problems(self) -> list[str]:
        """Lines of the server's log and output that look like errors."""
        out = []
        for f in self.log_paths() + [self.outfile]:
            try:
                with open(f, "rb") as fh:
                    for line in fh.read().decode("utf-8", "replace").splitlines():
                        low = line.lower()
                        if any(w in low for w in ("traceback", "error", "unhandled", "critical",
                                                  "could not", "exception", "warning")):
                            out.append(line.strip())
            except OSError:
                pass
        return out


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """
    Status, headers (lower-cased names) and body. Not _runner's http_get,
    which gives no headers: L{verify} checks the Content-Length.
    """
    c = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def verify(v: Variant, content: bytes) -> str:
    """The sample response and the settings that can be seen from outside; a summary."""
    before = v.access_lines()
    status, headers, body = http_get(v.port, v.path)
    if status != 200 or len(body) != SMALL or body != content:
        raise RuntimeError(f"{v.name}: GET {v.path}: HTTP {status}, {len(body)} bytes "
                           f"(expected 200 and the file's {SMALL} bytes)")
    if headers.get("content-length") != str(SMALL):
        raise RuntimeError(f"{v.name}: Content-Length {headers.get('content-length')!r}, expected {SMALL}")
    parts = [f"GET {v.path}: 200, {len(body)} bytes = the file"]
    if v.is_streamsvc:
        assert v.settings is not None
        want = 200 if v.settings["server"]["metrics"] == "yes" else 404
        m_status, _, m_body = http_get(v.port, "/metrics")
        if m_status != want:
            raise RuntimeError(f"{v.name}: GET /metrics answered {m_status}, expected {want}")
        if want == 200 and b"streamsvc_" not in m_body:
            raise RuntimeError(f"{v.name}: GET /metrics has no streamsvc_ metric")
        parts.append(f"GET /metrics: {m_status}")
    # The access line, if any, is written (and flushed) as the response
    # finishes; give it a moment to reach the file.
    deadline = time.monotonic() + 2.0
    while True:
        got = v.access_lines() - before
        if got or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    if v.log_on and got != 1:
        raise RuntimeError(f"{v.name}: the access log is on, but {got} lines for the sample GET "
                           f"in {v.logfile}")
    if not v.log_on and got:
        raise RuntimeError(f"{v.name}: the access log is off, but {got} lines for the sample GET "
                           f"in {v.logfile}")
    parts.append(f"access line in its log: {'yes' if got else 'no'}")
    return "; ".join(parts)


# --------------------------------------------------------------------------- measurement


def cpu_seconds(pid: int) -> float:
    """
    utime + stime of the server process (all its threads). Not _runner's
    cpu_seconds, which adds the descendants and the cutime + cstime of the
    children they reaped: the figure reported is of the one process.
    """
    with open(f"/proc/{pid}/stat", "rb") as f:
        st = f.read()
    fields = st[st.rfind(b")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_ticks() -> tuple[int, int]:
    """(steal, total) jiffies of all CPUs, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:9]]
    return fields[7], sum(fields)


def cpu_probe(n: int = 1_000_000) -> float:
    """Seconds of CPU a fixed pure-Python loop takes here and now: how steady the machine is."""
    t = time.process_time()
    x = 0
    for i in range(n):
        x += i * i
    return time.process_time() - t


def load_argv(tool: str, url: str, seconds: int) -> list[str]:
    if tool == "wrk":
        return wrk_argv(url, seconds)   # -t2 -c32, bench_files.py's rps scenario
    return ["ab", "-q", "-k", "-c", "32", "-n", "20000", url]


def run_load(v: Variant, tool: str, seconds: int) -> tuple[float, int, float, float, str]:
    """
    (req/s, requests, server CPU seconds, % of CPU time stolen, notes) of one
    load run. Not _runner's wrk(): this one also runs ab (when wrk is
    missing), keeps wrk's latency line in the notes and takes the server's
    CPU and the steal around the same run.
    """
    argv = load_argv(tool, v.url, seconds)
    steal0, total0 = cpu_ticks()
    cpu0 = cpu_seconds(v.pid)
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=clean_env())
    children.append(p)   # _runner's: kill_children() at the end of the run
    try:
        out, err = p.communicate(timeout=seconds + 300)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        children.remove(p)
    cpu = cpu_seconds(v.pid) - cpu0
    steal1, total1 = cpu_ticks()
    steal = (steal1 - steal0) / max(1, total1 - total0) * 100
    if tool == "wrk":
        m = re.search(r"Requests/sec:\s+([\d.]+)", out)
        n = re.search(r"(\d+) requests in ", out)
    else:
        m = re.search(r"Requests per second:\s+([\d.]+)", out)
        n = re.search(r"Complete requests:\s+(\d+)", out)
    if p.returncode != 0 or not m or not n:
        raise RuntimeError(f"{tool} failed rc={p.returncode}:\n{out}\n{err}")
    notes = []
    for pat in (r"Non-2xx or 3xx responses:\s+(\d+)", r"Socket errors:[^\n]*",
                r"Non-2xx responses:\s+(\d+)", r"Failed requests:\s+([1-9]\d*)"):
        m2 = re.search(pat, out)
        if m2:
            notes.append(m2.group(0).strip())
    lat = re.search(r"Latency\s+(\S+)\s+(\S+)\s+(\S+)", out)
    if lat:
        notes.insert(0, f"latency avg {lat.group(1)} max {lat.group(3)}")
    notes.append(f"steal {steal:.1f}%")
    return float(m.group(1)), int(n.group(1)), cpu, steal, "; ".join(notes)


def m_rps(v: Variant, tool: str, seconds: int) -> None:
    rps, n, cpu, steal, notes = run_load(v, tool, seconds)
    if re.search(r"Non-2xx|Socket errors|Failed requests", notes):
        log(f"    warning: {v.name} {tool}: {notes}")
    v.rps.append(rps)
    v.requests.append(n)
    v.cpu_us.append(cpu / n * 1e6 if n else float("nan"))
    v.steal.append(steal)
    v.notes.append(notes)


# --------------------------------------------------------------------------- report


def server_info(twistd: str, cwd: str) -> tuple[list[str], str | None]:
    py = os.path.join(os.path.dirname(twistd), "python")
    if not os.path.exists(py):
        return [tool_version([twistd, "--version"], or_stderr=True)], None
    code = ("import sys, os, platform, importlib.metadata as m, streamsvc\n"
            "def v(n):\n"
            "    try: return m.version(n)\n"
            "    except Exception: return 'not installed'\n"
            "print(f'server Python: {platform.python_version()} ({sys.executable}); '"
            "      f'Twisted {v(\"twisted\")}; streamsvc {v(\"streamsvc\")}; '"
            "      f'prometheus_client {v(\"prometheus-client\")}')\n"
            "print(os.path.dirname(streamsvc.__file__))")
    r = subprocess.run([py, "-c", code], capture_output=True, text=True, cwd=cwd)
    lines = r.stdout.strip().splitlines()
    if len(lines) != 2:
        return [r.stderr.strip() or "server Python: ?"], None
    return [lines[0]], lines[1]


def machine_info(twistd: str, tmp: str, variants: list[Variant], tool: str) -> list[str]:
    """
    The common lines, then this script's own: the servers' Python (asked of
    the twistd's venv: the variants are twistd itself, not C{--serve}
    children with a port file, so not L{server_lines}), the reactor their
    logs name, the fd limit (max_connections of all-off) and the load
    generator.
    """
    lines = machine_lines()
    info, pkg = server_info(twistd, tmp)
    lines += info
    if pkg:
        lines.append("  " + tree_check(pkg))
    reactors = set()
    for v in variants:
        m = re.search(r"reactor class: (\S+?)\.?$", v.log_text(), re.M)
        if m:
            reactors.add(m.group(1))
    lines.append(f"reactor: {', '.join(sorted(reactors)) or '?'}")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lines.append(f"open files limit: soft {soft}, hard {hard}")
    lines.append(f"load generator: {shutil.which(tool)} "
                 f"({tool_version(['wrk', '-v'], or_stderr=True) if tool == 'wrk' else tool_version(['ab', '-V'], or_stderr=True)})")
    return lines


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def ratio(a: float, b: float) -> str:
    return f"{a / b:.3f}" if b else "n/a"


def report(variants: list[Variant], orders: list[list[str]], tool: str, seconds: int,
           probes: list[float]) -> None:
    by = {v.name: v for v in variants}
    med = {v.name: median(v.rps) for v in variants}
    cpu = {v.name: median(v.cpu_us) for v in variants}
    off, peer, peer_null = med["all-off"], med["static.File"], med["static.File log->null"]
    print(f"4 KiB file, {'wrk -t2 -c32 -d%ds' % seconds if tool == 'wrk' else 'ab -k -c 32 -n 20000'}; "
          f"medians of {len(orders)} runs")
    rows = [("variant", "req/s", "min..max", "spread", "server CPU us/req",
             "/ all-off", "/ static.File", "/ static.File log->null")]
    for v in variants:
        m = med[v.name]
        spread = (max(v.rps) - min(v.rps)) / m * 100 if m else 0.0
        rows.append((v.name, f"{m:.0f}", f"{min(v.rps):.0f}..{max(v.rps):.0f}", f"{spread:.1f}%",
                     f"{cpu[v.name]:.0f}", ratio(m, off), ratio(m, peer), ratio(m, peer_null)))
    table(rows)
    print("(spread = (max - min) / median; server CPU = utime + stime of the server process "
          "over the run / requests wrk counted)")
    steals = [x for v in variants for x in v.steal]
    print(f"CPU steal (hypervisor) during the runs: median {median(steals):.1f}%, "
          f"max {max(steals):.1f}% of all CPU time")
    if probes:
        print(f"machine steadiness: a fixed pure-Python loop timed before each measurement took "
              f"{min(probes) * 1e3:.0f}..{max(probes) * 1e3:.0f} ms (median {median(probes) * 1e3:.0f}; "
              f"spread {(max(probes) - min(probes)) / median(probes) * 100:.0f}%): variance of that "
              f"size is the machine's, not the server's")
    print()
    print("Cost of each feature, from all-on (1 - all-on / the variant without it; "
          "negative = within noise):")
    rows = [("feature", "without it", "req/s ratio all-on / without", "cost (req/s)",
             "CPU us/req added")]
    for feature, without in (("access log (combined)", "log-off"), ("metrics", "metrics-off"),
                             ("send_timeout", "send-timeout-off"),
                             ("all of the above + header/idle timeouts", "all-off")):
        r = med["all-on"] / med[without]
        rows.append((feature, without, f"{r:.3f}", f"{(1 - r) * 100:+.1f}%",
                     f"{cpu['all-on'] - cpu[without]:+.1f}"))
    table(rows)
    print()
    print("Against all-off (1 - variant / all-off: what is still on in it costs):")
    rows = [("variant", "ratio to all-off", "cost")]
    for name in ("all-on", "log-off", "metrics-off", "send-timeout-off"):
        r = med[name] / off
        rows.append((name, f"{r:.3f}", f"{(1 - r) * 100:+.1f}%"))
    table(rows)
    print()
    print(f"Target (issue 13 section 6): everything issue 13 adds, the access log included, "
          f"costs <= {(1 - TARGET) * 100:.0f}% of 4 KiB req/s against access_log = off")
    for top, name in (("all-on", "log-off"), ("all-on", "all-off"),
                      ("log-twistd", "log-off"), ("log-twistd", "all-off")):
        r = med[top] / med[name]
        paired = [a / b for a, b in zip(by[top].rps, by[name].rps)]
        print(f"  {top:<8} / {name:<8} = {med[top]:.0f} / {med[name]:.0f} = {r:.3f}  "
              f"{'PASS' if r >= TARGET else 'MISS'} (>= {TARGET:.2f});  per-run ratios "
              f"{', '.join(f'{x:.2f}' for x in paired)} (median {median(paired):.3f})")
    print()
    print("Individual runs (req/s, server CPU us/req), in run order:")
    for i, order in enumerate(orders):
        shown = []
        for name in order:
            v = by[name]
            shown.append(f"{name} {v.rps[i]:.0f} ({v.cpu_us[i]:.0f})")
        print(f"  run {i + 1}: " + ", ".join(shown))
    notes = [(v.name, i + 1, n) for v in variants for i, n in enumerate(v.notes)
             if re.search(r"Non-2xx|Socket errors|Failed", n)]
    if notes:
        print("Load generator errors:")
        for name, run, n in notes:
            print(f"  {name} run {run}: {n}")
    else:
        print("Load generator: no non-2xx responses, no socket errors in any run")


# --------------------------------------------------------------------------- profile


def _group(filename: str) -> str:
    if filename.startswith("~") or filename.startswith("<"):
        return "builtins / C"
    parts = filename.replace("\\", "/").split("/")
    for pkg in ("streamsvc", "twisted", "prometheus_client", "zope"):
        if pkg in parts:
            i = len(parts) - 1 - parts[::-1].index(pkg)
            rest = parts[i + 1:]
            if pkg == "twisted" and len(rest) > 1:
                return f"twisted/{rest[0]}"
            if pkg == "streamsvc":
                return "streamsvc/" + "/".join(rest)
            return pkg
    return "stdlib: " + os.path.basename(filename)


def _short(fname: str, line: int, func: str) -> str:
    for pkg in ("site-packages/", "lib/python3"):
        if pkg in fname:
            fname = fname.split(pkg, 1)[1]
    return f"{fname}:{line}({func})" if not fname.startswith("~") else func


def _idle(key: tuple[str, int, str]) -> bool:
    """The reactor waiting for events: not work done for requests."""
    return key[0] == "~" and "poll" in key[2] and ("epoll" in key[2] or "select" in key[2])


def print_profile(name: str, statsfile: str, requests: int, top: int) -> dict[str, tuple[float, float]]:
    """Top functions by own time per request; returns {function: (own, cumulative) us/req}."""
    st = pstats.Stats(statsfile).stats   # type: ignore[attr-defined]
    idle = sum(tt for k, (_, _, tt, _, _) in st.items() if _idle(k))
    busy = sum(tt for k, (_, _, tt, _, _) in st.items() if not _idle(k))
    print(f"{name}: {requests} requests served under the profiler; own time {busy:.2f}s busy "
          f"= {busy / requests * 1e6:.0f} us/req (+ {idle:.2f}s waiting in epoll, left out)")
    rows = [("own us/req", "% busy", "calls/req", "function")]
    items = sorted(((k, v) for k, v in st.items() if not _idle(k)), key=lambda kv: kv[1][2],
                   reverse=True)
    for (fname, line, func), (cc, nc, tt, ct, _) in items[:top]:
        rows.append((f"{tt / requests * 1e6:.1f}", f"{tt / busy * 100:.1f}", f"{nc / requests:.2f}",
                     _short(fname, line, func)))
    table(rows)
    groups: dict[str, float] = {}
    for key, (_, _, tt, _, _) in st.items():
        if not _idle(key):
            groups[_group(key[0])] = groups.get(_group(key[0]), 0.0) + tt
    print("own time by module (C functions: builtins / C):")
    for g, tt in sorted(groups.items(), key=lambda kv: kv[1], reverse=True)[:12]:
        print(f"  {tt / requests * 1e6:7.1f} us/req {tt / busy * 100:5.1f}%  {g}")
    print()
    return {_short(*k): (v[2] / requests * 1e6, v[3] / requests * 1e6) for k, v in st.items()
            if not _idle(k)}


def run_profile(args, variants: list[Variant], tool: str, content: bytes) -> None:
    names = args.profile_variants.split(",")
    unknown = set(names) - {v.name for v in variants}
    if unknown:
        raise RuntimeError(f"--profile-variants: unknown {', '.join(sorted(unknown))}")
    chosen = [v for v in variants if v.name in names]
    results = []
    # One at a time: start, sample GETs, 1 s warm-up, the measured run, stop
    # (twistd writes the profile as its reactor returns).
    for v in chosen:
        v.profile = os.path.join(v.tmp, f"{v.slug}.prof")
        v.start(free_ports(1)[0])
        wait_ready(v, v.path, SMALL)
        log(f"{v.name} (pid {v.pid}, port {v.port}, under cProfile): {verify(v, content)}")
        warm = run_load(v, tool, 1)[1]
        rps, n, _, _, notes = run_load(v, tool, args.profile_seconds)
        log(f"  {v.name} under cProfile: {rps:.0f} req/s, {n} requests [{notes}]")
        v.stop()
        if not os.path.exists(v.profile):
            raise RuntimeError(f"{v.name}: no profile written\n" + v.tail())
        # Every request the process served: the two sample GETs, warm-up, measured.
        results.append((v, rps, n + warm + 2))
    print(f"cProfile (twistd --profiler=cprofile --savestats), each variant alone: sample GETs, "
          f"1 s of {tool}, {args.profile_seconds} s of {tool}, stop; per-request figures divide "
          f"the whole process's profile (start-up and stop included) by every request it served")
    print()
    per = []
    for v, rps, n in results:
        per.append((v.name, print_profile(f"{v.name} ({rps:.0f} req/s under the profiler)",
                                          v.profile or "", n, args.profile_top)))
    if len(per) >= 2:
        (a, pa), (b, pb) = per[0], per[1]
        diff = sorted(((pa.get(k, (0, 0))[0] - pb.get(k, (0, 0))[0], k) for k in set(pa) | set(pb)),
                      reverse=True)
        print(f"own time per request, {a} minus {b} (largest differences):")
        rows = [("us/req", a, b, "function")]
        for d, k in diff[:args.profile_top]:
            rows.append((f"{d:+.1f}", f"{pa.get(k, (0, 0))[0]:.1f}", f"{pb.get(k, (0, 0))[0]:.1f}", k))
        table(rows)
        cum = [(ct, k) for k, (_, ct) in pa.items()
               if "accesslog.py" in k and k.endswith("(log)")]
        for ct, k in cum:
            print(f"cumulative in {a}: {k} {ct:.1f} us/req (AccessLog.log and all it calls)")
        print()


# --------------------------------------------------------------------------- main


def measure(run: Run, args: argparse.Namespace, tool: str, runs: int, seconds: int) -> None:
    """
    The variants (in C{run.servers}: L{run_script} stops them), then the
    profile, or the runs and the report. The load generators still running
    are killed before the servers are stopped, however it ends.
    """
    try:
        _measure(run, args, tool, runs, seconds)
    finally:
        kill_children()


def _measure(run: Run, args: argparse.Namespace, tool: str, runs: int, seconds: int) -> None:
    warm_seconds = 1 if args.quick else 2
    files = os.path.join(run.tmp, "data", "files")
    os.makedirs(files)
    content = os.urandom(SMALL)
    with open(os.path.join(files, SMALL_NAME), "wb") as f:
        f.write(content)
    specs, maxc_note = variant_settings()
    variants = [Variant(name, settings, log_on, run.tmp, args.twistd)
                for name, settings, log_on in specs]
    run.servers.extend(variants)
    if maxc_note:
        log("note: " + maxc_note)

    if args.profile:
        run_profile(args, variants, tool, content)
        print()
        return

    checks: dict[str, str] = {}

    def start_all() -> None:
        """Fresh processes on fresh ports, each checked, then warmed up (unmeasured)."""
        for v in variants:
            v.stop()
        for v, port in zip(variants, free_ports(len(variants))):
            v.start(port)
        for v in variants:
            t = wait_ready(v, v.path, SMALL)
            check = verify(v, content)
            checks.setdefault(v.name, check)
            log(f"{v.name} (pid {v.pid}, port {v.port}) ready after {t:.1f}s: {check}")
        for v in variants:
            v.warm_requests += run_load(v, tool, warm_seconds)[1] + 2   # + the 2 checks' GETs
        log(f"warmed up ({warm_seconds}s of {tool} each)")

    start_all()

    load_before = other_cpu_users(ours={v.pid for v in variants})
    log("before: " + load_before)
    if busy_warning(load_before):
        log(busy_warning(load_before))

    names = [v.name for v in variants]
    by = {v.name: v for v in variants}
    orders: list[list[str]] = []
    probes: list[float] = []
    for i, order in interleaved(names, runs):
        if i > 0 and not args.same_process:
            start_all()
        orders.append(order)
        for name in order:
            v = by[name]
            v.check_alive()
            probes.append(cpu_probe())
            t0 = time.monotonic()
            m_rps(v, tool, seconds)
            log(f"  run {i + 1}/{runs} {name}: {v.rps[-1]:.0f} req/s, "
                f"{v.cpu_us[-1]:.0f} us CPU/req [{v.notes[-1]}] ({time.monotonic() - t0:.1f}s)")
    for v in variants:
        v.check_alive()
    load_after = other_cpu_users(ours={v.pid for v in variants})
    # Settle, then count what reached the logs.
    time.sleep(0.5)
    logged = {v.name: v.access_lines() for v in variants}

    print(f"Issue 13 feature overhead on 4 KiB req/s; {runs} runs of {seconds}s per variant, "
          f"the order rotated by one each run; quick={args.quick}; "
          + ("the same server processes throughout" if args.same_process else
             "every server restarted (fresh process, fresh port) before each run"))
    print(f"client: {shlex.join(load_argv(tool, 'URL', seconds))}  "
          f"(after an unmeasured {warm_seconds}s run each, after each start)")
    print("servers (as last started):")
    for v in variants:
        what = (settings_line(v.settings) if v.settings is not None else
                ("access log through twistd's log (default)" if v.log_on else
                 "access log written to /dev/null (twistd web --logfile /dev/null; "
                 "twisted.web cannot turn it off)"))
        print(f"  {v.name}: {what}")
        print(f"      {shlex.join(v.argv)}")
    print(f"  (cwd {run.tmp}; streamsvc confs hold only the keys shown, every other key is its "
          f"default; all-off keeps the connection accounting, which is always on"
          + (f"; {maxc_note}" if maxc_note else "") + ")")
    print("checks before measuring:")
    for v in variants:
        print(f"  {v.name}: {checks[v.name]}")
    print()
    print_machine(machine_info(args.twistd, run.tmp, variants, tool), load_before, load_after)
    print("Server logs:")
    for v in variants:
        problems = v.log_problems()
        # wait_ready's and verify's GETs, the warm-up, the measured runs; a
        # few more are answered after wrk stops counting (up to 32 a run).
        total = sum(v.requests) + v.warm_requests
        if v.log_on:
            lines = (f"{logged[v.name]} access lines of 200/4096 for {total} requests counted "
                     f"by wrk and the checks ({logged[v.name] - total:+d}) in "
                     f"{len(v.log_paths())} file(s) (twistd rotates its log at 1 MB)")
        else:
            lines = f"{logged[v.name]} access lines (log off)"
        print(f"  {v.name}: {lines}; " +
              (f"{len(problems)} error-looking lines, e.g. {problems[0][:150]!r}"
               if problems else "no error-looking lines"))
    print()
    report(variants, orders, tool, seconds, probes)
    print()


def main() -> int:
    default_twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    ap = argparse.ArgumentParser(
        description="What issue 13's features cost on 4 KiB req/s, each on and off")
    ap.add_argument("--runs", type=int, default=None, help="runs per variant [5; --quick: 2]")
    ap.add_argument("--seconds", type=int, default=None, help="wrk duration per run [10; --quick: 5]")
    ap.add_argument("--quick", action="store_true", help="2 runs of 5 s per variant")
    ap.add_argument("--twistd", default=default_twistd, help=f"twistd to run the servers with [{default_twistd}]")
    ap.add_argument("--tmpdir", default=None, help="where to create the temporary dir [system default]")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, confs) at the end")
    ap.add_argument("--same-process", action="store_true",
                    help="start each server once, not before every run (a process's own speed "
                         "then biases all its runs alike)")
    ap.add_argument("--profile", action="store_true",
                    help="instead of measuring: profile --profile-variants under cProfile")
    ap.add_argument("--profile-variants", default="all-on,log-off", help="[all-on,log-off]")
    ap.add_argument("--profile-seconds", type=int, default=8, help="wrk run under the profiler [8]")
    ap.add_argument("--profile-top", type=int, default=15, help="functions shown [15]")
    args = ap.parse_args()

    runs = args.runs if args.runs is not None else (2 if args.quick else 5)
    seconds = args.seconds if args.seconds is not None else (5 if args.quick else 10)
    if runs < 1 or seconds < 1:
        ap.error("--runs and --seconds must be at least 1")
    tool = "wrk" if shutil.which("wrk") else ("ab" if shutil.which("ab") else None)
    if not os.path.exists(args.twistd):
        ap.error(f"twistd not found at {args.twistd} (use --twistd)")
    if tool is None:
        ap.error("wrk or ab is required")

    return run_script(lambda run: measure(run, args, tool, runs, seconds), prefix="streamsvc-overhead-",
                      tmpdir=args.tmpdir, keep=args.keep)


if __name__ == "__main__":
    sys.exit(main())
