"""
Uploads over real loopback sockets, with the reactor's real thread pool
doing the disk work: big bodies arrive exact and in bounded memory, an
aborted upload leaves the old version, hostile paths sent byte for byte
write nothing outside the root, and curl's own uploads (when curl is here).

Waiting is on observable state (bounded polls), never a bare sleep.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.utils import getProcessOutputAndValue

from streamsvc.config import AuthConfig, LimitsConfig
from streamsvc.files.disk_upload import TEMP_PREFIX
from streamsvc.testing import BodySender, parse_response

from test_integration import RawClient, Server, wait_for

TOKEN = "socket-secret"
MiB = 1024 * 1024


class UploadServer(Server):
    """The integration tests' Site, with uploads on (one token, a 2 GiB limit)."""

    def __init__(self, tmp_path: Any) -> None:
        super().__init__(
            tmp_path / "data",
            auth=AuthConfig(tokens=(TOKEN,)),
            limits=LimitsConfig(max_upload_bytes=2048 * MiB),
        )
        self.root = self.files

    def leftovers(self) -> list[str]:
        return [n for _, _, names in os.walk(self.root) for n in names if n.startswith(TEMP_PREFIX)]


def head(path: str, length: int, *, token: bool = True) -> bytes:
    lines = [f"PUT {path} HTTP/1.1", "Host: x", f"Content-Length: {length}", "Connection: close"]
    if token:
        lines.append(f"Authorization: Bearer {TOKEN}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def sender_digest(total: int) -> bytes:
    """The sha256 of what L{BodySender} sends: 64 KiB runs of one byte value each."""
    digest = hashlib.sha256()
    for i in range(total // 65536):
        digest.update(bytes([i % 256]) * 65536)
    return digest.digest()


def rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def send(server: UploadServer, request_head: bytes, total: int) -> BodySender:
    client = BodySender(request_head, total)
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", server.port.getHost().port)
    await connectProtocol(endpoint, client)
    return client


@pytest_twisted.ensureDeferred
async def test_big_upload_is_exact_and_memory_stays_flat(tmp_path: Any) -> None:
    """256 MiB stored byte for byte; the process grows by far less than the body."""
    server = await UploadServer(tmp_path).start()
    total = 256 * MiB
    try:
        before = peak = rss()
        client = await send(server, head("/files/big.bin", total), total)

        def done() -> bool:
            nonlocal peak
            peak = max(peak, rss())
            return client.closed

        await wait_for(done, timeout=120)
        response = parse_response(bytes(client.received))
        assert response.code == 201, response.body
        assert client.sent == total
        digest = hashlib.sha256()
        with open(server.root / "big.bin", "rb") as stored:
            for block in iter(lambda: stored.read(MiB), b""):
                digest.update(block)
        assert digest.digest() == sender_digest(total)
        assert peak - before < 48 * MiB, f"grew {(peak - before) / MiB:.0f} MiB"
        assert server.leftovers() == []
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_aborted_upload_leaves_the_old_version(tmp_path: Any) -> None:
    server = await UploadServer(tmp_path).start()
    try:
        (server.root / "f.bin").write_bytes(b"the old version")
        client = await send(server, head("/files/f.bin", 64 * MiB), 64 * MiB)
        await wait_for(lambda: client.sent >= 8 * MiB)
        client.transport.abortConnection()
        await wait_for(lambda: server.leftovers() == [])
        assert (server.root / "f.bin").read_bytes() == b"the old version"
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_unauthorised_upload_is_refused_without_reading_it(tmp_path: Any) -> None:
    """No token: a 401 arrives and the connection closes long before 1 GiB is sent."""
    server = await UploadServer(tmp_path).start()
    try:
        client = await send(server, head("/files/x", 1024 * MiB, token=False), 1024 * MiB)
        await wait_for(lambda: client.closed, timeout=30)
        assert parse_response(bytes(client.received)).code == 401
        assert client.sent < 256 * MiB
        assert not (server.root / "x").exists()
    finally:
        await server.stop()


TRAVERSALS = [
    "/files/../outside.txt",
    "/files/%2e%2e/outside.txt",
    "/files/%2E%2E%2Foutside.txt",
    "/files/sub/../../outside.txt",
    "/files/..%5coutside.txt",
    "/files//outside.txt",
    "/files/.outside.txt",
    "/files/%00/outside.txt",
]


@pytest_twisted.ensureDeferred
async def test_traversal_uploads_write_nothing_outside(tmp_path: Any) -> None:
    server = await UploadServer(tmp_path).start()
    try:
        (server.root / "sub").mkdir()
        for path in TRAVERSALS:
            client = RawClient(head(path, 5) + b"EVIL!")
            endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", server.port.getHost().port)
            await connectProtocol(endpoint, client)
            await client.closed
            response = parse_response(bytes(client.received))
            assert response.code in (400, 404, 409), (path, response.code)
        written = [p for p in tmp_path.rglob("*") if p.is_file() and "outside" in p.name]
        assert written == []
    finally:
        await server.stop()


CURL = shutil.which("curl")


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
@pytest_twisted.ensureDeferred
async def test_curl_upload(tmp_path: Any, chunked: bool) -> None:
    """curl -T of 200 MiB (with its Expect: 100-continue), with a length or chunked."""
    server = await UploadServer(tmp_path).start()
    try:
        source = tmp_path / "source.bin"
        digest = hashlib.sha256()
        with open(source, "wb") as out:
            for _ in range(50):
                block = os.urandom(4 * MiB)
                digest.update(block)
                out.write(block)
        args = ["-s", "-o", "/dev/null", "-w", "%{http_code}", "-T", str(source)]
        args += ["-H", f"Authorization: Bearer {TOKEN}", f"{server.url}/files/c/source.bin"]
        if chunked:
            args[:0] = ["-H", "Transfer-Encoding: chunked"]
        out, err, code = await getProcessOutputAndValue(CURL, args, env=os.environ)
        assert (code, out) == (0, b"201"), err
        with open(server.root / "c" / "source.bin", "rb") as stored:
            stored_digest = hashlib.sha256()
            for block in iter(lambda: stored.read(MiB), b""):
                stored_digest.update(block)
        assert stored_digest.digest() == digest.digest()
        assert server.leftovers() == []
    finally:
        await server.stop()


class SendThenRead(BodySender):
    """Sends its whole body before reading anything, as simple clients do."""

    def __init__(self, head: bytes, total: int) -> None:
        super().__init__(head, total, read=False)
        self.error: Any = None

    def resumeProducing(self) -> None:
        super().resumeProducing()
        if self.sent >= self.total and self.paused is False:
            self.transport.resumeProducing()  # all sent: now read

    def connectionLost(self, reason: Any) -> None:
        self.error = reason.value
        super().connectionLost(reason)


@pytest_twisted.ensureDeferred
async def test_refusal_reaches_a_client_that_reads_only_after_sending(tmp_path: Any) -> None:
    """
    The 401 is answered at the headers while 3 MiB of body are still on their
    way; the client reads only once it has sent them all. The server lingers
    (reads and drops the rest) instead of closing on unread bytes, which would
    reset the connection and lose the 401.
    """
    server = await UploadServer(tmp_path).start()
    try:
        client = SendThenRead(head("/files/x", 3 * MiB, token=False), 3 * MiB)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", server.port.getHost().port)
        await connectProtocol(endpoint, client)
        await wait_for(lambda: client.closed, timeout=30)
        assert client.received.startswith(b"HTTP/1.1 401 "), (client.error, bytes(client.received[:80]))
    finally:
        await server.stop()
