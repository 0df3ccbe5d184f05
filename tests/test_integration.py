"""
Integration tests over real loopback sockets: the behaviours only sockets
show — exact bytes end to end, both producer registrations, backpressure from
a client that stops reading, disconnects, truncation seen by a client.

Waiting here is on real events (bounded polls of observable state), never a
bare sleep standing in for a condition.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from collections.abc import Callable
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, serverFromString
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

import streamsvc.files.resource
from streamsvc.app import build_site, prepare_data_dir
from streamsvc.config import Config, ServerConfig, StreamConfig
from streamsvc.producers import BodySent, IterableProducer, Outcome, send_body
from streamsvc.testing import parse_response, parse_responses, record_resumes

MiB = 1024 * 1024


#: Whether the Servers of this run send file bodies with sendfile; the
#: C{send_path} fixture runs this module's tests once each way.
SEND_PATH = {"sendfile": True}


@pytest.fixture(autouse=True, params=["sendfile", "buffered"])
def send_path(request: Any) -> Any:
    """Every test here against both ways of sending a file (issue 16: same tests, both paths)."""
    SEND_PATH["sendfile"] = request.param == "sendfile"
    yield request.param
    SEND_PATH["sendfile"] = True


class Server:
    """A real Site listening on an ephemeral loopback port."""

    def __init__(
        self,
        data_dir: Any,
        streaming: bool = True,
        extra: dict[bytes, Resource] | None = None,
        **sections: Any,
    ) -> None:
        sections.setdefault("stream", StreamConfig(sendfile=SEND_PATH["sendfile"]))
        self.config = Config(server=ServerConfig(data_dir=str(data_dir)), **sections)
        self.files = data_dir / "files"
        prepare_data_dir(self.config)
        self.site = build_site(self.config, reactor=reactor)
        self.site.resource.children[b"files"].streaming = streaming
        for name, resource in (extra or {}).items():
            self.site.resource.putChild(name, resource)
        self.port: Any = None

    async def start(self) -> Server:
        self.port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(self.site)
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port.getHost().port}"

    async def stop(self) -> None:
        await self.port.stopListening()


class RawClient(Protocol):
    """Sends raw request bytes (no URL normalisation) and records the reply."""

    def __init__(self, request: bytes, pause_after: int | None = None) -> None:
        self.request = request
        self.received = bytearray()
        self.pause_after = pause_after
        self.paused = False
        self.closed: Deferred[Any] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.pause_after is not None and len(self.received) >= self.pause_after and not self.paused:
            self.paused = True
            self.transport.pauseProducing()

    def resume(self) -> None:
        self.paused = False
        self.pause_after = None
        self.transport.resumeProducing()

    def connectionLost(self, reason: Any) -> None:
        self.reason = reason
        self.closed.callback(None)

    @property
    def head(self) -> bytes:
        """The status line and headers received (through the blank line)."""
        return bytes(self.received[: self.received.index(b"\r\n\r\n") + 4])

    @property
    def body(self) -> bytes:
        """What came after the headers."""
        return bytes(self.received[len(self.head):])


async def slow_reader_gets_everything(server: Server, client: RawClient, size: int) -> Any:
    """
    C{client} (paused after its first bytes) pauses the file's stream on
    C{server} through the socket, and the server has read far less than the
    file; resumed, it gets every byte and the file is closed. The stream,
    for checks of the path it took.
    """
    await wait_for(lambda: client.paused and bool(server.site.open_streams))
    stream = next(iter(server.site.open_streams))
    await wait_for(lambda: stream._pauses > 0)  # the socket pushed back: a real pause
    assert stream.producer.bytes_written < 32 * MiB, stream.producer.bytes_written  # buffers, not the file
    client.resume()
    await client.closed
    assert len(client.body) == size
    assert stream.producer.finished and stream.producer.file.closed
    return stream


async def raw(server: Server, request: bytes, pause_after: int | None = None) -> RawClient:
    client = RawClient(request, pause_after)
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", server.port.getHost().port)
    await connectProtocol(endpoint, client)
    return client


def get_request(path: str, *headers: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: x", "Connection: close", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll C{condition} every 20 ms until true; fail after C{timeout} seconds."""
    for _ in range(int(timeout / 0.02)):
        if condition():
            return
        await deferLater(reactor, 0.02, lambda: None)
    raise AssertionError("condition not met in time")


