# -*- test-case-name: tests.test_plugin -*-
"""
Plugins: someone else's streaming endpoints, mounted by C{twistd streamsvc}
with everything streamsvc's own resources get.

A plugin is a distribution that installs a module into the
C{streamsvc.plugins} dropin package, holding a L{Plugin} (or any other
provider of L{IStreamsvcPlugin}). At start-up the operator's C{[plugins]
enabled} picks which of the installed ones are served; each one's
C{[plugin:NAME]} section is parsed by its L{Setting}s; each is mounted at
its path, behind a L{PluginMount} (errors as JSON, metrics labelled by
plugin) and, unless public, the Bearer guard. The limits, timeouts, rate
limits, access log, CORS and drain are the Site's, so they apply to a
plugin's requests as to any other.

For a plugin author, the public names are L{Plugin}, L{Setting} and its
parsers, L{PluginContext} and L{PluginMetrics}; L{select_plugins} and
L{mount_plugins} are what the server calls.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any, Final

import attrs
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.error import UnsupportedMethod
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from twisted.web.server import NOT_DONE_YET
from zope.interface import alsoProvides, implementer

from streamsvc import config as _config
from streamsvc.config import PLUGIN_SECTION, Config, ConfigError
from streamsvc.errors import ErrorPage, HTTPError, render_error
from streamsvc.interfaces import IStreamingBodyResource, IStreamsvcPlugin

__all__ = [
    "REQUIRED",
    "Plugin",
    "PluginContext",
    "PluginMetrics",
    "Setting",
    "boolean",
    "choice",
    "integer",
    "path",
    "size",
    "text",
]

log = Logger()

#: The first path segments streamsvc serves itself (with or without the
#: optional parts enabled: turning C{/tasks} on later must not move a plugin).
OWN_PATHS: Final = frozenset(
    {"", "files", "uploads", "echo", "generate", "tasks", "healthz", "ui", "status", "metrics"}
)

#: The key every C{[plugin:NAME]} section may hold, besides the plugin's own:
#: where to mount it instead of its own path.
MOUNT_KEY: Final = "mount"

_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._~-]{0,127}", re.ASCII)


# --- settings ---------------------------------------------------------------


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


#: The default of a L{Setting} the operator must give.
REQUIRED: Final[Any] = _Required()


@attrs.frozen
class Setting:
    """
    One key of a plugin's C{[plugin:NAME]} section.

    @ivar parse: turns the text of the value into what the plugin gets, or
        raises C{ValueError} with the reason (the parsers below, or any
        function of your own).
    @ivar default: the value when the key is absent (not parsed), or
        L{REQUIRED}.
    @ivar secret: keep the value out of error messages (a password, a token).
    @ivar doc: what it means, for the plugin's README.
    """

    parse: Callable[[str], Any]
    default: Any = REQUIRED
    secret: bool = False
    doc: str = ""


#: C{yes}/C{no}, C{true}/C{false}, C{on}/C{off}, C{1}/C{0}.
boolean: Final = _config._parse_boolean
#: C{choice("ndjson", "sse")}: one of the options, in any case (given back in lower case).
choice: Final = _config._choice
#: C{integer(low, high)}: a whole number from C{low} to C{high}.
integer: Final = _config._integer


def path(value: str) -> str:
    """A filesystem path (relative paths are relative to the working directory)."""
    return _config._parse_path(value.strip())


def text(value: str) -> str:
    """Any text that is not empty, surrounding whitespace removed."""
    stripped = value.strip()
    if not stripped:
        raise ValueError("expected a value, not an empty one")
    return stripped


def size(maximum: int = _config.MAX_UPLOAD_BYTES_CAP) -> Callable[[str], int]:
    """C{size(16 * 1024**2)}: a size such as C{65536}, C{64KiB} or C{1MiB}, at most C{maximum} bytes."""
    return _config._size_at_most(maximum, f"{maximum} bytes", "65536 or 64KiB")


# --- the plugin ---------------------------------------------------------------


@implementer(IStreamsvcPlugin)
@attrs.frozen
class Plugin:
    """
    The usual L{IStreamsvcPlugin}: what a plugin's dropin module holds::

        # streamsvc/plugins/logtail.py, installed by your distribution
        from streamsvc.plugin import Plugin, Setting, path

        def _resource(context):
            from logtail.resource import LogsResource  # the real work, imported only when enabled
            return LogsResource(context)

        logs = Plugin(name="logs", path="logs", resource=_resource,
                      settings={"dir": Setting(path)},
                      description="follow the log files of a folder")

    @ivar resource: called with the L{PluginContext} at start-up; returns the
        C{IResource} mounted at C{path}.
    """

    name: str
    path: str
    resource: Callable[[PluginContext], IResource]
    settings: Mapping[str, Setting] = attrs.field(factory=dict, converter=lambda s: MappingProxyType(dict(s)))
    public: bool = False
    description: str = ""


# --- what a plugin gets -------------------------------------------------------


class PluginMetrics:
    """
    Metrics of one plugin's own, beside streamsvc's on C{/metrics}: every
    name is prefixed C{streamsvc_plugin_NAME_} so that no plugin can clash
    with another or with ours. (Its streams are counted already, in
    C{streamsvc_streams_total{kind="plugin:NAME"}} and the rest.) With
    C{[server] metrics = no} the metrics still work but are shown nowhere,
    so a plugin never needs to ask.

    Keep labels bounded (no paths, no client addresses): each label value
    is a series kept for the life of the process.
    """

    def __init__(self, name: str, registry: CollectorRegistry | None) -> None:
        self.prefix = "streamsvc_plugin_" + name.replace("-", "_") + "_"
        self.registry = registry if registry is not None else CollectorRegistry()

    def counter(self, name: str, documentation: str, labels: Iterable[str] = ()) -> Counter:
        """A C{prometheus_client.Counter} (its samples gain C{_total})."""
        return Counter(self.prefix + name, documentation, list(labels), registry=self.registry)

    def gauge(self, name: str, documentation: str, labels: Iterable[str] = ()) -> Gauge:
        """A C{prometheus_client.Gauge}; with several workers, the sum of those alive."""
        return Gauge(
            self.prefix + name, documentation, list(labels), registry=self.registry, multiprocess_mode="livesum"
        )

    def histogram(
        self, name: str, documentation: str, labels: Iterable[str] = (), buckets: Iterable[float] | None = None
    ) -> Histogram:
        """A C{prometheus_client.Histogram} (default buckets unless given)."""
        extra: dict[str, Any] = {} if buckets is None else {"buckets": tuple(buckets)}
        return Histogram(self.prefix + name, documentation, list(labels), registry=self.registry, **extra)


@attrs.frozen
class PluginContext:
    """
    All a plugin's factory gets, and all it should need.

    @ivar name: the plugin's name.
    @ivar settings: its C{[plugin:NAME]} section, parsed (defaults filled in).
    @ivar reactor: the reactor (listen, connect, spawn).
    @ivar clock: what to schedule timers on (C{callLater}): the reactor
        when serving, a C{twisted.internet.task.Clock} in tests. Producers
        take it as C{clock=}.
    @ivar metrics: the plugin's own L{PluginMetrics}.
    @ivar guard: wraps a resource in the Bearer guard of C{[auth] tokens}
        (for a public plugin with one private part).
    @ivar data_dir: a folder of the plugin's own, C{DATA_DIR/plugins/NAME},
        made at start-up.
    @ivar chunk_size: C{[stream] chunk_size}: how much to read at a time.
    @ivar run_in_thread: C{run_in_thread(function, *args)}, a Deferred of its
        result: blocking work (a database driver, a large directory, a
        C{stat} of a network filesystem) runs here, on a small thread pool
        of the plugin's own (L{PLUGIN_THREADS} threads), never on the
        reactor. On a C{twisted.internet.task.Clock} (tests) it runs the
        function at once.
    @ivar log: a C{Logger} whose lines name the plugin.
    """

    name: str
    settings: Mapping[str, Any]
    reactor: Any
    clock: IReactorTime
    metrics: PluginMetrics
    guard: Callable[[IResource], IResource]
    data_dir: str
    chunk_size: int
    run_in_thread: Callable[..., Deferred[Any]]
    log: Logger


# --- discovery and selection --------------------------------------------------


def discover() -> list[IStreamsvcPlugin]:
    """
    The plugins installed in the C{streamsvc.plugins} dropin package.

    A dropin that fails to import is logged by twisted.plugin and skipped,
    so one broken package cannot stop the others (if it is enabled, the
    start-up then fails: L{select_plugins}).
    """
    from twisted.plugin import getPlugins

    import streamsvc.plugins

    return list(getPlugins(IStreamsvcPlugin, streamsvc.plugins))


@attrs.frozen
class SelectedPlugin:
    """An enabled plugin, its section parsed, and where it goes."""

    plugin: IStreamsvcPlugin
    mount: str
    settings: Mapping[str, Any]

    @property
    def name(self) -> str:
        return str(self.plugin.name)


def select_plugins(config: Config, available: Iterable[IStreamsvcPlugin] | None = None) -> tuple[SelectedPlugin, ...]:
    """
    The plugins C{[plugins] enabled} names, from C{available} (by default
    those installed: L{discover}), their sections parsed and their paths
    checked; pure but for the discovery.

    @raise ConfigError: one line naming what to fix: an enabled name that is
        not installed, a section for a plugin that is not, a bad or missing
        value, a path of streamsvc's own, two plugins on one path.
    """
    plugins = config.plugins
    if not plugins.enabled and not plugins.sections:
        return ()  # not even a scan: nothing to find
    source = plugins.source
    by_name: dict[str, list[IStreamsvcPlugin]] = {}
    for plugin in discover() if available is None else available:
        by_name.setdefault(str(getattr(plugin, "name", "")), []).append(plugin)
    installed = ", ".join(sorted(n for n in by_name if n)) or "none"
    for name, _ in plugins.sections:
        if name not in by_name:
            raise ConfigError(
                f"{source}: [{PLUGIN_SECTION}{name}]: no plugin named {name!r} is installed (installed: {installed})"
            )
        if name not in plugins.enabled:
            log.info("[plugin:{name}] is there but {name} is not in [plugins] enabled: not served", name=name)
    selected: list[SelectedPlugin] = []
    mounted: dict[str, str] = {}
    for name in plugins.enabled:
        found = by_name.get(name, [])
        if not found:
            raise ConfigError(
                f"{source}: [plugins] enabled: no plugin named {name!r} is installed (installed: {installed}; "
                "a plugin is a distribution that adds a module to streamsvc.plugins)"
            )
        if len(found) > 1:
            modules = " and ".join(sorted(_module_of(p) for p in found))
            raise ConfigError(f"{source}: [plugins] enabled: two installed plugins are named {name!r} ({modules})")
        plugin = found[0]
        values = parse_settings(plugin, plugins.section(name), source)
        mount = values.pop(MOUNT_KEY, None) or _own_path(plugin, source)
        if mount in OWN_PATHS:
            raise ConfigError(
                f"{source}: [{PLUGIN_SECTION}{name}]: /{mount} is one of streamsvc's own paths; "
                f"mount it elsewhere with [{PLUGIN_SECTION}{name}] {MOUNT_KEY} = /another"
            )
        if mount in mounted:
            raise ConfigError(
                f"{source}: [plugins] enabled: {mounted[mount]!r} and {name!r} are both mounted at /{mount}; "
                f"move one, e.g. [{PLUGIN_SECTION}{name}] {MOUNT_KEY} = /another"
            )
        mounted[mount] = name
        selected.append(SelectedPlugin(plugin, mount, MappingProxyType(values)))
    return tuple(selected)


def parse_settings(plugin: IStreamsvcPlugin, raw: Mapping[str, str], source: str) -> dict[str, Any]:
    """
    The section C{raw} parsed by C{plugin.settings} (plus L{MOUNT_KEY}),
    defaults filled in; a ConfigError for an unknown key, a bad value (the
    value shown unless its setting is secret) or a required key missing.
    """
    name = plugin.name
    where = f"{source}: [{PLUGIN_SECTION}{name}]"
    settings: Mapping[str, Setting] = getattr(plugin, "settings", None) or {}
    if MOUNT_KEY in settings:
        raise ConfigError(
            f"{where}: the plugin ({_module_of(plugin)}) has a setting named {MOUNT_KEY!r}, "
            "which every section has already (where to mount it): it cannot be enabled until it is renamed"
        )
    known = ", ".join([*settings, MOUNT_KEY])
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key == MOUNT_KEY:
            try:
                values[key] = parse_segment(value)
            except ValueError as e:
                raise ConfigError(f"{where} {key} = {value!r}: {e}") from None
            continue
        setting = settings.get(key)
        if setting is None:
            raise ConfigError(f"{where} unknown key {key!r} (known: {known})")
        try:
            values[key] = setting.parse(value)
        except ValueError as e:
            shown = "" if setting.secret else f" = {value!r}"
            raise ConfigError(f"{where} {key}{shown}: {e}") from None
    for key, setting in settings.items():
        if key in values:
            continue
        if setting.default is REQUIRED:
            raise ConfigError(f"{where} {key} is required" + (f" ({setting.doc})" if setting.doc else ""))
        values[key] = setting.default
    return values


def parse_segment(value: str) -> str:
    """C{/logs} or C{logs}: one path segment, as a plugin is mounted at."""
    segment = value.strip().strip("/")
    if _SEGMENT.fullmatch(segment) is None:
        raise ValueError("expected one path segment such as /logs (letters, digits, and . _ ~ - after the first)")
    return segment


def _own_path(plugin: IStreamsvcPlugin, source: str) -> str:
    try:
        return parse_segment(str(plugin.path))
    except ValueError as e:
        raise ConfigError(
            f"{source}: [plugins] enabled: plugin {plugin.name!r} ({_module_of(plugin)}) has the path "
            f"{plugin.path!r}: {e}; mount it with [{PLUGIN_SECTION}{plugin.name}] {MOUNT_KEY} = /somewhere"
        ) from None


def _module_of(plugin: object) -> str:
    return getattr(plugin, "__module__", None) or type(plugin).__module__


# --- mounting -----------------------------------------------------------------


class PluginFailed(Exception):
    """A plugin's factory raised, or gave no resource. The message is the line shown."""


