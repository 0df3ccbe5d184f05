"""
A resumable upload (the IETF draft) cut at each interesting point over a
real loopback socket, the server restarted between the cut and the resume:
inside the request's headers, right after the 104, in the body (at fixed and
at seeded random points), between two appends, and after the last byte but
before the answer (while the server completes). Each time the installed
file is byte-identical, the old version is served until then, nothing of
the upload shows under C{/files}, and no partial data is left.

The cutting client is a blocking socket in a thread: it sends exactly the
bytes it is told to, reads the 104 if one comes, then resets the connection
(SO_LINGER 0), which is what a network drop looks like to the server.
"""

from __future__ import annotations

import json
import os
import random
import socket
import struct
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from streamsvc.config import AuthConfig, LimitsConfig

from test_integration import Server, wait_for

TOKEN = "cut-secret"
AUTH = {"Authorization": f"Bearer {TOKEN}", "Upload-Draft-Interop-Version": "8"}
MiB = 1024 * 1024
SIZE = 4 * MiB
OLD = b"the old version"


def server(tmp_path: Any) -> Server:
    return Server(tmp_path / "data", auth=AuthConfig(tokens=(TOKEN,)),
                  limits=LimitsConfig(max_upload_bytes=64 * MiB))


def creation(body: bytes, *, complete: bool = True) -> bytes:
    """A resumable PUT of C{body} to /files/f.bin: its request line and headers."""
    return (b"PUT /files/f.bin HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
            + b"\r\nUpload-Draft-Interop-Version: 8\r\nUpload-Complete: " + (b"?1" if complete else b"?0")
            + b"\r\nContent-Length: %d\r\n\r\n" % (len(body),))


def send_and_cut(port: int, data: bytes, *, read_104: bool) -> bytes:
    """Send C{data}, read what comes up to the 104's end if asked, then reset; what was read."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        got = b""
        while read_104 and b"\r\n\r\n" not in got:
            chunk = s.recv(4096)
            if not chunk:
                break
            got += chunk
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    return got


def location(informational: bytes) -> str:
    head, _, _ = informational.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 104 "), informational
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"location":
            return value.strip().decode("ascii")
    raise AssertionError(f"no Location in {informational!r}")


async def offset(base: str, upload: str) -> tuple[int, bool] | None:
    """The server's (offset, complete) of C{upload}, or None if it has none; waits out an append still ending."""
    for _ in range(500):
        response = await treq.head(base + upload, headers=AUTH)
        await response.content()
        if response.code == 404:
            return None
        if response.code == 204:
            complete = response.headers.getRawHeaders(b"upload-complete", [b"?0"])[0] == b"?1"
            return int(response.headers.getRawHeaders(b"upload-offset")[0]), complete
        await deferLater(reactor, 0.02, lambda: None)
    raise AssertionError("no offset")


async def patch(base: str, upload: str, at: int, data: bytes, *, complete: bool) -> int:
    """One append; its status."""
    response = await treq.request("PATCH", base + upload, data=data, headers={
        **AUTH, "Content-Type": "application/partial-upload", "Upload-Offset": str(at),
        "Upload-Complete": "?1" if complete else "?0"})
    await response.content()
    return response.code


async def resume(base: str, upload: str, body: bytes) -> int | None:
    """
    The rest of C{body} sent from the server's offset: the final status, or
    None if the server had completed the upload (its answer lost with the
    cut). A 409 (the cut append still ending, in the old site) asks again.
    """
    for _ in range(500):
        known = await offset(base, upload)
        assert known is not None
        if known[1]:
            return None
        code = await patch(base, upload, known[0], body[known[0]:], complete=True)
        if code != 409:
            return code
        await deferLater(reactor, 0.02, lambda: None)
    raise AssertionError("409 for ever")


async def served(base: str) -> bytes:
    response = await treq.get(base + "/files/f.bin")
    return await response.content()


def leftovers(srv: Server) -> list[str]:
    """Partial data anywhere: the uploads' data files, and temporary files under files/."""
    uploads = os.path.join(srv.config.server.data_dir, "uploads")
    parts = [n for n in os.listdir(uploads) if n.endswith(".part")] if os.path.isdir(uploads) else []
    return parts + [p for p in os.listdir(srv.files) if p.startswith(".streamsvc")]


async def listed(base: str) -> list[str]:
    response = await treq.get(base + "/files/?format=json")
    return [entry["name"] for entry in json.loads(await response.content())]


def cut_points() -> list[Any]:
    head = len(creation(b"x" * SIZE))
    rng = random.Random(31)
    return ([pytest.param(head // 2, id="inside-the-headers"), pytest.param(head, id="right-after-the-104"),
             pytest.param(head + SIZE // 2, id="mid-body"), pytest.param(head + SIZE, id="after-the-last-byte")]
            + [pytest.param(rng.randrange(head + 1, head + SIZE), id=f"random-{n}") for n in range(3)])


@pytest.mark.parametrize("cut", cut_points())
@pytest_twisted.ensureDeferred
async def test_a_creation_cut_and_resumed_after_a_restart(tmp_path: Any, cut: int) -> None:
    body = os.urandom(SIZE)
    request = creation(body) + body
    head = len(creation(body))
    first = server(tmp_path)
    (first.files / "f.bin").write_bytes(OLD)
    await first.start()
    got = await deferToThread(send_and_cut, first.port.getHost().port, request[:cut], read_104=cut >= head)
    await first.stop()
    again = await server(tmp_path).start()  # the restart: a new site on the same data dir
    base = again.url
    try:
        if cut < head:  # the request never got to the resource: no upload, nothing changed
            assert got == b"" and not os.listdir(os.path.join(again.config.server.data_dir, "uploads"))
            assert await served(base) == OLD
            return
        upload = location(got)
        known = await offset(base, upload)
        assert known is not None and 0 <= known[0] <= cut - head
        if not known[1]:
            assert await served(base) == OLD  # the old version until the upload completes
            assert await listed(base) == ["f.bin"]  # and nothing else listed
        code = await resume(base, upload, body)
        assert code == 204 or (code is None and cut == head + SIZE)  # 204: replaced (None: completed at the cut)
        assert await served(base) == body
        assert (again.files / "f.bin").read_bytes() == body
        assert await offset(base, upload) == (SIZE, True)
        await wait_for(lambda: not leftovers(again))
    finally:
        await again.stop()


@pytest_twisted.ensureDeferred
async def test_appends_between_restarts(tmp_path: Any) -> None:
    body = os.urandom(SIZE)
    parts = [body[:MiB], body[MiB:3 * MiB], body[3 * MiB:]]
    srv = await server(tmp_path).start()
    response = await treq.put(srv.url + "/files/f.bin", data=parts[0], headers={**AUTH, "Upload-Complete": "?0"})
    await response.content()
    assert response.code == 201
    upload = response.headers.getRawHeaders(b"location")[0].decode("ascii")
    at = len(parts[0])
    for n, part in enumerate(parts[1:], 1):
        await srv.stop()
        srv = await server(tmp_path).start()  # a restart between two appends
        assert await offset(srv.url, upload) == (at, False)
        response = await treq.get(srv.url + "/files/f.bin")
        await response.content()
        assert response.code == 404  # nothing under /files until the upload completes
        last = n == len(parts) - 1
        assert await patch(srv.url, upload, at, part, complete=last) == (201 if last else 204)
        at += len(part)
    try:
        assert await served(srv.url) == body
        assert await offset(srv.url, upload) == (SIZE, True)
        assert not leftovers(srv)
    finally:
        await srv.stop()
