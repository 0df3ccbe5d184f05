"""
The pending-upload store (L{streamsvc.files.pending}) on its own: states
saved durably, appends at the durable offset (complete, cut, refused),
the completing append checked and installed by the local store, restarts,
expiry and cancellation. Disk jobs run at once (or when the test says, to
race two appends); time is a Clock.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from streamsvc.errors import HTTPError
from streamsvc.files.feed import FileFeed
from streamsvc.files.local import LocalFileStore
from streamsvc.files.pending import (
    Appended,
    Conflict,
    InconsistentLength,
    PendingState,
    PendingUploads,
    UploadCompleted,
    is_upload_id,
)
from streamsvc.files.store import Installed, UploadAborted, WriteChecks, WritePreconditions
from test_upload import Jobs

MiB = 1024 * 1024


class Flow:
    """A request's flow control, as a sink sees it."""

    def __init__(self) -> None:
        self.paused = 0

    def pause_body(self, *, ours: bool = True) -> None:
        self.paused += 1

    def resume_body(self) -> None:
        self.paused -= 1


class World:
    def __init__(self, tmp_path: Any, **options: Any) -> None:
        self.tmp = tmp_path
        self.jobs = Jobs()
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.files = tmp_path / "files"
        self.files.mkdir(exist_ok=True)
        self.store = LocalFileStore(str(self.files), run_blocking=self.jobs, clock=self.clock)
        self.options = options
        self.uploads = self.restart()

    def restart(self) -> PendingUploads:
        self.uploads = PendingUploads(str(self.tmp / "uploads"), self.store, run_blocking=self.jobs,
                                      clock=self.clock, **self.options)
        self.uploads.prepare()
        return self.uploads

    def create(self, name: str = "a.bin", *, length: int | None = None, expected: dict[str, bytes] | None = None,
               preconditions: WritePreconditions = WritePreconditions()) -> PendingState:
        return result_of(self.uploads.create((name,), WriteChecks(preconditions, expected or {}), length=length,
                                             protocol="ietf"))

    def append(self, state: PendingState, *chunks: bytes, offset: int | None = None, complete: bool = False,
               cut: bool = False, **kw: Any) -> Any:
        append = self.uploads.append(state, Flow(), offset=state.offset if offset is None else offset,
                                     complete=complete, content_length=None, **kw)
        for chunk in chunks:
            append.write(chunk)
        if cut:
            append.body_failed(Failure(ConnectionError("cut")))
        else:
            append.body_done()
        return outcome(append.done)

    def data_path(self, state: PendingState) -> str:
        return str(self.tmp / "uploads" / (state.id + ".part"))


def result_of(d: Any) -> Any:
    out = outcome(d)
    if isinstance(out, Failure):
        out.raiseException()
    return out


def outcome(d: Any) -> Any:
    got: list[Any] = []
    d.addBoth(got.append)
    assert got, "the Deferred has not fired"
    return got[0]


def test_a_new_upload_has_an_unguessable_id_and_a_durable_state(tmp_path: Any) -> None:
    w = World(tmp_path)
    one, two = w.create(length=10), w.create()
    assert is_upload_id(one.id) and is_upload_id(two.id) and one.id != two.id
    assert len(one.id) == 24  # 144 bits
    assert w.uploads.find(one.id) == one and one.offset == 0 and one.length == 10
    assert w.restart().find(one.id) == one  # from the disk
    assert w.uploads.find("x" * 24) is None and w.uploads.find("../../etc/passwd") is None
    assert not os.listdir(w.files)  # nothing under files/ until it is complete


def test_appends_then_the_completing_one_installs_the_file(tmp_path: Any) -> None:
    w = World(tmp_path)
    (w.files / "a.bin").write_bytes(b"old version")
    body = os.urandom(300_000)
    state = w.create(expected={"sha-256": hashlib.sha256(body).digest()})
    first = w.append(state, body[:100_000], body[100_000:120_000])
    assert isinstance(first, Appended) and first.installed is None and first.state.offset == 120_000
    assert (w.files / "a.bin").read_bytes() == b"old version"  # served unchanged meanwhile
    assert w.uploads.find(state.id).offset == 120_000
    last = w.append(first.state, body[120_000:], complete=True)
    assert isinstance(last.installed, Installed) and not last.installed.created
    assert (w.files / "a.bin").read_bytes() == body
    assert last.digests["sha-256"] == hashlib.sha256(body).digest()
    done = w.uploads.find(state.id)
    assert done.complete and done.length == 300_000 and done.installed["size"] == 300_000
    assert not os.path.exists(w.data_path(state))  # the data became the file
    with pytest.raises(UploadCompleted):
        w.uploads.append(done, Flow(), offset=300_000, complete=False, content_length=0)


