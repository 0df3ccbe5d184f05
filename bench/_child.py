"""
What the benchmark scripts share about the server processes they start:
whether one is alive, the tail of its output when it died, and stopping its
whole process group (each server runs in a session of its own); the
environment they get, and the port file a C{--serve} child writes.

The classes that use C{ChildServer} set C{name}, C{proc}, C{outfile} and
C{logfile}; C{PortFileServer} derives the paths from C{tmp} and C{label}.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from _proc import fd_count


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def clean_env(drop_pythonpath: bool = True) -> dict[str, str]:
    """Environment for children: no proxies, so nothing leaves 127.0.0.1."""
    env = dict(os.environ)
    for k in list(env):
        if k.lower() in ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "ftp_proxy"):
            del env[k]
    env["NO_PROXY"] = "*"
    env["no_proxy"] = "*"
    if drop_pythonpath:
        env.pop("PYTHONPATH", None)  # the server must import the installed streamsvc
    return env


def publish_and_run(reactor, info: dict, port_file: str, **ports: int) -> int:
    """Server side of C{--serve}: add the runtime to C{info}, write it to the port file, run."""
    import twisted

    info.update(
        ports,
        pid=os.getpid(),
        python=f"{platform.python_version()} ({sys.executable})",
        twisted=twisted.__version__,
        reactor=f"{type(reactor).__module__}.{type(reactor).__name__}",
    )
    try:
        from importlib.metadata import version

        info["streamsvc_version"] = version("streamsvc")
    except Exception:
        info["streamsvc_version"] = "?"
    tmp = port_file + ".tmp"
    with open(tmp, "w") as f:
        json.dump(info, f)
    os.rename(tmp, port_file)
    reactor.run()
    return 0


class ChildServer:
    name: str
    proc: subprocess.Popen | None
    outfile: str
    logfile: str

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            raise RuntimeError(
                f"{self.name} server exited (rc={self.proc.returncode if self.proc else None})\n"
                + self.tail()
            )

    def tail(self, n: int = 30) -> str:
        parts = []
        for f in (self.outfile, self.logfile):
            try:
                with open(f, "rb") as fh:
                    lines = fh.read().decode("utf-8", "replace").splitlines()[-n:]
                parts.append(f"--- {f} (last {len(lines)} lines)\n" + "\n".join(lines))
            except OSError:
                pass
        return "\n".join(parts)

    def stop(self) -> None:
        p = self.proc
        if p is None or p.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            try:
                os.killpg(p.pid, sig)  # own session: the group id is its pid
            except ProcessLookupError:
                return
            try:
                p.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue


class PortFileServer(ChildServer):
    """
    A server that is this script run with C{--serve KIND}, in C{tmp}, telling
    its port (and more, C{info}) in a port file. The classes that use it set
    C{name}, C{kind}, C{tmp}, C{data_dir}, C{port}, C{info}, C{proc} (and
    C{idle_fds} for L{settle}); C{script} is the path of the script.
    """
    kind: str
    tmp: str
    data_dir: str
    port: int
    idle_fds: int
    info: dict
    script: str

    @property
    def label(self) -> str:
        return self.name.replace(" ", "_").replace(".", "_")

    @property
    def logfile(self) -> str:
        return os.path.join(self.tmp, f"{self.label}.log")

    @property
    def outfile(self) -> str:
        return os.path.join(self.tmp, f"{self.label}.out")

    @property
    def port_file(self) -> str:
        return os.path.join(self.tmp, f"{self.label}.port")

    @property
    def argv(self) -> list[str]:
        return [sys.executable, self.script, "--serve", self.kind, "--port-file", self.port_file,
                "--data-dir", self.data_dir, "--log", self.logfile]

    def launch(self) -> None:
        """Start the child (the port file gone first); see L{await_port}."""
        pf = self.port_file
        if os.path.exists(pf):
            os.unlink(pf)
        out = open(self.outfile, "ab")
        try:
            # cwd = temp dir: no ./streamsvc or ./tap.conf from the repository is picked up.
            self.proc = subprocess.Popen(self.argv, cwd=self.tmp, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT, env=clean_env(),
                                         start_new_session=True)
        finally:
            out.close()

    def await_port(self) -> None:
        """Wait for the port file; read it into C{info} and C{port}."""
        pf = self.port_file
        t0 = time.monotonic()
        while not os.path.exists(pf):
            self.check_alive()
            if time.monotonic() - t0 > 60:
                raise RuntimeError(f"{self.name}: no port file after 60s\n" + self.tail())
            time.sleep(0.05)
        with open(pf) as f:
            self.info = json.load(f)
        self.port = self.info["port"]

    def start(self) -> None:
        self.launch()
        self.await_port()

    def settle(self, max_wait: float = 10.0) -> str:
        """Wait until the server holds its idle number of fds (the last connection is gone)."""
        self.check_alive()
        t0 = time.monotonic()
        while True:
            n = fd_count(self.pid)
            if n <= self.idle_fds:
                break
            if time.monotonic() - t0 > max_wait:
                return f"fds {n} > idle {self.idle_fds} after {max_wait:.0f}s; "
            time.sleep(0.05)
        time.sleep(0.2)
        return ""

    def log_problems(self) -> list[str]:
        """Lines of the server's log and output that look like errors."""
        out = []
        for f in (self.logfile, self.outfile):
            try:
                with open(f, "rb") as fh:
                    for line in fh.read().decode("utf-8", "replace").splitlines():
                        low = line.lower()
                        if any(w in low for w in ("traceback", "error", "unhandled", "critical",
                                                  "could not", "exception")):
                            out.append(line.strip())
            except OSError:
                pass
        return out


