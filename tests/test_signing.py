"""
Signed, expiring links (L{streamsvc.signing}, C{POST /files/<path>?sign=}):
made with a token, good for GET and HEAD of that one path without one
until they expire, 403 when bad, expired or used elsewhere; never logged.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from configured_site import ConfiguredSite
from streamsvc.config import AuthConfig, ConfigError, parse_config
from streamsvc.signing import LinkSigner, canonical_path

TOKEN = "s1gning-token"
AUTH = f"Authorization: Bearer {TOKEN}"


class Site(ConfiguredSite):
    def __init__(self, tmp_path: Any, *, protect: bool = True, secret: str | None = None) -> None:
        super().__init__(
            tmp_path, auth=AuthConfig(tokens=(TOKEN,), protect_downloads=protect, link_secret=secret)
        )
        self.clock.advance(1_800_000_000)

    def sign(self, path: str, seconds: int = 60) -> str:
        r = self.request("POST", f"{path}?sign={seconds}", AUTH, "Content-Length: 0")
        assert r.code == 200, r.body
        answer = json.loads(r.body)
        assert answer["expires"] == int(self.clock.seconds()) + seconds
        return str(answer["url"])


def test_a_signed_link_opens_one_protected_file_until_it_expires(tmp_path: Any) -> None:
    site = Site(tmp_path)
    (site.files / "movie.mp4").write_bytes(b"m" * 5000)
    (site.files / "other.bin").write_bytes(b"o")
    assert site.request("GET", "/files/movie.mp4").code == 401  # protected
    url = site.sign("/files/movie.mp4", 60)
    assert url.startswith("/files/movie.mp4?expires=")
    r = site.request("GET", url, "Range: bytes=100-199")  # a <video> seeking
    assert r.code == 206 and r.body == b"m" * 100
    assert site.request("HEAD", url).code == 200
    # Not for another path, another method, or a changed expiry.
    query = urlsplit(url).query
    assert site.request("GET", "/files/other.bin?" + query).code == 403
    expires = parse_qs(query)["expires"][0]
    assert site.request("GET", url.replace(expires, str(int(expires) + 1000))).code == 403
    assert site.request("DELETE", url).code == 403
    site.clock.advance(61)
    r = site.request("GET", url)
    assert r.code == 403 and json.loads(r.body) == {"error": "this link has expired"}


def test_other_spellings_of_the_path_sign_alike_and_cannot_escape(tmp_path: Any) -> None:
    site = Site(tmp_path)
    (site.files / "a b.txt").write_bytes(b"spaced")
    url = site.sign("/files/a%20b.txt")
    query = urlsplit(url).query
    assert site.request("GET", "/files/%61%20b.txt?" + query).body == b"spaced"
    assert site.request("GET", "/files/x/../a%20b.txt?" + query).code in (403, 404)


def test_signing_needs_a_token_an_existing_path_and_a_sane_duration(tmp_path: Any) -> None:
    site = Site(tmp_path, protect=False)
    (site.files / "f.txt").write_bytes(b"f")
    assert site.request("POST", "/files/f.txt?sign=60", "Content-Length: 0").code == 401
    for bad in ("0", "604801", "-5", "abc", "1.5"):
        r = site.request("POST", f"/files/f.txt?sign={bad}", AUTH, "Content-Length: 0")
        assert r.code == 400 and "7 days" in json.loads(r.body)["error"], bad
    assert site.request("POST", "/files/nope.txt?sign=60", AUTH, "Content-Length: 0").code == 404
    assert site.request("POST", "/files/f.txt", AUTH, "Content-Length: 0").code == 400
    assert site.request("POST", "/files/f.txt?sign=604800", AUTH, "Content-Length: 0").code == 200


def test_on_public_files_a_bad_signature_is_still_a_403(tmp_path: Any) -> None:
    site = Site(tmp_path, protect=False)
    (site.files / "f.txt").write_bytes(b"f")
    assert site.request("GET", "/files/f.txt").code == 200
    r = site.request("GET", "/files/f.txt?expires=1900000000&sig=" + "A" * 43)
    assert r.code == 403 and json.loads(r.body) == {"error": "bad signature"}
    assert site.request("GET", "/files/f.txt?sig=short").code == 403


def test_the_signature_never_reaches_the_log(tmp_path: Any) -> None:
    site = Site(tmp_path)
    (site.files / "f.txt").write_bytes(b"f")
    url = site.sign("/files/f.txt")
    sig = parse_qs(urlsplit(url).query)["sig"][0]
    with capturedLogs() as events:
        site.request("GET", url)
    lines = [str(e["line"]) for e in events if e.get("log_namespace") == "streamsvc.access"]
    assert lines and "sig=" in lines[0] and sig not in "".join(lines)


def test_a_configured_secret_makes_links_that_outlive_the_process(tmp_path: Any) -> None:
    secret = "k" * 40
    one, two = Site(tmp_path / "a", secret=secret), Site(tmp_path / "b", secret=secret)
    for site in (one, two):
        (site.files / "f.txt").write_bytes(b"same")
    url = one.sign("/files/f.txt")
    assert two.request("GET", url).body == b"same"  # another process, the same key


def test_signer_unit() -> None:
    clock = Clock()
    signer = LinkSigner(b"x" * 32, clock)
    assert canonical_path([b"files", b"a/b", b"\xff"]) == "/files/a%2Fb/%FF"
    assert "x" * 32 not in repr(signer)
    assert len(signer.signature("/files/a", 10)) == 43
    with pytest.raises(ValueError):
        LinkSigner(b"short", clock)
    with pytest.raises(ConfigError, match="at least 32"):
        parse_config("[auth]\nlink_secret = short\n")
    assert "link_secret" not in repr(parse_config("[auth]\nlink_secret = " + "z" * 32 + "\n").auth)


def test_a_link_to_a_folder_names_its_slash_and_its_page_sends_no_referer(tmp_path: Any) -> None:
    site = Site(tmp_path)
    (site.files / "music").mkdir()
    url = site.sign("/files/music")  # without its slash
    assert url.startswith("/files/music/?expires=")
    r = site.request("GET", url, "Accept: text/html")
    assert r.code == 200 and r.header("referrer-policy") == "no-referrer"
    sig = parse_qs(urlsplit(url).query)["sig"][0]
    with capturedLogs() as events:  # its scripts, loaded with the page's URL as Referer
        site.request("GET", "/ui/listing.js", f"Referer: http://x{url}")
    lines = [str(e["line"]) for e in events if e.get("log_namespace") == "streamsvc.access"]
    assert lines and sig not in lines[0] and "sig=" in lines[0]


def test_the_streams_feed_is_private_when_downloads_are(tmp_path: Any) -> None:
    site = Site(tmp_path, protect=True)
    assert site.request("GET", "/status/streams").code == 401


def test_a_link_names_a_path_not_a_version(tmp_path: Any) -> None:
    """
    Reused after the file is replaced, a link serves the new file (as S3's
    presigned URLs and nginx's secure_link do): a seek with the old
    validator gets the whole new file, never a splice of both; after a
    delete it is a 404, and a folder made in the file's place does not
    open its listing through the file's link.
    """
    site = Site(tmp_path)
    (site.files / "clip.bin").write_bytes(b"1" * 1000)
    url = site.sign("/files/clip.bin", 600)
    first = site.request("GET", url)
    assert first.code == 200 and first.body == b"1" * 1000
    etag = first.headers.getRawHeaders("ETag")[0]
    (site.files / "new.part").write_bytes(b"2" * 800)
    (site.files / "new.part").replace(site.files / "clip.bin")  # as an upload installs it
    r = site.request("GET", url, "Range: bytes=500-", f"If-Range: {etag}")
    assert r.code == 200 and r.body == b"2" * 800
    (site.files / "clip.bin").unlink()
    assert site.request("GET", url).code == 404
    (site.files / "clip.bin").mkdir()
    (site.files / "clip.bin" / "inside.txt").write_bytes(b"secret")
    r = site.request("GET", url)
    assert r.code in (301, 302, 308, 403, 404) and b"inside.txt" not in r.body
    if r.code in (301, 302, 308):
        assert site.request("GET", r.headers.getRawHeaders("Location")[0]).code == 403
