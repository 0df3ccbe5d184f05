"""
Zero-copy sends (issue 16, L{streamsvc._sendfile}): over real loopback
sockets the file goes through C{os.sendfile}, ranges and multipart ranges
included, throttled bodies too (at the rate), with the bytes and the
accounting right; gzip, pull mode, C{sendfile = no} and fake transports take
the buffered path. (The
integration tests of C{test_integration} run both ways too: slow reader,
disconnect, truncated file.)
"""

from __future__ import annotations

import gzip
import os
from typing import Any

import pytest
import pytest_twisted
import treq

import streamsvc.files.resource
from streamsvc._sendfile import SendfileProducer, plain_tcp
from streamsvc.config import LimitsConfig, StreamConfig
from test_integration import Server, get_request, raw, slow_reader_gets_everything, wait_for

DATA = os.urandom(3 * 1024 * 1024 + 17)


@pytest.fixture
def calls(monkeypatch: Any) -> dict[str, Any]:
    """Count os.sendfile calls and the bytes they moved; record the producers /files made."""
    seen: dict[str, Any] = {"calls": 0, "bytes": 0, "producers": [], "asked": []}
    real_sendfile = os.sendfile

    def counting(*args: Any) -> int:
        sent = real_sendfile(*args)
        seen["calls"] += 1
        seen["bytes"] += sent
        seen["asked"].append(args[3])
        return sent

    monkeypatch.setattr(os, "sendfile", counting)
    original = streamsvc.files.resource.send_body

    def recording(request: Any, producer: Any, **kwargs: Any) -> Any:
        seen["producers"].append(producer)
        return original(request, producer, **kwargs)

    monkeypatch.setattr(streamsvc.files.resource, "send_body", recording)
    return seen


async def started(tmp_path: Any, **sections: Any) -> Server:
    server = await Server(tmp_path, **sections).start()
    (server.files / "f.bin").write_bytes(DATA)
    (server.files / "notes.txt").write_bytes(b"hello, text " * 5000)
    return server


@pytest_twisted.ensureDeferred
async def test_whole_file_single_and_multipart_ranges_go_through_sendfile(
    tmp_path: Any, calls: dict[str, Any]
) -> None:
    server = await started(tmp_path)
    try:
        response = await treq.get(server.url + "/files/f.bin")
        assert await response.content() == DATA
        assert calls["producers"][-1].zero_copy and calls["bytes"] == len(DATA)
        assert calls["producers"][-1].bytes_written == len(DATA)  # what metrics and the log count
        response = await treq.get(server.url + "/files/f.bin", headers={"Range": "bytes=1000-2000000"})
        assert response.code == 206 and await response.content() == DATA[1000:2000001]
        before = calls["bytes"]
        response = await treq.get(server.url + "/files/f.bin", headers={"Range": "bytes=0-99999,3000000-3099999"})
        body = await response.content()
        assert response.code == 206 and body.count(DATA[:100000]) == 1
        assert body.count(DATA[3000000:3100000]) == 1
        assert calls["bytes"] - before == 200000  # the ranges by sendfile, the part headers by write
        assert response.length == len(body)  # Content-Length: the parts and their headers
        # A body of one chunk goes out by write, with its headers: no producer.
        before, made = calls["bytes"], len(calls["producers"])
        response = await treq.get(server.url + "/files/f.bin", headers={"Range": "bytes=0-65535"})
        assert await response.content() == DATA[:65536]
        assert calls["bytes"] == before and len(calls["producers"]) == made
    finally:
        await server.stop()


