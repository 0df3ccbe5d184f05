# -*- test-case-name: tests.test_body -*-
"""
Request bodies, decided when the headers arrive and streamed as they come,
instead of read to the end by twisted.web before any resource sees them.

twisted.web reads every request body before any resource sees the request:
into memory under 100 kB, into a temporary file above, and then parses POST
forms from it on the reactor (ANCHORS: twisted#4688, #5511, #4898, #10191).
So a 300 MB upload to C{/healthz} was read, stored and parsed as multipart
before its 405 went out, with every other client waiting.

L{BodyRequest} decides in C{gotLength}, the moment the headers are in, and
never buffers a body:

  - the resource provides L{IStreamingBodyResource}: its C{body_consumer}
    takes the body chunk by chunk as it arrives (C{100 Continue} is sent
    only once it accepted), or refuses it with an L{HTTPError} answered at
    once; C{pause_body}/C{resume_body} stop and restart reading the socket;
  - any other resource: a body of known length within the Site's
    C{max_body_bytes} (C{[limits]}) is read and dropped as it arrives and the
    request handled as usual (a 405 for our GET-only resources, keeping the
    connection); a longer one, or any sent with C{Expect: 100-continue}, is
    refused at once: with the resource's own error when traversal already
    gave one (a 404) or its method is not allowed (a 405), else a 413. A
    chunked body (no length) is refused at once when that error is known,
    and otherwise counted and dropped, a 413 when it passes the limit.
    (A path behind L{streamsvc.auth.BearerGuard} is not looked into: a long
    body there is a 413, not the 401 the render would give.)

Every refusal closes the connection once answered, so nothing more of the
body is read. L{BodyChannel} keeps twisted.web's channel consistent when a
request is answered before its body has ended, never sends C{100 Continue}
by itself, and keeps the socket paused while a body consumer is behind.
"""

from __future__ import annotations

from collections import deque
from io import BytesIO
from typing import Any
from urllib.parse import unquote_to_bytes

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.http import parse_qs
from zope.interface import implementer

from streamsvc.errors import ErrorPage, HTTPError, Request, allowed_methods, render_error
from streamsvc.interfaces import IBodyConsumer, IStreamingBodyResource
from streamsvc.producers import Chunk, StreamProducer

log = Logger()

#: A body at most this long may be sent to a resource that takes none: it is
#: read and dropped (clients such as curl -d on a wrong URL should get the
#: resource's own answer, not a 413). Anything longer is refused unread.
DEFAULT_MAX_BODY_BYTES = 1024 * 1024

#: How long, and how many bytes, a connection answered before its body
#: ended is still read (and dropped) after the answer, so that the client
#: reads the answer before the close (see L{BodyChannel.loseConnection}).
LINGER_SECONDS = 2.0
LINGER_BYTES = 4 * 1024 * 1024

#: Seconds a body may go without a byte arriving (while we are reading it)
#: before the request fails: 408 if nothing was answered yet, else an abort.
DEFAULT_BODY_TIMEOUT = 60.0


def site_setting(site: Any, name: str, default: float) -> float:
    """A C{[limits]} value L{streamsvc.app.build_site} put on the Site, else C{default}."""
    value = getattr(site, name, None)
    return default if value is None else float(value)


