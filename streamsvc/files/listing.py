# -*- test-case-name: tests.test_files -*-
"""
Folder listings, streamed a bounded batch of entries per step: a JSON
array for programs, an HTML page for people (L{HTMLPage}), the same walk.

Every entry carries an C{href}: its name percent-encoded from the raw
bytes on disk, so a name that is not UTF-8 still links to a URL that
downloads it; its C{name} is for display (bytes that are not UTF-8 shown
as U+FFFD).
"""

from __future__ import annotations

import html
import json
import os
import stat
import time
from typing import Any
from urllib.parse import quote

import attrs
from twisted.internet.defer import Deferred

from streamsvc.files.paths import inside, is_safe_segment

#: Entries per listing chunk: enough to keep writes large, few enough that one
#: chunk's stat() calls stay well under a millisecond or so.
LISTING_BATCH = 64


class JSONArray:
    """A listing as C{[{...},{...}]}: one object per entry."""

    content_type = b"application/json"

    def head(self) -> bytes:
        return b"["

    def entry(self, item: dict[str, Any], first: bool) -> bytes:
        return (b"" if first else b",") + json.dumps(item).encode("utf-8")

    def end(self, count: int) -> bytes:
        return b"]\n"


class HTMLPage:
    """
    A listing as a page: breadcrumbs, one table row per entry (in directory
    order: sorting, folders first and filtering are done by the page's
    script, /ui/listing.js, which also converts times to the viewer's
    local time), and the script and style of C{/ui/}, never inline (the
    page's CSP allows only C{script-src 'self'}).
    """

    content_type = b"text/html; charset=utf-8"

    def __init__(self, segments: tuple[bytes, ...]) -> None:
        #: The folder's URL path segments below /files, raw bytes.
        self._segments = segments

    def head(self) -> bytes:
        path = "/files/" + "".join(quote(s, safe="") + "/" for s in self._segments)
        crumbs = ['<a href="/files/">files</a>']
        for depth, segment in enumerate(self._segments, start=1):
            href = "/files/" + "".join(quote(s, safe="") + "/" for s in self._segments[:depth])
            crumbs.append(f'<a href="{html.escape(href)}">{html.escape(_display(segment))}</a>')
        title = html.escape("/files/" + "".join(_display(s) + "/" for s in self._segments))
        return (
            '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{title}</title>"
            '<link rel="icon" href="data:,"><link rel="stylesheet" href="/ui/style.css">'
            '<script src="/ui/common.js" defer></script><script src="/ui/listing.js" defer></script>'
            f'</head>\n<body class="listing" data-path="{html.escape(path)}">\n'
            f'<header><nav class="crumbs">{" / ".join(crumbs)}</nav><div id="tools"></div></header>\n'
            '<main><table id="listing"><thead><tr><th data-key="name">Name</th>'
            '<th data-key="size">Size</th><th data-key="mtime">Modified</th>'
            '<th class="actions"></th></tr></thead>\n<tbody>\n'
        ).encode("utf-8")

    def entry(self, item: dict[str, Any], first: bool) -> bytes:
        kind, href, name = item["type"], html.escape(item["href"]), html.escape(item["name"])
        size = "" if item["size"] is None else str(item["size"])
        shown = name + "/" if kind == "dir" else name
        mtime = float(item["mtime"])
        stamp = time.gmtime(mtime)
        return (
            f'<tr class="{kind}" data-name="{name}" data-size="{size}" data-mtime="{mtime!r}" '
            f'data-href="{href}"><td><a href="{href}">{shown}</a></td>'
            f"<td>{'' if item['size'] is None else human_size(item['size'])}</td>"
            f'<td><time datetime="{time.strftime("%Y-%m-%dT%H:%M:%SZ", stamp)}">'
            f'{time.strftime("%Y-%m-%d %H:%M UTC", stamp)}</time></td><td class="actions"></td></tr>\n'
        ).encode("utf-8")

    def end(self, count: int) -> bytes:
        noun = "entry" if count == 1 else "entries"
        return (
            f'</tbody></table></main>\n<footer data-count="{count}">{count} {noun}</footer>\n'
            "</body></html>\n"
        ).encode("utf-8")


