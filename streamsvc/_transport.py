"""
What streamsvc reads from Twisted's transports: the one place that looks at
their private attributes (so that when Twisted changes them there is one
thing to fix), and the host of a peer's address.
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


def host_of(address: Any) -> str:
    """
    The client part of a transport address: the host of an IPv4/IPv6
    address, the whole address otherwise (a UNIX socket's).
    """
    return str(getattr(address, "host", None) or address)


def request_over(request: Any) -> bool:
    """Whether nothing more may be written for C{request}: its client left, or it was answered."""
    return bool(getattr(request, "_disconnected", False)) or bool(request.finished)
