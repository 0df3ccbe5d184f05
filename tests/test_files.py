"""
Tests for L{streamsvc.files}: the /files resource over a real Site on a
StringTransport (deterministic: Clock, no sockets).
"""

from __future__ import annotations

import errno
import gzip
import json
import os
import re
import socket
import tempfile
import shutil
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.web.resource import Resource
from twisted.web.server import Site

from streamsvc.errors import Request
from streamsvc.files import local as local_module, paths as files_paths, resource as files_module
from streamsvc.files import (
    DirectoryListing,
    FilesResource,
    content_type_for,
    escape_query,
    resolve,
)
from streamsvc.errors import HTTPError
from streamsvc.files.facts import FACTS_TTL
from streamsvc.ranges import http_date, make_etag
from streamsvc.testing import RawResponse, SiteConnection

from header_strategies import either, odd_dates

BIG = os.urandom(300_000)
TEXT = b"hello streaming world\n" * 2000


class Files:
    """A Site with /files over a temporary directory, and a way to GET from it."""

    def __init__(self, root: Any, **kwargs: Any) -> None:
        self.root = root
        self.clock = Clock()
        tree = Resource()
        self.resource = FilesResource(str(root), clock=self.clock, **kwargs)
        tree.putChild(b"files", self.resource)
        self.site = Site(tree, reactor=self.clock)
        self.site.requestFactory = Request

    def connect(self) -> SiteConnection:
        return SiteConnection(self.site)

    def get(self, path: str, method: str = "GET", **headers: str) -> RawResponse:
        conn = self.connect()
        conn.request(method, path, {k.replace("_", "-"): v for k, v in headers.items()})
        conn.read_until_quiet(self.clock)
        return conn.response(head=method == "HEAD")

    def get_lines(self, path: str, *lines: str, method: str = "GET") -> RawResponse:
        """Like L{get}, with C{lines} ("Name: value") as header lines, so a name may repeat."""
        conn = self.connect()
        head = [f"{method} {path} HTTP/1.1", "Host: test", *lines]
        conn.send(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        conn.read_until_quiet(self.clock)
        return conn.response(head=method == "HEAD")


@pytest.fixture
def files(tmp_path: Any) -> Files:
    root = tmp_path / "files"
    root.mkdir()
    (root / "big.bin").write_bytes(BIG)
    (root / "hello.txt").write_bytes(TEXT)
    (root / "report.csv").write_bytes(b"a,b\n1,2\n")
    (root / "noext").write_bytes(b"x")
    (root / "archive.tar.gz").write_bytes(b"\x1f\x8b fake")
    (root / ".secret").write_bytes(b"do not serve")
    (root / "sub").mkdir()
    (root / "sub" / "inner.txt").write_bytes(b"inner")
    (root / "sub" / "caf\u00e9 \u00fc.txt").write_bytes(b"unicode")
    (tmp_path / "outside.txt").write_bytes(b"outside the root")
    os.symlink(tmp_path / "outside.txt", root / "escape.txt")
    os.symlink(tmp_path, root / "escapedir")
    os.symlink(root / "hello.txt", root / "alias.txt")
    return Files(root)


# -- plain GET / HEAD -----------------------------------------------------------------


def test_get_file_headers_and_body(files: Files) -> None:
    """A GET returns the exact bytes with every header a download needs."""
    st = os.stat(files.root / "big.bin")
    r = files.get("/files/big.bin")
    assert r.code == 200
    assert r.body == BIG and r.complete
    assert r.header("content-length") == str(len(BIG))
    assert r.header("content-type") == "application/octet-stream"
    assert r.header("x-content-type-options") == "nosniff"
    assert r.header("accept-ranges") == "bytes"
    assert r.header("last-modified") == http_date(int(st.st_mtime))
    assert r.header("etag") == f'"{st.st_size:x}-{st.st_mtime_ns:x}"'
    assert r.header("transfer-encoding") is None


@pytest.mark.parametrize(
    "name, expected",
    [
        ("a.txt", "text/plain"),
        ("a.csv", "text/csv"),
        ("a.json", "application/json"),
        ("a.ndjson", "application/x-ndjson"),
        ("a.unknownext", "application/octet-stream"),
        ("noext", "application/octet-stream"),
        ("a.tar.gz", "application/gzip"),
        ("a.gz", "application/gzip"),
        ("report.final.csv", "text/csv"),
        ("README.TXT", "text/plain"),
        ("a..json", "application/json"),
        ("backup.tgz", "application/gzip"),
        ("notes.txt.bz2", "application/x-bzip2"),
        ("trailingdot.", "application/octet-stream"),
        ("page.html.unknownext", "application/octet-stream"),
    ],
)
def test_content_types(name: str, expected: str) -> None:
    """Types come from the extension; unknown is octet-stream (never text/html); .gz is the archive."""
    assert content_type_for(name) == expected


@pytest.mark.parametrize(
    "name, sandboxed",
    [("page.html", True), ("logo.svg", True), ("feed.xml", True), ("a.txt", False), ("a.bin", False)],
)
def test_active_types_are_sandboxed(files: Files, name: str, sandboxed: bool) -> None:
    """HTML, SVG and XML are sent as themselves but under a CSP sandbox; others are not."""
    (files.root / name).write_bytes(b"<x/>")
    r = files.get("/files/" + name)
    assert r.code == 200
    assert r.header("content-security-policy") == ("sandbox" if sandboxed else None)


def test_compressed_archive_has_no_content_encoding(files: Files) -> None:
    """A .tar.gz is served as application/gzip without Content-Encoding, so clients keep it as is."""
    r = files.get("/files/archive.tar.gz", accept_encoding="gzip")
    assert r.header("content-type") == "application/gzip"
    assert r.header("content-encoding") is None
    assert r.body == b"\x1f\x8b fake"


def test_head_mirrors_get_without_body(files: Files) -> None:
    """HEAD gives GET's headers (with the real Content-Length) and no body."""
    get = files.get("/files/big.bin")
    head = files.get("/files/big.bin", method="HEAD")
    assert head.code == 200
    assert head.body == b""
    for name in ("content-length", "etag", "last-modified", "content-type", "accept-ranges"):
        assert head.header(name) == get.header(name)


def test_head_does_not_read_the_file(files: Files, monkeypatch: Any) -> None:
    """HEAD never builds a producer (twisted.web runs GET and throws it away, E7)."""
    import streamsvc.files.local as module

    def boom(*a: Any, **k: Any) -> None:
        raise AssertionError("HEAD created a producer")

    monkeypatch.setattr(module, "FileProducer", boom)
    monkeypatch.setattr(module, "SendfileProducer", boom)
    assert files.get("/files/big.bin", method="HEAD").code == 200


def test_download_parameter_sets_disposition(files: Files) -> None:
    """?download=1 adds an RFC 8187 attachment disposition with the UTF-8 name."""
    r = files.get("/files/sub/caf%C3%A9%20%C3%BC.txt?download=1")
    assert r.code == 200
    assert r.header("content-disposition") == 'attachment; filename="cafe u.txt"; filename*=UTF-8\'\'caf%C3%A9%20%C3%BC.txt'
    assert files.get("/files/hello.txt").header("content-disposition") is None


def test_method_not_allowed_is_json(files: Files) -> None:
    """PATCH /files/x is a JSON 405 with Allow (POST is there for signed links)."""
    r = files.get("/files/hello.txt", method="PATCH")
    assert r.code == 405
    assert json.loads(r.body) == {"error": "method not allowed"}
    assert r.header("allow") == "DELETE, GET, HEAD, OPTIONS, POST, PUT"


def test_missing_file_is_json_404(files: Files) -> None:
    """A missing file is a JSON 404."""
    r = files.get("/files/nope.txt")
    assert r.code == 404
    assert r.header("content-type") == "application/json"
    assert json.loads(r.body) == {"error": "not found"}


# -- conditional requests ----------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    ["{etag}", 'W/{etag}', '"x", {etag}', '"x",{etag}', "*"],
)
def test_if_none_match_304(files: Files, header: str) -> None:
    """If-None-Match with the ETag — alone, weak, in a list, or * — gives 304 without a body."""
    etag = files.get("/files/big.bin", method="HEAD").header("etag")
    r = files.get("/files/big.bin", if_none_match=header.format(etag=etag))
    assert r.code == 304
    assert r.header("etag") == etag
    assert r.header("content-length") is None
    assert r.body == b""


