"""
Tests for L{streamsvc.workers}: the supervisor's spawning, restarts and
stop (with a fake spawn and a clock), the event relay, and the real thing
under twistd: two workers serving one port, a killed worker replaced,
SIGTERM draining every worker, events reaching subscribers on any worker,
metrics summed, and workers that outlive a killed supervisor stopping.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import attrs
import pytest
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, capturedLogs, eventAsJSON
from twisted.python.failure import Failure

from streamsvc.config import Config, ConfigError, ServerConfig, apply_overrides, parse_workers
from streamsvc.tasks.events import EventHub
from streamsvc.workers import (
    CHANNEL_FD,
    KILL_GRACE,
    EventRelay,
    Inherited,
    WorkerPool,
    WorkerStart,
    _Records,
    hub_side,
    restart_delay,
)

from test_tap import TWISTD, free_port, read_all

# ------------------------------------------------------------------ pure


def test_restart_delay_doubles_while_workers_die_young_and_resets_after() -> None:
    assert restart_delay(0.0, 0.5) == 1.0
    assert restart_delay(1.0, 0.5) == 2.0
    assert restart_delay(16.0, 3.0) == 30.0
    assert restart_delay(30.0, 3.0) == 30.0
    assert restart_delay(30.0, 10.0) == 1.0  # it ran steadily: a fresh crash


def test_systemd_endpoints_are_refused_with_workers() -> None:
    from streamsvc.config import check_workers

    config = attrs.evolve(Config(), server=ServerConfig(workers=2, listen=("systemd:domain=INET:index=0",)))
    with pytest.raises(ConfigError, match="with several workers, listen on tcp:, tcp6:, unix:, ssl:"):
        check_workers(config)
    check_workers(attrs.evolve(config, server=ServerConfig(workers=1, listen=config.server.listen)))


def test_parse_workers() -> None:
    assert parse_workers("3") == 3
    assert parse_workers(" auto ") == min(len(os.sched_getaffinity(0)), 64)
    for bad in ("0", "65", "two", "-1", ""):
        with pytest.raises(ValueError, match="auto or an integer from 1 to 64"):
            parse_workers(bad)
    with pytest.raises(ConfigError, match="--workers 'x'"):
        apply_overrides(Config(), workers="x")
    assert apply_overrides(Config(), workers="2").server.workers == 2


def test_records_split_across_reads_and_long_ones_are_cut() -> None:
    seen: list[bytes] = []
    records = _Records(b"\x1e", seen.append)
    records.feed(b'{"a":1}\x1e{"b"')
    records.feed(b":2}\x1e\x1e")
    assert seen == [b'{"a":1}', b'{"b":2}']
    records.feed(b"x" * (300 * 1024))
    assert seen[-1] == b"x" * (256 * 1024)
    records.feed(b"tail")
    records.end()
    assert seen[-1] == b"tail"


# ------------------------------------------------------- the supervisor


class FakeProcessTransport:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.stdin = b""
        self.stdin_closed = False
        self.signals: list[int] = []

    def write(self, data: bytes) -> None:
        self.stdin += data

    def closeStdin(self) -> None:
        self.stdin_closed = True

    def signalProcess(self, number: int) -> None:
        self.signals.append(number)


class FakePort:
    def __init__(self) -> None:
        self.socket = socket.socket()  # only its fileno and family are used

    def fileno(self) -> int:
        return self.socket.fileno()


class Spawned:
    """A fake C{spawnProcess}: records each call and connects the protocol."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self._pid = 1000

    def __call__(self, process: Any, executable: str, args: list[str], env: Any, childFDs: Any) -> Any:
        self._pid += 1
        transport = FakeProcessTransport(self._pid)
        self.calls.append(
            {"process": process, "args": args, "env": env, "fds": childFDs, "transport": transport}
        )
        process.makeConnection(transport)
        return transport

    def end(self, n: int, reason: Any) -> None:
        self.calls[n]["process"].processEnded(Failure(reason))


def pool(workers: int = 2, shutdown_timeout: int = 5) -> tuple[WorkerPool, MemoryReactorClock, Spawned, FakePort]:
    reactor = MemoryReactorClock()
    config = attrs.evolve(
        Config(), server=ServerConfig(workers=workers, shutdown_timeout=shutdown_timeout)
    )
    port = FakePort()
    spawned = Spawned()
    p = WorkerPool(config, lambda: [("tcp:8080", port)], reactor, spawn=spawned, executable="/py")
    return p, reactor, spawned, port


