#!/usr/bin/env python3
"""
A peer of bench/bench_files.py: aiohttp serving a directory with
``web.static`` (each file through ``FileResponse``, which sends the body with
``loop.sendfile``, i.e. os.sendfile on a plain TCP socket).

    python aiohttp_server.py --port PORT --root DIR --access-log FILE [--host 127.0.0.1]

The access log (aiohttp's default format, one line per request) goes to FILE,
as the other servers of the benchmark log each request to a file too.
SIGTERM or SIGINT: aiohttp's graceful exit (5 s for the requests in hand).
Only loopback addresses are accepted.

aiohttp is not a dependency of streamsvc: bench_files.py runs this with a
Python that has it (a venv of its own under ~/.cache/streamsvc-bench if
needed).
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys

from aiohttp import web


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--root", required=True, help="directory whose files are served as /NAME")
    ap.add_argument("--access-log", required=True, help="file the access log lines go to")
    args = ap.parse_args()
    if not ipaddress.ip_address(args.host).is_loopback:
        ap.error("only loopback addresses are accepted")

    access = logging.getLogger("aiohttp.access")
    access.setLevel(logging.INFO)
    access.propagate = False
    access.addHandler(logging.FileHandler(args.access_log))

    app = web.Application()
    app.add_routes([web.static("/", os.path.abspath(args.root))])
    print(f"aiohttp_server: pid {os.getpid()} serving {args.root} on {args.host}:{args.port}", flush=True)
    web.run_app(app, host=args.host, port=args.port, access_log=access, print=None,
                shutdown_timeout=5.0, handle_signals=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
