"""
Tests for C{PUT}/C{DELETE /files} (L{streamsvc.files.upload}): decided at the
headers, streamed to a temporary file, installed whole or not at all.

The Site is the one L{streamsvc.app.build_site} makes, on a StringTransport
and a Clock; disk jobs run through a L{Jobs} runner the test controls
instead of the reactor's thread pool.
"""

from __future__ import annotations

import base64
import errno
import fcntl
import hashlib
import json
import os
from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock

from streamsvc.app import build_site, prepare_data_dir
from streamsvc.config import AuthConfig, Config, LimitsConfig, ServerConfig
from streamsvc.files.disk_upload import TEMP_PREFIX, TEMP_SUFFIX, remove_stale_uploads
from streamsvc.ranges import make_etag
from streamsvc.testing import RawResponse, SiteConnection

TOKEN = "upload-secret"
AUTH = f"Authorization: Bearer {TOKEN}"


class Jobs:
    """
    Runs the uploads' blocking calls: at once, or (C{hold}) only when the
    test says, to play a slow disk; C{fail} makes calls of a function raise.
    """

    def __init__(self) -> None:
        self.hold = False
        self.pending: list[tuple[Callable[..., Any], tuple[Any, ...], Deferred[Any]]] = []
        self.fail: dict[str, OSError] = {}

    def __call__(self, function: Callable[..., Any], *args: Any) -> Deferred[Any]:
        if self.hold:
            d: Deferred[Any] = Deferred()
            self.pending.append((function, args, d))
            return d
        return maybeDeferred(self._run, function, *args)

    def _run(self, function: Callable[..., Any], *args: Any) -> Any:
        error = self.fail.get(getattr(function, "__name__", ""))
        if error is not None:
            raise error
        return function(*args)

    def run_one(self) -> None:
        function, args, d = self.pending.pop(0)
        maybeDeferred(self._run, function, *args).chainDeferred(d)

    def run_all(self) -> None:
        self.hold = False
        while self.pending:
            function, args, d = self.pending.pop(0)
            maybeDeferred(self._run, function, *args).chainDeferred(d)


class Server:
    """A streamsvc Site over a data dir, with uploads on (one token)."""

    def __init__(self, tmp_path: Any, *, tokens: tuple[str, ...] = (TOKEN,), **limits: Any) -> None:
        self.clock = Clock()
        self.jobs = Jobs()
        limits.setdefault("body_timeout", 10)
        self.config = Config(
            server=ServerConfig(data_dir=str(tmp_path / "data")),
            auth=AuthConfig(tokens=tokens, protect_downloads=limits.pop("protect", False)),
            limits=LimitsConfig(**limits),
        )
        prepare_data_dir(self.config)
        self.root = tmp_path / "data" / "files"
        self.site = build_site(self.config, reactor=self.clock, run_blocking=self.jobs)

    def connect(self) -> SiteConnection:
        return SiteConnection(self.site)

    def put(self, path: str, body: bytes, *headers: str, chunked: bool = False) -> RawResponse:
        conn = self.connect()
        conn.send(put_head(path, None if chunked else len(body), *headers))
        conn.send(chunk(body) + b"0\r\n\r\n" if chunked else body)
        conn.read_until_quiet(self.clock)
        return conn.response()

    def request(self, method: str, path: str, *headers: str) -> RawResponse:
        conn = self.connect()
        lines = [f"{method} {path} HTTP/1.1", "Host: x", *headers]
        conn.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        conn.read_until_quiet(self.clock)
        return conn.response(head=method == "HEAD")

    def leftovers(self) -> list[str]:
        """Temporary files anywhere under the data dir."""
        return [
            name
            for _, _, names in os.walk(self.root.parent.parent)
            for name in names
            if name.startswith(TEMP_PREFIX)
        ]


def put_head(path: str, length: int | None, *headers: str) -> bytes:
    lines = [f"PUT {path} HTTP/1.1", "Host: x", *headers]
    lines.append("Transfer-Encoding: chunked" if length is None else f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data) if data else b""


def sha256_field(data: bytes, name: str = "sha-256") -> str:
    digest = hashlib.new(name.replace("-", ""), data).digest()
    return f"{name}=:{base64.b64encode(digest).decode()}:"


