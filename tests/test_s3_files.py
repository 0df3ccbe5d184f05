"""
What only the object store (L{streamsvc.files.s3}) can show, against a
real S3 server (SeaweedFS, C{tests/s3_server.py}) over loopback sockets:
backpressure across both sockets (a client that stops reading stops the
store's socket being read), a client that leaves closes the store request,
a cut upload leaves the old object and no multipart upload behind, an
unreachable or stalled store is a 503/504 or a cut body, never a short
clean one, and the service recovers when the store comes back.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
from itertools import count
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

pytest.importorskip("botocore")

from streamsvc.app import prepare_file_store  # noqa: E402
from streamsvc.config import AuthConfig, Config, ConfigError, FilesConfig, LimitsConfig, ServerConfig  # noqa: E402
from streamsvc.testing import BodySender  # noqa: E402

from test_file_stores import AUTH, TOKEN, StoreSite, s3_config  # noqa: E402
from test_integration import RawClient, wait_for  # noqa: E402

MiB = 1024 * 1024
_prefixes = count(1)


def make_config(tmp_path: Any, s3_server: Any, **s3: Any) -> Config:
    return Config(
        server=ServerConfig(data_dir=str(tmp_path / "data")),
        auth=AuthConfig(tokens=(TOKEN,)),
        limits=LimitsConfig(max_upload_bytes=512 * MiB),
        files=FilesConfig(store="s3"),
        s3=s3_config(s3_server, f"s3files{next(_prefixes)}-{os.getpid()}/", **s3),
    )


@pytest.fixture
def site(tmp_path: Any, s3_server: Any) -> Any:
    site = StoreSite(make_config(tmp_path, s3_server))
    pytest_twisted.blockon(Deferred.fromCoroutine(site.start()))
    yield site
    pytest_twisted.blockon(Deferred.fromCoroutine(site.stop()))


def get_head(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()


async def connect(site: StoreSite, protocol: Any) -> Any:
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", site.port.getHost().port)
    return await connectProtocol(endpoint, protocol)


def the_stream(site: StoreSite) -> Any:
    return next(iter(site.site.open_streams))


@pytest_twisted.ensureDeferred
async def test_a_client_that_stops_reading_stops_the_store_socket(site: StoreSite) -> None:
    """64 MiB object, a client paused after 1 MiB: the server holds one read, the rest waits upstream."""
    size = 64 * MiB
    body = os.urandom(size)
    assert (await site.put("/files/big.bin", body))[0].code == 201
    client = RawClient(get_head("/files/big.bin"), pause_after=1 * MiB)
    await connect(site, client)
    await wait_for(lambda: client.paused and bool(site.site.open_streams))
    stream = the_stream(site)
    producer = stream.producer
    await wait_for(lambda: producer._body is not None and producer._body._paused)  # the store's socket is not read
    pulled = producer._body.received
    # What left the store: the client's 1 MiB, the sockets' buffers on the way, one read here.
    assert pulled < 24 * MiB, pulled
    assert producer.bytes_written < 24 * MiB
    client.resume()
    await client.closed
    assert hashlib.sha256(client.body).digest() == hashlib.sha256(body).digest()
    assert producer.finished


@pytest_twisted.ensureDeferred
async def test_a_client_that_leaves_closes_the_store_request(site: StoreSite) -> None:
    size = 48 * MiB
    assert (await site.put("/files/left.bin", os.urandom(size)))[0].code == 201
    client = RawClient(get_head("/files/left.bin"), pause_after=512 * 1024)
    await connect(site, client)
    await wait_for(lambda: client.paused and bool(site.site.open_streams))
    producer = the_stream(site).producer
    await wait_for(lambda: producer._body is not None)
    body = producer._body
    client.transport.abortConnection()
    await wait_for(lambda: producer.finished)
    await wait_for(lambda: body.transport is None or body.ended)
    received = body.received
    await wait_for(lambda: not site.site.open_streams)
    assert body.received == received < size // 2  # nothing more is fetched into nowhere


@pytest_twisted.ensureDeferred
async def test_a_cut_upload_leaves_the_old_object_and_no_parts(site: StoreSite, s3_server: Any) -> None:
    assert (await site.put("/files/keep.bin", b"the old version"))[0].code == 201
    total = 40 * MiB  # eight parts of 5 MiB
    head = (f"PUT /files/keep.bin HTTP/1.1\r\nHost: x\r\nContent-Length: {total}\r\n"
            f"Authorization: Bearer {TOKEN}\r\n\r\n").encode()
    sender = BodySender(head, total)
    await connect(site, sender)
    await wait_for(lambda: sender.sent >= 16 * MiB, timeout=30)
    prefix = site.config.s3.prefix
    client = s3_server.client()
    await wait_for(lambda: bool(client.list_multipart_uploads(Bucket=s3_server.bucket, Prefix=prefix).get("Uploads")),
                   timeout=30)
    sender.transport.abortConnection()
    await wait_for(lambda: not client.list_multipart_uploads(Bucket=s3_server.bucket, Prefix=prefix).get("Uploads"),
                   timeout=30)
    response, body = await site.request("GET", "/files/keep.bin")
    assert response.code == 200 and body == b"the old version"


@pytest_twisted.ensureDeferred
async def test_a_big_upload_holds_about_two_parts(site: StoreSite) -> None:
    """A 100 MiB body at socket speed: the upload never holds more than a part filling and one in flight."""
    total = 100 * MiB
    head = (f"PUT /files/flat.bin HTTP/1.1\r\nHost: x\r\nContent-Length: {total}\r\n"
            f"Authorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n").encode()
    from streamsvc.files import s3 as s3_module

    seen: list[int] = []
    real_write = s3_module.ObjectUpload.write

    def watching(self: Any, data: bytes) -> None:
        real_write(self, data)
        seen.append(self._filled)

    s3_module.ObjectUpload.write = watching  # type: ignore[method-assign]
    try:
        sender = BodySender(head, total)
        await connect(site, sender)
        await wait_for(lambda: sender.closed, timeout=120)
    finally:
        s3_module.ObjectUpload.write = real_write  # type: ignore[method-assign]
    assert b" 201 " in bytes(sender.received[:20]), bytes(sender.received[:200])
    part = site.config.s3.part_size
    assert max(seen) < 2 * part + 256 * 1024  # one part filling, the next paused at the socket
    response, body = await site.request("GET", "/files/flat.bin", range="bytes=-65536")
    expected = b"".join(bytes([i % 256]) * 65536 for i in range(total // 65536))[-65536:]
    assert response.code == 206 and body == expected


@pytest_twisted.ensureDeferred
async def test_an_unreachable_store_is_a_503_and_the_rest_carries_on(site: StoreSite, s3_server: Any) -> None:
    assert (await site.put("/files/up.txt", b"still here"))[0].code == 201
    s3_server.stop()
    try:
        for method, path in (("GET", "/files/up.txt"), ("GET", "/files/"), ("HEAD", "/files/up.txt")):
            response, body = await site.request(method, path)
            assert response.code == 503, (method, path)
            assert response.headers.getRawHeaders(b"retry-after") == [b"5"]
            if method == "GET":
                assert json.loads(body) == {"error": "the file store is unavailable, try again soon"}
        refused, _ = await site.put("/files/up.txt", b"new")
        assert refused.code == 503
        health, _ = await site.request("GET", "/healthz")
        assert health.code == 200
    finally:
        s3_server.start()
    response, body = await site.request("GET", "/files/up.txt")
    assert response.code == 200 and body == b"still here"


@pytest_twisted.ensureDeferred
async def test_a_store_that_stalls_mid_body_cuts_the_download(tmp_path: Any, s3_server: Any) -> None:
    """The store stops sending (SIGSTOP): after [s3] timeout the client's connection is cut, never finished short."""
    site = await StoreSite(make_config(tmp_path, s3_server, timeout=2)).start()
    try:
        size = 32 * MiB
        assert (await site.put("/files/stall.bin", os.urandom(size)))[0].code == 201
        client = RawClient(get_head("/files/stall.bin"), pause_after=256 * 1024)
        await connect(site, client)
        await wait_for(lambda: client.paused and bool(site.site.open_streams))
        os.killpg(s3_server.proc.pid, signal.SIGSTOP)
        try:
            client.resume()
            await wait_for(lambda: client.closed.called, timeout=20)
        finally:
            os.killpg(s3_server.proc.pid, signal.SIGCONT)
        assert len(client.body) < size
        assert not client.body.endswith(b"0\r\n\r\n")
        await wait_for(lambda: not site.site.open_streams)
        registry = site.site.metrics.registry  # the metrics say why
        assert registry.get_sample_value("streamsvc_streams_total", {"kind": "file", "outcome": "store_failed"}) == 1
    finally:
        await site.stop()


