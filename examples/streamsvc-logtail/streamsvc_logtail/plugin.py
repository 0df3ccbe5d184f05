"""
The plugin described: its name, path, settings and factory. The dropin
(C{streamsvc/plugins/streamsvc_logtail.py}) imports it, so that every scan
imports only this; the resource is imported once the operator enables it.
"""

from streamsvc.plugin import Plugin, Setting, boolean, integer, path, size


def _resource(context):  # type: ignore[no-untyped-def]
    from streamsvc_logtail.resource import LogsResource

    return LogsResource(context)


logs = Plugin(
    name="logs",
    path="logs",
    resource=_resource,
    description="follow the log files of a folder as NDJSON or Server-Sent Events",
    settings={
        "dir": Setting(path, doc="the folder whose files are served"),
        "poll_ms": Setting(integer(20, 60_000), default=250, doc="how often a file at its end is looked at again"),
        "heartbeat": Setting(integer(0, 3600), default=15, doc="seconds between SSE comments while idle (0: none)"),
        "max_line": Setting(size(1024 * 1024), default=16 * 1024, doc="longer lines are sent in pieces this long"),
        "max_followers": Setting(integer(1, 100_000), default=100, doc="tails open at once; more get a 503"),
        "listing": Setting(boolean, default=True, doc="GET /logs/ lists the files"),
    },
)
