"""Tests for L{streamsvc.digests}: Content-Digest / Digest parsing, hashing, the answer field."""

from __future__ import annotations

import base64
import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamsvc.digests import DigestError, Hashes, expected_digests, field, mismatches


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


SHA256 = hashlib.sha256(b"body").digest()
SHA512 = hashlib.sha512(b"body").digest()


def test_content_digest_members() -> None:
    value = f"sha-256=:{b64(SHA256)}:, sha-512=:{b64(SHA512)}:;param=1, unixsum=:AAAA:"
    assert expected_digests(value, None) == {"sha-256": SHA256, "sha-512": SHA512}


def test_legacy_digest_any_case() -> None:
    assert expected_digests(None, f"SHA-256={b64(SHA256)}, MD5=abcd") == {"sha-256": SHA256}


def test_no_field_or_only_unknown_algorithms_verifies_nothing() -> None:
    assert expected_digests(None, None) == {}
    assert expected_digests("md5=:AAAA:", "UNIXcksum=123") == {}


@pytest.mark.parametrize(
    "content_digest, digest",
    [
        ("sha-256=AAAA", None),
        ("sha-256=:AAA*:", None),
        ("sha-256=:AAAA:", None),  # too short for sha-256
        (f"sha-256=:{b64(SHA256)}: junk", None),
        (None, "SHA-256"),
        (None, "SHA-256=!!"),
        (f"sha-256=:{b64(SHA256)}:", f"SHA-256={b64(hashlib.sha256(b'x').digest())}"),
    ],
)
def test_malformed_or_contradictory_fields_raise(content_digest: str | None, digest: str | None) -> None:
    with pytest.raises(DigestError):
        expected_digests(content_digest, digest)


@given(st.binary(max_size=5000), st.lists(st.binary(max_size=300), max_size=5))
def test_hashes_match_hashlib_however_the_body_is_cut(head: bytes, pieces: list[bytes]) -> None:
    body = head + b"".join(pieces)
    hashes = Hashes(["sha-512"])
    for part in [head, *pieces]:
        hashes.update(part)
    digests = hashes.digests()
    assert digests == {"sha-256": hashlib.sha256(body).digest(), "sha-512": hashlib.sha512(body).digest()}
    assert mismatches(expected_digests(field(digests).decode(), None), digests) == []


def test_repr_digest_is_read_like_content_digest() -> None:
    value = f"sha-256=:{b64(SHA256)}:"
    assert expected_digests(None, None, value) == {"sha-256": SHA256}
    assert expected_digests(value, None, value) == {"sha-256": SHA256}
    with pytest.raises(DigestError, match="malformed Repr-Digest"):
        expected_digests(None, None, "sha-256=AAAA")
    with pytest.raises(DigestError, match="two different"):
        expected_digests(value, None, f"sha-256=:{b64(hashlib.sha256(b'x').digest())}:")


def test_mismatches_name_the_failing_algorithm() -> None:
    assert mismatches({"sha-256": b"x" * 32}, {"sha-256": SHA256}) == ["sha-256"]


def test_field_round_trips() -> None:
    assert field({"sha-256": SHA256}) == f"sha-256=:{b64(SHA256)}:".encode()
    assert expected_digests(field({"sha-256": SHA256}).decode(), None) == {"sha-256": SHA256}