def test_if_none_match_other_tag_200(files: Files) -> None:
    """If-None-Match with another tag serves the file."""
    assert files.get("/files/big.bin", if_none_match='"other"').code == 200


def test_if_modified_since(files: Files) -> None:
    """If-Modified-Since at or after Last-Modified gives 304; before it, 200."""
    lm = files.get("/files/big.bin", method="HEAD").header("last-modified")
    assert files.get("/files/big.bin", if_modified_since=lm).code == 304
    assert files.get("/files/big.bin", if_modified_since=http_date(0)).code == 200


def test_if_match_failure_412(files: Files) -> None:
    """If-Match with a stale tag is 412 (JSON)."""
    r = files.get("/files/big.bin", if_match='"stale"')
    assert r.code == 412
    assert json.loads(r.body) == {"error": "precondition failed"}
    etag = files.get("/files/big.bin", method="HEAD").header("etag")
    assert files.get("/files/big.bin", if_match=etag).code == 200


def test_if_unmodified_since_failure_412(files: Files) -> None:
    """If-Unmodified-Since before the last modification is 412."""
    assert files.get("/files/big.bin", if_unmodified_since=http_date(0)).code == 412


# -- ranges --------------------------------------------------------------------------------


def test_single_range(files: Files) -> None:
    """bytes=100-199 gives 206 with Content-Range and exactly those bytes."""
    r = files.get("/files/big.bin", range="bytes=100-199")
    assert r.code == 206
    assert r.header("content-range") == f"bytes 100-199/{len(BIG)}"
    assert r.header("content-length") == "100"
    assert r.body == BIG[100:200]


def test_suffix_and_open_ranges(files: Files) -> None:
    """bytes=-500 is the last 500 bytes; bytes=N- runs to the end."""
    r = files.get("/files/big.bin", range="bytes=-500")
    assert r.body == BIG[-500:]
    assert r.header("content-range") == f"bytes {len(BIG) - 500}-{len(BIG) - 1}/{len(BIG)}"
    r = files.get("/files/big.bin", range="bytes=299000-")
    assert r.body == BIG[299000:]


def parse_multipart(r: RawResponse) -> list[tuple[str, bytes]]:
    ctype = r.header("content-type")
    assert ctype is not None and ctype.startswith("multipart/byteranges; boundary=")
    message = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + r.body
    )
    return [(part["Content-Range"], part.get_payload(decode=True)) for part in message.iter_parts()]


def test_multiple_ranges_multipart(files: Files) -> None:
    """Several ranges give multipart/byteranges with one part each, each with its Content-Range."""
    r = files.get("/files/big.bin", range="bytes=0-9, 1000-1099, -10")
    assert r.code == 206
    assert r.header("content-length") == str(len(r.body))
    parts = parse_multipart(r)
    n = len(BIG)
    assert parts == [
        (f"bytes 0-9/{n}", BIG[:10]),
        (f"bytes 1000-1099/{n}", BIG[1000:1100]),
        (f"bytes {n - 10}-{n - 1}/{n}", BIG[-10:]),
    ]


def test_overlapping_ranges_coalesce(files: Files) -> None:
    """Overlapping ranges are merged into one part."""
    r = files.get("/files/big.bin", range="bytes=0-99,50-149")
    assert r.code == 206
    assert r.header("content-range") == f"bytes 0-149/{len(BIG)}"


def test_amplifying_ranges_get_200(files: Files) -> None:
    """Ranges whose sum exceeds the file (E3's 200 x 0-) get the plain 200, not 200 copies."""
    r = files.get("/files/big.bin", range="bytes=" + ",".join(["0-"] * 200))
    assert r.code == 200
    assert len(r.body) == len(BIG)


def test_too_many_ranges_get_200(files: Files) -> None:
    """More ranges than max_ranges get the plain 200."""
    spec = ",".join(f"{i * 100}-{i * 100 + 1}" for i in range(17))
    assert files.get("/files/big.bin", range="bytes=" + spec).code == 200


def test_unsatisfiable_range_416(files: Files) -> None:
    """A range past the end is 416 with Content-Range: bytes */SIZE."""
    r = files.get("/files/big.bin", range="bytes=999999-")
    assert r.code == 416
    assert r.header("content-range") == f"bytes */{len(BIG)}"
    assert "error" in json.loads(r.body)


def test_invalid_range_ignored(files: Files) -> None:
    """A syntactically invalid Range is ignored: 200 with the whole file."""
    r = files.get("/files/big.bin", range="bytes=5-2")
    assert r.code == 200 and r.body == BIG


