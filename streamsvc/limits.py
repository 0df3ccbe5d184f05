# -*- test-case-name: tests.test_limits -*-
"""
Connections protected from slow and hostile clients: timeouts that a
trickle of bytes cannot defeat, connection limits, request size limits
answered with a status instead of a silent close, and HTTP/1.1's message
rules where twisted.web's parser is lenient.

twisted.web has one idle timer, restarted by every byte (so a header sent a
byte every ten seconds is never cut) and switched off while a request is
handled (so a client that stops reading holds its connection forever:
ANCHORS E9). L{GuardedChannel} replaces it with:

  - C{header_timeout}: a deadline, not an inactivity timer: from the
    connection's start, or from the first byte of a later request on a
    kept-alive connection, to the end of its headers. Past it: 408 and close.
  - C{idle_timeout}: a kept-alive connection with no request in flight.
  - C{send_timeout} (in L{streamsvc.producers.BodyStream}): a response whose
    client takes nothing for that long while there is more to send is
    aborted, and its source released.
  - C{body_timeout} (in L{streamsvc.body.BodyRequest}): a request body that
    stops arriving.

and L{ConnectionLimits}: C{max_connections} over the whole server and
C{max_connections_per_client} per address; a connection past them gets a
JSON 503 with C{Retry-After} and is closed.
"""

from __future__ import annotations

import json
import resource
import signal
from typing import Any
from urllib.parse import urlsplit

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from streamsvc._transport import host_of
from streamsvc.body import BodyChannel, site_setting
from streamsvc.errors import HTTPError
from streamsvc.metrics import metrics_of

log = Logger()

#: The defaults of C{[limits]}.
DEFAULT_HEADER_TIMEOUT = 15.0
DEFAULT_IDLE_TIMEOUT = 60.0
DEFAULT_SEND_TIMEOUT = 60.0
DEFAULT_MAX_CONNECTIONS = 1024

#: Descriptors kept for everything but connections: files being served
#: (one per stream, counted within the connections), logs, the listening
#: sockets, the disk threads, the reactor's own.
FD_RESERVE = 64

#: Longest request line, longest header line, all of the head, and header count.
MAX_LINE = 8 * 1024
MAX_HEAD = 16 * 1024
MAX_HEADERS = 100

_REASONS = {
    400: b"Bad Request",
    408: b"Request Timeout",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
    503: b"Service Unavailable",
}


def raw_error(code: int, message: str, *, retry_after: int | None = None) -> bytes:
    """A whole JSON error response, for answers given before any request exists."""
    body = json.dumps({"error": message}).encode("utf-8") + b"\n"
    head = [
        b"HTTP/1.1 %d %s" % (code, _REASONS[code]),
        b"Content-Type: application/json",
        b"X-Content-Type-Options: nosniff",
        b"Cache-Control: no-store",
        b"Content-Length: %d" % (len(body),),
        b"Connection: close",
    ]
    if retry_after is not None:
        head.append(b"Retry-After: %d" % (retry_after,))
    return b"\r\n".join(head) + b"\r\n\r\n" + body


class ConnectionLimits:
    """
    Counts open connections, in all and per client address, and says which
    new ones are admitted. Memory: one counter per address with a
    connection open (an address's entry goes with its last connection).
    """

    def __init__(self, max_connections: int, max_per_client: int = 0) -> None:
        self.max_connections = max_connections
        self.max_per_client = max_per_client
        self.open = 0
        self.rejected = 0
        self._per_client: dict[str, int] = {}

    def admit(self, address: str) -> bool:
        if self.max_connections and self.open >= self.max_connections:
            self.rejected += 1
            return False
        count = self._per_client.get(address, 0)
        if self.max_per_client and count >= self.max_per_client:
            self.rejected += 1
            return False
        self.open += 1
        self._per_client[address] = count + 1
        return True

    def release(self, address: str) -> None:
        self.open -= 1
        count = self._per_client.get(address, 0) - 1
        if count > 0:
            self._per_client[address] = count
        else:
            self._per_client.pop(address, None)


