# -*- test-case-name: tests.test_files -*-
"""
Media types for file names: the same answer on every machine, never
text/html by default, archives served as what they are.
"""

from __future__ import annotations

import functools
import mimetypes
from urllib.parse import quote

from streamsvc.stages import is_compressible

#: Built from Python's own table only, not /etc/mime.types, so a file gets
#: the same type on every machine.
_MIME = mimetypes.MimeTypes()
for _type, _ext in [
    ("application/x-ndjson", ".ndjson"),
    ("application/x-ndjson", ".jsonl"),
    ("text/markdown", ".md"),
    ("application/yaml", ".yaml"),
    ("application/yaml", ".yml"),
    ("application/wasm", ".wasm"),
]:
    _MIME.add_type(_type, _ext)

#: A file that mimetypes calls "encoded" (x.tar.gz) is served as the archive
#: it is — never with Content-Encoding, which would make clients unpack it.
_ENCODED_TYPES = {
    "gzip": "application/gzip",
    "bzip2": "application/x-bzip2",
    "xz": "application/x-xz",
    "br": "application/x-brotli",
    "compress": "application/x-compress",
}

#: Types a browser would run scripts in. They are served as what they are,
#: but sandboxed (no scripts, an opaque origin), so a file placed under the
#: root cannot act as this service's origin (stored XSS).
ACTIVE_TYPES = frozenset(
    {"text/html", "application/xhtml+xml", "image/svg+xml", "application/xml", "text/xml"}
)

def content_type_for(name: str) -> str:
    """The media type to announce for a file name; never text/html by default."""
    return type_of_suffixes(last_suffixes(name))[0]


def last_suffixes(name: str) -> str:
    """
    The part of a name that decides its type: its last two suffixes
    (C{"x.tar.gz"} → C{".tar.gz"}), which is all C{mimetypes} looks at.
    """
    last = name.rfind(".")
    if last <= 0:
        return ""
    before = name.rfind(".", 1, last)
    return name[before if before > 0 else last :]


@functools.lru_cache(maxsize=512)
def type_of_suffixes(suffixes: str) -> tuple[str, bool]:
    """
    Media type and compressibility for a name ending in C{suffixes}.

    Cached: C{mimetypes} costs a few microseconds a call, which shows in
    small-file requests per second, and the suffixes of the names people
    serve are few (the cache is bounded all the same, since clients choose
    the names they ask for).
    """
    media, encoding = _MIME.guess_type("x" + suffixes, strict=False)
    if encoding is not None:
        media = _ENCODED_TYPES.get(encoding, "application/octet-stream")
    media = media or "application/octet-stream"
    return media, is_compressible(media)


def content_disposition(name: str) -> bytes:
    """C{attachment; filename*=UTF-8''...} (RFC 6266 / RFC 8187)."""
    return b"attachment; filename*=UTF-8''" + quote(name, safe="").encode("ascii")