def test_start_up_errors_are_one_line_and_never_show_the_secret(tmp_path: Any, s3_server: Any) -> None:
    config = make_config(tmp_path, s3_server)
    prepare_file_store(config)  # the real bucket: fine
    from s3_server import free_ports

    cases = [
        (dict(bucket="no-such-bucket-here"), "no-such-bucket-here"),
        (dict(endpoint=f"http://127.0.0.1:{free_ports(1)[0]}"), "unreachable"),
        (dict(secret_key="wrong-secret-key-value"), "refused"),
    ]
    for overrides, expected in cases:
        bad = make_config(tmp_path, s3_server, **overrides)
        with pytest.raises(ConfigError) as raised:
            prepare_file_store(bad)
        message = str(raised.value)
        assert expected in message and "\n" not in message, message
        assert bad.s3.secret_key not in message and bad.s3.secret_key not in repr(bad)


@pytest_twisted.ensureDeferred
async def test_objects_stream_as_pull_producers_too(site: StoreSite) -> None:
    """registerProducer(p, False): the same bodies, one chunk per resumeProducing (the PullDriver's)."""
    files = site.site.resource.children[b"files"]
    files.streaming = False
    body = os.urandom(3 * MiB + 5)
    assert (await site.put("/files/pull.bin", body))[0].code == 201
    await site.put("/files/pull/a.txt", b"a")
    whole, got = await site.request("GET", "/files/pull.bin")
    assert whole.code == 200 and got == body
    multi, got = await site.request("GET", "/files/pull.bin", range="bytes=0-9,-10")
    assert multi.code == 206 and body[:10] in got and body[-10:] in got
    listing, got = await site.request("GET", "/files/pull/")
    assert [e["name"] for e in json.loads(got)] == ["a.txt"]
    zipped, got = await site.request("GET", "/files/pull/a.txt", accept_encoding="gzip")
    assert zipped.code == 200 and got == b"a"


