"""
The one place that looks inside Twisted's transports (private attributes),
so that when Twisted changes them there is one thing to fix.
"""

from __future__ import annotations

from typing import Any


def unsent_bytes(transport: Any) -> int | None:
    """
    How many bytes C{transport} holds that the peer has not taken yet, or
    None when the transport does not say (TLS, tests' fakes). A TCP
    transport (L{twisted.internet.abstract.FileDescriptor}) keeps them in
    C{dataBuffer} (from C{offset}) and C{_tempDataBuffer}.
    """
    try:
        return len(transport.dataBuffer) - transport.offset + transport._tempDataLen
    except (AttributeError, TypeError):
        return None
