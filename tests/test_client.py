"""
C{streamsvc-client get} (issue 15, first part): the resume decisions as pure
functions, and the download against an in-memory server (treq's
L{StubTreq}) that honours Range and If-Range.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import pytest_twisted
from treq.testing import StubTreq
from twisted.web.resource import Resource

from streamsvc.client.get import ClientError, download
from streamsvc.client.resume import Validator, parse_content_range, plan_answer, resume_headers
from streamsvc.ranges import etag_matches

BODY = bytes(range(256)) * 400  # 102400 bytes


class RangeServer(Resource):
    """A file with a strong ETag that honours Range (one, open-ended) and If-Range."""

    isLeaf = True

    def __init__(self, body: bytes = BODY, etag: str = '"v1"', ranges: bool = True) -> None:
        super().__init__()
        self.body, self.etag, self.ranges = body, etag, ranges
        self.requests: list[dict[str, str | None]] = []

    def render_GET(self, request: Any) -> bytes:
        ask = request.getHeader(b"range")
        if_range = request.getHeader(b"if-range")
        self.requests.append({"range": ask and ask.decode(), "if-range": if_range and if_range.decode()})
        request.setHeader(b"etag", self.etag.encode())
        if request.postpath != [b"file"]:
            request.setResponseCode(404)
            return b"no"
        fresh = if_range is None or etag_matches(if_range.decode(), self.etag, weak_comparison=False)
        if self.ranges and ask and ask.startswith(b"bytes=") and fresh:
            start = int(ask[6:].rstrip(b"-"))
            if start >= len(self.body):
                request.setResponseCode(416)
                request.setHeader(b"content-range", b"bytes */%d" % len(self.body))
                return b""
            request.setResponseCode(206)
            request.setHeader(b"content-range", b"bytes %d-%d/%d" % (start, len(self.body) - 1, len(self.body)))
            return self.body[start:]
        return self.body


def run(stub: StubTreq, coro: Any) -> Any:
    from twisted.internet.defer import ensureDeferred

    d = ensureDeferred(coro)
    stub.flush()
    box: list = []
    d.addBoth(box.append)
    assert box, "did not finish"
    if hasattr(box[0], "raiseException"):
        box[0].raiseException()
    return box[0]


# --- pure --------------------------------------------------------------------------


def test_resume_headers() -> None:
    assert resume_headers(0, Validator('"a"')) == {}
    assert resume_headers(10, Validator('"a"')) == {"Range": "bytes=10-", "If-Range": '"a"'}
    assert resume_headers(10, Validator('W/"a"', "Tue, 01 Dec 2026 00:00:00 GMT"))["If-Range"].endswith("GMT")
    assert resume_headers(10, None) == {}  # nothing to validate against: start over
    assert resume_headers(10, None, forced=True) == {"Range": "bytes=10-"}  # -c, as curl -C -


def test_validator_file_round_trip_and_garbage() -> None:
    v = Validator('"x"', None)
    assert Validator.loads(v.dumps()) == v
    assert Validator.loads("{not json") is None and Validator.loads("[]") is None
    assert Validator.loads('{"etag": "W/\\"x\\""}') is None  # weak and no date: useless for If-Range


def test_plan_answer() -> None:
    assert plan_answer(206, 10, "bytes 10-99/100", "90", True) == ("append", 10, 100, "")
    assert plan_answer(206, 10, "bytes 0-99/100", "100", True).action == "fail"
    assert plan_answer(200, 10, None, "100", True) == ("restart", 0, 100, "")
    assert plan_answer(416, 100, "bytes */100", "0", True).action == "complete"
    assert plan_answer(416, 150, "bytes */100", "0", True).action == "restart"
    assert plan_answer(404, 0, None, "2", False).action == "fail"
    assert parse_content_range("bytes 1-2/*") == (1, 2, None) and parse_content_range("junk") is None


# --- download ----------------------------------------------------------------------


def test_fresh_download(tmp_path: Any) -> None:
    server = RangeServer()
    stub = StubTreq(server)
    out = str(tmp_path / "f")
    assert run(stub, download(stub, "http://x/file", out)) == len(BODY)
    assert open(out, "rb").read() == BODY
    assert not os.path.exists(out + ".part") and not os.path.exists(out + ".part.meta")


def test_resume_from_a_part_with_its_validator(tmp_path: Any) -> None:
    server = RangeServer()
    stub = StubTreq(server)
    out = str(tmp_path / "f")
    open(out + ".part", "wb").write(BODY[:1000])
    open(out + ".part.meta", "w").write(Validator('"v1"').dumps())
    run(stub, download(stub, "http://x/file", out))
    assert server.requests == [{"range": "bytes=1000-", "if-range": '"v1"'}]
    assert open(out, "rb").read() == BODY


def test_changed_file_starts_over(tmp_path: Any) -> None:
    server = RangeServer(body=b"new" * 1000, etag='"v2"')
    stub = StubTreq(server)
    out = str(tmp_path / "f")
    open(out + ".part", "wb").write(BODY[:1000])
    open(out + ".part.meta", "w").write(Validator('"v1"').dumps())
    run(stub, download(stub, "http://x/file", out))
    assert open(out, "rb").read() == b"new" * 1000  # never BODY[:1000] spliced with the new file


def test_server_without_ranges_gets_a_full_download(tmp_path: Any) -> None:
    server = RangeServer(ranges=False)
    stub = StubTreq(server)
    out = str(tmp_path / "f")
    open(out + ".part", "wb").write(b"garbage" * 10)
    open(out + ".part.meta", "w").write(Validator('"v1"').dumps())
    run(stub, download(stub, "http://x/file", out))
    assert open(out, "rb").read() == BODY


def test_continue_an_existing_file(tmp_path: Any) -> None:
    server = RangeServer()
    stub = StubTreq(server)
    out = str(tmp_path / "f")
    open(out, "wb").write(BODY[:5000])
    run(stub, download(stub, "http://x/file", out, resume=True))
    assert server.requests == [{"range": "bytes=5000-", "if-range": None}]
    assert open(out, "rb").read() == BODY


def test_already_complete_part(tmp_path: Any) -> None:
    server = RangeServer()
    stub = StubTreq(server)
    out = str(tmp_path / "f")
    open(out + ".part", "wb").write(BODY)
    open(out + ".part.meta", "w").write(Validator('"v1"').dumps())
    assert run(stub, download(stub, "http://x/file", out)) == len(BODY)
    assert open(out, "rb").read() == BODY


def test_404_is_one_line_and_leaves_nothing(tmp_path: Any) -> None:
    stub = StubTreq(RangeServer())
    out = str(tmp_path / "f")
    with pytest.raises(ClientError, match=r"^404 Not Found: /missing$"):
        run(stub, download(stub, "http://x/missing", out))
    assert os.listdir(tmp_path) == []


def test_short_body_keeps_the_part(tmp_path: Any) -> None:
    class Liar(RangeServer):
        def render_GET(self, request: Any) -> bytes:
            request.setHeader(b"content-length", b"999999")
            request.write(b"x" * 10)
            request.finish()
            from twisted.web.server import NOT_DONE_YET

            return NOT_DONE_YET

    stub = StubTreq(Liar())
    out = str(tmp_path / "f")
    with pytest.raises(Exception):
        run(stub, download(stub, "http://x/file", out))
    assert not os.path.exists(out)


def test_cli_usage_errors() -> None:
    from streamsvc.client.cli import ClientError as CE, headers_of, parse_args

    args = parse_args(["get", "http://x/f", "-H", "X-A: 1", "--token", "t"])
    assert headers_of(args) == {"X-A": "1", "Authorization": "Bearer t"}
    with pytest.raises(CE, match="Name: value"):
        headers_of(parse_args(["get", "http://x/f", "-H", "nocolon"]))
    for command in (["get", "https://x/f"], ["put", "f", "https://x/f"], ["tail", "https://x/e"]):
        args = parse_args([*command, "-k", "--cacert", "ca.pem", "-H", "A: b"])
        assert args.insecure and args.cacert == "ca.pem" and args.header == ["A: b"]


@pytest_twisted.ensureDeferred
async def test_get_against_streamsvc_over_loopback(tmp_path: Any, monkeypatch: Any) -> None:
    import treq

    import streamsvc.client.body as body_module
    from test_integration import Server

    applied: list[bool] = []
    real_set = body_module.set_read_size
    monkeypatch.setattr(body_module, "set_read_size", lambda t, n: applied.append(real_set(t, n)) or applied[-1])

    server = await Server(tmp_path / "srv").start()
    try:
        (server.files / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024))
        out = str(tmp_path / "big.bin")
        # a partial download, as an interrupted one leaves it
        data = (server.files / "big.bin").read_bytes()
        response = await treq.get(server.url + "/files/big.bin")
        etag = response.headers.getRawHeaders(b"etag")[0].decode()
        await response.content()
        open(out + ".part", "wb").write(data[:1_000_000])
        open(out + ".part.meta", "w").write(Validator(etag).dumps())
        assert await download(treq, server.url + "/files/big.bin", out) == len(data)
        assert open(out, "rb").read() == data
        assert applied and all(applied)  # the real TCP transport under treq's proxy took the read size
        with pytest.raises(ClientError, match="^404 Not Found: /files/nope$"):
            await download(treq, server.url + "/files/nope", str(tmp_path / "nope"))
    finally:
        await server.stop()


def test_console_script_one_line_errors(tmp_path: Any) -> None:
    """The installed command: exit 1 with one line, no traceback, for a refused connection."""
    import shutil
    import socket
    import subprocess
    import sys

    script = shutil.which("streamsvc-client", path=os.path.dirname(sys.executable))
    assert script is not None, "streamsvc-client is not installed next to this Python"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    out = subprocess.run([script, "get", f"http://127.0.0.1:{port}/x", "-o", str(tmp_path / "x")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert out.stderr == f"streamsvc-client: cannot connect to 127.0.0.1:{port}: connection refused\n"
    assert "Traceback" not in out.stderr
    usage = subprocess.run([script, "get"], capture_output=True, text=True, timeout=60)
    assert usage.returncode == 2 and "usage" in usage.stderr


@pytest.mark.parametrize(
    "url, shown",
    [("http://h.example/x", "h.example:80"), ("https://h.example/x", "h.example:443"),
     ("http://10.0.0.1:8080/", "10.0.0.1:8080"), ("https://[::1]:9/", "[::1]:9")],
)
def test_connect_errors_name_the_address(url: str, shown: str) -> None:
    from twisted.internet.error import ConnectionRefusedError, DNSLookupError

    from streamsvc.client.errors import error_line

    assert error_line(ConnectionRefusedError(111, "x"), url) == f"cannot connect to {shown}: connection refused"
    assert error_line(DNSLookupError("h.example"), url) == f"cannot connect to {shown}: the host name is not known"


def test_the_client_imports_nothing_of_the_server() -> None:
    """The client shares only the library (producers, stages, digests, lines, sizes), not the server's packages."""
    import subprocess
    import sys

    code = "import sys, streamsvc.client.cli; print(' '.join(m for m in sys.modules if m.startswith('streamsvc')))"
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split())
    assert "streamsvc.client.cli" in loaded
    server = {m for m in loaded if m.split(".")[1:2] and m.split(".")[1] in {"tasks", "files", "config", "app", "tap", "limits", "body", "workers", "ui", "auth"}}
    assert server == set()