@pytest_twisted.ensureDeferred
async def test_an_object_download_pauses_at_a_small_send_buffer(site: StoreSite) -> None:
    """Every byte of an object passes through user space: its client's transport pauses it at 16 KiB."""
    from streamsvc.files.s3 import SLOW_READ

    assert (await site.put("/files/sb.bin", os.urandom(8 * MiB)))[0].code == 201
    client = RawClient(get_head("/files/sb.bin"), pause_after=MiB)
    await connect(site, client)
    await wait_for(lambda: client.paused and bool(site.site.open_streams))
    assert the_stream(site).request.channel.transport.bufferSize == SLOW_READ
    client.resume()
    await client.closed
    assert len(client.body) == 8 * MiB


@pytest_twisted.ensureDeferred
async def test_a_store_connection_lost_mid_range_is_asked_again_for_the_rest(site: StoreSite, s3_server: Any) -> None:
    """The store restarts under a paused download: the rest comes from a new ranged GET, every byte right."""
    size = 48 * MiB
    body = os.urandom(size)
    assert (await site.put("/files/again.bin", body))[0].code == 201
    client = RawClient(get_head("/files/again.bin"), pause_after=MiB)
    await connect(site, client)
    await wait_for(lambda: client.paused and bool(site.site.open_streams))
    producer = the_stream(site).producer
    await wait_for(lambda: producer._body is not None and producer._body._paused)
    first = producer._body
    s3_server.stop()  # its connections go with it
    s3_server.start()
    client.resume()
    await wait_for(lambda: client.closed.called, timeout=60)
    assert first.failure is not None and first.received < size
    assert producer._retries == 1 or producer.finished
    assert hashlib.sha256(client.body).digest() == hashlib.sha256(body).digest()


@pytest_twisted.ensureDeferred
async def test_a_store_that_does_not_answer_is_a_504_within_the_timeout(tmp_path: Any, s3_server: Any) -> None:
    site = await StoreSite(make_config(tmp_path, s3_server, timeout=2)).start()
    try:
        assert (await site.put("/files/slow.txt", b"x"))[0].code == 201
        os.killpg(s3_server.proc.pid, signal.SIGSTOP)
        try:
            started = reactor.seconds()
            response, body = await site.request("GET", "/files/slow.txt")
            took = reactor.seconds() - started
            health, _ = await site.request("GET", "/healthz")
        finally:
            os.killpg(s3_server.proc.pid, signal.SIGCONT)
        assert response.code == 504 and response.headers.getRawHeaders(b"retry-after") == [b"5"]
        assert json.loads(body) == {"error": "the file store did not answer in time, try again soon"}
        assert 1.5 < took < 6, took
        assert health.code == 200
        again, body = await site.request("GET", "/files/slow.txt")
        assert again.code == 200 and body == b"x"
    finally:
        await site.stop()
