"""
C{/status/streams} (L{streamsvc.status}) and C{/ui/} (L{streamsvc.pages}):
a snapshot a second of every stream with its rate and paused share, only
while someone watches; a slow watcher keeps one snapshot; a drain ends the
feed; the UI files served with the page policy.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from streamsvc.app import build_site, prepare_data_dir
from streamsvc.config import AuthConfig, Config, LimitsConfig, ServerConfig
from streamsvc.pages import UIResource
from streamsvc.testing import SiteConnection

TOKEN = "st4tus-token"


def make_site(tmp_path: Any, **sections: Any) -> tuple[Any, Clock]:
    clock = Clock()
    config = Config(server=ServerConfig(data_dir=str(tmp_path)), **sections)
    prepare_data_dir(config)
    return build_site(config, reactor=clock), clock


def frames(raw: bytes) -> list[dict[str, Any]]:
    body = raw.partition(b"\r\n\r\n")[2]
    return [json.loads(line[6:]) for line in body.split(b"\n") if line.startswith(b"data: ")]


def test_a_throttled_download_shows_with_its_rate_and_a_paused_client_shows_paused(tmp_path: Any) -> None:
    site, clock = make_site(tmp_path, limits=LimitsConfig(rate_limit=100_000))
    (tmp_path / "files" / "big.bin").write_bytes(b"b" * 2_000_000)
    download = SiteConnection(site)
    download.request("GET", "/files/big.bin")
    watcher = SiteConnection(site)
    watcher.request("GET", "/status/streams")
    for _ in range(30):  # three seconds, a tenth at a time; both clients read
        clock.advance(0.1)
        download.read()
        watcher.read()
    assert watcher.transport.value().startswith(b"HTTP/1.1 200")
    seen = frames(watcher.transport.value())
    assert len(seen) >= 3
    last = seen[-1]
    (row,) = last["streams"]  # the download; the status stream itself is left out
    assert row["kind"] == "file" and row["path"] == "/files/big.bin" and row["client"]
    assert row["length"] == 2_000_000 and row["throttled"] in (True, False)
    assert 50_000 <= row["rate"] <= 150_000  # the throttle's 100 kB/s, give or take a tick
    assert last["active"] == 1 and last["total_rate"] == row["rate"]
    # The client stops reading: the stream is paused, the share climbs to 1.
    download.pause()
    for _ in range(20):
        clock.advance(0.1)
        watcher.read()
    (row,) = frames(watcher.transport.value())[-1]["streams"]
    assert row["paused_share"] == 1.0 and row["rate"] == 0.0
    download.disconnect()
    clock.advance(1)
    watcher.read()
    assert frames(watcher.transport.value())[-1]["streams"] == []
    watcher.disconnect()
    assert site.resource.children[b"status"].feed._loop is None  # nobody watches: no sampling


def test_a_watcher_that_does_not_read_keeps_one_snapshot(tmp_path: Any) -> None:
    site, clock = make_site(tmp_path)
    watcher = SiteConnection(site, buffer_size=1)
    watcher.request("GET", "/status/streams")
    watcher.pause()
    feed = site.resource.children[b"status"].feed
    for _ in range(30):  # (under send_timeout, which would end it)
        clock.advance(1)
    (subscriber,) = feed._watchers
    assert subscriber._frame is not None and subscriber._frame.startswith(b"event: streams")
    watcher.disconnect()
    assert feed._watchers == {}


def test_a_drain_ends_the_feed_cleanly(tmp_path: Any) -> None:
    site, clock = make_site(tmp_path)
    watcher = SiteConnection(site)
    watcher.request("GET", "/status/streams")
    clock.advance(1)
    for hook in site.drain_hooks:
        hook()
    watcher.read_until_quiet(clock)
    assert watcher.transport.value().endswith(b"0\r\n\r\n")
    again = SiteConnection(site)
    again.request("GET", "/status/streams")
    again.read_until_quiet(clock)
    assert again.response().code == 503


def test_the_feed_is_guarded_like_metrics(tmp_path: Any) -> None:
    site, clock = make_site(tmp_path, auth=AuthConfig(tokens=(TOKEN,), protect_metrics=True))
    conn = SiteConnection(site)
    conn.request("GET", "/status/streams")
    conn.read_until_quiet(clock)
    assert conn.response().code == 401
    conn = SiteConnection(site)
    conn.request("GET", "/ui/")  # the pages are open: they hold no data
    conn.read_until_quiet(clock)
    assert conn.response().code == 302
    conn = SiteConnection(site)
    conn.request("GET", "/status/other")
    conn.read_until_quiet(clock)
    assert conn.response().code == 401  # the guard answers first


def test_ui_files_are_served_with_the_page_policy(tmp_path: Any) -> None:
    files = {"streams.html": (b"<!doctype html>", b"text/html; charset=utf-8", '"abc"'),
             "listing.js": (b"//js", b"text/javascript; charset=utf-8", '"def"')}
    site, clock = make_site(tmp_path)
    site.resource.putChild(b"ui", UIResource(files))

    def get(path: str, *headers: str) -> Any:
        conn = SiteConnection(site)
        conn.send((f"GET {path} HTTP/1.1\r\nHost: x\r\n" + "".join(h + "\r\n" for h in headers) + "\r\n").encode())
        conn.read_until_quiet(clock)
        return conn.response()

    r = get("/ui/streams")
    assert r.code == 200 and r.body == b"<!doctype html>"
    assert "script-src 'self'" in r.header("content-security-policy")
    assert r.header("cache-control") == "no-cache" and r.header("etag") == '"abc"'
    assert get("/ui/listing.js").header("content-type").startswith("text/javascript")
    assert get("/ui/listing.js", 'If-None-Match: "def"').code == 304
    assert get("/ui/nope.js").code == 404 and get("/ui/a/b").code == 404
    r = get("/ui/")
    assert r.code == 302 and r.header("location") == "/files/"


def test_a_snapshot_that_fails_ends_the_watchers_instead_of_leaving_them_silent(tmp_path: Any) -> None:
    site, clock = make_site(tmp_path)
    watcher = SiteConnection(site)
    watcher.request("GET", "/status/streams")
    clock.advance(1)
    feed = site.resource.children[b"status"].feed

    def broken() -> Any:
        raise RuntimeError("a bug")

    feed.snapshot = broken
    with capturedLogs() as events:
        clock.advance(1)
    watcher.read_until_quiet(clock)
    assert watcher.transport.value().endswith(b"0\r\n\r\n")  # ended cleanly
    assert feed._loop is None and feed._watchers == {}
    assert [e["log_failure"].type for e in events if "log_failure" in e] == [RuntimeError]