@pytest.fixture
def server(tmp_path: Any) -> Server:
    return Server(tmp_path)


# -- success --------------------------------------------------------------------


def test_put_creates_a_file(server: Server) -> None:
    """201 with Location, the stored file's ETag and Content-Digest; the bytes are on disk."""
    body = os.urandom(300_000)
    response = server.put("/files/new.bin", body, AUTH)
    assert response.code == 201
    assert response.header("location") == "/files/new.bin"
    stored = server.root / "new.bin"
    assert stored.read_bytes() == body
    st = stored.stat()
    assert response.header("etag") == make_etag(st.st_size, st.st_mtime_ns)
    assert response.header("repr-digest") == sha256_field(body)
    assert json.loads(response.body) == {
        "path": "new.bin",
        "size": len(body),
        "etag": response.header("etag"),
        "digest": sha256_field(body),
    }
    assert server.leftovers() == []
    get = server.request("GET", "/files/new.bin")
    assert get.body == body and get.header("etag") == response.header("etag")


def test_put_replaces_a_file(server: Server) -> None:
    """An existing file is replaced whole: 204, new bytes, new ETag."""
    (server.root / "f.txt").write_bytes(b"old version")
    response = server.put("/files/f.txt", b"new version!", AUTH)
    assert response.code == 204 and response.body == b""
    assert (server.root / "f.txt").read_bytes() == b"new version!"
    assert response.header("repr-digest") == sha256_field(b"new version!")
    assert server.leftovers() == []


def test_chunked_put_is_stored(server: Server) -> None:
    """A body with no length is stored as it arrives."""
    body = b"line\n" * 50_000
    response = server.put("/files/c.txt", body, AUTH, chunked=True)
    assert response.code == 201
    assert (server.root / "c.txt").read_bytes() == body


def test_empty_put_creates_an_empty_file(server: Server) -> None:
    """Content-Length: 0 is rendered, not streamed, and still stores (an empty file)."""
    response = server.put("/files/empty", b"", AUTH)
    assert response.code == 201
    assert (server.root / "empty").read_bytes() == b""


def test_missing_folders_are_created(server: Server) -> None:
    response = server.put("/files/a/b%20c/d.txt", b"deep", AUTH)
    assert response.code == 201
    assert response.header("location") == "/files/a/b%20c/d.txt"
    assert (server.root / "a" / "b c" / "d.txt").read_bytes() == b"deep"


def test_expect_100_continue_once_accepted(server: Server) -> None:
    conn = server.connect()
    conn.send(put_head("/files/x", 5, AUTH, "Expect: 100-continue"))
    assert conn.transport.value() == b"HTTP/1.1 100 Continue\r\n\r\n"
    conn.send(b"hello")
    conn.read_until_quiet(server.clock)
    assert b"201 Created" in conn.transport.value()


def test_connection_is_kept_after_an_upload(server: Server) -> None:
    """A successful upload leaves the connection reusable."""
    conn = server.connect()
    conn.send(put_head("/files/x", 3, AUTH) + b"abc")
    conn.read_until_quiet(server.clock)
    conn.send(b"GET /files/x HTTP/1.1\r\nHost: x\r\n\r\n")
    conn.read_until_quiet(server.clock)
    assert conn.transport.value().count(b"HTTP/1.1 ") == 2
    assert conn.transport.value().endswith(b"abc")
    assert not conn.aborted


# -- refused at the headers ----------------------------------------------------------


@pytest.mark.parametrize(
    "auth, code",
    [
        (None, 401),
        ("Authorization: Bearer wrong", 401),
        ("Authorization: Basic dXNlcjpwdw==", 401),
        ("Authorization: Bearer a b", 400),
    ],
)
def test_put_needs_a_token(server: Server, auth: str | None, code: int) -> None:
    """Refused before the body is read: no 100 Continue, no file, connection closed."""
    conn = server.connect()
    conn.send(put_head("/files/x", 1000, *([auth] if auth else []), "Expect: 100-continue"))
    conn.read_until_quiet(server.clock)
    response = conn.response()
    assert response.code == code
    assert b"100 Continue" not in conn.transport.value()
    assert response.header("connection") == "close"
    assert "error" in json.loads(response.body)
    assert not (server.root / "x").exists() and server.leftovers() == []


