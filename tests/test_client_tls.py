"""
C{streamsvc-client} over TLS (issue 15): C{--cacert} trusts a certificate
made in the test, C{-k} skips the check, and a failed check is one line that
says what to do.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString

from streamsvc.client.errors import ClientError, error_line
from streamsvc.client.get import download, download_with_retries
from streamsvc.client.http import http_client, load_trust_root
from tls_certs import make_pki


def test_trust_root_errors_are_one_line(tmp_path: Any) -> None:
    with pytest.raises(ClientError, match="^cannot read --cacert .*nope.pem: No such file"):
        load_trust_root(str(tmp_path / "nope.pem"))
    (tmp_path / "empty.pem").write_text("hello\n")
    with pytest.raises(ClientError, match="no PEM certificate"):
        load_trust_root(str(tmp_path / "empty.pem"))
    (tmp_path / "bad.pem").write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(ClientError, match="not a PEM certificate"):
        load_trust_root(str(tmp_path / "bad.pem"))
    pki = make_pki(tmp_path / "pki")
    assert load_trust_root(str(pki.ca)) is not None


async def tls_server(tmp_path: Any, pki: Any, **sections: Any) -> Any:
    from test_integration import Server

    server = Server(tmp_path / "srv", **sections)
    server.port = await serverFromString(
        reactor, f"ssl:0:interface=127.0.0.1:privateKey={pki.server}").listen(server.site)
    return server


async def failure_of(coro: Any) -> str:
    try:
        await coro
    except Exception as error:
        return error_line(error)
    raise AssertionError("did not fail")


@pytest_twisted.ensureDeferred
async def test_get_over_tls_with_cacert_with_k_and_refused_without(tmp_path: Any) -> None:
    pki = make_pki(tmp_path / "pki")
    server = await tls_server(tmp_path, pki)
    try:
        data = os.urandom(2 * 1024 * 1024 + 3)
        (server.files / "f.bin").write_bytes(data)
        url = f"https://localhost:{server.port.getHost().port}/files/f.bin"
        out = str(tmp_path / "f.bin")
        assert await download(http_client(reactor, cacert=str(pki.ca)), url, out) == len(data)
        assert open(out, "rb").read() == data
        os.unlink(out)
        assert await download(http_client(reactor, insecure=True), url, out) == len(data)
        os.unlink(out)
        # the system's trust store does not know our CA: one line, with the way out
        # (and is not retried: a backoff of an hour would hang this test)
        line = await failure_of(download_with_retries(http_client(reactor), url, out, retries=3, backoff=3600))
        assert line.startswith("TLS: certificate verify failed") and "--cacert" in line and "-k" in line
        assert "\n" not in line and not os.path.exists(out)
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_a_certificate_for_another_host_is_refused(tmp_path: Any) -> None:
    pki = make_pki(tmp_path / "pki", hosts=("other.example",), ips=())
    server = await tls_server(tmp_path, pki)
    try:
        (server.files / "f.bin").write_bytes(b"x" * 10)
        url = f"https://localhost:{server.port.getHost().port}/files/f.bin"
        line = await failure_of(download(http_client(reactor, cacert=str(pki.ca)), url, str(tmp_path / "f")))
        assert line.startswith("TLS: the certificate is not for localhost"), line
        # -k accepts it (that is what -k is for)
        assert await download(http_client(reactor, insecure=True), url, str(tmp_path / "f")) == 10
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_put_over_tls(tmp_path: Any) -> None:
    from streamsvc.client.put import upload
    from streamsvc.config import AuthConfig

    pki = make_pki(tmp_path / "pki")
    server = await tls_server(tmp_path, pki, auth=AuthConfig(tokens=("t",)))
    try:
        src = tmp_path / "up.bin"
        src.write_bytes(os.urandom(1024 * 1024 + 1))
        client = http_client(reactor, cacert=str(pki.ca))
        base = f"https://127.0.0.1:{server.port.getHost().port}"
        code, _, _ = await upload(client, str(src), base + "/files/up.bin",
                                  headers={"Authorization": "Bearer t"}, hold=0.2)
        assert code == 201
        assert (server.files / "up.bin").read_bytes() == src.read_bytes()
    finally:
        await server.stop()
