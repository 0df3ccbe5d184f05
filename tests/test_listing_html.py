"""
Listings for people (issue 17 §1): content negotiation (a browser gets the
page, programs keep JSON, C{Vary: Accept}), the streamed HTML page (names
escaped, hrefs from the raw bytes, the page's scripts only from /ui/), and
names that are not UTF-8 listed with an href that downloads them.
"""

from __future__ import annotations

import json
import os
from html.parser import HTMLParser
from typing import Any

import pytest

from configured_site import ConfiguredSite
from streamsvc.files.fields import _quality
from streamsvc.files.listing import DirectoryListing, HTMLPage, human_size

BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"


Site = ConfiguredSite


@pytest.mark.parametrize(
    "accept, html",
    [
        (BROWSER, True),
        ("*/*", False),  # curl, fetch()
        (None, False),
        ("application/json", False),
        ("text/html", True),
        ("text/html;q=0.5, application/json", False),
        ("text/*", True),
        ("text/html;q=0", False),
    ],
)
def test_negotiation(tmp_path: Any, accept: str | None, html: bool) -> None:
    site = Site(tmp_path)
    r = site.get("/files/", *([f"Accept: {accept}"] if accept else []))
    assert r.code == 200
    assert r.header("content-type").startswith("text/html" if html else "application/json")
    assert "Accept" in r.header("vary")


def test_format_parameter_wins_and_is_checked(tmp_path: Any) -> None:
    site = Site(tmp_path)
    assert site.get("/files/?format=html").header("content-type").startswith("text/html")
    assert site.get("/files/?format=json", f"Accept: {BROWSER}").header("content-type") == "application/json"
    r = site.get("/files/?format=xml")
    assert r.code == 400 and json.loads(r.body) == {"error": "format must be html or json"}


class Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, str | None]] = []
        self.scripts: list[dict[str, str | None]] = []
        self.links: list[str | None] = []
        self.inline_script = False
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "tr" and "data-href" in a:
            self.rows.append(a)
        if tag == "script":
            self.scripts.append(a)
            self._in_script = True
        if tag == "a":
            self.links.append(a.get("href"))
        if any(name.startswith("on") for name in a) or "style" in a:
            self.inline_script = True

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline_script = True


def test_the_page_lists_every_entry_escaped_with_its_own_scripts_only(tmp_path: Any) -> None:
    site = Site(tmp_path)
    (site.files / "sub dir").mkdir()
    (site.files / "sub dir" / '<b>&"x".txt').write_bytes(b"z" * 2048)
    (site.files / "sub dir" / "inner").mkdir()
    (site.files / "sub dir" / ".hidden").write_bytes(b"")
    r = site.get("/files/sub%20dir/", f"Accept: {BROWSER}")
    assert r.code == 200
    csp = r.header("content-security-policy")
    assert "script-src 'self'" in csp and "'unsafe-inline'" not in csp
    page = Page()
    page.feed(r.body.decode("utf-8"))
    assert not page.inline_script
    assert page.scripts == [{"src": "/ui/common.js", "defer": None}, {"src": "/ui/listing.js", "defer": None}]
    rows = {row["data-name"]: row for row in page.rows}
    assert set(rows) == {'<b>&"x".txt', "inner"}
    assert rows['<b>&"x".txt']["data-href"] == "%3Cb%3E%26%22x%22.txt"
    assert rows['<b>&"x".txt']["data-size"] == "2048" and rows["inner"]["class"] == "dir"
    assert rows["inner"]["data-href"] == "inner/"
    assert "/files/" in page.links and "/files/sub%20dir/" in page.links  # breadcrumbs
    assert b'<footer data-count="2">2 entries</footer>' in r.body
    assert b"2.0 KiB" in r.body


def test_a_name_that_is_not_utf8_round_trips(tmp_path: Any) -> None:
    site = Site(tmp_path)
    with open(os.path.join(os.fsencode(site.files), b"bad\xffname.txt"), "wb") as f:
        f.write(b"still served")
    (item,) = json.loads(site.get("/files/").body)
    assert item["href"] == "bad%FFname.txt" and item["name"] == "bad\ufffdname.txt"
    r = site.get("/files/" + item["href"])
    assert r.code == 200 and r.body == b"still served"
    assert b'href="bad%FFname.txt"' in site.get("/files/?format=html").body
    os.mkdir(os.path.join(os.fsencode(site.files), b"dir\xfe"))
    r = site.get("/files/dir%FE")
    assert r.code == 301 and r.header("location") == "/files/dir%FE/"


def test_streamed_in_batches_and_unit_helpers(tmp_path: Any) -> None:
    for i in range(5):
        (tmp_path / f"f{i}").write_bytes(b"")
    items = list(DirectoryListing(str(tmp_path), str(tmp_path), batch=2, form=HTMLPage((b"a", b"b c"))))
    assert len(items) == 3
    assert items[0].startswith(b"<!doctype html>") and items[-1].endswith(b"</html>\n")
    assert b'data-path="/files/a/b%20c/"' in items[0]
    assert human_size(0) == "0 B" and human_size(1023) == "1023 B" and human_size(1536) == "1.5 KiB"
    assert human_size(5 * 1024**4) == "5.0 TiB"
    assert _quality("text/html;q=0.3,*/*", "application/json") == 1.0
    assert _quality("text/html;q=bad", "text/html") == 0.0
