"""
C{python -m streamsvc.demo}: what 1,000 tasks cost a running streamsvc.

Starts C{twistd streamsvc} as a child process on a free local port, with a
temporary data directory and a random Bearer token, and then, as an HTTP
client (treq): (1) reads the server's resident memory (C{VmRSS}); (2) creates
1,000 tasks with C{POST /tasks}, 20 in flight at a time; (3) listens to
C{GET /tasks/events} (Server-Sent Events), printing each event as it arrives,
while it completes a few tasks (C{PATCH}) and deletes one (C{DELETE});
(4) streams C{/tasks/export.csv} and C{/tasks/stream.ndjson}, counting rows as
the bytes arrive, never holding a whole body, and checks 999 tasks are left;
(5) reads the server's memory again. The tasks live in SQLite on disk and
exports go out a batch at a time, so the difference stays small. (treq asks
for gzip, which the server applies to exports; the sizes shown are unzipped.)

The server is stopped and the temporary directory removed on every exit,
errors and Ctrl-C included. Options: C{--tasks N}, C{--port P}, C{--keep DIR}
(write both exports into DIR). Exit status 0, or 1 with a one-line error.
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import treq
from treq.client import HTTPClient
from twisted.internet import defer, task
from twisted.web.client import Agent, HTTPConnectionPool

from streamsvc.lines import Line, LineSplitter
from streamsvc.tasks.encoders import CSVRecords
from streamsvc.tasks.model import COLUMNS

PARALLEL = 20  # POSTs in flight at once
PATCHED = 3  # tasks completed while the event stream is watched
TIMEOUT = 10.0  # seconds for a request, for the events, for the server to stop
#: The longest line or record a count accepts (what the import accepts).
MAX_RECORD = 1024 * 1024
STATUSES = ("pending", "in-progress", "completed")


class DemoError(Exception):
    """What went wrong, as the one line the demo exits with."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """C{twistd streamsvc} as a child, in a session of its own (Ctrl-C is ours to pass on)."""

    def __init__(self, tmp: Path, token: str) -> None:
        self.tmp, self.token, self.port = tmp, token, 0
        self.proc: subprocess.Popen[bytes] | None = None
        (tmp / "tap.conf").write_text(f"[server]\nshutdown_timeout = 5\n[auth]\ntokens = {token}\n")

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def exit_status(self) -> int | None:
        """None while it runs (or before it starts)."""
        return None if self.proc is None else self.proc.poll()

    def start(self, port: int) -> None:
        self.port, twistd = port, Path(sys.executable).with_name("twistd")
        command = [str(twistd)] if twistd.exists() else [sys.executable, "-m", "twisted"]
        command += ["-n", "--pidfile=", f"--logfile={self.tmp / 'twistd.log'}", "streamsvc",
                    "--config", str(self.tmp / "tap.conf"), "--data-dir", str(self.tmp / "data"),
                    "--listen", f"tcp:{port}:interface=127.0.0.1"]
        with open(self.tmp / "twistd.out", "ab") as out:
            self.proc = subprocess.Popen(command, cwd=self.tmp, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def last_words(self) -> str:
        """The last line the server wrote (its one-line start-up error, say)."""
        lines = (self.tmp / "twistd.out").read_text(errors="replace").strip().splitlines()
        return lines[-1] if lines else "no output"

    def rss_kib(self) -> int | None:
        """Resident memory in KiB, or None where there is no /proc."""
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return None
        return next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), None)

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after 10 s; the exit status (None if it never started)."""
        if self.proc is None or self.proc.poll() is not None:
            return self.exit_status()
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


class Api:
    """The server's HTTP API, with its Bearer token on every request."""

    def __init__(self, http: HTTPClient, server: Server) -> None:
        self.http, self.server = http, server

    def request(self, method: str, path: str, **kwargs: Any) -> defer.Deferred[Any]:
        headers = {"Authorization": f"Bearer {self.server.token}"}
        return self.http.request(method, self.server.base + path, headers=headers, timeout=TIMEOUT, **kwargs)

    async def call(self, method: str, path: str, expect: int, body: Any = None) -> Any:
        response = await self.request(method, path, json=body)
        data = await response.content()
        if response.code != expect:
            raise DemoError(f"{method} {path}: expected {expect}, got {response.code} {data[:200]!r}")
        return json.loads(data) if data else None


async def wait_ready(reactor: Any, api: Api, seconds: float = 30.0) -> None:
    """Poll C{/healthz} until it answers 200, the server exits, or C{seconds} pass."""
    deadline = reactor.seconds() + seconds
    while api.server.exit_status() is None:
        try:
            response = await api.http.get(api.server.base + "/healthz", timeout=1)
            await response.content()
            if response.code == 200:
                return
        except Exception:  # refused: not listening yet
            pass
        if reactor.seconds() > deadline:
            raise DemoError(f"the server did not answer /healthz within {seconds:.0f} s")
        await task.deferLater(reactor, 0.1)  # polling a child process, not waiting on logic
    raise DemoError(f"the server exited with status {api.server.exit_status()}: {api.server.last_words()}")