async def settled(value: Callable[[], int], checks: int = 10) -> int:
    """
    Wait until C{value()} stops changing for C{checks} polls in a row.

    Used where the only observable end state is "nothing more happens" (a
    stalled reader). The assertions made afterwards are bounds that hold at
    any moment, so sampling early can only weaken a check, never fail it.
    """
    last, same = value(), 0
    for _ in range(500):
        await deferLater(reactor, 0.02, lambda: None)
        current = value()
        same = same + 1 if current == last else 0
        last = current
        if same >= checks:
            return current
    raise AssertionError("value never settled")


def http_client() -> treq.client.HTTPClient:
    return treq.client.HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))


def open_paths() -> set[str]:
    paths = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            paths.add(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass
    return paths


@pytest.fixture
def capture_producers(monkeypatch: Any) -> list[Any]:
    """Record the producer of every response /files sends."""
    seen: list[Any] = []
    original = streamsvc.files.resource.send_body

    def recording(request: Any, producer: Any, **kwargs: Any) -> Any:
        seen.append((request, producer))
        return original(request, producer, **kwargs)

    monkeypatch.setattr(streamsvc.files.resource, "send_body", recording)
    return seen


@pytest.mark.parametrize("streaming", [True, False], ids=["push", "pull"])
@pytest_twisted.ensureDeferred
async def test_download_exact_hash(tmp_path: Any, streaming: bool) -> None:
    """A 5 MiB download arrives byte-exact, with push and with pull registration."""
    server = await Server(tmp_path, streaming=streaming).start()
    try:
        payload = os.urandom(5 * MiB + 123)
        (server.files / "blob.bin").write_bytes(payload)
        response = await http_client().get(server.url + "/files/blob.bin", unbuffered=True)
        digest = hashlib.sha256()
        await treq.collect(response, digest.update)
        assert response.code == 200
        assert digest.hexdigest() == hashlib.sha256(payload).hexdigest()
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_ranges_and_conditionals_over_http(tmp_path: Any) -> None:
    """206, 304, 412 and 416 as a real client sees them."""
    server = await Server(tmp_path).start()
    try:
        payload = os.urandom(100_000)
        (server.files / "f.bin").write_bytes(payload)
        client = http_client()
        url = server.url + "/files/f.bin"
        r = await client.get(url, headers={"Range": "bytes=-500"})
        assert r.code == 206
        assert await r.content() == payload[-500:]
        etag = r.headers.getRawHeaders("etag")[0]
        r = await client.get(url, headers={"If-None-Match": etag})
        assert r.code == 304
        await r.content()
        r = await client.get(url, headers={"If-Match": '"nope"'})
        assert r.code == 412
        assert "error" in json.loads(await r.content())
        r = await client.get(url, headers={"Range": "bytes=200000-"})
        assert r.code == 416
        assert r.headers.getRawHeaders("content-range") == ["bytes */100000"]
        await r.content()
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_gzip_round_trip(tmp_path: Any) -> None:
    """A compressible file comes back gzipped and chunked, and decompresses to the original."""
    server = await Server(tmp_path).start()
    try:
        text = b"".join(b'{"id": %d, "name": "row"}\n' % i for i in range(200_000))
        (server.files / "rows.ndjson").write_bytes(text)
        client = await raw(server, get_request("/files/rows.ndjson", "Accept-Encoding: gzip"))
        await client.closed
        response = parse_response(bytes(client.received))
        assert response.header("content-encoding") == "gzip"
        assert response.header("content-length") is None
        assert response.complete
        assert gzip.decompress(response.body) == text
        # treq decodes gzip itself: the same download through it is the original text.
        r = await http_client().get(server.url + "/files/rows.ndjson", unbuffered=True)
        body = bytearray()
        await treq.collect(r, body.extend)
        assert bytes(body) == text
    finally:
        await server.stop()


TRAVERSALS = [
    "/files/../secret.txt",
    "/files/%2e%2e/secret.txt",
    "/files/..%2fsecret.txt",
    "/files/..%5csecret.txt",
    "/files/%252e%252e/secret.txt",
    "/files//etc/passwd",
    "/files/%2fetc%2fpasswd",
    "/files/ok.txt%00",
    "/files/link",
    "/files/.hidden",
    "/files/sub/../../secret.txt",
    "/files/../../../../etc/passwd",
]


@pytest_twisted.ensureDeferred
async def test_traversal_over_raw_sockets(tmp_path: Any) -> None:
    """Hostile paths sent byte for byte (no client normalisation) never leave the root."""
    server = await Server(tmp_path).start()
    try:
        (tmp_path / "secret.txt").write_bytes(b"TOP SECRET")
        (server.files / "ok.txt").write_bytes(b"fine")
        (server.files / ".hidden").write_bytes(b"TOP SECRET")
        (server.files / "sub").mkdir()
        os.symlink(tmp_path / "secret.txt", server.files / "link")
        for path in TRAVERSALS:
            client = await raw(server, get_request(path))
            await client.closed
            response = parse_response(bytes(client.received))
            assert response.code in (400, 404), (path, response.code)
            assert b"TOP SECRET" not in client.received
            assert b"root:" not in client.received
        ok = await raw(server, get_request("/files/ok.txt"))
        await ok.closed
        assert parse_response(bytes(ok.received)).body == b"fine"
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_stalled_reader_keeps_memory_bounded(tmp_path: Any, capture_producers: list[Any]) -> None:
    """
    A client that stops reading stops the producer: what the server read is
    bounded by the socket buffers, and its own buffer holds about one chunk.
    """
    server = await Server(tmp_path).start()
    try:
        with open(server.files / "huge.bin", "wb") as f:
            f.truncate(256 * MiB)
        client = await raw(server, get_request("/files/huge.bin"), pause_after=MiB)
        await wait_for(lambda: bool(capture_producers))
        request, producer = capture_producers[0]
        produced = await settled(lambda: producer.bytes_written)
        transport = request.channel.transport
        buffered = len(transport.dataBuffer) - transport.offset + transport._tempDataLen
        assert produced < 32 * MiB, produced
        assert buffered <= 2 * 64 * 1024, buffered
        assert transport.producerPaused  # the socket pushed back, all the way to us
        assert not producer.finished
        client.transport.abortConnection()
        await client.closed
        await wait_for(lambda: str(server.files / "huge.bin") not in open_paths())
        assert producer.finished
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_disconnect_mid_download_closes_file(tmp_path: Any, capture_producers: list[Any]) -> None:
    """A client that vanishes mid-download gets its file closed on the server."""
    server = await Server(tmp_path).start()
    try:
        with open(server.files / "big.bin", "wb") as f:
            f.truncate(128 * MiB)
        path = str(server.files / "big.bin")
        client = await raw(server, get_request("/files/big.bin"), pause_after=256 * 1024)
        await wait_for(lambda: path in open_paths())
        client.transport.abortConnection()
        await client.closed
        await wait_for(lambda: path not in open_paths())
        assert capture_producers[0][1].finished
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_truncated_file_aborts_connection(tmp_path: Any, capture_producers: list[Any]) -> None:
    """A file cut short mid-download ends the connection before Content-Length: never padded."""
    server = await Server(tmp_path).start()
    try:
        size = 64 * MiB
        with open(server.files / "shrinking.bin", "wb") as f:
            f.truncate(size)
        client = await raw(server, get_request("/files/shrinking.bin"), pause_after=MiB)
        await wait_for(lambda: bool(capture_producers))
        producer = capture_producers[0][1]
        produced = await settled(lambda: producer.bytes_written)
        os.truncate(server.files / "shrinking.bin", produced + MiB)
        client.resume()
        await client.closed
        assert f"content-length: {size}".encode() in client.head.lower()
        assert len(client.body) < size
        assert producer.finished
    finally:
        await server.stop()


PLAIN, HEAD, GZIP = ("GET", ()), ("HEAD", ()), ("GET", ("Accept-Encoding: gzip",))
PIPELINES = {"GETx4": [PLAIN] * 4, "GET-HEAD-gzipGETx2": [PLAIN, HEAD, GZIP] * 2}


@pytest.mark.parametrize("sequence", list(PIPELINES))
@pytest.mark.parametrize("streaming", [True, False], ids=["push", "pull"])
@pytest_twisted.ensureDeferred
async def test_pipelined_requests_all_complete(tmp_path: Any, streaming: bool, sequence: str) -> None:
    """
    Pipelined requests on one connection are all answered, complete and
    byte-exact, in both registrations. (With Twisted's own pull adapter the
    second 1 MiB body stopped after 64 KiB: the transport pauses on every
    write over its mark, resumes once, and the adapter counted.)
    """
    server = await Server(tmp_path, streaming=streaming).start()
    try:
        payload = b"".join(b"line %07d %s\n" % (i, os.urandom(8).hex().encode()) for i in range(40_000))
        (server.files / "big.txt").write_bytes(payload)
        steps = PIPELINES[sequence]
        request = b"".join(
            "\r\n".join([f"{method} /files/big.txt HTTP/1.1", "Host: x", *headers, "", ""]).encode()
            for method, headers in steps
        )
        client = await raw(server, request)
        heads = [method == "HEAD" for method, _ in steps]

        def all_complete() -> bool:
            got = parse_responses(bytes(client.received), heads)
            return len(got) == len(steps) and all(r.complete for r in got)

        await wait_for(all_complete)
        for (method, headers), response in zip(steps, parse_responses(bytes(client.received), heads)):
            assert response.code == 200
            if method == "GET":
                assert (gzip.decompress(response.body) if headers else response.body) == payload
        client.transport.loseConnection()
    finally:
        await server.stop()


class Sending(Resource):
    """Answers GET with send_body of the producer the test makes; keeps send_body's Deferreds."""

    isLeaf = True

    def __init__(self, make: Callable[[], Any]) -> None:
        super().__init__()
        self.make = make
        self.sent: list[Deferred[BodySent]] = []

    def render_GET(self, request: Any) -> int:
        request.setHeader(b"content-type", b"application/octet-stream")
        self.sent.append(send_body(request, self.make()))
        return NOT_DONE_YET


@pytest_twisted.ensureDeferred
async def test_server_cancel_ends_the_connection(tmp_path: Any) -> None:
    """
    Cancelling send_body's Deferred mid-body ends the client's connection
    (short of Content-Length), closes the source and reports CANCELLED.
    """
    closed: list[bool] = []

    def source() -> Any:
        try:
            yield b"x" * 65536
            yield Deferred()
        finally:
            closed.append(True)

    resource = Sending(lambda: IterableProducer(source(), length=MiB))
    server = await Server(tmp_path, extra={b"x": resource}).start()
    try:
        client = await raw(server, get_request("/x"))
        await wait_for(lambda: len(client.received) > 65536)
        resource.sent[0].cancel()
        await client.closed
        assert resource.sent[0].result == BodySent(Outcome.CANCELLED, 65536)
        assert not parse_response(bytes(client.received)).complete
        assert closed == [True]
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_pull_async_source_is_idle_while_waiting(tmp_path: Any) -> None:
    """
    A pull-registered producer whose next chunk takes 0.5 s is left alone
    meanwhile: a few resumeProducing calls, not a busy loop (Twisted's adapter
    made some 150,000 in that time).
    """
    calls: list[list[None]] = []

    async def slow() -> Any:
        yield b"first"
        await deferLater(reactor, 0.5, lambda: None)
        yield b"second"

    def make() -> IterableProducer:
        producer = IterableProducer(slow(), streaming=False)
        calls.append(record_resumes(producer))
        return producer

    server = await Server(tmp_path, extra={b"x": Sending(make)}).start()
    try:
        client = await raw(server, get_request("/x"))
        await client.closed
        response = parse_response(bytes(client.received))
        assert response.complete and response.body == b"firstsecond"
        assert 0 < len(calls[0]) < 20
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_a_slow_client_is_given_a_small_send_buffer(tmp_path: Any) -> None:
    """A pause of half a second shows a slow client: its transport then pauses the stream at 16 KiB, not 64."""
    from streamsvc.producers import SLOW_SEND_BUFFER

    server = Server(tmp_path / "data", stream=StreamConfig(sendfile=False, gzip=False))
    server.files.mkdir(parents=True, exist_ok=True)
    (server.files / "big.bin").write_bytes(os.urandom(16 * MiB))
    await server.start()
    try:
        client = await raw(server, get_request("/files/big.bin"), pause_after=MiB)
        await wait_for(lambda: client.paused and bool(server.site.open_streams))
        stream = next(iter(server.site.open_streams))
        transport = stream.request.channel.transport
        await wait_for(lambda: stream._pauses > 0)
        assert transport.bufferSize == 64 * 1024  # a fast client's, so far
        # The client keeps not reading until the stream has been paused for 0.6 s on end.
        await wait_for(lambda: stream._paused_at is not None and reactor.seconds() - stream._paused_at >= 0.6)
        client.resume()
        await wait_for(lambda: transport.bufferSize == SLOW_SEND_BUFFER)
        await client.closed
        assert len(client.body) == 16 * MiB
    finally:
        await server.stop()
