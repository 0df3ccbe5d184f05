# -*- test-case-name: tests.test_tap -*-
"""
What C{twistd streamsvc} runs: command-line options and C{makeService}.

Configuration errors are reported as a single line on standard error and a
non-zero exit — never a traceback, and not buried under the usage text.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python import usage

from streamsvc.app import build_site, prepare_data_dir, sweep_service
from streamsvc.limits import DrainService, raise_fd_limit
from streamsvc.plugin import PluginFailed, SelectedPlugin, prepare_plugins, select_plugins
from streamsvc.workers import WorkerPool
from streamsvc.config import (
    DEFAULT_CONFIG_NAME,
    Config,
    ConfigError,
    access_log_default,
    apply_overrides,
    check_workers,
    load_config,
)


log = Logger()


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Serve DATA_DIR/files over HTTP with flow control end to end. "
        f"Settings come from {DEFAULT_CONFIG_NAME} (INI) and these options, "
        "which override it."
    )
    optParameters = [
        [
            "config",
            "c",
            None,
            f"INI configuration file [default: ./{DEFAULT_CONFIG_NAME} if present]",
        ],
        [
            "data-dir",
            "d",
            None,
            "Data directory; files are served from DATA_DIR/files and it is "
            "created if missing [default: ./data, or [server] data_dir]",
        ],
        [
            "workers",
            "w",
            None,
            "Worker processes sharing the listening sockets: a number, or auto "
            "(one per CPU) [default: 1, or [server] workers]",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self.config: Config | None = None
        #: The enabled plugins, found and checked by L{resolve}.
        self.plugins: tuple[SelectedPlugin, ...] | None = None

    def opt_listen(self, description: str) -> None:
        """
        Listen on this Twisted server endpoint, e.g. tcp:8080:interface=127.0.0.1,
        unix:/run/streamsvc.sock, ssl:8443:privateKey=k.pem:certKey=c.pem
        (repeatable) [default: tcp:8080:interface=127.0.0.1, or [server] listen]
        """
        self["listen"].append(description)

    opt_l = opt_listen

    def resolve(self) -> Config:
        """The effective configuration; raises L{ConfigError}."""
        config = load_config(self["config"], required=self["config"] is not None)
        config = apply_overrides(
            config, listen=self["listen"] or None, data_dir=self["data-dir"], workers=self["workers"]
        )
        check_workers(config)
        config = access_log_default(config)
        self.plugins = select_plugins(config)
        prepare_data_dir(config)
        prepare_plugins(config, self.plugins)
        try:
            raise_fd_limit(config.limits.max_connections)
        except ValueError as error:
            raise ConfigError(f"[limits] {error}") from None
        return config

    def postOptions(self) -> None:
        try:
            self.config = self.resolve()
        except ConfigError as e:
            sys.stderr.write(f"streamsvc: error: {e}\n")
            raise SystemExit(2) from None


def makeService(options: Options, reactor: Any = None) -> IService:
    """
    One endpoint service per C{listen} entry, all serving the same Site;
    or, with C{[server] workers} above 1, the same endpoints held open
    for the worker processes that L{WorkerPool} starts.
    """
    if reactor is None:
        from twisted.internet import reactor
    config = options.config if options.config is not None else options.resolve()
    top = MultiService()
    if config.server.workers > 1:
        listeners = [
            _Listener(d, serverFromString(reactor, d), HeldForWorkers(), accept=False)
            for d in config.server.listen
        ]
        for listener in listeners:
            listener.setServiceParent(top)
        def ports() -> list[tuple[str, Any]]:
            return [(listener.description, listener.port) for listener in listeners]

        WorkerPool(config, ports, reactor).setServiceParent(top)
        return top
    try:
        site = build_site(config, reactor=reactor, plugins=options.plugins)
    except PluginFailed as e:
        # One line (with where the plugin raised), as for any start-up error.
        (sys.__stderr__ or sys.stderr).write(f"streamsvc: error: {e}\n")
        raise SystemExit(1) from None
    DrainService(site, reactor, config.server.shutdown_timeout).setServiceParent(top)
    sweep_service(site).setServiceParent(top)
    for description in config.server.listen:
        _Listener(description, serverFromString(reactor, description), site).setServiceParent(top)
    return top


class HeldForWorkers(Factory):
    """
    The factory of a port the supervisor holds open for its workers: it
    never accepts there (the log then reads "HeldForWorkers starting on
    8080").
    """

    noisy = False


class ListenError(Exception):
    """An endpoint could not be listened on. The message is the line shown."""


class _Listener(StreamServerEndpointService):
    """
    Listens on one endpoint, and fails start-up with one line when it cannot.

    twistd would print a traceback for a port already in use or a socket path
    it may not create; the operator needs the endpoint and the reason. So the
    line goes to standard error (the real one: twistd has redirected
    C{sys.stderr} into its log by now) and the log, and the failure leaves as
    an ordinary exception, so that twistd still removes its pidfile and, when
    daemonizing, tells the waiting parent (which then exits 1). Only the
    interpreter's traceback for it is silenced.
    """

    def __init__(self, description: str, endpoint: Any, factory: Any, *, accept: bool = True) -> None:
        super().__init__(endpoint, factory)
        self.description = description
        self.port: Any = None
        self._accept = accept
        self._raiseSynchronously = True

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
            self._waitingForPort.addCallback(self._listening)
        except Exception as e:
            message = f"cannot listen on {self.description!r}: {_reason(e)}"
            log.critical("{message}", message=message)
            (sys.__stderr__ or sys.stderr).write(f"streamsvc: error: {message}\n")
            sys.excepthook = _without_traceback_for(ListenError, sys.excepthook)
            raise ListenError(message) from None

    def _listening(self, port: Any) -> Any:
        """
        Keep the port; one held for worker processes (C{accept=False}) is
        never read here: its connections wait for a worker's accept.
        """
        self.port = port
        if not self._accept:
            port.stopReading()
        return port


def _without_traceback_for(kind: type[BaseException], previous: Any) -> Any:
    def excepthook(type_: type[BaseException], value: BaseException, tb: Any) -> None:
        if not issubclass(type_, kind):
            previous(type_, value, tb)

    return excepthook


def _reason(error: Exception) -> str:
    """The useful part of a listen error: C{[Errno 98] Address already in use}."""
    if isinstance(error, CannotListenError) and error.socketError is not None:
        return str(error.socketError)
    return str(error) or type(error).__name__