def test_pool_spawns_each_worker_with_the_sockets_and_its_config() -> None:
    p, reactor, spawned, port = pool(workers=3)
    p.startService()
    try:
        assert len(spawned.calls) == 3
        for index, call in enumerate(spawned.calls, start=1):
            assert call["args"] == ["/py", "-m", "streamsvc.workers"]
            fds = call["fds"]
            assert (fds[0], fds[1], fds[2]) == ("w", "r", "r")
            assert fds[CHANNEL_FD + 1] == port.fileno()
            start = pickle.loads(call["transport"].stdin)
            assert call["transport"].stdin_closed
            assert isinstance(start, WorkerStart)
            assert start.index == index
            assert start.config == p.config
            assert start.sockets == (Inherited(CHANNEL_FD + 1, socket.AF_INET, "tcp:8080"),)
            assert os.path.isdir(call["env"]["PROMETHEUS_MULTIPROC_DIR"])
        # One event channel per worker, adopted on the supervisor's side.
        assert len(reactor.adoptedStreamConnections) == 3
    finally:
        p.stopService()
        for n in range(3):
            spawned.end(n, ProcessDone(0))
        port.socket.close()


def test_a_worker_that_dies_is_restarted_with_backoff() -> None:
    p, reactor, spawned, port = pool(workers=1)
    p.startService()
    with capturedLogs() as events:
        reactor.advance(0.5)
        spawned.end(0, ProcessTerminated(exitCode=1))
    (event,) = [e for e in events if e["log_level"] == LogLevel.error]
    assert "restarting it in 1 s" in str(event["log_format"]).format(**event)
    reactor.advance(0.9)
    assert len(spawned.calls) == 1
    reactor.advance(0.2)
    assert len(spawned.calls) == 2  # restarted after 1 s
    spawned.end(1, ProcessTerminated(signal=signal.SIGSEGV))
    reactor.advance(1.5)
    assert len(spawned.calls) == 2  # dying young again: 2 s this time
    reactor.advance(0.6)
    assert len(spawned.calls) == 3
    reactor.advance(60)  # this one runs steadily...
    spawned.end(2, ProcessTerminated(exitCode=1))
    reactor.advance(1.1)
    assert len(spawned.calls) == 4  # ...so its crash waits 1 s again
    p.stopService()
    spawned.end(3, ProcessDone(0))
    port.socket.close()


def test_stop_sends_sigterm_to_every_worker_and_waits_for_them_all() -> None:
    p, reactor, spawned, port = pool(workers=2)
    p.startService()
    folder = spawned.calls[0]["env"]["PROMETHEUS_MULTIPROC_DIR"]
    reactor.advance(0.1)
    spawned.end(0, ProcessTerminated(exitCode=3))  # a restart is pending...
    done = p.stopService()
    assert [c["transport"].signals for c in spawned.calls] == [[], [signal.SIGTERM]]
    reactor.advance(60)
    assert len(spawned.calls) == 2  # ...and cancelled by the stop
    fired: list[Any] = []
    done.addCallback(fired.append)
    assert fired == []
    spawned.end(1, ProcessDone(0))
    assert fired == [None]
    assert not os.path.exists(folder)
    port.socket.close()


def test_stop_kills_workers_that_outlive_the_shutdown_timeout() -> None:
    p, reactor, spawned, port = pool(workers=1, shutdown_timeout=5)
    p.startService()
    done = p.stopService()
    reactor.advance(5 + KILL_GRACE - 0.1)
    assert spawned.calls[0]["transport"].signals == [signal.SIGTERM]
    reactor.advance(0.2)
    assert spawned.calls[0]["transport"].signals == [signal.SIGTERM, signal.SIGKILL]
    spawned.end(0, ProcessTerminated(signal=signal.SIGKILL))
    assert done.called
    port.socket.close()


def test_worker_log_records_are_logged_as_that_worker() -> None:
    p, reactor, spawned, port = pool(workers=1)
    p.startService()
    process = spawned.calls[0]["process"]
    record = eventAsJSON({"log_format": "hello {who}", "who": "there", "log_level": LogLevel.warn,
                          "log_namespace": "streamsvc.x", "log_time": 1.0})
    with capturedLogs() as events:
        process.outReceived(record.encode()[:10])
        process.outReceived(record.encode()[10:] + b"\x1e")
        process.errReceived(b"Traceback (most recent call last):\n")
    relayed, stderr = events
    assert relayed["log_system"] == "worker-1"
    assert relayed["log_format"].format(who="there") == "hello there"
    assert stderr["log_system"] == "worker-1"
    assert stderr["text"] == "Traceback (most recent call last):"
    p.stopService()
    spawned.end(0, ProcessDone(0))
    port.socket.close()


