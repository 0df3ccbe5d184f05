"""
C{streamsvc-client put --retries/--resume} (L{streamsvc.client.put_resume})
against a real Site over loopback: a cut in the middle of the body resumed
by itself, a run that gave up continued by C{--resume} from the server's
offset (the progress starting there), and the records in the state dir.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import pytest
import pytest_twisted
import treq

from streamsvc.client.cli import parse_args
from streamsvc.client.errors import ClientError
from streamsvc.client.put_resume import UploadRecord, record_name, resumable_upload
from streamsvc.config import AuthConfig, LimitsConfig

from cutting_proxy import CuttingProxy
from test_integration import Server, wait_for

TOKEN = "resume-secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MiB = 1024 * 1024


async def start(tmp_path: Any) -> Server:
    return await Server(tmp_path / "data", auth=AuthConfig(tokens=(TOKEN,)),
                        limits=LimitsConfig(max_upload_bytes=256 * MiB)).start()


def digest(path: Any) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_options() -> None:
    args = parse_args(["put", "f.bin", "http://x/files/f.bin", "--retries", "3", "--resume", "--state-dir", "/s"])
    assert (args.retries, args.resume, args.state_dir) == (3, True, "/s")
    assert parse_args(["put", "f", "u"]).retries == 0


def test_a_record_names_the_file_its_size_time_and_target(tmp_path: Any) -> None:
    one = record_name("a.bin", 10, 1, "http://x/files/a")
    assert one == record_name("a.bin", 10, 1, "http://x/files/a")
    assert len({one, record_name("a.bin", 11, 1, "http://x/files/a"), record_name("a.bin", 10, 2, "http://x/files/a"),
                record_name("a.bin", 10, 1, "http://x/files/b")}) == 4
    record = UploadRecord(str(tmp_path / "state"), one)
    assert record.load() is None
    record.save("http://x/uploads/abc", "http://x/files/a", "a.bin")
    assert record.load() == "http://x/uploads/abc"
    (tmp_path / "state" / one).write_text("{not json")
    assert record.load() is None
    record.remove()
    record.remove()  # twice: nothing there is fine


@pytest_twisted.ensureDeferred
async def test_a_cut_in_the_body_is_resumed_by_itself(tmp_path: Any) -> None:
    server = await start(tmp_path)
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(12 * MiB))
    proxy = CuttingProxy("127.0.0.1", server.port.getHost().port, cut_after=5 * MiB)
    base = await proxy.start()
    starts: list[tuple[int | None, int]] = []
    try:
        code, body = await resumable_upload(treq, str(source), base + "/files/big.bin", headers=AUTH, retries=3,
                                            backoff=0.05, hold=0.2, state_dir=str(tmp_path / "state"),
                                            on_start=lambda total, offset: starts.append((total, offset)))
        assert code == 201 and proxy.cuts == 1
        assert digest(server.files / "big.bin") == digest(source)
        assert len(starts) == 2 and starts[0] == (12 * MiB, 0)
        assert 0 < starts[1][1] < 5 * MiB  # the second try began at the server's offset
        assert os.listdir(tmp_path / "state") == []  # the record goes with the upload
    finally:
        await proxy.stop()
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_resume_continues_a_run_that_gave_up(tmp_path: Any) -> None:
    server = await start(tmp_path)
    source = tmp_path / "later.bin"
    source.write_bytes(os.urandom(8 * MiB))
    proxy = CuttingProxy("127.0.0.1", server.port.getHost().port, cut_after=3 * MiB)
    base = await proxy.start()
    state = str(tmp_path / "state")
    url = base + "/files/later.bin"
    try:
        with pytest.raises(ClientError, match="--resume"):
            await resumable_upload(treq, str(source), url, headers=AUTH, retries=0, state_dir=state, hold=0.2)
        assert len(os.listdir(state)) == 1 and not (server.files / "later.bin").exists()
        # A later run: the server has made the cut append's bytes durable by then.
        await wait_for(lambda: not server.site.pending_uploads._appending)
        starts: list[tuple[int | None, int]] = []
        code, _ = await resumable_upload(treq, str(source), url, headers=AUTH, resume=True, state_dir=state,
                                         hold=0.2, on_start=lambda total, offset: starts.append((total, offset)))
        assert code == 201 and len(starts) == 1 and starts[0][1] > 0  # from the server's offset, not from zero
        assert digest(server.files / "later.bin") == digest(source)
        assert os.listdir(state) == []
    finally:
        await proxy.stop()
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_resume_of_an_upload_the_server_forgot_starts_afresh(tmp_path: Any) -> None:
    server = await start(tmp_path)
    source = tmp_path / "f.bin"
    source.write_bytes(b"x" * 1000)
    url = server.url + "/files/f.bin"
    st = source.stat()
    state = tmp_path / "state"
    UploadRecord(str(state), record_name(str(source), 1000, st.st_mtime_ns, url)).save(
        server.url + "/uploads/AAAAAAAAAAAAAAAAAAAAAAAA", url, str(source))
    try:
        code, _ = await resumable_upload(treq, str(source), url, headers=AUTH, resume=True, state_dir=str(state),
                                         hold=0.2)
        assert code == 201 and (server.files / "f.bin").read_bytes() == b"x" * 1000
        assert os.listdir(state) == []
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_a_refusal_is_one_error_and_leaves_no_record(tmp_path: Any) -> None:
    server = await start(tmp_path)
    source = tmp_path / "f.bin"
    source.write_bytes(b"abc")
    (server.files / "f.bin").write_bytes(b"there")
    try:
        with pytest.raises(ClientError, match="412"):
            await resumable_upload(treq, str(source), server.url + "/files/f.bin", headers=AUTH, if_none_match=True,
                                   retries=2, backoff=0.01, state_dir=str(tmp_path / "state"), hold=0.2)
        assert (server.files / "f.bin").read_bytes() == b"there"
        assert not (tmp_path / "state").exists() or os.listdir(tmp_path / "state") == []
    finally:
        await server.stop()