def test_uploads_are_disabled_without_tokens(tmp_path: Any) -> None:
    server = Server(tmp_path, tokens=())
    response = server.put("/files/x", b"data", AUTH)
    assert response.code == 403
    assert "disabled" in json.loads(response.body)["error"]
    assert server.request("DELETE", "/files/x", AUTH).code == 403
    assert not (server.root / "x").exists()


def test_too_long_upload_is_refused_at_the_headers(tmp_path: Any) -> None:
    server = Server(tmp_path, max_upload_bytes=1000)
    conn = server.connect()
    conn.send(put_head("/files/x", 1001, AUTH, "Expect: 100-continue"))
    conn.read_until_quiet(server.clock)
    assert conn.response().code == 413
    assert b"100 Continue" not in conn.transport.value()
    assert server.leftovers() == []


def test_chunked_upload_passing_the_limit_is_a_413(tmp_path: Any) -> None:
    """Cut the moment it passes the limit: 413, nothing kept."""
    server = Server(tmp_path, max_upload_bytes=100_000)
    (server.root / "x").write_bytes(b"old")
    conn = server.connect()
    conn.send(put_head("/files/x", None, AUTH))
    for _ in range(20):
        conn.send(chunk(b"y" * 10_000))
    conn.read_until_quiet(server.clock)
    assert conn.response().code == 413
    assert (server.root / "x").read_bytes() == b"old"
    assert server.leftovers() == []


@pytest.mark.parametrize(
    "path, code",
    [
        ("/files/.hidden", 400),
        ("/files/a/.git/config", 400),
        ("/files/..", 400),
        ("/files/%2e%2e/escape", 400),
        ("/files/a%2f..%2f..%2fescape", 400),
        ("/files/a%5cb", 400),
        ("/files/a%00b", 400),
        ("/files/con%0ax", 400),  # a newline in a name (#28 item 12: was created)
        ("/files/a%1bb", 400),
        ("/files/a%7fb", 400),
        ("/files/a%c2%85b", 400),  # U+0085, a C1 line break
        ("/files/evil%e2%80%aetxt.exe", 400),  # U+202E right-to-left override
        ("/files/dir%0a/x", 400),  # in a folder's name too
        ("/files/a//b", 400),
        ("/files/%ff", 400),
        ("/files/dir/", 400),  # a folder, with a body
        ("/files", 409),
        ("/files/", 409),
    ],
)
def test_bad_paths_are_refused_and_nothing_is_written(server: Server, path: str, code: int) -> None:
    response = server.put(path, b"payload", AUTH)
    assert response.code == code
    assert "error" in json.loads(response.body)
    everything = {p.name for p in server.root.parent.parent.rglob("*")}
    assert "escape" not in everything and server.leftovers() == []


def test_a_folder_name_with_a_newline_is_refused(server: Server) -> None:
    r = server.request("PUT", "/files/a%0ab/", AUTH, "Content-Length: 0")
    assert r.code == 400 and "control" in json.loads(r.body)["error"]
    assert list(server.root.iterdir()) == []


def test_names_in_other_scripts_are_welcome(server: Server) -> None:
    assert server.put("/files/%c3%bcber-%e6%97%a5%e6%9c%ac.txt", b"x", AUTH).code == 201
    assert (server.root / "über-日本.txt").read_bytes() == b"x"


def test_a_put_of_a_path_ending_in_slash_without_a_body_makes_the_folder(server: Server) -> None:
    assert server.request("PUT", "/files/a/b/", "Content-Length: 0").code == 401
    r = server.request("PUT", "/files/a/b/", AUTH, "Content-Length: 0")
    assert r.code == 201 and json.loads(r.body) == {"folder": "a/b", "created": True}
    assert (server.root / "a" / "b").is_dir()
    r = server.request("PUT", "/files/a/b/", AUTH, "Content-Length: 0")
    assert r.code == 200 and json.loads(r.body)["created"] is False
    (server.root / "f").write_bytes(b"x")
    assert server.request("PUT", "/files/f/sub/", AUTH, "Content-Length: 0").code == 409
    assert server.request("PUT", "/files/.git/", AUTH, "Content-Length: 0").code == 400
    assert server.leftovers() == []


