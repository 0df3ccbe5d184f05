# -*- test-case-name: tests.test_app -*-
"""
Builds the resource tree and the Site from a L{Config}.

No I/O happens at import time; L{prepare_data_dir} is the one step that
touches the disk, and it runs at start-up, before anything listens.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
from collections.abc import Sequence
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import Site

from streamsvc.accesslog import AccessLog, AppendLines
from streamsvc.auth import BearerGuard, TokenSet
from streamsvc.metrics import Metrics, MetricsResource
from streamsvc.config import TWISTD_LOG, Config, ConfigError, check_file_store
from streamsvc.cors import CORSPolicy, CORSResource
from streamsvc.pages import UIResource
from streamsvc.plugin import SelectedPlugin, mount_plugins, plugin_kind, select_plugins
from streamsvc.producers import default_clock
from streamsvc.signing import LinkSigner
from streamsvc.status import StatusResource, StreamsFeed
from streamsvc.body import BodyRequest
from streamsvc.limits import ConnectionLimits, GuardedChannel
from streamsvc.echo import EchoResource
from streamsvc.errors import ErrorPage, HTTPError, JSONResource, not_found
from streamsvc.files import FilesResource
from streamsvc.generate import GenerateResource
from streamsvc.stages import ClientBuckets
from streamsvc.files.disk_upload import RunBlocking, remove_stale_uploads
from streamsvc.files.local import LocalFileStore
from streamsvc.files.pending import PendingUploads
from streamsvc.files.resumable import ResumableUploads, UploadsResource
from streamsvc.files.tus import TusUploads
from streamsvc.files.upload import Uploads
from streamsvc.interfaces import IFileStore, ITaskStore
from streamsvc.tasks.events import EventHub
from streamsvc.tasks.importer import ImportResource
from streamsvc.tasks.resource import EventsResource, TasksResource
from streamsvc.tasks.sqlite import SQLiteTaskStore, prepare_database
from streamsvc.tasks.store import SchemaTooNew, StoreUnavailable


#: The link secret of this process when C{[auth] link_secret} is unset (the
#: supervisor of several workers makes one and hands it to all of them).
_PROCESS_LINK_SECRET = secrets.token_bytes(32)


def link_secret(config: Config) -> bytes:
    """The key of signed links: C{[auth] link_secret}, else this process's random one."""
    secret = config.auth.link_secret
    return secret.encode("utf-8") if secret is not None else _PROCESS_LINK_SECRET


def files_dir(config: Config) -> str:
    return os.path.join(config.server.data_dir, "files")


def tasks_path(config: Config) -> str:
    return os.path.join(config.server.data_dir, "tasks.sqlite3")


def open_task_store(config: Config, reactor: IReactorTime | None = None) -> ITaskStore:
    """
    The task store C{[tasks] store} names (connections made when first
    used): SQLite at C{DATA_DIR/tasks.sqlite3}, or PostgreSQL at C{dsn}.
    The one place a store is chosen; nothing else knows which it is.
    """
    tasks = config.tasks
    if tasks.store == "postgresql":
        from streamsvc.tasks.postgres import PostgresTaskStore

        assert tasks.dsn is not None  # load_config saw to it
        return PostgresTaskStore(
            tasks.dsn, reactor=reactor, pool_size=tasks.pool_size, statement_timeout=tasks.statement_timeout,
            events_kept=config.events.history,
        )
    return SQLiteTaskStore(tasks_path(config), reactor=reactor, readers=config.tasks.readers)


def open_file_store(
    config: Config, *, clock: IReactorTime | None = None, run_blocking: RunBlocking | None = None
) -> IFileStore:
    """
    The file store C{[files] store} names: C{DATA_DIR/files}, or the bucket
    of C{[s3]} (requests made over a pool of persistent connections). The
    one place a file store is chosen; nothing else knows which it is.
    """
    if config.files.store == "s3":
        from streamsvc.files.s3 import S3FileStore

        return S3FileStore(
            _s3_client(config, clock), prefix=config.s3.prefix, part_size=config.s3.part_size,
            timeout=config.s3.timeout, clock=clock,
        )
    return LocalFileStore(files_dir(config), largest=config.stream.chunk_size, clock=clock, run_blocking=run_blocking)