class BodyChannel(http.HTTPChannel):
    """
    An HTTPChannel that lets its request answer before the body has ended,
    and lets a body consumer keep the socket paused.

    When a request is answered before its body ended, the rest of the body
    is dropped unparsed and the connection closed once the answer is out:
    reading gigabytes only to throw them away is what a refusal avoids.
    """

    _body_abandoned = False
    #: While lingering (see L{loseConnection}): the timer that ends it; once
    #: ended, False (never lingers twice).
    _linger: Any = None
    _lingered = 0
    _body_paused = False
    _idle_timeout_saved: float | None = None

    def pause_body(self, *, ours: bool = True) -> None:
        """
        Stop reading the socket for the body consumer. When the wait is
        C{ours} (a slow disk), the channel's idle timeout is off meanwhile;
        when the consumer is behind because the client is (it does not read
        the echo), it stays on.
        """
        self._body_paused = True
        self._networkProducer.pauseProducing()
        if ours and self._idle_timeout_saved is None:
            self._idle_timeout_saved = self.setTimeout(None)

    def resume_body(self) -> None:
        self._body_paused = False
        self._restore_idle_timeout()
        if not self._waitingForTransport and not self._handlingRequest:
            self._networkProducer.resumeProducing()

    def _restore_idle_timeout(self) -> None:
        saved, self._idle_timeout_saved = self._idle_timeout_saved, None
        if saved is not None:
            self.setTimeout(saved)

    def resumeProducing(self) -> None:
        # The send buffer drained. twisted.web would resume reading the
        # socket too (it is not "handling a request" while a body arrives),
        # behind the back of a body consumer that paused it.
        self._waitingForTransport = False
        if self._requestProducer is not None:
            self._requestProducer.resumeProducing()
        if not self._handlingRequest and not self._body_paused:
            self._networkProducer.resumeProducing()

    def requestDone(self, request: http.Request) -> None:
        self._body_paused = False
        self._restore_idle_timeout()  # paused when answered: the timeout comes back
        if self._transferDecoder is not None:  # answered before the body ended
            self._body_abandoned = True
            self.persistent = False  # super() then closes the connection
        super().requestDone(request)

    def rawDataReceived(self, data: bytes) -> None:
        if not self._body_abandoned:
            super().rawDataReceived(data)
        else:
            self._drop_lingering(data)

    def _drop_lingering(self, data: bytes) -> None:
        """Bytes after an early answer: dropped, and counted while lingering."""
        if self._linger:
            self._lingered += len(data)
            if self._lingered > LINGER_BYTES:
                self._end_linger()

    def loseConnection(self) -> None:
        """
        Close; after an answer given before the body ended, close lingering.

        Closing a socket with unread bytes in it makes the kernel send a
        reset, and a client still sending its body may then lose the answer
        (the 401 or 413 it should read) before it reads it. So, as nginx's
        C{lingering_close} does, the answer is sent and our side shut
        (C{loseWriteConnection}: the client sees the end of the answer), and
        what still arrives is read and dropped, for at most L{LINGER_SECONDS}
        and L{LINGER_BYTES}, before the connection is closed.
        """
        shut = getattr(self.transport, "loseWriteConnection", None)
        if not self._body_abandoned or shut is None or self._linger is not None:
            super().loseConnection()
            return
        self._networkProducer.unregisterProducer()
        self.setTimeout(None)
        try:
            shut()
        except NotImplementedError:  # (transports that cannot half-close)
            self.transport.loseConnection()
            return
        self._networkProducer.resumeProducing()
        self._linger = self.callLater(LINGER_SECONDS, self._end_linger)

    def _end_linger(self) -> None:
        linger, self._linger = self._linger, False
        if linger and linger.active():
            linger.cancel()
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure) -> None:
        linger, self._linger = self._linger, False
        if linger and linger.active():
            linger.cancel()
        super().connectionLost(reason)

    def allContentReceived(self) -> None:
        if self._body_abandoned:
            # The decoder reached the end of a body already answered: there
            # is no request left to hand it to.
            self._transferDecoder = None
            return
        # (The last bytes can arrive while paused: give twisted.web back its
        # idle timeout to save and restore around the response, as usual.)
        self._restore_idle_timeout()
        super().allContentReceived()

    def _send100Continue(self) -> None:
        """Never by itself: L{BodyRequest} decides (a refusal sends none)."""