def test_if_range(files: Files) -> None:
    """If-Range with the current ETag honours the range; a stale tag or date gets the full 200."""
    head = files.get("/files/big.bin", method="HEAD")
    assert files.get("/files/big.bin", range="bytes=0-9", if_range=head.header("etag")).code == 206
    assert files.get("/files/big.bin", range="bytes=0-9", if_range=head.header("last-modified")).code == 206
    stale = files.get("/files/big.bin", range="bytes=0-9", if_range='"stale"')
    assert stale.code == 200 and stale.body == BIG
    assert files.get("/files/big.bin", range="bytes=0-9", if_range=http_date(0)).code == 200


def test_head_with_range_mirrors_206(files: Files) -> None:
    """HEAD with Range gets the 206 headers (static.File answers 200, E2)."""
    r = files.get("/files/big.bin", method="HEAD", range="bytes=10-19")
    assert r.code == 206
    assert r.header("content-range") == f"bytes 10-19/{len(BIG)}"
    assert r.header("content-length") == "10"


# -- gzip ------------------------------------------------------------------------------------


def test_gzip_on_the_fly(files: Files) -> None:
    """Text with Accept-Encoding: gzip is compressed, chunked, with Vary and a weak ETag."""
    r = files.get("/files/hello.txt", accept_encoding="gzip, deflate")
    assert r.code == 200
    assert r.header("content-encoding") == "gzip"
    assert r.header("vary") == "Accept-Encoding"
    assert r.header("content-length") is None
    assert r.header("transfer-encoding") == "chunked"
    assert r.header("etag", ).startswith('W/"')
    assert gzip.decompress(r.body) == TEXT
    assert len(r.body) < len(TEXT) / 10


def test_gzip_not_for_ranges(files: Files) -> None:
    """A Range request is never gzipped (E4): identity 206."""
    r = files.get("/files/hello.txt", accept_encoding="gzip", range="bytes=0-4")
    assert r.code == 206
    assert r.header("content-encoding") is None
    assert r.body == TEXT[:5]


def test_gzip_not_for_binary_or_refusing_clients(files: Files) -> None:
    """Binary types, and clients that do not accept gzip, get identity with Content-Length."""
    r = files.get("/files/big.bin", accept_encoding="gzip")
    assert r.header("content-encoding") is None and r.body == BIG
    r = files.get("/files/hello.txt", accept_encoding="gzip;q=0, identity")
    assert r.header("content-encoding") is None
    assert r.header("content-length") == str(len(TEXT))
    assert r.header("vary") == "Accept-Encoding"


def test_gzip_disabled(tmp_path: Any) -> None:
    """gzip=False never compresses."""
    (tmp_path / "a.txt").write_bytes(TEXT)
    r = Files(tmp_path, gzip=False).get("/files/a.txt", accept_encoding="gzip")
    assert r.header("content-encoding") is None and r.body == TEXT


