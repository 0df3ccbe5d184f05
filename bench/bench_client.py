#!/usr/bin/env python3
"""
``streamsvc-client`` against the clients a user would pick instead (issue 15):
``get`` vs ``curl`` vs ``wget`` downloading the same file from one streamsvc,
and ``put`` vs ``curl -T`` uploading it.

    python bench/bench_client.py [--runs 5] [--quick] [--keep] [--tmpdir DIR]

One server, started by this script in a temporary dir as

    twistd -n --pidfile= --logfile=TMP/streamsvc.log streamsvc --config TMP/tap.conf \\
        --data-dir TMP/data --listen tcp:PORT:interface=127.0.0.1

(the twistd next to this Python), with ``[auth] tokens = benchtoken`` so PUT is
allowed and ``[limits] max_upload_bytes = 2GiB`` so the file fits (the default
is exactly 1 GiB).  It serves ``data/files/big.bin``: 1 GiB (256 MiB with
``--quick``) of real bytes, one os.urandom MiB repeated, fsync'ed, so the page
cache holds it and nothing is sparse.  Every client runs as a child process
started by this script; nothing leaves 127.0.0.1.

What each line measures:

- **get NAME** -- ``streamsvc-client get URL -o OUT -q`` (the console script
  next to this Python: a Python entry point executed directly, so the process
  started is the interpreter itself), ``curl -sS -o OUT URL``, ``wget -q -O OUT
  URL``; OUT is in ``TMP/out`` (same disk).  MiB/s = size / 2^20 / the client
  process's wall time (time.perf_counter from before the spawn until it has
  exited): a Python client's start-up is in it, as a user waits for it too.
- **get 0 B NAME** -- the same command for a 0-byte file: each client's fixed
  cost (start-up, one request), to read the big get's time against.
- **put NAME** -- ``streamsvc-client put FILE URL --token T`` (which first reads
  the file once to compute the ``Content-Digest`` the server verifies), the same
  with ``--no-digest`` (so that pass's cost shows), and ``curl -sS -T FILE -H
  'Authorization: Bearer T' -o /dev/null -w '%{http_code}' URL`` (curl's default
  ``Expect: 100-continue`` left on).  The server streams the body to disk and
  fsyncs it before it answers, which is in every client's time alike.  MiB/s as
  for get.
- **peak RSS** -- VmHWM of the client process itself, read from
  ``/proc/PID/status`` every 20 ms while it runs; the last value read before it
  exits (VmHWM only grows, and a zombie has none); "-" for a process gone
  before a second sample (curl's and wget's 0-byte gets), only ever seen as
  it was just after exec.  Not getrusage: on Linux a child's ``ru_maxrss``
  carries the parent's RSS across subprocess's vfork + exec.
- **client CPU s** -- utime + stime of the client, from ``/proc/PID/stat`` of
  the exited process before it is reaped (waitid with WNOWAIT).
- **server CPU s** -- utime + stime of the server (all its threads) over the
  same interval: the two share the machine's cores.

Checks: every download's size and every stored upload's size equal the
source's; in run 1 every client's download and stored upload is also compared
with the source by sha256 (untimed).  The server must answer 201 or 204; every
upload goes to ``files/up.bin`` and is deleted after it is checked, so each put
creates the file (201).  No ``OUT.part`` / ``OUT.part.meta`` may be left, and
the output dir is emptied after every download.  ``sync()`` runs, untimed,
before every measurement so no client pays for another's writeback.

Each run does the 0-byte gets, then the big gets, then the puts, every group
in an order rotated by one each run, so the machine's noise falls on all
alike; --runs runs (default 5; --quick: 2 runs of 256 MiB).  Before run 1 each
client downloads or uploads the file once, not counted (page cache, the
server's first upload and thread pool, first connections).  Reported: medians, the ratios to curl with the
issue's targets (get >= 0.7x curl with peak RSS <= 64 MiB, worst run; put >=
0.7x curl -T), then every run's values in run order.  A peer that is not
installed is skipped, with a line saying so.  The machine is shared: the output
lists other processes that were using CPU when the runs started and ended.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

from _child import ChildServer, Run, clean_env, log, run_script  # bench/ is sys.path[0] when run as a script
from _machine import print_machine, filesystem_of, machine_lines, other_cpu_users, tool_version, tree_check
from _proc import kib_to_mib, proc_status
from _report import Results, table
from _runner import free_ports, http_get, interleaved

HOST = "127.0.0.1"
MiB = 1024 * 1024
BIN = os.path.dirname(sys.executable)
TWISTD = os.path.join(BIN, "twistd")
CLIENT = os.path.join(BIN, "streamsvc-client")
TOKEN = "benchtoken"
POLL = 0.02                 # s between VmHWM samples
GET_RATIO_TARGET = 0.7
RSS_TARGET_MIB = 64.0
PUT_RATIO_TARGET = 0.7
HZ = os.sysconf("SC_CLK_TCK")

GET_CLIENTS = ("streamsvc-client", "curl", "wget")
PUT_CLIENTS = ("streamsvc-client", "streamsvc-client --no-digest", "curl -T")


def get_argv(name: str, url: str, out: str) -> list[str]:
    return {"streamsvc-client": [CLIENT, "get", url, "-o", out, "-q"],
            "curl": ["curl", "-sS", "-o", out, url],
            "wget": ["wget", "-q", "-O", out, url]}[name]


def put_argv(name: str, src: str, url: str) -> list[str]:
    return {"streamsvc-client": [CLIENT, "put", src, url, "--token", TOKEN],
            "streamsvc-client --no-digest": [CLIENT, "put", src, url, "--token", TOKEN, "--no-digest"],
            "curl -T": ["curl", "-sS", "-T", src, "-H", f"Authorization: Bearer {TOKEN}",
                        "-o", "/dev/null", "-w", "%{http_code}", url]}[name]


def installed(name: str) -> bool:
    """streamsvc-client is checked once in main(); curl and wget must be on PATH."""
    return name.startswith("streamsvc-client") or shutil.which(name.split()[0]) is not None


# --------------------------------------------------------------------------- server


class Server(ChildServer):
    """``twistd -n streamsvc`` on a free port, its log and output in the temporary dir."""

    def __init__(self, tmp: str, data_dir: str, config: str) -> None:
        self.name = "streamsvc"
        self.tmp, self.data_dir, self.config = tmp, data_dir, config
        self.logfile = os.path.join(tmp, "streamsvc.log")
        self.outfile = os.path.join(tmp, "streamsvc.out")
        self.proc = None
        self.port = free_ports(1)[0]

    @property
    def argv(self) -> list[str]:
        return [TWISTD, "-n", "--pidfile=", f"--logfile={self.logfile}", "streamsvc",
                "--config", self.config, "--data-dir", self.data_dir,
                "--listen", f"tcp:{self.port}:interface={HOST}"]

    def url(self, name: str) -> str:
        return f"http://{HOST}:{self.port}/files/{name}"

    def start(self, timeout: float = 60.0) -> None:
        """Start it (cwd = temp dir: no ./tap.conf of the repository) and wait for /healthz."""
        with open(self.outfile, "ab") as out:
            self.proc = subprocess.Popen(self.argv, cwd=self.tmp, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT, env=clean_env(),
                                         start_new_session=True)
        t0, last = time.monotonic(), ""
        while time.monotonic() - t0 < timeout:
            self.check_alive()
            try:
                if http_get(self.port, "/healthz", timeout=2)[0] == 200:
                    return
            except OSError as e:
                last = repr(e)
            time.sleep(0.1)
        raise RuntimeError(f"streamsvc did not answer /healthz within {timeout:.0f}s ({last})\n" + self.tail())

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def log_problems(self) -> list[str]:
        out = []
        for path in (self.logfile, self.outfile):
            with open(path, errors="replace") as f:
                out += [line.strip() for line in f
                        if any(w in line.lower() for w in ("traceback", "unhandled", "error", "critical"))]
        return out


# --------------------------------------------------------------------------- clients


def cpu_seconds(pid: int) -> float:
    """
    utime + stime of the process (all its threads, a zombie's final ones too).
    Not _runner's cpu_seconds: that one adds the process's descendants and
    the cutime + cstime of the children they reaped, and scans all of /proc
    for them; here the figure is the one process, the client or the server,
    as the module docstring says.
    """
    with open(f"/proc/{pid}/stat", "rb") as f:
        st = f.read()
    fields = st[st.rfind(b")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / HZ


class HwmWatch:
    """
    VmHWM of a live process, sampled every POLL s in a thread. The last value
    read is its peak: VmHWM is the process's own high-water mark, and only the
    exited (zombie) process has none, so stop() must come before the reaping.
    A process gone before a second sample (curl's 0-byte get) was only seen
    as it was just after exec: its peak is unknown (NaN).
    """

    def __init__(self, pid: int) -> None:
        self.pid, self.peak_kib, self.samples = pid, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                hwm = proc_status(self.pid).get("VmHWM")
            except OSError:
                return
            if hwm is not None:
                self.peak_kib, self.samples = hwm, self.samples + 1
            if self._stop.wait(POLL):
                return

    def stop(self) -> float:
        """The peak in MiB (NaN if unknown)."""
        self._stop.set()
        self._thread.join(5)
        return kib_to_mib(self.peak_kib) if self.samples >= 2 else float("nan")


@dataclass
class Ran:
    seconds: float
    peak_mib: float
    cpu_s: float
    server_cpu_s: float
    stdout: str


def run_client(argv: list[str], tmp: str, server: Server, timeout: float) -> Ran:
    """One client process: wall time, peak RSS and CPU of it, and the server's CPU meanwhile."""
    out_path, err_path = os.path.join(tmp, "client.stdout"), os.path.join(tmp, "client.stderr")
    os.sync()   # untimed: nobody's dirty pages are written back during the measurement
    server.check_alive()
    srv0 = server.cpu_seconds()
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=tmp, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                env=clean_env())
    try:
        watch = HwmWatch(proc.pid)
        killer = threading.Timer(timeout, proc.kill)
        killer.start()
        try:
            os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)   # exited, not yet reaped
        finally:
            killer.cancel()
        seconds = time.perf_counter() - t0
        srv1 = server.cpu_seconds()
        peak = watch.stop()
        cpu = cpu_seconds(proc.pid)
    finally:
        if proc.poll() is None:   # interrupted: no client outlives the run
            proc.kill()
        proc.wait()
    with open(out_path, errors="replace") as f:
        stdout = f.read()
    if proc.returncode != 0:
        with open(err_path, errors="replace") as f:
            err_text = f.read().strip()[-400:]
        why = f"killed at --timeout {timeout:g}s" if seconds >= timeout else f"exited {proc.returncode}"
        raise RuntimeError(f"{shlex.join(argv)}: {why} after {seconds:.1f}s: {err_text}")
    return Ran(seconds, peak, cpu, srv1 - srv0, stdout)


