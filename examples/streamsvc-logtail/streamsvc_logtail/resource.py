"""
C{/logs}: the files of one folder, followed as NDJSON or Server-Sent Events.

Everything that streams goes through streamsvc's public producers: a
L{Tail} is an iterator handed to L{IterableProducer} and sent with
L{send_body}, so a client that reads slowly pauses the tail (no line is
read from the file meanwhile), a client that goes away closes the file at
once, and the server's rate limits, send timeout, metrics and drain apply
without a line of code here.
"""

from __future__ import annotations

import json
import os
import stat
from datetime import datetime, timezone
from json.encoder import encode_basestring as _json_string
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from streamsvc.errors import HTTPError
from streamsvc.plugin import PluginContext
from streamsvc.producers import IterableProducer, send_body

from streamsvc_logtail.follow import Follower, Line

#: How many files C{GET /logs/} lists at most.
MAX_LISTED = 1000

NDJSON = b"application/x-ndjson"
SSE = b"text/event-stream; charset=utf-8"


class LogsResource(Resource):
    """
    C{GET /logs/}: the files of C{[plugin:logs] dir}; C{GET /logs/NAME}:
    one of them, followed. Only files directly in the folder are served
    (no subfolders, no hidden files, no symbolic link out of it).
    """

    def __init__(self, context: PluginContext) -> None:
        super().__init__()
        settings = context.settings
        self.root = os.path.realpath(settings["dir"])
        if not os.path.isdir(self.root):
            # Raised at start-up: one line, and the server does not start.
            raise ValueError(f"[plugin:{context.name}] dir = {settings['dir']!r} is not a folder")
        self.context = context
        self.poll = settings["poll_ms"] / 1000
        self.heartbeat = settings["heartbeat"]
        self.max_line = settings["max_line"]
        self.max_followers = settings["max_followers"]
        self.listing = settings["listing"]
        self.followers = 0
        metrics = context.metrics
        self.lines_sent = metrics.counter("lines_sent", "Lines sent to followers")
        self.changes = metrics.counter("changes", "Rotations and truncations followed", ["change"])
        self.following = metrics.gauge("followers", "Files being followed now")

    def getChild(self, path: bytes, request: IRequest) -> Resource:
        if request.postpath:
            raise HTTPError(404, "not found")  # /logs/a/b: no subfolders
        if path == b"":
            return self  # /logs/
        return LogFile(self, self.locate(path))

    def locate(self, segment: bytes) -> str:
        """The real path of the file C{segment} names, or a 404: never outside the folder."""
        try:
            name = segment.decode("utf-8")
        except UnicodeDecodeError:
            raise HTTPError(404, "no such log") from None
        if not name or name.startswith(".") or "/" in name or "\0" in name:
            raise HTTPError(404, "no such log")
        real = os.path.realpath(os.path.join(self.root, name))
        if os.path.dirname(real) != self.root:
            raise HTTPError(404, "no such log")  # a link out of the folder
        return real

    def render_GET(self, request: IRequest) -> Any:
        if not self.listing:
            raise HTTPError(404, "not found")
        # A folder can be large or on a slow disk: listed in the plugin's threads.
        listed = self.context.run_in_thread(_list, self.root, MAX_LISTED)
        finished: list[bool] = []
        request.notifyFinish().addBoth(finished.append)

        def answer(result: tuple[list[dict[str, Any]], bool]) -> None:
            if finished:
                return  # the client left
            entries, truncated = result
            body = json.dumps({"logs": entries, "truncated": truncated}).encode("utf-8") + b"\n"
            request.setHeader(b"content-type", b"application/json")
            request.setHeader(b"cache-control", b"no-store")
            request.setHeader(b"content-length", b"%d" % len(body))
            request.write(body)
            request.finish()

        def failed(failure: Any) -> None:
            self.context.log.failure("listing {root} failed", failure, root=self.root)
            if not finished:
                request.setResponseCode(500)
                request.setHeader(b"content-type", b"application/json")
                request.write(b'{"error": "cannot list the logs"}\n')
                request.finish()

        listed.addCallbacks(answer, failed)
        return NOT_DONE_YET


def _list(root: str, limit: int) -> tuple[list[dict[str, Any]], bool]:
    """(In a thread.) The first C{limit} regular files of C{root}, by name, and whether there were more."""
    entries = []
    with os.scandir(root) as scan:
        for entry in scan:
            if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
                continue
            info = entry.stat(follow_symlinks=False)
            modified = datetime.fromtimestamp(info.st_mtime, timezone.utc).isoformat(timespec="seconds")
            entries.append({"name": entry.name, "size": info.st_size, "modified": modified})
    entries.sort(key=lambda e: e["name"])
    return entries[:limit], len(entries) > limit


