# -*- test-case-name: tests.test_accesslog -*-
"""
One access-log line per response, every response: including those whose
client went away mid-body, which twisted.web never logs (it logs in
C{Request.finish}, which a lost connection never reaches: a browser seeking
in a video made 21 requests and the log showed 2).

A line says: client address, method, path (the query's keys only: values
may be secrets, such as a signed URL's), status (499, as nginx, when the
client left before any answer), the Range asked, bytes sent, duration,
outcome (complete, client_gone, error, timeout, shutdown...), and seconds
paused by the client's backpressure. Tokens and other headers never appear.

Lines go through C{twisted.logger} (namespace C{streamsvc.access}) to
wherever twistd logs (or, with C{[server] access_log_file}, to a file of its
own through a buffer flushed once a second: the fast way), formatted only
when an observer writes them:
C{[server] access_log = combined} (Apache's combined format, then the
extra fields as C{key=value}), C{json} (one JSON object per line), or
C{off}.
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any

from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from streamsvc._transport import host_of
from streamsvc.metrics import metrics_of

log = Logger(namespace="streamsvc.access")
_problems = Logger()

FORMATS = ("combined", "json", "off")

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def redact_query(uri: bytes) -> str:
    """C{/x?token=abc&n=1} → C{/x?token=&n=}: the keys kept, every value dropped."""
    path, question, query = uri.partition(b"?")
    text = path.decode("latin-1")
    if not question:
        return text
    keys = [part.partition(b"=")[0].decode("latin-1") for part in query.split(b"&") if part]
    return text + "?" + "&".join(f"{key}=" for key in keys)


def _quoted(text: str) -> str:
    """For the combined format: no quote or control character can break the line."""
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return text  # the usual case, without a look at each character
    return "".join(c if " " <= c < "\x7f" and c not in '"\\' else f"\\x{ord(c):02x}" for c in text)


@functools.lru_cache(maxsize=4)
def _stamp(second: int) -> str:
    """The combined format's time, made once a second rather than once a line."""
    t = time.gmtime(second)
    return (
        f"{t.tm_mday:02d}/{_MONTHS[t.tm_mon - 1]}/{t.tm_year}:"
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000"
    )


class _Line:
    """An access line, formatted only if an observer asks for it (C{str})."""

    __slots__ = ("fields", "style")

    def __init__(self, fields: dict[str, Any], style: str) -> None:
        self.fields = fields
        self.style = style

    def __str__(self) -> str:
        f = self.fields
        if self.style == "json":
            return json.dumps(f, separators=(",", ":"))
        stamp = _stamp(int(f["time"]))
        return (
            f'{f["client"]} - - [{stamp}] "{_quoted(f["method"])} {_quoted(f["path"])} '
            f'{f["protocol"]}" {f["status"]} {f["bytes"]} "{_quoted(f["referer"])}" '
            f'"{_quoted(f["user_agent"])}" range="{_quoted(f["range"])}" '
            f'duration={f["duration"]:.3f} outcome={f["outcome"]} paused={f["paused"]:.3f}'
        )