async def start_server(reactor: Any, api: Api, port: int | None) -> None:
    """On C{port}, or on a free port with one retry (another process may take it first)."""
    for attempt in (1, 2):
        api.server.start(port or free_port())
        try:
            return await wait_ready(reactor, api)
        except DemoError:
            if port or attempt == 2 or api.server.exit_status() is None:
                raise


def new_task(n: int) -> dict[str, Any]:
    # Quotes and a comma in every title, a line break in every 10th: the CSV quotes them.
    title = f'Task {n}: "demo", part {n % 7}' + ("\nwith a second line" if n % 10 == 0 else "")
    return {"title": title, "priority": n % 11, "status": STATUSES[n % len(STATUSES)]}


async def create_tasks(api: Api, count: int) -> list[int]:
    """POST C{count} tasks, C{PARALLEL} at a time; their ids."""
    numbers, ids = iter(range(1, count + 1)), []

    async def worker() -> None:
        for n in numbers:  # shared: each worker takes the next number
            ids.append((await api.call("POST", "/tasks", 201, new_task(n)))["id"])

    try:
        await defer.gatherResults([defer.ensureDeferred(worker()) for _ in range(min(PARALLEL, count))],
                                  consumeErrors=True)
    except defer.FirstError as error:
        error.subFailure.raiseException()
    return sorted(ids)


class Enough(Exception):
    """Raised by the collector once every awaited event is in: treq then closes the stream."""


class EventStream:
    """Server-Sent Events parsed and printed as they arrive (the server ends lines with LF)."""

    def __init__(self, awaited: set[tuple[str, int]]) -> None:
        self.awaited, self.seen, self._buffer = awaited, [], b""

    def feed(self, data: bytes) -> None:
        *frames, self._buffer = (self._buffer + data).split(b"\n\n")
        for frame in frames:
            self._frame(frame.decode("utf-8"))
        if not self.awaited:
            raise Enough()

    def _frame(self, frame: str) -> None:
        fields = {}  # "name: value" lines; ": heartbeat" is a comment
        for line in frame.split("\n"):
            if not line.startswith(":"):
                name, _, value = line.partition(":")
                fields[name] = value.strip()
        if "event" not in fields:
            return
        kind, event_id, data = fields["event"], fields.get("id", "-"), json.loads(fields.get("data", "{}"))
        self.seen.append(kind)
        self.awaited.discard((kind, data.get("id")))
        print(f"     event: {kind:<8} id: {event_id:<5} task {data.get('id')} status={data.get('status')}")


async def watch_events(reactor: Any, api: Api, ids: list[int]) -> EventStream:
    """Subscribe, PATCH a few tasks and DELETE one, and wait for their events."""
    patched, deleted = ids[:PATCHED], ids[-1]
    response = await api.request("GET", "/tasks/events", unbuffered=True)
    kind = (response.headers.getRawHeaders("content-type") or [""])[0]
    if response.code != 200 or not kind.startswith("text/event-stream"):
        raise DemoError(f"GET /tasks/events: {response.code} {kind!r}")
    print(f"   subscribed to /tasks/events ({kind}); PATCH {len(patched)}, DELETE 1:")
    stream = EventStream({("updated", i) for i in patched} | {("deleted", deleted)})
    done = treq.collect(response, stream.feed)
    try:
        for task_id in patched:
            await api.call("PATCH", f"/tasks/{task_id}", 200, {"status": "completed"})
        await api.call("DELETE", f"/tasks/{deleted}", 204)
    except BaseException:
        done.addErrback(lambda failure: None)  # the stream goes with its connection
        raise
    try:
        await done.addTimeout(TIMEOUT, reactor)
        raise DemoError("the event stream ended early")
    except Enough:
        return stream
    except defer.TimeoutError:
        raise DemoError(f"no events for {sorted(stream.awaited)} within {TIMEOUT:.0f} s") from None


class Rows:
    """
    Counts the records of an export as its bytes arrive, with the same
    splitters the server's import uses (L{streamsvc.tasks.encoders}): lines,
    and for CSV records whose quoted fields may hold line breaks. The CSV
    header row must come first and is not counted.
    """

    def __init__(self, name: str, *, csv: bool = False) -> None:
        self.name, self.rows = name, 0
        self._lines = LineSplitter(MAX_RECORD, count_quotes=csv)
        self._records = CSVRecords(MAX_RECORD) if csv else None
        self._header = list(COLUMNS) if csv else None

    def feed(self, data: bytes) -> None:
        for line in self._lines.feed(data):
            self._take(line)

    def _take(self, line: Line) -> None:
        if self._records is None:
            if line.data is None:
                raise DemoError(f"{self.name}: line {line.number} too long")
            if line.data.strip():  # NDJSON readers skip blank lines
                json.loads(line.data)
                self.rows += 1
            return
        record = self._records.add(line)
        if record is None:
            return
        if record.cells is None:
            raise DemoError(f"{self.name}: line {record.number}: {record.error}")
        if self._header is not None:
            if record.cells != self._header:
                raise DemoError(f"{self.name}: unexpected header {record.cells}")
            self._header = None
        elif len(record.cells) != len(COLUMNS):
            raise DemoError(f"{self.name}: a record with {len(record.cells)} fields: {record.cells}")
        else:
            self.rows += 1

    def close(self) -> None:
        for line in self._lines.end():
            self._take(line)
        left = self._records.end() if self._records is not None else None
        if left is not None or self._header is not None:
            raise DemoError(f"{self.name}: the body ended inside a record")