def test_make_service_with_workers_holds_the_ports_for_them(tmp_path: Path) -> None:
    from twisted.application.service import IServiceCollection

    from streamsvc.tap import HeldForWorkers, Options, _Listener, makeService

    options = Options()
    options.parseOptions(["--data-dir", str(tmp_path / "data"), "--workers", "2",
                          "--listen", "tcp:0:interface=127.0.0.1"])
    reactor = MemoryReactorClock()
    top = makeService(options, reactor)
    services = list(IServiceCollection(top))
    (listener,) = [s for s in services if isinstance(s, _Listener)]
    (pool_,) = [s for s in services if isinstance(s, WorkerPool)]
    assert isinstance(listener.factory, HeldForWorkers) and not listener._accept
    assert pool_.size == 2
    assert not any(type(s).__name__ == "DrainService" for s in services)  # the workers drain


# ------------------------------------------------------------ the relay


class FakeChannel:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)


def test_relay_numbers_events_in_one_sequence_for_every_worker() -> None:
    relay = EventRelay()
    one, two = FakeChannel(), FakeChannel()
    relay.joined(1, one)
    relay.publish("created", '{"id":1}')
    relay.joined(2, two)  # a late worker starts after the last id
    relay.publish("updated", '{"id":1}')
    assert one.sent == [
        {"sync": 0},
        {"id": 1, "kind": "created", "data": '{"id":1}'},
        {"id": 2, "kind": "updated", "data": '{"id":1}'},
    ]
    assert two.sent == [{"sync": 1}, {"id": 2, "kind": "updated", "data": '{"id":1}'}]
    relay.forget(1)
    relay.publish("deleted", "{}")
    assert len(one.sent) == 3 and two.sent[-1]["id"] == 3


def test_a_hub_with_a_relay_publishes_through_it_and_delivers_what_comes_back() -> None:
    hub = EventHub(MemoryReactorClock(), history=10)
    up: list[tuple[str, bytes]] = []
    hub.relay = lambda kind, payload: up.append((kind, payload))
    assert hub.publish("created", {"id": 7}) is None
    assert hub.last_id == 0 and up == [("created", b'{"id":7}')]
    on_message = hub_side(hub)
    on_message({"sync": 41})
    assert hub.last_id == 41
    on_message({"id": 42, "kind": "created", "data": '{"id":7}'})
    assert hub.last_id == 42
    on_message({"id": 42, "kind": "created", "data": "{}"})  # a repeat is ignored
    assert hub.last_id == 42
    # Resuming after 41 replays 42; after 40 (before this worker's start) resets.
    assert [e.seq for e in hub._replay_after("41")] == [42]
    assert hub._replay_after("40") is None


# ------------------------------------------------------- under twistd


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    return [int(n) for n in text.split()]


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def wait_for(condition: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)  # waiting for other processes, not for our logic


TOKEN = "w0rkers-token"


class Workers:
    """C{twistd streamsvc --workers 2} in C{tmp_path}, logging to a file."""

    def __init__(self, tmp_path: Path, conf: str = "", workers: int = 2, listen: tuple[str, ...] = ()) -> None:
        self.tmp = tmp_path
        (tmp_path / "data" / "files").mkdir(parents=True, exist_ok=True)
        (tmp_path / "tap.conf").write_text(f"[auth]\ntokens = {TOKEN}\n" + conf)
        self.port = free_port()
        self.log = tmp_path / "twistd.log"
        listen = (f"tcp:{self.port}:interface=127.0.0.1",) + listen
        self.proc = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", f"--logfile={self.log}", "streamsvc",
             "--workers", str(workers), *[arg for d in listen for arg in ("--listen", d)]],
            cwd=tmp_path,
        )
        wait_for(lambda: len(self.workers()) == workers and self.log_has("serving", workers),
                 "the workers to start")

    def workers(self) -> list[int]:
        return [pid for pid in children(self.proc.pid) if alive(pid)]

    def log_has(self, text: str, count: int = 1) -> bool:
        return self.log.exists() and self.log.read_text().count(text) >= count

    def http(self, request: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as s:
            s.sendall(request)
            return read_all(s)

    def close(self) -> None:
        pids = children(self.proc.pid)
        if self.proc.poll() is None:
            self.proc.terminate()  # the orderly stop, which removes the metrics folder
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc.wait()
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def workers(tmp_path: Path) -> Any:
    started: list[Workers] = []

    def start(conf: str = "", n: int = 2, listen: tuple[str, ...] = ()) -> Workers:
        w = Workers(tmp_path, conf, n, listen)
        started.append(w)
        return w

    yield start
    for w in started:
        w.close()


def test_two_workers_serve_and_a_killed_one_is_replaced(workers: Any, tmp_path: Path) -> None:
    w = workers()
    (tmp_path / "data" / "files" / "hi.txt").write_bytes(b"hello")
    for _ in range(4):
        reply = w.http(b"GET /files/hi.txt HTTP/1.0\r\n\r\n")
        assert reply.startswith(b"HTTP/1.0 200") and reply.endswith(b"\r\n\r\nhello")
    first, second = w.workers()
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: first not in w.workers() and len(w.workers()) == 2, "a new worker")
    assert second in w.workers()
    assert w.log_has("exited (signal 9)") and w.log_has("restarting it in 1 s")
    assert w.http(b"GET /files/hi.txt HTTP/1.0\r\n\r\n").endswith(b"hello")


