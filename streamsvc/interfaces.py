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
        chunk (or starts fetching one, if the source is asynchronous).
        C{pauseProducing} is then meaningless and ignored.

    Re-entrancy: C{consumer.write} may call C{pauseProducing},
    C{resumeProducing} or C{stopProducing} synchronously (a TCP transport
    pauses its producer from inside C{write} when its buffer passes the
    high-water mark). Implementations update their state before writing and
    re-check it after.

    Ownership: the producer owns its source (an open file, a generator, a
    cursor). It releases it exactly once: when the body is complete, when the
    source fails, or when C{stopProducing} is called, whichever comes first.
    C{stopProducing} releases it at once, synchronously, and is idempotent.

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