class AccessLog:
    """
    The Site's C{log} (called by twisted.web from C{Request.finish}) and the
    one L{streamsvc.body.BodyRequest} calls for a response that never
    finished; each request is logged once.
    """

    def __init__(self, style: str = "combined", *, clock: Any = None, path: str | None = None) -> None:
        if style not in FORMATS:
            raise ValueError(f"access_log must be one of {', '.join(FORMATS)}, not {style!r}")
        self.style = style
        self._clock = clock
        self._file: Any = None
        self._flusher: LoopingCall | None = None
        if path is not None and style != "off":
            # A file of its own, written through a 64 KiB buffer flushed once
            # a second (nginx's buffer=/flush=): a line then costs its
            # formatting and a memory copy, where twisted.logger's path
            # (timestamps, filtering, a write and a flush per event) cost
            # most of what logging took from 4 KiB requests/s.
            self._file = AppendLines(path)
            self._flusher = LoopingCall(self.flush)
            if clock is not None:
                self._flusher.clock = clock
            trigger = getattr(clock, "addSystemEventTrigger", None)
            if trigger is not None:
                trigger("after", "shutdown", self.close)

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        flusher, self._flusher = self._flusher, None
        if flusher is not None and flusher.running:
            flusher.stop()
        file, self._file = self._file, None
        if file is not None:
            file.close()

    def __call__(self, request: IRequest) -> None:
        self.log(request)

    def log(self, request: IRequest, *, gone: bool = False) -> None:
        if getattr(request, "_access_logged", False):
            return
        request._access_logged = True  # type: ignore[attr-defined]
        stream = getattr(request, "body_stream", None)
        result = getattr(stream, "_result", None)
        if result is not None:
            outcome, sent, paused = result.outcome.value, result.bytes_sent, result.paused
        else:
            outcome = "client_gone" if gone else "complete"
            sent, paused = request.sentLength, 0.0
        answered = request.startedWriting
        status = request.code if answered else (499 if gone else request.code)
        self._line(
            getattr(request, "site", None),
            client=host_of(request.getClientAddress()),
            method=request.method,
            uri=request.uri,
            protocol=request.clientproto,
            headers=request.requestHeaders,
            status=status,
            sent=sent,
            started=getattr(request, "started_at", None),
            outcome=outcome,
            paused=paused,
        )

    def log_refusal(self, channel: Any, status: int, sent: int, started: float | None) -> None:
        """
        An answer the channel wrote itself, before any request could (a 400
        for a malformed head, a 408 for a slow one, a 503 at the door):
        counted and logged like any other, with what the head gave.
        """
        requests = getattr(channel, "requests", None)
        request = requests[-1] if requests else None
        if request is not None:
            if getattr(request, "_access_logged", False):
                return
            request._access_logged = True
        headers = request.requestHeaders if request is not None else None
        self._line(
            channel.site,
            client=host_of(channel.transport.getPeer()),
            method=getattr(channel, "_command", None),
            uri=getattr(channel, "_path", None),
            protocol=getattr(channel, "_version", None),
            headers=headers,
            status=status,
            sent=sent,
            started=started,
            outcome="complete",
            paused=0.0,
        )

    def _line(
        self,
        site: Any,
        *,
        client: str,
        method: bytes | None,
        uri: bytes | None,
        protocol: bytes | None,
        headers: Any,
        status: int,
        sent: int,
        started: float | None,
        outcome: str,
        paused: float,
    ) -> None:
        metrics = metrics_of(site)
        if metrics is not None:
            metrics.response(status)
        if self.style == "off":
            return
        now = self._clock.seconds() if self._clock is not None else time.time()
        if started is None:
            started = now
        raw = headers.getRawHeaders if headers is not None else _no_headers
        fields = {
            "time": now,
            "client": client,
            "method": (method or b"-").decode("latin-1"),
            "path": redact_query(uri or b"-"),
            "protocol": (protocol or b"-").decode("latin-1"),
            "status": status,
            "bytes": sent,
            "range": _first(raw(b"range")),
            # A Referer may be a signed link's URL (a listing page opened by
            # one loads its scripts): its query values are dropped too.
            "referer": redact_query(_first(raw(b"referer")).encode("latin-1")),
            "user_agent": _first(raw(b"user-agent")),
            "duration": max(0.0, now - started),
            "outcome": outcome,
            "paused": paused,
        }
        line = _Line(fields, self.style)
        if self._file is not None:
            self._file.write(str(line))
            if self._flusher is not None and not self._flusher.running:
                self._flusher.start(1.0, now=False)
            return
        log.info("{line}", line=line)


def _no_headers(name: bytes) -> None:
    return None


class AppendLines:
    """
    Whole lines appended to a file, buffered up to C{limit} bytes.

    Each flush is one C{write} of whole lines to a descriptor opened with
    C{O_APPEND}, so several processes (the workers of L{streamsvc.workers})
    can share one file: the kernel never interleaves within a write, and
    no line is ever split across two, which a buffered file object would
    do at its buffer boundary.
    """

    def __init__(self, path: str, limit: int = 64 * 1024) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self._lines: list[bytes] = []
        self._size = 0
        self._limit = limit

    def write(self, line: str) -> None:
        data = line.encode("utf-8", "backslashreplace") + b"\n"
        self._lines.append(data)
        self._size += len(data)
        if self._size >= self._limit:
            self.flush()

    def flush(self) -> None:
        if not self._lines:
            return
        data = b"".join(self._lines)
        self._lines.clear()
        self._size = 0
        whole = len(data)
        while data:
            try:
                written = os.write(self._fd, data)
            except OSError as e:
                # A full disk must not take the server down, nor loop here.
                _problems.warn("access log write failed, {count} bytes lost: {error}",
                               count=len(data), error=e)
                if len(data) < whole:
                    try:  # end the cut line, so the next one starts on its own
                        os.write(self._fd, b"\n")
                    except OSError:
                        pass
                return
            data = data[written:]

    def close(self) -> None:
        if self._fd >= 0:
            self.flush()
            os.close(self._fd)
            self._fd = -1


def _first(values: list[bytes] | None) -> str:
    return "-" if not values else values[0].decode("latin-1")[:512]


