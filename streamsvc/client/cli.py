"""
The C{streamsvc-client} command line: one line on failure, never a
traceback; exit status 0, 1 (failure), 2 (usage), 130 (Ctrl-C, a resumable
C{.part} left behind).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from streamsvc.client.errors import ClientError, error_line
from streamsvc.client.get import download_with_retries, stream
from streamsvc.client.http import http_client
from streamsvc.client.put import upload
from streamsvc.client.put_resume import resumable_upload
from streamsvc.client.tail import tail


class Progress:
    """A tqdm bar on stderr (bytes, rate, ETA), or nothing when disabled."""

    def __init__(self, *, enabled: bool) -> None:
        self._enabled = enabled
        self._bar: Any = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()

    def start(self, total: int | None, offset: int) -> None:
        """A bar from C{offset} (a resume starts where the server's bytes end); again: a new bar."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                             file=sys.stderr, leave=False)

    def update(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)


def _size(text: str) -> int:
    from streamsvc.sizes import parse_size

    try:
        value = parse_size(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size such as 65536, 64k or 1M, not {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-H", "--header", action="append", default=[], help="an extra 'Name: value' header")
    common.add_argument("--token", help="Bearer token (default: $STREAMSVC_TOKEN)")
    common.add_argument("--cacert", metavar="FILE",
                        help="trust the PEM certificates in FILE (instead of the system's) for https:")
    common.add_argument("-k", "--insecure", action="store_true",
                        help="https: without checking the server's certificate")
    parser = argparse.ArgumentParser(prog="streamsvc-client", description="Stream big bodies over HTTP.")
    commands = parser.add_subparsers(dest="command", required=True)
    get = commands.add_parser("get", parents=[common], help="download URL to FILE, resumably")
    get.add_argument("url")
    get.add_argument("-o", "--output",
                     help="the file, or - for stdout (default: stdout when it is not a terminal, "
                          "else the URL's last path segment)")
    get.add_argument("-c", "--continue", dest="resume", action="store_true",
                     help="take an existing FILE as the start of the download (as curl -C -)")
    get.add_argument("--rate", type=_size, help="read no faster than this many bytes/s (64k, 1M...)")
    get.add_argument("--timeout", type=float, default=60.0,
                     help="give up when no body byte arrives for this many seconds (default 60; 0 = never)")
    get.add_argument("--retries", type=int, default=0, metavar="N",
                     help="after a dropped connection, resume up to N times (waiting 1, 2, 4... s)")
    get.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    put = commands.add_parser("put", parents=[common], help="upload FILE to URL, streamed, with its Content-Digest")
    put.add_argument("file")
    put.add_argument("url")
    put.add_argument("--no-digest", dest="digest", action="store_false", help="send no Content-Digest")
    put.add_argument("--if-match", metavar="ETAG", help="replace only the version with this ETag")
    put.add_argument("--if-none-match", action="store_true", help="create only: fail if URL exists")
    put.add_argument("--retries", type=int, default=0, metavar="N",
                     help="a resumable upload (the IETF draft): after a cut, send the rest, up to N times")
    put.add_argument("--resume", action="store_true",
                     help="continue this file's upload from an earlier run (a resumable upload)")
    put.add_argument("--state-dir", metavar="DIR",
                     help="where resumable uploads are recorded (default: "
                          "$XDG_STATE_HOME/streamsvc-client/uploads)")
    put.add_argument("-q", "--quiet", action="store_true", help="no progress bar (resumable uploads)")
    tail = commands.add_parser("tail", parents=[common], help="print NDJSON lines or Server-Sent Events as they arrive")
    tail.add_argument("url")
    tail.add_argument("--events", action="store_true", help="print whole SSE events, not only their data")
    tail.add_argument("--no-reconnect", dest="reconnect", action="store_false",
                      help="stop when the connection drops instead of resuming with Last-Event-ID")
    return parser.parse_args(argv)


def _to_stdout(args: argparse.Namespace) -> bool:
    """C{-o -}, or no C{-o} with stdout not a terminal (C{| tar x}, C{> file}), as curl does."""
    if args.output is not None:
        return bool(args.output == "-")
    return not sys.stdout.isatty()


def _stdout_writer() -> Any:
    """Bytes to stdout, as they come (flushed: a pipe's reader sees them at once)."""
    out = sys.stdout.buffer

    def write(data: bytes) -> None:
        out.write(data)
        out.flush()

    return write


def headers_of(args: argparse.Namespace) -> dict[str, str]:
    headers = {}
    for line in args.header:
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise ClientError(f"a header must be 'Name: value', not {line[:40]!r}")
        headers[name.strip()] = value.strip()
    token = args.token or os.environ.get("STREAMSVC_TOKEN")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from twisted.internet import task

    outcome = {"status": 1}
    state: dict[str, Any] = {"finished": False}

    async def run(reactor: Any) -> None:
        try:
            headers = headers_of(args)
            client = http_client(reactor, cacert=args.cacert, insecure=args.insecure)
            if args.command == "put" and (args.retries > 0 or args.resume):
                with Progress(enabled=not args.quiet and sys.stderr.isatty()) as progress:
                    code, body = await resumable_upload(
                        client, args.file, args.url, reactor=reactor, headers=headers, digest=args.digest,
                        if_match=args.if_match, if_none_match=args.if_none_match, retries=args.retries,
                        resume=args.resume, state_dir=args.state_dir, on_start=progress.start,
                        on_data=progress.update)
                print(f"{code} {body.decode('utf-8', 'replace').strip()}")
            elif args.command == "put":
                code, body, _ = await upload(client, args.file, args.url, reactor=reactor, headers=headers,
                                             digest=args.digest, if_match=args.if_match,
                                             if_none_match=args.if_none_match)
                print(f"{code} {body.decode('utf-8', 'replace').strip()}")
            elif args.command == "tail":
                await tail(client, args.url, reactor=reactor, headers=headers, events=args.events,
                           reconnect=args.reconnect, write=lambda text: print(text, flush=True))
            elif _to_stdout(args):
                if args.resume:
                    raise ClientError("-c needs a file to resume into, not stdout")
                with Progress(enabled=not args.quiet and sys.stderr.isatty()) as progress:
                    await stream(client, args.url, _stdout_writer(), headers=headers, reactor=reactor,
                                 rate=args.rate, stall=args.timeout or None,
                                 on_start=progress.start, on_data=progress.update)
            else:
                output = args.output or os.path.basename(args.url.split("?", 1)[0].rstrip("/")) or "index.html"
                state["output"] = output
                with Progress(enabled=not args.quiet and sys.stderr.isatty()) as progress:
                    await download_with_retries(client, args.url, output, headers=headers, resume=args.resume,
                                   retries=max(0, args.retries), reactor=reactor, rate=args.rate, stall=args.timeout or None,
                                   on_start=progress.start, on_data=progress.update)
            outcome["status"] = 0
        except BrokenPipeError:
            # The reader went away (| head -c 100): what it wanted it had.
            # Quiet, like cat; stdout pointed at /dev/null so Python's own
            # flush at exit does not complain about the closed pipe.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
            outcome["status"] = 0
        except Exception as error:
            print(f"streamsvc-client: {error_line(error, getattr(args, 'url', None))}", file=sys.stderr)
        finally:
            state["finished"] = True

    def interrupted() -> None:
        """The reactor stops before we are done: Ctrl-C (or SIGTERM). A .part stays, resumable."""
        if not state["finished"]:
            outcome["status"] = 130
            kept = f": {state['output']}.part kept, run again to resume" if "output" in state else ""
            print(f"streamsvc-client: interrupted{kept}", file=sys.stderr)

    def start(reactor: Any) -> Any:
        from twisted.internet.defer import ensureDeferred

        reactor.addSystemEventTrigger("before", "shutdown", interrupted)
        return ensureDeferred(run(reactor))

    try:
        task.react(start)
    except SystemExit:
        pass
    except KeyboardInterrupt:
        return 130
    return outcome["status"]


if __name__ == "__main__":
    sys.exit(main())
