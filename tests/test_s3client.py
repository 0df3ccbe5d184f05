"""
The S3 protocol client (L{streamsvc.files.s3client}) against a real S3
server (SeaweedFS, conftest.py): signed requests, ranged GETs read as a
stream, listings page by page with folders, multipart uploads completed
and aborted, and errors that name the store but never the secret.
"""

from __future__ import annotations

import hashlib
from itertools import count

import pytest
import pytest_twisted

pytest.importorskip("botocore")

from twisted.internet import reactor  # noqa: E402
from twisted.web.client import Agent, HTTPConnectionPool  # noqa: E402

import treq  # noqa: E402
from s3_server import ACCESS_KEY, REGION, SECRET_KEY, free_ports  # noqa: E402
from streamsvc.files.s3client import S3Client, S3Error, S3Unavailable  # noqa: E402

_prefixes = count(1)


@pytest.fixture
def http():
    pool = HTTPConnectionPool(reactor, persistent=True)
    client = treq.client.HTTPClient(Agent(reactor, pool=pool))
    yield client
    pytest_twisted.blockon(pool.closeCachedConnections())


@pytest.fixture
def s3(s3_server, http):
    return S3Client(http, endpoint=s3_server.endpoint, bucket=s3_server.bucket, access_key=ACCESS_KEY,
                    secret_key=SECRET_KEY, region=REGION, timeout=10)


@pytest.fixture
def prefix():
    """A key prefix of its own for each test: the bucket is shared by the run."""
    return f"t{next(_prefixes)}/"


@pytest_twisted.ensureDeferred
async def test_put_head_get_and_ranges_with_awkward_names(s3, prefix, http):
    key = prefix + "dir with space/ünï #%?&+=.txt"
    body = bytes(range(256)) * 40
    etag = await s3.put_object(key, body, {"Content-Type": "text/plain"})
    info = await s3.head_object(key)
    assert info.size == len(body) and info.etag == etag and info.content_type == "text/plain"
    assert info.last_modified > 0
    whole = await s3.get_object(key)
    assert whole.code == 200 and await treq.content(whole) == body
    part = await s3.get_object(key, 100, 199)
    assert part.code == 206 and await treq.content(part) == body[100:200]
    tail = await s3.get_object(key, len(body) - 10)
    assert await treq.content(tail) == body[-10:]
    assert await s3.head_object(prefix + "missing") is None
    with pytest.raises(S3Error) as info404:
        await s3.get_object(prefix + "missing")
    assert info404.value.status == 404 and info404.value.code == "NoSuchKey"
    with pytest.raises(S3Error) as info412:
        await s3.get_object(key, headers={"If-Match": '"not-the-etag"'})
    assert info412.value.status == 412
    await s3.delete_object(key)
    assert await s3.head_object(key) is None


@pytest_twisted.ensureDeferred
async def test_listing_pages_folders_and_objects(s3, prefix):
    for name in ("b.txt", "a.txt", "sub/x", "sub/y", "other dir/z", "ü.txt"):
        await s3.put_object(prefix + name, b"x")
    pages, token = [], None
    while True:
        page = await s3.list_page(prefix, token, max_keys=2)
        pages.append(page)
        token = page.next_token
        if token is None:
            break
    assert len(pages) >= 3  # paginated with continuation tokens
    folders = [p for page in pages for p in page.prefixes]
    names = [k for page in pages for k, _ in page.objects]
    assert sorted(folders) == [prefix + "other dir/", prefix + "sub/"]
    assert sorted(names) == [prefix + "a.txt", prefix + "b.txt", prefix + "ü.txt"]
    assert all(info.size == 1 and info.etag for page in pages for _, info in page.objects)


@pytest_twisted.ensureDeferred
async def test_multipart_complete_and_abort_leave_no_parts(s3, prefix, http, s3_server):
    key = prefix + "big.bin"
    parts = [bytes([i]) * (5 * 1024 * 1024) for i in range(2)] + [b"end"]
    upload = await s3.create_multipart(key, {"Content-Type": "application/octet-stream"})
    etags = [await s3.upload_part(key, upload, n, data) for n, data in enumerate(parts, 1)]
    await s3.complete_multipart(key, upload, etags)
    got = await s3.get_object(key)
    assert hashlib.sha256(await treq.content(got)).digest() == hashlib.sha256(b"".join(parts)).digest()
    second = await s3.create_multipart(key)
    await s3.upload_part(key, second, 1, b"never completed" * 1000)
    assert (key, second) in await s3.list_multipart_uploads(prefix)
    await s3.abort_multipart(key, second)
    assert (key, second) not in await s3.list_multipart_uploads(prefix)
    assert (await s3.head_object(key)).size == sum(map(len, parts))  # the completed one stays


@pytest_twisted.ensureDeferred
async def test_a_wrong_secret_is_refused_and_never_shown(s3_server, http):
    bad = S3Client(http, endpoint=s3_server.endpoint, bucket=s3_server.bucket, access_key=ACCESS_KEY,
                   secret_key="wrong-secret-0000", region=REGION)
    with pytest.raises(S3Error) as info:
        await bad.head_object("anything")
    assert info.value.status == 403
    assert "wrong-secret" not in str(info.value) and "wrong-secret" not in repr(bad)


@pytest_twisted.ensureDeferred
async def test_a_missing_bucket_and_an_unreachable_store(s3_server, http):
    missing = S3Client(http, endpoint=s3_server.endpoint, bucket="no-such-bucket", access_key=ACCESS_KEY,
                       secret_key=SECRET_KEY, region=REGION)
    with pytest.raises(S3Error) as info:
        await missing.head_bucket()
    assert info.value.status == 404
    [port] = free_ports(1)
    down = S3Client(http, endpoint=f"http://127.0.0.1:{port}", bucket="b", access_key=ACCESS_KEY,
                    secret_key=SECRET_KEY, region=REGION, timeout=2)
    with pytest.raises(S3Unavailable, match=f"127.0.0.1:{port} is unreachable"):
        await down.head_object("x")
