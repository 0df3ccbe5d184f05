"""
Failures the client puts in one line: its own (L{ClientError}) and the ones
Twisted raises that need words, such as a refused TLS certificate.
"""

from __future__ import annotations

from typing import Any


class ClientError(Exception):
    """A failure worth one line to the user (no traceback)."""


def error_line(failure: Any) -> str:
    """A failure as one line: ours say it themselves; connection errors name the address."""
    from twisted.internet.error import ConnectError

    error = getattr(failure, "value", failure)
    if isinstance(error, ClientError):
        return str(error)
    if isinstance(error, ConnectError):
        return f"cannot connect: {str(error).rstrip('.')}"
    return tls_problem(error) or f"{error.__class__.__name__}: {error}"


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
