"""
streamsvc behind an C{ssl:} endpoint (issue 16, part 4), with a certificate
made in the test: downloads, ranges and uploads work; file bodies take the
buffered path (no sendfile under TLS) and keep flow control end to end.
"""

from __future__ import annotations

import os
from typing import Any

import pytest_twisted
from twisted.internet import reactor, ssl
from twisted.internet.endpoints import SSL4ClientEndpoint, connectProtocol

import streamsvc.files.resource
from streamsvc.client.http import http_client
from streamsvc.config import AuthConfig
from test_client_tls import tls_server
from test_integration import RawClient, get_request, slow_reader_gets_everything
from tls_certs import make_pki

MiB = 1024 * 1024


@pytest_twisted.ensureDeferred
async def test_download_range_and_upload_over_tls_use_the_buffered_path(tmp_path: Any, monkeypatch: Any) -> None:
    producers: list[Any] = []
    original = streamsvc.files.resource.send_body
    monkeypatch.setattr(streamsvc.files.resource, "send_body",
                        lambda request, producer, **kw: producers.append(producer) or original(request, producer, **kw))
    pki = make_pki(tmp_path / "pki")
    server = await tls_server(tmp_path, pki, auth=AuthConfig(tokens=("t",)))
    try:
        data = os.urandom(3 * MiB + 5)
        (server.files / "f.bin").write_bytes(data)
        client = http_client(reactor, cacert=str(pki.ca))
        base = f"https://localhost:{server.port.getHost().port}/files"
        response = await client.get(base + "/f.bin")
        assert await response.content() == data
        assert not producers[-1].zero_copy and producers[-1].bytes_written == len(data)
        response = await client.get(base + "/f.bin", headers={"Range": "bytes=100-"})
        assert response.code == 206 and await response.content() == data[100:]
        response = await client.put(base + "/up.bin", data=data, headers={"Authorization": "Bearer t"})
        assert response.code == 201
        await response.content()
        assert (server.files / "up.bin").read_bytes() == data
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_a_slow_tls_reader_pauses_the_stream_and_then_gets_every_byte(tmp_path: Any) -> None:
    pki = make_pki(tmp_path / "pki")
    server = await tls_server(tmp_path, pki)
    size = 64 * MiB
    with open(server.files / "big.bin", "wb") as f:
        f.truncate(size)
    try:
        trust = ssl.Certificate.loadPEM(pki.ca.read_bytes())
        endpoint = SSL4ClientEndpoint(reactor, "localhost", server.port.getHost().port,
                                      ssl.optionsForClientTLS("localhost", trust))
        client = RawClient(get_request("/files/big.bin"), pause_after=MiB)
        await connectProtocol(endpoint, client)
        stream = await slow_reader_gets_everything(server, client, size)  # TLS pushes back too
        assert not stream.producer.zero_copy  # (no sendfile under TLS)
    finally:
        await server.stop()