def raise_fd_limit(max_connections: int) -> int:
    """
    Raise this process's soft C{RLIMIT_NOFILE} toward its hard limit, as far
    as C{max_connections} needs (two descriptors a connection: its socket
    and the file it may be serving, plus L{FD_RESERVE}); return the soft
    limit now in force.

    @raise ValueError: when even the hard limit cannot hold that many, with
        a message for the one-line start-up error.
    """
    needed = 2 * max_connections + FD_RESERVE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return soft
    target = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    if soft < needed:
        raise ValueError(
            f"max_connections = {max_connections} needs {needed} file descriptors "
            f"(2 a connection + {FD_RESERVE}), but the hard limit (ulimit -Hn) is {hard}"
        )
    return soft


class GuardedChannel(BodyChannel):
    """
    L{BodyChannel} with the timeouts, limits and message rules above. Its
    settings are the Site's (set by L{streamsvc.app.build_site}); a Site
    without them gets the defaults.
    """

    #: twisted.web's own idle timer is replaced by the timers below.
    timeOut = None
    MAX_LENGTH = MAX_LINE
    totalHeadersSize = MAX_HEAD
    maxHeaders = MAX_HEADERS

    _timer: IDelayedCall | None = None
    _timer_kind = ""
    _admitted_as: str | None = None
    _rejected = False
    _counted = False
    _head_started: float | None = None

    # -- connection ------------------------------------------------------------

    def connectionMade(self) -> None:
        self.timeOut = None  # (the Site sets its own on every channel it builds)
        super().connectionMade()
        site = self.site
        metrics = metrics_of(site)
        limits: ConnectionLimits | None = getattr(site, "connection_limits", None)
        if limits is not None:
            address = host_of(self.transport.getPeer())
            if not limits.admit(address):
                self._rejected = True
                if metrics is not None:
                    metrics.connections_rejected.inc()
                log.info("Connection from {address} refused: over the limit", address=address)
                self._answer_raw(503, "too many connections, try again soon", retry_after=1)
                self.transport.loseConnection()
                return
            self._admitted_as = address
        if metrics is not None:
            metrics.connections_open.inc()
            self._counted = True
        channels = getattr(site, "open_channels", None)
        if channels is not None:
            if getattr(site, "draining", False):
                self._refuse_raw(503, "the server is shutting down")
                return
            channels.add(self)
        self._arm_header_deadline()

    @property
    def busy(self) -> bool:
        """Whether a request is in hand (its head, body or answer), not idle between them."""
        return bool(self.requests) or not self.line_mode or bool(self._buffer)

    def connectionLost(self, reason: Failure) -> None:
        channels = getattr(self.site, "open_channels", None)
        if channels is not None:
            channels.discard(self)
        self._disarm()
        if self._counted:
            self._counted = False
            metrics_of(self.site).connections_open.dec()  # type: ignore[union-attr]
        address, self._admitted_as = self._admitted_as, None
        limits = getattr(self.site, "connection_limits", None)
        if address is not None and limits is not None:
            limits.release(address)
        super().connectionLost(reason)

    # -- timers ---------------------------------------------------------------------

    def _arm(self, kind: str, seconds: float) -> None:
        """
        (Re)start the connection's one timer. A timer still scheduled is
        moved (C{reset}) rather than cancelled and made anew: this runs
        twice a request, and a new DelayedCall each time showed in the
        requests/s (BENCHMARKS.md).
        """
        if seconds <= 0:
            self._disarm()
            return
        self._timer_kind = kind
        timer = self._timer
        if timer is not None and timer.active():
            timer.reset(seconds)
        else:
            self._timer = self.callLater(seconds, self._expired)

    def _arm_header_deadline(self) -> None:
        """A request's head is due: from now, within C{header_timeout}."""
        self._head_started = self.site.reactor.seconds() if hasattr(self.site, "reactor") else None
        self._arm("header", site_setting(self.site, "header_timeout", DEFAULT_HEADER_TIMEOUT))

    def _pause_timer(self) -> None:
        """The timer means nothing for now (a request is in hand); it stays scheduled, to be reset."""
        self._timer_kind = ""

    def _disarm(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _expired(self) -> None:
        self._timer = None
        if not self._timer_kind:
            return  # paused (see _pause_timer): nothing was due
        metrics = metrics_of(self.site)
        if metrics is not None:
            metrics.timeout(self._timer_kind)
        if self._timer_kind == "header":
            log.info("Headers not complete in time from {peer}", peer=host_of(self.transport.getPeer()))
            self._refuse_raw(408, "request headers not complete in time")
        else:
            self.transport.loseConnection()  # idle keep-alive: nothing to say

    def dataReceived(self, data: bytes) -> None:
        if self._rejected:
            self._drop_lingering(data)
            return
        if self._timer_kind == "idle" and self._timer is not None:
            # The first byte of the next request: its headers have a deadline.
            self._arm_header_deadline()
        if self.line_mode and self._bare_lf(data):
            self._refuse_raw(400, "bare LF line ending in the request head")
            return
        super().dataReceived(data)

    def _bare_lf(self, data: bytes) -> bool:
        """
        Whether the line of the head now arriving ends with LF alone.
        twisted.web waits for CRLF, so such a request would hang until a
        timeout; RFC 9112 §2.2 allows refusing it, which is unambiguous.

        Only the head is looked at: what follows its blank line is a body,
        whose LFs are data. A read that starts with the blank line (the last
        header line came in the read before) holds no head at all.
        """
        if b"\n" not in data:
            return False
        pending = self._buffer + data
        if pending.startswith(b"\r\n"):
            return False
        end = pending.find(b"\r\n\r\n")
        head = pending if end < 0 else pending[:end]
        return b"\n" in head.replace(b"\r\n", b"")

    def allHeadersReceived(self) -> None:
        if self._rejected:
            return
        self._pause_timer()
        request = self.requests[-1]
        error = _message_error(request, self._path)
        if error is not None:
            self._stop_parsing()
            request.refuse_at_headers(*error)
            return
        self._path = _origin_form(self._path)
        super().allHeadersReceived()
        if getattr(self.site, "draining", False):
            self.persistent = False  # (super() decided it anew from the request)

    def loseConnection(self) -> None:
        self._disarm()  # closing: no deadline is due any more
        super().loseConnection()

    def allContentReceived(self) -> None:
        if self._rejected:  # answered at the headers: no request to hand it to
            self._transferDecoder = None
            return
        super().allContentReceived()

    def requestDone(self, request: Any) -> None:
        if getattr(self.site, "draining", False):
            self.persistent = False  # shutting down: close once this answer is out
        super().requestDone(request)
        if getattr(self.transport, "disconnecting", True):
            return
        # super() went on with what was buffered (pipelining): a request may
        # be in hand (handled, or its body arriving: not ours to time).
        if not self.persistent or self._handlingRequest or not self.line_mode:
            return
        if self.requests or self._buffer:
            self._arm_header_deadline()  # part of the next head is here
        else:
            self._arm("idle", site_setting(self.site, "idle_timeout", DEFAULT_IDLE_TIMEOUT))

    # -- size limits: a status, not a silent close ------------------------------------

    def lineReceived(self, line: bytes) -> None:
        if self._rejected:
            return  # (LineReceiver's loop over lines already read: see _stop_parsing)
        if self._receivedHeaderSize + len(line) > self.totalHeadersSize:
            self._refuse_raw(431, "request head too large")
            return
        if b"\n" in line:
            self._refuse_raw(400, "bare LF line ending in the request head")
            return
        super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        if getattr(self, "_HTTPChannel__first_line", 1):
            self._refuse_raw(414, "request line too long")
        else:
            self._refuse_raw(431, "request header line too long")

    def headerReceived(self, line: bytes) -> bool:
        if self._rejected:
            return False
        if self._receivedHeaderCount >= self.maxHeaders:
            self._refuse_raw(431, "too many request headers")
            return False
        return bool(super().headerReceived(line))

    def _maybeChooseTransferDecoder(self, header: bytes, data: bytes) -> bool:
        """
        RFC 9112 §6.1: a request's Transfer-Encoding must end in C{chunked},
        else its length cannot be known. twisted.web takes C{identity} as
        "no body", so the bytes sent as a body would be parsed as a second
        request (a smuggling primitive behind a proxy that frames it
        otherwise); and we decode no other coding. Both are a 400.
        """
        if header == b"Transfer-Encoding" and data.strip(b" \t").lower() != b"chunked":
            self._refuse_raw(400, "unsupported Transfer-Encoding (only chunked)")
            return False
        return bool(super()._maybeChooseTransferDecoder(header, data))

    def _respondToBadRequestAndDisconnect(self) -> None:
        """twisted.web's bare C{400 Bad Request}, as our JSON one."""
        self._refuse_raw(400, "malformed request")

    def _stop_parsing(self) -> None:
        """
        Parse nothing more on this connection: one request, one answer.

        twisted.web, having answered a bad head, goes on parsing the lines
        of it already read (its loop stops only at a transport that is
        C{disconnecting}, which a lingering close is not): more header
        callbacks, a second answer, even the dispatch of the refused request
        (ANCHORS E10-like desync). Emptying the buffer ends that loop; the
        guards on C{_rejected} drop whatever arrives later.
        """
        self._rejected = True
        self.persistent = False
        self._buffer = b""
        self._disarm()

    def _refuse_raw(self, code: int, message: str) -> None:
        """
        Refuse the request whose head (or body framing) is malformed, and
        end the connection there: nothing more is parsed, and it closes
        once the answer is out (lingering: see L{BodyChannel.loseConnection}).

        A request whose body is arriving (a malformed chunk) is answered
        through L{streamsvc.body.BodyRequest.fail_body}: its body consumer
        told first (nothing is installed), then the status (or an abort,
        when its answer had begun), logged as the request's own.
        """
        if self._rejected:
            return
        self._stop_parsing()
        self._body_abandoned = True
        request = self.requests[-1] if self.requests else None
        if request is not None and not self.line_mode:
            # (It closes the connection: its answer is the last, or an abort.)
            request.fail_body(HTTPError(code, message, {b"connection": b"close"}))
            return
        self._answer_raw(code, message)
        if request is not None:
            self.requests.remove(request)  # answered here: nothing else will
        self.loseConnection()

    def _answer_raw(self, code: int, message: str, *, retry_after: int | None = None) -> None:
        """
        Write a whole JSON error response, before any request could answer,
        and count and log it as every answer is (L{AccessLog.log_refusal}).
        """
        payload = raw_error(code, message, retry_after=retry_after)
        self.transport.write(payload)
        access = getattr(self.site, "access_log", None)
        if access is not None:
            body = len(payload) - payload.index(b"\r\n\r\n") - 4
            access.log_refusal(self, code, body, self._head_started)


def _message_error(request: Any, target: bytes) -> tuple[int, str] | None:
    """
    What RFC 9112 §3.2 makes a 400 that twisted.web lets through: an
    HTTP/1.1 request without C{Host}, or with more than one.
    """
    hosts = request.requestHeaders.getRawHeaders(b"host")
    if hosts is not None and len(hosts) > 1:
        return 400, "more than one Host header"
    if hosts is None and request.channel._version == b"HTTP/1.1":
        return 400, "Host header required"
    return None


def _origin_form(target: bytes) -> bytes:
    """
    The path and query of an absolute-form target (C{GET http://host/x}),
    which a server must accept (RFC 9112 §3.2.2); any other form as it is.
    """
    if not target[:1] == b"/" and b"://" in target[:16]:
        parts = urlsplit(target)
        path = parts.path or b"/"
        return path + (b"?" + parts.query if parts.query else b"")
    return target


class Drain:
    """
    A graceful stop of a Site: no new connection is served, idle kept-alive
    connections are closed, the requests in hand may finish (their
    connections then close) for up to C{timeout} seconds; then every
    response still streaming is stopped as L{Outcome.SHUTDOWN} (its source
    released, its connection aborted) and every connection left is aborted.

    The Site's C{open_channels} and C{open_streams} (sets that
    L{streamsvc.app.build_site} puts on it) are what it drains.
    """

    def __init__(self, site: Any, clock: Any, timeout: float) -> None:
        self._site = site
        self._clock = clock
        self._timeout = timeout
        self._timer: IDelayedCall | None = None
        self._poll: IDelayedCall | None = None
        self.done: Deferred[None] = Deferred()

    def start(self) -> Deferred[None]:
        site = self._site
        site.draining = True
        # Streams that never end by themselves (live events) are ended
        # first, cleanly, so they do not hold the drain to its timeout.
        for hook in getattr(site, "drain_hooks", ()):
            try:
                hook()
            except Exception:
                log.failure("A drain hook failed")
        for channel in list(site.open_channels):
            if channel.requests:
                channel.persistent = False  # answer what is in hand, then close
            elif not channel.busy:
                channel.transport.loseConnection()
            # else: a request line on its way (twisted.web would drop it on a
            # channel no longer persistent); its headers' end makes it close.
        if self._timeout > 0:
            self._timer = self._clock.callLater(self._timeout, self.abort)
        self._check()
        return self.done

    def _check(self) -> None:
        self._poll = None
        if self.done.called:
            return
        if not self._site.open_channels:
            self._finish()
        elif self._timeout == 0:
            self.abort()
        else:
            self._poll = self._clock.callLater(0.05, self._check)

    def abort(self) -> None:
        """Stop what is left, now (the timeout passed, or a second signal)."""
        from streamsvc.producers import Outcome

        if self.done.called:
            return
        streams = list(self._site.open_streams)
        if streams:
            log.warn("Shutting down: stopping {n} response(s) still streaming", n=len(streams))
        for stream in streams:
            stream.stop(Outcome.SHUTDOWN)
        for channel in list(self._site.open_channels):
            channel.transport.abortConnection()
        self._finish()

    def _finish(self) -> None:
        for call in (self._timer, self._poll):
            if call is not None and call.active():
                call.cancel()
        self._timer = self._poll = None
        if not self.done.called:
            self.done.callback(None)


class DrainService(Service):
    """
    At stop, drains the Site (L{Drain}): the listeners stop at the same
    time (their services are siblings), the requests in hand get up to
    C{shutdown_timeout} seconds, and a second SIGTERM or SIGINT meanwhile
    stops everything at once.
    """

    def __init__(self, site: Any, reactor: Any, timeout: float) -> None:
        self._site = site
        self._reactor = reactor
        self._timeout = timeout

    def stopService(self) -> Any:
        super().stopService()
        drain = Drain(self._site, self._reactor, self._timeout)
        restore = on_second_signal(lambda: self._reactor.callFromThread(drain.abort))
        log.info(
            "Stopping: finishing {n} connection(s), for up to {timeout} s",
            n=len(self._site.open_channels),
            timeout=self._timeout,
        )
        return drain.start().addCallback(self._stopped_cleanly, restore).addCallback(self._close_store)

    def _close_store(self, _: None) -> Any:
        """Once no request can use it: the task store's connections and threads."""
        store = getattr(self._site, "task_store", None)
        if store is None:
            return None
        return store.close().addErrback(lambda f: log.failure("Closing the task store failed", f))

    def _stopped_cleanly(self, _: None, restore: Any) -> None:
        """
        twistd ends a process stopped by a signal by re-raising it (exit
        status 143 for SIGTERM); a stop that went through the drain (whether
        everything finished or what was left was stopped at the timeout or a
        second signal, files closed either way) is the orderly exit issue 13
        asks for, status 0.
        """
        restore()
        if getattr(self._reactor, "_exitSignal", None) is not None:
            self._reactor._exitSignal = None


def on_second_signal(abort: Any) -> Any:
    """
    Have SIGTERM and SIGINT call C{abort} while a stop drains (twistd's
    handlers only stop the reactor, once); return what puts the previous
    handlers back.
    """
    previous: dict[int, Any] = {}
    for number in (signal.SIGTERM, signal.SIGINT):
        try:
            previous[number] = signal.signal(number, lambda *_: abort())
        except ValueError:  # not the main thread: no signals to take
            break

    def restore() -> None:
        for number, handler in previous.items():
            signal.signal(number, handler)

    return restore
