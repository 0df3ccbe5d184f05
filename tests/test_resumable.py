"""
Resumable uploads, the IETF draft (L{streamsvc.files.resumable}), through
a whole Site in memory: the 104 before the body, appends, offsets, the
draft's errors, cancellation, a restart between the cut and the resume,
and the token rules. Disk jobs run at once; time is a Clock.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from typing import Any

import pytest

from streamsvc.app import build_site
from streamsvc.files.resumable import INTEROP_VERSION, sf_boolean, sf_integer, upload_limit
from streamsvc.errors import HTTPError
from streamsvc.testing import RawResponse, SiteConnection, parse_response
from test_upload import AUTH, Server, chunk, sha256_field

VERSION = f"Upload-Draft-Interop-Version: {INTEROP_VERSION}"


def split_informational(raw: bytes) -> tuple[list[bytes], bytes]:
    """The 1xx responses at the front of C{raw}, and the rest."""
    informational = []
    while re.match(rb"HTTP/1\.1 1\d\d ", raw):
        head, _, raw = raw.partition(b"\r\n\r\n")
        informational.append(head)
    return informational, raw


def headers_of(head: bytes) -> dict[str, str]:
    lines = head.decode("latin-1").split("\r\n")[1:]
    return {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}


class Resumable(Server):
    def create(self, path: str, body: bytes, *headers: str, complete: bool = True, cut_after: int | None = None,
               chunked: bool = False) -> tuple[list[bytes], RawResponse | None, SiteConnection]:
        conn = self.connect()
        lines = [f"PUT {path} HTTP/1.1", "Host: x", AUTH, VERSION, f"Upload-Complete: ?{int(complete)}", *headers]
        lines.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {len(body)}")
        conn.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        sent = body if cut_after is None else body[:cut_after]
        conn.send(chunk(sent) + (b"0\r\n\r\n" if cut_after is None else b"") if chunked else sent)
        if cut_after is not None:
            conn.disconnect()
        conn.read_until_quiet(self.clock)
        informational, rest = split_informational(conn.transport.value())
        return informational, (parse_response(rest) if rest else None), conn

    def location(self, informational: list[bytes]) -> str:
        return headers_of(informational[0])["location"]

    def head(self, location: str, *headers: str) -> RawResponse:
        return self.request("HEAD", location, AUTH, *headers)

    def patch(self, location: str, body: bytes, offset: int, *, complete: bool, cut_after: int | None = None,
              headers: tuple[str, ...] = (), content_type: str = "application/partial-upload") -> RawResponse | None:
        conn = self.connect()
        lines = [f"PATCH {location} HTTP/1.1", "Host: x", AUTH, VERSION, f"Content-Type: {content_type}",
                 f"Upload-Offset: {offset}", f"Upload-Complete: ?{int(complete)}", f"Content-Length: {len(body)}",
                 *headers]
        conn.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        conn.send(body if cut_after is None else body[:cut_after])
        if cut_after is not None:
            conn.disconnect()
            conn.read_until_quiet(self.clock)
            return None
        conn.read_until_quiet(self.clock)
        return conn.response()

    def restart(self) -> None:
        self.site = build_site(self.config, reactor=self.clock, run_blocking=self.jobs)


@pytest.fixture
def server(tmp_path: Any) -> Resumable:
    return Resumable(tmp_path)


def test_the_fields_are_structured() -> None:
    assert sf_boolean(b"?1", "X") is True and sf_boolean(b" ?0 ", "X") is False and sf_boolean(None, "X") is None
    for bad in (b"1", b"true", b"?2", b""):
        with pytest.raises(HTTPError):
            sf_boolean(bad, "X")
    assert sf_integer(b"0", "X") == 0 and sf_integer(b"123456789012345", "X") == 123456789012345
    for bad in (b"-1", b"1.5", b"1234567890123456", b"", b"0x10"):
        with pytest.raises(HTTPError):
            sf_integer(bad, "X")
    assert upload_limit(1000, 3600.7) == b"max-size=1000, max-age=3600"


def test_a_whole_upload_gets_the_104_first_then_the_usual_answer(server: Resumable) -> None:
    body = os.urandom(200_000)
    informational, response, _ = server.create("/files/a.bin", body)
    assert len(informational) == 1 and informational[0].startswith(b"HTTP/1.1 104 Upload Resumption Supported")
    fields = headers_of(informational[0])
    assert re.fullmatch(r"/uploads/[A-Za-z0-9_-]{24}", fields["location"])
    assert fields["upload-draft-interop-version"] == str(INTEROP_VERSION)
    assert fields["upload-limit"].startswith("max-size=200000, max-age=")
    assert response.code == 201 and response.header("upload-complete") == "?1"
    assert response.header("location") == "/files/a.bin" and response.header("repr-digest") == sha256_field(body)
    assert (server.root / "a.bin").read_bytes() == body
    head = server.head(fields["location"])
    assert head.code == 204 and head.header("upload-complete") == "?1" and head.header("upload-offset") == "200000"


def test_the_104_goes_before_a_byte_of_the_body_is_read(server: Resumable) -> None:
    conn = server.connect()
    conn.send(b"PUT /files/b.bin HTTP/1.1\r\nHost: x\r\n" + AUTH.encode() + b"\r\n" + VERSION.encode()
              + b"\r\nUpload-Complete: ?1\r\nContent-Length: 10\r\n\r\n")
    assert conn.transport.value().startswith(b"HTTP/1.1 104 Upload Resumption Supported\r\n")
    conn.send(b"0123456789")
    conn.read_until_quiet(server.clock)
    assert (server.root / "b.bin").read_bytes() == b"0123456789"


def test_a_cut_creation_is_resumed_by_head_and_patch(server: Resumable) -> None:
    (server.root / "c.bin").write_bytes(b"the old version")
    body = os.urandom(300_000)
    informational, response, _ = server.create("/files/c.bin", body, f"Repr-Digest: {sha256_field(body)}",
                                               cut_after=123_456)
    assert response is None  # the client left: nobody to answer
    location = server.location(informational)
    head = server.head(location)
    assert head.code == 204 and head.header("upload-offset") == "123456"
    assert head.header("upload-complete") == "?0" and head.header("upload-length") == "300000"
    assert head.header("cache-control") == "no-store" and "max-age=" in head.header("upload-limit")
    assert (server.root / "c.bin").read_bytes() == b"the old version"  # served unchanged meanwhile
    listing = json.loads(server.request("GET", "/files/", "Accept: application/json").body)
    assert [e["name"] for e in listing] == ["c.bin"]  # no partial data in the listing
    done = server.patch(location, body[123_456:], 123_456, complete=True)
    assert done.code == 204 and done.header("upload-complete") == "?1"  # replaced: the usual 204
    assert done.header("repr-digest") == sha256_field(body)
    assert (server.root / "c.bin").read_bytes() == body


def test_incomplete_creation_then_appends(server: Resumable) -> None:
    informational, response, _ = server.create("/files/d.txt", b"first,", complete=False)
    assert response.code == 201 and response.header("upload-complete") == "?0"
    location = response.header("location")
    assert location == server.location(informational) and response.header("upload-offset") == "6"
    middle = server.patch(location, b"second,", 6, complete=False)
    assert middle.code == 204 and middle.header("upload-offset") == "13" and middle.header("upload-complete") == "?0"
    last = server.patch(location, b"third", 13, complete=True)
    assert last.code == 201 and json.loads(last.body)["size"] == 18
    assert (server.root / "d.txt").read_bytes() == b"first,second,third"


def test_a_wrong_offset_is_a_409_with_the_real_one(server: Resumable) -> None:
    _, response, _ = server.create("/files/e", b"12345", complete=False)
    location = response.header("location")
    conflict = server.patch(location, b"x", 3, complete=False)
    assert conflict.code == 409 and conflict.header("upload-offset") == "5"
    assert conflict.header("content-type") == "application/problem+json"
    problem = json.loads(conflict.body)
    assert problem["type"].endswith("#mismatching-upload-offset")
    assert problem["expected-offset"] == 5 and problem["provided-offset"] == 3 and problem["error"]
    assert server.head(location).header("upload-offset") == "5"


def test_appending_to_a_completed_upload_is_refused(server: Resumable) -> None:
    informational, response, _ = server.create("/files/f", b"all")
    location = server.location(informational)
    late = server.patch(location, b"more", 3, complete=True)
    assert late.code == 400 and json.loads(late.body)["type"].endswith("#inconsistent-upload-length")
    empty = server.patch(location, b"", 3, complete=True)
    assert empty.code == 400 and json.loads(empty.body)["type"].endswith("#completed-upload")
    assert (server.root / "f").read_bytes() == b"all"


def test_a_length_that_contradicts_the_known_one(server: Resumable) -> None:
    _, response, _ = server.create("/files/g", b"ab", "Upload-Length: 10", complete=False)
    location = response.header("location")
    wrong = server.patch(location, b"cd", 2, complete=False, headers=("Upload-Length: 11",))
    assert wrong.code == 400 and json.loads(wrong.body)["type"].endswith("#inconsistent-upload-length")
    short = server.patch(location, b"cd", 2, complete=True)
    assert short.code == 400 and json.loads(short.body)["type"].endswith("#inconsistent-upload-length")
    past = server.patch(location, b"c" * 9, 2, complete=False)
    assert past.code == 413


def test_an_append_needs_the_draft_s_media_type_and_fields(server: Resumable) -> None:
    _, response, _ = server.create("/files/h", b"", complete=False)
    location = response.header("location")
    assert server.patch(location, b"x", 0, complete=False, content_type="application/octet-stream").code == 415
    conn = server.connect()
    conn.send(f"PATCH {location} HTTP/1.1\r\nHost: x\r\n{AUTH}\r\nContent-Type: application/partial-upload\r\n"
              "Content-Length: 1\r\n\r\nx".encode())
    conn.read_until_quiet(server.clock)
    assert conn.response().code == 400
    assert server.patch(location, b"x", 0, complete=False, headers=("Upload-Complete: yes",)).code == 400


def test_delete_cancels(server: Resumable) -> None:
    _, response, _ = server.create("/files/i", b"partial", complete=False)
    location = response.header("location")
    assert server.request("DELETE", location, AUTH).code == 204
    assert server.head(location).code == 404
    assert server.patch(location, b"x", 7, complete=True).code == 404
    assert not (server.root / "i").exists()
    assert os.listdir(server.root.parent / "uploads") == []


def test_every_request_needs_a_token(server: Resumable) -> None:
    _, response, _ = server.create("/files/j", b"x", complete=False)
    location = response.header("location")
    assert server.request("HEAD", location).code == 401
    assert server.request("DELETE", location, "Authorization: Bearer wrong").code == 401
    conn = server.connect()
    conn.send(b"PUT /files/k HTTP/1.1\r\nHost: x\r\nUpload-Complete: ?1\r\nContent-Length: 3\r\n\r\nabc")
    conn.read_until_quiet(server.clock)
    assert conn.transport.value().startswith(b"HTTP/1.1 401 ")  # no 104 for a request that is refused
    assert server.head("/uploads/" + "A" * 24).code == 404 and server.head("/uploads/../files").code == 404


def test_a_client_that_speaks_no_interop_version_we_know_gets_no_104(server: Resumable) -> None:
    conn = server.connect()
    conn.send(b"PUT /files/l HTTP/1.1\r\nHost: x\r\n" + AUTH.encode()
              + b"\r\nUpload-Draft-Interop-Version: 3\r\nUpload-Complete: ?1\r\nContent-Length: 3\r\n\r\nabc")
    conn.read_until_quiet(server.clock)
    assert conn.transport.value().startswith(b"HTTP/1.1 201 ")


def test_a_restart_between_the_cut_and_the_resume(server: Resumable) -> None:
    body = os.urandom(100_000)
    informational, _, _ = server.create("/files/m.bin", body, f"Repr-Digest: {sha256_field(body)}", cut_after=40_000)
    location = server.location(informational)
    server.restart()
    assert server.head(location).header("upload-offset") == "40000"
    done = server.patch(location, body[40_000:], 40_000, complete=True)
    assert done.code == 201 and (server.root / "m.bin").read_bytes() == body


def test_a_digest_that_does_not_match_at_the_end_installs_nothing(server: Resumable) -> None:
    body = b"the real bytes"
    informational, _, _ = server.create("/files/n", body, f"Repr-Digest: {sha256_field(b'other')}", cut_after=5)
    done = server.patch(server.location(informational), body[5:], 5, complete=True)
    assert done.code == 400 and "digest" in json.loads(done.body)["error"]
    assert not (server.root / "n").exists()


@pytest.mark.parametrize("seed", range(8))
def test_cut_anywhere_and_resume_until_done(server: Resumable, seed: int) -> None:
    """Random cut points, each resumed from the server's offset: the file is byte-identical, nothing left over."""
    rng = random.Random(seed)
    body = rng.randbytes(rng.randrange(1, 400_000))
    cut = rng.randrange(0, len(body))
    informational, _, _ = server.create("/files/r.bin", body, f"Repr-Digest: {sha256_field(body)}", cut_after=cut)
    location = server.location(informational)
    for _ in range(50):
        offset = int(server.head(location).header("upload-offset"))
        if server.head(location).header("upload-complete") == "?1":
            break
        rest = body[offset:]
        if rng.random() < 0.6 and len(rest) > 1:
            server.patch(location, rest, offset, complete=True, cut_after=rng.randrange(0, len(rest)))
            if rng.random() < 0.3:
                server.restart()
        else:
            assert server.patch(location, rest, offset, complete=True).code in (201, 204)
    assert (server.root / "r.bin").read_bytes() == body
    assert hashlib.sha256((server.root / "r.bin").read_bytes()).digest() == hashlib.sha256(body).digest()
    assert server.leftovers() == []
    assert [n for n in os.listdir(server.root.parent / "uploads") if not n.endswith(".json")] == []