@pytest.mark.parametrize(
    "sections, streaming, path, headers",
    [
        ({"stream": StreamConfig(sendfile=False)}, True, "/files/f.bin", {}),
        ({}, False, "/files/f.bin", {}),  # pull mode
        ({}, True, "/files/notes.txt", {"Accept-Encoding": "gzip"}),
    ],
    ids=["sendfile-no", "pull", "gzip"],
)
@pytest_twisted.ensureDeferred
async def test_the_buffered_path_where_sendfile_cannot_or_may_not(
    tmp_path: Any, calls: dict[str, Any], sections: dict[str, Any], streaming: bool, path: str,
    headers: dict[str, str],
) -> None:
    server = await started(tmp_path, **sections)
    server.site.resource.children[b"files"].streaming = streaming
    try:
        response = await treq.get(server.url + path, headers=headers)
        body = await response.content()
        expected = DATA if path.endswith(".bin") else b"hello, text " * 5000
        if body[:2] == b"\x1f\x8b":  # (treq may or may not decode it for us)
            body = gzip.decompress(body)
        assert body == expected
        assert calls["calls"] == 0
        producer = calls["producers"][-1]
        assert not getattr(producer, "zero_copy", False)
    finally:
        await server.stop()


@pytest.mark.parametrize("limit", ["rate_limit", "client_rate_limit"])
@pytest_twisted.ensureDeferred
async def test_a_throttled_body_goes_by_sendfile_at_the_rate(
    tmp_path: Any, calls: dict[str, Any], limit: str
) -> None:
    """Each call sends what the buckets allow (at least a chunk); the stage counts it and holds the rate."""
    from twisted.internet import reactor

    rate = 8 * 1024 * 1024
    server = await started(tmp_path, limits=LimitsConfig(**{limit: rate}))
    try:
        started_at = reactor.seconds()
        response = await treq.get(server.url + "/files/f.bin")
        assert await response.content() == DATA
        elapsed = reactor.seconds() - started_at
        producer = calls["producers"][-1]
        assert producer.zero_copy and calls["bytes"] == len(DATA)
        assert max(calls["asked"]) <= rate // 10  # a bucket's capacity, never a 4 MiB slice
        stage = producer._stage
        assert stage.bytes_written == len(DATA) and stage.delayed > 0
        # 3 MiB at 8 MiB/s, less the bucket's first tenth of a second: >= 0.25 s.
        assert elapsed >= 0.25
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_slow_reader_pauses_the_sendfile_stream_and_gets_every_byte(
    tmp_path: Any, calls: dict[str, Any]
) -> None:
    server = await Server(tmp_path).start()
    size = 64 * 1024 * 1024
    with open(server.files / "big.bin", "wb") as f:
        f.truncate(size)
    try:
        client = await raw(server, get_request("/files/big.bin"), pause_after=1024 * 1024)
        stream = await slow_reader_gets_everything(server, client, size)
        assert stream.producer.zero_copy
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_a_reset_during_sendfile_ends_as_client_gone_with_the_file_closed(
    tmp_path: Any, calls: dict[str, Any], monkeypatch: Any
) -> None:
    """EPIPE/ECONNRESET from sendfile itself: the connection is aborted, the stream stopped."""
    import errno

    server = await started(tmp_path)
    real = os.sendfile

    def resetting(out: int, in_: int, offset: int, count: int) -> int:
        if calls["calls"] >= 1:
            raise ConnectionResetError(errno.ECONNRESET, "reset")
        calls["calls"] += 1
        return real(out, in_, offset, min(count, 65536))

    monkeypatch.setattr(os, "sendfile", resetting)
    try:
        client = await raw(server, get_request("/files/f.bin"))
        await client.closed
        producer = calls["producers"][-1]
        await wait_for(lambda: producer.finished)
        assert producer.file.closed and not server.site.open_streams
        assert len(client.body) == 65536  # what went before the reset, nothing more
    finally:
        await server.stop()


def test_plain_tcp_refuses_what_it_cannot_use() -> None:
    """Fakes, TLS and chunked bodies: no transport, so the producer is a plain FileProducer."""
    from twisted.internet.testing import StringTransport
    from types import SimpleNamespace

    assert plain_tcp(SimpleNamespace(channel=SimpleNamespace(transport=StringTransport()))) is None
    assert plain_tcp(SimpleNamespace(channel=None)) is None
    tls = SimpleNamespace(TLS=True)
    assert plain_tcp(SimpleNamespace(channel=SimpleNamespace(transport=tls), chunked=False)) is None
    assert SendfileProducer.__mro__[1].__name__ == "FileProducer"
