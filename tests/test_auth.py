"""Tests for L{streamsvc.auth}: Bearer parsing, constant-time checks, and the guard."""

from __future__ import annotations

import json

import pytest
from twisted.internet.task import Clock
from twisted.web.resource import Resource
from twisted.web.server import Site

from streamsvc.auth import BearerGuard, TokenSet, bearer_token
from streamsvc.errors import JSONResource, Request
from streamsvc.testing import SiteConnection


@pytest.mark.parametrize(
    "header, token",
    [
        (b"Bearer abc", b"abc"),
        (b"bearer abc", b"abc"),
        (b"BEARER a.b-c_d~e+f/g==", b"a.b-c_d~e+f/g=="),
        (b"Bearer  abc ", b"abc"),
        (b"Basic abc", None),
        (b"Bearer", None),
        (b"Bearer ", None),
        (b"Bearer a b", None),
        (b"Bearer \xff", None),
        (b"Bearerabc", None),
        (None, None),
    ],
)
def test_bearer_token(header: bytes | None, token: bytes | None) -> None:
    """Only a well-formed RFC 6750 credential yields a token."""
    assert bearer_token(header) == token


def test_token_set_accepts_only_known_and_hides_values() -> None:
    """A TokenSet accepts its tokens, nothing else, and never shows them."""
    tokens = TokenSet(["s3cret-one", "s3cret-two"])
    assert tokens.accepts(b"s3cret-one")
    assert tokens.accepts(b"s3cret-two")
    assert not tokens.accepts(b"s3cret")
    assert not tokens.accepts(b"")
    assert "s3cret" not in repr(tokens)
    assert not TokenSet([]).accepts(b"anything")


class Secret(JSONResource):
    isLeaf = True

    def render_GET(self, request: object) -> bytes:
        return b"the secret"


def guarded_site() -> Site:
    root = Resource()
    root.putChild(b"leaf", BearerGuard(Secret(), TokenSet(["tok"])))
    branch = Resource()
    branch.putChild(b"child", Secret())
    root.putChild(b"branch", BearerGuard(branch, TokenSet(["tok"])))
    site = Site(root, reactor=Clock())
    site.requestFactory = Request
    return site


@pytest.mark.parametrize("path", ["/leaf", "/branch/child"])
def test_guard_missing_token_401(path: str) -> None:
    """No Authorization: 401, WWW-Authenticate: Bearer, JSON error, no body of the resource."""
    conn = SiteConnection(guarded_site())
    conn.request("GET", path)
    r = conn.response()
    assert r.code == 401
    assert r.header("www-authenticate") == 'Bearer realm="streamsvc"'
    assert "error" in json.loads(r.body)
    assert b"the secret" not in conn.transport.value()


@pytest.mark.parametrize("value", ["Bearer wrong", "Bearer", "Basic dG9rOg==", "tok"])
@pytest.mark.parametrize("path", ["/leaf", "/branch/child"])
def test_guard_bad_token_401(path: str, value: str) -> None:
    """A wrong or malformed credential: 401 with error="invalid_token"."""
    conn = SiteConnection(guarded_site())
    conn.request("GET", path, {"Authorization": value})
    r = conn.response()
    assert r.code == 401
    assert 'error="invalid_token"' in r.header("www-authenticate")
    assert b"the secret" not in conn.transport.value()


@pytest.mark.parametrize("path", ["/leaf", "/branch/child"])
def test_guard_good_token_passes(path: str) -> None:
    """The right token reaches the resource."""
    conn = SiteConnection(guarded_site())
    conn.request("GET", path, {"Authorization": "Bearer tok"})
    r = conn.response()
    assert r.code == 200 and r.body == b"the secret"
