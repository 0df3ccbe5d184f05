"""
The log tail, tested as a plugin author tests a plugin: mounted on an
in-memory streamsvc Site (L{streamsvc.testing.PluginSite}) on a Clock, with
a client that reads only when told, so that pausing, rotation and
disconnects are exact, and no socket or sleep is needed.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from streamsvc_logtail.plugin import logs
from streamsvc.plugin import PluginFailed
from streamsvc.testing import PluginSite, open_files

def site_for(tmp_path: Any, **settings: str) -> tuple[PluginSite, Any]:
    from streamsvc.config import AuthConfig, Config

    folder = tmp_path / "logs"
    folder.mkdir(exist_ok=True)
    site = PluginSite(
        logs, tmp_path, settings={"dir": str(folder), **settings}, config=Config(auth=AuthConfig(tokens=("t0ken",)))
    )
    return site, folder


AUTH = {"Authorization": "Bearer t0ken"}


def lines_of(body: bytes) -> list[Any]:
    return [json.loads(line) for line in body.splitlines() if line]


def followed(conn: Any) -> list[Any]:
    """The NDJSON objects of a response still going (chunked): its lines that are JSON objects."""
    body = conn.transport.value().split(b"\r\n\r\n", 1)[1]
    return [json.loads(line) for line in body.split(b"\n") if line.startswith(b"{")]


def test_a_file_from_its_start_without_following(tmp_path: Any) -> None:
    site, folder = site_for(tmp_path)
    (folder / "app.log").write_bytes(b"one\r\ntwo\nthree")  # the last line is not ended yet
    response = site.get("/logs/app.log?from=start&follow=no", AUTH)
    assert response.code == 200 and response.header("content-type") == "application/x-ndjson"
    assert lines_of(response.body) == [{"offset": 5, "line": "one"}, {"offset": 9, "line": "two"}]


def test_the_token_is_needed(tmp_path: Any) -> None:
    site, folder = site_for(tmp_path)
    (folder / "app.log").write_bytes(b"x\n")
    assert site.get("/logs/app.log?follow=no").code == 401


def test_following_sees_appends_rotation_and_truncation(tmp_path: Any) -> None:
    site, folder = site_for(tmp_path, poll_ms="100")
    log = folder / "app.log"
    log.write_bytes(b"old\n")
    conn = site.connect()
    conn.request("GET", "/logs/app.log", AUTH)  # from the end: "old" is not sent
    site.clock.advance(0)
    with log.open("ab") as f:
        f.write(b"first\n")
    site.clock.advance(0.1)
    site.clock.advance(0)
    os.rename(log, folder / "app.log.1")  # logrotate's default: rename, then a new file
    log.write_bytes(b"second\n")
    for _ in range(3):
        site.clock.advance(0.1)
    with log.open("r+b") as f:  # copytruncate
        f.truncate(0)
        f.write(b"third\n")
    for _ in range(3):
        site.clock.advance(0.1)
    conn.read()
    assert followed(conn) == [
        {"offset": 10, "line": "first"},
        {"event": "rotated", "offset": 0},
        {"offset": 7, "line": "second"},
        {"event": "truncated", "offset": 0},
        {"offset": 6, "line": "third"},
    ]
    conn.disconnect()


def test_server_sent_events_resume_after_the_last_id(tmp_path: Any) -> None:
    site, folder = site_for(tmp_path)
    (folder / "app.log").write_bytes(b"a\nb\nc\n")
    first = site.get("/logs/app.log?from=start&follow=no", {"Accept": "text/event-stream", **AUTH})
    assert first.header("content-type") == "text/event-stream; charset=utf-8"
    assert first.body == b"id: 2\ndata: a\n\nid: 4\ndata: b\n\nid: 6\ndata: c\n\n"
    again = site.get("/logs/app.log?follow=no&format=sse", {"Last-Event-ID": "4", **AUTH})
    assert again.body == b"id: 6\ndata: c\n\n"


def test_a_slow_reader_pauses_the_tail(tmp_path: Any) -> None:
    site, folder = site_for(tmp_path)
    with (folder / "big.log").open("wb") as f:
        for _ in range(20):
            f.write((b"y" * 99 + b"\n") * 5000)  # 10 MB of lines
    conn = site.connect(buffer_size=64 * 1024)
    conn.request("GET", "/logs/big.log?from=start", AUTH)
    for _ in range(50):
        site.clock.advance(0)
    written = len(conn.transport.value())
    assert conn.transport.producer_paused
    # Paused: what was written is about one buffer and one chunk, not the file.
    assert written < 64 * 1024 + 3 * site.config.stream.chunk_size
    for _ in range(50):
        site.clock.advance(0.5)
    assert len(conn.transport.value()) == written  # nothing more while the client does not read
    conn.read()
    site.clock.advance(0)
    assert len(conn.transport.value()) > written  # reading lets it go on
    conn.disconnect()


def test_a_disconnect_closes_the_file_at_once(tmp_path: Any) -> None:
    site, folder = site_for(tmp_path)
    log = folder / "app.log"
    log.write_bytes(b"x\n")
    conn = site.connect()
    conn.request("GET", "/logs/app.log", AUTH)
    site.clock.advance(0)
    assert str(log) in open_files()
    conn.disconnect()
    assert str(log) not in open_files()
    assert 'streamsvc_plugin_logs_followers 0.0' in site.metrics()
    assert site.clock.getDelayedCalls() == [] or all(
        "deferLater" not in repr(call) for call in site.clock.getDelayedCalls()
    )


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/logs/..%2f..%2fetc%2fpasswd", 404),
        ("/logs/.hidden", 404),
        ("/logs/outside", 404),  # a symbolic link out of the folder
        ("/logs/missing.log", 404),
        ("/logs/a/b", 404),
        ("/logs/app.log?follow=maybe", 400),
        ("/logs/app.log?format=xml", 400),
        ("/logs/app.log?offset=-1", 400),
        ("/logs/app.log?offset=99", 416),
        ("/logs/app.log?from=middle", 400),
    ],
)
def test_bad_requests_are_json_errors(tmp_path: Any, path: str, code: int) -> None:
    site, folder = site_for(tmp_path)
    (folder / "app.log").write_bytes(b"x\n")
    (folder / ".hidden").write_bytes(b"x\n")
    (tmp_path / "secret").write_bytes(b"x\n")
    os.symlink(tmp_path / "secret", folder / "outside")
    response = site.get(path, AUTH)
    assert response.code == code and "error" in json.loads(response.body)


def test_followers_past_the_limit_get_a_503(tmp_path: Any) -> None:
    site, folder = site_for(tmp_path, max_followers="1")
    (folder / "app.log").write_bytes(b"x\n")
    first = site.connect()
    first.request("GET", "/logs/app.log", AUTH)
    site.clock.advance(0)
    refused = site.get("/logs/app.log", AUTH)
    assert refused.code == 503 and refused.header("retry-after") == "5"
    first.disconnect()
    assert site.get("/logs/app.log?follow=no", AUTH).code == 200


def test_the_listing(tmp_path: Any) -> None:
    site, folder = site_for(tmp_path)
    (folder / "b.log").write_bytes(b"12345")
    (folder / "a.log").write_bytes(b"")
    (folder / ".hidden").write_bytes(b"")
    (folder / "sub").mkdir()
    response = site.get("/logs/", AUTH)
    listing = json.loads(response.body)
    assert [(e["name"], e["size"]) for e in listing["logs"]] == [("a.log", 0), ("b.log", 5)]
    assert listing["truncated"] is False


def test_a_dir_that_is_not_a_folder_stops_the_start_up(tmp_path: Any) -> None:
    with pytest.raises(PluginFailed, match=r"\[plugin:logs\] dir = .* is not a folder"):
        PluginSite(logs, tmp_path, settings={"dir": str(tmp_path / "nope")})