class BodyRequest(Request):
    """
    A request that never buffers its body: it streams it to the resource
    that takes it, drops a small one, or refuses it when the headers say so.

    The longest body dropped rather than refused (for resources that take
    none) is the Site's C{max_body_bytes} (C{[limits] max_body_bytes}, set by
    L{streamsvc.app.build_site}), else L{DEFAULT_MAX_BODY_BYTES}.
    """

    #: The body's Content-Length as the headers gave it (None: chunked).
    body_length: int | None = 0

    _refused = False
    _received = 0
    _limit = 0
    _timeout = DEFAULT_BODY_TIMEOUT
    _consumer: IBodyConsumer | None = None
    _body_ended = False
    _stall: IDelayedCall | None = None

    # -- the headers are in -------------------------------------------------

    def gotLength(self, length: int | None) -> None:
        # Never written to: no buffering, and nothing for form parsing.
        self.content = BytesIO()
        reactor = getattr(getattr(self.channel, "site", None), "reactor", None)
        if reactor is not None:
            self.started_at = reactor.seconds()  # for the access log's duration
        expect = self.requestHeaders.getRawHeaders(b"expect")
        self.requestHeaders.removeHeader(b"expect")
        # RFC 9110 §10.1.1: only 100-continue is defined, and only from HTTP/1.1.
        expects = (
            expect is not None
            and b"100-continue" in (v.strip().lower() for v in b",".join(expect).split(b","))
            and self.channel._version == b"HTTP/1.1"
        )
        self.body_length = length
        if length == 0:
            return
        self._learn_request_line()
        self._timeout = site_setting(self.site, "body_timeout", DEFAULT_BODY_TIMEOUT)
        resource = self.site.getResourceFor(self)
        if IStreamingBodyResource.providedBy(resource):
            self._limit = int(resource.max_body_bytes)
            if length is not None and length > self._limit:
                self._refuse(HTTPError(413, "request body too large"))
                return
            if not getattr(resource, "takes_content_coding", False) and _content_coded(self):
                # Nobody here decodes one: an upload would store the coded
                # bytes, an import read them as text (RFC 9110 §15.5.16).
                self._refuse(HTTPError(415, "Content-Encoding is not supported here: send the body unencoded"))
                return
            try:
                self._consumer = resource.body_consumer(self)
            except HTTPError as error:
                self._refuse(error)
                return
            except Exception:
                log.failure("body_consumer of {resource!r} failed", resource=resource)
                self._refuse(HTTPError(500, "internal server error"))
                return
            if self._consumer is not None:
                if expects and not self.startedWriting and not self.finished:
                    self.channel.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                self._watch_for_stall()
                return
            # Declined (a method that takes no body there): as any resource.
        self._limit = int(site_setting(self.site, "max_body_bytes", DEFAULT_MAX_BODY_BYTES))
        refusal = _early_error(resource, self)
        if refusal is not None and (expects or length is None or length > self._limit):
            self._refuse(refusal)
        elif expects or (length is not None and length > self._limit):
            self._refuse(HTTPError(413, "request body not accepted here"))
        else:
            self._watch_for_stall()

    def refuse_at_headers(self, code: int, message: str) -> None:
        """
        Answer C{code} at the end of the headers, before C{gotLength} (a
        message L{streamsvc.limits.GuardedChannel} finds malformed), and
        close the connection once answered.
        """
        self._learn_request_line()
        self.channel.persistent = False
        self._refuse(HTTPError(code, message, {b"connection": b"close"}))

    def _learn_request_line(self) -> None:
        """
        What C{requestReceived} and C{process} would set, set now: the
        request line is known only to the channel until the body has ended.
        """
        channel = self.channel
        self.method = channel._command
        self.uri = channel._path
        self.clientproto = channel._version
        self.path, question, query = self.uri.partition(b"?")
        self.args = parse_qs(query, 1) if question else {}
        self.site = channel.site
        self.prepath = []
        self.postpath = list(map(unquote_to_bytes, self.path[1:].split(b"/")))
        self.setHeader(b"date", http.datetimeToString())

    def _watch_for_stall(self) -> None:
        """(Re)start the body timeout: no byte for that long fails the request."""
        self._stop_watching()
        if self._refused or self._body_ended or self.finished or getattr(self, "channel", None) is None:
            return
        if self._timeout <= 0:
            return  # body_timeout = 0: off
        self._stall = self.channel.site.reactor.callLater(self._timeout, self._stalled)

    def _stop_watching(self) -> None:
        stall, self._stall = self._stall, None
        if stall is not None and stall.active():
            stall.cancel()

    def _stalled(self) -> None:
        self._stall = None
        if getattr(self.channel.transport, "disconnecting", False):
            return  # closing already (the channel's idle timeout): connectionLost follows
        metrics = getattr(self.site, "metrics", None)
        if metrics is not None:
            metrics.timeout("body")
        self.fail_body(HTTPError(408, "request body timed out"))

    # -- the body ------------------------------------------------------------

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused or self._body_ended:
            return
        self._received += len(data)
        if self._received > self._limit:
            self.fail_body(HTTPError(413, "request body too large"))
            return
        if self._stall is not None:
            self._stall.reset(self._timeout)
        if self._consumer is not None:
            self._call_consumer("write", data)

    def _call_consumer(self, name: str, *args: Any) -> None:
        """A consumer callback; if it fails, the request does (a 500, or an abort)."""
        try:
            getattr(self._consumer, name)(*args)
        except Exception:
            log.failure("Body consumer {name} failed for {uri}", name=name, uri=self.uri)
            if not self._body_ended:
                self.fail_body(HTTPError(500, "internal server error"))
            elif not self.finished and getattr(self, "channel", None) is not None:
                self.channel.transport.abortConnection()

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        self._stop_watching()
        if self._refused:
            return
        if self._consumer is not None:
            self._body_ended = True
            self._call_consumer("body_done")  # the resource answers from there
            return
        super().requestReceived(command, path, version)

    def connectionLost(self, reason: Failure) -> None:
        # First marked gone (a response in progress then ends as CLIENT_GONE),
        # then the body consumer told.
        self._stop_watching()
        super().connectionLost(reason)
        self._end_body(reason)
        # A response that never finished is logged all the same (twisted.web
        # logs only in finish()), once its stream, if any, has ended.
        access = getattr(getattr(self, "site", None), "access_log", None)
        if access is not None and not self.finished and hasattr(self, "method"):
            access.log(self, gone=True)

    def finish(self) -> None:
        super().finish()
        # Answered before the body ended (a refusal, or a consumer that
        # answers early): the body will not come, and nothing may wait for it.
        self._stop_watching()
        self._end_body(None)

    def _end_body(self, reason: Failure | None) -> None:
        """Tell the consumer, if one still waits, that the body ends with C{reason} (None: answered before it did)."""
        consumer = self._consumer
        if consumer is not None and not self._body_ended:
            self._body_ended = True
            if reason is None:
                reason = Failure(HTTPError(400, "answered before the body ended"))
            try:
                consumer.body_failed(reason)
            except Exception:
                log.failure("Body consumer body_failed failed for {uri}", uri=self.uri)

    def pause_body(self) -> None:
        """
        Stop reading the body from the socket until L{resume_body}. The body
        timeout is suspended meanwhile: the wait is ours, not the client's.
        """
        self._pause_body(ours=True)

    def pause_body_for_client(self) -> None:
        """
        Stop reading the body because the consumer is behind for the
        client's sake (the echo it does not read): the timeouts keep running.
        """
        self._pause_body(ours=False)

    def _pause_body(self, *, ours: bool) -> None:
        channel = getattr(self, "channel", None)
        if ours:
            self._stop_watching()
        if isinstance(channel, BodyChannel):
            channel.pause_body(ours=ours)

    def resume_body(self) -> None:
        channel = getattr(self, "channel", None)
        if isinstance(channel, BodyChannel):
            channel.resume_body()
        if self._stall is None:
            self._watch_for_stall()

    # -- refusals ------------------------------------------------------------

    def fail_body(self, error: HTTPError) -> None:
        """
        The body failed (too long, stalled), or its consumer gave up on it
        (a disk error, a digest that does not match): the consumer is told
        first (a response it streams answers C{error} itself, or is
        aborted), then whatever is still unanswered gets C{error}, or an
        abort. Public for consumers: it answers and stops the reading.
        """
        self._stop_watching()
        self._end_body(Failure(error))
        if self.finished or getattr(self, "channel", None) is None:
            return
        if not self.startedWriting:
            self._refuse(error)
        else:
            self._refused = True
            self.channel.transport.abortConnection()

    def _refuse(self, error: HTTPError) -> None:
        """
        Answer C{error} now; while the body is still to come, close the
        connection after it (once the body has ended, the connection is
        as reusable as after any answer).
        """
        self._refused = True
        self._stop_watching()
        headers = dict(error.headers)
        # The channel knows whether body bytes are still to come (it drops
        # its decoder at the body's end); _body_ended may already say so
        # for a consumer just told of the failure.
        if getattr(self.channel, "_transferDecoder", None) is not None:
            self.channel.persistent = False
            headers[b"connection"] = b"close"
        body = render_error(self, HTTPError(error.code, error.message, headers, problem=error.problem))
        self.write(body)
        self.finish()


