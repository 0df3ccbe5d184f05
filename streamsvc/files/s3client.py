# -*- test-case-name: tests.test_s3client -*-
"""
The S3 protocol, as much of it as C{/files} needs, on Twisted's own HTTP
client: requests signed with botocore's SigV4 signer (the optional extra
C{s3}), bytes moved by treq over an L{twisted.web.client.Agent} with
unbuffered response bodies, so that a caller streams an object through its
own producer (pausing the store's socket when its client is slow) instead of
holding it. No SDK event loop, no blocking calls in threads.

What it speaks: HeadBucket, HeadObject, GetObject (with a byte range),
PutObject, DeleteObject, ListObjectsV2 (one page at a time, with a
delimiter), and the multipart upload calls. Path-style
(C{endpoint/bucket/key}) or virtual-hosted (C{bucket.endpoint/key})
addressing. Payloads are sent C{UNSIGNED-PAYLOAD}: the signature covers the
method, path, query and headers; the bodies are checked by our own digests.

Errors: L{S3Error} for an answer of the store (its HTTP status, S3 error
code and message); L{S3Unavailable} when it cannot be reached or does not
answer within C{timeout}. Neither ever shows the secret key.
"""

from __future__ import annotations

import datetime
import xml.etree.ElementTree as ElementTree
from collections.abc import Mapping, Sequence
from email.utils import parsedate_to_datetime
from typing import Any, NamedTuple
from urllib.parse import quote, urlsplit

from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.error import ConnectError, ConnectingCancelledError, DNSLookupError, TimeoutError
from twisted.web.client import ResponseFailed
from twisted.web.iweb import IResponse

import treq

from streamsvc.errors import StoreUnavailable

try:
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
except ImportError:  # the optional extra is not installed
    S3SigV4Auth = None  # type: ignore[assignment,misc]

#: The extra that brings the signer, for the one line a missing one gives.
EXTRA = "pip install 'streamsvc[s3]'"


class SignerMissing(RuntimeError):
    """C{[files] store = s3} without botocore installed."""