def uploads_dir(config: Config) -> str:
    """Where resumable uploads wait to be complete: C{DATA_DIR/uploads} (never under C{files/})."""
    return os.path.join(config.server.data_dir, "uploads")


def open_pending_uploads(
    config: Config, store: IFileStore, *, clock: IReactorTime | None = None, run_blocking: RunBlocking | None = None,
    metrics: Metrics | None = None,
) -> PendingUploads:
    """The pending resumable uploads of C{DATA_DIR/uploads}, installed into C{store} once complete."""
    return PendingUploads(
        uploads_dir(config), store, run_blocking=run_blocking, clock=clock if clock is not None else default_clock(),
        expiry=config.files.upload_expiry, max_pending=config.files.max_pending_uploads,
        max_bytes=config.limits.max_upload_bytes, events=metrics,
    )


#: Seconds between two sweeps of the expired resumable uploads (at most; less for a short expiry).
SWEEP_INTERVAL = 600


def sweep_service(site: Site) -> Any:
    """
    The service that removes expired resumable uploads while the server
    runs, every L{SWEEP_INTERVAL} seconds at most (start-up swept already:
    L{prepare_data_dir}).
    """
    from twisted.application.service import Service
    from twisted.internet.task import LoopingCall

    pending = site.pending_uploads  # type: ignore[attr-defined]
    interval = min(SWEEP_INTERVAL, max(1, pending.expiry // 10))

    def sweep() -> None:
        # Not returned: stopping the server does not wait for a sweep in a thread.
        pending.sweep().addErrback(lambda failure: log.failure("sweeping expired uploads failed", failure))

    class Sweeper(Service):
        def startService(self) -> None:
            super().startService()
            self.loop = LoopingCall(sweep)
            self.loop.clock = site.reactor
            self.loop.start(interval, now=False)

        def stopService(self) -> Any:
            if self.loop.running:
                self.loop.stop()
            return super().stopService()

    return Sweeper()


#: Connections kept open to the object store, per process.
S3_CONNECTIONS = 64


def _s3_client(config: Config, reactor: Any = None) -> Any:
    import treq
    from twisted.web.client import Agent, HTTPConnectionPool

    from streamsvc.files.s3client import S3Client

    if reactor is None:
        from twisted.internet import reactor
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = S3_CONNECTIONS
    pool._factory = _quiet_client_factory()  # no "Starting factory" log line per store connection
    s3 = config.s3
    assert s3.bucket is not None and s3.access_key is not None and s3.secret_key is not None  # check_file_store
    return S3Client(
        treq.client.HTTPClient(Agent(reactor, pool=pool)), endpoint=s3.endpoint, bucket=s3.bucket,
        access_key=s3.access_key, secret_key=s3.secret_key, region=s3.region, addressing=s3.addressing,
        timeout=s3.timeout,
    )


def _quiet_client_factory() -> Any:
    from twisted.web.client import _HTTP11ClientFactory

    class QuietClientFactory(_HTTP11ClientFactory):  # type: ignore[misc]
        noisy = False

    return QuietClientFactory


def prepare_file_store(config: Config) -> None:
    """
    At start-up, before anything listens: the bucket of C{[files] store =
    s3} is there and ours to use; a ConfigError (one line: the endpoint,
    the bucket, why; never the secret) if not, or if the extra is missing.
    """
    if config.files.store != "s3":
        return
    from streamsvc.files import s3client

    check_file_store(config)
    try:
        client = _s3_client(config)
        s3client.check_bucket_blocking(client)
    except s3client.SignerMissing as e:
        raise ConfigError(str(e)) from None
    except s3client.S3Unavailable as e:
        raise ConfigError(str(e)) from None
    except s3client.S3Error as e:
        raise ConfigError(f"[s3] {e.message}") from None


def prepare_task_store(config: Config) -> None:
    """
    Create or migrate the task database at start-up, before anything
    listens; a ConfigError (one line: which file, or which host:port and
    why, never a password) if it cannot be used.
    """
    if config.tasks.store == "postgresql":
        _prepare_postgres(config)
        return
    path = tasks_path(config)
    try:
        version = prepare_database(path)
    except (sqlite3.Error, SchemaTooNew) as e:
        raise ConfigError(f"data_dir {config.server.data_dir!r}: cannot open {path!r}: {e}") from None
    if version == 0:
        log.info("created the tasks database {path}", path=path)


def _prepare_postgres(config: Config) -> None:
    from streamsvc.tasks import postgres

    dsn = config.tasks.dsn
    assert dsn is not None
    try:
        postgres.require_driver()
        where = postgres.describe(dsn)
        version = postgres.prepare_database(dsn, config.tasks.statement_timeout)
    except postgres.DriverMissing as e:
        raise ConfigError(str(e)) from None
    except ValueError as e:
        raise ConfigError(f"[tasks] dsn: {e}") from None
    except (StoreUnavailable, SchemaTooNew) as e:
        raise ConfigError(str(e)) from None
    if version == 0:
        log.info("created the task tables in {where}", where=where)


def access_log_path(config: Config) -> str | None:
    """The file the access lines go to, or None (twistd's log, or no log at all)."""
    path = config.server.access_log_file
    if path == TWISTD_LOG or config.server.access_log == "off":
        return None
    return path


def prepare_data_dir(config: Config) -> None:
    """Create C{DATA_DIR/files} if missing; a ConfigError if that is impossible."""
    path = files_dir(config)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise ConfigError(
            f"data_dir {config.server.data_dir!r}: cannot create {path!r}: {e.strerror}"
        ) from None
    if not os.access(path, os.R_OK | os.X_OK):
        raise ConfigError(f"data_dir {config.server.data_dir!r}: {path!r} is not readable")
    access = access_log_path(config)
    if access is not None:
        # Opened here once, so a path that cannot be written is one line at
        # start-up, not a traceback from build_site.
        try:
            os.makedirs(os.path.dirname(os.path.abspath(access)), exist_ok=True)
            AppendLines(access).close()
        except OSError as e:
            raise ConfigError(f"access_log_file {access!r}: cannot open it: {e.strerror}") from None
    if config.tasks.enabled:
        prepare_task_store(config)
    prepare_file_store(config)
    removed = remove_stale_uploads(path)
    if removed:
        log.info("removed {count} unfinished upload(s) left by a stopped process", count=removed)
    try:
        expired = open_pending_uploads(config, LocalFileStore(path)).prepare()
    except OSError as e:
        raise ConfigError(f"data_dir {config.server.data_dir!r}: cannot prepare {uploads_dir(config)!r}: {e.strerror}") from None
    if expired:
        log.info("removed {count} expired resumable upload(s)", count=expired)


log = Logger()

_HEALTHY = b'{"status": "ok"}\n'


class Health(JSONResource):
    """C{GET /healthz}: the process is up and serving."""

    isLeaf = True

    def render_GET(self, request: IRequest) -> bytes:
        if request.postpath:
            raise HTTPError(404, "not found")  # /healthz/anything
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return _HEALTHY

    def render_HEAD(self, request: IRequest) -> bytes:
        body = self.render_GET(request)
        request.setHeader(b"content-length", b"%d" % (len(body),))
        return b""


class Root(JSONResource):
    """C{/}: an index of the endpoints; unknown children are JSON 404s."""

    def getChild(self, path: bytes, request: IRequest) -> IResource:
        if path == b"" and not request.postpath:
            return self  # "/" itself
        return not_found()

    def render_GET(self, request: IRequest) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        names = sorted(name.decode("ascii") for name in self.children)
        return json.dumps({"endpoints": [f"/{n}" for n in names]}).encode("ascii") + b"\n"

    def render_HEAD(self, request: IRequest) -> bytes:
        body = self.render_GET(request)
        request.setHeader(b"content-length", b"%d" % (len(body),))
        return b""


def build_resource(
    config: Config,
    *,
    clock: IReactorTime | None = None,
    run_blocking: RunBlocking | None = None,
    metrics: Metrics | None = None,
    task_store: ITaskStore | None = None,
    events: EventHub | None = None,
    status_feed: StreamsFeed | None = None,
    plugins: Sequence[SelectedPlugin] = (),
    reactor: Any = None,
) -> Resource:
    """
    The whole tree: C{/files}, C{/echo}, C{/generate}, C{/tasks}, C{/healthz},
    C{/metrics}, and the enabled C{plugins} (built on C{reactor}, by default
    C{clock} or the global reactor).

    @param run_blocking: runs uploads' disk work off the reactor (tests pass
        one that runs it at once); by default a disk thread pool of the uploads' own.
    @param task_store: the store behind C{/tasks} (none: no C{/tasks}).
    """
    root = Root()
    tokens = TokenSet(config.auth.tokens)
    # Links and the status feed read the time themselves: they need a clock now.
    now = clock if clock is not None else default_clock()
    links = LinkSigner(link_secret(config), now)
    store = open_file_store(config, clock=clock, run_blocking=run_blocking)
    uploads = Uploads(store, tokens)
    pending = open_pending_uploads(config, store, clock=clock, run_blocking=run_blocking, metrics=metrics)
    root.pending_uploads = pending  # type: ignore[attr-defined]  # for the Site (its sweeps)
    resumable = ResumableUploads(pending, uploads)
    tus = TusUploads(pending, uploads)
    files: IResource = FilesResource(
        store,
        chunk_size=config.stream.chunk_size,
        max_ranges=config.stream.max_ranges,
        gzip=config.stream.gzip,
        gzip_level=config.stream.gzip_level,
        sendfile=config.stream.sendfile,
        clock=clock,
        uploads=uploads,
        resumable=resumable,
        tus=tus,
        max_upload_bytes=config.limits.max_upload_bytes,
        sandbox_html=config.files.sandbox_html,
        links=links,
    )
    if config.auth.protect_downloads:
        files = BearerGuard(files, tokens, links=links)
    root.putChild(b"files", files)
    root.putChild(b"uploads", UploadsResource(pending, uploads, {"ietf": resumable, "tus": tus},
                                              config.limits.max_upload_bytes))
    root.putChild(
        b"echo", EchoResource(max_body_bytes=config.limits.max_upload_bytes, clock=clock)
    )
    root.putChild(
        b"generate", GenerateResource(max_bytes=config.limits.generate_max_bytes, clock=clock)
    )
    if task_store is not None:
        tasks: IResource = ErrorPage(
            HTTPError(403, "the tasks API needs Bearer tokens, and none are configured ([auth] tokens)")
        )
        if len(tokens):
            tasks = BearerGuard(_tasks(config, task_store, events, clock), tokens)
        root.putChild(b"tasks", tasks)
    root.putChild(b"healthz", Health())
    # The dashboard's page is open (a browser cannot send a token to load a
    # page, and it holds no data); its feed is guarded like /metrics and /files.
    root.putChild(b"ui", UIResource())
    if status_feed is None:
        status_feed = StreamsFeed(now)
    status: IResource = StatusResource(status_feed)
    # It shows every stream's path and client: as private as the files or
    # the metrics, whichever is protected.
    if config.auth.protect_metrics or config.auth.protect_downloads:
        status = BearerGuard(status, tokens)
    root.putChild(b"status", status)
    if metrics is not None:
        page: IResource = MetricsResource(metrics)
        if config.auth.protect_metrics:
            page = BearerGuard(page, tokens)
        root.putChild(b"metrics", page)
    if plugins:
        _mount(root, plugins, config, reactor if reactor is not None else clock, now, metrics, tokens)
    return root


def _mount(
    root: Resource, plugins: Sequence[SelectedPlugin], config: Config, reactor: Any, clock: IReactorTime,
    metrics: Metrics | None, tokens: TokenSet,
) -> None:
    if reactor is None:
        from twisted.internet import reactor
    if metrics is not None:
        for chosen in plugins:
            metrics.add_kind(plugin_kind(chosen.name))

    def guard(resource: IResource) -> IResource:
        if not len(tokens):
            return ErrorPage(HTTPError(403, "this endpoint needs Bearer tokens, and none are configured ([auth] tokens)"))
        return BearerGuard(resource, tokens)

    mount_plugins(
        root, plugins, config=config, reactor=reactor, clock=clock,
        registry=metrics.registry if metrics is not None else None, guard=guard,
    )


def _tasks(
    config: Config, store: ITaskStore, events: EventHub | None, clock: IReactorTime | None
) -> TasksResource:
    tasks = TasksResource(
        store,
        events=events,
        clock=clock,
        gzip=config.stream.gzip,
        gzip_level=config.stream.gzip_level,
    )
    tasks.putChild(b"import", ImportResource(tasks, max_body_bytes=config.limits.max_upload_bytes))
    if events is not None:
        tasks.putChild(b"events", EventsResource(tasks))
    return tasks


def build_events(config: Config, reactor: IReactorTime, metrics: Metrics | None) -> EventHub:
    e = config.events
    return EventHub(
        reactor,
        history=e.history,
        queue_max=e.queue_max,
        queue_max_bytes=e.queue_max_bytes,
        overflow=e.overflow,
        heartbeat=e.heartbeat,
        metrics=metrics,
    )


def build_site(
    config: Config,
    *,
    reactor: IReactorTime | None = None,
    run_blocking: RunBlocking | None = None,
    task_store: ITaskStore | None = None,
    plugins: Sequence[SelectedPlugin] | None = None,
) -> Site:
    """
    A Site whose requests answer unexpected failures with JSON and never
    buffer or form-parse a body (see L{streamsvc.body}), with its metrics
    (C{/metrics}), access log and limits (the attributes set below, read by
    the requests, channels and streams of the Site).

    C{/tasks} is served from C{task_store} when one is given (tests pass a
    L{streamsvc.testing.MemoryTaskStore}); else, with C{[tasks] enabled},
    from C{DATA_DIR/tasks.sqlite3}, opened here (L{open_task_store}).
    The Site's C{task_store} and C{events} are then set, and
    C{drain_hooks} ends the live event streams when a drain starts.

    C{plugins}: those mounted; by default those C{[plugins] enabled} names
    (L{streamsvc.plugin.select_plugins}: a ConfigError if one cannot be).
    """
    metrics = Metrics() if config.server.metrics else None
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor  # type: ignore[assignment]
    if task_store is None and config.tasks.enabled:
        task_store = open_task_store(config, reactor)
    events = build_events(config, reactor, metrics) if task_store is not None else None
    feed = StreamsFeed(reactor)
    if plugins is None:
        plugins = select_plugins(config) if config.plugins.enabled or config.plugins.sections else ()
    root: IResource = build_resource(
        config,
        clock=reactor,
        run_blocking=run_blocking,
        metrics=metrics,
        task_store=task_store,
        events=events,
        status_feed=feed,
        plugins=plugins,
        reactor=reactor,
    )
    pending = getattr(root, "pending_uploads", None)
    if config.server.cors_origins:
        root = CORSResource(root, CORSPolicy(config.server.cors_origins))
    site = Site(root, reactor=reactor, parsePOSTFormSubmission=False)
    site.pending_uploads = pending  # type: ignore[attr-defined]
    site.task_store = task_store  # type: ignore[attr-defined]
    site.events = events  # type: ignore[attr-defined]
    site.drain_hooks = [events.close] if events is not None else []  # type: ignore[attr-defined]
    site.drain_hooks.append(feed.close)  # type: ignore[attr-defined]
    site.requestFactory = BodyRequest
    site.protocol = GuardedChannel
    limits = config.limits
    site.header_timeout = limits.header_timeout  # type: ignore[attr-defined]
    site.idle_timeout = limits.idle_timeout  # type: ignore[attr-defined]
    site.send_timeout = limits.send_timeout  # type: ignore[attr-defined]
    site.connection_limits = ConnectionLimits(  # type: ignore[attr-defined]
        limits.max_connections, limits.max_connections_per_client
    )
    # What a graceful stop drains (streamsvc.limits.Drain).
    site.open_channels = set()  # type: ignore[attr-defined]
    site.open_streams = set()  # type: ignore[attr-defined]
    site.draining = False  # type: ignore[attr-defined]
    site.max_body_bytes = config.limits.max_body_bytes  # type: ignore[attr-defined]
    site.body_timeout = config.limits.body_timeout  # type: ignore[attr-defined]
    # Read by streamsvc.producers.start_body for every streamed response.
    site.rate_limit = config.limits.rate_limit  # type: ignore[attr-defined]
    site.rate_limit_after = config.limits.rate_limit_after  # type: ignore[attr-defined]
    site.client_buckets = (  # type: ignore[attr-defined]
        ClientBuckets(config.limits.client_rate_limit, site.reactor)
        if config.limits.client_rate_limit
        else None
    )
    site.displayTracebacks = False
    site.metrics = metrics  # type: ignore[attr-defined]
    # Every response logged once, those cut short too (streamsvc.accesslog);
    # twisted.web's own line (Site.log, called from finish) is replaced.
    site.access_log = AccessLog(  # type: ignore[attr-defined]
        config.server.access_log,
        clock=site.reactor,
        path=access_log_path(config),
    )
    site.log = site.access_log  # type: ignore[method-assign]
    return site