def interrupt_on_signals() -> None:
    """
    SIGINT, SIGTERM and SIGHUP raise KeyboardInterrupt in the script, so its
    C{finally} (L{end_run}) stops the servers and removes the temporary
    directory. Set explicitly for SIGINT too: a shell may start us with
    SIGINT ignored.
    """
    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)


def run_failed(error: BaseException, servers: list) -> int:
    """A script's run failed: say why, with the end of each child's log; exit status 1."""
    log(f"error: {error}")
    for s in servers:
        if s.proc is not None:
            log(s.tail(15))
    return 1


def end_run(servers: list, tmp: str, *, keep: bool, ok: bool) -> None:
    """
    The end of every script's run, however it went: the children stopped
    (signals ignored meanwhile, so a second Ctrl-C cannot leave one behind)
    and the temporary directory removed, unless kept (--keep, or
    BENCH_KEEP_ON_ERROR after a failure).
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for s in servers:
        s.stop()
    if keep or (not ok and os.environ.get("BENCH_KEEP_ON_ERROR")):
        log(f"kept {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)


class Run:
    """
    One script run: its temporary directory, the servers it started (each
    stopped at the end) and whether it got to the end (L{run_script}).
    """

    def __init__(self, prefix: str, tmpdir: str | None) -> None:
        self.started = time.monotonic()
        self.tmp = tempfile.mkdtemp(prefix=prefix, dir=tmpdir)
        self.servers: list = []
        self.ok = False


def run_script(body, *, prefix: str, tmpdir: str | None = None, keep: bool = False) -> int:
    """
    The frame of every script's C{main} after its arguments: signals turned
    into KeyboardInterrupt, C{body(run)} given a fresh L{Run}; then the total
    time and the command that gives these figures, or why it failed (with
    the end of each server's log); the servers stopped and the temporary
    directory removed (L{end_run}) however it went. The exit status: 0, 1
    on an error, 130 when interrupted.
    """
    interrupt_on_signals()
    run = Run(prefix, tmpdir)
    try:
        body(run)
        print(f"total time {time.monotonic() - run.started:.0f}s")
        print("command: python " + shlex.join([os.path.relpath(sys.argv[0])] + sys.argv[1:]), flush=True)
        run.ok = True
        return 0
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    except Exception as e:
        return run_failed(e, run.servers)
    finally:
        end_run(run.servers, run.tmp, keep=keep, ok=run.ok)
