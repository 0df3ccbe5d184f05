"""
tus 1.0 spoken by a client no one here wrote: tuspy (the tus project's
Python client) against a real Site on a loopback socket. It uploads in
chunks with checksums, is cut mid-request by a proxy and resumes by
itself (HEAD, then PATCH from the server's offset), and resumes from its
stored URL in a later run, after the server restarted.

tuspy is blocking (requests), so it runs in a thread; the reactor serves.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.internet.threads import deferToThread

from streamsvc.config import AuthConfig, LimitsConfig

from cutting_proxy import CuttingProxy
from test_integration import Server

tusclient = pytest.importorskip("tusclient.client")
from tusclient.storage.filestorage import FileStorage  # noqa: E402

TOKEN = "tus-secret"
KiB = 1024


def uploader(url: str, path: str, **options: Any) -> Any:
    client = tusclient.TusClient(url, headers={"Authorization": f"Bearer {TOKEN}"})
    return client.uploader(file_path=path, **options)


def sha256(path: Any) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def start(tmp_path: Any) -> Server:
    server = Server(tmp_path / "data", auth=AuthConfig(tokens=(TOKEN,)),
                    limits=LimitsConfig(max_upload_bytes=64 * 1024 * KiB))
    return await server.start()


@pytest_twisted.ensureDeferred
async def test_tuspy_uploads_in_checked_chunks_to_a_folder(tmp_path: Any) -> None:
    server = await start(tmp_path)
    try:
        source = tmp_path / "report.bin"
        source.write_bytes(os.urandom(3 * 1024 * KiB + 123))
        (server.files / "inbox").mkdir()
        up = uploader(server.url + "/files/inbox/", str(source), chunk_size=512 * KiB, upload_checksum=True,
                      metadata={"filename": "report.bin"})
        await deferToThread(up.upload)
        assert up.url.startswith(server.url + "/uploads/")
        assert sha256(server.files / "inbox" / "report.bin") == sha256(source)
        assert [n for n in os.listdir(tmp_path / "data" / "uploads") if n.endswith(".part")] == []
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_tuspy_resumes_after_a_cut_in_the_middle_of_a_request(tmp_path: Any) -> None:
    server = await start(tmp_path)
    size = 4 * 1024 * KiB
    proxy = CuttingProxy("127.0.0.1", server.port.getHost().port, cut_after=size // 2)
    base = await proxy.start()
    try:
        source = tmp_path / "cut.bin"
        source.write_bytes(os.urandom(size))
        url = base + "/files/cut.bin"
        # One PATCH for the whole file: the cut falls inside it.
        up = uploader(url, str(source), chunk_size=size, retries=5, retry_delay=0.3)
        await deferToThread(up.upload)
        assert proxy.cuts == 1
        assert sha256(server.files / "cut.bin") == sha256(source)
    finally:
        await proxy.stop()
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_tuspy_resumes_from_its_stored_url_after_a_restart(tmp_path: Any) -> None:
    server = await start(tmp_path)
    source = tmp_path / "later.bin"
    source.write_bytes(os.urandom(2 * 1024 * KiB))
    storage_path = str(tmp_path / "tus-urls.json")
    url = server.url + "/files/later.bin"
    number = server.port.getHost().port
    try:
        first = uploader(url, str(source), chunk_size=256 * KiB, store_url=True,
                         url_storage=FileStorage(storage_path))
        await deferToThread(first.upload, 1024 * KiB)  # this run stops half-way
        assert not (server.files / "later.bin").exists()
        await server.stop()
        # The server restarts (a new Site over the same data dir, on the same port).
        server = Server(tmp_path / "data", auth=AuthConfig(tokens=(TOKEN,)),
                        limits=LimitsConfig(max_upload_bytes=64 * 1024 * KiB))
        server.port = await serverFromString(reactor, f"tcp:{number}:interface=127.0.0.1").listen(server.site)
        # (In a thread: with a stored URL, the constructor asks the server for the offset.)
        second = await deferToThread(uploader, url, str(source), chunk_size=256 * KiB, store_url=True,
                                     url_storage=FileStorage(storage_path))
        assert second.url == first.url and second.offset == 1024 * KiB  # found, and asked the server
        await deferToThread(second.upload)
        assert sha256(server.files / "later.bin") == sha256(source)
    finally:
        await server.stop()
