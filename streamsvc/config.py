# -*- test-case-name: tests.test_config -*-
"""
The service's configuration: the C{tap.conf} INI file and the command-line
values that override it.

Parsing (L{parse_config}, L{parse_size}, L{parse_tokens}) is pure so every
rule can be tested on strings; the few functions that touch the disk
(L{load_config}, L{read_tokens_file}) only read bytes and hand them over.

Every mistake is a L{ConfigError} whose message is one line naming where the
bad value came from (file, section and key, or the command-line option): it is
printed as-is by C{twistd streamsvc} and must be enough to fix the file
without a traceback. Unknown sections and keys are errors too, because a typo
silently ignored is a setting silently not applied.

Bearer tokens are secrets: they are kept out of C{repr}, out of every error
message and out of anything else that could end up in a log.
"""

from __future__ import annotations

import configparser
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import MappingProxyType
from urllib.parse import urlsplit
from typing import Any, Final

import attrs
from twisted.internet.endpoints import serverFromString
from twisted.internet.testing import MemoryReactor

from streamsvc.sizes import parse_size

__all__ = [
    "DEFAULT_CONFIG_NAME",
    "KNOWN_KEYS",
    "TWISTD_LOG",
    "AuthConfig",
    "Config",
    "ConfigError",
    "PluginsConfig",
    "ServerConfig",
    "StreamConfig",
    "access_log_default",
    "apply_overrides",
    "check_endpoint",
    "load_config",
    "parse_config",
    "parse_size",
    "parse_tokens",
    "read_tokens_file",
]

#: Looked for in the working directory when no C{--config} is given.
DEFAULT_CONFIG_NAME: Final = "tap.conf"

#: Bounds of C{[stream] chunk_size}: below 4 KiB the per-chunk overhead
#: dominates; above 16 MiB one chunk is a memory spike per connection.
MIN_CHUNK_SIZE: Final = 4 * 1024
MAX_CHUNK_SIZE: Final = 16 * 1024 * 1024


class ConfigError(ValueError):
    """
    A configuration value that cannot be used.

    The message is a single line that starts with where the value came from,
    e.g. C{"tap.conf: [stream] chunk_size = 'abc': expected a size such as
    65536 or 64KiB"} or C{"--listen 'tcp:abc': ..."}. It never contains a token.
    """


@attrs.frozen
class ServerConfig:
    """C{[server]}: where to listen and what to serve."""

    listen: tuple[str, ...] = ("tcp:8080:interface=127.0.0.1",)
    data_dir: str = "./data"
    shutdown_timeout: int = 30
    metrics: bool = True
    access_log: str = "combined"
    access_log_file: str | None = None
    workers: int = 1
    cors_origins: tuple[str, ...] = ()


@attrs.frozen
class StreamConfig:
    """C{[stream]}: how bodies are read, split into ranges and compressed."""

    chunk_size: int = 65536
    max_ranges: int = 16
    gzip: bool = True
    gzip_level: int = 6
    sendfile: bool = True


@attrs.frozen
class AuthConfig:
    """
    C{[auth]}: Bearer tokens and what they protect.

    C{tokens} is left out of C{repr} (and so of C{str}) because a config
    object is exactly the kind of thing that gets logged at start-up.
    """

    tokens: tuple[str, ...] = attrs.field(default=(), repr=False)
    tokens_file: str | None = None
    protect_downloads: bool = False
    protect_metrics: bool = False
    link_secret: str | None = attrs.field(default=None, repr=False)


@attrs.frozen
class LimitsConfig:
    """C{[limits]}: sizes a client controls, capped."""

    max_body_bytes: int = 1024 * 1024
    body_timeout: int = 60
    max_upload_bytes: int = 1024**3
    generate_max_bytes: int = 16 * 1024**3
    rate_limit: int = 0
    rate_limit_after: int = 0
    client_rate_limit: int = 0
    header_timeout: int = 15
    idle_timeout: int = 60
    send_timeout: int = 60
    max_connections: int = 1024
    max_connections_per_client: int = 0


@attrs.frozen
class TasksConfig:
    """
    C{[tasks]}: the task store: C{sqlite} (C{DATA_DIR/tasks.sqlite3}, with
    C{readers} reader connections) or C{postgresql} (at C{dsn}, or the DSN
    in C{dsn_file}, with C{pool_size} connections per process).
    """

    enabled: bool = True
    readers: int = 4
    store: str = "sqlite"
    dsn: str | None = attrs.field(default=None, repr=False)
    dsn_file: str | None = None
    pool_size: int = 8
    statement_timeout: int = 30


@attrs.frozen
class EventsConfig:
    """C{[events]}: C{GET /tasks/events}."""

    heartbeat: int = 15
    history: int = 1000
    queue_max: int = 1000
    queue_max_bytes: int = 1024 * 1024
    overflow: str = "drop-oldest"