def test_symlinked_folder_leading_outside_is_not_followed(server: Server, tmp_path: Any) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, server.root / "link")
    assert server.put("/files/link/x", b"payload", AUTH).code == 404
    assert list(outside.iterdir()) == []


def test_symlinked_folder_inside_the_root_is_followed(server: Server) -> None:
    (server.root / "real").mkdir()
    os.symlink(server.root / "real", server.root / "alias")
    assert server.put("/files/alias/x", b"payload", AUTH).code == 201
    assert (server.root / "real" / "x").read_bytes() == b"payload"


def test_put_onto_a_folder_or_through_a_file_is_a_409(server: Server) -> None:
    (server.root / "dir").mkdir()
    (server.root / "file").write_bytes(b"f")
    assert server.put("/files/dir", b"x", AUTH).code == 409
    assert server.put("/files/file/inner", b"x", AUTH).code == 409
    assert (server.root / "dir").is_dir() and (server.root / "file").read_bytes() == b"f"


def test_put_onto_a_symlink_is_a_409(server: Server) -> None:
    (server.root / "target").write_bytes(b"t")
    os.symlink(server.root / "target", server.root / "link")
    assert server.put("/files/link", b"x", AUTH).code == 409
    assert (server.root / "target").read_bytes() == b"t"


# -- preconditions -----------------------------------------------------------------------


def etag_of(path: Any) -> str:
    st = path.stat()
    return make_etag(st.st_size, st.st_mtime_ns)


def test_if_none_match_star_creates_only(server: Server) -> None:
    (server.root / "f").write_bytes(b"old")
    conn = server.connect()
    conn.send(put_head("/files/f", 3, AUTH, "If-None-Match: *", "Expect: 100-continue"))
    conn.read_until_quiet(server.clock)
    assert conn.response().code == 412
    assert b"100 Continue" not in conn.transport.value()
    assert (server.root / "f").read_bytes() == b"old"
    assert server.put("/files/g", b"new", AUTH, "If-None-Match: *").code == 201


def test_if_match_replaces_only_that_version(server: Server) -> None:
    f = server.root / "f"
    f.write_bytes(b"v1")
    assert server.put("/files/f", b"v2", AUTH, 'If-Match: "nope"').code == 412
    assert f.read_bytes() == b"v1"
    assert server.put("/files/f", b"v2", AUTH, f"If-Match: {etag_of(f)}").code == 204
    assert f.read_bytes() == b"v2"
    assert server.put("/files/missing", b"v", AUTH, "If-Match: *").code == 412


def test_precondition_checked_again_before_the_rename(server: Server) -> None:
    """A file that appears while the body arrives is not overwritten by a create-only PUT."""
    conn = server.connect()
    conn.send(put_head("/files/f", 6, AUTH, "If-None-Match: *") + b"abc")
    (server.root / "f").write_bytes(b"someone else's")
    conn.send(b"def")
    conn.read_until_quiet(server.clock)
    assert conn.response().code == 412
    assert (server.root / "f").read_bytes() == b"someone else's"
    assert server.leftovers() == []


# -- digests ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        lambda b: "Content-Digest: " + sha256_field(b),
        lambda b: "Content-Digest: " + sha256_field(b, "sha-512"),
        lambda b: "Content-Digest: md5=:AAAA:, " + sha256_field(b),
        lambda b: "Digest: SHA-256=" + base64.b64encode(hashlib.sha256(b).digest()).decode(),
        lambda b: "Repr-Digest: " + sha256_field(b),
    ],
    ids=["sha-256", "sha-512", "unknown-and-sha-256", "legacy-digest", "repr-digest"],
)
def test_matching_digest_is_stored(server: Server, header: Callable[[bytes], str]) -> None:
    body = os.urandom(100_000)
    assert server.put("/files/d", body, AUTH, header(body)).code == 201
    assert (server.root / "d").read_bytes() == body