# --- reading the body: rate and stall -----------------------------------------------


class FakeBodyTransport:
    def __init__(self) -> None:
        self.paused = False
        self.pauses = 0
        self.stopped = False

    def pauseProducing(self) -> None:
        self.paused = True
        self.pauses += 1

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        self.stopped = True


class FakeResponse:
    def __init__(self) -> None:
        self.transport = FakeBodyTransport()
        self.protocol: Any = None

    def deliverBody(self, protocol: Any) -> None:
        self.protocol = protocol
        protocol.makeConnection(self.transport)


def test_rate_pauses_the_transport_and_holds_the_rate() -> None:
    from twisted.internet.task import Clock

    from streamsvc.client.body import read_body

    clock = Clock()
    response = FakeResponse()
    got: list[bytes] = []
    done = read_body(response, got.append, reactor=clock, rate=100_000)
    sent = 0
    while clock.seconds() < 10:
        if not response.transport.paused:
            response.protocol.dataReceived(b"x" * 16384)  # a fast server: whenever we read
            sent += 16384
        else:
            clock.advance(0.01)
    assert response.transport.pauses > 10
    assert abs(sent / clock.seconds() - 100_000) / 100_000 < 0.05  # within 5 % over 10 simulated s
    from twisted.web.client import ResponseDone
    from twisted.python.failure import Failure

    response.protocol.connectionLost(Failure(ResponseDone()))
    assert done.called and clock.getDelayedCalls() == []