@attrs.frozen
class FilesConfig:
    """
    C{[files]}: how C{/files} serves its files, and from where: C{local}
    (C{DATA_DIR/files}) or C{s3} (the bucket of C{[s3]}).
    """

    sandbox_html: bool = True
    store: str = "local"
    #: Seconds a resumable upload may go untouched before it is removed.
    upload_expiry: int = 24 * 3600
    #: Resumable uploads pending at once, at most.
    max_pending_uploads: int = 1000


@attrs.frozen
class S3Config:
    """
    C{[s3]}: the bucket of C{[files] store = s3}. The secret key (given,
    or read from C{secret_key_file}) is never shown, in no message or repr.
    """

    endpoint: str = ""
    bucket: str | None = None
    region: str = "us-east-1"
    access_key: str | None = None
    secret_key: str | None = attrs.field(default=None, repr=False)
    secret_key_file: str | None = None
    prefix: str = ""
    addressing: str = "path"
    part_size: int = 8 * 1024 * 1024
    timeout: int = 30


#: What a plugin's name may be (L{streamsvc.interfaces.IStreamsvcPlugin.name}).
PLUGIN_NAME: Final = re.compile(r"[a-z][a-z0-9_-]{0,63}", re.ASCII)
#: The prefix of a plugin's own section: C{[plugin:NAME]}.
PLUGIN_SECTION: Final = "plugin:"


@attrs.frozen
class PluginsConfig:
    """
    C{[plugins]}: which installed plugins are served (none by default:
    installing a package must not expose an endpoint), and the raw text of
    every C{[plugin:NAME]} section, which only the plugin's own settings
    can parse (L{streamsvc.plugin.select_plugins}, at start-up). C{source}
    names the file in those errors.
    """

    enabled: tuple[str, ...] = ()
    sections: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()
    source: str = attrs.field(default="configuration", eq=False)

    def section(self, name: str) -> dict[str, str]:
        """The raw C{key: value} pairs of C{[plugin:NAME]} (empty if it is absent)."""
        return dict(dict(self.sections).get(name, ()))


@attrs.frozen
class Config:
    """The whole configuration; C{Config()} is the built-in defaults."""

    server: ServerConfig = ServerConfig()
    stream: StreamConfig = StreamConfig()
    auth: AuthConfig = AuthConfig()
    limits: LimitsConfig = LimitsConfig()
    tasks: TasksConfig = TasksConfig()
    events: EventsConfig = EventsConfig()
    files: FilesConfig = FilesConfig()
    s3: S3Config = S3Config()
    plugins: PluginsConfig = PluginsConfig()


# --- values -----------------------------------------------------------------

_INTEGER = re.compile(r"-?[0-9]+", re.ASCII)
_BOOLEANS: Final = {
    "yes": True,
    "true": True,
    "on": True,
    "1": True,
    "no": False,
    "false": False,
    "off": False,
    "0": False,
}
#: Tokens in C{[auth] tokens} are separated by any mix of these.
_TOKEN_SEPARATORS = re.compile(r"[\s,]+")

#: RFC 6750 §2.1 b64token: what an C{Authorization: Bearer} value can carry.
#: A token outside it could be configured but could never authenticate.
_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*", re.ASCII)
_TOKEN_RULE = "a token may only contain letters, digits and -._~+/ (then = padding)"


def check_endpoint(description: str) -> None:
    """
    Raise L{ValueError} with a one-line reason if Twisted cannot build a
    server endpoint from C{description}.

    The endpoint is constructed on a L{MemoryReactor}, so nothing listens; it
    is the same parser C{makeService} uses, so whatever passes here is what
    will be used. (An C{ssl:} endpoint reads its key and certificate files
    while being constructed: a missing file is reported here, at start-up,
    rather than after the other ports are already open.)
    """
    if not description.strip():
        raise ValueError("empty endpoint string")
    guess = _looks_like_an_address(description.strip())
    if guess is not None:
        raise ValueError(f"not an endpoint string: did you mean {guess}?")
    try:
        endpoint = serverFromString(MemoryReactor(), description)
    except Exception as e:
        raise ValueError(explain_endpoint_error(description, e)) from None
    # Twisted accepts any integer as a TCP port and only fails when binding,
    # after other endpoints may have started: catch it here instead.
    port = getattr(endpoint, "_port", None)
    if isinstance(port, int) and not 0 <= port <= 65535:
        raise ValueError(f"port {port} is out of range 0-65535")


#: The options of the endpoint types people use, for "unknown option" errors.
_ENDPOINT_OPTIONS: Final = MappingProxyType(
    {
        "tcp": "port, interface, backlog",
        "tcp6": "port, interface, backlog",
        "unix": "address, mode, backlog, lockfile",
        "ssl": "port, privateKey, certKey, interface, backlog, extraCertChain, dhParameters, sslmethod",
    }
)
_HOST_PORT = re.compile(r"(?:(\[[0-9a-fA-F:.]+\]|[0-9.]+|localhost|\*)?:)?([0-9]{1,5})")