class S3Error(Exception):
    """The store answered with an error: C{status}, S3's C{code} and C{message}."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"S3 {status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class S3Unavailable(StoreUnavailable):
    """The store could not be reached (503), or did not answer in time (504); the message names the endpoint."""


class ObjectInfo(NamedTuple):
    """What HeadObject (or GetObject's headers) says of an object."""

    size: int
    etag: str            # as the store gives it, quotes included
    last_modified: float  # Unix time
    content_type: str | None


class ListPage(NamedTuple):
    """One ListObjectsV2 page: folders (common prefixes) and objects below C{prefix}, and what comes next."""

    prefixes: list[str]
    objects: list[tuple[str, ObjectInfo]]
    next_token: str | None


class _Config:
    """The botocore client config the signer reads: payload signing off (C{UNSIGNED-PAYLOAD})."""

    s3 = {"payload_signing_enabled": False}


def _local(tag: str) -> str:
    """An XML tag without its namespace."""
    return tag.rsplit("}", 1)[-1]


def _children(element: ElementTree.Element, name: str) -> list[ElementTree.Element]:
    return [child for child in element if _local(child.tag) == name]


def _text(element: ElementTree.Element, name: str, default: str = "") -> str:
    for child in element:
        if _local(child.tag) == name:
            return child.text or ""
    return default


def parse_error(status: int, body: bytes) -> S3Error:
    """An S3 error document (or its absence, for a HEAD) as an L{S3Error}."""
    code, message = {404: "NotFound", 403: "AccessDenied", 412: "PreconditionFailed"}.get(status, "Error"), ""
    if body:
        try:
            root = ElementTree.fromstring(body)
            code = _text(root, "Code", code)
            message = _text(root, "Message")
        except ElementTree.ParseError:
            message = body[:200].decode("utf-8", "replace")
    return S3Error(status, code, message)


def parse_list(body: bytes) -> ListPage:
    """A ListObjectsV2 answer."""
    root = ElementTree.fromstring(body)
    prefixes = [_text(p, "Prefix") for p in _children(root, "CommonPrefixes")]
    objects = []
    for item in _children(root, "Contents"):
        modified = _text(item, "LastModified")
        objects.append((
            _text(item, "Key"),
            ObjectInfo(int(_text(item, "Size", "0")), _text(item, "ETag"), _iso_time(modified), None),
        ))
    truncated = _text(root, "IsTruncated", "false") == "true"
    token = _text(root, "NextContinuationToken") or None
    return ListPage(prefixes, objects, token if truncated else None)


def _iso_time(text: str) -> float:
    if not text:
        return 0.0
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def info_of(response: IResponse) -> ObjectInfo:
    """An object's facts from the headers of a HEAD or GET answer."""
    headers = response.headers
    ranged = headers.getRawHeaders(b"content-range", [b""])[0]  # bytes a-b/size, in a 206
    if b"/" in ranged:
        size = int(ranged.rsplit(b"/", 1)[1])
    else:
        # The header, not response.length: the Agent says 0 for a HEAD.
        size = int(headers.getRawHeaders(b"content-length", [b"0"])[0])
    modified = headers.getRawHeaders(b"last-modified", [b""])[0].decode("latin-1")
    etag = headers.getRawHeaders(b"etag", [b""])[0].decode("latin-1")
    kind = headers.getRawHeaders(b"content-type", [None])[0]
    return ObjectInfo(
        size, etag, parsedate_to_datetime(modified).timestamp() if modified else 0.0,
        kind.decode("latin-1") if kind else None,
    )


def _query_string(query: Mapping[str, str]) -> str:
    """S3's canonical encoding (RFC 3986 unreserved only), sorted, as the signer expects it."""
    return "&".join(
        f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(query.items())
    )


class S3Client:
    """
    Requests to one bucket. C{http} is a treq L{treq.client.HTTPClient} (one
    with a persistent connection pool, so requests reuse connections);
    C{timeout} bounds the wait for each answer's headers.
    """

    def __init__(
        self,
        http: Any,
        *,
        endpoint: str,
        bucket: str,
        access_key: str,
        secret_key: str,
        region: str = "us-east-1",
        addressing: str = "path",
        timeout: float = 30.0,
    ) -> None:
        if S3SigV4Auth is None:
            raise SignerMissing(f"[files] store = s3 needs botocore: {EXTRA}")
        if addressing not in ("path", "virtual"):
            raise ValueError("addressing must be path or virtual")
        self._http = http
        self.endpoint = endpoint.rstrip("/") or f"https://s3.{region}.amazonaws.com"
        self.bucket = bucket
        self.region = region
        self._addressing = addressing
        self._credentials = Credentials(access_key, secret_key)
        self._timeout = timeout

    def __repr__(self) -> str:
        return f"<S3Client {self.endpoint} bucket={self.bucket}>"  # never the secret

    @property
    def where(self) -> str:
        return f"{self.endpoint}/{self.bucket}"

    def url(self, key: str = "", query: Mapping[str, str] | None = None) -> str:
        path = quote(key, safe="/-_.~")
        if self._addressing == "virtual":
            parts = urlsplit(self.endpoint)
            base = f"{parts.scheme}://{self.bucket}.{parts.netloc}/{path}"
        else:
            base = f"{self.endpoint}/{self.bucket}/{path}" if key else f"{self.endpoint}/{self.bucket}"
        return base + (f"?{_query_string(query)}" if query else "")

    def _signed(self, method: str, url: str, headers: Mapping[str, str]) -> dict[bytes, list[bytes]]:
        request = AWSRequest(method=method, url=url, headers=dict(headers), data=b"")
        request.context["client_config"] = _Config()
        S3SigV4Auth(self._credentials, "s3", self.region).add_auth(request)
        return {k.encode("latin-1"): [v.encode("latin-1")] for k, v in request.headers.items()}

    def request(
        self,
        method: str,
        key: str = "",
        *,
        query: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        body: Any = None,  # bytes, or an IBodyProducer with a length
        timeout: float | None = None,
    ) -> Deferred[IResponse]:
        """
        One signed request; a Deferred of its response, the body not yet
        read (the caller reads or drops it). Failures to reach the store
        are L{S3Unavailable}.
        """
        url = self.url(key, query)
        all_headers = dict(headers or {})
        if body is not None:
            all_headers["Content-Length"] = str(len(body) if isinstance(body, bytes) else body.length)
        signed = self._signed(method, url, all_headers)
        signed.pop(b"Content-Length", None)  # treq sets it from the body
        d = self._http.request(
            method, url, headers=signed, data=body, unbuffered=True,
            timeout=self._timeout if timeout is None else timeout,
        )
        return d.addErrback(self._unreachable)

    def _unreachable(self, failure: Any) -> Any:
        """The client's failures to reach the store as L{S3Unavailable}; anything else passes on."""
        status = 503
        cancelled = failure.check(ResponseFailed) and any(
            reason.check(CancelledError) for reason in getattr(failure.value, "reasons", ())
        )  # treq's timeout cancelling a request already sent: ResponseNeverReceived([CancelledError])
        if cancelled or failure.check(CancelledError, TimeoutError, ConnectingCancelledError):
            reason = f"no answer within {self._timeout:g} s"  # treq's timeout cancels the request
            status = 504
        elif failure.check(ResponseFailed):
            reason = "the connection was lost"
        elif failure.check(ConnectError, DNSLookupError):
            reason = failure.getErrorMessage()
        else:
            return failure
        raise S3Unavailable(f"the object store at {self.endpoint} is unreachable: {reason}", status=status)

    async def _call(self, method: str, key: str = "", ok: Sequence[int] = (200,), **kw: Any) -> tuple[IResponse, bytes]:
        """A request whose (small) answer is read whole; L{S3Error} unless its status is in C{ok}."""
        response = await self.request(method, key, **kw)
        body = await treq.content(response) if method != "HEAD" else b""
        if response.code not in ok:
            raise parse_error(response.code, body)
        return response, body

    # -- the calls ------------------------------------------------------------

    def head_bucket(self) -> Deferred[None]:
        async def run() -> None:
            await self._call("HEAD", "")

        return ensureDeferred(run())

    def head_object(self, key: str) -> Deferred[ObjectInfo | None]:
        """The object's facts, or None when there is none at C{key}."""

        async def run() -> ObjectInfo | None:
            response, _ = await self._call("HEAD", key, ok=(200, 404))
            return None if response.code == 404 else info_of(response)

        return ensureDeferred(run())

    def get_object(
        self, key: str, first: int | None = None, last: int | None = None, headers: Mapping[str, str] | None = None
    ) -> Deferred[IResponse]:
        """
        GetObject, bytes C{first}..C{last} (inclusive) if given: the response
        with its body unread (200 or 206); L{S3Error} (404 for no object, 412
        for a failed C{If-Match}) otherwise, its body consumed.
        """
        all_headers = dict(headers or {})
        if first is not None:
            all_headers["Range"] = f"bytes={first}-{'' if last is None else last}"

        async def run() -> IResponse:
            response = await self.request("GET", key, headers=all_headers)
            if response.code not in (200, 206):
                raise parse_error(response.code, await treq.content(response))
            return response

        return ensureDeferred(run())

    def put_object(self, key: str, body: bytes, headers: Mapping[str, str] | None = None) -> Deferred[str]:
        """PutObject; the new object's ETag."""

        async def run() -> str:
            response, _ = await self._call("PUT", key, body=body, headers=headers)
            return response.headers.getRawHeaders(b"etag", [b""])[0].decode("latin-1")

        return ensureDeferred(run())

    def delete_object(self, key: str) -> Deferred[None]:
        async def run() -> None:
            await self._call("DELETE", key, ok=(200, 204))

        return ensureDeferred(run())

    def list_page(
        self, prefix: str = "", token: str | None = None, *, delimiter: str = "/", max_keys: int = 1000
    ) -> Deferred[ListPage]:
        """One ListObjectsV2 page of the keys below C{prefix}, folders folded at C{delimiter}."""
        query = {"list-type": "2", "prefix": prefix, "max-keys": str(max_keys)}
        if delimiter:
            query["delimiter"] = delimiter
        if token is not None:
            query["continuation-token"] = token

        async def run() -> ListPage:
            _, body = await self._call("GET", "", query=query)
            return parse_list(body)

        return ensureDeferred(run())

    def create_multipart(self, key: str, headers: Mapping[str, str] | None = None) -> Deferred[str]:
        """CreateMultipartUpload; the upload id."""

        async def run() -> str:
            _, body = await self._call("POST", key, query={"uploads": ""}, headers=headers)
            return _text(ElementTree.fromstring(body), "UploadId")

        return ensureDeferred(run())

    def upload_part(self, key: str, upload_id: str, number: int, data: Any) -> Deferred[str]:
        """UploadPart number C{number} (from 1); its ETag."""

        async def run() -> str:
            response, _ = await self._call(
                "PUT", key, query={"partNumber": str(number), "uploadId": upload_id}, body=data
            )
            return response.headers.getRawHeaders(b"etag", [b""])[0].decode("latin-1")

        return ensureDeferred(run())

    def complete_multipart(self, key: str, upload_id: str, etags: Sequence[str]) -> Deferred[str]:
        """CompleteMultipartUpload with the parts' ETags in order; the object's ETag."""
        parts = "".join(
            f"<Part><PartNumber>{n}</PartNumber><ETag>{_xml_escape(etag)}</ETag></Part>"
            for n, etag in enumerate(etags, 1)
        )
        document = f"<CompleteMultipartUpload>{parts}</CompleteMultipartUpload>".encode()

        async def run() -> str:
            _, body = await self._call("POST", key, query={"uploadId": upload_id}, body=document)
            root = ElementTree.fromstring(body)
            if _local(root.tag) == "Error":  # S3 may answer 200 and fail in the body
                raise parse_error(500, body)
            return _text(root, "ETag")

        return ensureDeferred(run())

    def abort_multipart(self, key: str, upload_id: str) -> Deferred[None]:
        async def run() -> None:
            await self._call("DELETE", key, query={"uploadId": upload_id}, ok=(200, 204, 404))

        return ensureDeferred(run())

    def list_multipart_uploads(self, prefix: str = "") -> Deferred[list[tuple[str, str]]]:
        """The multipart uploads begun and not completed or aborted: (key, upload id) pairs."""

        async def run() -> list[tuple[str, str]]:
            _, body = await self._call("GET", "", query={"uploads": "", "prefix": prefix})
            root = ElementTree.fromstring(body)
            return [(_text(u, "Key"), _text(u, "UploadId")) for u in _children(root, "Upload")]

        return ensureDeferred(run())


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def check_bucket_blocking(client: S3Client) -> None:
    """
    HeadBucket, synchronously: for start-up only, before the reactor runs
    (the one place a blocking call is right: nothing is served yet, and an
    unusable bucket must stop the start with one line).

    @raise S3Unavailable: the store cannot be reached in C{client}'s timeout.
    @raise S3Error: it answered no (404: no such bucket; 403: the
        credentials or the bucket's policy refuse us).
    """
    import http.client

    url = client.url()
    parts = urlsplit(url)
    signed = client._signed("HEAD", url, {})
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    connection = kind(parts.hostname, parts.port, timeout=client._timeout)
    try:
        connection.request("HEAD", parts.path or "/", headers={k.decode(): v[0].decode() for k, v in signed.items()})
        status = connection.getresponse().status
    except OSError as e:
        reason = f"no answer within {client._timeout:g} s" if isinstance(e, TimeoutError) else str(e.strerror or e)
        raise S3Unavailable(f"the object store at {client.endpoint} is unreachable: {reason}") from None
    finally:
        connection.close()
    if status == 404:
        raise S3Error(404, "NoSuchBucket", f"there is no bucket {client.bucket!r} at {client.endpoint}")
    if status in (401, 403):
        raise S3Error(status, "AccessDenied", f"the credentials are refused for bucket {client.bucket!r} at {client.endpoint}")
    if status >= 300:
        raise S3Error(status, "Unexpected", f"HeadBucket of {client.bucket!r} at {client.endpoint} answered {status}")
