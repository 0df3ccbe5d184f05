"""
Tests for the twistd plugin and L{streamsvc.tap}: discovery without importing
the app, options over config, one-line errors, and the real C{twistd}.
"""

from __future__ import annotations

import importlib.metadata
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

import pytest
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IServiceMaker
from twisted.internet.testing import MemoryReactorClock
from twisted.internet.defer import fail
from twisted.internet.error import CannotListenError
from twisted.plugin import getPlugins
from twisted.web.resource import Resource
from twisted.web.server import Site

from streamsvc.tap import ListenError, Options, _Listener, makeService

TWISTD = str(Path(sys.executable).with_name("twistd"))


def test_plugin_discovery_does_not_import_tap() -> None:
    """getPlugins finds 'streamsvc' without importing streamsvc.tap (or the app)."""
    code = (
        "import sys\n"
        "from twisted.plugin import getPlugins\n"
        "from twisted.application.service import IServiceMaker\n"
        "names = [p.tapname for p in getPlugins(IServiceMaker)]\n"
        "assert 'streamsvc' in names, names\n"
        "leaked = [m for m in sys.modules if m.startswith('streamsvc')]\n"
        "assert not leaked, leaked\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_plugin_points_at_tap() -> None:
    """The service maker found in-process is ours and builds our Options."""
    [maker] = [p for p in getPlugins(IServiceMaker) if p.tapname == "streamsvc"]
    assert maker.module == "streamsvc.tap"
    assert isinstance(maker.options(), Options)


def test_installed_distribution_ships_the_dropin() -> None:
    """
    The installed wheel has twisted/plugins/streamsvc_plugin.py and no
    twisted/__init__.py or twisted/plugins/__init__.py (daphne#557).

    Read from the RECORD of the copy pip installed into site-packages (pip
    installs a project by building a wheel, and RECORD lists exactly that
    wheel's files), never from an in-tree C{*.egg-info}, which only says
    what the source tree held.
    """
    purelib = sysconfig.get_paths()["purelib"]
    found = list(importlib.metadata.distributions(name="streamsvc", path=[purelib]))
    if not found:
        pytest.skip(f"streamsvc is not installed in {purelib}")
    (dist,) = found
    assert dist.read_text("WHEEL") is not None, "not installed from a wheel"
    record = dist.read_text("RECORD") or ""
    names = {line.split(",", 1)[0] for line in record.splitlines()}
    assert "twisted/plugins/streamsvc_plugin.py" in names
    assert "twisted/__init__.py" not in names
    assert "twisted/plugins/__init__.py" not in names
    assert "streamsvc/py.typed" in names
    assert "streamsvc/tap.py" in names


def parse(*argv: str, cwd: Path) -> Options:
    old = os.getcwd()
    os.chdir(cwd)
    try:
        options = Options()
        options.parseOptions(list(argv))
        return options
    finally:
        os.chdir(old)


def test_defaults_create_data_dir(tmp_path: Path) -> None:
    """With no config file, defaults apply and ./data/files is created."""
    options = parse(cwd=tmp_path)
    assert options.config is not None
    assert options.config.server.listen == ("tcp:8080:interface=127.0.0.1",)
    assert (tmp_path / "data" / "files").is_dir()


def test_the_access_log_is_a_file_of_its_own_by_default(tmp_path: Path) -> None:
    """Unset: DATA_DIR/logs/access.log (made at start-up); 'twistd': twistd's log; a path: that file."""
    options = parse("-d", str(tmp_path / "d"), cwd=tmp_path)
    assert options.config.server.access_log_file == str(tmp_path / "d" / "logs" / "access.log")
    assert (tmp_path / "d" / "logs" / "access.log").is_file()
    (tmp_path / "tap.conf").write_text("[server]\naccess_log_file = twistd\n")
    assert parse("-d", str(tmp_path / "e"), cwd=tmp_path).config.server.access_log_file is None
    assert not (tmp_path / "e" / "logs").exists()
    (tmp_path / "tap.conf").write_text("[server]\naccess_log = off\n")
    parse("-d", str(tmp_path / "f"), cwd=tmp_path)
    assert not (tmp_path / "f" / "logs").exists()  # no log, no file
    (tmp_path / "tap.conf").write_text(f"[server]\naccess_log_file = {tmp_path / 'x' / 'a.log'}\n")
    assert parse(cwd=tmp_path).config.server.access_log_file == str(tmp_path / "x" / "a.log")
    assert (tmp_path / "x" / "a.log").is_file()


def test_an_access_log_that_cannot_be_opened_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("a file, not a folder")
    (tmp_path / "tap.conf").write_text(f"[server]\naccess_log_file = {tmp_path / 'blocker' / 'a.log'}\n")
    with pytest.raises(SystemExit):
        parse(cwd=tmp_path)


def test_command_line_overrides_file(tmp_path: Path) -> None:
    """--listen (repeatable) and --data-dir override tap.conf in the working directory."""
    (tmp_path / "tap.conf").write_text("[server]\nlisten = tcp:9000\ndata_dir = fromfile\n")
    options = parse(cwd=tmp_path)
    assert options.config.server.listen == ("tcp:9000",)
    options = parse("--listen", "tcp:1", "--listen", "unix:/tmp/x.sock", "-d", str(tmp_path / "d"), cwd=tmp_path)
    assert options.config.server.listen == ("tcp:1", "unix:/tmp/x.sock")
    assert options.config.server.data_dir == str(tmp_path / "d")


@pytest.mark.parametrize(
    "argv, conf, fragment",
    [
        (["--config", "missing.conf"], None, "missing.conf"),
        ([], "[nope]\n", "nope"),
        ([], "[stream]\nchunk_size = big\n", "chunk_size"),
        ([], "[server]\nlisten = bogus:1\n", "bogus:1"),
        (["--listen", "tcp:notaport"], None, "tcp:notaport"),
        ([], "[plugins]\nenabled = not-installed\n", "no plugin named 'not-installed' is installed"),
        ([], "[plugin:not-installed]\nx = 1\n", "[plugin:not-installed]"),
    ],
)
def test_config_errors_are_one_line(
    tmp_path: Path, capsys: Any, argv: list[str], conf: str | None, fragment: str
) -> None:
    """A bad config gives one line on stderr naming the culprit, and a non-zero exit."""
    if conf is not None:
        (tmp_path / "tap.conf").write_text(conf)
    with pytest.raises(SystemExit) as exit:
        parse(*argv, cwd=tmp_path)
    assert exit.value.code != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert fragment in err
    assert "Traceback" not in err


def test_make_service_one_endpoint_service_per_listen(tmp_path: Path) -> None:
    """makeService builds one endpoint service per listen entry, on the given reactor."""
    options = parse("--listen", "tcp:0:interface=127.0.0.1", "--listen", "tcp:0", "-d", str(tmp_path), cwd=tmp_path)
    reactor = MemoryReactorClock()
    service = makeService(options, reactor=reactor)
    children = [c for c in service if isinstance(c, StreamServerEndpointService)]
    assert len(children) == 2
    assert len(list(service)) == 4  # and the one that drains the Site at stop, and the uploads' sweep
    service.privilegedStartService()
    service.startService()
    assert len(reactor.tcpServers) == 2
    stopped = service.stopService()
    assert stopped.called  # nothing to drain


class RefusingEndpoint:
    """A server endpoint whose port is taken."""

    def listen(self, factory: Any) -> Any:
        return fail(CannotListenError("127.0.0.1", 8080, OSError(98, "Address already in use")))


def test_listen_failure_is_one_line(capfd: pytest.CaptureFixture[str]) -> None:
    """A port that cannot be bound stops start-up with one line naming the endpoint."""
    listener = _Listener("tcp:8080:interface=127.0.0.1", RefusingEndpoint(), Site(Resource()))
    hook = sys.excepthook
    try:
        with pytest.raises(ListenError):
            listener.privilegedStartService()
    finally:
        sys.excepthook = hook
    # (Before twistd starts logging, Twisted also echoes critical log events to stderr.)
    err = capfd.readouterr().err
    assert "Traceback" not in err
    assert err.splitlines()[-1] == (
        "streamsvc: error: cannot listen on 'tcp:8080:interface=127.0.0.1': "
        "[Errno 98] Address already in use"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_twistd_runs_from_any_directory(tmp_path: Path) -> None:
    """`twistd -n streamsvc` starts from an unrelated directory and serves /healthz and a file."""
    port = free_port()
    (tmp_path / "data" / "files").mkdir(parents=True)
    (tmp_path / "data" / "files" / "hi.txt").write_bytes(b"hello")
    proc = subprocess.Popen(
        [TWISTD, "-n", "--pidfile=", "--logfile=-", "streamsvc", "--listen", f"tcp:{port}:interface=127.0.0.1"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                    s.sendall(b"GET /files/hi.txt HTTP/1.0\r\n\r\n")
                    reply = b""
                    while chunk := s.recv(65536):
                        reply += chunk
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(proc.communicate()[0].decode())
                time.sleep(0.1)  # waiting for a child process to bind, not for logic
        assert reply.startswith(b"HTTP/1.0 200")
        assert reply.endswith(b"\r\n\r\nhello")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.parametrize("foreground", [True, False])
def test_twistd_port_in_use_is_one_line(tmp_path: Path, foreground: bool) -> None:
    """
    A port already taken: exit status 1, the reason on stderr (one line in the
    foreground; twistd's own two-line report when daemonizing), no traceback,
    and no pidfile left behind.
    """
    pidfile = tmp_path / "twistd.pid"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run(
            [TWISTD, *(["-n"] if foreground else []), f"--pidfile={pidfile}",
             f"--logfile={tmp_path / 'twistd.log'}",
             "streamsvc", "--listen", f"tcp:{port}:interface=127.0.0.1"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=60,
        )
    line = f"cannot listen on 'tcp:{port}:interface=127.0.0.1'"
    assert out.returncode == 1
    assert "Traceback" not in out.stdout + out.stderr
    if foreground:
        assert out.stderr == f"streamsvc: error: {line}: [Errno 98] Address already in use\n"
    else:
        assert line in out.stderr
    assert not pidfile.exists()
    assert line in (tmp_path / "twistd.log").read_text()


def test_twistd_help_and_bad_config() -> None:
    """`twistd streamsvc --help` lists the options; a bad --config exits non-zero with one line."""
    out = subprocess.run([TWISTD, "streamsvc", "--help"], capture_output=True, text=True, cwd="/")
    assert out.returncode == 0
    assert "--listen" in out.stdout and "--data-dir" in out.stdout and "--config" in out.stdout
    out = subprocess.run(
        [TWISTD, "-n", "streamsvc", "--config", "/nonexistent/tap.conf"],
        capture_output=True,
        text=True,
        cwd="/tmp",
    )
    assert out.returncode != 0
    assert "Traceback" not in out.stdout + out.stderr
    assert out.stderr.strip().count("\n") == 0
    assert "/nonexistent/tap.conf" in out.stderr


def start_twistd(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen(
        [TWISTD, "-n", "--pidfile=", "--logfile=-", "streamsvc",
         "--listen", f"tcp:{port}:interface=127.0.0.1", *extra],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    wait_listening(proc, port)
    return proc, port


def wait_listening(proc: subprocess.Popen[bytes], port: int, timeout: float = 30.0) -> None:
    """Until C{proc} accepts connections on C{port}; its output in the error if it exits first."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(proc.communicate()[0].decode()) from None
            time.sleep(0.1)  # waiting for a child process to bind, not for logic


def throttled_config(tmp_path: Path, shutdown_timeout: int) -> str:
    (tmp_path / "data" / "files").mkdir(parents=True)
    (tmp_path / "data" / "files" / "big.bin").write_bytes(os.urandom(2 * 1024 * 1024))
    conf = tmp_path / "tap.conf"
    conf.write_text(
        f"[server]\nshutdown_timeout = {shutdown_timeout}\n[limits]\nrate_limit = 1MiB\n"
    )
    return str(conf)


def download(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(b"GET /files/big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
    assert s.recv(1024).startswith(b"HTTP/1.1 200")
    return s


def read_all(s: socket.socket) -> bytes:
    data = b""
    try:
        while chunk := s.recv(65536):
            data += chunk
    except OSError:
        pass
    return data


def test_sigterm_lets_a_download_finish_then_exits_0(tmp_path: Path) -> None:
    """SIGTERM mid-download (2 MiB at 1 MiB/s): no new connections, the download completes, exit 0."""
    proc, port = start_twistd(tmp_path, "--config", throttled_config(tmp_path, 30))
    try:
        s = download(port)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)  # let the stop begin (a child process, not our logic)
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        rest = read_all(s)
        s.close()
        assert len(rest) > 1024 * 1024  # the body went on after the signal, to its end
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_sigterm_aborts_what_outlives_shutdown_timeout_and_a_second_one_at_once(tmp_path: Path) -> None:
    proc, port = start_twistd(tmp_path, "--config", throttled_config(tmp_path, 1))
    try:
        s = download(port)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert time.monotonic() - started < 1.9  # 2 s of body left: cut at ~1 s
        s.close()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    tmp2 = tmp_path / "second"
    tmp2.mkdir()
    proc, port = start_twistd(tmp2, "--config", throttled_config(tmp2, 60))
    try:
        s = download(port)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)  # the first stop has begun (a child process)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert time.monotonic() - started < 1.0
        s.close()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