def sha256_of(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(4 * MiB):
            h.update(block)
    return h.hexdigest()


def make_source(path: str, size: int) -> str:
    """Real bytes (one random MiB repeated), fsync'ed; their sha256."""
    block, h = os.urandom(MiB), hashlib.sha256()
    with open(path, "wb") as f:
        for _ in range(size // MiB):
            f.write(block)
            h.update(block)
        f.flush()
        os.fsync(f.fileno())
    return h.hexdigest()


def values(ran: Ran, size: int) -> dict[str, float]:
    """One measurement's values for L{Results}: MiB/s is NaN for a 0-byte get."""
    return {"mib_s": size / MiB / ran.seconds if size else float("nan"), "s": ran.seconds,
            "rss": ran.peak_mib, "cpu": ran.cpu_s, "srv_cpu": ran.server_cpu_s}


@dataclass
class Bench:
    """What every measurement needs: the server, the paths, the source and where results go."""

    server: Server
    tmp: str
    files: str
    out_dir: str
    size: int
    digest: str
    results: Results
    timeout: float

    def get(self, name: str, file: str, size: int, digest: str | None) -> str:
        """One download of files/FILE; its size always checked, its sha256 when `digest` is given."""
        out = os.path.join(self.out_dir, file)
        ran = run_client(get_argv(name, self.server.url(file), out), self.tmp, self.server, self.timeout)
        left = [p for p in (out + ".part", out + ".part.meta") if os.path.exists(p)]
        if left:
            raise RuntimeError(f"get {name}: left {', '.join(left)}")
        got = os.path.getsize(out)
        if got != size:
            raise RuntimeError(f"get {name}: {got} bytes, not {size}")
        check = "size ok"
        if digest is not None:
            if sha256_of(out) != digest:
                raise RuntimeError(f"get {name}: the download differs from the source (sha256)")
            check = "size + sha256 ok"
        for entry in os.listdir(self.out_dir):
            os.unlink(os.path.join(self.out_dir, entry))
        label = f"get {name}" if size else f"get 0 B {name}"
        self.results.add(label, values(ran, size), check)
        return f"{label}: {ran.seconds:.2f} s, peak RSS {fmt(ran.peak_mib)} MiB, {check}"

    def put(self, name: str, src: str, check_digest: bool) -> str:
        """One upload of the source to files/up.bin; the stored file checked, then deleted."""
        ran = run_client(put_argv(name, src, self.server.url("up.bin")), self.tmp, self.server,
                         self.timeout)
        code = ran.stdout.strip()[:3]
        if code not in ("201", "204"):
            raise RuntimeError(f"put {name}: the server answered {ran.stdout.strip()[:200]!r}")
        stored = os.path.join(self.files, "up.bin")
        got = os.path.getsize(stored)
        if got != self.size:
            raise RuntimeError(f"put {name}: stored {got} bytes, not {self.size}")
        check = "size ok"
        if check_digest:
            if sha256_of(stored) != self.digest:
                raise RuntimeError(f"put {name}: the stored file differs from the source (sha256)")
            check = "size + sha256 ok"
        os.unlink(stored)
        self.results.add(f"put {name}", values(ran, self.size), f"{code}, {check}")
        return f"put {name}: {ran.seconds:.2f} s, {code}, peak RSS {fmt(ran.peak_mib)} MiB, {check}"


# --------------------------------------------------------------------------- report


def fmt(v: float | None, digits: int = 1) -> str:
    return "-" if v is None or v != v else f"{v:.{digits}f}"


def report(results: Results, size: int, runs: int, gets: list[str], puts: list[str]) -> None:
    lines = ([f"get 0 B {n}" for n in gets] + [f"get {n}" for n in gets] + [f"put {n}" for n in puts])
    base = {"get": results.median("get curl", "mib_s"), "put": results.median("put curl -T", "mib_s")}

    def vs_curl(name: str) -> float | None:
        b, m = base[name[:3]], results.median(name, "mib_s")
        return m / b if name.startswith(("get ", "put ")) and not name.startswith("get 0 B") and b and m else None

    print(f"streamsvc-client vs curl / wget, {size // MiB} MiB over loopback (medians of {runs} runs; "
          "MiB/s = 2^20 B per s of the client's wall time)")
    rows = [("client", "MiB/s", "wall s", "client CPU s", "server CPU s", "peak RSS MiB", "vs curl")]
    for name in lines:
        r = vs_curl(name)
        rows.append((name, fmt(results.median(name, "mib_s"), 0), fmt(results.median(name, "s"), 2),
                     fmt(results.median(name, "cpu"), 2), fmt(results.median(name, "srv_cpu"), 2),
                     fmt(results.median(name, "rss")), f"{r:.2f}x" if r else "-"))
    table(rows, "  ")
    print()

    rows = [("ratio", "value", "target", "verdict")]

    def ratio(name: str, peer: str, target: float | None) -> None:
        r = vs_curl(name)
        verdict = "-" if target is None or r is None else ("PASS" if r >= target else "MISS")
        rows.append((f"{name} / {peer} throughput", f"{r:.2f}x" if r else "-",
                     f">= {target}x" if target else "-", verdict))

    ratio("get streamsvc-client", "curl", GET_RATIO_TARGET)
    peaks = results.all("get streamsvc-client", "rss")
    if peaks:
        worst = max(peaks)
        rows.append(("get streamsvc-client peak RSS, worst run",
                     f"{worst:.1f} MiB (median {results.median('get streamsvc-client', 'rss'):.1f})",
                     f"<= {RSS_TARGET_MIB:g} MiB", "PASS" if worst <= RSS_TARGET_MIB else "MISS"))
    ratio("get wget", "curl", None)
    ratio("put streamsvc-client", "curl -T", PUT_RATIO_TARGET)
    ratio("put streamsvc-client --no-digest", "curl -T", None)
    table(rows, "  ")
    print()

    print("Individual runs (in run order):")
    for j, order in enumerate(results.orders, 1):
        print(f"  run {j} order: {order}")
    w = max(len(n) for n in lines)

    def each(name: str, key: str, digits: int) -> str:
        return ", ".join(fmt(v, digits) for v in results.values.get(name, {}).get(key, []))

    for name in lines:
        rates, secs, rss = each(name, "mib_s", 0), each(name, "s", 2), each(name, "rss", 1)
        shown = f"{rates} MiB/s | " if not name.startswith("get 0 B") else ""
        print(f"  {name:<{w}}  {shown}{secs} s | peak RSS {rss} MiB")
    for name, peer in (("get streamsvc-client", "get curl"), ("put streamsvc-client", "put curl -T"),
                       ("put streamsvc-client --no-digest", "put curl -T")):
        a, b = results.values.get(name, {}).get("mib_s", []), results.values.get(peer, {}).get("mib_s", [])
        if a and b:
            print(f"  {name} / {peer.removeprefix('put ').removeprefix('get ')}, run by run: "
                  + ", ".join(f"{x / y:.2f}" for x, y in zip(a, b)))
    for name in lines:
        print(f"  {name:<{w}}  checks: " + "; ".join(results.notes.get(name, [])))


def machine_info(server: Server, tmp: str) -> list[str]:
    """
    The common lines, then this script's own: the disk everything is written
    to, what the server and streamsvc-client import (twistd is no C{--serve}
    child with a port file, so not L{server_lines}) and the peers' versions.
    """
    lines = machine_lines()
    lines.append(f"data dir, source, downloads: {tmp}: {filesystem_of(tmp, device=True)}, "
                 f"{shutil.disk_usage(tmp).free // 1024 ** 3} GiB free")
    # What the server and the client import: asked of this Python from the temp dir,
    # so a ./streamsvc of the working directory cannot stand in for the installed one.
    code = ("import os, sys, platform, twisted, streamsvc, importlib.metadata as m; "
            "print(os.path.dirname(os.path.abspath(streamsvc.__file__))); "
            "print(f'Python {platform.python_version()}; Twisted {twisted.__version__}; "
            "streamsvc {m.version(\"streamsvc\")}; treq {m.version(\"treq\")}')")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp, capture_output=True, text=True, env=clean_env())
    if r.returncode == 0:
        pkg, versions = r.stdout.splitlines()[:2]
        lines.append(f"server (pid {server.pid}) and streamsvc-client: {versions}; streamsvc from {pkg}")
        lines.append("  " + tree_check(pkg))
    else:
        lines.append(f"(could not ask {sys.executable} for its versions: {r.stderr.strip()[-200:]})")
    for tool in ("curl", "wget"):
        lines.append(f"{tool}: " + (tool_version([tool, "--version"]) if shutil.which(tool) else "not installed"))
    return lines


# --------------------------------------------------------------------------- main


def measure(run: Run, args: argparse.Namespace, runs: int, gets: list[str], puts: list[str],
            skipped: list[str]) -> None:
    """
    The source, the server, the warm-up, the runs and the report; in
    C{run.tmp}, the server in C{run.servers} (L{run_script} stops it).
    """
    size = (256 if args.quick else 1024) * MiB
    need = 3 * size + 256 * MiB   # the source, a download or a stored upload, the server's temp file
    free = shutil.disk_usage(run.tmp).free
    if free < need:
        raise RuntimeError(f"{run.tmp}: {free // MiB} MiB free, {need // MiB} MiB needed")
    data = os.path.join(run.tmp, "data")
    files = os.path.join(data, "files")
    out_dir = os.path.join(run.tmp, "out")
    os.makedirs(files)
    os.makedirs(out_dir)
    src = os.path.join(files, "big.bin")
    t = time.monotonic()
    digest = make_source(src, size)
    open(os.path.join(files, "empty.bin"), "wb").close()
    log(f"source {size // MiB} MiB written and hashed in {time.monotonic() - t:.1f}s")
    config = os.path.join(run.tmp, "tap.conf")
    with open(config, "w") as f:
        f.write(f"[auth]\ntokens = {TOKEN}\n[limits]\nmax_upload_bytes = 2GiB\n")
    server = Server(run.tmp, data, config)
    run.servers.append(server)
    server.start()
    bench = Bench(server, run.tmp, files, out_dir, size, digest, Results(), args.timeout)
    for name in gets:   # warm-up, not counted
        log("warm-up " + bench.get(name, "big.bin", size, None))
    for name in puts:
        log("warm-up " + bench.put(name, src, check_digest=False))
    bench.results = Results()   # the warm-up is not counted
    log(f"server pid {server.pid} on port {server.port}, "
        f"RSS {kib_to_mib(proc_status(server.pid)['VmRSS']):.1f} MiB")

    load_before = other_cpu_users(ours={server.pid})
    log("before: " + load_before)
    for (i, g), (_, p) in zip(interleaved(gets, runs), interleaved(puts, runs)):
        bench.results.orders.append(f"get: {', '.join(g)}; put: {', '.join(p)}")
        for name in g:
            log(f"run {i + 1}/{runs} " + bench.get(name, "empty.bin", 0, None))
        for name in g:
            log(f"run {i + 1}/{runs} " + bench.get(name, "big.bin", size, digest if i == 0 else None))
        for name in p:
            log(f"run {i + 1}/{runs} " + bench.put(name, src, check_digest=i == 0))
    load_after = other_cpu_users(ours={server.pid})

    print(f"streamsvc-client get/put vs curl and wget; {size // MiB} MiB file; {runs} runs; "
          f"quick={args.quick}")
    print(f"server: {shlex.join(server.argv)}   (cwd {run.tmp}; tap.conf: [auth] tokens = {TOKEN}, "
          "[limits] max_upload_bytes = 2GiB)")
    print("clients (OUT in TMP/out; every put to /files/up.bin, deleted after each):")
    for name in gets:
        print(f"  get {name}: {shlex.join(get_argv(name, server.url('big.bin'), 'OUT'))}")
    for name in puts:
        print(f"  put {name}: {shlex.join(put_argv(name, 'FILE', server.url('up.bin')))}")
    for line in skipped:
        print("  " + line)
    print()
    print_machine(machine_info(server, run.tmp), load_before, load_after, [server], warn=False)
    print()
    report(bench.results, size, runs, gets, puts)
    print()


def main() -> int:
    ap = argparse.ArgumentParser(description="streamsvc-client get/put vs curl and wget (issue 15)")
    ap.add_argument("--runs", type=int, default=None, help="runs [5; --quick: 2]")
    ap.add_argument("--quick", action="store_true", help="2 runs of a 256 MiB file")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds a client may take [300]")
    ap.add_argument("--tmpdir", default=None, help="where to create the temporary dir [system default]")
    ap.add_argument("--keep", action="store_true", help="keep the temporary dir (logs) at the end")
    args = ap.parse_args()

    runs = args.runs if args.runs is not None else (2 if args.quick else 5)
    if runs < 1:
        ap.error("--runs must be at least 1")
    for tool in (TWISTD, CLIENT):
        if not os.path.exists(tool):
            ap.error(f"{tool} is missing: pip install . into the venv of {sys.executable} first")
    gets = [n for n in GET_CLIENTS if installed(n)]
    puts = [n for n in PUT_CLIENTS if installed(n)]
    skipped = [f"{n} is not installed: its lines are skipped" for n in ("curl", "wget") if not shutil.which(n)]
    for line in skipped:
        log(line)

    return run_script(lambda run: measure(run, args, runs, gets, puts, skipped), prefix="streamsvc-client-",
                      tmpdir=args.tmpdir, keep=args.keep)


if __name__ == "__main__":
    sys.exit(main())