def human_size(size: int) -> str:
    """C{1048576} → C{1.0 MiB}; bytes below 1 KiB as they are."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _display(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


@attrs.frozen
class Batch:
    """Some entries of a listing (dicts as L{entry_item} makes them); C{last} for the final batch."""

    items: list[dict[str, Any]]
    last: bool


def entry_item(raw: bytes, kind: str, size: int | None, mtime: float) -> dict[str, Any]:
    """
    One listing entry: C{raw}, the name as the store has it (bytes), for
    the C{href}; C{kind} C{"dir"} or C{"file"}; C{size} None for a folder.
    """
    href = quote(raw, safe="") + ("/" if kind == "dir" else "")
    return {"name": _display(raw), "href": href, "size": size, "mtime": mtime, "type": kind}


class Listing:
    """
    A folder's entries (an iterator of L{Batch}es or of Deferreds of them,
    as L{streamsvc.interfaces.IStoredFolder.entries} gives) in C{form}
    (L{JSONArray} by default, or L{HTMLPage}): one chunk of bytes, or a
    Deferred of one, per batch, for L{IterableProducer}, which calls
    L{close} at once when the client goes away.
    """

    def __init__(self, entries: Any, form: JSONArray | HTMLPage | None = None) -> None:
        self._entries = entries
        self._form = form if form is not None else JSONArray()
        self._started = False
        self._count = 0
        self._ended = False

    @property
    def content_type(self) -> bytes:
        return self._form.content_type

    def __iter__(self) -> Listing:
        return self

    def __next__(self) -> bytes | Deferred[bytes]:
        if self._ended:
            raise StopIteration
        batch = next(self._entries, None)
        if isinstance(batch, Deferred):
            return batch.addCallback(self._chunk)
        return self._chunk(batch)

    def _chunk(self, batch: Batch | None) -> bytes:
        parts = [] if self._started else [self._form.head()]
        self._started = True
        for item in batch.items if batch is not None else ():
            parts.append(self._form.entry(item, self._count == 0))
            self._count += 1
        if batch is None or batch.last:
            parts.append(self._form.end(self._count))
            self._ended = True
            self.close()
        return b"".join(parts)

    def close(self) -> None:
        self._entries.close()


class DiskEntries:
    """
    A folder on disk as L{Batch}es, in directory order (sorting would mean
    holding every name in memory first; the page sorts what it shows).

    C{path} names the directory; C{fd}, when given, is the directory already
    opened safely (see L{open_inside}), is what is actually read, and
    belongs to the entries once the constructor returns.

    The directory is opened by the constructor, so one that cannot be read
    is an C{OSError} the resource answers (404) before any byte is sent,
    rather than a body that breaks off after its start. L{close} releases
    the handle whether or not iteration ever began.

    Each batch looks at no more than C{batch} entries, however many of them
    are left out (dotfiles, special files, symlinks that resolve outside
    C{root}), so one step never walks a huge directory in a single go.
    """

    def __init__(self, path: str, root: str, *, fd: int | None = None, batch: int = LISTING_BATCH) -> None:
        self._entries = os.scandir(path if fd is None else fd)
        self._fd = fd  # owned from here on: the entries stat() through it
        self._path = path
        self._root = root
        self._batch = batch
        self._ended = False

    def __iter__(self) -> DiskEntries:
        return self

    def __next__(self) -> Batch:
        if self._ended:
            raise StopIteration
        items = []
        for _ in range(self._batch):
            entry = next(self._entries, None)
            if entry is None:
                self._ended = True
                self.close()
                return Batch(items, last=True)
            item = _entry(entry, self._path, self._root)
            if item is not None:
                items.append(item)
        return Batch(items, last=False)

    def close(self) -> None:
        self._entries.close()
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


class DirectoryListing(Listing):
    """A folder on disk (L{DiskEntries}) listed in C{form}."""

    def __init__(
        self,
        path: str,
        root: str,
        *,
        fd: int | None = None,
        batch: int = LISTING_BATCH,
        form: JSONArray | HTMLPage | None = None,
    ) -> None:
        super().__init__(DiskEntries(path, root, fd=fd, batch=batch), form)


def _entry(entry: os.DirEntry[str], folder: str, root: str) -> dict[str, Any] | None:
    if not is_safe_segment(entry.name):
        return None
    try:
        link = os.path.join(folder, entry.name)
        if entry.is_symlink() and not inside(os.path.realpath(link), root):
            return None
        st = entry.stat()
    except OSError:
        return None
    if stat.S_ISDIR(st.st_mode):
        return entry_item(os.fsencode(entry.name), "dir", None, st.st_mtime)
    if stat.S_ISREG(st.st_mode):
        return entry_item(os.fsencode(entry.name), "file", st.st_size, st.st_mtime)
    return None
