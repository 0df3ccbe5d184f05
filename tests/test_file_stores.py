"""
The file-store contract (L{streamsvc.interfaces.IFileStore}) as a client of
C{/files} sees it, run against both stores: the local disk and a real
S3-compatible server (SeaweedFS, C{tests/s3_server.py}). The same requests,
the same answers: downloads whole and in ranges, conditionals, gzip,
download names, listings with awkward names, uploads (one part and
multipart), digests, preconditions, folders and deletes.

Over real loopback sockets, with the Site L{streamsvc.app.build_site}
makes from a L{Config} naming the store: what an operator runs.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from base64 import b64encode
from itertools import count
from typing import Any
from urllib.parse import quote

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers

from streamsvc.app import build_site, prepare_data_dir
from streamsvc.config import AuthConfig, Config, FilesConfig, LimitsConfig, S3Config, ServerConfig

TOKEN = "store-contract-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MiB = 1024 * 1024
_prefixes = count(1)


def s3_config(s3_server: Any, prefix: str, **overrides: Any) -> S3Config:
    from s3_server import ACCESS_KEY, REGION, SECRET_KEY

    values = dict(endpoint=s3_server.endpoint, bucket=s3_server.bucket, region=REGION, access_key=ACCESS_KEY,
                  secret_key=SECRET_KEY, prefix=prefix, part_size=5 * MiB, timeout=10)
    values.update(overrides)
    return S3Config(**values)


class StoreSite:
    """A listening Site over one store, and a treq client for it."""

    def __init__(self, config: Config) -> None:
        self.config = config
        prepare_data_dir(config)
        self.site = build_site(config, reactor=reactor)
        self.port: Any = None
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.http = treq.client.HTTPClient(Agent(reactor, pool=self.pool))

    async def start(self) -> StoreSite:
        self.port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(self.site)
        return self

    async def stop(self) -> None:
        await self.pool.closeCachedConnections()
        await self.port.stopListening()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port.getHost().port}{path}"

    async def request(self, method: str, path: str, body: bytes | None = None, **headers: str) -> tuple[Any, bytes]:
        response = await self.http.request(method, self.url(path), headers={k.replace("_", "-"): v for k, v in headers.items()},
                                           data=body, allow_redirects=False)
        return response, await response.content()

    async def put(self, path: str, body: bytes, **headers: str) -> tuple[Any, bytes]:
        return await self.request("PUT", path, body, **AUTH, **headers)


@pytest.fixture(params=["local", "s3"])
def store_kind(request: Any) -> str:
    if request.param == "s3":
        pytest.importorskip("botocore")
    return request.param


@pytest.fixture
def config(store_kind: str, tmp_path: Any, request: Any) -> Config:
    sections: dict[str, Any] = dict(
        server=ServerConfig(data_dir=str(tmp_path / "data")),
        auth=AuthConfig(tokens=(TOKEN,)),
        limits=LimitsConfig(max_upload_bytes=64 * MiB),
    )
    if store_kind == "s3":
        s3_server = request.getfixturevalue("s3_server")
        sections["files"] = FilesConfig(store="s3")
        sections["s3"] = s3_config(s3_server, f"contract{next(_prefixes)}-{os.getpid()}/")
    return Config(**sections)


@pytest.fixture
def site(config: Config) -> Any:
    site = StoreSite(config)
    pytest_twisted.blockon(Deferred.fromCoroutine(site.start()))
    yield site
    pytest_twisted.blockon(Deferred.fromCoroutine(site.stop()))


def header(response: Any, name: str) -> str | None:
    values = response.headers.getRawHeaders(name.encode("ascii"))
    return values[0].decode("latin-1") if values else None


BODY = bytes(range(256)) * 400  # 100 KiB: more than one chunk
TEXT = b"a line of text that compresses well\n" * 3000


@pytest_twisted.ensureDeferred
async def test_put_get_head_and_replace(site: StoreSite) -> None:
    created, answer = await site.put("/files/dir/data.bin", BODY)
    assert created.code == 201, answer
    document = json.loads(answer)
    assert document["path"] == "dir/data.bin" and document["size"] == len(BODY)
    assert header(created, "location") == "/files/dir/data.bin"
    assert header(created, "repr-digest") == "sha-256=:" + b64encode(hashlib.sha256(BODY).digest()).decode() + ":"
    etag = header(created, "etag")

    got, body = await site.request("GET", "/files/dir/data.bin")
    assert got.code == 200 and body == BODY
    assert header(got, "etag") == etag and not etag.startswith("W/")
    assert got.length == len(BODY)  # (twisted's client keeps Content-Length as .length)
    assert header(got, "accept-ranges") == "bytes" and header(got, "last-modified")
    head, nothing = await site.request("HEAD", "/files/dir/data.bin")
    assert head.code == 200 and nothing == b""
    assert header(head, "etag") == etag

    replaced, _ = await site.put("/files/dir/data.bin", b"new bytes")
    assert replaced.code == 204
    assert header(replaced, "etag") != etag
    got, body = await site.request("GET", "/files/dir/data.bin")
    assert body == b"new bytes" and header(got, "etag") == header(replaced, "etag")


@pytest_twisted.ensureDeferred
async def test_ranges_single_suffix_multi_and_unsatisfiable(site: StoreSite) -> None:
    await site.put("/files/r.bin", BODY)
    part, body = await site.request("GET", "/files/r.bin", range="bytes=1000-1999")
    assert part.code == 206 and body == BODY[1000:2000]
    assert header(part, "content-range") == f"bytes 1000-1999/{len(BODY)}"
    tail, body = await site.request("GET", "/files/r.bin", range="bytes=-300")
    assert tail.code == 206 and body == BODY[-300:]
    multi, body = await site.request("GET", "/files/r.bin", range="bytes=0-9,50000-50009")
    assert multi.code == 206
    assert header(multi, "content-type").startswith("multipart/byteranges; boundary=")
    assert BODY[0:10] in body and BODY[50000:50010] in body
    assert f"Content-Range: bytes 50000-50009/{len(BODY)}".encode() in body
    wrong, _ = await site.request("GET", "/files/r.bin", range="bytes=999999-")
    assert wrong.code == 416 and header(wrong, "content-range") == f"bytes */{len(BODY)}"
    stale, body = await site.request("GET", "/files/r.bin", range="bytes=0-9", if_range='"not-the-tag"')
    assert stale.code == 200 and body == BODY


@pytest_twisted.ensureDeferred
async def test_conditionals(site: StoreSite) -> None:
    created, _ = await site.put("/files/c.txt", b"conditional")
    etag = header(created, "etag")
    same, body = await site.request("GET", "/files/c.txt", if_none_match=etag)
    assert same.code == 304 and body == b""
    refused, body = await site.request("GET", "/files/c.txt", if_match='"other"')
    assert refused.code == 412 and json.loads(body) == {"error": "precondition failed"}
    matched, body = await site.request("GET", "/files/c.txt", if_match=etag)
    assert matched.code == 200 and body == b"conditional"

    again, body = await site.put("/files/c.txt", b"x", if_none_match="*")
    assert again.code == 412, body
    lost, _ = await site.put("/files/c.txt", b"x", if_match='"other"')
    assert lost.code == 412
    won, _ = await site.put("/files/c.txt", b"updated", if_match=etag)
    assert won.code == 204
    _, body = await site.request("GET", "/files/c.txt")
    assert body == b"updated"
    fresh, _ = await site.put("/files/new.txt", b"first", if_none_match="*")
    assert fresh.code == 201


@pytest_twisted.ensureDeferred
async def test_gzip_for_text_and_download_names(site: StoreSite) -> None:
    created, _ = await site.put("/files/notes.txt", TEXT)
    # With the plain Agent: treq's client would decode it (and drop Content-Encoding).
    zipped = await Agent(reactor, pool=site.pool).request(
        b"GET", site.url("/files/notes.txt").encode(), Headers({b"accept-encoding": [b"gzip"]}))
    body = await treq.content(zipped)
    assert header(zipped, "content-encoding") == "gzip"
    assert header(zipped, "etag") == "W/" + header(created, "etag")
    assert gzip.decompress(body) == TEXT and len(body) < len(TEXT) // 10
    named, body = await site.request("GET", "/files/notes.txt?download=1")
    assert header(named, "content-disposition") == 'attachment; filename="notes.txt"; filename*=UTF-8\'\'notes.txt'
    assert body == TEXT


AWKWARD = ["with space.txt", "hash#sign.txt", "per%cent.txt", "ünïcødé ✓.txt"]


@pytest_twisted.ensureDeferred
async def test_listing_round_trips_awkward_names(site: StoreSite) -> None:
    for name in AWKWARD:
        response, _ = await site.put("/files/awk/" + quote(name), name.encode())
        assert response.code == 201, name
    await site.put("/files/awk/sub/inner.txt", b"inner")
    listing, body = await site.request("GET", "/files/awk/")
    assert listing.code == 200 and header(listing, "content-type") == "application/json"
    entries = json.loads(body)
    names = {e["name"]: e for e in entries}
    assert set(names) == {*AWKWARD, "sub"}
    assert names["sub"]["type"] == "dir" and names["sub"]["href"] == "sub/" and names["sub"]["size"] is None
    for name in AWKWARD:
        entry = names[name]
        assert entry["type"] == "file" and entry["size"] == len(name.encode())
        got, content = await site.request("GET", "/files/awk/" + entry["href"])
        assert got.code == 200 and content == name.encode(), name
    page, html = await site.request("GET", "/files/awk/", accept="text/html")
    assert header(page, "content-type").startswith("text/html")
    assert b"sub/" in html and b"with%20space.txt" in html
    top, body = await site.request("GET", "/files/")
    assert {"name": "awk"}.items() <= {k: v for k, v in json.loads(body)[0].items() if k == "name"}.items()


@pytest_twisted.ensureDeferred
async def test_folders_redirect_404s_and_deletes(site: StoreSite) -> None:
    await site.put("/files/f/a.txt", b"a")
    moved, _ = await site.request("GET", "/files/f?x=1")
    assert moved.code == 301 and header(moved, "location") == "/files/f/?x=1"
    for path in ("/files/nope.txt", "/files/f/nope/", "/files/.hidden", "/files/f/a.txt/"):
        missing, body = await site.request("GET", path)
        assert missing.code == 404 and json.loads(body) == {"error": "not found"}, path

    folder, body = await site.request("PUT", "/files/made/", **AUTH)
    assert folder.code == 201 and json.loads(body) == {"folder": "made", "created": True}
    again, body = await site.request("PUT", "/files/made/", **AUTH)
    assert again.code == 200 and json.loads(body)["created"] is False
    empty, body = await site.request("GET", "/files/made/")
    assert empty.code == 200 and json.loads(body) == []
    blocked, _ = await site.request("PUT", "/files/f/a.txt/", **AUTH)
    assert blocked.code == 409
    on_folder, _ = await site.put("/files/f", b"x")
    assert on_folder.code == 409
    under_file, _ = await site.put("/files/f/a.txt/b", b"x")
    assert under_file.code == 409

    not_folder, _ = await site.request("DELETE", "/files/f", **AUTH)
    assert not_folder.code == 409
    precondition, _ = await site.request("DELETE", "/files/f/a.txt", **AUTH, if_match='"other"')
    assert precondition.code == 412
    gone, _ = await site.request("DELETE", "/files/f/a.txt", **AUTH)
    assert gone.code == 204
    after, _ = await site.request("GET", "/files/f/a.txt")
    assert after.code == 404
    twice, _ = await site.request("DELETE", "/files/f/a.txt", **AUTH)
    assert twice.code == 404
    unauthorised, _ = await site.request("DELETE", "/files/made/x")
    assert unauthorised.code == 401


@pytest_twisted.ensureDeferred
async def test_a_body_failing_its_digest_keeps_the_old_version(site: StoreSite) -> None:
    await site.put("/files/d.bin", b"old version")
    wrong = "sha-256=:" + b64encode(hashlib.sha256(b"something else").digest()).decode() + ":"
    refused, body = await site.put("/files/d.bin", BODY, content_digest=wrong)
    assert refused.code == 400 and "digest" in json.loads(body)["error"]
    _, body = await site.request("GET", "/files/d.bin")
    assert body == b"old version"
    right = "sha-256=:" + b64encode(hashlib.sha256(BODY).digest()).decode() + ":"
    accepted, _ = await site.put("/files/d.bin", BODY, content_digest=right)
    assert accepted.code == 204


@pytest_twisted.ensureDeferred
async def test_a_body_of_several_parts_arrives_whole(site: StoreSite) -> None:
    """12 MiB: three multipart parts of 5 MiB in S3; one streamed file on disk."""
    big = os.urandom(12 * MiB)
    created, answer = await site.put("/files/big.bin", big)
    assert created.code == 201, answer
    got, body = await site.request("GET", "/files/big.bin")
    assert hashlib.sha256(body).digest() == hashlib.sha256(big).digest()
    part, body = await site.request("GET", "/files/big.bin", range=f"bytes={5 * MiB - 10}-{5 * MiB + 9}")
    assert part.code == 206 and body == big[5 * MiB - 10 : 5 * MiB + 10]


@pytest_twisted.ensureDeferred
async def test_signed_links_name_a_path_on_every_store(site: StoreSite) -> None:
    await site.put("/files/linked/doc.txt", b"signed")
    made, body = await site.request("POST", "/files/linked/doc.txt?sign=60", **AUTH)
    assert made.code == 200, body
    link = json.loads(body)["url"]
    got, content = await site.request("GET", link)
    assert got.code == 200 and content == b"signed"
    tampered, _ = await site.request("GET", link.replace("doc.txt", "doc.txu"))
    assert tampered.code == 403
    folder, body = await site.request("POST", "/files/linked?sign=60", **AUTH)
    assert folder.code == 200 and "/files/linked/?" in json.loads(body)["url"]
    missing, _ = await site.request("POST", "/files/linked/nope.txt?sign=60", **AUTH)
    assert missing.code == 404


@pytest_twisted.ensureDeferred
async def test_a_resumable_upload_is_installed_by_the_store(site: StoreSite) -> None:
    """The IETF draft's creation, an append and the completion: the store installs the file (install_file)."""
    body = os.urandom(6 * MiB + 123)  # on s3: more than one part
    digest = f"sha-256=:{b64encode(hashlib.sha256(body).digest()).decode()}:"
    created, _ = await site.put("/files/resumed/big.bin", body[:MiB],
                                **{"Upload-Complete": "?0", "Repr-Digest": digest, "Upload-Draft-Interop-Version": "8"})
    assert created.code == 201 and created.headers.getRawHeaders("upload-offset") == [str(MiB)]
    location = created.headers.getRawHeaders("location")[0]
    missing, _ = await site.request("GET", "/files/resumed/big.bin")
    assert missing.code == 404  # nothing under /files until it is complete
    done, _ = await site.request("PATCH", location, body[MiB:], **AUTH, **{
        "Content-Type": "application/partial-upload", "Upload-Offset": str(MiB), "Upload-Complete": "?1"})
    assert done.code == 201 and done.headers.getRawHeaders("upload-complete") == ["?1"]
    got, content = await site.request("GET", "/files/resumed/big.bin")
    assert got.code == 200 and content == body
    head, _ = await site.request("HEAD", location, **AUTH)
    assert head.headers.getRawHeaders("upload-complete") == ["?1"]
