# -*- test-case-name: tests.test_pages -*-
"""
C{/ui/}: the browser face's own files (package data in C{streamsvc/ui/}):
the listing page's script and style, and the live streams dashboard
(C{/ui/streams}).

They are a few kilobytes, read once at start-up and served from memory,
with the strict page policy (L{PAGE_CSP}: scripts and styles from this
origin only, never inline) and C{Cache-Control: no-cache} with an ETag, so
a browser revalidates and an upgrade shows at once.
"""

from __future__ import annotations

import hashlib
from importlib import resources

from twisted.web.iweb import IRequest

from streamsvc.errors import HTTPError, JSONResource
from streamsvc.files.fields import finish_without_body, list_header
from streamsvc.files.resource import PAGE_CSP
from streamsvc.ranges import etag_matches

#: Addresses that name a page rather than a file.
PAGES = {"streams": "streams.html"}
_TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".svg": b"image/svg+xml",
}


def load_ui() -> dict[str, tuple[bytes, bytes, str]]:
    """Every UI file: name → (body, content type, ETag)."""
    found = {}
    folder = resources.files("streamsvc") / "ui"
    if folder.is_dir():
        for entry in folder.iterdir():
            suffix = entry.name[entry.name.rfind("."):]
            if entry.is_file() and suffix in _TYPES:
                body = entry.read_bytes()
                etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
                found[entry.name] = (body, _TYPES[suffix], etag)
    return found


class UIResource(JSONResource):
    isLeaf = True

    def __init__(self, files: dict[str, tuple[bytes, bytes, str]] | None = None) -> None:
        super().__init__()
        self._files = load_ui() if files is None else files

    def _find(self, request: IRequest) -> tuple[bytes, bytes, str]:
        if len(request.postpath) != 1:
            raise HTTPError(404, "not found")
        name = request.postpath[0].decode("latin-1")
        found = self._files.get(PAGES.get(name, name))
        if found is None:
            raise HTTPError(404, "not found")
        return found

    def _answer(self, request: IRequest, head: bool) -> bytes | int:
        if request.postpath in ([], [b""]):
            request.setResponseCode(302)
            request.setHeader(b"location", b"/files/")
            request.setHeader(b"content-length", b"0")
            return b""
        body, content_type, etag = self._find(request)
        request.setHeader(b"content-type", content_type)
        request.setHeader(b"content-security-policy", PAGE_CSP)
        request.setHeader(b"referrer-policy", b"no-referrer")
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"etag", etag.encode("ascii"))
        if etag_matches(list_header(request, b"if-none-match") or "", etag, weak_comparison=True):
            request.setResponseCode(304)
            return finish_without_body(request)
        if head:
            request.setHeader(b"content-length", b"%d" % len(body))
            return b""
        return body

    def render_GET(self, request: IRequest) -> bytes | int:
        return self._answer(request, head=False)

    def render_HEAD(self, request: IRequest) -> bytes | int:
        return self._answer(request, head=True)