@pytest.mark.parametrize("name", ["Content-Digest", "Repr-Digest"])
def test_digest_mismatch_stores_nothing(server: Server, name: str) -> None:
    (server.root / "d").write_bytes(b"old")
    response = server.put("/files/d", b"new body", AUTH, f"{name}: " + sha256_field(b"other"))
    assert response.code == 400
    assert "sha-256" in json.loads(response.body)["error"]
    assert (server.root / "d").read_bytes() == b"old"
    assert server.leftovers() == []


@pytest.mark.parametrize(
    "header",
    [
        "Content-Digest: sha-256=AAAA",
        "Content-Digest: sha-256=:not base64!:",
        "Content-Digest: sha-256=:AAAA:",  # wrong length
        "Digest: SHA-256",
        "Repr-Digest: sha-256=:AAAA:",  # (issue #34: was ignored, the body stored)
        "Repr-Digest: sha-256=AAAA",
    ],
)
def test_malformed_digest_is_a_400_at_the_headers(server: Server, header: str) -> None:
    conn = server.connect()
    conn.send(put_head("/files/d", 10, AUTH, header, "Expect: 100-continue"))
    conn.read_until_quiet(server.clock)
    assert conn.response().code == 400
    assert "digest" in json.loads(conn.response().body)["error"].lower()
    assert b"100 Continue" not in conn.transport.value()
    assert server.leftovers() == []


# -- failure paths: nothing half-written ---------------------------------------------------


def test_disconnect_mid_body_leaves_the_old_version(server: Server) -> None:
    (server.root / "f").write_bytes(b"old")
    conn = server.connect()
    conn.send(put_head("/files/f", 1_000_000, AUTH) + b"x" * 300_000)
    assert server.leftovers() != []  # the temporary file exists while it arrives
    conn.disconnect()
    assert (server.root / "f").read_bytes() == b"old"
    assert server.leftovers() == []


def test_disconnect_while_the_disk_is_busy_removes_the_file_after(server: Server) -> None:
    """The temporary file goes once the write in progress is over, never under it."""
    server.jobs.hold = True
    conn = server.connect()
    conn.send(put_head("/files/f", 1_000_000, AUTH) + b"x" * 100_000)
    conn.disconnect()
    assert server.leftovers() != []
    server.jobs.run_all()
    assert server.leftovers() == [] and not (server.root / "f").exists()


def test_stalled_body_times_out(server: Server) -> None:
    conn = server.connect()
    conn.send(put_head("/files/f", 1000, AUTH) + b"x" * 10)
    server.clock.advance(10.5)
    conn.read_until_quiet(server.clock)
    assert conn.response().code == 408
    assert server.leftovers() == [] and not (server.root / "f").exists()


@pytest.mark.parametrize(
    "code, status",
    [(errno.ENOSPC, 507), (errno.EDQUOT, 507), (errno.EIO, 500), (errno.EROFS, 500), (errno.EMFILE, 503)],
)
def test_disk_errors_are_answered_and_leave_nothing(server: Server, code: int, status: int) -> None:
    (server.root / "f").write_bytes(b"old")
    server.jobs.fail["_write_all"] = OSError(code, os.strerror(code))
    response = server.put("/files/f", b"x" * 200_000, AUTH)
    assert response.code == status
    assert "error" in json.loads(response.body)
    assert (server.root / "f").read_bytes() == b"old"
    assert server.leftovers() == []


def test_fsync_failure_installs_nothing(server: Server) -> None:
    server.jobs.fail["fsync"] = OSError(errno.EIO, "I/O error")
    assert server.put("/files/f", b"data", AUTH).code == 500
    assert not (server.root / "f").exists() and server.leftovers() == []


def test_slow_disk_pauses_the_socket(server: Server) -> None:
    """More than high water waiting for the disk: the server stops reading until it catches up."""
    server.jobs.hold = True
    conn = server.connect()
    conn.send(put_head("/files/f", 4 * 1024 * 1024, AUTH))
    for _ in range(20):
        conn.send(b"z" * 65536)
    assert conn.transport.producerState == "paused"
    server.jobs.run_all()
    assert conn.transport.producerState == "producing"
    conn.send(b"z" * (4 * 1024 * 1024 - 20 * 65536))
    server.jobs.run_all()
    conn.read_until_quiet(server.clock)
    assert conn.response().code == 201
    assert (server.root / "f").stat().st_size == 4 * 1024 * 1024


