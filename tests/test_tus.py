"""
Resumable uploads by tus 1.0 (L{streamsvc.files.tus}), through a whole
Site in memory: creation (to a folder, with the name from the metadata,
or to a path), creation-with-upload, appends, offsets, checksums,
termination, expiration, the version rule, method overrides, cuts and a
restart, and the metrics. Disk jobs run at once; time is a Clock.
A real tus client (tuspy) is in tests/test_tus_client.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from typing import Any

import pytest

from streamsvc.errors import HTTPError
from streamsvc.files.tus import (
    CHECKSUM_MISMATCH,
    encode_metadata,
    override_method,
    parse_checksum,
    parse_metadata,
)
from streamsvc.testing import RawResponse
from test_resumable import Resumable
from test_upload import AUTH
from twisted.web.test.requesthelper import DummyRequest

TUS = "Tus-Resumable: 1.0.0"
OCTETS = "Content-Type: application/offset+octet-stream"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class Tus(Resumable):
    def send(self, method: str, path: str, body: bytes | None, *headers: str,
             cut_after: int | None = None) -> RawResponse | None:
        conn = self.connect()
        lines = [f"{method} {path} HTTP/1.1", "Host: x", *headers]
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        conn.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        if body:
            conn.send(body if cut_after is None else body[:cut_after])
        if cut_after is not None:
            conn.disconnect()
            conn.read_until_quiet(self.clock)
            return None
        conn.read_until_quiet(self.clock)
        return conn.response(head=method == "HEAD")

    def create(self, path: str, length: int, *headers: str, body: bytes | None = None,  # type: ignore[override]
               filename: str | None = None, cut_after: int | None = None) -> RawResponse | None:
        extra = [TUS, AUTH, f"Upload-Length: {length}", *headers]
        if filename is not None:
            extra.append(f"Upload-Metadata: filename {b64(filename)},kind")
        if body is not None:
            extra.append(OCTETS)
        return self.send("POST", path, body, *extra, cut_after=cut_after)

    def tus_patch(self, location: str, body: bytes, offset: int, *headers: str,
                  cut_after: int | None = None) -> RawResponse | None:
        return self.send("PATCH", location, body, TUS, AUTH, OCTETS, f"Upload-Offset: {offset}", *headers,
                         cut_after=cut_after)

    def tus_head(self, location: str, *headers: str) -> RawResponse:
        response = self.send("HEAD", location, None, TUS, AUTH, *headers)
        assert response is not None
        return response

    def leftover_uploads(self) -> list[str]:
        return sorted(os.listdir(self.root.parent / "uploads"))


@pytest.fixture
def tus(tmp_path: Any) -> Tus:
    return Tus(tmp_path)


def test_metadata_is_read_strictly() -> None:
    assert parse_metadata(None) == {} and parse_metadata(b"") == {}
    value = b"filename " + base64.b64encode("r\u00e9sum\u00e9.pdf".encode()) + b",is_confidential"
    assert parse_metadata(value) == {"filename": "r\u00e9sum\u00e9.pdf", "is_confidential": ""}
    assert parse_metadata(encode_metadata({"a": "x y", "b": ""})) == {"a": "x y", "b": ""}
    for bad in (b"filename %%%", b"a " + b64("1").encode() + b",a " + b64("2").encode(), b"a b c", b" ,",
                b"k " + base64.b64encode(b"\xff\xfe"), b"k " + b"QQ" * 5000):
        with pytest.raises(HTTPError) as caught:
            parse_metadata(bad)
        assert caught.value.code == 400


def test_checksums_are_read_strictly() -> None:
    digest = hashlib.sha1(b"abc").digest()
    assert parse_checksum(b"sha1 " + base64.b64encode(digest)) == {"sha1": digest}
    assert parse_checksum(None) == {}
    for bad in (b"crc32 AAAA", b"sha1 !!!", b"sha1 " + base64.b64encode(b"short"), b"sha1"):
        with pytest.raises(HTTPError) as caught:
            parse_checksum(bad)
        assert caught.value.code == 400


def test_a_method_override_turns_a_post_into_what_it_names() -> None:
    request = DummyRequest([b"x"])
    request.method = b"POST"
    request.requestHeaders.setRawHeaders(b"x-http-method-override", [b"patch"])
    override_method(request)
    assert request.method == b"PATCH"
    request.method = b"POST"
    request.requestHeaders.setRawHeaders(b"x-http-method-override", [b"GET"])
    with pytest.raises(HTTPError):
        override_method(request)


def test_options_say_what_is_offered_without_a_token(tus: Tus) -> None:
    response = tus.send("OPTIONS", "/files/", None)
    assert response.code == 204
    assert response.header("tus-version") == "1.0.0" and response.header("tus-resumable") == "1.0.0"
    extensions = response.header("tus-extension").split(",")
    assert {"creation", "creation-with-upload", "termination", "expiration", "checksum"} <= set(extensions)
    assert response.header("tus-max-size") == str(1024**3)
    assert "sha1" in response.header("tus-checksum-algorithm").split(",")
    assert response.header("upload-limit") == f"max-size={1024**3}"  # the IETF draft's, beside
    uploads = tus.send("OPTIONS", "/uploads/whatever", None)
    assert uploads.code == 204 and uploads.header("accept-patch") == "application/partial-upload"
    assert uploads.header("tus-version") == "1.0.0"


def test_an_upload_to_a_folder_in_chunks(tus: Tus) -> None:
    (tus.root / "in").mkdir()
    data = os.urandom(250_000)
    created = tus.create("/files/in/", len(data), filename="r\u00e9sum\u00e9.bin")
    assert created.code == 201 and created.header("tus-resumable") == "1.0.0"
    location = created.header("location")
    assert location.startswith("/uploads/") and created.header("upload-offset") == "0"
    assert created.header("upload-expires").endswith(" GMT")
    head = tus.tus_head(location)
    assert head.code == 200 and head.header("upload-offset") == "0" and head.header("upload-length") == "250000"
    assert head.header("cache-control") == "no-store"
    assert parse_metadata(head.header("upload-metadata").encode()) == {"filename": "r\u00e9sum\u00e9.bin", "kind": ""}
    offset = 0
    for size in (100_000, 100_000, 50_000):
        done = tus.tus_patch(location, data[offset:offset + size], offset)
        offset += size
        assert done.code == 204 and done.header("upload-offset") == str(offset)
        assert done.header("tus-resumable") == "1.0.0" and done.header("upload-expires")
        if offset < len(data):
            assert not (tus.root / "in" / "r\u00e9sum\u00e9.bin").exists()  # nothing visible until complete
    assert done.header("etag")  # the installed file's
    assert (tus.root / "in" / "r\u00e9sum\u00e9.bin").read_bytes() == data
    got = tus.request("GET", "/files/in/r%C3%A9sum%C3%A9.bin")
    assert got.body == data and got.header("etag") == done.header("etag")
    after = tus.tus_head(location)
    assert after.code == 200 and after.header("upload-offset") == "250000"
    again = tus.tus_patch(location, b"", 250_000)  # a client that lost the last answer asks again
    assert again.code == 204 and again.header("upload-offset") == "250000"
    assert tus.tus_patch(location, b"x", 250_000).code == 413
    assert [n for n in tus.leftover_uploads() if n.endswith(".part")] == []


def test_a_creation_with_the_whole_body_installs_it(tus: Tus) -> None:
    (tus.root / "f.txt").write_bytes(b"old")
    created = tus.create("/files/f.txt", 11, body=b"hello world")
    assert created.code == 201 and created.header("upload-offset") == "11"
    assert json.loads(created.body)["offset"] == 11
    assert (tus.root / "f.txt").read_bytes() == b"hello world"


def test_a_creation_with_part_of_the_body_then_the_rest(tus: Tus) -> None:
    created = tus.create("/files/g.bin", 10, body=b"01234")
    assert created.code == 201 and created.header("upload-offset") == "5"
    assert not (tus.root / "g.bin").exists()
    assert tus.tus_patch(created.header("location"), b"56789", 5).code == 204
    assert (tus.root / "g.bin").read_bytes() == b"0123456789"


def test_an_empty_upload_is_complete_at_its_creation(tus: Tus) -> None:
    created = tus.create("/files/", 0, filename="empty.txt")
    assert created.code == 201 and created.header("upload-offset") == "0"
    assert (tus.root / "empty.txt").read_bytes() == b""


def test_a_wrong_offset_is_a_409_with_the_real_one(tus: Tus) -> None:
    location = tus.create("/files/h.bin", 10).header("location")
    assert tus.tus_patch(location, b"0123", 0).code == 204
    wrong = tus.tus_patch(location, b"xxxx", 2)
    assert wrong.code == 409 and wrong.header("upload-offset") == "4" and wrong.header("tus-resumable") == "1.0.0"
    assert "error" in json.loads(wrong.body)
    assert tus.tus_head(location).header("upload-offset") == "4"


def test_the_version_rule(tus: Tus) -> None:
    location = tus.create("/files/v.bin", 4).header("location")
    for headers in ((AUTH, OCTETS, "Tus-Resumable: 0.2.2"),):
        refused = tus.send("PATCH", location, b"abcd", "Upload-Offset: 0", *headers)
        assert refused.code == 412 and refused.header("tus-version") == "1.0.0"
    creation = tus.send("POST", "/files/w.bin", b"", AUTH, "Tus-Resumable: 2.0.0", "Upload-Length: 3")
    assert creation.code == 412 and creation.header("tus-version") == "1.0.0"
    assert tus.tus_head(location).header("upload-offset") == "0"


def test_an_append_of_another_type_is_a_415(tus: Tus) -> None:
    location = tus.create("/files/t.bin", 4).header("location")
    refused = tus.send("PATCH", location, b"abcd", TUS, AUTH, "Content-Type: application/octet-stream",
                       "Upload-Offset: 0")
    assert refused.code == 415
    assert tus.tus_head(location).header("upload-offset") == "0"


def test_checksums_are_checked_per_append(tus: Tus) -> None:
    location = tus.create("/files/c.bin", 8).header("location")
    good = base64.b64encode(hashlib.sha1(b"abcd").digest()).decode()
    bad = base64.b64encode(hashlib.sha1(b"abce").digest()).decode()
    mismatch = tus.tus_patch(location, b"abcd", 0, f"Upload-Checksum: sha1 {bad}")
    assert mismatch.code == CHECKSUM_MISMATCH
    assert tus.tus_head(location).header("upload-offset") == "0"  # nothing appended
    assert tus.tus_patch(location, b"abcd", 0, "Upload-Checksum: crc32 AAAAAA==").code == 400
    assert tus.tus_patch(location, b"abcd", 0, f"Upload-Checksum: sha1 {good}").code == 204
    md5 = base64.b64encode(hashlib.md5(b"efgh").digest()).decode()
    assert tus.tus_patch(location, b"efgh", 4, f"Upload-Checksum: md5 {md5}").code == 204
    assert (tus.root / "c.bin").read_bytes() == b"abcdefgh"


def test_termination(tus: Tus) -> None:
    location = tus.create("/files/d.bin", 10, body=b"01234").header("location")
    deleted = tus.send("DELETE", location, None, TUS, AUTH)
    assert deleted.code == 204 and deleted.header("tus-resumable") == "1.0.0"
    gone = tus.tus_head(location)
    assert gone.code == 404 and gone.header("upload-offset") is None
    assert tus.leftover_uploads() == [] and not (tus.root / "d.bin").exists()


def test_a_method_override_on_the_upload(tus: Tus) -> None:
    location = tus.create("/files/o.bin", 4).header("location")
    patched = tus.send("POST", location, b"abcd", TUS, AUTH, OCTETS, "Upload-Offset: 0",
                       "X-HTTP-Method-Override: PATCH")
    assert patched.code == 204 and patched.header("upload-offset") == "4"
    assert (tus.root / "o.bin").read_bytes() == b"abcd"
    head = tus.send("POST", location, b"", TUS, AUTH, "X-HTTP-Method-Override: HEAD")
    assert head.code == 200 and head.header("upload-offset") == "4"


@pytest.mark.parametrize(
    "path, headers, code",
    [
        ("/files/x.bin", ("Upload-Length: 3",), 401),  # no token (added below only for the others)
        ("/files/", (AUTH, "Upload-Length: 3"), 400),  # a folder, and no filename
        ("/files/", (AUTH, "Upload-Length: 3", f"Upload-Metadata: filename {b64('../up')}"), 400),
        ("/files/", (AUTH, "Upload-Length: 3", f"Upload-Metadata: filename {b64('a/b')}"), 400),
        ("/files/", (AUTH, "Upload-Length: 3", f"Upload-Metadata: filename {b64('.hidden')}"), 400),
        ("/files/x.bin", (AUTH,), 400),  # no length
        ("/files/x.bin", (AUTH, "Upload-Defer-Length: 1"), 400),
        ("/files/x.bin", (AUTH, "Upload-Length: -1"), 400),
        ("/files/x.bin", (AUTH, f"Upload-Length: {1024**3 + 1}"), 413),
        ("/files/x.bin", (AUTH, "Upload-Length: 3", "Upload-Metadata: filename %%%"), 400),
    ],
)
def test_bad_creations_are_refused_before_anything_is_stored(tus: Tus, path: str, headers: tuple[str, ...],
                                                              code: int) -> None:
    response = tus.send("POST", path, b"", TUS, *headers)
    assert response.code == code and "error" in json.loads(response.body)
    assert response.header("tus-resumable") == "1.0.0"
    assert tus.leftover_uploads() == []


def test_a_creation_body_of_another_type_is_a_415(tus: Tus) -> None:
    response = tus.send("POST", "/files/y.bin", b"abc", TUS, AUTH, "Upload-Length: 3", "Content-Type: text/plain")
    assert response.code == 415 and tus.leftover_uploads() == []


def test_requests_on_an_upload_need_the_token(tus: Tus) -> None:
    location = tus.create("/files/z.bin", 4).header("location")
    assert tus.send("HEAD", location, None, TUS).code == 401
    assert tus.send("PATCH", location, b"abcd", TUS, OCTETS, "Upload-Offset: 0").code == 401
    assert tus.send("DELETE", location, None, TUS, "Authorization: Bearer wrong").code == 401
    assert tus.tus_head(location).header("upload-offset") == "0"


def test_a_cut_append_keeps_what_arrived_and_survives_a_restart(tus: Tus) -> None:
    (tus.root / "big.bin").write_bytes(b"the old version")
    data = os.urandom(400_000)
    location = tus.create("/files/big.bin", len(data)).header("location")
    assert tus.tus_patch(location, data, 0, cut_after=150_000) is None
    assert tus.tus_head(location).header("upload-offset") == "150000"
    assert (tus.root / "big.bin").read_bytes() == b"the old version"
    tus.restart()
    offset = int(tus.tus_head(location).header("upload-offset"))
    assert offset == 150_000
    assert tus.tus_patch(location, data[offset:], offset).code == 204
    assert (tus.root / "big.bin").read_bytes() == data


def test_an_upload_expires(tus: Tus) -> None:
    location = tus.create("/files/e.bin", 4, body=b"ab").header("location")
    tus.clock.advance(tus.config.files.upload_expiry + 1)
    assert tus.tus_head(location).code == 404
    assert tus.site.pending_uploads.sweep().result == 1  # type: ignore[attr-defined]
    assert tus.leftover_uploads() == []


def sample(tus: Tus, name: str, **labels: str) -> float:
    value = tus.site.metrics.registry.get_sample_value(name, labels)  # type: ignore[attr-defined]
    return 0.0 if value is None else value


def test_the_metrics_count_each_upload_event(tus: Tus) -> None:
    data = os.urandom(100_000)
    location = tus.create("/files/m.bin", len(data)).header("location")
    assert tus.tus_patch(location, data, 0, cut_after=40_000) is None
    assert tus.tus_patch(location, data[40_000:], 40_000).code == 204
    other = tus.create("/files/n.bin", 10, body=b"01234").header("location")
    assert tus.send("DELETE", other, None, TUS, AUTH).code == 204
    tus.create("/files/p.bin", 10, body=b"0")
    tus.clock.advance(tus.config.files.upload_expiry + 1)
    tus.site.pending_uploads.sweep()  # type: ignore[attr-defined]
    counts = {event: sample(tus, "streamsvc_resumable_uploads_total", protocol="tus", event=event)
              for event in ("started", "resumed", "completed", "cancelled", "expired")}
    assert counts == {"started": 3, "resumed": 1, "completed": 1, "cancelled": 1, "expired": 1}
    assert sample(tus, "streamsvc_resumable_bytes_appended_total", protocol="tus") == 100_000 + 5 + 1
    assert sample(tus, "streamsvc_resumable_uploads_total", protocol="ietf", event="started") == 0