def test_stall_timeout_gives_up_and_cancels_its_timers() -> None:
    from twisted.internet.task import Clock

    from streamsvc.client.body import BodyStalled, read_body

    clock = Clock()
    response = FakeResponse()
    done = read_body(response, lambda data: None, reactor=clock, stall=5)
    clock.advance(4)
    response.protocol.dataReceived(b"x")
    clock.advance(4)
    assert not done.called  # data moved the deadline
    clock.advance(1.5)
    failures: list = []
    done.addErrback(failures.append)
    assert failures and failures[0].check(BodyStalled) and response.transport.stopped
    assert clock.getDelayedCalls() == []


@pytest_twisted.ensureDeferred
async def test_rate_limited_get_takes_the_expected_time(tmp_path: Any) -> None:
    import time

    import treq

    from test_integration import Server

    server = await Server(tmp_path / "srv").start()
    try:
        (server.files / "two.bin").write_bytes(os.urandom(2 * 1024 * 1024))
        started = time.monotonic()
        await download(treq, server.url + "/files/two.bin", str(tmp_path / "two.bin"), rate=1024 * 1024)
        elapsed = time.monotonic() - started
        # 2 MiB at 1 MiB/s; the socket buffers let up to a few hundred KiB in early.
        assert 1.6 < elapsed < 3.0, elapsed
        assert open(tmp_path / "two.bin", "rb").read() == (server.files / "two.bin").read_bytes()
    finally:
        await server.stop()


