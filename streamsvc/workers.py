# -*- test-case-name: tests.test_workers -*-
"""
C{[server] workers = N}: one supervising process and N worker processes
that share its listening sockets.

One twistd process is one core. With C{workers} above 1 the process that
twistd starts (the I{supervisor}) opens every C{listen} endpoint as it
always does, so a port in use is still one line at start-up and
privileged ports are bound before twistd drops privileges, but it never
accepts on them. It spawns N copies of C{python -m streamsvc.workers},
each inheriting the listening sockets, and each worker adopts them
(C{reactor.adoptStreamPort}, Twisted's documented pattern for sharing a
socket between processes): the kernel hands every new connection to one
worker waiting in C{accept}. A worker is the ordinary server (the same
Site, limits, drain), configured by the supervisor's resolved L{Config},
sent over its standard input (so tokens never appear in C{ps}).

What the supervisor does besides:
  - restarts a worker that exits, after 1 s, doubling to 30 s while
    workers keep dying within 10 s of starting (a crash loop must not
    spin);
  - on SIGTERM (or SIGINT) sends SIGTERM to every worker, and each
    drains as a single server does (C{shutdown_timeout}); a second
    signal is passed on, and the workers then stop at once. The workers
    run in their own process group, so a terminal's Ctrl-C reaches them
    only through the supervisor, once;
  - relays the live task events (L{EventRelay}): every worker's events
    are numbered in one sequence and reach the subscribers of every
    worker, so C{Last-Event-ID} means the same on all of them;
  - logs for them: each worker sends its log events (as JSON) up its
    standard output, and the supervisor logs them with the system
    C{worker-N}, so twistd's one log says which worker did what;
  - gives their metrics one folder (prometheus_client's multiprocess
    mode, C{PROMETHEUS_MULTIPROC_DIR}): any worker answers C{/metrics}
    with the sum over all of them.

A worker whose supervisor disappears (killed with SIGKILL) sees its
channel close and stops (draining), rather than serving on as an orphan.

State that stays per worker: the brief caches, the rate limit buckets
(C{client_rate_limit} is per worker, so a client may get up to N times
it), the connection limits (C{max_connections} and
C{max_connections_per_client} apply per worker), the events history
(the same events in each, numbered alike). The task store is one SQLite
file, shared safely between processes (WAL, a busy timeout of 5 s).
"""

from __future__ import annotations

import json
import os
import pickle
import secrets
import shutil
import signal
import socket
import sys
import tempfile
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet import protocol
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone
from twisted.logger import Logger, eventAsJSON, eventFromJSON, globalLogPublisher
from twisted.protocols.basic import NetstringReceiver

from streamsvc.config import Config

log = Logger()

#: Seconds a worker must live for its exit to count as a crash to be
#: restarted at once rather than as part of a crash loop.
STEADY = 10.0
FIRST_DELAY = 1.0
MAX_DELAY = 30.0
#: Seconds past C{shutdown_timeout} before a worker that has not exited
#: after SIGTERM is killed.
KILL_GRACE = 10.0
#: The exit status of a worker that cannot build its Site (a plugin's
#: factory raised: sysexits' EX_CONFIG). Restarting it would fail the same
#: way, so the supervisor stops instead, with the worker's one line.
CANNOT_START = 78
#: The longest log record (or line of standard error) kept from a worker.
MAX_RECORD = 256 * 1024
#: A worker's JSON log records are separated by this (twisted.logger's).
RECORD_SEPARATOR = b"\x1e"
#: File descriptor of the event channel in a worker; the sockets follow.
CHANNEL_FD = 3


@attrs.frozen
class Inherited:
    """A listening socket a worker adopts: its descriptor there, family and endpoint."""

    fd: int
    family: int
    description: str


@attrs.frozen
class WorkerStart:
    """What the supervisor sends a worker on its standard input."""

    config: Config
    index: int
    sockets: tuple[Inherited, ...]
    channel_fd: int = CHANNEL_FD