def _content_coded(request: BodyRequest) -> bool:
    """Whether the body has a Content-Encoding other than C{identity}."""
    values = request.requestHeaders.getRawHeaders(b"content-encoding")
    if values is None:
        return False
    codings = (coding.strip().lower() for coding in b",".join(values).split(b","))
    return any(coding not in (b"", b"identity") for coding in codings)


def _early_error(resource: Any, request: BodyRequest) -> HTTPError | None:
    """
    The error a resource that takes no body would answer anyway, known
    before rendering: what traversal gave (401, 404), or a 405.
    """
    if isinstance(resource, ErrorPage):
        return resource.error
    allowed = allowed_methods(resource)
    method = request.method.decode("ascii", "replace")
    if allowed is not None and method not in allowed:
        return HTTPError(
            405, "method not allowed", {b"allow": ", ".join(sorted(allowed)).encode("ascii")}
        )
    return None


@implementer(IBodyConsumer)
class BodyPipe(StreamProducer):
    """
    A request body as a producer: what arrives is written on at the pace
    the consumer downstream (a response) allows.

    At most C{high_water} bytes wait here; past that the request stops
    reading the socket (C{pause_body}) until they have been written on, so
    a client that sends faster than it reads back holds one buffer, not the
    body. C{length} is the body's Content-Length (None when chunked).
    """

    def __init__(
        self, request: BodyRequest, *, length: int | None, high_water: int = 64 * 1024, **pacing: Any
    ) -> None:
        super().__init__(**pacing)
        self.length = length
        self._request = request
        self._high_water = high_water
        self._queue: deque[bytearray] = deque()
        self._queued = 0
        self._body_paused = False
        self._ended = False
        self._failure: Failure | None = None
        self._waiting: Deferred[bytes | None] | None = None

    # IBodyConsumer, for the request

    def write(self, data: bytes) -> None:
        if self.finished:
            return
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.callback(data)
            return
        if self._queue and len(self._queue[-1]) + len(data) <= self._high_water:
            self._queue[-1] += data  # one buffer, however small the chunks
        else:
            self._queue.append(bytearray(data))
        self._queued += len(data)
        if self._queued > self._high_water and not self._body_paused:
            self._body_paused = True
            # Behind because the response is: the client's wait, timed as such.
            self._request.pause_body_for_client()

    def body_done(self) -> None:
        self._ended = True
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.callback(None)

    def body_failed(self, reason: Failure) -> None:
        self._failure = reason
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.errback(reason)
        else:
            self._fail(reason)

    # StreamProducer

    def _next_chunk(self) -> Chunk:
        if self._queue:
            data = bytes(self._queue.popleft())
            self._queued -= len(data)
            if self._body_paused and self._queued <= self._high_water // 2:
                self._body_paused = False
                self._request.resume_body()
            return data
        if self._failure is not None:
            self._failure.raiseException()
        if self._ended:
            return None
        self._waiting = Deferred()
        return self._waiting

    def _release(self) -> None:
        self._queue.clear()
        self._queued = 0
