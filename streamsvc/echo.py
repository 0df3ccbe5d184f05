# -*- test-case-name: tests.test_echo -*-
"""
C{POST /echo}: the request body streamed back as the response body while it
is still arriving — the seeds' C{req.pipe(res)}, with flow control both
ways: a client that stops reading the echo stops the server reading its
body, so a sender that never stops costs one buffer, not its body.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest
from zope.interface import implementer

from streamsvc.body import BodyPipe, BodyRequest
from streamsvc.errors import HTTPError, JSONResource
from streamsvc.interfaces import IStreamingBodyResource
from streamsvc.producers import send_body

#: The longest body echoed, by default (the same limit as uploads will have).
DEFAULT_MAX_ECHO_BYTES = 1024 * 1024 * 1024


@implementer(IStreamingBodyResource)
class EchoResource(JSONResource):
    """
    Echoes a POST body: C{Content-Type} and C{Content-Encoding} copied
    (served sandboxed, so an echoed HTML page cannot script this origin),
    C{Content-Length} echoed when the request had one, chunked otherwise.
    """

    isLeaf = True
    #: The bytes go back as they came, coded or not, with their coding named.
    takes_content_coding = True

    def __init__(
        self, *, max_body_bytes: int = DEFAULT_MAX_ECHO_BYTES, clock: IReactorTime | None = None
    ) -> None:
        super().__init__()
        self.max_body_bytes = max_body_bytes
        self.clock = clock

    def body_consumer(self, request: BodyRequest) -> BodyPipe:
        if request.method != b"POST":
            raise HTTPError(405, "method not allowed", {b"allow": b"POST"})
        self._headers(request)
        pipe = BodyPipe(request, length=request.body_length, clock=self.clock)
        send_body(request, pipe, clock=self.clock, kind="echo")
        return pipe

    def render_POST(self, request: IRequest) -> bytes:
        """A POST without a body (the only kind rendered): an empty echo."""
        self._headers(request)
        return b""

    @staticmethod
    def _headers(request: IRequest) -> None:
        content_type = request.getHeader(b"content-type") or b"application/octet-stream"
        request.setHeader(b"content-type", content_type)
        encoding = request.getHeader(b"content-encoding")
        if encoding is not None:
            request.setHeader(b"content-encoding", encoding)
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"content-security-policy", b"sandbox")
        request.setHeader(b"cache-control", b"no-store")