def test_gzip_reads_are_capped(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    With a 16 MiB chunk size a gzipped body is still read (and so compressed)
    at most 256 KiB at a time, so one step cannot hold the reactor for long;
    an identity body keeps the configured size.
    """
    payload = b"compressible line of text\n" * 40_000  # ~1 MiB
    (tmp_path / "big.txt").write_bytes(payload)
    reads: list[int] = []
    real_pread = os.pread

    def recording(fd: int, size: int, offset: int) -> bytes:
        reads.append(size)
        return real_pread(fd, size, offset)

    monkeypatch.setattr(os, "pread", recording)
    big = Files(tmp_path, chunk_size=16 * 1024 * 1024)
    r = big.get("/files/big.txt", accept_encoding="gzip")
    assert gzip.decompress(r.body) == payload
    assert reads and max(reads) == files_module.GZIP_CHUNK_SIZE
    reads.clear()
    assert big.get("/files/big.txt").body == payload
    assert reads == [len(payload)]


def test_gzip_head(files: Files) -> None:
    """HEAD of a gzip response announces the encoding without a length."""
    r = files.get("/files/hello.txt", method="HEAD", accept_encoding="gzip")
    assert r.header("content-encoding") == "gzip"
    assert r.header("content-length") is None


def test_gzip_etag_304(files: Files) -> None:
    """The weak ETag of the gzip variant revalidates (weak comparison) to 304."""
    etag = files.get("/files/hello.txt", method="HEAD", accept_encoding="gzip").header("etag")
    r = files.get("/files/hello.txt", accept_encoding="gzip", if_none_match=etag)
    assert r.code == 304


def test_gzip_if_match_uses_the_file_tag(files: Files) -> None:
    """
    If-Match compares strongly against the file's own tag, so a client that
    accepts gzip can still pass it; a weak tag never passes.
    """
    strong = files.get("/files/hello.txt", method="HEAD").header("etag")
    r = files.get("/files/hello.txt", accept_encoding="gzip", if_match=strong)
    assert r.code == 200
    assert r.header("content-encoding") == "gzip"
    assert r.header("etag") == "W/" + strong
    assert gzip.decompress(r.body) == TEXT
    assert files.get("/files/hello.txt", accept_encoding="gzip", if_match="W/" + strong).code == 412
    assert files.get("/files/hello.txt", accept_encoding="gzip", if_match='"other"').code == 412
    r = files.get("/files/hello.txt", accept_encoding="gzip", if_none_match=strong)
    assert r.code == 304


# -- listings ----------------------------------------------------------------------------------


def test_listing(files: Files) -> None:
    """GET /files/ lists files and dirs as JSON; dotfiles and escaping symlinks are left out."""
    r = files.get("/files/")
    assert r.code == 200
    assert r.header("content-type") == "application/json"
    entries = {e["name"]: e for e in json.loads(r.body)}
    assert set(entries) == {
        "big.bin", "hello.txt", "report.csv", "noext", "archive.tar.gz", "sub", "alias.txt",
    }
    assert entries["big.bin"]["size"] == len(BIG)
    assert entries["big.bin"]["type"] == "file"
    assert entries["sub"]["type"] == "dir"
    assert isinstance(entries["hello.txt"]["mtime"], float)


def test_listing_many_entries_batches(tmp_path: Any) -> None:
    """A large directory streams in several writes and still parses as one JSON array."""
    for i in range(300):
        (tmp_path / f"f{i:03}").write_bytes(b"")
    files = Files(tmp_path)
    r = files.get("/files/")
    assert sorted(e["name"] for e in json.loads(r.body)) == [f"f{i:03}" for i in range(300)]


def test_empty_listing(tmp_path: Any) -> None:
    """An empty directory is []."""
    assert json.loads(Files(tmp_path).get("/files/").body) == []


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_directory_listing_items_are_bounded(tmp_path: Any) -> None:
    """
    Each item looks at no more than a batch of entries, even when all of them
    are left out, and the items join into one JSON array.
    """
    for i in range(10):
        (tmp_path / f".hidden{i}").write_bytes(b"")
    for i in range(5):
        (tmp_path / f"f{i}").write_bytes(b"")
    items = list(DirectoryListing(str(tmp_path), str(tmp_path), batch=4))
    assert len(items) == 4  # 15 entries, 4 at a time; the last item closes the array
    assert items[0].startswith(b"[") and items[-1].endswith(b"]\n")
    assert sorted(e["name"] for e in json.loads(b"".join(items))) == [f"f{i}" for i in range(5)]


def test_directory_listing_close_before_and_during_iteration(tmp_path: Any) -> None:
    """The directory handle is released by close(), whether or not iteration began."""
    for i in range(10):
        (tmp_path / f"f{i}").write_bytes(b"")
    before = open_fds()
    listing = DirectoryListing(str(tmp_path), str(tmp_path), batch=2)
    assert open_fds() == before + 1
    listing.close()
    assert open_fds() == before
    listing = DirectoryListing(str(tmp_path), str(tmp_path), batch=2)
    next(listing)
    listing.close()
    assert open_fds() == before


def test_directory_listing_owns_the_fd_it_is_given(tmp_path: Any) -> None:
    """Given an open folder, the listing reads it and closes it (and its own handle) on close()."""
    (tmp_path / "a").write_bytes(b"")
    before = open_fds()
    listing = DirectoryListing(
        str(tmp_path), str(tmp_path), fd=os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    )
    assert [e["name"] for e in json.loads(b"".join(listing))] == ["a"]
    listing.close()
    assert open_fds() == before


def test_unreadable_directory_is_404_before_any_byte(files: Files, monkeypatch: Any) -> None:
    """A folder that cannot be opened is a JSON 404 for GET and HEAD, not a broken body."""
    def refusing(path: Any) -> Any:
        raise PermissionError(13, "Permission denied")

    before = open_fds()
    monkeypatch.setattr(os, "scandir", refusing)
    for method in ("GET", "HEAD"):
        r = files.get("/files/sub/", method=method)
        assert r.code == 404, method
        assert r.complete
    assert json.loads(files.get("/files/sub/").body) == {"error": "not found"}
    assert open_fds() == before


def test_disconnect_mid_listing_closes_directory(tmp_path: Any) -> None:
    """A client that goes away during a listing has its directory handle closed at once."""
    for i in range(2000):
        (tmp_path / f"file-with-a-long-name-{i:05}").write_bytes(b"")
    files = Files(tmp_path)
    before = open_fds()
    conn = files.connect()
    conn.request("GET", "/files/")
    files.clock.advance(0)
    assert not conn.response().complete  # the client has not read: the server paused
    assert open_fds() > before
    conn.disconnect()
    assert open_fds() == before


def test_listing_redirects_without_slash(files: Files) -> None:
    """A directory URL without its slash redirects to it, keeping the query."""
    r = files.get("/files/sub?x=1")
    assert r.code == 301
    assert r.header("location") == "/files/sub/?x=1"
    assert files.get("/files").header("location") == "/files/"


def test_nested_listing_and_file_with_slash(files: Files) -> None:
    """Sub-directories list; a file URL with a trailing slash is 404."""
    names = {e["name"] for e in json.loads(files.get("/files/sub/").body)}
    assert names == {"inner.txt", "caf\u00e9 \u00fc.txt"}
    assert files.get("/files/hello.txt/").code == 404


def test_listing_head_has_no_body(files: Files) -> None:
    """HEAD on a listing gives headers only."""
    r = files.get("/files/", method="HEAD")
    assert r.code == 200 and r.body == b""


def test_listing_gzip(files: Files) -> None:
    """Listings are gzipped for clients that accept it."""
    r = files.get("/files/", accept_encoding="gzip")
    assert r.header("content-encoding") == "gzip"
    assert isinstance(json.loads(gzip.decompress(r.body)), list)


# -- security -----------------------------------------------------------------------------------

TRAVERSALS = [
    "/files/../outside.txt",
    "/files/%2e%2e/outside.txt",
    "/files/%2E%2E/outside.txt",
    "/files/sub/../../outside.txt",
    "/files/sub/%2e%2e/%2e%2e/outside.txt",
    "/files/..%2foutside.txt",
    "/files/..%2Foutside.txt",
    "/files/sub%2f..%2f..%2foutside.txt",
    "/files/..%5coutside.txt",
    "/files/..\\outside.txt",
    "/files/%252e%252e/outside.txt",
    "/files/%252e%252e%252foutside.txt",
    "/files//etc/passwd",
    "/files/%2fetc%2fpasswd",
    "/files/hello.txt%00.bin",
    "/files/escape.txt",
    "/files/escapedir/outside.txt",
    "/files/.secret",
    "/files/%2esecret",
    "/files/sub/./inner.txt",
    "/files/./hello.txt",
    "/files/%ff.txt",
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_traversal_refused(files: Files, path: str) -> None:
    """No spelling of a path outside the root, or of a dotfile, is ever served."""
    r = files.get(path)
    assert r.code in (400, 404), (path, r.code)
    assert b"outside the root" not in r.body
    assert b"do not serve" not in r.body
    assert b"root:" not in r.body


def test_symlink_inside_root_is_served(files: Files) -> None:
    """A symlink that stays inside the root is fine."""
    assert files.get("/files/alias.txt").body == TEXT


def test_symlink_walk(files: Files) -> None:
    """
    The resolver walks one segment at a time: a symlinked folder inside the
    root is followed, a link onto a dotfile or a chain that ends outside is
    refused, and a file cannot be used as a folder.
    """
    root = files.root
    os.symlink(root / "sub", root / "subalias")
    os.symlink(root / ".secret", root / "hidden-alias")
    os.symlink(root / "escape.txt", root / "chain.txt")
    os.symlink(root / "missing", root / "dangling")
    assert files.get("/files/subalias/inner.txt").body == b"inner"
    target = resolve(str(root), [b"subalias", b""])
    assert target.is_dir and target.real == str(root / "sub")
    for path in ("/files/hidden-alias", "/files/chain.txt", "/files/dangling",
                 "/files/hello.txt/x", "/files/hello.txt/"):
        r = files.get(path)
        assert r.code == 404, (path, r.code)
        assert b"do not serve" not in r.body and b"outside the root" not in r.body


def swap_sub_after_resolve(files: Files, monkeypatch: Any, *names: str) -> None:
    """
    Make the next resolve() race: right after it checks the path, the folder
    C{sub} is replaced by a symlink to a folder outside the root holding
    C{names} (each containing "outside the root").
    """
    outside = files.root.parent / "elsewhere"
    outside.mkdir()
    for name in names:
        (outside / name).write_bytes(b"outside the root")
    real_resolve = local_module.resolve

    def racing_resolve(root: str, postpath: list[bytes]) -> Any:
        target = real_resolve(root, postpath)
        os.rename(files.root / "sub", files.root / "sub-old")
        os.symlink(outside, files.root / "sub")
        return target

    monkeypatch.setattr(local_module, "resolve", racing_resolve)


def test_folder_swapped_for_symlink_after_resolve_is_refused(files: Files, monkeypatch: Any) -> None:
    """
    A folder replaced by a symlink to outside the root between resolving the
    path and opening the file (a race) still never serves the outside file.
    """
    swap_sub_after_resolve(files, monkeypatch, "inner.txt")
    r = files.get("/files/sub/inner.txt")
    assert r.code == 404
    assert b"outside the root" not in r.body


def test_folder_swapped_under_a_symlinked_path_is_refused(files: Files, monkeypatch: Any) -> None:
    """
    The same race on a path that goes through a (legitimate) symlink: the
    file actually opened is checked, and it is outside, so 404.
    """
    os.symlink(files.root / "sub", files.root / "subalias")
    assert files.get("/files/subalias/inner.txt").body == b"inner"
    # What that GET learnt is trusted for FACTS_TTL; past it, the next GET
    # walks the path again, and the race is in that walk.
    files.clock.advance(FACTS_TTL)
    swap_sub_after_resolve(files, monkeypatch, "inner.txt")
    r = files.get("/files/subalias/inner.txt")
    assert r.code == 404
    assert b"outside the root" not in r.body


def test_nested_file_is_opened_component_by_component(files: Files) -> None:
    """Deep paths without symlinks are served (opened from the root, one folder at a time)."""
    deep = files.root / "a" / "b" / "c"
    deep.mkdir(parents=True)
    (deep / "d.txt").write_bytes(b"deep")
    assert files.get("/files/a/b/c/d.txt").body == b"deep"
    assert resolve(str(files.root), [b"a", b"b", b"c", b"d.txt"]).followed_link is False
    assert resolve(str(files.root), [b"alias.txt"]).followed_link is True


def test_listing_of_folder_swapped_after_resolve_is_refused(files: Files, monkeypatch: Any) -> None:
    """The resolve/open race on a folder listing: never the outside folder's entries."""
    swap_sub_after_resolve(files, monkeypatch, "secret-name.txt")
    r = files.get("/files/sub/")
    assert r.code == 404
    assert b"secret-name" not in r.body


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to serve as another user")
def test_search_only_folders_are_walked() -> None:
    """
    A folder the server may search (x) but not read, on the way to a readable
    file, is walked through as an open by full path would be (not a 404).
    Root ignores permissions, so the request is served from a forked child
    that has become nobody.
    """
    base = tempfile.mkdtemp(dir="/tmp")
    try:
        os.chmod(base, 0o755)
        private = os.path.join(base, "pub", "private")
        os.makedirs(private)
        os.chmod(os.path.join(base, "pub"), 0o711)
        os.chmod(private, 0o711)
        with open(os.path.join(private, "f.txt"), "w") as f:
            f.write("hello")
        os.chmod(os.path.join(private, "f.txt"), 0o644)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through its exit status
            status = 3
            try:
                os.setgid(65534)
                os.setuid(65534)
                assert not os.access(os.path.join(base, "pub"), os.R_OK)
                r = Files(base).get("/files/pub/private/f.txt")
                status = 0 if (r.code, r.body) == (200, b"hello") else 1
            finally:
                os._exit(status)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        shutil.rmtree(base)


def test_fifo_is_not_opened(files: Files) -> None:
    """A FIFO is 404 at once (opening it for reading must not block the reactor)."""
    os.mkfifo(files.root / "pipe")
    assert files.get("/files/pipe").code == 404


def test_resolve_rejects_without_io(tmp_path: Any) -> None:
    """The pure resolver refuses hostile segments before touching the disk."""
    for segments in ([b".."], [b"a/b"], [b"a\\b"], [b"a\x00"], [b"", b"x"], [b".hidden"]):
        with pytest.raises(HTTPError) as e:
            resolve(str(tmp_path), segments)
        assert e.value.code == 404


# -- disconnects ------------------------------------------------------------------------------


def test_disconnect_mid_download_closes_file(files: Files) -> None:
    """A client that disconnects mid-download: the file is closed at once."""
    conn = files.connect()
    conn.request("GET", "/files/big.bin")
    files.clock.advance(0)
    fds_before = {os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd") if _link(fd)}
    assert str(files.root / "big.bin") in fds_before
    assert conn.transport.producer_paused
    conn.disconnect()
    fds_after = {os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd") if _link(fd)}
    assert str(files.root / "big.bin") not in fds_after
    assert files.clock.getDelayedCalls() == []


def _link(fd: str) -> bool:
    try:
        os.readlink(f"/proc/self/fd/{fd}")
        return True
    except OSError:
        return False


# -- errors opening files and folders ------------------------------------------------------------


@pytest.fixture
def logged() -> Any:
    """The log events of streamsvc.files emitted during the test."""
    events: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "streamsvc.files.paths":
            events.append(event)

    globalLogPublisher.addObserver(observe)
    yield events
    globalLogPublisher.removeObserver(observe)


def fail_for(monkeypatch: Any, function: str, name: str, code: int) -> None:
    """
    Make C{os.<function>} fail with errno C{code} when called on anything
    called C{name} (a path, or a name relative to a dir_fd); every other
    call goes through.
    """
    real = getattr(os, function)

    def failing(path: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(path, (str, bytes, os.PathLike)) and os.path.basename(os.fsdecode(path)) == name:
            raise OSError(code, os.strerror(code), os.fsdecode(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, function, failing)


def assert_retry_later(r: RawResponse, files: Files, *, head: bool = False) -> None:
    """A 503 a client may retry at once and nobody may store, which names no path."""
    assert r.code == 503
    assert r.complete
    assert r.header("retry-after") == "1"
    assert r.header("cache-control") == "no-store"
    assert r.header("content-type") == "application/json"
    if not head:
        assert json.loads(r.body) == {"error": "temporarily unable to serve this path"}
        assert str(files.root).encode() not in r.body


RESOURCE_ERRORS = [errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EIO]


@pytest.mark.parametrize("code", RESOURCE_ERRORS, ids=errno.errorcode.get)
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_open_file_resource_error_is_503(
    files: Files, monkeypatch: Any, logged: Any, code: int, method: str
) -> None:
    """
    Out of descriptors or memory, or an I/O error, opening a file says
    nothing about the file: 503 with Retry-After and no-store, never a 404.
    """
    before = open_fds()
    fail_for(monkeypatch, "open", "big.bin", code)
    r = files.get("/files/big.bin", method=method)
    assert_retry_later(r, files, head=method == "HEAD")
    assert open_fds() == before


def test_open_error_is_logged_once_with_errno_and_path(
    files: Files, monkeypatch: Any, logged: Any
) -> None:
    """A 503 is logged as one line naming the errno and the path (which the client never sees)."""
    fail_for(monkeypatch, "open", "big.bin", errno.EMFILE)
    files.get("/files/big.bin")
    assert len(logged) == 1
    event = logged[0]
    assert event["errno_name"] == "EMFILE"
    assert event["what"] == str(files.root / "big.bin")
    assert "\n" not in event["log_format"]


@pytest.mark.parametrize(
    "code",
    [errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EACCES, errno.EPERM,
     errno.ENAMETOOLONG, errno.ENXIO],
    ids=errno.errorcode.get,
)
def test_open_file_not_servable_error_is_404(
    files: Files, monkeypatch: Any, logged: Any, code: int
) -> None:
    """Errors about the name itself (missing, not reachable, forbidden) stay a plain, unlogged 404."""
    before = open_fds()
    fail_for(monkeypatch, "open", "big.bin", code)
    r = files.get("/files/big.bin")
    assert r.code == 404
    assert json.loads(r.body) == {"error": "not found"}
    assert r.header("retry-after") is None
    assert logged == []
    assert open_fds() == before


def test_open_folder_on_the_way_resource_error_is_503(files: Files, monkeypatch: Any) -> None:
    """
    Running out of descriptors while walking down to a file (the folder
    C{sub} on the way) is a 503, and the folders already opened are closed.
    """
    before = open_fds()
    fail_for(monkeypatch, "open", "sub", errno.EMFILE)
    assert_retry_later(files.get("/files/sub/inner.txt"), files)
    assert open_fds() == before


def test_open_folder_to_list_resource_error_is_503(files: Files, monkeypatch: Any) -> None:
    """A folder that cannot be opened for its listing for lack of descriptors: 503, not 404."""
    before = open_fds()
    fail_for(monkeypatch, "open", "sub", errno.ENFILE)
    assert_retry_later(files.get("/files/sub/"), files)
    assert open_fds() == before


def test_scandir_resource_error_is_503(files: Files, monkeypatch: Any) -> None:
    """os.scandir out of memory on the opened folder: 503, and the folder's fd is closed."""

    def failing(path: Any) -> Any:
        raise OSError(errno.ENOMEM, os.strerror(errno.ENOMEM))

    before = open_fds()
    monkeypatch.setattr(os, "scandir", failing)
    for method in ("GET", "HEAD"):
        assert_retry_later(files.get("/files/sub/", method=method), files, head=method == "HEAD")
    assert open_fds() == before


def test_lstat_resource_error_is_503(files: Files, monkeypatch: Any) -> None:
    """An I/O error while resolving the path (lstat of a segment): 503, not 404."""
    fail_for(monkeypatch, "lstat", "hello.txt", errno.EIO)
    assert_retry_later(files.get("/files/hello.txt"), files)


def test_lstat_missing_is_404(files: Files, monkeypatch: Any) -> None:
    """lstat failing with ENOENT (the name is gone) is still the plain 404."""
    fail_for(monkeypatch, "lstat", "hello.txt", errno.ENOENT)
    assert files.get("/files/hello.txt").code == 404


def test_stat_through_symlink_resource_error_is_503(files: Files, monkeypatch: Any) -> None:
    """Out of memory stat-ing what a symlink points to (resolve follows it with os.stat): 503."""
    fail_for(monkeypatch, "stat", "hello.txt", errno.ENOMEM)
    assert_retry_later(files.get("/files/alias.txt"), files)


def test_fstat_resource_error_is_503(files: Files, monkeypatch: Any) -> None:
    """fstat of the opened file failing with EIO: 503, and the file is closed."""
    real_fstat = os.fstat

    def failing(fd: int) -> Any:
        if os.readlink(f"/proc/self/fd/{fd}") == str(files.root / "big.bin"):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_fstat(fd)

    before = open_fds()
    monkeypatch.setattr(os, "fstat", failing)
    assert_retry_later(files.get("/files/big.bin"), files)
    assert open_fds() == before


def test_socket_file_is_404(files: Files) -> None:
    """A Unix socket under the root cannot be opened (ENXIO): the plain 404, not a 503."""
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(files.root / "sock"))
        r = files.get("/files/sock")
    assert r.code == 404
    assert r.header("retry-after") is None


def test_open_failed_without_errno_is_503(logged: Any) -> None:
    """An OSError that carries no errno cannot be told to be about the name: 503."""
    error = files_paths.open_failed(OSError("no errno"), "/somewhere")
    assert error.code == 503
    assert error.headers[b"retry-after"] == b"1"
    assert len(logged) == 1


# -- fields on several lines (RFC 9110 §5.3) -----------------------------------------------------


@pytest.mark.parametrize(
    "lines",
    [
        ("Range: bytes=0-1", "Range: bytes=5-6"),
        ("Range: bytes=0-1", "Range: bytes=0-1"),
        ("Range: bytes=0-1", "Range: 5-6"),  # joined: "bytes=0-1, 5-6", a valid value
    ],
    ids=["different", "identical", "joins-into-valid"],
)
def test_range_on_two_lines_is_ignored(files: Files, lines: tuple[str, str]) -> None:
    """
    Range on two lines is ignored, whatever joining them would give: the
    whole 200 (a cache reading the first line would store the wrong bytes).
    """
    r = files.get_lines("/files/big.bin", *lines)
    assert r.code == 200
    assert r.header("content-range") is None
    assert r.body == BIG


def test_parser_rejects_two_range_lines_joined() -> None:
    """The joined value of two whole Range lines is no ranges-specifier."""
    from streamsvc.ranges import parse_range_header

    assert parse_range_header("bytes=0-1, bytes=5-6") is None


def test_if_range_on_two_lines_never_matches(files: Files) -> None:
    """
    If-Range on two lines (here even the current ETag twice, or the current
    date split at its comma) does not match: the whole 200.
    """
    head = files.get("/files/big.bin", method="HEAD")
    etag = head.header("etag")
    day, _, rest = head.header("last-modified").partition(", ")
    for lines in ([f"If-Range: {etag}", f"If-Range: {etag}"], [f"If-Range: {day}", f"If-Range: {rest}"]):
        r = files.get_lines("/files/big.bin", "Range: bytes=0-9", *lines)
        assert r.code == 200, lines
        assert r.body == BIG


def test_if_modified_since_on_two_lines_is_ignored(files: Files) -> None:
    """
    If-Modified-Since split over two lines that would join into the current
    date is ignored (200), not taken for that date (304).
    """
    day, _, rest = files.get("/files/big.bin", method="HEAD").header("last-modified").partition(", ")
    r = files.get_lines("/files/big.bin", f"If-Modified-Since: {day}", f"If-Modified-Since: {rest}")
    assert r.code == 200 and r.body == BIG


def test_if_unmodified_since_on_two_lines_is_ignored(files: Files) -> None:
    """If-Unmodified-Since on two lines (each a date long past) is ignored: 200, not 412."""
    old = http_date(0)
    r = files.get_lines("/files/big.bin", f"If-Unmodified-Since: {old}", f"If-Unmodified-Since: {old}")
    assert r.code == 200 and r.body == BIG


def test_if_none_match_on_two_lines_is_one_list(files: Files) -> None:
    """If-None-Match lines are one list: the current tag on the first line still gives 304."""
    etag = files.get("/files/big.bin", method="HEAD").header("etag")
    r = files.get_lines("/files/big.bin", f"If-None-Match: {etag}", 'If-None-Match: "other"')
    assert r.code == 304


def test_if_match_on_two_lines_is_one_list(files: Files) -> None:
    """If-Match lines are one list: the current tag on the first line passes (200, not 412)."""
    etag = files.get("/files/big.bin", method="HEAD").header("etag")
    r = files.get_lines("/files/big.bin", f"If-Match: {etag}", 'If-Match: "other"')
    assert r.code == 200 and r.body == BIG


def test_accept_encoding_on_two_lines_is_one_list(files: Files) -> None:
    """Accept-Encoding lines are one list: gzip named on the first line is honoured."""
    r = files.get_lines("/files/hello.txt", "Accept-Encoding: gzip", "Accept-Encoding: identity")
    assert r.header("content-encoding") == "gzip"
    assert gzip.decompress(r.body) == TEXT


@pytest.mark.parametrize(
    "lines",
    [
        ("If-Modified-Since: Sun, 01 Jan 0000 00:00:00 GMT",),
        ("If-Unmodified-Since: Sun Jan  1 00:00:00 0000",),
        ("Range: bytes=0-1", "If-Range: Sat, 01 Jan 0000 00:00:00 GMT"),
    ],
    ids=["ims-imf", "ius-asctime", "if-range"],
)
def test_year_zero_dates_are_ignored(files: Files, lines: tuple[str, ...]) -> None:
    """An HTTP-date in year 0000 is no date: the condition is ignored, the whole 200 (not a 500)."""
    r = files.get_lines("/files/big.bin", *lines)
    assert r.code == 200
    assert r.body == BIG


# -- the slash redirect's Location ---------------------------------------------------------------

#: A URI query, per RFC 3986 §3.4 (pchar / "/" / "?", "%" only as pct-encoded).
URI_QUERY = re.compile(rb"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/?]|%[0-9A-Fa-f]{2})*")


@pytest.mark.parametrize(
    "query, escaped",
    [
        (b"a=1&b=2", b"a=1&b=2"),
        (b"<script>alert(1)</script>", b"%3Cscript%3Ealert(1)%3C/script%3E"),
        (b"a b", b"a%20b"),
        (b"\"quoted\"'single'", b"%22quoted%22'single'"),
        (b"caf\xc3\xa9\xff", b"caf%C3%A9%FF"),
        (b"\x00\x01\x1b\x7f\t", b"%00%01%1B%7F%09"),
        (b"q=%2F%2f", b"q=%2F%2f"),
        (b"100%", b"100%25"),
        (b"%zz%4", b"%25zz%254"),
        (b"#frag[]{}|\\^`", b"%23frag%5B%5D%7B%7D%7C%5C%5E%60"),
        (b"k:v@h/p?x;y=z,!$*+", b"k:v@h/p?x;y=z,!$*+"),
        (b"", b""),
    ],
)
def test_escape_query(query: bytes, escaped: bytes) -> None:
    """Bytes a URI query may not hold are percent-encoded; the rest, escapes included, are kept."""
    assert escape_query(query) == escaped
    assert URI_QUERY.fullmatch(escaped)


@given(st.binary(max_size=60))
def test_property_escaped_query_is_a_uri_query(query: bytes) -> None:
    """Whatever the bytes, the result is a valid URI query, and escaping it again changes nothing."""
    escaped = escape_query(query)
    assert URI_QUERY.fullmatch(escaped)
    assert escape_query(escaped) == escaped


@pytest.mark.parametrize(
    "query, location",
    [
        ("<script>", "/files/sub/?%3Cscript%3E"),
        ("\"x\"'y'", "/files/sub/?%22x%22'y'"),
        ("a=1&b=2", "/files/sub/?a=1&b=2"),
        ("a=%3c&b=%zz", "/files/sub/?a=%3c&b=%25zz"),
    ],
)
def test_redirect_location_query_is_escaped(files: Files, query: str, location: str) -> None:
    """The slash redirect's Location carries the query as a valid URI query, never raw markup."""
    r = files.get_lines("/files/sub?" + query)
    assert r.code == 301
    assert r.header("location") == location


def test_redirect_escapes_bytes_the_http_parser_lets_through_elsewhere(files: Files) -> None:
    """
    twisted.web refuses non-ASCII and control bytes in the request line
    today (400), but the resource does not rely on it: given such a query
    directly, the Location is still a valid URI.
    """
    from twisted.web.test.requesthelper import DummyRequest

    request = DummyRequest([b"sub"])
    request.prepath = [b"files"]
    request.uri = b"/files/sub?x=caf\xc3\xa9\x01\x7f <"
    files.resource.render(request)
    assert request.responseCode == 301
    assert request.responseHeaders.getRawHeaders(b"location") == [
        b"/files/sub/?x=caf%C3%A9%01%7F%20%3C"
    ]


# -- hostile header values, as a property --------------------------------------------------------

#: The one file the property below requests, with a fixed modification time
#: so that its validators can be among the generated values.
HOSTILE_BODY = b"some text to serve, compressible enough\n" * 50
HOSTILE_MTIME_NS = 1_700_000_000_123_456_789
HOSTILE_ETAG = make_etag(len(HOSTILE_BODY), HOSTILE_MTIME_NS)
HOSTILE_DATE = http_date(HOSTILE_MTIME_NS // 10**9)


@pytest.fixture(scope="module")
def hostile_files(tmp_path_factory: Any) -> Files:
    """One /files Site for every example (module-scoped, as hypothesis wants)."""
    root = tmp_path_factory.mktemp("hostile")
    (root / "f.txt").write_bytes(HOSTILE_BODY)
    os.utime(root / "f.txt", ns=(HOSTILE_MTIME_NS, HOSTILE_MTIME_NS))
    return Files(root)


def _header_text(text: str) -> str:
    """What can stand in a header line at all (NUL, CR and LF are a 400 in twisted.web)."""
    return text.translate({0: None, 10: None, 13: None})


#: Offsets inside the served file (2,000 bytes), just past it, and huge.
_offsets = either(st.integers(0, 2500), st.integers(0, 10**25))
_range_specs = either(
    st.tuples(_offsets, _offsets).map(lambda t: "%d-%d" % (min(t), max(t))),
    _offsets.map("{}-".format),
    _offsets.map("-{}".format),
    st.text("0123456789-", max_size=8),
)
_range_values = st.lists(_range_specs, min_size=1, max_size=3).map(
    lambda specs: "bytes=" + ",".join(specs)
)
_tags = st.sampled_from(
    [HOSTILE_ETAG, "W/" + HOSTILE_ETAG, '"other"', "*", 'W/"x", ' + HOSTILE_ETAG]
)

#: Latin-1 text (every byte a client could send), odd bytes, numbers too
#: big for any offset, range sets, dates of every form and odd years, and
#: the file's own validators (so that 304, 412 and 206 happen too).
hostile_values = either(
    st.text(st.characters(max_codepoint=0xFF), max_size=40).map(_header_text),
    st.binary(max_size=40).map(lambda b: _header_text(b.decode("latin-1"))),
    st.integers(0, 10**40).map(str),
    _range_values,
    odd_dates,
    _tags,
    st.sampled_from(
        [HOSTILE_DATE, "", "gzip", "gzip;q=0", "*;q=nan", "bytes=0-0", "bytes=-1", "5-6"]
    ),
)


def _lines(values: st.SearchStrategy[str], absent: int = 1) -> st.SearchStrategy[list[str]]:
    """No line (C{absent} times as likely as the others), one line, or two lines of C{values}."""
    return st.sampled_from([0] * absent + [1, 2]).flatmap(
        lambda n: st.lists(values, min_size=n, max_size=n)
    )


#: Each field gets any value, or half the time one of the kind it expects,
#: so that the paths behind a valid-looking value are reached often. The
#: preconditions are more often absent: most values make them fail (412),
#: and the Range and If-Range rules are only reached when they pass.
HOSTILE_FIELDS = {
    "Range": _lines(either(hostile_values, _range_values)),
    "If-Range": _lines(either(hostile_values, odd_dates, _tags), absent=2),
    "If-Match": _lines(either(hostile_values, _tags), absent=6),
    "If-None-Match": _lines(either(hostile_values, _tags), absent=4),
    "If-Modified-Since": _lines(either(hostile_values, odd_dates), absent=2),
    "If-Unmodified-Since": _lines(either(hostile_values, odd_dates), absent=3),
    "Accept-Encoding": _lines(
        either(hostile_values, st.sampled_from(["gzip", "gzip;q=0", "*", "x-gzip;q=1e999"]))
    ),
}


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@example(method="GET", fields={"If-Modified-Since": ["Sun, 01 Jan 0000 00:00:00 GMT"]})
@example(method="GET", fields={"Range": ["bytes=0-1", "bytes=5-6"]})
@given(
    method=st.sampled_from(["GET", "HEAD"]),
    fields=st.fixed_dictionaries(HOSTILE_FIELDS),
)
def test_property_hostile_headers_never_5xx(
    hostile_files: Files, method: str, fields: dict[str, list[str]]
) -> None:
    """
    Whatever values the conditional, range and encoding headers carry (none,
    one or two lines each), a file is answered with a status below 500, and
    a 200 is always the whole file (gzipped or not). A Range or If-Range on
    two lines never gives a 206.
    """
    lines = [f"{name}: {value}" for name, values in fields.items() for value in values]
    r = hostile_files.get_lines("/files/f.txt", *lines, method=method)
    assert r.code < 500, (lines, r.code, r.body)
    assert r.complete
    if r.code == 200 and method == "GET":
        body = gzip.decompress(r.body) if r.header("content-encoding") == "gzip" else r.body
        assert body == HOSTILE_BODY
    if r.code == 200 and r.header("content-encoding") != "gzip":
        assert r.header("content-length") == str(len(HOSTILE_BODY))
    if len(fields.get("Range", [])) > 1 or len(fields.get("If-Range", [])) > 1:
        assert r.code != 206, lines


@pytest.mark.parametrize(
    "name, fallback",
    [("café \"1\".txt", "cafe _1_.txt"), ("日本.txt", "__.txt"), ("a\\b.bin", "a_b.bin"),
     ("\udcffx.bin", "_x.bin"), ("", "download")],
)
def test_content_disposition_has_an_ascii_fallback_for_curl_oj(name: str, fallback: str) -> None:
    from streamsvc.files.media import content_disposition

    header = content_disposition(name).decode("ascii")
    assert header.startswith(f'attachment; filename="{fallback}"; filename*=UTF-8\'\'')


@pytest.mark.parametrize(
    "suffix, media",
    [(".mkv", "video/x-matroska"), (".webm", "video/webm"), (".m4a", "audio/mp4"), (".m4v", "video/mp4"),
     (".flac", "audio/flac"), (".ogg", "audio/ogg"), (".opus", "audio/ogg"), (".ts", "video/mp2t"),
     (".m3u8", "application/vnd.apple.mpegurl"), (".mpd", "application/dash+xml"), (".vtt", "text/vtt"),
     (".srt", "application/x-subrip"), (".log", "text/plain"), (".toml", "application/toml"),
     (".avif", "image/avif"), (".heic", "image/heic")],
)
def test_media_types_people_stream(suffix: str, media: str) -> None:
    from streamsvc.files.media import content_type_for

    assert content_type_for("clip" + suffix) == media
