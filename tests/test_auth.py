"""Tests for L{streamsvc.auth}: Bearer parsing, constant-time checks, and the guard."""

from __future__ import annotations

import json

import pytest
from twisted.internet.task import Clock
from twisted.web.resource import Resource
from twisted.web.server import Site

from streamsvc.auth import BearerGuard, TokenSet, bearer_token
from streamsvc.errors import JSONResource, Request
from streamsvc.testing import RawResponse, SiteConnection


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


def get_with_lines(path: str, *lines: str) -> tuple[SiteConnection, RawResponse]:
    """GET C{path} with C{lines} ("Name: value") as header lines, repeats allowed."""
    conn = SiteConnection(guarded_site())
    head = [f"GET {path} HTTP/1.1", "Host: test", *lines]
    conn.send(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
    return conn, conn.response()


@pytest.mark.parametrize("path", ["/leaf", "/branch/child"])
def test_guard_unknown_token_401_invalid_token(path: str) -> None:
    """A well-formed Bearer token that is not known: 401 with error="invalid_token"."""
    conn = SiteConnection(guarded_site())
    conn.request("GET", path, {"Authorization": "Bearer wrong"})
    r = conn.response()
    assert r.code == 401
    assert r.header("www-authenticate") == 'Bearer realm="streamsvc", error="invalid_token"'
    assert "error" in json.loads(r.body)
    assert b"the secret" not in conn.transport.value()


@pytest.mark.parametrize("value", ["Basic dG9rOg==", "Digest username=tok", "tok", "Bearerabc", ""])
@pytest.mark.parametrize("path", ["/leaf", "/branch/child"])
def test_guard_other_scheme_401_without_error_code(path: str, value: str) -> None:
    """
    Credentials of another scheme (or a bare word, which is a scheme name
    too, or nothing at all): 401 with the bare challenge, no error code
    (RFC 6750 §3.1: the client may not know a Bearer token is wanted).
    """
    conn = SiteConnection(guarded_site())
    conn.request("GET", path, {"Authorization": value})
    r = conn.response()
    assert r.code == 401
    assert r.header("www-authenticate") == 'Bearer realm="streamsvc"'
    assert "error" in json.loads(r.body)
    assert b"the secret" not in conn.transport.value()


@pytest.mark.parametrize(
    "value", ["Bearer", "bearer ", "Bearer a b", "Bearer tok tok", "Bearer \xff", "Bearer\ttok",
              "Bearer to,k", "Bearer =tok"]
)
@pytest.mark.parametrize("path", ["/leaf", "/branch/child"])
def test_guard_malformed_bearer_400_invalid_request(path: str, value: str) -> None:
    """
    A Bearer credential that is no b64token (missing, two of them, bad
    characters): 400 with error="invalid_request", and the value not echoed.
    """
    conn, r = get_with_lines(path, f"Authorization: {value}")
    assert r.code == 400
    assert r.header("www-authenticate") == 'Bearer realm="streamsvc", error="invalid_request"'
    assert json.loads(r.body) == {"error": "malformed bearer credentials"}
    assert b"the secret" not in conn.transport.value()


@pytest.mark.parametrize(
    "lines",
    [
        ("Authorization: Bearer tok", "Authorization: Bearer tok"),
        ("Authorization: Bearer wrong", "Authorization: Bearer tok"),
        ("Authorization: Bearer tok", "Authorization: Basic dG9rOg=="),
    ],
    ids=["same-twice", "wrong-then-good", "good-then-basic"],
)
@pytest.mark.parametrize("path", ["/leaf", "/branch/child"])
def test_guard_two_authorization_lines_400(path: str, lines: tuple[str, str]) -> None:
    """
    Authorization on two lines is refused with 400 invalid_request, even when
    one (or both) carry the good token: a proxy reading the first line and
    us reading the last would disagree about who is asking.
    """
    conn, r = get_with_lines(path, *lines)
    assert r.code == 400
    assert r.header("www-authenticate") == 'Bearer realm="streamsvc", error="invalid_request"'
    assert json.loads(r.body) == {"error": "more than one Authorization header"}
    assert b"the secret" not in conn.transport.value()
    assert b"tok" not in r.body


@pytest.mark.parametrize("path", ["/leaf", "/branch/child"])
def test_guard_good_token_passes(path: str) -> None:
    """The right token reaches the resource."""
    conn = SiteConnection(guarded_site())
    conn.request("GET", path, {"Authorization": "Bearer tok"})
    r = conn.response()
    assert r.code == 200 and r.body == b"the secret"
