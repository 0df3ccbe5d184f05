"""
Failures the client puts in one line: its own (L{ClientError}) and the ones
Twisted raises that need words, such as a refused TLS certificate.
"""

from __future__ import annotations

from typing import Any


class ClientError(Exception):
    """A failure worth one line to the user (no traceback)."""


def error_line(failure: Any, url: str | None = None) -> str:
    """
    A failure as one line: ours say it themselves; a connection that could
    not be made names the address it was for (C{url}'s C{HOST:PORT}), then
    the reason (C{cannot connect to 127.0.0.1:9: connection refused}).
    """
    from twisted.internet.error import ConnectError, DNSLookupError

    error = getattr(failure, "value", failure)
    if isinstance(error, ClientError):
        return str(error)
    if isinstance(error, DNSLookupError):
        where = f" to {address_of(url)}" if url else ""
        return f"cannot connect{where}: the host name is not known"
    if isinstance(error, ConnectError):
        where = f" to {address_of(url)}" if url else ""
        return f"cannot connect{where}: {connect_reason(error)}"
    return tls_problem(error) or f"{error.__class__.__name__}: {error}"


def address_of(url: str) -> str:
    """C{HOST:PORT} of an http(s) URL, the port filled in from the scheme."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host = parts.hostname or "?"
    if ":" in host:
        host = f"[{host}]"  # IPv6
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    return f"{host}:{port}"


def connect_reason(error: Any) -> str:
    """
    Twisted's words for a failed connect, short: the OS's reason when it
    gave one (C{connection refused}), else the error's own first words.
    """
    import os

    code = getattr(error, "osError", None)
    if isinstance(code, int):
        return os.strerror(code).lower()
    text = str(error).rstrip(".")
    if error.args and isinstance(error.args[0], str) and error.args[0]:
        text = error.args[0].rstrip(".")
    return text[:1].lower() + text[1:] if text else error.__class__.__name__


_TLS_WAY_OUT = "(--cacert FILE to trust its certificate, -k to skip the check)"


def tls_problem(error: BaseException) -> str | None:
    """
    A failed TLS handshake or name check in words, or None if C{error} is
    not one. treq wraps it (C{ResponseNeverReceived} and its kin carry a
    list of C{reasons}); a retry cannot mend it, so callers do not retry.
    """
    from OpenSSL import SSL

    for reason in getattr(error, "reasons", ()):
        line = tls_problem(getattr(reason, "value", reason))
        if line:
            return line
    if isinstance(error, SSL.Error):
        # [('SSL routines', '', 'certificate verify failed'), ...]: the last words say it
        parts = error.args[0] if error.args and isinstance(error.args[0], list) else []
        details = [part[-1] for part in parts if isinstance(part, tuple) and part]
        return f"TLS: {'; '.join(details) or 'handshake failed'} {_TLS_WAY_OUT}"
    if type(error).__module__.startswith("service_identity"):  # the name check, after the handshake
        mismatch = getattr(error, "errors", None) or [None]
        wanted = getattr(mismatch[0], "mismatched_id", None)
        shown = getattr(wanted, "hostname", None) or getattr(wanted, "ip", None) or "this host"
        if isinstance(shown, bytes):
            shown = shown.decode("ascii", "replace")
        return f"TLS: the certificate is not for {shown} (-k to skip the check)"
    return None