def test_a_cut_append_keeps_what_arrived_and_a_wrong_offset_is_a_conflict(tmp_path: Any) -> None:
    w = World(tmp_path)
    state = w.create()
    cut = w.append(state, b"a" * 5000, b"b" * 3000, cut=True)
    assert cut.state.offset == 8000 and w.uploads.find(state.id).offset == 8000
    with pytest.raises(Conflict) as conflict:
        w.uploads.append(cut.state, Flow(), offset=5000, complete=False, content_length=None)
    assert conflict.value.code == 409 and conflict.value.state.offset == 8000
    done = w.append(cut.state, b"c" * 10, complete=True)
    assert (w.files / "a.bin").read_bytes() == b"a" * 5000 + b"b" * 3000 + b"c" * 10
    assert done.installed.created


def test_two_appends_at_once_one_wins_and_the_other_is_a_conflict(tmp_path: Any) -> None:
    w = World(tmp_path)
    state = w.create()
    first = w.uploads.append(state, Flow(), offset=0, complete=False, content_length=None)
    with pytest.raises(Conflict):
        w.uploads.append(state, Flow(), offset=0, complete=False, content_length=None)
    first.write(b"x" * 100)
    first.body_done()
    assert outcome(first.done).state.offset == 100
    assert w.uploads.cancel(w.uploads.find(state.id)) is not None


def test_after_a_restart_the_hashes_are_computed_again_and_leftovers_cut(tmp_path: Any) -> None:
    w = World(tmp_path)
    body = os.urandom(50_000)
    state = w.create(length=50_000, expected={"sha-256": hashlib.sha256(body).digest()})
    state = w.append(state, body[:20_000]).state
    with open(w.data_path(state), "ab") as f:
        f.write(b"bytes written after the last saved offset, by a process that died")
    uploads = w.restart()
    state = uploads.find(state.id)
    assert state.offset == 20_000
    done = w.append(state, body[20_000:], complete=True)
    assert (w.files / "a.bin").read_bytes() == body and done.installed.size == 50_000


def test_a_digest_that_does_not_match_installs_nothing_and_ends_the_upload(tmp_path: Any) -> None:
    w = World(tmp_path)
    state = w.create(expected={"sha-256": hashlib.sha256(b"something else").digest()})
    failure = w.append(state, b"the bytes", complete=True)
    assert isinstance(failure, Failure) and failure.value.code == 400
    assert not (w.files / "a.bin").exists()
    assert w.uploads.find(state.id) is None and not os.path.exists(w.data_path(state))


def test_a_content_digest_that_does_not_match_appends_nothing(tmp_path: Any) -> None:
    w = World(tmp_path)
    state = w.create()
    state = w.append(state, b"good ").state
    failure = w.append(state, b"bad", content_digests={"sha-256": hashlib.sha256(b"other").digest()})
    assert failure.value.code == 400
    state = w.uploads.find(state.id)
    assert state.offset == 5  # not appended
    w.append(state, b"end", complete=True, content_digests={"sha-256": hashlib.sha256(b"end").digest()})
    assert (w.files / "a.bin").read_bytes() == b"good end"


def test_lengths_bound_the_appends(tmp_path: Any) -> None:
    w = World(tmp_path, max_bytes=1000)
    with pytest.raises(HTTPError) as too_big:
        w.create(length=1001)
    assert too_big.value.code == 413
    state = w.create(length=10)
    with pytest.raises(HTTPError) as past:
        w.uploads.append(state, Flow(), offset=0, complete=False, content_length=11)
    assert past.value.code == 413
    with pytest.raises(InconsistentLength):
        w.uploads.append(state, Flow(), offset=0, complete=True, content_length=5)
    over = w.append(state, b"x" * 8, b"y" * 8)  # chunked, no length: cut at the limit
    assert over.value.code == 413
    assert w.uploads.find(state.id).offset == 10  # what fitted is kept
    short = w.create(length=10)
    failure = w.append(short, b"z" * 4, complete=True)
    assert isinstance(failure.value, InconsistentLength)
    unbounded = w.create()  # no length: the store's limit
    assert w.append(unbounded, b"u" * 1001).value.code == 413


def test_uploads_expire_and_are_swept(tmp_path: Any) -> None:
    w = World(tmp_path, expiry=3600)
    old, fresh = w.create(), w.create()
    w.clock.advance(1800)
    fresh = w.append(fresh, b"touched").state
    w.clock.advance(1801)
    assert w.uploads.find(old.id) is None and w.uploads.find(fresh.id) is not None
    assert result_of(w.uploads.sweep()) == 1
    assert not os.path.exists(w.data_path(old)) and os.path.exists(w.data_path(fresh))
    (tmp_path / "uploads" / "junk.json.tmp").write_bytes(b"{")
    w.clock.advance(3600)
    w.restart()  # start-up sweeps too, and removes interrupted saves
    assert os.listdir(tmp_path / "uploads") == []


