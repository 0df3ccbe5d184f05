# -*- test-case-name: tests.test_client_put_resume -*-
"""
C{streamsvc-client put --retries N} and C{--resume}: an upload that
survives a cut connection, and one that continues a run that died, by the
IETF resumable upload draft (L{streamsvc.files.resumable}).

  1. An empty creation (C{PUT URL}, C{Upload-Complete: ?0},
     C{Upload-Length}, C{Repr-Digest} of the whole file, the
     preconditions): the server answers 201 with the upload's C{Location}.
     That URL is saved in the state dir before a byte of the file is sent.
  2. One C{PATCH} with the file from the server's offset,
     C{Upload-Complete: ?1}: the usual upload answer (201/204, ETag) ends it.
  3. A cut (or a 502/503/504) waits C{backoff}, twice that the next
     time..., asks the offset (C{HEAD}) and sends the rest: at most
     C{retries} times. A 409 (another offset) is answered the same way.

The state dir (C{--state-dir}, default C{$XDG_STATE_HOME/streamsvc-client/uploads},
that is C{~/.local/state/streamsvc-client/uploads}) holds one small JSON
file per upload in progress, named by a hash of the file's absolute path,
size, modification time and the target URL: a changed file is a new
upload. The record goes once the upload is complete (or the server has
refused it). C{--resume} looks for it: found and still known to the
server, the upload continues from the server's offset; otherwise it starts
afresh. (Not next to the file: its folder may not be writable.)
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urljoin

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread

from streamsvc.client.errors import ClientError, tls_problem
from streamsvc.client.get import _status_error
from streamsvc.client.put import ContinueWatch, HeldFileProducer, file_digest, preconditions
from streamsvc.digests import field

#: The draft's interop version we speak (as the server: L{streamsvc.files.resumable}).
INTEROP_VERSION = "8"
#: Statuses worth another try: the server or a proxy in front was briefly unable.
RETRY_STATUSES = frozenset({502, 503, 504})
#: 409s (the server still busy with a cut append) answered by asking the offset again, beside the retries.
MAX_CONFLICTS = 3
#: The longest wait between two tries, in seconds.
MAX_BACKOFF = 30.0


def default_state_dir() -> str:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "streamsvc-client", "uploads")


def record_name(path: str, size: int, mtime_ns: int, url: str) -> str:
    """The state file of one file's upload to one URL (a changed file is another upload)."""
    key = json.dumps([os.path.abspath(path), size, mtime_ns, url]).encode("utf-8")
    return hashlib.sha256(key).hexdigest()[:32] + ".json"


class UploadRecord:
    """The state file of an upload in progress: where it is on the server."""

    def __init__(self, folder: str, name: str) -> None:
        self.path = os.path.join(folder, name)

    def load(self) -> str | None:
        """The upload's URL, if a record is there and readable."""
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError):
            return None
        upload = data.get("upload") if isinstance(data, dict) else None
        return upload if isinstance(upload, str) else None

    def save(self, upload: str, url: str, file: str) -> None:
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        temp = self.path + ".tmp"
        with open(temp, "w", encoding="utf-8") as f:
            json.dump({"upload": upload, "url": url, "file": os.path.abspath(file), "saved": time.time()}, f)
        os.replace(temp, self.path)

    def remove(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


class _Counting:
    """The transport the body is written to, counting what goes (the progress bar)."""

    def __init__(self, consumer: Any, on_data: Callable[[int], None]) -> None:
        self._consumer = consumer
        self._on_data = on_data

    def write(self, data: bytes) -> None:
        self._consumer.write(data)
        self._on_data(len(data))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._consumer, name)


class CountedFileProducer(HeldFileProducer):
    def __init__(self, path: str, *, offset: int, on_data: Callable[[int], None], **options: Any) -> None:
        super().__init__(path, offset=offset, **options)
        self._on_data = on_data

    def startProducing(self, consumer: Any) -> Deferred[None]:
        return super().startProducing(_Counting(consumer, self._on_data))


