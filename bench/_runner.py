"""
The runner every benchmark script shares: a server as a process tree
(start on a port, wait until it answers and every process of it holds the
listening socket, stop the whole tree), what /proc says of that tree (CPU
seconds, RSS, fds), the load generators (wrk requests/s; many slow clients
for RSS per connection) and the peers (nginx, aiohttp) installed on demand.

A script declares its servers (L{Server}: a name and an argv template with
C{{port}}), runs each measurement on each of them interleaved run by run
(L{interleaved}), and prints medians and ratios with L{_report}.
"""

from __future__ import annotations

import http.client
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Iterator

from _child import ChildServer, clean_env, log
from _proc import fd_count

HOST = "127.0.0.1"
HZ = os.sysconf("SC_CLK_TCK")
HERE = os.path.dirname(os.path.abspath(__file__))
SLOW_CLIENTS = os.path.join(HERE, "slow_clients.py")
AIOHTTP_VENV = os.path.join(os.path.expanduser("~"), ".cache", "streamsvc-bench", "aiohttp-venv")
STOP_WAIT = 10.0   # seconds after SIGTERM before SIGKILL

#: Client processes that must not outlive the script (servers are tracked by their L{Server}).
children: list[subprocess.Popen] = []


# --------------------------------------------------------------------------- servers