#: The threads of each plugin's C{run_in_thread} (started when first used).
PLUGIN_THREADS: Final = 4


def plugins_dir(config: Config) -> str:
    return os.path.join(config.server.data_dir, "plugins")


def prepare_plugins(config: Config, selected: Iterable[SelectedPlugin]) -> None:
    """Make each enabled plugin's C{DATA_DIR/plugins/NAME}; a ConfigError if impossible."""
    for chosen in selected:
        folder = os.path.join(plugins_dir(config), chosen.name)
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"data_dir {config.server.data_dir!r}: cannot create {folder!r}: {e.strerror}") from None


def plugin_kind(name: str) -> str:
    """The C{kind} label of a plugin's streams in the metrics and C{/status}."""
    return "plugin:" + name


def mount_plugins(
    root: Any,
    selected: Iterable[SelectedPlugin],
    *,
    config: Config,
    reactor: Any,
    clock: IReactorTime,
    registry: CollectorRegistry | None,
    guard: Callable[[IResource], IResource],
) -> list[Any]:
    """
    Build each plugin's resource and put it under C{root} at its mount,
    behind a L{PluginMount} and, unless public, C{guard}. Returns the
    thread pools made (to stop at shutdown).

    @raise PluginFailed: a factory raised or returned something else than a
        resource.
    """
    from twisted.internet.defer import maybeDeferred
    from twisted.internet.interfaces import IReactorThreads

    from streamsvc._threads import PoolRunner

    pools: list[Any] = []
    for chosen in selected:
        name = chosen.name
        pool: Callable[..., Deferred[Any]]
        if IReactorThreads.providedBy(reactor):
            pool = PoolRunner(reactor, PLUGIN_THREADS, f"streamsvc-plugin-{name}", stop_at_shutdown=True)
            pools.append(pool)
        else:  # a Clock, in tests (streamsvc.testing.PluginSite): run at once
            pool = maybeDeferred
        context = PluginContext(
            name=name,
            settings=chosen.settings,
            reactor=reactor,
            clock=clock,
            metrics=PluginMetrics(name, registry),
            guard=guard,
            data_dir=os.path.join(plugins_dir(config), name),
            chunk_size=config.stream.chunk_size,
            run_in_thread=pool,
            log=Logger(namespace=f"streamsvc.plugin.{name}"),
        )
        try:
            made = chosen.plugin.resource(context)
        except Exception as e:
            raise PluginFailed(f"plugin {name!r} failed to start: {type(e).__name__}: {e}{_where(e)}") from e
        if not IResource.providedBy(made):
            raise PluginFailed(f"plugin {name!r} failed to start: its resource() returned {made!r}, not an IResource")
        resource: IResource = PluginMount(made, name)
        if not getattr(chosen.plugin, "public", False):
            resource = guard(resource)
        root.putChild(chosen.mount.encode("ascii"), resource)
    return pools


