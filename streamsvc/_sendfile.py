# -*- test-case-name: tests.test_sendfile -*-
"""
Zero-copy file bodies: C{os.sendfile} from the file straight into the
socket, driven by the transport's own flow control. The only module that
touches Twisted transport internals (issue 16); everything it relies on is
checked by L{plain_tcp} and, where it does not hold, the producer sends the
buffered way instead (same bytes, same tests) rather than break.

What it relies on, of L{twisted.internet.abstract.FileDescriptor} (a TCP
transport):

  - C{socket} (its C{fileno()}) and the unsent-bytes buffer
    (L{streamsvc._transport.unsent_bytes}): a C{sendfile} may only start
    once everything written before it, the response headers first, has gone
    to the kernel, or the bytes would be reordered;
  - the pause path of C{write}: when its buffer is full it sets
    C{producerPaused} and calls C{producer.pauseProducing()} (the channel,
    which pauses the request's producer: the L{BodyStream}, then us), and
    C{doWrite} resumes a paused producer once its buffer is empty. L{_wait}
    takes that path by hand, plus C{startWriting()}, so "the socket would
    block" and "the headers are still buffered" both end in a
    C{resumeProducing} from the reactor when the socket is writable. The
    pause is a real one: the L{BodyStream} counts it and arms the
    C{send_timeout} as for any slow client.
"""

from __future__ import annotations

import errno
import os
from typing import Any

from streamsvc._transport import unsent_bytes
from streamsvc.producers import FileProducer, SourceTruncated

#: At most this much per C{sendfile} call: the kernel takes what fits in the
#: socket buffer anyway; the bound keeps one call short on a fast local peer.
SLICE = 4 * 1024 * 1024


def plain_tcp(consumer: Any) -> Any | None:
    """
    The TCP transport under C{consumer} (a twisted.web request) if a
    C{sendfile} to it is safe: a plain socket (no TLS, no wrapper between),
    the platform has C{os.sendfile}. Else None. (Whether the body is chunked
    is known only once the headers are written: see C{_take_next}.)
    """
    if not hasattr(os, "sendfile"):
        return None
    transport = getattr(getattr(consumer, "channel", None), "transport", None)
    if transport is None or getattr(transport, "TLS", False):
        return None
    try:
        usable = (
            transport.socket.fileno() >= 0
            and transport.producer is not None  # the channel, which resumes us
            and transport.streamingProducer
            and isinstance(transport.producerPaused, bool)
            and callable(transport.startWriting)
        )
    except (AttributeError, OSError):
        return None
    if not usable or unsent_bytes(transport) is None or type(transport).__module__ != "twisted.internet.tcp":
        return None
    return transport


class SendfileProducer(FileProducer):
    """
    A L{FileProducer} that, in push mode to a plain TCP socket, moves the
    file's ranges with C{os.sendfile} and its literal spans (multipart part
    headers) with C{write}. Behind a throttle (L{streamsvc.stages.ThrottleStage})
    each call sends at most what the buckets allow (at least a chunk) and
    the stage counts it, so the rate holds as on the buffered path. Anywhere
    else (pull mode, TLS, a stage such as gzip between it and the request,
    no C{sendfile}) it is exactly a L{FileProducer}, and so it is for a body
    of one chunk.
    C{bytes_written} counts what the kernel took, so metrics, the access
    log and C{send_timeout} stay right.
    """

    __slots__ = ("_stage", "_request", "_transport", "_headers_flushed")

    def startProducing(self, consumer: Any) -> Any:
        # A body of one chunk goes out with its headers in one write: an
        # extra system call and a turn of the reactor would cost more than
        # the copy sendfile saves.
        big = self.length > self._chunk_size
        # Behind a throttle (ThrottleStage) the bytes still go straight to
        # the request's socket; the stage counts them and says how many may go.
        self._stage = consumer if hasattr(consumer, "sent_beside") else None
        self._request = consumer.downstream if self._stage is not None else consumer
        self._transport = plain_tcp(self._request) if self.streaming and big else None
        self._headers_flushed = False
        return super().startProducing(consumer)

    @property
    def zero_copy(self) -> bool:
        """Whether this stream goes through C{sendfile} (known once started)."""
        return getattr(self, "_transport", None) is not None

    def _take_next(self) -> None:
        if self._transport is None:
            super()._take_next()
            return
        if not self._headers_flushed:
            self._headers_flushed = True
            self._consumer.write(b"")  # twisted.web writes the status line and headers now
            if getattr(self._request, "chunked", False):  # framing we cannot bypass
                self._transport = None
                return
        span = self._next_span()
        if span is None:
            self._deliver(None)  # the end of the body
        elif isinstance(span, bytes):
            self._index += 1
            self._deliver(span)  # multipart part headers, by write
        else:
            self._send(span.start + self._done_in_span, span.length - self._done_in_span)

    def _send(self, offset: int, left: int) -> None:
        transport = self._transport
        if unsent_bytes(transport):
            self._wait()  # what was written before must reach the kernel first
            return
        limit = min(left, SLICE)
        if self._stage is not None:
            # What the buckets hold, but at least a chunk, as the buffered
            # path sends a chunk and then waits out the debt it made.
            limit = min(limit, max(self._chunk_size, int(self._stage.allowance())))
        try:
            sent = os.sendfile(transport.socket.fileno(), self._fd, offset, limit)
        except BlockingIOError:
            self._wait()
            return
        except OSError as error:
            if error.errno in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                # The client is gone. Its connection is lost on the next turn
                # (abortConnection), which stops us as for any other body:
                # outcome client_gone, the file closed.
                self.pauseProducing()
                transport.abortConnection()
                return
            raise
        if sent == 0:
            raise SourceTruncated(f"file ended at offset {offset}, {left} bytes before its range's end")
        self._done_in_span += sent
        self.bytes_written += sent
        if self._stage is not None:
            self._stage.sent_beside(sent)  # may pause us until the buckets refill

    def _wait(self) -> None:
        """Paused until the socket is writable and the transport's buffer empty (see the module)."""
        transport = self._transport
        transport.producerPaused = True
        transport.producer.pauseProducing()
        transport.startWriting()