@dataclass
class Server(ChildServer):
    name: str
    argv_template: list[str]   # "{port}" and "{tls_port}" are replaced by the ports
    url_path: str              # path prefix of the files, ending in "/"
    logfile: str
    outfile: str
    procs: int = 1             # processes in its tree once ready (the parent and its workers)
    listeners: int = 1         # how many of them hold the listening socket then
    tls: bool = False          # has a second, ssl: listener on tls_port
    conf: tuple[str, str] | None = None   # (path, text with "{port}"): written before each start
    port: int = 0
    tls_port: int = 0
    proc: subprocess.Popen | None = None
    starts: int = 0
    results: dict[str, list[float]] = field(default_factory=dict)
    notes: dict[str, list[str]] = field(default_factory=dict)

    @property
    def argv(self) -> list[str]:
        return [a.replace("{port}", str(self.port)).replace("{tls_port}", str(self.tls_port))
                for a in self.argv_template]

    def url(self, name: str, tls: bool = False) -> str:
        if tls:
            return f"https://{HOST}:{self.tls_port}{self.url_path}{name}"
        return f"http://{HOST}:{self.port}{self.url_path}{name}"

    def path(self, name: str) -> str:
        return self.url_path + name

    def start(self, cwd: str, port: int, tls_port: int = 0) -> None:
        self.port, self.tls_port = port, tls_port
        self.starts += 1
        if self.conf is not None:
            with open(self.conf[0], "w") as f:
                f.write(self.conf[1].replace("{port}", str(port)))
        out = open(self.outfile, "ab")
        try:
            self.proc = subprocess.Popen(
                self.argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, env=clean_env(), start_new_session=True,
            )
        finally:
            out.close()

    def stop(self) -> None:
        """
        SIGTERM to the parent only (a streamsvc with workers drains and stops
        them; nginx's master stops its worker), then, STOP_WAIT s on, SIGKILL
        to whatever is left of the tree seen before and of its process group.
        """
        p = self.proc
        if p is None:
            return
        tree = [(pid, started(pid)) for pid in descendants(p.pid)[1:]] if p.poll() is None else []
        if p.poll() is None:
            try:
                os.kill(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        end = time.monotonic() + STOP_WAIT
        while True:
            left = [pid for pid, t in tree if t is not None and started(pid) == t]
            if p.poll() is not None and not left:
                break
            if time.monotonic() >= end:
                log(f"{self.name}: {'parent and ' if p.poll() is None else ''}{len(left)} descendant(s) "
                    f"still there {STOP_WAIT:.0f}s after SIGTERM: SIGKILL")
                for pid in left:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                break
            time.sleep(0.05)
        for pid in group_members(p.pid):   # own session: the group id is the parent's pid
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        p.wait()

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


def wait_ready(srv: Server, path: str, size: int, timeout: float = 60.0,
               tree_timeout: float = 15.0) -> float:
    """
    Until GET path answers 200 with size bytes, then until the server's tree
    has its processes, each of them holding the listening socket, unchanged
    for 0.5 s (a tree that does not get there in tree_timeout s is measured
    anyway, with a warning).
    """
    t0 = time.monotonic()
    last = ""
    while True:
        srv.check_alive()
        try:
            status, body = http_get(srv.port, path, timeout=2.0)
            if status == 200 and len(body) == size:
                break
            last = f"HTTP {status}, {len(body)} bytes"
        except OSError as e:
            last = repr(e)
        if time.monotonic() - t0 >= timeout:
            raise RuntimeError(f"{srv.name} did not answer GET {path} within {timeout:.0f}s ({last})\n"
                               + srv.tail())
        time.sleep(0.1)
    t1, seen, since = time.monotonic(), None, time.monotonic()
    while True:
        srv.check_alive()
        pids = descendants(srv.pid)
        holding = holders(pids, listening_sockets(srv.port))
        now = time.monotonic()
        if (len(pids), len(holding)) != seen:
            seen, since = (len(pids), len(holding)), now
        if len(pids) >= srv.procs and len(holding) >= srv.listeners and now - since >= 0.5:
            break
        if now - t1 >= tree_timeout:
            log(f"    warning: {srv.name}: {len(pids)} process(es), {len(holding)} holding the listening "
                f"socket after {tree_timeout:.0f}s (expected {srv.procs}, {srv.listeners}); measured anyway")
            break
        time.sleep(0.1)
    return time.monotonic() - t0


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


def stat_fields(pid: int) -> list[bytes] | None:
    """The fields of /proc/PID/stat after the command name (state first), None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            st = f.read()
    except OSError:
        return None
    return st[st.rfind(b")") + 2:].split()


def started(pid: int) -> int | None:
    """The start time of a live process (None if gone or a zombie): tells a reused pid apart."""
    fields = stat_fields(pid)
    if fields is None or fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


def group_members(pgid: int) -> list[int]:
    """Live processes of the process group."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            fields = stat_fields(int(d))
            if fields is not None and fields[0] not in (b"Z", b"X") and int(fields[2]) == pgid:
                out.append(int(d))
    return out


def cpu_seconds(pid: int) -> float:
    """
    utime + stime of the process and all its descendants (all threads), plus
    the cutime + cstime of the children they reaped (a worker that ended
    meanwhile still counts).
    """
    ticks = 0
    for p in descendants(pid):
        fields = stat_fields(p)
        if fields is not None:
            ticks += sum(int(x) for x in fields[11:15])
    return ticks / HZ


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


def fds(pid: int) -> int:
    """Open fds of the process and any descendants."""
    total = 0
    for p in descendants(pid):
        try:
            total += fd_count(p)
        except OSError:
            pass
    return total


def listening_sockets(port: int) -> set[str]:
    """The fd links ("socket:[INODE]") of the TCP sockets listening on 127.0.0.1:port."""
    out = set()
    want = f"{HOST}:{port}"
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            cols = line.split()
            addr, hexport = cols[1].split(":")
            ip = socket.inet_ntoa(struct.pack("<I", int(addr, 16)))
            if cols[3] == "0A" and f"{ip}:{int(hexport, 16)}" == want:
                out.add(f"socket:[{cols[9]}]")
    return out


def holders(pids: list[int], links: set[str]) -> list[int]:
    """Those of pids that have one of these sockets open."""
    out = []
    for p in pids:
        try:
            names = os.listdir(f"/proc/{p}/fd")
        except OSError:
            continue
        for n in names:
            try:
                if os.readlink(f"/proc/{p}/fd/{n}") in links:
                    out.append(p)
                    break
            except OSError:
                continue
    return out


def settle_fds(pid: int, target: int | None = None, max_wait: float = 10.0,
               stable_for: float = 2.0) -> tuple[int, float]:
    """Poll the fd count (of the tree) until it equals target, or is unchanged for stable_for s, or max_wait."""
    t0 = time.monotonic()
    last = fds(pid)
    since = t0
    while True:
        now = time.monotonic()
        if target is not None and last == target:
            return last, now - t0
        if now - since >= stable_for or now - t0 >= max_wait:
            return last, now - t0
        time.sleep(0.1)
        cur = fds(pid)
        if cur != last:
            last, since = cur, time.monotonic()


# --------------------------------------------------------------------------- peers


def workers_missing(twistd: str, cwd: str) -> str:
    """Why streamsvc-w2 cannot run ('' if `twistd streamsvc --help` lists --workers)."""
    try:
        r = subprocess.run([twistd, "streamsvc", "--help"], cwd=cwd, capture_output=True, text=True,
                           env=clean_env(), timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        return f"`twistd streamsvc --help` failed: {e}"
    if "--workers" in r.stdout:
        return ""
    if r.returncode != 0:
        return f"`twistd streamsvc --help` exited {r.returncode}: {(r.stderr.strip().splitlines() or ['?'])[-1]}"
    return "`twistd streamsvc --help` does not list --workers (not implemented in the installed streamsvc)"


def imports_aiohttp(python: str) -> str | None:
    """The aiohttp version that python imports, or None."""
    try:
        r = subprocess.run([python, "-c", "import aiohttp; print(aiohttp.__version__)"],
                           capture_output=True, text=True, env=clean_env(), timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def aiohttp_python() -> tuple[str | None, str]:
    """
    A Python that imports aiohttp: this one, or the venv AIOHTTP_VENV
    (python -m venv and pip install aiohttp if it has none). (python, what it
    is) or (None, why not).
    """
    version = imports_aiohttp(sys.executable)
    if version:
        return sys.executable, f"aiohttp {version} in {sys.executable}"
    py = os.path.join(AIOHTTP_VENV, "bin", "python")
    version = imports_aiohttp(py) if os.path.exists(py) else None
    if version:
        return py, f"aiohttp {version} in the venv {AIOHTTP_VENV}"
    env = dict(os.environ)   # pip's own settings (index, proxy) apply
    env.pop("PYTHONPATH", None)
    steps = []
    if not os.path.exists(py):
        steps.append([sys.executable, "-m", "venv", AIOHTTP_VENV])
    steps.append([py, "-m", "pip", "install", "-q", "aiohttp"])
    for argv in steps:
        log(f"aiohttp: {shlex.join(argv)} ...")
        try:
            r = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=900)
        except (OSError, subprocess.SubprocessError) as e:
            return None, f"{shlex.join(argv)} failed: {e}"
        if r.returncode != 0:
            last = (r.stderr.strip() or r.stdout.strip()).splitlines() or ["?"]
            return None, f"{shlex.join(argv)} exited {r.returncode}: {last[-1][:200]}"
    version = imports_aiohttp(py)
    if not version:
        return None, f"{py} still cannot import aiohttp after pip install"
    return py, f"aiohttp {version} in the venv {AIOHTTP_VENV} (installed now)"


def find_nginx() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None)


def nginx_binary() -> tuple[str | None, str]:
    """nginx on PATH, or installed with apt-get (as root): (path, '') or (None, why not)."""
    path = find_nginx()
    if path:
        return path, ""
    if os.geteuid() != 0:
        return None, "nginx is not on PATH and we are not root (no apt-get install)"
    if not shutil.which("apt-get"):
        return None, "nginx is not on PATH and there is no apt-get"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    why = ""
    for argvs in ([["apt-get", "install", "-y", "nginx"]],
                  [["apt-get", "update"], ["apt-get", "install", "-y", "nginx"]]):
        for argv in argvs:
            log(f"nginx: DEBIAN_FRONTEND=noninteractive {shlex.join(argv)} ...")
            try:
                r = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=900)
            except (OSError, subprocess.SubprocessError) as e:
                why = f"{shlex.join(argv)} failed: {e}"
                break
            if r.returncode != 0:
                last = (r.stderr.strip() or r.stdout.strip()).splitlines() or ["?"]
                why = f"{shlex.join(argv)} exited {r.returncode}: {last[-1][:200]}"
                break
        else:
            path = find_nginx()
            if path:
                return path, ""
            why = "apt-get install -y nginx succeeded but no nginx binary was found"
    return None, why