# -- DELETE ----------------------------------------------------------------------------------


def test_delete(server: Server) -> None:
    (server.root / "f").write_bytes(b"bye")
    response = server.request("DELETE", "/files/f", AUTH)
    assert response.code == 204
    assert not (server.root / "f").exists()
    assert server.request("DELETE", "/files/f", AUTH).code == 404
    assert server.request("GET", "/files/f").code == 404


def test_delete_refusals(server: Server) -> None:
    (server.root / "dir").mkdir()
    (server.root / "f").write_bytes(b"keep")
    assert server.request("DELETE", "/files/f").code == 401
    assert server.request("DELETE", "/files/dir", AUTH).code == 409
    assert server.request("DELETE", "/files/f", AUTH, 'If-Match: "other"').code == 412
    assert server.request("DELETE", "/files/.hidden", AUTH).code == 400
    assert (server.root / "f").read_bytes() == b"keep" and (server.root / "dir").is_dir()


def test_delete_with_a_small_body_is_still_handled(server: Server) -> None:
    (server.root / "f").write_bytes(b"x")
    conn = server.connect()
    conn.send(
        f"DELETE /files/f HTTP/1.1\r\nHost: x\r\n{AUTH}\r\nContent-Length: 2\r\n\r\nhi".encode()
    )
    conn.read_until_quiet(server.clock)
    assert conn.response().code == 204 and not (server.root / "f").exists()


# -- around uploads ---------------------------------------------------------------------------


def test_get_with_a_small_body_is_answered_as_usual(server: Server) -> None:
    (server.root / "f").write_bytes(b"content")
    conn = server.connect()
    conn.send(b"GET /files/f HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody")
    conn.read_until_quiet(server.clock)
    assert conn.response().code == 200 and conn.response().body == b"content"


def test_patch_to_files_is_a_405_and_a_post_body_a_413_at_the_headers(server: Server) -> None:
    conn = server.connect()
    conn.send(b"PATCH /files/f HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n")
    conn.read_until_quiet(server.clock)
    response = conn.response()
    assert response.code == 405 and response.header("allow") == "DELETE, GET, HEAD, OPTIONS, POST, PUT"
    conn = server.connect()
    conn.send(b"POST /files/f?sign=60 HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n")
    conn.read_until_quiet(server.clock)
    assert conn.response().code == 413  # a POST here takes no body: refused unread


def test_protected_downloads_still_take_uploads(tmp_path: Any) -> None:
    """Behind the download guard, a PUT body still streams in (not a 413), and needs the token."""
    server = Server(tmp_path, protect=True)
    body = b"q" * 3_000_000  # over max_body_bytes: would be refused if the guard hid the upload
    assert server.put("/files/big", body, AUTH).code == 201
    conn = server.connect()
    conn.send(put_head("/files/other", len(body)))
    conn.read_until_quiet(server.clock)
    assert conn.response().code == 401
    assert not (server.root / "other").exists()


def test_stale_temporary_files_are_removed_at_start(tmp_path: Any) -> None:
    """Leftovers nobody holds are removed; a live upload's (locked) file is not."""
    files = tmp_path / "data" / "files"
    (files / "sub").mkdir(parents=True)
    stale = files / "sub" / f"{TEMP_PREFIX}abcd{TEMP_SUFFIX}"
    live = files / f"{TEMP_PREFIX}beef{TEMP_SUFFIX}"
    kept = files / "regular.txt"
    for path in (stale, live, kept):
        path.write_bytes(b"x")
    holder = os.open(live, os.O_RDONLY)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        assert remove_stale_uploads(str(files)) == 1
        assert not stale.exists() and live.exists() and kept.exists()
    finally:
        os.close(holder)
    # prepare_data_dir does it at start-up.
    prepare_data_dir(Config(server=ServerConfig(data_dir=str(tmp_path / "data"))))
    assert not live.exists() and kept.exists()


def test_an_upload_in_progress_survives_another_start_up(server: Server) -> None:
    server.jobs.hold = True
    conn = server.connect()
    conn.send(put_head("/files/f", 1000, AUTH) + b"x" * 10)
    assert remove_stale_uploads(str(server.root)) == 0
    assert len(server.leftovers()) == 1
    conn.disconnect()
    server.jobs.run_all()