async def download(api: Api, rows: Rows, keep: Path | None) -> int:
    """GET /tasks/<rows.name>, fed to C{rows} (and to a file in C{keep}) as it arrives; its size."""
    name = rows.name
    response = await api.request("GET", f"/tasks/{name}", unbuffered=True)
    if response.code != 200:
        raise DemoError(f"GET /tasks/{name}: {response.code} {(await response.content())[:200]!r}")
    size = 0
    with open(keep / name, "wb") if keep else nullcontext() as out:

        def collect(data: bytes) -> None:
            nonlocal size
            size += len(data)
            rows.feed(data)
            if out is not None:
                out.write(data)

        await treq.collect(response, collect)
    rows.close()
    return size


def mib(kib: int | None) -> str:
    return "n/a (no /proc)" if kib is None else f"{kib / 1024:.1f} MiB"


async def demo(reactor: Any, api: Api, args: argparse.Namespace) -> None:
    await start_server(reactor, api, args.port)
    server = api.server
    print(f"streamsvc demo: server pid {server.pid} at {server.base}, data in {server.tmp}")
    before = server.rss_kib()
    print(f"1. server RSS before: {mib(before)}")

    started = reactor.seconds()
    ids = await create_tasks(api, args.tasks)
    took = reactor.seconds() - started
    print(f"2. created {len(ids)} tasks in {took:.2f} s ({len(ids) / took:.0f}/s, {PARALLEL} in parallel)")

    print("3. live events:")
    seen = (await watch_events(reactor, api, ids)).seen
    print(f"   saw {len(seen)} events: {seen.count('updated')} updated, {seen.count('deleted')} deleted")

    print("4. exports:")
    for rows in (Rows("export.csv", csv=True), Rows("stream.ndjson")):
        started = reactor.seconds()
        size = await download(api, rows, args.keep)
        print(f"   {rows.name}: {rows.rows} rows, {size} bytes (gunzipped) in {reactor.seconds() - started:.2f} s")
        if rows.rows != len(ids) - 1:
            raise DemoError(f"{rows.name} has {rows.rows} rows, expected {len(ids) - 1}")
    print(f"   {len(ids) - 1} tasks remain, as expected" + (f"; exports kept in {args.keep}" if args.keep else ""))

    after = server.rss_kib()
    delta = "" if before is None or after is None else f" ({(after - before) / 1024:+.1f} MiB)"
    print(f"5. server RSS after: {mib(after)}{delta}")


async def run(reactor: Any, args: argparse.Namespace, server: Server, outcome: dict[str, int]) -> None:
    pool = HTTPConnectionPool(reactor)
    pool.maxPersistentPerHost = PARALLEL
    stopping: list[bool] = []  # Ctrl-C stops the reactor, and requests fail on the way out
    reactor.addSystemEventTrigger("before", "shutdown", stopping.append, True)
    try:
        await demo(reactor, Api(HTTPClient(Agent(reactor, pool=pool)), server), args)
        outcome["code"] = 0
    except Exception as error:
        if not stopping:  # else main says "interrupted"
            if not isinstance(error, DemoError) and server.exit_status() is not None:
                error = DemoError(f"the server died (exit status {server.exit_status()}): {error!r}")
            print(f"error: {error if isinstance(error, DemoError) else repr(error)}", file=sys.stderr)
            outcome["code"] = 1
    finally:
        await pool.closeCachedConnections()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m streamsvc.demo", description=__doc__.split("\n")[1])
    parser.add_argument("--tasks", type=int, default=1000, metavar="N", help="tasks to create (1000)")
    parser.add_argument("--keep", type=Path, metavar="DIR", help="write export.csv and stream.ndjson into DIR")
    parser.add_argument("--port", type=int, metavar="P", help="the server's port (default: a free one)")
    args = parser.parse_args(argv)
    if args.tasks < 1:
        parser.error("--tasks must be at least 1")
    try:
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        parser.error(f"--keep: {error}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # a report to watch, piped too
    tmp, outcome, server = Path(tempfile.mkdtemp(prefix="streamsvc-demo-")), {}, None
    try:
        server = Server(tmp, secrets.token_urlsafe(24))
        try:
            task.react(run, (args, server, outcome))
        except SystemExit:
            pass
        if "code" not in outcome:  # the reactor stopped first: SIGINT (Ctrl-C) or SIGTERM
            print("error: interrupted", file=sys.stderr)
        return outcome.get("code", 1)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 1
    finally:
        status = server.stop() if server else None
        shutil.rmtree(tmp, ignore_errors=True)
        if status is not None:
            print(f"stopped the server (exit status {status}) and removed {tmp}")


if __name__ == "__main__":
    sys.exit(main())
