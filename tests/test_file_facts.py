"""
Tests for L{streamsvc.files.facts} and the small-file path of /files that
uses it: a second GET of an unchanged small file is answered without the
path walk, and anything that changed, or any request that asks for more
than the whole file, goes the full way.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from streamsvc.files import local as files_module
from streamsvc.files.facts import FACTS_TTL, FactsCache, identity_of
from streamsvc.ranges import make_etag

from test_files import Files


@pytest.fixture
def files(tmp_path: Any) -> Files:
    root = tmp_path / "files"
    root.mkdir()
    (root / "small.bin").write_bytes(b"0123456789" * 400)
    (root / "page.html").write_bytes(b"<p>hi</p>")
    (root / "notes.txt").write_bytes(b"some text " * 50)
    (root / "sub").mkdir()
    (root / "sub" / "inner.txt").write_bytes(b"inner")
    return Files(root)


@pytest.fixture
def walks(monkeypatch: Any) -> list[list[bytes]]:
    """Every full walk (L{streamsvc.files.paths.resolve}) the resource makes, by path."""
    seen: list[list[bytes]] = []
    real = files_module.resolve

    def counting(root: str, postpath: list[bytes]) -> Any:
        seen.append(list(postpath))
        return real(root, postpath)

    monkeypatch.setattr(files_module, "resolve", counting)
    return seen


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_second_get_skips_the_walk_and_answers_the_same(files: Files, walks: list) -> None:
    first = files.get("/files/small.bin")
    second = files.get("/files/small.bin")
    assert len(walks) == 1
    assert second.code == first.code == 200
    assert second.body == first.body == b"0123456789" * 400
    for name in ("content-type", "etag", "last-modified", "accept-ranges", "content-length",
                 "x-content-type-options"):
        assert second.header(name) == first.header(name), name


def test_active_type_keeps_its_sandbox(files: Files, walks: list) -> None:
    files.get("/files/page.html")
    r = files.get("/files/page.html")
    assert len(walks) == 1
    assert r.header("content-security-policy") == "sandbox"
    assert (r.header("content-type") or "").startswith("text/html")


def test_replaced_file_is_seen_at_once(files: Files) -> None:
    """Replaced by one of the same size (and, here, the same mtime): new bytes, new tag."""
    old = os.stat(files.root / "small.bin")
    first = files.get("/files/small.bin")
    tmp = files.root / "new.tmp"
    tmp.write_bytes(b"9876543210" * 400)
    os.utime(tmp, ns=(old.st_atime_ns, old.st_mtime_ns + 1))
    os.rename(tmp, files.root / "small.bin")  # as an upload installs a file
    r = files.get("/files/small.bin")
    assert r.code == 200
    assert r.body == b"9876543210" * 400
    assert r.header("etag") == make_etag(4000, old.st_mtime_ns + 1) != first.header("etag")


def test_rewritten_in_place_reads_the_new_bytes(files: Files) -> None:
    files.get("/files/small.bin")
    with open(files.root / "small.bin", "r+b") as f:
        f.write(b"ABCDEFGHIJ")  # same size
    r = files.get("/files/small.bin")
    assert r.body.startswith(b"ABCDEFGHIJ")


def test_deleted_file_is_404_at_once(files: Files) -> None:
    files.get("/files/small.bin")
    os.unlink(files.root / "small.bin")
    assert files.get("/files/small.bin").code == 404


def test_folder_swapped_for_a_symlink_outside_is_404_within_the_ttl(files: Files) -> None:
    """
    Within the TTL, a folder on the path replaced by a symlink to outside:
    the file opened there is another inode, so the full walk decides (404).
    """
    assert files.get("/files/sub/inner.txt").body == b"inner"
    outside = files.root.parent / "elsewhere"
    outside.mkdir()
    (outside / "inner.txt").write_bytes(b"outside the root")
    os.rename(files.root / "sub", files.root / "sub-old")
    os.symlink(outside, files.root / "sub")
    r = files.get("/files/sub/inner.txt")
    assert r.code == 404
    assert b"outside" not in r.body


def test_walked_again_after_the_ttl(files: Files, walks: list) -> None:
    files.get("/files/small.bin")
    files.clock.advance(FACTS_TTL / 2)
    files.get("/files/small.bin")
    assert len(walks) == 1
    files.clock.advance(FACTS_TTL / 2)
    files.get("/files/small.bin")
    assert len(walks) == 2


@pytest.mark.parametrize(
    "headers, code",
    [
        ({"range": "bytes=0-1"}, 206),  # in lower case: names are canonical by then
        ({"Range": "bytes=2-3"}, 206),
        ({"if-none-match": "*"}, 304),
        ({"If-Match": '"nope"'}, 412),
        ({"If-Modified-Since": "Sun, 01 Jan 2040 00:00:00 GMT"}, 304),
    ],
)
def test_ranges_and_conditions_use_what_is_known(files: Files, walks: list, headers: dict, code: int) -> None:
    """The plan is made from the known facts (the descriptor checked against them): no second walk."""
    first = files.get("/files/small.bin")
    r = files.get("/files/small.bin", **headers)
    assert r.code == code
    assert code == 412 or r.header("etag") == first.header("etag")
    if code == 206:
        assert r.body == (b"0123456789" * 400)[int(r.header("content-range")[6]):][:2]
    assert len(walks) == 1


def test_gzip_and_download_use_what_is_known(files: Files, walks: list) -> None:
    files.get("/files/notes.txt")
    r = files.get("/files/notes.txt", accept_encoding="gzip")
    assert r.header("content-encoding") == "gzip"
    assert (r.header("etag") or "").startswith("W/")
    r = files.get("/files/notes.txt?download=1")
    assert "attachment" in (r.header("content-disposition") or "")
    assert len(walks) == 1


def test_not_compressible_with_accept_encoding_stays_fast(files: Files, walks: list) -> None:
    files.get("/files/small.bin")
    r = files.get("/files/small.bin", accept_encoding="gzip")
    assert r.header("content-encoding") is None
    assert len(walks) == 1


def test_larger_than_a_chunk_takes_the_full_path(tmp_path: Any, walks: list) -> None:
    root = tmp_path / "files"
    root.mkdir()
    (root / "big.bin").write_bytes(b"x" * 5000)
    files = Files(root, chunk_size=4096)
    files.get("/files/big.bin")
    assert files.get("/files/big.bin").body == b"x" * 5000
    assert len(walks) == 2


def test_no_descriptor_left_on_any_path(files: Files, monkeypatch: Any) -> None:
    files.get("/files/small.bin")
    before = open_fds()
    for _ in range(20):
        assert files.get("/files/small.bin").code == 200
    # A read that fails: a 500, its descriptor closed, and the next
    # request served.
    real = files_module.read_spans
    calls = []

    def failing_once(fd: int, spans: Any) -> bytes:
        calls.append(fd)
        if len(calls) == 1:
            raise OSError(5, "I/O error")
        return real(fd, spans)

    monkeypatch.setattr(files_module, "read_spans", failing_once)
    assert files.get("/files/small.bin").code == 500
    assert files.get("/files/small.bin").code == 200
    assert len(calls) == 2
    os.unlink(files.root / "small.bin")
    assert files.get("/files/small.bin").code == 404  # a miss on the short path
    assert open_fds() == before


# -- the cache itself -------------------------------------------------------------


def test_cache_is_bounded_oldest_first(tmp_path: Any) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x")
    st = os.stat(path)
    cache = FactsCache(lambda: 0.0, largest=64, size=2)
    for key in ((b"a",), (b"b",), (b"c",)):
        cache.learn(key, str(path), "f", st)
    assert len(cache) == 2
    assert cache.fresh((b"a",)) is None
    assert cache.fresh((b"c",)) is not None


def test_open_checks_the_identity(tmp_path: Any) -> None:
    path = tmp_path / "f.txt"
    path.write_bytes(b"one")
    now = [0.0]
    cache = FactsCache(lambda: now[0], largest=64)
    facts = cache.learn((b"f.txt",), str(path), "f.txt", os.stat(path))
    known = cache.fresh((b"f.txt",))
    assert known is not None and known.facts == facts
    assert known.identity == identity_of(os.stat(path))
    assert facts.content_type.startswith(b"text/plain")
    fd = cache.open((b"f.txt",), known)
    assert fd is not None
    os.close(fd)
    os.chmod(path, 0o600)  # moves the change time: another version
    assert cache.open((b"f.txt",), known) is None
    assert cache.fresh((b"f.txt",)) is None


def test_fresh_forgets_stale_entries(tmp_path: Any) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x")
    now = [0.0]
    cache = FactsCache(lambda: now[0], largest=64, ttl=1.0)
    cache.learn((b"f",), str(path), "f", os.stat(path))
    now[0] = 0.999
    assert cache.fresh((b"f",)) is not None
    now[0] = 1.0
    assert cache.fresh((b"f",)) is None
    assert len(cache) == 0


def test_files_past_largest_are_not_kept(tmp_path: Any) -> None:
    """A download larger than one write is described, not remembered: it never pushes small files out."""
    small, big = tmp_path / "s", tmp_path / "b"
    small.write_bytes(b"x" * 64)
    big.write_bytes(b"x" * 65)
    cache = FactsCache(lambda: 0.0, largest=64, size=1)
    cache.learn((b"s",), str(small), "s", os.stat(small))
    facts = cache.learn((b"b",), str(big), "b", os.stat(big))
    assert facts.size == 65
    assert cache.fresh((b"b",)) is None
    assert cache.fresh((b"s",)) is not None