def test_temporary_files_are_never_listed_or_served(server: Server) -> None:
    server.jobs.hold = True
    conn = server.connect()
    conn.send(put_head("/files/f", 1000, AUTH) + b"x" * 10)
    (temp,) = server.leftovers()
    listing = json.loads(server.request("GET", "/files/").body)
    assert listing == []
    assert server.request("GET", f"/files/{temp}").code == 404
    conn.disconnect()
    server.jobs.run_all()


# -- from review: partial PUTs, leftovers, races -----------------------------------------


def test_put_with_content_range_is_a_400(server: Server) -> None:
    """RFC 9110 §14.5: storing the fragment as the whole file would destroy it."""
    (server.root / "f").write_bytes(b"0123456789")
    response = server.put("/files/f", b"AB", AUTH, "Content-Range: bytes 2-3/10")
    assert response.code == 400
    assert (server.root / "f").read_bytes() == b"0123456789"


def test_put_with_content_encoding_is_a_415(server: Server) -> None:
    assert server.put("/files/f", b"x", AUTH, "Content-Encoding: gzip").code == 415
    assert server.put("/files/g", b"x", AUTH, "Content-Encoding: identity").code == 201


def test_refused_upload_creates_no_folders(server: Server) -> None:
    assert server.put("/files/new/deep/x", b"x", AUTH, 'If-Match: "nope"').code == 412
    assert not (server.root / "new").exists()


def test_failed_upload_removes_the_folders_it_created(server: Server) -> None:
    (server.root / "old").mkdir()
    conn = server.connect()
    conn.send(put_head("/files/old/new/deeper/x", 1000, AUTH) + b"x" * 10)
    assert (server.root / "old" / "new" / "deeper").is_dir()
    conn.disconnect()
    assert not (server.root / "old" / "new").exists()
    assert (server.root / "old").is_dir()


def test_created_folders_are_fsynced(server: Server, monkeypatch: Any) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def recording(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording)
    assert server.put("/files/a/b/f", b"x", AUTH).code == 201
    root = os.path.realpath(server.root)
    assert {root, f"{root}/a", f"{root}/a/b"} <= set(synced)


def test_name_too_long_is_a_400(server: Server) -> None:
    response = server.put("/files/" + "n" * 300, b"x", AUTH)
    assert response.code == 400
    assert server.request("DELETE", "/files/" + "n" * 300, AUTH).code == 400


def test_create_only_losing_a_race_is_a_412(server: Server, monkeypatch: Any) -> None:
    """A file created by another process between the last check and link(): 412, theirs kept."""
    import streamsvc.files.disk_upload as upload

    real_current = upload._current

    def racing(folder_fd: int, name: str) -> Any:
        found = real_current(folder_fd, name)
        if found is None and server.leftovers():  # the check right before the install
            (server.root / name).write_bytes(b"theirs")
        return found

    conn = server.connect()
    conn.send(put_head("/files/f", 4, AUTH, "If-None-Match: *"))
    monkeypatch.setattr(upload, "_current", racing)
    conn.send(b"mine")
    conn.read_until_quiet(server.clock)
    assert conn.response().code == 412
    assert (server.root / "f").read_bytes() == b"theirs"
    assert server.leftovers() == []


def test_two_interleaved_puts_to_one_path_leave_one_whole_body(server: Server) -> None:
    """Bodies arriving in turns on two connections: the file is one of them whole, never a mix."""
    first, second = os.urandom(200_000), os.urandom(150_000)
    a, b = server.connect(), server.connect()
    a.send(put_head("/files/f", len(first), AUTH))
    b.send(put_head("/files/f", len(second), AUTH))
    for i in range(0, 200_000, 10_000):
        a.send(first[i:i + 10_000])
        b.send(second[i:i + 10_000])
        server.clock.advance(0)
    a.read_until_quiet(server.clock)
    b.read_until_quiet(server.clock)
    assert {a.response().code, b.response().code} <= {201, 204}
    assert (server.root / "f").read_bytes() in (first, second)
    assert server.leftovers() == []


