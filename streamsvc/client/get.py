# -*- test-case-name: tests.test_client -*-
"""
C{streamsvc-client get URL -o FILE}: the body streamed to C{FILE.part} as it
arrives (treq C{unbuffered=True}: never held in memory), renamed to FILE once
its length is verified, so an interrupted download is never mistaken for a
complete one. A C{.part} with a saved validator is resumed with C{Range} and
C{If-Range}; a 200 to that starts over. Works against any HTTP server.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit
from collections.abc import Callable
from typing import Any

import treq

from streamsvc.client.body import BodyStalled, read_body
from streamsvc.client.errors import ClientError, tls_problem
from streamsvc.client.resume import Validator, plan_answer, resume_headers


def _header(response: Any, name: str) -> str | None:
    values = response.headers.getRawHeaders(name.encode("ascii"))
    return None if not values else values[0].decode("latin-1")


def _status_error(response: Any, url: str) -> ClientError:
    phrase = getattr(response, "phrase", b"") or b""
    if isinstance(phrase, bytes):
        phrase = phrase.decode("latin-1")
    path = urlsplit(url).path or "/"
    return ClientError(f"{response.code} {phrase}: {path}".replace("  ", " "))


def _load_validator(meta: str) -> Validator | None:
    try:
        with open(meta, encoding="utf-8") as f:
            return Validator.loads(f.read())
    except OSError:
        return None


async def download(
    client: Any,
    url: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    resume: bool = False,
    on_data: Callable[[int], None] = lambda n: None,
    on_start: Callable[[int | None, int], None] = lambda total, offset: None,
    reactor: Any = None,
    rate: float | None = None,
    stall: float | None = None,
) -> int:
    """
    Download C{url} into C{path}; the number of bytes the file has. With
    C{resume}, an existing C{path} is taken as the start of the download (as
    C{curl -C -}); a C{path.part} with its C{.meta} always is. C{rate}
    (bytes/s) and C{stall} (seconds): see L{streamsvc.client.body}.
    C{on_start(total, offset)} once the answer is known (for a progress
    bar), C{on_data(n)} for every chunk written.
    """
    if reactor is None:
        from twisted.internet import reactor
    part, meta = path + ".part", path + ".part.meta"
    forced = False
    if resume and os.path.exists(path) and not os.path.exists(part):
        os.replace(path, part)
        forced = True
    for attempt in range(2):  # a second time only after a 416 for a stale .part
        have = os.path.getsize(part) if os.path.exists(part) else 0
        asked = resume_headers(have, _load_validator(meta), forced=forced)
        response = await client.get(url, headers={**(headers or {}), **asked}, unbuffered=True)
        plan = plan_answer(
            response.code, have, _header(response, "content-range"),
            _header(response, "content-length"), "Range" in asked,
        )
        if plan.action == "restart" and response.code == 416:
            await response.content()
            os.unlink(part)
            forced = False
            continue
        break
    if plan.action == "fail":
        await treq.collect(response, lambda data: None)
        if response.code >= 300:
            raise _status_error(response, url)
        raise ClientError(plan.reason)
    if plan.action == "complete":
        await response.content()
    else:
        if plan.action == "restart":
            _save_validator(meta, response)
        on_start(plan.total, plan.offset)
        await _receive(response, part, append=plan.action == "append", on_data=on_data,
                       reactor=reactor, rate=rate, stall=stall)
    size = os.path.getsize(part)
    if plan.total is not None and size != plan.total:
        raise ClientError(f"incomplete: {size} of {plan.total} bytes (run again to resume)")
    os.replace(part, path)
    if os.path.exists(meta):
        os.unlink(meta)
    return size


async def stream(
    client: Any,
    url: str,
    write: Callable[[bytes], None],
    *,
    headers: dict[str, str] | None = None,
    on_data: Callable[[int], None] = lambda n: None,
    on_start: Callable[[int | None, int], None] = lambda total, offset: None,
    reactor: Any = None,
    rate: float | None = None,
    stall: float | None = None,
) -> int:
    """
    C{url}'s body handed to C{write} as it arrives (C{-o -}: stdout), in
    constant memory; the number of bytes. C{write} may block (a pipe whose
    reader is slow): the socket is then not read, so TCP slows the server.
    An error from C{write} (a closed pipe) ends the download and is raised.
    """
    if reactor is None:
        from twisted.internet import reactor
    response = await client.get(url, headers=headers or {}, unbuffered=True)
    if response.code >= 300:
        await treq.collect(response, lambda data: None)
        raise _status_error(response, url)
    length = _header(response, "content-length")
    total = int(length) if length is not None and length.isdigit() else None
    on_start(total, 0)
    got = 0

    def counted(data: bytes) -> None:
        nonlocal got
        write(data)
        got += len(data)
        on_data(len(data))

    try:
        await read_body(response, counted, reactor=reactor, rate=rate, stall=stall)
    except BodyStalled as error:
        raise ClientError(f"the body stalled after {got} bytes: {error}") from None
    if total is not None and got != total:
        raise ClientError(f"incomplete: {got} of {total} bytes")
    return got


def _save_validator(meta: str, response: Any) -> None:
    validator = Validator(_header(response, "etag"), _header(response, "last-modified"))
    if validator.if_range():
        with open(meta, "w", encoding="utf-8") as f:
            f.write(validator.dumps())
    elif os.path.exists(meta):
        os.unlink(meta)


async def _receive(response: Any, part: str, *, append: bool, on_data: Callable[[int], None], **reading: Any) -> None:
    """The body into C{part} as it arrives; the file is closed however the body ends."""
    with open(part, "ab" if append else "wb") as out:

        def write(data: bytes) -> None:
            out.write(data)
            on_data(len(data))

        try:
            await read_body(response, write, **reading)
        except BodyStalled as error:
            raise ClientError(f"the body stalled: {error} (run again to resume)") from None


def _lost(path: str, retries: int) -> str:
    """What a cut connection left behind, and how to go on."""
    part = path + ".part"
    if not os.path.exists(part):
        return "connection lost before the body"
    tries = f" after {retries + 1} attempts" if retries else ""
    hint = "" if retries else " (or use --retries N)"
    return f"connection lost{tries} at byte {os.path.getsize(part)}: {part} kept, run again to resume{hint}"


async def download_with_retries(
    client: Any, url: str, path: str, *, retries: int = 0, reactor: Any = None, backoff: float = 1.0,
    **options: Any,
) -> int:
    """
    L{download}, resumed after a dropped connection up to C{retries} times
    (waiting C{backoff}, then twice that...): the C{.part} and its validator
    make each attempt a resume, not a restart.
    """
    from twisted.internet.error import ConnectError, ConnectionLost
    from twisted.internet.task import deferLater
    from twisted.web.client import ResponseFailed

    if reactor is None:
        from twisted.internet import reactor
    wait = backoff
    for attempt in range(retries + 1):
        try:
            return await download(client, url, path, reactor=reactor, **options)
        except ConnectError:
            if attempt == retries:
                raise  # "cannot connect: ..." (the command line says so)
        except (ResponseFailed, ConnectionLost) as error:
            if tls_problem(error):
                raise  # a refused certificate stays refused
            if attempt == retries:
                raise ClientError(_lost(path, retries)) from None
        await deferLater(reactor, wait, lambda: None)
        wait *= 2
    raise AssertionError("not reached")