def test_workers_serve_unix_and_tls_endpoints_too(workers: Any, tmp_path: Path) -> None:
    import ssl

    from tls_certs import make_pki

    pki = make_pki(tmp_path / "pki")
    tls_port, sock = free_port(), tmp_path / "s.sock"
    workers(listen=(f"unix:{sock}", f"ssl:{tls_port}:interface=127.0.0.1:privateKey={pki.server}"))
    (tmp_path / "data" / "files" / "hi.txt").write_bytes(b"hello")
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(sock))
        s.sendall(b"GET /files/hi.txt HTTP/1.0\r\n\r\n")
        assert read_all(s).endswith(b"\r\n\r\nhello")
    context = ssl.create_default_context(cafile=str(pki.ca))
    with socket.create_connection(("127.0.0.1", tls_port), timeout=30) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(b"GET /files/hi.txt HTTP/1.0\r\n\r\n")
            assert read_all(s).endswith(b"\r\n\r\nhello")


def test_sigterm_drains_every_worker_then_exits_0(workers: Any, tmp_path: Path) -> None:
    (tmp_path / "data" / "files").mkdir(parents=True)
    (tmp_path / "data" / "files" / "big.bin").write_bytes(os.urandom(2 * 1024 * 1024))
    w = workers("[limits]\nrate_limit = 1MiB\n")
    downloads = []
    for _ in range(4):
        s = socket.create_connection(("127.0.0.1", w.port), timeout=30)
        s.sendall(b"GET /files/big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.recv(1024).startswith(b"HTTP/1.1 200")
        downloads.append(s)
    pids = w.workers()
    w.proc.send_signal(signal.SIGTERM)
    for s in downloads:
        assert len(read_all(s)) > 1024 * 1024  # each went on to its end
        s.close()
    assert w.proc.wait(timeout=30) == 0
    assert not any(alive(pid) for pid in pids)
    assert w.log_has("stopped (status 0)", 2)


def test_events_reach_subscribers_on_every_worker_in_one_sequence(workers: Any) -> None:
    w = workers()
    auth = b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
    subscribers = []
    for _ in range(4):  # on whichever workers the kernel picks
        s = socket.create_connection(("127.0.0.1", w.port), timeout=30)
        s.sendall(b"GET /tasks/events?format=ndjson HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n")
        subscribers.append(s)
    for s in subscribers:
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
    for n in range(6):  # a new connection each: both workers create tasks
        body = json.dumps({"title": f"task {n}"}).encode()
        reply = w.http(b"POST /tasks HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + auth
                       + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        assert reply.startswith(b"HTTP/1.1 201")
    for s in subscribers:
        seen: list[dict[str, Any]] = []
        data = b""
        while len(seen) < 6:
            data += s.recv(65536)
            seen = [json.loads(line) for line in data.split(b"\n") if line.startswith(b"{")]
        assert [e["id"] for e in seen] == [1, 2, 3, 4, 5, 6]
        assert [e["data"]["title"] for e in seen] == [f"task {n}" for n in range(6)]
        s.close()


def test_metrics_are_summed_over_the_workers(workers: Any) -> None:
    w = workers()
    held = [socket.create_connection(("127.0.0.1", w.port), timeout=30) for _ in range(10)]
    for s in held:  # a request each, so every connection is surely accepted
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
    text = w.http(b"GET /metrics HTTP/1.0\r\n\r\n").decode().partition("\r\n\r\n")[2]
    values = {line.split(" ")[0]: float(line.split(" ")[1])
              for line in text.splitlines() if line and not line.startswith("#")}
    assert values["streamsvc_connections_open"] == 11  # the ten held and this one
    assert values['streamsvc_responses_total{status="2xx"}'] >= 10
    # Every worker writes its own figures where every other can read them.
    environ = Path(f"/proc/{w.workers()[0]}/environ").read_bytes().split(b"\0")
    (folder,) = [e.split(b"=", 1)[1] for e in environ if e.startswith(b"PROMETHEUS_MULTIPROC_DIR=")]
    writers = {int(name.rsplit("_", 1)[1].removesuffix(".db")) for name in os.listdir(os.fsdecode(folder))}
    assert set(w.workers()) <= writers
    for s in held:
        s.close()


def test_workers_stop_when_their_supervisor_is_killed(workers: Any) -> None:
    w = workers()
    pids = w.workers()
    w.proc.kill()
    w.proc.wait()
    wait_for(lambda: not any(alive(pid) for pid in pids), "the orphaned workers to stop")