def test_two_puts_with_the_same_if_match_one_wins(server: Server) -> None:
    """Both sent against version 1: the one installed first wins, the other is a 412 (no lost update)."""
    f = server.root / "f"
    f.write_bytes(b"v1")
    tag = etag_of(f)
    a, b = server.connect(), server.connect()
    a.send(put_head("/files/f", 5, AUTH, f"If-Match: {tag}"))
    b.send(put_head("/files/f", 5, AUTH, f"If-Match: {tag}"))
    a.send(b"mine!")
    a.read_until_quiet(server.clock)
    b.send(b"their")
    b.read_until_quiet(server.clock)
    assert a.response().code == 204 and b.response().code == 412
    assert f.read_bytes() == b"mine!"
    assert server.leftovers() == []


def test_conditional_delete_cannot_remove_a_newer_version(server: Server) -> None:
    """The name is gone when DELETE's check passes, so a PUT after it makes a new file that stays."""
    f = server.root / "f"
    f.write_bytes(b"v1")
    server.jobs.hold = True
    conn = server.connect()
    conn.send(f"DELETE /files/f HTTP/1.1\r\nHost: x\r\n{AUTH}\r\nIf-Match: {etag_of(f)}\r\n\r\n".encode())
    assert not f.exists()
    server.jobs.run_all()
    assert server.put("/files/f", b"v2", AUTH).code == 201
    conn.read_until_quiet(server.clock)
    assert conn.response().code == 204
    assert f.read_bytes() == b"v2"
    assert server.leftovers() == []


def deleted_files_open(below: Any) -> list[str]:
    """What this process holds open below C{below} that has no name any more."""
    held = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            held.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass  # the listing's own descriptor, gone already
    prefix = os.path.realpath(below) + os.sep
    return [name for name in held if name.startswith(prefix) and name.endswith("(deleted)")]


def test_replaced_file_is_freed_off_the_reactor(server: Server) -> None:
    """
    The old version is held open through the rename and closed by a thread
    job after the answer: its blocks are freed there, not inside rename()
    on the reactor, and the client does not wait for it.
    """
    f = server.root / "f"
    f.write_bytes(b"old" * 1000)
    conn = server.connect()
    conn.send(put_head("/files/f", 3, AUTH))
    server.jobs.hold = True
    conn.send(b"new")
    server.jobs.run_one()  # the body
    server.jobs.run_one()  # fsync, then the rename on the reactor
    assert f.read_bytes() == b"new"
    assert deleted_files_open(server.root) == [f"{os.path.realpath(f)} (deleted)"]
    server.jobs.run_one()  # fsync of the folder: answered, the old file still open
    conn.read_until_quiet(server.clock)
    assert conn.response().code == 204
    assert len(deleted_files_open(server.root)) == 1
    server.jobs.run_one()  # the release: the old file closed (freed) in the thread
    assert deleted_files_open(server.root) == []


def test_mid_body_refusal_says_connection_close(tmp_path: Any) -> None:
    server = Server(tmp_path, max_upload_bytes=1000)
    conn = server.connect()
    conn.send(put_head("/files/x", None, AUTH) + chunk(b"y" * 2000))
    conn.read_until_quiet(server.clock)
    assert conn.response().code == 413
    assert conn.response().header("connection") == "close"


def test_content_and_repr_digest_that_disagree_are_a_400(server: Server) -> None:
    """With no content coding they cover the same bytes: two values for one algorithm cannot both hold."""
    body = b"abc"
    response = server.put(
        "/files/d", body, AUTH, "Content-Digest: " + sha256_field(body), "Repr-Digest: " + sha256_field(b"x")
    )
    assert response.code == 400
    assert json.loads(response.body) == {"error": "two different sha-256 digests"}
    assert not (server.root / "d").exists()


def test_digest_mismatch_of_an_empty_put_keeps_the_connection(server: Server) -> None:
    conn = server.connect()
    conn.send(put_head("/files/x", 0, AUTH, "Content-Digest: " + sha256_field(b"not empty")))
    conn.read_until_quiet(server.clock)
    assert conn.response().code == 400
    assert conn.response().header("connection") is None
    assert not conn.aborted and not conn.transport.disconnecting