def nginx_conf(prefix: str, files: str, workers: int = 1) -> str:
    """nginx.conf ("{port}" to fill in) with everything it writes under prefix."""
    user = f"user {pwd.getpwuid(os.geteuid()).pw_name};\n" if os.geteuid() == 0 else ""
    temp = "".join(f"    {k}_temp_path {prefix}/{k}_temp;\n"
                   for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return (
        f"daemon off;\nmaster_process on;\nworker_processes {workers};\n" + user
        + f"error_log {prefix}/error.log;\n"
        "events { worker_connections 4096; }\n"
        "http {\n"
        "    sendfile on;\n    tcp_nopush on;\n    keepalive_requests 100000;\n"
        "    default_type application/octet-stream;\n"
        f"    access_log {prefix}/access.log;\n" + temp
        + "    server {\n"
        f"        listen {HOST}:{{port}};\n"
        f"        root {files};\n"
        "    }\n"
        "}\n"
    )


# --------------------------------------------------------------------------- load


def kill_children() -> None:
    """Kill the load generators still running (the script is ending)."""
    for p in list(children):
        if p.poll() is None:
            p.kill()
            p.wait()


def wrk_argv(url: str, seconds: float, threads: int = 2, conns: int = 32) -> list[str]:
    return ["wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds:g}s", url]


def wrk(url: str, seconds: float, threads: int = 2, conns: int = 32) -> tuple[float, int, str]:
    """
    (requests/s, requests, notes) of one C{wrk} run; notes name non-2xx/3xx
    answers and socket errors, which the caller should treat as a warning.
    """
    argv = wrk_argv(url, seconds, threads, conns)
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=clean_env())
    children.append(p)
    try:
        out, err = p.communicate(timeout=seconds + 300)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        children.remove(p)
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    n = re.search(r"(\d+) requests in ", out)
    if p.returncode != 0 or not m or not n:
        raise RuntimeError(f"wrk failed rc={p.returncode}:\n{out}\n{err}")
    notes = [m2.group(0).strip() for pat in (r"Non-2xx or 3xx responses:\s+(\d+)", r"Socket errors:[^\n]*")
             if (m2 := re.search(pat, out))]
    return float(m.group(1)), int(n.group(1)), "; ".join(notes)


