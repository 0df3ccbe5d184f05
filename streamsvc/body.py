# -*- test-case-name: tests.test_body -*-
"""
Request bodies, decided when the headers arrive instead of after twisted.web
has read them to the end.

twisted.web reads every request body before any resource sees the request:
into memory under 100 kB, into a temporary file above, and then parses POST
forms from it on the reactor (ANCHORS: twisted#4688, #5511, #4898, #10191).
So a 300 MB upload to C{/healthz} was read, stored and parsed as multipart
before its 405 went out, with every other client waiting.

This module is the first step of streaming bodies (issue 12): no resource
here takes a body yet, so no body is ever kept. L{BodyRequest} decides in
C{gotLength}, the moment the headers are in:

  - a body of known length within L{BodyRequest.max_body_bytes}: read and
    dropped as it arrives (never buffered); the request is then handled as
    usual (a 405 for our GET-only resources), and the connection kept;
  - a longer one, or any body sent with C{Expect: 100-continue}: a JSON 413
    at once, no C{100 Continue}, and the connection closed after it, so
    nothing more of the body is read;
  - a chunked body: counted and dropped; passing the limit is the same 413.

L{BodyChannel} keeps twisted.web's channel consistent when a request is
answered before its body has ended (it would otherwise fail on the rest of
that body), and never sends C{100 Continue} by itself. Sites built by
L{streamsvc.app.build_site} use both, with form parsing off.
"""

from __future__ import annotations

from io import BytesIO

from twisted.web import http

from streamsvc.errors import HTTPError, Request, render_error

#: A body at most this long may be sent to a resource that takes none: it is
#: read and dropped (clients such as curl -d on a wrong URL should get the
#: resource's own answer, not a 413). Anything longer is refused unread.
DEFAULT_MAX_BODY_BYTES = 1024 * 1024


class BodyChannel(http.HTTPChannel):
    """
    An HTTPChannel that lets its request answer before the body has ended.

    When that happens the rest of the body is dropped unparsed and the
    connection closed once the answer is out: reading gigabytes only to
    throw them away is what a refusal is meant to avoid.
    """

    _body_abandoned = False

    def requestDone(self, request: http.Request) -> None:
        if self._transferDecoder is not None:  # answered before the body ended
            self._body_abandoned = True
            self.persistent = False  # super() then closes the connection
        super().requestDone(request)

    def rawDataReceived(self, data: bytes) -> None:
        if not self._body_abandoned:
            super().rawDataReceived(data)

    def allContentReceived(self) -> None:
        if self._body_abandoned:
            # The decoder reached the end of a body already answered: there
            # is no request left to hand it to.
            self._transferDecoder = None
            return
        super().allContentReceived()

    def _send100Continue(self) -> None:
        """Never by itself: L{BodyRequest} decides (a refusal sends none)."""


class BodyRequest(Request):
    """
    A request that never buffers its body and refuses one it will not take
    as soon as the headers say so.

    The longest body read (and dropped) rather than refused is the Site's
    C{max_body_bytes} (C{[limits] max_body_bytes}, set by
    L{streamsvc.app.build_site}), else L{DEFAULT_MAX_BODY_BYTES}.
    """

    _refused = False
    _received = 0

    def gotLength(self, length: int | None) -> None:
        # Never written to: no buffering, and nothing for form parsing.
        self.content = BytesIO()
        expects = self.requestHeaders.getRawHeaders(b"expect")
        self.requestHeaders.removeHeader(b"expect")
        if length == 0:
            return
        if expects is not None or (length is not None and length > self._max_body_bytes()):
            self._refuse("request body not accepted here")

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._received += len(data)
        if self._received > self._max_body_bytes():
            self._refuse("request body not accepted here")

    def _max_body_bytes(self) -> int:
        limit = getattr(self.channel.site, "max_body_bytes", None)
        return DEFAULT_MAX_BODY_BYTES if limit is None else int(limit)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if not self._refused:
            super().requestReceived(command, path, version)

    def _refuse(self, message: str) -> None:
        """
        Answer 413 now, before the body, and close the connection after it.

        The request line is known to the channel only until the body ends, so
        what the response and the access log need is copied from it here.
        """
        self._refused = True
        channel = self.channel
        self.method = channel._command
        self.uri = channel._path
        self.clientproto = channel._version
        self.path = self.uri.partition(b"?")[0]
        channel.persistent = False
        body = render_error(self, HTTPError(413, message, {b"connection": b"close"}))
        self.setHeader(b"date", http.datetimeToString())
        self.write(body)
        self.finish()
