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


def set_read_size(transport: Any, size: int) -> bool:
    """
    Make a TCP transport read up to C{size} bytes per C{recv} (Twisted's
    default is 64 KiB), whether C{transport} is the connection itself or the
    proxy an HTTP client body protocol is given (C{TransportProxyProducer},
    which keeps it as C{_producer}). For a client that writes a big body to
    disk, fewer and larger reads mean fewer trips through Twisted's protocol
    stack (about 15 Python frames each): a quarter of the user CPU per GiB at
    256 KiB. Returns whether it could; anything else is left as it was.
    """
    tcp = getattr(transport, "_producer", transport)
    if isinstance(getattr(tcp, "bufferSize", None), int) and hasattr(tcp, "doRead"):
        tcp.bufferSize = size
        return True
    return False


def set_send_buffer(transport: Any, size: int) -> bool:
    """
    Make a TCP transport pause its (streaming) producer once more than
    C{size} bytes wait in its own buffer (Twisted's default is 64 KiB). For
    a client that has shown it is slow: what its connection holds in user
    space is then about C{size} twice, not 64 KiB and a write. Returns
    whether it could (a plain TCP transport); anything else is left as it was.
    """
    if isinstance(getattr(transport, "bufferSize", None), int) and hasattr(transport, "doWrite"):
        transport.bufferSize = size
        return True
    return False
