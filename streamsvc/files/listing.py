# -*- test-case-name: tests.test_files -*-
"""
Folder listings as a streamed JSON array, a bounded batch of entries per step.
"""

from __future__ import annotations

import json
import os
import stat

from streamsvc.files.paths import inside, is_safe_segment

#: Entries per listing chunk: enough to keep writes large, few enough that one
#: chunk's stat() calls stay well under a millisecond or so.
LISTING_BATCH = 64

class DirectoryListing:
    """
    A directory as a JSON array, a batch of entries per item, in directory
    order (sorting would mean holding every name in memory first).

    C{path} names the directory; C{fd}, when given, is the directory already
    opened safely (see L{open_inside}), is what is actually read, and
    belongs to the listing once the constructor returns.

    The directory is opened by the constructor, so one that cannot be read
    is an C{OSError} the resource answers (404) before any byte is sent,
    rather than a body that breaks off after its C{[}. L{close} releases
    the handle whether or not iteration ever began; L{IterableProducer}
    calls it at once when the client goes away.

    Each item looks at no more than C{batch} entries, however many of them
    are left out (dotfiles, special files, symlinks that resolve outside
    C{root}), so one step never walks a huge directory in a single go.
    """

    def __init__(
        self, path: str, root: str, *, fd: int | None = None, batch: int = LISTING_BATCH
    ) -> None:
        self._entries = os.scandir(path if fd is None else fd)
        self._fd = fd  # owned from here on: the entries stat() through it
        self._path = path
        self._root = root
        self._batch = batch
        self._started = False
        self._empty = True
        self._ended = False

    def __iter__(self) -> DirectoryListing:
        return self

    def __next__(self) -> bytes:
        if self._ended:
            raise StopIteration
        parts = [] if self._started else [b"["]
        self._started = True
        for _ in range(self._batch):
            entry = next(self._entries, None)
            if entry is None:
                parts.append(b"]\n")
                self._ended = True
                self.close()
                break
            item = _entry(entry, self._path, self._root)
            if item is not None:
                parts.append((b"" if self._empty else b",") + json.dumps(item).encode("utf-8"))
                self._empty = False
        return b"".join(parts)

    def close(self) -> None:
        self._entries.close()
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def _entry(entry: os.DirEntry[str], folder: str, root: str) -> dict[str, object] | None:
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
        kind, size = "dir", None
    elif stat.S_ISREG(st.st_mode):
        kind, size = "file", st.st_size
    else:
        return None
    return {"name": entry.name, "size": size, "mtime": st.st_mtime, "type": kind}
