"""
Tests for L{streamsvc.errors}: JSON errors for every status, HEAD without a
body, 405 with C{Allow} for methods a resource does not implement (an
inherited C{render_HEAD} does not count), and JSON 500s for render failures.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.web.resource import Resource
from twisted.web.server import Site

from streamsvc.errors import ErrorPage, HTTPError, JSONResource, Request, render_error
from streamsvc.testing import RawResponse, SiteConnection


def fetch(resource: Resource, method: str = "GET", path: str = "/x") -> RawResponse:
    clock = Clock()
    site = Site(resource, reactor=clock)
    site.requestFactory = Request
    conn = SiteConnection(site)
    conn.request(method, path)
    conn.read_until_quiet(clock)
    return conn.response(head=method == "HEAD")


class OnlyGet(JSONResource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        return b"ok"


class GetAndHead(OnlyGet):
    def render_HEAD(self, request: Any) -> bytes:
        return b""


class Teapot(JSONResource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        raise HTTPError(418, "short and stout", {b"x-extra": b"1"})

    def render_HEAD(self, request: Any) -> bytes:
        return self.render_GET(request)


class Broken(Resource):
    isLeaf = True

    def __init__(self, *, write_first: bool = False) -> None:
        super().__init__()
        self.write_first = write_first

    def render_GET(self, request: Any) -> int:
        if self.write_first:
            request.setHeader(b"content-length", b"100")
            request.write(b"partial")
        raise RuntimeError("boom, with a secret path /etc/x")


def test_http_error_is_json_with_its_headers() -> None:
    """An HTTPError raised while rendering becomes its status, its headers and a JSON body."""
    r = fetch(Teapot())
    assert r.code == 418
    assert json.loads(r.body) == {"error": "short and stout"}
    assert r.header("content-type") == "application/json"
    assert r.header("x-content-type-options") == "nosniff"
    assert r.header("x-extra") == "1"
    assert r.header("content-length") == str(len(r.body))


def test_error_for_head_has_get_headers_and_no_body() -> None:
    """HEAD of an error: the same status and Content-Length as GET, no body, nothing 'eaten'."""
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        get = fetch(Teapot())
        head = fetch(Teapot(), method="HEAD")
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert head.code == 418
    assert head.body == b""
    assert head.header("content-length") == str(len(get.body))
    assert not [e for e in events if "eat it" in e.get("log_format", "")]


def test_render_error_drops_success_headers() -> None:
    """Headers describing a body that will not be sent are removed."""

    class Half(JSONResource):
        isLeaf = True

        def render_GET(self, request: Any) -> bytes:
            for name in (b"etag", b"content-range", b"content-encoding", b"last-modified"):
                request.setHeader(name, b"x")
            raise HTTPError(404, "not found")

    r = fetch(Half())
    assert r.code == 404
    for name in ("etag", "content-range", "content-encoding", "last-modified"):
        assert r.header(name) is None


def test_method_not_allowed_lists_own_methods() -> None:
    """405 is JSON with Allow; an inherited twisted.web render_HEAD is not offered."""
    r = fetch(OnlyGet(), method="POST")
    assert r.code == 405
    assert r.header("allow") == "GET"
    assert json.loads(r.body) == {"error": "method not allowed"}
    assert fetch(OnlyGet(), method="HEAD").code == 405
    r = fetch(GetAndHead(), method="DELETE")
    assert r.header("allow") == "GET, HEAD"


def test_error_page_answers_every_method() -> None:
    """ErrorPage is the JSON stand-in for twisted.web's HTML NoResource."""
    for method in ("GET", "POST", "DELETE"):
        r = fetch(ErrorPage(HTTPError(404, "not found")), method=method)
        assert r.code == 404
        assert json.loads(r.body) == {"error": "not found"}


def test_unexpected_exception_is_json_500_without_details() -> None:
    """A bug in a resource: JSON 500, no traceback or message sent, the failure logged."""
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        r = fetch(Broken())
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert r.code == 500
    assert json.loads(r.body) == {"error": "internal server error"}
    assert b"boom" not in r.body and b"Traceback" not in r.body
    assert any(e.get("log_failure") is not None for e in events)


def test_exception_after_body_started_aborts() -> None:
    """Once body bytes are out, a failure aborts the connection instead of a clean short body."""
    clock = Clock()
    site = Site(Broken(write_first=True), reactor=clock)
    site.requestFactory = Request
    conn = SiteConnection(site)
    conn.request("GET", "/x")
    conn.read_until_quiet(clock)
    assert conn.aborted


def test_render_error_returns_body_for_get() -> None:
    """render_error is usable directly: it returns the JSON body for non-HEAD requests."""
    from twisted.web.test.requesthelper import DummyRequest

    request = DummyRequest([b"x"])
    body = render_error(request, HTTPError(400, "bad"))
    assert json.loads(body) == {"error": "bad"}
    assert request.responseCode == 400
    request.method = b"HEAD"
    assert render_error(request, HTTPError(400, "bad")) == b""