def _looks_like_an_address(description: str) -> str | None:
    """C{18110} or C{127.0.0.1:8080} (not endpoint strings): the one meant."""
    match = _HOST_PORT.fullmatch(description)
    if match is None:
        return None
    host, port = match.groups()
    if host is None or host in ("", "*"):
        return f"tcp:{port}"
    if host.startswith("["):
        return f"tcp6:{port}:interface={host[1:-1].replace(':', chr(92) + ':')}"
    return f"tcp:{port}:interface={host}"


def explain_endpoint_error(description: str, error: Exception) -> str:
    """
    One line saying which part of C{description} Twisted refused, and why,
    instead of its own words (C{_parseTCP() got an unexpected keyword...}).
    """
    kind = description.split(":", 1)[0]
    text = _one_line(str(error)) or type(error).__name__
    unknown = re.search(r"unexpected keyword argument '([^']+)'", text)
    if unknown is not None:
        known = _ENDPOINT_OPTIONS.get(kind)
        hint = f" (known: {known})" if known else ""
        return f"{kind}: unknown option {unknown.group(1)!r}{hint}"
    if text.startswith("Unknown endpoint type"):
        return f"unknown endpoint type {kind!r} (use tcp:, tcp6:, unix:, ssl: or systemd:)"
    missing = re.search(r"missing \d+ required positional argument: '([^']+)'", text)
    if missing is not None:
        return f"{kind}: the {missing.group(1)} is missing ({kind}:{missing.group(1).upper()})"
    number = re.search(r"invalid literal for int\(\) with base \d+: '([^']*)'", text)
    if number is not None:
        return f"{kind}: {number.group(1)!r} is not a number (the port, backlog or mode)"
    if isinstance(error, OSError) and error.filename is not None:
        return (f"{kind}: cannot read {error.filename!r} (privateKey=, certKey=): "
                f"{error.strerror or text}")
    return f"{kind}: {text}"


def parse_tokens(text: str, source: str) -> tuple[str, ...]:
    """
    The tokens in the text of a tokens file: one per line, surrounding
    whitespace stripped, blank lines and C{#} comment lines skipped.

    A line with whitespace inside is an error (a token can never contain
    whitespace, so it is most likely two tokens, or a token and a comment).
    Errors name C{source} and the line number, never the line itself.
    """
    tokens: list[str] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        token = line.strip()
        if not token or token.startswith("#"):
            continue
        if any(c.isspace() for c in token):
            raise ConfigError(
                f"{source}: line {lineno}: a token cannot contain whitespace "
                "(one token per line; comments must be on their own line)"
            )
        if _TOKEN.fullmatch(token) is None:
            raise ConfigError(f"{source}: line {lineno}: {_TOKEN_RULE}")
        tokens.append(token)
    return _unique(tokens)


# --- the schema -------------------------------------------------------------


def _parse_listen(value: str) -> tuple[str, ...]:
    descriptions = value.split()
    if not descriptions:
        raise ValueError("expected one or more endpoint strings such as tcp:8080")
    for description in descriptions:
        try:
            check_endpoint(description)
        except ValueError as e:
            if len(descriptions) == 1:
                raise ValueError(f"not a server endpoint: {e}") from None
            raise ValueError(f"{description!r} is not a server endpoint: {e}") from None
    return tuple(descriptions)


_ORIGIN = re.compile(r"https?://[A-Za-z0-9.-]+(?::[0-9]{1,5})?|https?://\[[0-9A-Fa-f:.]+\](?::[0-9]{1,5})?", re.ASCII)


def _parse_link_secret(value: str) -> str | None:
    """At least 32 characters (a random one is made at start-up when empty)."""
    secret = value.strip()
    if not secret:
        return None
    if len(secret) < 32:
        raise ValueError("must be at least 32 characters (e.g. the output of: openssl rand -hex 32)")
    return secret


def _parse_origins(value: str) -> tuple[str, ...]:
    """C{*}, or origins (C{https://app.example:8443}) separated by spaces or commas; empty: none."""
    origins = [o for o in re.split(r"[\s,]+", value.strip()) if o]
    for origin in origins:
        if origin != "*" and _ORIGIN.fullmatch(origin) is None:
            raise ValueError(
                f"{origin!r} is not an origin: expected * or scheme://host[:port] "
                "(no path, no trailing slash), e.g. https://app.example.com"
            )
    if "*" in origins and len(origins) > 1:
        raise ValueError("* already allows every origin; give it alone")
    return _unique(origins)


def _parse_path(value: str) -> str:
    if not value:
        raise ValueError("expected a path, not an empty value")
    if "\0" in value:
        raise ValueError("a path cannot contain a NUL character")
    return value


