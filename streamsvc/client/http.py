"""
The treq client the commands share: one persistent connection pool (a
resumed download reuses the connection) and the TLS policy that
C{--cacert} and C{-k/--insecure} choose.

Without either, an C{https:} URL is verified as a browser would (Twisted's
L{BrowserLikePolicyForHTTPS}: the platform's trust store, the host name
against the certificate). C{--cacert FILE} trusts the certificates in FILE
I{instead} (as C{curl --cacert}), which is how a self-signed server is
reached safely. C{-k} turns verification off, as C{curl -k} does; the
connection is still encrypted and still sends the host name (SNI).
"""

from __future__ import annotations

import re
from typing import Any

from twisted.internet import ssl
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from streamsvc.client.errors import ClientError

_PEM_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


def load_trust_root(path: str) -> Any:
    """The certificates of a PEM file as a trust root; L{ClientError} if there are none."""
    try:
        with open(path, "rb") as f:
            pem = f.read(4 * 1024 * 1024)  # a bundle of every public CA is ~200 KiB
    except OSError as error:
        raise ClientError(f"cannot read --cacert {path}: {error.strerror}") from None
    try:
        certificates = [ssl.Certificate.loadPEM(block) for block in _PEM_CERTIFICATE.findall(pem)]
    except Exception:
        raise ClientError(f"--cacert {path}: not a PEM certificate") from None
    if not certificates:
        raise ClientError(f"--cacert {path}: no PEM certificate in it")
    return ssl.trustRootFromCertificates(certificates)


@implementer(IOpenSSLClientConnectionCreator)
class _Unverified:
    """One TLS client connection that checks nothing about the peer (C{-k})."""

    def __init__(self, context: Any, hostname: str) -> None:
        self._context, self._hostname = context, hostname

    def clientConnectionForTLS(self, tlsProtocol: Any) -> Any:
        from OpenSSL import SSL

        connection = SSL.Connection(self._context, None)
        if not (isIPAddress(self._hostname) or isIPv6Address(self._hostname)):
            connection.set_tlsext_host_name(self._hostname.encode("idna"))
        connection.set_connect_state()
        return connection


@implementer(IPolicyForHTTPS)
class InsecurePolicy:
    """C{-k/--insecure}: encrypt, but accept any certificate for any host."""

    def __init__(self) -> None:
        # CertificateOptions' defaults (TLS >= 1.2 where offered, its cipher
        # list) with verify=False: only the checking is left out.
        self._context = ssl.CertificateOptions(verify=False).getContext()

    def creatorForNetloc(self, hostname: bytes, port: int) -> _Unverified:
        return _Unverified(self._context, hostname.decode("ascii"))


def tls_policy(*, cacert: str | None = None, insecure: bool = False) -> Any:
    """The policy for C{https:} URLs; C{insecure} wins over C{cacert}, as with curl."""
    if insecure:
        return InsecurePolicy()
    if cacert:
        return BrowserLikePolicyForHTTPS(trustRoot=load_trust_root(cacert))
    return BrowserLikePolicyForHTTPS()


def http_client(reactor: Any, *, cacert: str | None = None, insecure: bool = False) -> Any:
    """A treq L{HTTPClient} with its own persistent pool and the chosen TLS policy."""
    from treq.client import HTTPClient

    pool = HTTPConnectionPool(reactor, persistent=True)
    return HTTPClient(Agent(reactor, contextFactory=tls_policy(cacert=cacert, insecure=insecure), pool=pool))