def _where(error: BaseException) -> str:
    """C{" (at module.py:52)"}: where the plugin raised, for the one line that says so."""
    import traceback

    frames = traceback.extract_tb(error.__traceback__)
    if len(frames) < 2:
        return ""
    last = frames[-1]
    return f" (at {os.path.basename(last.filename)}:{last.lineno})"


@implementer(IResource)
class PluginMount:
    """
    A plugin's resource, and each child it gives, wrapped: its streams are
    counted as C{plugin:NAME}; an L{HTTPError} it raises is its answer
    (C{raise HTTPError(404, "no such log")}); anything else it raises is
    logged with its name and answered with a JSON 500 (or, once the body
    has started, an aborted connection), and the server carries on.
    """

    def __init__(self, wrapped: IResource, name: str) -> None:
        self._wrapped = wrapped
        self.name = name
        self.kind = plugin_kind(name)
        self.isLeaf = getattr(wrapped, "isLeaf", False)
        if IStreamingBodyResource.providedBy(wrapped):
            alsoProvides(self, IStreamingBodyResource)

    def __repr__(self) -> str:
        return f"<plugin {self.name} {self._wrapped!r}>"

    @property
    def max_body_bytes(self) -> int:
        return int(self._wrapped.max_body_bytes)  # type: ignore[attr-defined]

    def body_consumer(self, request: IRequest) -> Any:
        request.stream_kind = self.kind  # type: ignore[attr-defined]
        return self._wrapped.body_consumer(request)  # type: ignore[attr-defined]

    def putChild(self, path: bytes, child: IResource) -> None:
        self._wrapped.putChild(path, child)

    def getChildWithDefault(self, path: bytes, request: IRequest) -> IResource:
        request.stream_kind = self.kind  # type: ignore[attr-defined]
        try:
            child = self._wrapped.getChildWithDefault(path, request)
        except HTTPError as error:
            return ErrorPage(error)
        except Exception:
            log.failure("plugin {plugin} failed finding {uri}", plugin=self.name, uri=request.uri)
            return ErrorPage(HTTPError(500, "internal server error"))
        return PluginMount(child, self.name)

    def render(self, request: IRequest) -> bytes | int:
        request.stream_kind = self.kind  # type: ignore[attr-defined]
        try:
            return self._wrapped.render(request)
        except HTTPError as error:
            return render_error(request, error)
        except UnsupportedMethod as e:
            allowed = b", ".join(sorted(m for m in e.allowedMethods))
            return render_error(request, HTTPError(405, "method not allowed", {b"allow": allowed}))
        except Exception:
            log.failure("plugin {plugin} failed rendering {uri}", plugin=self.name, uri=request.uri)
            if request.startedWriting:  # type: ignore[attr-defined]
                request.channel.transport.abortConnection()  # type: ignore[attr-defined]
                return NOT_DONE_YET
            return render_error(request, HTTPError(500, "internal server error"))