def restart_delay(previous: float, lived: float) -> float:
    """
    Seconds to wait before restarting a worker that exited after C{lived}
    seconds, when the last restart waited C{previous} (0 for none yet).
    """
    if lived >= STEADY:
        return FIRST_DELAY
    return min(MAX_DELAY, max(FIRST_DELAY, previous * 2))


# --------------------------------------------------------------- supervisor


class WorkerPool(Service):
    """
    Spawns and supervises the workers (see the module docstring).

    @param ports: returns C{(description, port)} for every listening port
        once they are bound (the C{listen} services are siblings started
        first); a port has C{fileno()} and C{socket}.
    @param spawn: C{reactor.spawnProcess} (tests pass a fake).
    """

    def __init__(
        self,
        config: Config,
        ports: Any,
        reactor: Any,
        *,
        spawn: Any = None,
        executable: str = sys.executable,
    ) -> None:
        if config.auth.link_secret is None:
            # One secret for all the workers, so a link made by one is good on all.
            config = attrs.evolve(config, auth=attrs.evolve(config.auth, link_secret=secrets.token_hex(32)))
        self.config = config
        self._ports = ports
        self._reactor = reactor
        self._spawn = spawn
        self._executable = executable
        self.workers: dict[int, WorkerProcess] = {}
        self._delays: dict[int, float] = {}
        self._restarts: dict[int, Any] = {}
        self._given_up = False  # a worker could not start: stopping (L{_cannot_start})
        self._stopping = False
        self._ended: Deferred[None] | None = None
        self._metrics_dir: str | None = None
        self.relay = EventRelay()

    @property
    def size(self) -> int:
        return self.config.server.workers

    def startService(self) -> None:
        super().startService()
        if self.config.server.metrics:
            self._metrics_dir = tempfile.mkdtemp(prefix="streamsvc-metrics-")
        log.info("Starting {n} workers", n=self.size)
        for index in range(1, self.size + 1):
            self._start(index)

    def _start(self, index: int) -> None:
        self._restarts.pop(index, None)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            child_fds: dict[int, Any] = {0: "w", 1: "r", 2: "r", CHANNEL_FD: theirs.fileno()}
            inherited = []
            for n, (description, port) in enumerate(self._ports(), start=CHANNEL_FD + 1):
                child_fds[n] = port.fileno()
                inherited.append(Inherited(n, _family(port), description))
            start = WorkerStart(self.config, index, tuple(inherited))
            process = WorkerProcess(self, index, start, self._reactor.seconds())
            env = dict(os.environ)
            env.pop("PROMETHEUS_MULTIPROC_DIR", None)
            if self._metrics_dir is not None:
                env["PROMETHEUS_MULTIPROC_DIR"] = self._metrics_dir
            spawn = self._spawn if self._spawn is not None else self._reactor.spawnProcess
            spawn(
                process,
                self._executable,
                [self._executable, "-m", "streamsvc.workers"],
                env=env,
                childFDs=child_fds,
            )
            channel = self._reactor.adoptStreamConnection(
                ours.fileno(), socket.AF_UNIX, _ChannelFactory(self.relay, index)
            )
            process.channel = channel
        finally:
            ours.close()  # the adopted connection holds its own duplicate
            theirs.close()  # the worker has it now
        self.workers[index] = process

    def ended(self, process: WorkerProcess, status: int | None, signal_: int | None) -> None:
        """A worker's process ended: restart it, or count it out when stopping."""
        index = process.index
        if self.workers.get(index) is process:
            del self.workers[index]
        self.relay.forget(index)
        if self._metrics_dir is not None and process.pid is not None:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(process.pid, self._metrics_dir)
        how = f"signal {signal_}" if signal_ else f"status {status}"
        if status == CANNOT_START and not self._stopping:
            self._cannot_start(process)
            return
        if self._stopping:
            log.info("worker {index} (pid {pid}) stopped ({how})", index=index, pid=process.pid, how=how)
            if not self.workers and self._ended is not None and not self._ended.called:
                self._ended.callback(None)
            return
        lived = self._reactor.seconds() - process.started
        delay = restart_delay(self._delays.get(index, 0.0), lived)
        self._delays[index] = delay
        log.error(
            "worker {index} (pid {pid}) exited ({how}) after {lived:.1f} s; restarting it in {delay:.0f} s",
            index=index, pid=process.pid, how=how, lived=lived, delay=delay,
        )
        self._restarts[index] = self._reactor.callLater(delay, self._start, index)

    def _cannot_start(self, process: WorkerProcess) -> None:
        """
        A worker could not build its Site: say why in one line (the
        worker's own, on standard error too, as any start-up error) and
        stop, with a non-zero exit status rather than a crash loop.
        """
        import atexit

        if self._given_up:
            return  # another worker said so already
        self._given_up = True
        line = process.last_error or f"worker {process.index} could not start"
        log.critical("{line}; stopping", line=line)
        (sys.__stderr__ or sys.stderr).write(f"{line}\n")
        # twistd exits 0 once its reactor stops; this exit status is set
        # after twistd's own clean-up (the pidfile) has run.
        atexit.register(os._exit, 1)
        if self._reactor.running:
            self._reactor.stop()

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        self._stopping = True
        for call in self._restarts.values():
            if call.active():
                call.cancel()
        self._restarts.clear()
        if not self.workers:
            self._cleanup()
            return None
        self._ended = Deferred()
        self.signal_all(signal.SIGTERM)
        from streamsvc.limits import on_second_signal

        restore = on_second_signal(
            lambda: self._reactor.callFromThread(self.signal_all, signal.SIGTERM)
        )
        killer = self._reactor.callLater(
            self.config.server.shutdown_timeout + KILL_GRACE, self.signal_all, signal.SIGKILL
        )

        def done(_: None) -> None:
            restore()
            if killer.active():
                killer.cancel()
            self._cleanup()
            # The workers drained: the orderly exit (status 0), as a single
            # server's DrainService makes it.
            if getattr(self._reactor, "_exitSignal", None) is not None:
                self._reactor._exitSignal = None

        return self._ended.addCallback(done)

    def signal_all(self, number: int) -> None:
        for process in list(self.workers.values()):
            process.signal(number)

    def _cleanup(self) -> None:
        folder, self._metrics_dir = self._metrics_dir, None
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