def test_cancel_removes_the_data(tmp_path: Any) -> None:
    w = World(tmp_path)
    state = w.append(w.create(), b"partial").state
    result_of(w.uploads.cancel(state))
    assert w.uploads.find(state.id) is None and not os.path.exists(w.data_path(state))


def test_too_many_pending_is_a_503(tmp_path: Any) -> None:
    w = World(tmp_path, max_pending=2)
    w.create(), w.create()
    with pytest.raises(HTTPError) as busy:
        w.create()
    assert busy.value.code == 503 and busy.value.headers[b"retry-after"]


def test_the_preconditions_of_the_creation_are_checked_at_the_install(tmp_path: Any) -> None:
    w = World(tmp_path)
    state = w.create(preconditions=WritePreconditions(if_none_match="*"))
    state = w.append(state, b"mine").state
    (w.files / "a.bin").write_bytes(b"someone else's, meanwhile")
    failure = w.append(state, complete=True)
    assert failure.value.code == 412
    assert (w.files / "a.bin").read_bytes() == b"someone else's, meanwhile"
    assert not [n for n in os.listdir(w.files) if n.startswith(".")]  # no temporary file left


def test_a_slow_disk_pauses_the_body(tmp_path: Any) -> None:
    w = World(tmp_path, high_water=64 * 1024)
    state = w.create()
    flow = Flow()
    w.jobs.hold = True
    append = w.uploads.append(state, flow, offset=0, complete=False, content_length=None)
    for _ in range(8):
        append.write(b"x" * 32 * 1024)
    assert flow.paused == 1
    w.jobs.run_all()
    assert flow.paused == 0
    append.body_done()
    assert outcome(append.done).state.offset == 8 * 32 * 1024


def test_a_file_feed_paces_the_sink_and_removes_the_file(tmp_path: Any) -> None:
    jobs = Jobs()
    path = tmp_path / "data"
    path.write_bytes(b"0123456789" * 10)

    class Sink:
        def __init__(self) -> None:
            from twisted.internet.defer import Deferred

            self.done: Any = Deferred()
            self.got = b""
            self.finished = False

        def write(self, data: bytes) -> None:
            self.got += data
            if len(self.got) == 30:
                feed.pause_body()

        def finish(self) -> None:
            self.finished = True
            self.done.callback(Installed("etag", 100, 0, True))

        def abort(self) -> None:
            self.done.errback(Failure(UploadAborted()))

    feed = FileFeed(str(path), jobs, chunk=10)
    sink = Sink()
    done = feed.start(sink)
    assert sink.got == b"0123456789" * 3 and not done.called  # paused
    feed.resume_body()
    assert sink.finished and sink.got == b"0123456789" * 10
    assert outcome(done).size == 100 and not path.exists()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_disk_that_fails_an_append_keeps_the_durable_offset_and_releases_the_file(tmp_path: Any) -> None:
    import errno

    w = World(tmp_path)
    state = w.append(w.create(), b"kept").state
    before = open_fds()
    w.jobs.fail["_write_all"] = OSError(errno.ENOSPC, "No space left on device")
    append = w.uploads.append(state, Flow(), offset=4, complete=False, content_length=None)
    append.write(b"x" * 300_000)  # a job's worth: written, and failing
    failure = outcome(append.done)
    assert failure.value.code == 507
    assert open_fds() == before  # the data file's descriptor (and its lock) let go
    del w.jobs.fail["_write_all"]
    assert w.uploads.find(state.id).offset == 4
    assert w.append(w.uploads.find(state.id), b"!", complete=True).installed.size == 5


def test_a_cut_append_releases_the_file(tmp_path: Any) -> None:
    w = World(tmp_path)
    state = w.create()
    before = open_fds()
    w.append(state, b"a" * 100_000, cut=True)
    assert open_fds() == before


def test_the_sweep_spares_an_upload_another_process_is_appending_to(tmp_path: Any) -> None:
    import fcntl

    w = World(tmp_path, expiry=3600)
    state = w.create("held.bin")
    held = os.open(w.data_path(state), os.O_WRONLY)  # as another worker's append holds it
    fcntl.flock(held, fcntl.LOCK_EX)
    try:
        w.clock.advance(3601)
        assert result_of(w.uploads.sweep()) == 0 and os.path.exists(w.data_path(state))
    finally:
        os.close(held)
    assert result_of(w.uploads.sweep()) == 1 and not os.path.exists(w.data_path(state))