def slow_rss(srv: Server, path: str, clients: int, rate: int, steady: float,
             window: float) -> tuple[float, str]:
    """
    Server RSS growth per connection (KiB) while C{clients} clients each read
    C{path} at C{rate} bytes/s (L{SLOW_CLIENTS}): the highest RSS of the tree
    over the last C{window} s of C{steady} s, less its RSS before, over
    C{clients}. Returns it and a note of what was seen.
    """
    pid = srv.pid
    settle_fds(pid, max_wait=10.0, stable_for=1.0)   # what the last measurement left drains first
    before = rss_kib(pid)
    argv = [sys.executable, SLOW_CLIENTS, "--host", HOST, "--port", str(srv.port),
            "--path", path, "--clients", str(clients), "--rate", str(rate),
            "--duration", str(steady + 2.0), "--header-timeout", "60"]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=clean_env())
    children.append(p)
    try:
        assert p.stdout is not None
        ready = p.stdout.readline().strip()
        if not ready.startswith("ready"):
            raise RuntimeError(f"slow_clients: unexpected output {ready!r}")
        t_ready = time.monotonic()
        kv = dict(x.split("=", 1) for x in ready.split()[1:])
        time.sleep(max(0.0, steady - window))
        samples = []
        end = t_ready + steady
        while True:
            samples.append(rss_kib(pid))
            if time.monotonic() >= end:
                break
            time.sleep(0.25)
        conns = fds(pid)
        done = p.stdout.readline().strip()
        p.wait(30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        children.remove(p)
    dkv = dict(x.split("=", 1) for x in done.split()[1:]) if done.startswith("done") else {}
    during = max(samples)
    note = (f"before={before}KiB during={during}KiB headers={kv.get('headers')}/{clients} "
            f"200s={kv.get('status200')} open_at_end={dkv.get('open', '?')} fds={conns}")
    if kv.get("headers") != str(clients) or dkv.get("open") != str(clients):
        log(f"    warning: {srv.name} slow clients: {ready} | {done}")
    return (during - before) / clients, note


def interleaved(names: list[str], runs: int) -> Iterator[tuple[int, list[str]]]:
    """(run, the names in this run's order): the order rotated by one each run."""
    for run in range(runs):
        k = run % len(names) if names else 0
        yield run, names[k:] + names[:k]