def test_ctrl_c_leaves_a_resumable_part_and_exits_130(tmp_path: Any) -> None:
    import shutil
    import signal
    import subprocess
    import sys
    import time

    from test_tap import start_twistd

    (tmp_path / "data" / "files").mkdir(parents=True)
    # 16 MiB at 256 KiB/s: a minute's work, so a busy machine cannot let it end before the Ctrl-C.
    (tmp_path / "data" / "files" / "f.bin").write_bytes(os.urandom(16 * 1024 * 1024))
    proc, port = start_twistd(tmp_path, "--data-dir", str(tmp_path / "data"))
    script = shutil.which("streamsvc-client", path=os.path.dirname(sys.executable))
    out = tmp_path / "f.bin"
    try:
        client = subprocess.Popen([script, "get", f"http://127.0.0.1:{port}/files/f.bin", "-o", str(out),
                                   "--rate", "256k"], stderr=subprocess.PIPE, text=True,
                                  # A shell running us in the background (nohup, `&`) leaves SIGINT
                                  # ignored, and the client rightly keeps an ignored SIGINT ignored:
                                  # give it the terminal's default, as a user's Ctrl-C would meet.
                                  preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.monotonic() + 20
        while not (out.with_name("f.bin.part").exists() and out.with_name("f.bin.part").stat().st_size > 0):
            assert time.monotonic() < deadline and client.poll() is None
            time.sleep(0.05)  # waiting for a child process
        client.send_signal(signal.SIGINT)
        assert client.wait(timeout=20) == 130
        assert "f.bin.part kept" in client.stderr.read()
        part = out.with_name("f.bin.part")
        assert 0 < part.stat().st_size < 16 * 1024 * 1024 and not out.exists()
        assert out.with_name("f.bin.part.meta").exists()
        again = subprocess.run([script, "get", f"http://127.0.0.1:{port}/files/f.bin", "-o", str(out)],
                               capture_output=True, text=True, timeout=60)
        assert again.returncode == 0, again.stderr
        assert out.read_bytes() == (tmp_path / "data" / "files" / "f.bin").read_bytes()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_progress_bar_counts_from_the_offset(tmp_path: Any) -> None:
    import io
    import sys

    from streamsvc.client.cli import Progress

    stream = io.StringIO()
    real, sys.stderr = sys.stderr, stream
    try:
        with Progress(enabled=True) as progress:
            progress.start(1000, 400)
            progress.update(600)
            assert progress._bar.n == 1000 and progress._bar.total == 1000
    finally:
        sys.stderr = real
    with Progress(enabled=False) as quiet:
        quiet.start(10, 0)
        quiet.update(5)
        assert quiet._bar is None


# --- put -------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_put_round_trip_with_digest_and_a_refusal_that_sends_nothing(tmp_path: Any) -> None:
    import treq
    from twisted.internet import reactor

    from streamsvc.client.put import upload
    from streamsvc.config import AuthConfig
    from test_integration import Server

    server = await Server(tmp_path / "srv", auth=AuthConfig(tokens=("puttoken",))).start()
    try:
        src = tmp_path / "up.bin"
        src.write_bytes(os.urandom(3 * 1024 * 1024 + 7))
        auth = {"Authorization": "Bearer puttoken"}
        # streamsvc answers 100 Continue: the body starts then, not after the hold
        started = reactor.seconds()
        code, body, producer = await upload(treq, str(src), server.url + "/files/a/up.bin", headers=auth,
                                            if_none_match=True, hold=30)
        assert code == 201 and producer.started
        assert reactor.seconds() - started < 15, "the body waited for the hold, not for the 100"
        assert (server.files / "a" / "up.bin").read_bytes() == src.read_bytes()
        # (the server checks the Content-Digest we sent: a wrong one would have been a 400)
        # If-None-Match: * again: the file exists, 412 at the headers, before any body byte
        with pytest.raises(ClientError, match="^412"):
            await upload(treq, str(src), server.url + "/files/a/up.bin", headers=auth, if_none_match=True)
        # a wrong token: 401 at the headers; the body was never started
        refused: list = []
        import streamsvc.client.put as put_module

        real = put_module.HeldFileProducer

        class Recording(real):  # type: ignore[misc, valid-type]
            def __init__(self, *a: Any, **kw: Any) -> None:
                super().__init__(*a, **kw)
                refused.append(self)

        put_module.HeldFileProducer = Recording  # type: ignore[misc]
        try:
            with pytest.raises(ClientError, match="^401"):
                await upload(treq, str(src), server.url + "/files/a/other.bin",
                             headers={"Authorization": "Bearer wrong"})
        finally:
            put_module.HeldFileProducer = real  # type: ignore[misc]
        assert refused and not refused[0].started and refused[0]._file.closed
        assert not (server.files / "a" / "other.bin").exists()
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_retries_resume_after_a_dropped_connection(tmp_path: Any) -> None:
    import treq

    from streamsvc.client.get import download_with_retries
    from test_integration import Server

    data = os.urandom(1024 * 1024)

    class Flaky(RangeServer):
        """Drops the connection halfway through the first answer; honours Range after."""

        def __init__(self) -> None:
            super().__init__(body=data)
            self.dropped = False

        def render_GET(self, request: Any) -> Any:
            if not self.dropped:
                self.dropped = True
                request.setHeader(b"etag", self.etag.encode())
                request.setHeader(b"content-length", b"%d" % len(data))
                request.write(data[: len(data) // 2])
                from twisted.internet import reactor

                # once that half is out (an abort drops what is still buffered)
                reactor.callLater(0.3, request.channel.transport.abortConnection)
                from twisted.web.server import NOT_DONE_YET

                return NOT_DONE_YET
            return super().render_GET(request)

    flaky = Flaky()
    server = await Server(tmp_path / "srv", extra={b"flaky": flaky}).start()
    try:
        out = str(tmp_path / "f")
        await download_with_retries(treq, server.url + "/flaky/file", out, retries=2, backoff=0.05)
        assert open(out, "rb").read() == data
        ranged = [r for r in flaky.requests if r["range"]]
        assert ranged and ranged[0]["if-range"] == '"v1"'  # the second attempt resumed
        # without --retries: one line saying what is kept and how to go on
        flaky.dropped = False
        out = str(tmp_path / "g")
        with pytest.raises(ClientError) as cut:
            await download_with_retries(treq, server.url + "/flaky/file", out, retries=0)
        kept = os.path.getsize(out + ".part")
        assert 0 < kept < len(data)
        assert str(cut.value) == (f"connection lost at byte {kept}: {out}.part kept, "
                                  "run again to resume (or use --retries N)")
    finally:
        await server.stop()


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmHWM from Linux's /proc")
def test_get_of_256_mib_in_flat_memory(tmp_path: Any) -> None:
    """The installed client downloads 256 MiB with its peak RSS far below the body's size."""
    import subprocess
    import sys

    from test_tap import start_twistd

    files = tmp_path / "data" / "files"
    files.mkdir(parents=True)
    size = 256 * 1024 * 1024
    with open(files / "big.bin", "wb") as f:
        f.truncate(size)  # sparse: the disk is not what this measures
    proc, port = start_twistd(tmp_path, "--data-dir", str(tmp_path / "data"))
    wrapper = (
        "import runpy, sys\n"
        "sys.argv = ['streamsvc-client'] + sys.argv[1:]\n"
        "try:\n"
        "    runpy.run_module('streamsvc.client', run_name='__main__')\n"
        "finally:\n"
        "    hwm = next(l for l in open('/proc/self/status') if l.startswith('VmHWM:'))\n"
        "    print('maxrss', hwm.split()[1], file=sys.stderr)\n"
    )
    try:
        out = subprocess.run(
            [sys.executable, "-c", wrapper, "get", f"http://127.0.0.1:{port}/files/big.bin",
             "-o", str(tmp_path / "big.bin"), "-q"],
            capture_output=True, text=True, timeout=120, cwd=tmp_path,
        )
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert out.returncode == 0, out.stderr
    assert os.path.getsize(tmp_path / "big.bin") == size
    peak_kib = int(out.stderr.rsplit("maxrss", 1)[1].split()[0])
    # VmHWM of the client's own address space, not getrusage's ru_maxrss:
    # Linux carries the parent's RSS across the vfork + exec that subprocess
    # uses (exec_mmap keeps the old mm's high-water mark), so ru_maxrss
    # reported pytest's 70-105 MiB, not the client's. The client alone is
    # ~50 MiB (the interpreter, Twisted, treq) for any body size.
    assert peak_kib < 64 * 1024, f"peak RSS {peak_kib} KiB for a {size >> 20} MiB body"
    print(f"client peak RSS {peak_kib / 1024:.1f} MiB")


def test_continue_watch_releases_only_its_own_held_body(tmp_path: Any) -> None:
    """A dropped 100 for our request starts the body; other events and other requests do not."""
    from types import SimpleNamespace

    from twisted.internet.task import Clock
    from twisted.logger import Logger
    from twisted.internet.testing import StringTransport

    from streamsvc.client.put import ContinueWatch, HeldFileProducer

    (tmp_path / "f").write_bytes(b"body")
    clock = Clock()
    ours = HeldFileProducer(str(tmp_path / "f"), reactor=clock, hold=1.0)
    theirs = HeldFileProducer(str(tmp_path / "f"), reactor=clock, hold=1.0)
    for p in (ours, theirs):
        p.startProducing(StringTransport())
    source = SimpleNamespace(request=SimpleNamespace(bodyProducer=theirs))
    with ContinueWatch(ours):
        Logger(source=source).info("Ignoring unexpected {code} response", code=100)
        mine = SimpleNamespace(request=SimpleNamespace(bodyProducer=ours))
        Logger(source=mine).info("something else {code}", code=100)
        Logger(source=mine).info("Ignoring unexpected {code} response", code=103)
        assert not ours.started and not theirs.started
        Logger(source=mine).info("Ignoring unexpected {code} response", code=100)
        assert ours.started and not theirs.started
    # outside the watch, the other one starts when its hold ends
    clock.advance(1.0)
    assert theirs.started
    for p in (ours, theirs):
        p.stopProducing()


def test_set_read_size_through_the_client_body_proxy() -> None:
    """The body protocol's transport is a proxy; the TCP connection under it reads bigger chunks."""
    from types import SimpleNamespace

    from streamsvc._transport import set_read_size

    tcp = SimpleNamespace(bufferSize=65536, doRead=lambda: None)
    assert set_read_size(SimpleNamespace(_producer=tcp), 256 * 1024) and tcp.bufferSize == 256 * 1024
    assert set_read_size(tcp, 1024) and tcp.bufferSize == 1024
    assert not set_read_size(SimpleNamespace(), 1024)  # a fake, or Twisted changed: left alone


# --- get to stdout ---------------------------------------------------------------------


def test_get_to_stdout_and_into_a_closed_pipe(tmp_path: Any) -> None:
    """
    C{-o -} (and no C{-o} with stdout a pipe) streams the body to stdout;
    a reader that closes the pipe early (C{| head -c 100}) ends the client
    quietly, status 0, no traceback, no file left.
    """
    import shutil
    import subprocess
    import sys

    from test_tap import start_twistd

    script = shutil.which("streamsvc-client", path=os.path.dirname(sys.executable))
    assert script is not None
    files = tmp_path / "data" / "files"
    files.mkdir(parents=True)
    data = os.urandom(3 * 1024 * 1024)
    (files / "f.bin").write_bytes(data)
    proc, port = start_twistd(tmp_path, "--data-dir", str(tmp_path / "data"))
    url = f"http://127.0.0.1:{port}/files/f.bin"
    work = tmp_path / "cwd"
    work.mkdir()
    try:
        for argv in ([script, "get", url, "-o", "-"], [script, "get", url]):
            out = subprocess.run(argv, capture_output=True, timeout=60, cwd=work)
            assert out.returncode == 0, out.stderr
            assert out.stdout == data
            assert out.stderr == b""
        assert list(work.iterdir()) == []  # nothing written to disk
        head = subprocess.Popen([script, "get", url, "-o", "-"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                cwd=work)
        assert head.stdout is not None and head.stderr is not None
        assert head.stdout.read(100) == data[:100]
        head.stdout.close()
        assert head.wait(timeout=60) in (0, 141)
        assert b"Traceback" not in head.stderr.read()
        missing = subprocess.run([script, "get", url.replace("f.bin", "nope"), "-o", "-"],
                                 capture_output=True, timeout=60, cwd=work)
        assert missing.returncode == 1 and missing.stdout == b""
        assert missing.stderr == b"streamsvc-client: 404 Not Found: /files/nope\n"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