def _size_between(low: int, high: int, example: str, bounds: str) -> Callable[[str], int]:
    """A parser of sizes from C{low} to C{high} (C{bounds} says so in errors)."""

    def parse(value: str) -> int:
        try:
            size = parse_size(value)
        except ValueError:
            raise ValueError(f"expected a size such as {example}") from None
        if not low <= size <= high:
            raise ValueError(f"must be {bounds}")
        return size

    return parse


_parse_chunk_size = _size_between(
    MIN_CHUNK_SIZE, MAX_CHUNK_SIZE, "65536 or 64KiB", f"between 4KiB ({MIN_CHUNK_SIZE}) and 16MiB ({MAX_CHUNK_SIZE})"
)


#: The largest body a resource that takes none may be sent (read and dropped).
MAX_BODY_BYTES_CAP: Final = 64 * 1024 * 1024


def _size_at_most(cap: int, cap_text: str, example: str) -> Callable[[str], int]:
    """A parser of sizes from 0 to C{cap} (spelt C{cap_text} in errors)."""

    def parse(value: str) -> int:
        try:
            size = parse_size(value)
        except ValueError:
            raise ValueError(f"expected a size such as {example}") from None
        if size > cap:
            raise ValueError(f"must be at most {cap_text} ({cap})")
        return size

    return parse


#: The largest upload (and echo) body that may be allowed: far above any
#: sensible limit, it only catches a typo such as a missing suffix letter.
MAX_UPLOAD_BYTES_CAP: Final = 1024**5

_parse_body_limit = _size_at_most(MAX_BODY_BYTES_CAP, "64MiB", "1048576 or 1MiB")
_parse_upload_limit = _size_at_most(MAX_UPLOAD_BYTES_CAP, "1PiB", "1073741824 or 1GiB")
#: Bytes per second (0 = no limit).
_parse_rate = _size_at_most(MAX_UPLOAD_BYTES_CAP, "1PiB", "1048576 or 1MiB (bytes per second)")


def _choice(*options: str) -> Callable[[str], str]:
    """A parser of one of C{options} (any case), e.g. C{expected path or virtual}."""
    listed = options[0] if len(options) == 1 else ", ".join(options[:-1]) + " or " + options[-1]

    def parse(value: str) -> str:
        chosen = value.strip().lower()
        if chosen not in options:
            raise ValueError(f"expected {listed}")
        return chosen

    return parse