def _family(port: Any) -> int:
    return int(port.socket.family)


class WorkerProcess(protocol.ProcessProtocol):
    """One worker, as the supervisor sees it: its start, its output, its end."""

    def __init__(self, pool: WorkerPool, index: int, start: WorkerStart, started: float) -> None:
        self.pool = pool
        self.index = index
        self.start = start
        self.started = started
        self.pid: int | None = None
        self.channel: Any = None
        self._out = _Records(RECORD_SEPARATOR, self._record)
        self._err = _Records(b"\n", self._stderr_line)
        self._system = f"worker-{index}"
        #: The last line it wrote to standard error (what L{CANNOT_START} reports).
        self.last_error: str | None = None

    def connectionMade(self) -> None:
        self.pid = self.transport.pid
        self.transport.write(pickle.dumps(self.start, protocol=pickle.HIGHEST_PROTOCOL))
        self.transport.closeStdin()

    def signal(self, number: int) -> None:
        try:
            self.transport.signalProcess(number)
        except Exception:  # already gone: processEnded follows
            pass

    def outReceived(self, data: bytes) -> None:
        self._out.feed(data)

    def errReceived(self, data: bytes) -> None:
        self._err.feed(data)

    def _record(self, record: bytes) -> None:
        try:
            event = eventFromJSON(record.decode("utf-8", "replace"))
        except ValueError:
            self._stderr_line(record)
            return
        event["log_system"] = self._system
        globalLogPublisher(event)

    def _stderr_line(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace").rstrip()
        if text:
            self.last_error = text
            log.error("{text}", text=text, log_system=self._system)

    def processEnded(self, reason: Any) -> None:
        self._out.end()
        self._err.end()
        value = reason.value
        status = 0 if isinstance(value, ProcessDone) else getattr(value, "exitCode", None)
        self.pool.ended(self, status, getattr(value, "signal", None))


class _Records:
    """Splits a stream into records; a record longer than L{MAX_RECORD} is cut."""

    def __init__(self, separator: bytes, emit: Any) -> None:
        self._separator = separator
        self._emit = emit
        self._buffer = b""

    def feed(self, data: bytes) -> None:
        *records, self._buffer = (self._buffer + data).split(self._separator)
        for record in records:
            if record.strip():
                self._emit(record[:MAX_RECORD])
        if len(self._buffer) > MAX_RECORD:
            self._emit(self._buffer[:MAX_RECORD])
            self._buffer = b""

    def end(self) -> None:
        if self._buffer.strip():
            self._emit(self._buffer)
        self._buffer = b""


# ------------------------------------------------------------ event relay


class EventRelay:
    """
    The supervisor's end of the workers' event channels: numbers every
    event a worker publishes, and sends it to every worker (the one that
    published it too, so all number it alike).
    """

    def __init__(self) -> None:
        self.last_id = 0
        self._channels: dict[int, EventChannel] = {}

    def joined(self, index: int, channel: EventChannel) -> None:
        self._channels[index] = channel
        channel.send({"sync": self.last_id})

    def forget(self, index: int) -> None:
        self._channels.pop(index, None)

    def publish(self, kind: str, payload: str) -> None:
        self.last_id += 1
        message = {"id": self.last_id, "kind": kind, "data": payload}
        for channel in list(self._channels.values()):
            channel.send(message)


class EventChannel(NetstringReceiver):
    """
    Either end of a worker's event channel: netstrings of JSON objects.
    Worker to supervisor: C{{"kind", "data"}}, an event to number.
    Supervisor to worker: C{{"sync": id}} once, then C{{"id", "kind", "data"}}.
    """

    MAX_LENGTH = 64 * 1024 * 1024

    def __init__(self, on_message: Any, on_lost: Any = None, on_made: Any = None) -> None:
        self._on_message = on_message
        self._on_lost = on_lost
        self._on_made = on_made

    def connectionMade(self) -> None:
        if self._on_made is not None:
            self._on_made(self)

    def send(self, message: dict[str, Any]) -> None:
        self.sendString(json.dumps(message, separators=(",", ":")).encode("utf-8"))

    def stringReceived(self, string: bytes) -> None:
        try:
            message = json.loads(string)
        except ValueError:
            log.error("bad message on the event channel: {start!r}", start=string[:80])
            return
        self._on_message(message)

    def connectionLost(self, reason: Any = None) -> None:
        if self._on_lost is not None:
            self._on_lost()


class _ChannelFactory(protocol.Factory):
    def __init__(self, relay: EventRelay, index: int) -> None:
        self._relay = relay
        self._index = index

    def buildProtocol(self, addr: Any) -> EventChannel:
        relay, index = self._relay, self._index

        def on_message(message: dict[str, Any]) -> None:
            kind, data = message.get("kind"), message.get("data")
            if isinstance(kind, str) and isinstance(data, str):
                relay.publish(kind, data)

        channel = EventChannel(
            on_message,
            on_lost=lambda: relay.forget(index),
            on_made=lambda made: relay.joined(index, made),
        )
        channel.factory = self
        return channel


def hub_side(hub: Any) -> Any:
    """
    The worker's end of the channel for the event hub C{hub}: the hub's
    events go up to be numbered, and come back through C{hub.deliver}.
    """

    def on_message(message: dict[str, Any]) -> None:
        if "sync" in message:
            hub.advance_to(int(message["sync"]))
        elif "id" in message:
            hub.deliver(int(message["id"]), str(message["kind"]), str(message["data"]).encode("utf-8"))

    return on_message


# ----------------------------------------------------------------- worker


def adopt(reactor: Any, inherited: Inherited, site: Any) -> Any:
    """
    Listen on an inherited socket with C{site}. An C{ssl:} endpoint's
    TLS is put back on top: adoptStreamPort gives a plain TCP port, and
    the endpoint (parsed again here from its description, certificates
    and all) keeps its context factory in C{_sslContextFactory}, the one
    private name this module reads.
    """
    from twisted.internet.endpoints import serverFromString

    factory = site
    endpoint = serverFromString(reactor, inherited.description)
    context = getattr(endpoint, "_sslContextFactory", None)
    if context is not None:
        from twisted.protocols.tls import TLSMemoryBIOFactory

        factory = TLSMemoryBIOFactory(context, False, site)
    port = reactor.adoptStreamPort(inherited.fd, inherited.family, factory)
    os.close(inherited.fd)  # adoptStreamPort works on a duplicate
    return port


class _Adopted(Service):
    """A listening socket inherited from the supervisor, as a service."""

    def __init__(self, reactor: Any, inherited: Inherited, site: Any) -> None:
        self._reactor = reactor
        self._inherited = inherited
        self._site = site
        self._port: Any = None

    def startService(self) -> None:
        super().startService()
        self._port = adopt(self._reactor, self._inherited, self._site)

    def stopService(self) -> Any:
        super().stopService()
        port, self._port = self._port, None
        return port.stopListening() if port is not None else None


def worker_service(start: WorkerStart, reactor: Any) -> Any:
    """The worker's services: its Site's drain, and a listener per inherited socket."""
    from twisted.application.service import MultiService

    from streamsvc.app import build_site, sweep_service
    from streamsvc.limits import DrainService

    site = build_site(start.config, reactor=reactor)
    top = MultiService()
    DrainService(site, reactor, start.config.server.shutdown_timeout).setServiceParent(top)
    sweep_service(site).setServiceParent(top)
    for inherited in start.sockets:
        _Adopted(reactor, inherited, site).setServiceParent(top)
    top.site = site  # type: ignore[attr-defined]
    return top


def _stop_reactor(reactor: Any) -> None:
    if reactor.running:
        log.info("the supervisor is gone: stopping")
        reactor.stop()


def worker_main() -> int:
    """C{python -m streamsvc.workers}: what the supervisor spawns."""
    # Signals come from the supervisor only (a terminal's Ctrl-C would
    # otherwise reach each worker too, and count as a second signal).
    os.setpgrp()
    start: WorkerStart = pickle.load(sys.stdin.buffer)
    out = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    from twisted.logger import FileLogObserver, globalLogBeginner

    globalLogBeginner.beginLoggingTo(
        [FileLogObserver(out, lambda event: eventAsJSON(event) + "\x1e")],
        redirectStandardIO=False,
    )
    from twisted.internet import reactor

    from streamsvc.plugin import PluginFailed

    try:
        top = worker_service(start, reactor)
    except PluginFailed as e:
        sys.stderr.write(f"streamsvc: error: {e}\n")
        sys.stderr.flush()
        return CANNOT_START
    events = getattr(top.site, "events", None)
    on_message = hub_side(events) if events is not None else (lambda message: None)
    channel = EventChannel(on_message, lambda: _stop_reactor(reactor))
    factory = protocol.Factory.forProtocol(lambda: channel)
    reactor.adoptStreamConnection(start.channel_fd, socket.AF_UNIX, factory)
    os.close(start.channel_fd)
    if events is not None:
        events.relay = lambda kind, payload: channel.send(
            {"kind": kind, "data": payload.decode("utf-8")}
        )
    top.startService()
    reactor.addSystemEventTrigger("before", "shutdown", top.stopService)
    log.info("worker {index} (pid {pid}) serving", index=start.index, pid=os.getpid())
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(worker_main())