class LogFile(Resource):
    """
    C{GET /logs/NAME}: the lines of one file as they are written.

    Query: C{format=ndjson|sse} (default: SSE if C{Accept} asks for
    C{text/event-stream}, else NDJSON); C{from=end|start} (default end);
    C{offset=N} (start at byte N; past the end is a 416); C{follow=yes|no}
    (no: stop at the current end). An SSE client's C{Last-Event-ID} resumes
    after the last line it got (from the start, if the file is now shorter:
    it was rotated or truncated meanwhile).
    """

    isLeaf = True

    def __init__(self, logs: LogsResource, path: str) -> None:
        super().__init__()
        self.logs = logs
        self.path = path

    def render_HEAD(self, request: IRequest) -> bytes:
        fd, _, sse, _ = self._open(request)
        os.close(fd)
        return b""

    def render_GET(self, request: IRequest) -> Any:
        fd, position, sse, follow = self._open(request)
        logs = self.logs
        follower = Follower(self.path, fd, position, max_line=logs.max_line, chunk_size=logs.context.chunk_size)
        tail = Tail(follower, logs, sse=sse, follow=follow)
        send_body(request, IterableProducer(tail, clock=logs.context.clock))
        return NOT_DONE_YET

    def _open(self, request: IRequest) -> tuple[int, int, bool, bool]:
        """Checks, the file opened, the headers set: (fd, where to start, SSE?, follow?)."""
        args = request.args
        sse = _format(request)
        follow = _yes_no(args, b"follow", True)
        logs = self.logs
        if logs.followers >= logs.max_followers:
            raise HTTPError(503, "too many followers, try again later", {b"retry-after": b"5"})
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise HTTPError(404, "no such log") from None
        except PermissionError:
            raise HTTPError(403, "this log cannot be read") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise HTTPError(404, "no such log")
            position = _start(request, info.st_size, sse)
        except BaseException:
            os.close(fd)
            raise
        request.setHeader(b"content-type", SSE if sse else NDJSON)
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-accel-buffering", b"no")  # nginx in front: do not buffer a live stream
        return fd, position, sse, follow


def _one(args: dict[bytes, list[bytes]], name: bytes) -> str | None:
    values = args.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise HTTPError(400, f"give {name.decode()} once")
    return values[0].decode("utf-8", "replace")


def _yes_no(args: dict[bytes, list[bytes]], name: bytes, default: bool) -> bool:
    value = _one(args, name)
    if value is None:
        return default
    if value not in ("yes", "no"):
        raise HTTPError(400, f"{name.decode()} must be yes or no")
    return value == "yes"


def _format(request: IRequest) -> bool:
    chosen = _one(request.args, b"format")
    if chosen is None:
        return b"text/event-stream" in (request.getHeader(b"accept") or b"")
    if chosen not in ("ndjson", "sse"):
        raise HTTPError(400, "format must be ndjson or sse")
    return chosen == "sse"


def _start(request: IRequest, size: int, sse: bool) -> int:
    offset = _one(request.args, b"offset")
    if offset is not None:
        if not offset.isdigit():
            raise HTTPError(400, "offset must be a byte offset (a whole number)")
        if int(offset) > size:
            raise HTTPError(416, f"offset {offset} is past the end of the file ({size} bytes)")
        return int(offset)
    last = request.getHeader(b"last-event-id")
    if sse and last is not None and last.isdigit():
        return int(last) if int(last) <= size else 0
    where = _one(request.args, b"from") or "end"
    if where not in ("start", "end"):
        raise HTTPError(400, "from must be start or end")
    return 0 if where == "start" else size


class Tail:
    """
    The body of one follower, as an iterator for L{IterableProducer}: each
    item is the encoded lines of one read, or, at the end of the file, a
    Deferred that fires after the poll interval (or an SSE heartbeat).
    L{close} (called by the producer however the stream ends: done,
    client gone, timeout, shutdown) closes the file.
    """

    def __init__(self, follower: Follower, logs: LogsResource, *, sse: bool, follow: bool) -> None:
        self.follower = follower
        self.logs = logs
        self.sse = sse
        self.follow = follow
        self._idle = 0.0
        logs.followers += 1
        logs.following.inc()

    def __iter__(self) -> Tail:
        return self

    def __next__(self) -> bytes | Deferred[bytes]:
        follower = self.follower
        if follower.fd is None:
            raise StopIteration
        lines = follower.read()
        if lines:
            self._idle = 0.0
            self.logs.lines_sent.inc(len(lines))
            return self._encode(lines)
        if not follower.at_end:
            return b""  # the middle of a long line: read on
        if not self.follow:
            raise StopIteration
        change = follower.check()
        if change is not None:
            self.logs.changes.labels(change).inc()
            return self._event(change)
        self._idle += self.logs.poll
        if self.sse and self.logs.heartbeat and self._idle >= self.logs.heartbeat:
            self._idle = 0.0
            return b": keep-alive\n\n"
        return deferLater(self.logs.context.clock, self.logs.poll, lambda: b"")

    def _encode(self, lines: list[Line]) -> bytes:
        if self.sse:
            # A CR inside a data field would end it: shown as U+FFFD, as invalid UTF-8 is.
            return b"".join(
                b"id: %d\ndata: %s\n\n" % (line.end, line.text.decode("utf-8", "replace").replace("\r", "\ufffd").encode())
                for line in lines
            )
        # The C encoder of JSON strings, not json.dumps per line: three times
        # the lines per second (the rest of the object is fixed text).
        return b"".join(
            b'{"offset": %d, "line": %s}\n' % (line.end, _json_string(line.text.decode("utf-8", "replace")).encode())
            for line in lines
        )

    def _event(self, change: str) -> bytes:
        if self.sse:
            return b"event: %s\nid: 0\ndata: {}\n\n" % change.encode("ascii")
        return json.dumps({"event": change, "offset": 0}).encode("ascii") + b"\n"

    def close(self) -> None:
        if self.follower.fd is not None:
            self.follower.close()
            self.logs.followers -= 1
            self.logs.following.dec()
