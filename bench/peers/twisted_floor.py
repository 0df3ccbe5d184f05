#!/usr/bin/env python3
"""
A peer of bench/small.py: twisted.web's in-memory floor. Every regular file
of a directory is read once at start-up into a C{static.Data} resource
(C{/NAME}), served by a C{Site} that writes no access log: what twisted.web
itself costs per request (parsing, C{Request.process}, the headers, the
write), with no file system, no log and nothing else of ours.

    python twisted_floor.py --port PORT --root DIR [--host 127.0.0.1]

Only loopback addresses are accepted; only files up to 16 MiB are loaded.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys

from twisted.internet import reactor
from twisted.web import resource, server, static

LIMIT = 16 * 1024 * 1024


class QuietSite(server.Site):
    """A Site with no access log at all (C{Site.log} formats and writes a line otherwise)."""

    def log(self, request: server.Request) -> None:
        pass


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--root", required=True)
    args = ap.parse_args()
    if not ipaddress.ip_address(args.host).is_loopback:
        ap.error("only loopback addresses are accepted")
    root = resource.Resource()
    for name in sorted(os.listdir(args.root)):
        path = os.path.join(args.root, name)
        if os.path.isfile(path) and os.path.getsize(path) <= LIMIT:
            with open(path, "rb") as f:
                root.putChild(name.encode(), static.Data(f.read(), "application/octet-stream"))
    reactor.listenTCP(args.port, QuietSite(root), interface=args.host)
    print(f"twisted_floor: pid {os.getpid()} serving {args.root} from memory on {args.host}:{args.port}",
          flush=True)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
