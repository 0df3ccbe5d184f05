"""
A loopback TCP proxy that cuts one connection mid-request: the cut that a
resumable upload's client must survive, made by a real socket closing.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.protocols import portforward


class CuttingServer(portforward.ProxyServer):
    """Relays to the server, and cuts the connection once C{factory.cut_after} bytes have come from the client."""

    def dataReceived(self, data: bytes) -> None:
        factory = self.factory
        if factory.cut_after is None:
            super().dataReceived(data)
            return
        left = factory.cut_after - factory.seen
        factory.seen += len(data)
        if len(data) < left:
            super().dataReceived(data)
            return
        factory.cut_after = None
        factory.cuts += 1
        if left > 0 and self.peer is not None:
            self.peer.transport.write(data[:left])
        self.transport.abortConnection()
        if self.peer is not None:
            self.peer.transport.abortConnection()


class CuttingProxy(portforward.ProxyFactory):
    """Proxies to C{host:port}; the connection on which the C{cut_after}th byte comes is cut there (once)."""

    protocol = CuttingServer

    def __init__(self, host: str, port: int, cut_after: int | None) -> None:
        super().__init__(host, port)
        self.cut_after = cut_after
        self.seen = 0
        self.cuts = 0
        self.listening: Any = None

    def cut_again(self, after: int) -> None:
        """Cut once more, C{after} bytes from now."""
        self.seen = 0
        self.cut_after = after

    async def start(self) -> str:
        self.listening = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(self)
        return f"http://127.0.0.1:{self.listening.getHost().port}"

    async def stop(self) -> None:
        await self.listening.stopListening()
