# -*- test-case-name: tests.test_client -*-
"""
The decisions of a resumable download, as pure functions: which headers to
send given what is already on disk, and what the server's answer means.

A partial download lives in C{FILE.part}; beside it, C{FILE.part.meta} keeps
the validator the server gave (its strong ETag, else its Last-Modified) so
that a resumed request carries C{If-Range}: if the file changed meanwhile the
server answers 200 with the whole new file instead of a range that would
splice two versions together.
"""

from __future__ import annotations

import json
import re
from typing import NamedTuple

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class Validator(NamedTuple):
    """What identifies the version being downloaded."""

    etag: str | None = None
    last_modified: str | None = None

    def if_range(self) -> str | None:
        """The C{If-Range} value: a strong ETag, else the date (a weak ETag may not be used)."""
        if self.etag and not self.etag.startswith("W/"):
            return self.etag
        return self.last_modified

    def dumps(self) -> str:
        return json.dumps({"etag": self.etag, "last_modified": self.last_modified})

    @classmethod
    def loads(cls, text: str) -> Validator | None:
        try:
            data = json.loads(text)
        except ValueError:
            return None
        if not isinstance(data, dict):
            return None
        etag, date = data.get("etag"), data.get("last_modified")
        validator = cls(etag if isinstance(etag, str) else None, date if isinstance(date, str) else None)
        return validator if validator.if_range() else None


def resume_headers(have: int, validator: Validator | None, *, forced: bool = False) -> dict[str, str]:
    """
    The headers that resume from byte C{have}: a Range with the validator's
    If-Range; without a validator only when forced (C{-c} on an existing
    file, as C{curl -C -} does), else none (a full download).
    """
    if have <= 0:
        return {}
    condition = validator.if_range() if validator is not None else None
    if condition is None and not forced:
        return {}
    headers = {"Range": f"bytes={have}-"}
    if condition is not None:
        headers["If-Range"] = condition
    return headers


class Plan(NamedTuple):
    """What to do with an answer: append or start over, from which byte, how long the whole is."""

    action: str  # "append", "restart", "complete", "fail"
    offset: int = 0
    total: int | None = None
    reason: str = ""


def parse_content_range(value: str | None) -> tuple[int, int, int | None] | None:
    """C{bytes 100-199/1000} → (100, 199, 1000); C{*} total → None; malformed → None."""
    if value is None:
        return None
    match = _CONTENT_RANGE.fullmatch(value.strip())
    if match is None:
        return None
    first, last, total = match.groups()
    return int(first), int(last), None if total == "*" else int(total)


def plan_answer(
    code: int, have: int, content_range: str | None, content_length: str | None, asked_range: bool
) -> Plan:
    """
    What an answer to a (possibly ranged) GET means when C{have} bytes are
    on disk: 206 from exactly C{have} → append; 200 → start over (the
    file changed, or the server ignores ranges); 416 for a file exactly
    C{have} long → already complete; anything else → fail.
    """
    length = int(content_length) if content_length and content_length.strip().isdigit() else None
    if code == 206 and asked_range:
        parsed = parse_content_range(content_range)
        if parsed is None or parsed[0] != have:
            return Plan("fail", reason=f"the server sent the wrong range ({content_range})")
        return Plan("append", have, parsed[2])
    if code == 200:
        return Plan("restart", 0, length)
    if code == 416 and asked_range:
        unsatisfied = re.fullmatch(r"bytes \*/(\d+)", (content_range or "").strip())
        if unsatisfied and int(unsatisfied.group(1)) == have:
            return Plan("complete", have, have)
        return Plan("restart", 0, None, "the partial file is longer than the remote one")
    return Plan("fail", reason=f"unexpected {code}")
