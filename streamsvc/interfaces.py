# -*- test-case-name: tests.test_producers -*-
"""
The contracts every streamsvc body source and stage obeys.

Written as prose, in the manner of L{twisted.web.iweb.IBodyProducer}, because
the hard parts of streaming are not the method signatures but who may call
what, when, and who closes what.
"""

from __future__ import annotations

from zope.interface import Attribute
from twisted.internet.interfaces import IPushProducer


class IStreamProducer(IPushProducer):
    """
    A source of a response body that writes to an L{IConsumer} at the pace
    the consumer allows, and owns whatever it reads from.

    Two registrations, chosen by L{streaming} before L{startProducing}:

      - C{streaming=True} (push): from the reactor turn after
        C{startProducing}, the producer writes chunks on its own until
        C{pauseProducing}; C{resumeProducing} lets it go on. It never loops
        unboundedly inside one reactor turn: after a bounded burst it yields
        to the reactor and continues on the next turn.
      - C{streaming=False} (pull): each C{resumeProducing} writes at most one
        chunk (or starts fetching one, if the source is asynchronous; it is
        written when it arrives, and L{when_ready} says when that is).
        C{pauseProducing} is then meaningless and ignored. Pull producers
        are driven by L{streamsvc.pull.PullDriver}, never by Twisted's
        C{_PullToPush}, whose pause counting stalls them.

    Pause and resume are idempotent in both modes: a TCP transport pauses on
    every write over its high-water mark and resumes once, so the calls are
    not balanced, and a producer must not count them.

    Re-entrancy: C{consumer.write} may call C{pauseProducing},
    C{resumeProducing} or C{stopProducing} synchronously (a TCP transport
    pauses its producer from inside C{write} when its buffer passes the
    high-water mark). Implementations update their state before writing and
    re-check it after.

    Ownership: the producer owns its source (an open file, a generator, a
    cursor). It releases it exactly once: when the body is complete, when the
    source fails, or when C{stopProducing} is called, whichever comes first.
    C{stopProducing} releases it at once, synchronously, and is idempotent.
    C{stopProducing} is the consumer's call and means the consumer is gone
    (the connection was lost); server-side code that wants a stream to end
    early (a timeout, shutdown) stops it through
    L{streamsvc.producers.BodyStream.stop}, which also tells the client.

    Every way out of a step ends the stream: an exception from the source
    (any C{BaseException}, not only C{Exception}) fails the completion
    Deferred; C{KeyboardInterrupt} and C{SystemExit} propagate only after it.

    Completion: the L{Deferred} returned by C{startProducing} fires with
    L{None} when the whole body has been written, fails with the source's
    error if the source fails, and fails with L{StreamStopped} when
    C{stopProducing} is called first. It never fires twice. The producer
    never calls C{registerProducer}, C{unregisterProducer} or C{finish} on its
    consumer: ending the response belongs to L{streamsvc.producers.send_body}.
    """

    length = Attribute(
        "The number of bytes the producer will write, or None when it is not "
        "known in advance (the response is then sent chunked)."
    )

    streaming = Attribute(
        "True to be registered as a push producer, False as a pull producer."
    )

    bytes_written = Attribute("How many bytes have been written to the consumer so far.")

    def startProducing(consumer):
        """
        Start writing the body to C{consumer}.

        @return: a Deferred that fires as described in the interface docstring.
        """

    def when_ready():
        """
        Whether a C{resumeProducing} now would do any work.

        @return: L{None} when it would; otherwise (an asynchronous chunk is
            pending, a throttle is out of tokens) a L{Deferred} that fires,
            with L{None}, once it would, or once the stream has ended. A pull
            driver waits on it instead of calling C{resumeProducing} in a
            busy loop. A stage returns its upstream's answer.
        """
