"""
CORS (L{streamsvc.cors}, C{[server] cors_origins}) and C{[files]
sandbox_html}: headers on every response from an allowed origin, errors
included; preflights answered; nothing for other origins; C{Vary} kept
whole.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from configured_site import ConfiguredSite
from streamsvc.config import AuthConfig, ConfigError, FilesConfig, parse_config

APP = "https://app.example"


class Site(ConfiguredSite):
    def __init__(self, tmp_path: Any, origins: tuple[str, ...] = (), **sections: Any) -> None:
        super().__init__(tmp_path, server={"cors_origins": origins}, **sections)


def test_no_cors_without_origins_configured(tmp_path: Any) -> None:
    site = Site(tmp_path)
    r = site.request("GET", "/healthz", f"Origin: {APP}")
    assert r.code == 200 and r.header("access-control-allow-origin") is None
    r = site.request("OPTIONS", "/healthz", f"Origin: {APP}", "Access-Control-Request-Method: GET")
    assert r.code == 405


def test_any_origin(tmp_path: Any) -> None:
    site = Site(tmp_path, ("*",))
    (site.files / "f.bin").write_bytes(b"x" * 1000)
    r = site.request("GET", "/files/f.bin", f"Origin: {APP}", "Range: bytes=0-9")
    assert r.code == 206
    assert r.header("access-control-allow-origin") == "*"
    exposed = r.header("access-control-expose-headers")
    for name in ("Content-Range", "Content-Length", "ETag", "Content-Digest", "Content-Disposition"):
        assert name in exposed
    assert "Origin" not in (r.header("vary") or "")
    assert site.request("GET", "/healthz").header("access-control-allow-origin") is None  # no Origin: no CORS


def test_listed_origins_are_echoed_with_vary_and_others_get_nothing(tmp_path: Any) -> None:
    site = Site(tmp_path, (APP, "http://localhost:3000"))
    (site.files / "notes.txt").write_bytes(b"text " * 1000)
    r = site.request("GET", "/files/notes.txt", "Origin: http://localhost:3000")
    assert r.header("access-control-allow-origin") == "http://localhost:3000"
    vary = [v.strip() for v in r.header("vary").split(",")]
    assert sorted(vary) == ["Accept-Encoding", "Origin"]  # gzip's and ours, both kept
    r = site.request("GET", "/files/notes.txt", "Origin: https://evil.example")
    assert r.code == 200 and r.header("access-control-allow-origin") is None
    assert "Origin" in r.header("vary")
    assert "Origin" in site.request("GET", "/healthz").header("vary")  # no Origin: still varies on it


def test_errors_carry_cors_headers_too(tmp_path: Any) -> None:
    site = Site(tmp_path, (APP,), auth=AuthConfig(tokens=("t0ken-for-cors",), protect_downloads=True))
    r = site.request("GET", "/files/missing", f"Origin: {APP}")
    assert r.code == 401 and r.header("access-control-allow-origin") == APP
    r = site.request("GET", "/nowhere", f"Origin: {APP}")
    assert r.code == 404 and r.header("access-control-allow-origin") == APP
    assert json.loads(r.body) == {"error": "not found"}


def test_preflight_is_answered_for_allowed_origins_only(tmp_path: Any) -> None:
    site = Site(tmp_path, (APP,))
    r = site.request("OPTIONS", "/files/up.bin", f"Origin: {APP}", "Access-Control-Request-Method: PUT",
                     "Access-Control-Request-Headers: authorization, content-type")
    assert r.code == 204 and r.body == b""
    assert r.header("access-control-allow-origin") == APP
    assert "PUT" in r.header("access-control-allow-methods")
    allowed = r.header("access-control-allow-headers")
    assert "Authorization" in allowed and "Range" in allowed and "Last-Event-ID" in allowed
    assert r.header("access-control-max-age") == "600"
    assert "Access-Control-Request-Headers" in r.header("vary")
    r = site.request("OPTIONS", "/files/up.bin", "Origin: https://evil.example", "Access-Control-Request-Method: PUT")
    assert r.code == 403 and "cors_origins" in json.loads(r.body)["error"]
    assert r.header("access-control-allow-origin") is None


def test_cors_origins_config() -> None:
    config = parse_config("[server]\ncors_origins = https://a.example, http://localhost:3000 https://a.example\n")
    assert config.server.cors_origins == ("https://a.example", "http://localhost:3000")
    assert parse_config("[server]\ncors_origins = *\n").server.cors_origins == ("*",)
    assert parse_config("[server]\ncors_origins =\n").server.cors_origins == ()
    for bad, says in [("https://a.example/", "no path"), ("a.example", "not an origin"),
                      ("* https://a.example", "give it alone"), ("ftp://x", "not an origin")]:
        with pytest.raises(ConfigError, match=says):
            parse_config(f"[server]\ncors_origins = {bad}\n")


@pytest.mark.parametrize("sandbox", [True, False])
@pytest.mark.parametrize("name", ["page.html", "manifest.mpd", "pic.svg"])
def test_sandbox_html(tmp_path: Any, sandbox: bool, name: str) -> None:
    site = Site(tmp_path, files=FilesConfig(sandbox_html=sandbox))
    (site.files / name).write_bytes(b"<script>alert(1)</script>")
    r = site.request("GET", "/files/" + name)
    assert (r.header("content-security-policy") == "sandbox") is sandbox  # +xml types by rule
