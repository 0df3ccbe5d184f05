# -*- test-case-name: tests.test_files -*-
"""
Media types for file names: the same answer on every machine, never
text/html by default, archives served as what they are.
"""

from __future__ import annotations

import functools
import mimetypes
import unicodedata
from typing import Final
from urllib.parse import quote

from streamsvc.stages import is_compressible

#: Our own types, beside (and over) Python's table: what people stream and
#: what Python misses or calls otherwise. C{.ts} is an MPEG transport
#: stream (HLS segments), not TypeScript. Listed in the README.
OWN_TYPES: Final = (
    ("application/x-ndjson", ".ndjson"),
    ("application/x-ndjson", ".jsonl"),
    ("text/markdown", ".md"),
    ("application/yaml", ".yaml"),
    ("application/yaml", ".yml"),
    ("application/wasm", ".wasm"),
    ("video/x-matroska", ".mkv"),
    ("video/webm", ".webm"),
    ("audio/mp4", ".m4a"),
    ("video/mp4", ".m4v"),
    ("audio/flac", ".flac"),
    ("audio/ogg", ".ogg"),
    ("audio/ogg", ".opus"),
    ("video/mp2t", ".ts"),
    ("application/vnd.apple.mpegurl", ".m3u8"),
    ("application/dash+xml", ".mpd"),
    ("text/vtt", ".vtt"),
    ("application/x-subrip", ".srt"),
    ("text/plain", ".log"),
    ("application/toml", ".toml"),
    ("image/avif", ".avif"),
    ("image/heic", ".heic"),
)

#: Built from Python's own table only, not /etc/mime.types, so a file gets
#: the same type on every machine.
_MIME = mimetypes.MimeTypes()
for _type, _ext in OWN_TYPES:
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

def is_active(content_type: str) -> bool:
    """
    Whether a browser might run scripts in this type: the known ones, and
    by rule anything HTML or XML (C{+xml} types such as C{application/dash+xml}
    included), so a type added later is sandboxed unless shown to be inert.
    """
    return content_type in ACTIVE_TYPES or content_type.endswith("+xml") or "html" in content_type


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
    """
    C{attachment; filename="..."; filename*=UTF-8''...} (RFC 6266 / RFC 8187):
    the UTF-8 name, and before it an ASCII one for clients that read only
    C{filename=} (C{curl -OJ}): accents dropped, anything else non-ASCII,
    quotes, backslashes, path separators and control characters as C{_}.
    """
    return (
        b'attachment; filename="' + ascii_fallback(name).encode("ascii") + b'"; '
        # A name that is not UTF-8 on disk (surrogate escapes) keeps its bytes.
        b"filename*=UTF-8''" + quote(name.encode("utf-8", "surrogateescape"), safe="").encode("ascii")
    )


def ascii_fallback(name: str) -> str:
    """C{café "1".txt} → C{cafe _1_.txt}; never empty."""
    letters = (c for c in unicodedata.normalize("NFKD", name) if not unicodedata.combining(c))
    safe = "".join(c if " " <= c < "\x7f" and c not in '"\\/' else "_" for c in letters)
    return safe or "download"