def _integer(low: int, high: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        if _INTEGER.fullmatch(value) is None:
            raise ValueError(f"expected an integer from {low} to {high}")
        number = int(value)
        if not low <= number <= high:
            raise ValueError(f"must be between {low} and {high}")
        return number

    return parse


#: The most worker processes C{[server] workers} may ask for.
MAX_WORKERS: Final = 64


def cpu_count() -> int:
    """The CPUs this process may run on (what C{workers = auto} means)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def parse_workers(value: str) -> int:
    """C{auto} (one per CPU) or a count from 1 to L{MAX_WORKERS}."""
    if value.strip().lower() == "auto":
        return min(cpu_count(), MAX_WORKERS)
    try:
        return _integer(1, MAX_WORKERS)(value.strip())
    except ValueError:
        raise ValueError(f"expected auto or an integer from 1 to {MAX_WORKERS}") from None


def _parse_boolean(value: str) -> bool:
    try:
        return _BOOLEANS[value.lower()]
    except KeyError:
        raise ValueError("expected yes/no, true/false, on/off or 1/0") from None


def _parse_optional_path(value: str) -> str | None:
    return _parse_path(value) if value.strip() else None


#: C{[server] access_log_file = twistd}: the access lines go through
#: twistd's log (the only place before the default became a file).
TWISTD_LOG: Final = "twistd"


def _parse_access_log_file(value: str) -> str | None:
    if value.strip().lower() == TWISTD_LOG:
        return TWISTD_LOG
    return _parse_optional_path(value)


def access_log_default(config: Config) -> Config:
    """
    C{config} with the access log's place settled, as C{twistd streamsvc}
    runs it: unset, C{DATA_DIR/logs/access.log} (its own buffered file:
    a line costs a few µs there, against 100-200 µs through twistd's log,
    which with workers the supervisor would also relay); C{twistd}, twistd's
    log (None, what a L{ServerConfig} built in code means too).
    """
    chosen = config.server.access_log_file
    if chosen == TWISTD_LOG:
        chosen = None
    elif chosen is None:
        chosen = os.path.join(config.server.data_dir, "logs", "access.log")
    return attrs.evolve(config, server=attrs.evolve(config.server, access_log_file=chosen))


_parse_access_log = _choice("combined", "json", "off")


#: What C{[tasks] store} may name.
TASK_STORES: Final = ("sqlite", "postgresql")

_parse_store = _choice(*TASK_STORES)


#: What C{[files] store} may name.
FILE_STORES: Final = ("local", "s3")


_parse_file_store = _choice(*FILE_STORES)


def _parse_endpoint_url(value: str) -> str:
    """An C{http://} or C{https://} URL with a host and no path; empty for AWS."""
    url = value.strip().rstrip("/")
    if not url:
        return ""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path or parts.query:
        raise ValueError("expected a URL such as http://127.0.0.1:8333 or https://s3.example.com (or empty for AWS)")
    return url


_BUCKET = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]", re.ASCII)


def _parse_bucket(value: str) -> str | None:
    bucket = value.strip()
    if not bucket:
        return None
    if _BUCKET.fullmatch(bucket) is None:
        raise ValueError("expected an S3 bucket name: 3-63 lower-case letters, digits, dots and hyphens")
    return bucket


def _parse_text(value: str) -> str | None:
    return value.strip() or None


def _parse_region(value: str) -> str:
    region = value.strip()
    if not re.fullmatch(r"[a-z0-9-]{1,64}", region, re.ASCII):
        raise ValueError("expected a region name such as us-east-1")
    return region


def _parse_key_prefix(value: str) -> str:
    prefix = value.strip().strip("/")
    if prefix and any(not part or part.startswith(".") for part in prefix.split("/")):
        raise ValueError("expected key segments joined by / (none empty, none starting with a dot)")
    return prefix + "/" if prefix else ""


_parse_addressing = _choice("path", "virtual")


_parse_part_size = _size_between(
    5 * 1024**2, 5 * 1024**3, "8MiB", "from 5MiB to 5GiB (what S3 allows for a part)"
)


def _parse_dsn(value: str) -> str | None:
    """A libpq URI or key=value string; checked by the driver at start-up (never shown)."""
    return value.strip() or None


_parse_overflow = _choice("drop-oldest", "disconnect")


def _parse_plugin_names(value: str) -> tuple[str, ...]:
    """Plugin names separated by commas or spaces; empty: none."""
    names = [n for n in re.split(r"[\s,]+", value.strip()) if n]
    for name in names:
        if PLUGIN_NAME.fullmatch(name) is None:
            raise ValueError(
                f"{name!r} is not a plugin name (lower-case letters, digits, - and _, starting with a letter)"
            )
    return _unique(names)


def _parse_token_list(value: str) -> tuple[str, ...]:
    tokens = [t for t in _TOKEN_SEPARATORS.split(value) if t]
    if any(_TOKEN.fullmatch(t) is None for t in tokens):
        raise ValueError(_TOKEN_RULE)
    return _unique(tokens)


@attrs.frozen
class _Key:
    """How one key is parsed, and whether its value may be shown in errors."""

    parse: Callable[[str], Any]
    secret: bool = False



#: Every section and key the file may contain, in the order of C{tap.conf}.
#: Key names are the attribute names of the section's class.
_SCHEMA: Final[Mapping[str, tuple[type, Mapping[str, _Key]]]] = MappingProxyType(
    {
        "server": (
            ServerConfig,
            {
                "listen": _Key(_parse_listen),
                "data_dir": _Key(_parse_path),
                "shutdown_timeout": _Key(_integer(0, 3600)),
                "metrics": _Key(_parse_boolean),
                "access_log": _Key(_parse_access_log),
                "access_log_file": _Key(_parse_access_log_file),
                "workers": _Key(parse_workers),
                "cors_origins": _Key(_parse_origins),
            },
        ),
        "stream": (
            StreamConfig,
            {
                "chunk_size": _Key(_parse_chunk_size),
                "max_ranges": _Key(_integer(1, 1000)),
                "gzip": _Key(_parse_boolean),
                "gzip_level": _Key(_integer(1, 9)),
                "sendfile": _Key(_parse_boolean),
            },
        ),
        "auth": (
            AuthConfig,
            {
                "tokens": _Key(_parse_token_list, secret=True),
                "tokens_file": _Key(_parse_path),
                "protect_downloads": _Key(_parse_boolean),
                "protect_metrics": _Key(_parse_boolean),
                "link_secret": _Key(_parse_link_secret, secret=True),
            },
        ),
        "limits": (
            LimitsConfig,
            {
                "max_body_bytes": _Key(_parse_body_limit),
                "body_timeout": _Key(_integer(0, 3600)),
                "max_upload_bytes": _Key(_parse_upload_limit),
                "generate_max_bytes": _Key(_parse_upload_limit),
                "rate_limit": _Key(_parse_rate),
                "rate_limit_after": _Key(_parse_upload_limit),
                "client_rate_limit": _Key(_parse_rate),
                "header_timeout": _Key(_integer(0, 3600)),
                "idle_timeout": _Key(_integer(0, 3600)),
                "send_timeout": _Key(_integer(0, 3600)),
                "max_connections": _Key(_integer(1, 1_000_000)),
                "max_connections_per_client": _Key(_integer(0, 1_000_000)),
            },
        ),
        "tasks": (
            TasksConfig,
            {
                "enabled": _Key(_parse_boolean),
                "readers": _Key(_integer(1, 64)),
                "store": _Key(_parse_store),
                "dsn": _Key(_parse_dsn, secret=True),
                "dsn_file": _Key(_parse_path),
                "pool_size": _Key(_integer(1, 256)),
                "statement_timeout": _Key(_integer(1, 3600)),
            },
        ),
        "events": (
            EventsConfig,
            {
                "heartbeat": _Key(_integer(0, 3600)),
                "history": _Key(_integer(0, 1_000_000)),
                "queue_max": _Key(_integer(1, 1_000_000)),
                "queue_max_bytes": _Key(_size_at_most(MAX_BODY_BYTES_CAP, "64MiB", "1048576 or 1MiB")),
                "overflow": _Key(_parse_overflow),
            },
        ),
        "files": (
            FilesConfig,
            {
                "sandbox_html": _Key(_parse_boolean),
                "store": _Key(_parse_file_store),
                "upload_expiry": _Key(_integer(60, 365 * 24 * 3600)),
                "max_pending_uploads": _Key(_integer(1, 1_000_000)),
            },
        ),
        "s3": (
            S3Config,
            {
                "endpoint": _Key(_parse_endpoint_url),
                "bucket": _Key(_parse_bucket),
                "region": _Key(_parse_region),
                "access_key": _Key(_parse_text),
                "secret_key": _Key(_parse_text, secret=True),
                "secret_key_file": _Key(_parse_path),
                "prefix": _Key(_parse_key_prefix),
                "addressing": _Key(_parse_addressing),
                "part_size": _Key(_parse_part_size),
                "timeout": _Key(_integer(1, 3600)),
            },
        ),
        "plugins": (
            PluginsConfig,
            {
                "enabled": _Key(_parse_plugin_names),
            },
        ),
    }
)

#: Section name -> its key names, for documentation and tests.
KNOWN_KEYS: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType(
    {section: tuple(keys) for section, (_, keys) in _SCHEMA.items()}
)


# --- parsing ----------------------------------------------------------------


def parse_config(text: str, source: str = "<string>") -> Config:
    """
    The L{Config} described by the INI C{text}; C{source} names it in errors.

    Pure: no file is read (C{tokens_file} is recorded, not read, and is not
    resolved against any directory). Checks syntax, unknown sections and keys,
    a non-empty C{[DEFAULT]}, types and ranges, and every C{listen} endpoint.
    C{protect_downloads} without tokens is I{not} checked here, since
    C{tokens_file} may supply them: L{load_config} does that.
    """
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    try:
        parser.read_string(text, source=source)
    except configparser.Error as e:
        raise ConfigError(_syntax_error(e, source)) from None

    # DEFAULT's keys would silently appear in every section (and, for a key
    # like listen, be "unknown" in the wrong one): refuse it outright.
    defaults = list(parser.defaults())
    if defaults:
        raise ConfigError(
            f"{source}: [{parser.default_section}] {_show(defaults[0])}: a "
            f"[{parser.default_section}] section is not allowed (its keys would "
            "apply to every section); put each key in its own section"
        )

    known_sections = ", ".join([*_SCHEMA, PLUGIN_SECTION + "NAME"])
    plugin_sections: list[tuple[str, tuple[tuple[str, str], ...]]] = []
    for section in parser.sections():
        if section.startswith(PLUGIN_SECTION):
            name = section[len(PLUGIN_SECTION):]
            if PLUGIN_NAME.fullmatch(name) is None:
                raise ConfigError(
                    f"{source}: [{_show(section)}]: {name!r} is not a plugin name "
                    "(lower-case letters, digits, - and _, starting with a letter)"
                )
            plugin_sections.append((name, tuple(parser.items(section))))
        elif section not in _SCHEMA:
            raise ConfigError(
                f"{source}: unknown section [{_show(section)}] (known: {known_sections})"
            )

    parts: dict[str, Any] = {}
    for section, (cls, keys) in _SCHEMA.items():
        if not parser.has_section(section):
            parts[section] = cls()
            continue
        values: dict[str, Any] = {}
        for key in parser.options(section):
            spec = keys.get(key)
            if spec is None:
                raise ConfigError(
                    f"{source}: [{section}] unknown key {key!r} "
                    f"(known: {', '.join(keys)})"
                )
            raw = parser.get(section, key)
            try:
                values[key] = spec.parse(raw)
            except ValueError as e:
                shown = "" if spec.secret else f" = {raw!r}"
                raise ConfigError(f"{source}: [{section}] {key}{shown}: {e}") from None
        parts[section] = cls(**values)
    parts["plugins"] = attrs.evolve(parts["plugins"], sections=tuple(plugin_sections), source=source)
    return Config(**parts)


def _syntax_error(error: configparser.Error, source: str) -> str:
    """
    One line for configparser's (often multi-line) message.

    The offending line's text is never repeated: in C{[auth]} it may be a
    token pasted without its key.
    """
    if isinstance(error, configparser.MissingSectionHeaderError):
        # Its own first line: "File contains no section headers."
        return f"{source}: line {error.lineno}: {str(error).splitlines()[0]}"
    if isinstance(error, configparser.ParsingError):
        lineno = error.errors[0][0] if error.errors else "?"
        return f"{source}: line {lineno}: expected '[section]', 'key = value' or a # comment"
    message = str(error)
    lineno = getattr(error, "lineno", None)
    # "While reading from 'tap.conf' [line  3]: option 'x' ..." -> "option 'x' ..."
    message = re.sub(r"^While reading from .*? \[line +\d+\]: ", "", message)
    message = message.splitlines()[0] if message else type(error).__name__
    where = f"line {lineno}: " if lineno is not None else ""
    return f"{source}: {where}{_one_line(message)}"


# --- I/O --------------------------------------------------------------------


def read_tokens_file(path: str) -> tuple[str, ...]:
    """
    The tokens in the file at C{path} (see L{parse_tokens} for the format).

    Any failure is a L{ConfigError} naming C{path}; the tokens themselves
    never appear in it.
    """
    try:
        text = _read_text(path, what="tokens file")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    return parse_tokens(text, path)


def load_config(path: str | None, *, required: bool) -> Config:
    """
    Read, parse and complete the configuration file.

    C{path} None means L{DEFAULT_CONFIG_NAME} in the working directory. A
    missing file is an error only when C{required} (the user named it with
    C{--config}); otherwise the built-in defaults apply. A file that exists but
    cannot be read is always an error.

    C{tokens_file} is read relative to the config file's directory (so a
    config and its tokens can be moved together), its tokens are added to
    C{tokens} (order kept, duplicates dropped), and the returned
    C{auth.tokens_file} is the resolved path. Finally C{protect_downloads}
    must have at least one token to check against.
    """
    source = DEFAULT_CONFIG_NAME if path is None else path
    try:
        text = _read_text(source, what="config file")
    except FileNotFoundError:
        if required:
            raise ConfigError(f"{source}: no such file") from None
        return Config()
    config = parse_config(text, source)
    auth = config.auth

    tokens_file = auth.tokens_file
    file_tokens: tuple[str, ...] = ()
    if tokens_file is not None:
        tokens_file = os.path.join(os.path.dirname(source), tokens_file)
        try:
            file_tokens = read_tokens_file(tokens_file)
        except ConfigError as e:
            raise ConfigError(f"{source}: [auth] tokens_file = {auth.tokens_file!r}: {e}") from None

    tasks = _with_dsn(config.tasks, source)
    s3 = _with_s3_secret(config.s3, source)
    check_file_store(attrs.evolve(config, s3=s3), source)

    for key in ("protect_downloads", "protect_metrics"):
        if getattr(auth, key) and not (auth.tokens or file_tokens):
            where = "[auth] tokens is empty" + (
                f" and tokens_file {tokens_file!r} has none" if tokens_file is not None else ""
            )
            raise ConfigError(f"{source}: [auth] {key} = yes needs at least one token ({where})")
    return attrs.evolve(
        config,
        auth=attrs.evolve(
            auth, tokens=_unique([*auth.tokens, *file_tokens]), tokens_file=tokens_file
        ),
        tasks=tasks,
        s3=s3,
    )


def _with_s3_secret(s3: S3Config, source: str) -> S3Config:
    """C{[s3]} with C{secret_key_file} read (relative to the config file, its first line) into C{secret_key}."""
    if s3.secret_key is not None and s3.secret_key_file is not None:
        raise ConfigError(f"{source}: [s3] give secret_key or secret_key_file, not both")
    if s3.secret_key_file is None:
        return s3
    key, path = _secret_file_line(source, "s3", "secret_key_file", s3.secret_key_file, "key")
    return attrs.evolve(s3, secret_key=key, secret_key_file=path)


def _secret_file_line(source: str, section: str, name: str, value: str, what: str) -> tuple[str, str]:
    """
    The first line (not blank, not a C{#} comment) of the file C{value} that
    C{[section] name} names, relative to the config file's folder (so the
    config itself can stay world-readable), and the file's path; a
    ConfigError naming the key, never the line.
    """
    path = os.path.join(os.path.dirname(source), value)
    try:
        text = _read_text(path, what=name)
    except FileNotFoundError:
        raise ConfigError(f"{source}: [{section}] {name} = {value!r}: no such file") from None
    except ConfigError as e:
        raise ConfigError(f"{source}: [{section}] {name}: {e}") from None
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        raise ConfigError(f"{source}: [{section}] {name} = {value!r} holds no {what}")
    return lines[0], path


def check_file_store(config: Config, source: str = "configuration") -> None:
    """
    C{[files] store = s3} needs its bucket and credentials in C{[s3]}.

    @raise ConfigError: naming what is missing (never the secret).
    """
    if config.files.store != "s3":
        return
    missing = [name for name in ("bucket", "access_key", "secret_key") if getattr(config.s3, name) is None]
    if missing:
        shown = " or ".join(["secret_key", "secret_key_file"]) if missing == ["secret_key"] else ", ".join(missing)
        raise ConfigError(f"{source}: [files] store = s3 needs [s3] {shown}")


def _with_dsn(tasks: TasksConfig, source: str) -> TasksConfig:
    """
    C{[tasks]} with the DSN settled: C{dsn_file} read (relative to the
    config file's folder, first line, so the config itself can stay
    world-readable), and a C{postgresql} store given exactly one of the two.
    """
    if tasks.dsn is not None and tasks.dsn_file is not None:
        raise ConfigError(f"{source}: [tasks] give dsn or dsn_file, not both")
    if tasks.dsn_file is not None:
        dsn, dsn_file = _secret_file_line(source, "tasks", "dsn_file", tasks.dsn_file, "DSN")
        tasks = attrs.evolve(tasks, dsn=dsn, dsn_file=dsn_file)
    if tasks.store == "postgresql" and tasks.dsn is None:
        raise ConfigError(
            f"{source}: [tasks] store = postgresql needs dsn (or dsn_file), "
            "e.g. postgresql://streamsvc@db.example:5432/streamsvc"
        )
    return tasks


#: Endpoint types a worker can adopt from the supervisor.
WORKER_ENDPOINTS: Final = ("tcp", "tcp6", "unix", "ssl")


def check_workers(config: Config) -> None:
    """
    With several workers, every endpoint must be one a worker can adopt
    (a C{systemd:} socket is handed to one process only).

    @raise ConfigError: naming the endpoint.
    """
    if config.server.workers <= 1:
        return
    for description in config.server.listen:
        kind = description.split(":", 1)[0].lower()
        if kind not in WORKER_ENDPOINTS:
            raise ConfigError(
                f"workers = {config.server.workers}: {description!r}: with several workers, "
                f"listen on {', '.join(k + ':' for k in WORKER_ENDPOINTS)} endpoints (or run one worker)"
            )


def apply_overrides(
    config: Config,
    *,
    listen: Sequence[str] | None = None,
    data_dir: str | None = None,
    workers: str | None = None,
) -> Config:
    """
    C{config} with the command-line values, which win over the file.

    C{listen}, when given and non-empty, replaces the file's whole list (the
    user who types C{--listen} means "listen here", not "here as well").
    Errors name the option, since no file is involved.
    """
    server = config.server
    if listen:
        for description in listen:
            try:
                check_endpoint(description)
            except ValueError as e:
                raise ConfigError(f"--listen {description!r}: {e}") from None
        server = attrs.evolve(server, listen=tuple(listen))
    if data_dir is not None:
        try:
            server = attrs.evolve(server, data_dir=_parse_path(data_dir))
        except ValueError as e:
            raise ConfigError(f"--data-dir {data_dir!r}: {e}") from None
    if workers is not None:
        try:
            server = attrs.evolve(server, workers=parse_workers(workers))
        except ValueError as e:
            raise ConfigError(f"--workers {workers!r}: {e}") from None
    return attrs.evolve(config, server=server)


def _read_text(path: str, *, what: str) -> str:
    """
    The UTF-8 text of the file at C{path} (a leading BOM is dropped, as
    editors on some systems add one).

    Raises L{FileNotFoundError} if it does not exist, so callers can treat
    that case apart, and L{ConfigError} naming C{path} for anything else.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise
    except OSError as e:
        raise ConfigError(f"{path}: cannot read {what}: {e.strerror or e}") from None
    except ValueError as e:  # e.g. a NUL in the path
        raise ConfigError(f"{path!r}: cannot read {what}: {e}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        lineno = data.count(b"\n", 0, e.start) + 1
        raise ConfigError(f"{path}: line {lineno}: {what} is not UTF-8 text") from None


# --- helpers ----------------------------------------------------------------


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    """C{items} without repeats, first occurrence kept."""
    return tuple(dict.fromkeys(items))


def _one_line(text: str) -> str:
    """C{text} with every run of whitespace, line breaks included, as one space."""
    return " ".join(text.split())


def _show(name: str) -> str:
    """A section or key name as typed, or its repr if it has invisible characters."""
    return name if name.isprintable() else repr(name)