async def resumable_upload(
    client: Any,
    path: str,
    url: str,
    *,
    reactor: Any = None,
    headers: dict[str, str] | None = None,
    digest: bool = True,
    if_match: str | None = None,
    if_none_match: bool = False,
    retries: int = 0,
    resume: bool = False,
    state_dir: str | None = None,
    backoff: float = 1.0,
    hold: float = 1.0,
    on_start: Callable[[int | None, int], None] = lambda total, offset: None,
    on_data: Callable[[int], None] = lambda n: None,
) -> tuple[int, bytes]:
    """PUT C{path} to C{url} as a resumable upload; the final status and answer body."""
    from twisted.internet.error import ConnectError, ConnectionLost
    from twisted.internet.task import deferLater
    from twisted.web.client import (
        RequestGenerationFailed,
        RequestTransmissionFailed,
        ResponseFailed,
        ResponseNeverReceived,
    )

    cut = (ResponseFailed, ResponseNeverReceived, RequestGenerationFailed, RequestTransmissionFailed, ConnectionLost)

    if reactor is None:
        from twisted.internet import reactor
    if not os.path.isfile(path):
        raise ClientError(f"not a file: {path}")
    st = os.stat(path)
    size = st.st_size
    record = UploadRecord(state_dir or default_state_dir(), record_name(path, size, st.st_mtime_ns, url))
    base = dict(headers or {})
    base["Upload-Draft-Interop-Version"] = INTEROP_VERSION

    upload: str | None = record.load() if resume else None
    offset = 0
    if upload is not None:
        known = await _offset(client, upload, base)
        if known is None:
            upload = None  # expired, cancelled, or another server: afresh
        elif known[1]:
            record.remove()
            return 200, b'{"upload": "complete"}\n'  # an earlier run completed it
        else:
            offset = known[0]
    if upload is None:
        upload = await _create(client, path, url, size, base, digest=digest, if_match=if_match,
                               if_none_match=if_none_match)
        record.save(upload, url, path)

    wait = backoff
    attempt = conflicts = 0
    while True:
        on_start(size, offset)
        try:
            response, body = await _append(client, path, upload, offset, size, base, reactor=reactor, hold=hold,
                                           on_data=on_data)
        except ConnectError:
            if attempt == retries:
                raise
        except cut as error:  # the body's sending failed as the connection went: the same cut
            if tls_problem(error):
                raise
            if attempt == retries:
                raise ClientError(f"connection lost {retries + 1} times: run again with --resume to continue") from None
        else:
            if 200 <= response.code < 300:
                record.remove()
                return response.code, body
            if response.code not in RETRY_STATUSES and response.code != 409:
                if response.code != 401 and response.code < 500:
                    record.remove()  # refused for good: the server has ended the upload
                raise _status_error(response, url)
            if response.code == 409 and conflicts < MAX_CONFLICTS:
                # The server still finishing the cut append (its fsync), or
                # another offset: asked again, without using up a retry.
                conflicts += 1
                attempt -= 1
            elif attempt == retries:
                raise _status_error(response, url)
        attempt += 1
        await deferLater(reactor, wait, lambda: None)
        wait = min(wait * 2, MAX_BACKOFF)
        known = await _offset(client, upload, base)
        if known is None:
            record.remove()
            raise ClientError(f"the server no longer has the upload ({upload}): run again to start afresh")
        if known[1]:
            record.remove()
            return 200, b'{"upload": "complete"}\n'  # completed, its answer lost with the connection
        offset = known[0]


async def _create(client: Any, path: str, url: str, size: int, base: dict[str, str], *, digest: bool,
                  if_match: str | None, if_none_match: bool) -> str:
    """The upload made on the server (nothing of the file sent yet): its URL."""
    asked = dict(base)
    asked.update({"Upload-Complete": "?0", "Upload-Length": str(size)})
    if digest:
        asked["Repr-Digest"] = field({"sha-256": await deferToThread(file_digest, path)}).decode("ascii")
    asked.update(preconditions(if_match, if_none_match))
    response = await client.put(url, data=b"", headers=asked)
    await response.content()
    location = response.headers.getRawHeaders(b"location", [None])[0]
    if response.code != 201 or location is None:
        if response.code < 300:
            raise ClientError(f"{url}: the server does not take resumable uploads (no upload Location)")
        raise _status_error(response, url)
    return urljoin(url, location.decode("latin-1"))


async def _offset(client: Any, upload: str, base: dict[str, str]) -> tuple[int, bool] | None:
    """The server's offset of C{upload} and whether it is complete; None when the server has no such upload."""
    response = await client.head(upload, headers=base)
    await response.content()
    if response.code == 404:
        return None
    offset = response.headers.getRawHeaders(b"upload-offset", [None])[0]
    if response.code >= 300 or offset is None or not offset.isdigit():
        raise _status_error(response, upload)
    complete = response.headers.getRawHeaders(b"upload-complete", [b"?0"])[0].strip() == b"?1"
    return int(offset), complete


async def _append(client: Any, path: str, upload: str, offset: int, size: int, base: dict[str, str], *,
                  reactor: Any, hold: float, on_data: Callable[[int], None]) -> tuple[Any, bytes]:
    """One PATCH with the rest of the file; the response and its body."""
    asked = dict(base)
    asked.update({"Content-Type": "application/partial-upload", "Upload-Offset": str(offset),
                  "Upload-Complete": "?1", "Upload-Length": str(size), "Expect": "100-continue"})
    producer = CountedFileProducer(path, offset=offset, on_data=on_data, reactor=reactor, hold=hold)
    try:
        with ContinueWatch(producer):
            response = await client.request("PATCH", upload, data=producer, headers=asked)
    finally:
        producer.answered()
    return response, await response.content()
