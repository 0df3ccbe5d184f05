"""
Tests for L{streamsvc.app}: the resource tree, /healthz, the index, JSON 404s
and 500s from the whole Site, and the data directory.
"""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import pytest
from twisted.internet.task import Clock

from streamsvc.app import build_site, prepare_data_dir
from streamsvc.config import AuthConfig, Config, ConfigError, ServerConfig
from streamsvc.testing import RawResponse, SiteConnection


def config_for(tmp_path: Path, **auth: object) -> Config:
    config = Config(server=ServerConfig(data_dir=str(tmp_path / "data")))
    if auth:
        config = attrs.evolve(config, auth=AuthConfig(**auth))  # type: ignore[arg-type]
    prepare_data_dir(config)
    return config


def fetch(config: Config, method: str, path: str, headers: dict[str, str] | None = None) -> RawResponse:
    clock = Clock()
    conn = SiteConnection(build_site(config, reactor=clock))
    conn.request(method, path, headers or {})
    conn.read_until_quiet(clock)
    return conn.response(head=method == "HEAD")


def test_healthz(tmp_path: Path) -> None:
    """GET /healthz is a JSON 200 that is never cached; HEAD announces the same length."""
    config = config_for(tmp_path)
    get = fetch(config, "GET", "/healthz")
    assert get.code == 200
    assert json.loads(get.body) == {"status": "ok"}
    assert get.header("cache-control") == "no-store"
    head = fetch(config, "HEAD", "/healthz")
    assert head.code == 200
    assert head.body == b""
    assert head.header("content-length") == str(len(get.body))


def test_index_lists_endpoints(tmp_path: Path) -> None:
    """GET / names the endpoints; HEAD has the same length and no body."""
    config = config_for(tmp_path)
    get = fetch(config, "GET", "/")
    assert json.loads(get.body) == {"endpoints": ["/echo", "/files", "/generate", "/healthz", "/metrics", "/status", "/tasks", "/ui", "/uploads"]}
    head = fetch(config, "HEAD", "/")
    assert head.body == b"" and head.header("content-length") == str(len(get.body))


@pytest.mark.parametrize("path", ["/nope", "/healthz/extra", "/files2"])
def test_unknown_paths_are_json_404(tmp_path: Path, path: str) -> None:
    """Unknown paths are JSON 404s, never twisted.web's HTML page."""
    r = fetch(config_for(tmp_path), "GET", path)
    assert r.code == 404
    assert r.header("content-type") == "application/json"
    assert json.loads(r.body) == {"error": "not found"}


def test_wrong_method_is_json_405(tmp_path: Path) -> None:
    r = fetch(config_for(tmp_path), "POST", "/healthz")
    assert r.code == 405
    assert r.header("allow") == "GET, HEAD"


def test_protect_downloads_guards_files_only(tmp_path: Path) -> None:
    """With protect_downloads, /files needs a token and /healthz stays open."""
    config = config_for(tmp_path, tokens=("t0ken",), protect_downloads=True)
    (tmp_path / "data" / "files" / "a.txt").write_bytes(b"a")
    r = fetch(config, "GET", "/files/a.txt")
    assert r.code == 401
    assert r.header("www-authenticate", ).startswith("Bearer")
    assert fetch(config, "GET", "/files/a.txt", {"Authorization": "Bearer t0ken"}).body == b"a"
    assert fetch(config, "GET", "/healthz").code == 200


def test_downloads_public_by_default(tmp_path: Path) -> None:
    config = config_for(tmp_path, tokens=("t0ken",))
    (tmp_path / "data" / "files" / "a.txt").write_bytes(b"a")
    assert fetch(config, "GET", "/files/a.txt").body == b"a"


def test_prepare_data_dir_creates_and_refuses(tmp_path: Path) -> None:
    """The files directory is created; a data_dir that cannot hold it is a ConfigError."""
    config = config_for(tmp_path)
    assert (tmp_path / "data" / "files").is_dir()
    (tmp_path / "plainfile").write_bytes(b"")
    bad = Config(server=ServerConfig(data_dir=str(tmp_path / "plainfile")))
    with pytest.raises(ConfigError) as e:
        prepare_data_dir(bad)
    assert "plainfile" in str(e.value)
    assert config.server.data_dir.endswith("data")
