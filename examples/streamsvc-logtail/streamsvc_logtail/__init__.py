"""
streamsvc-logtail: a streamsvc plugin that follows the log files of a
folder (C{/logs/NAME}) as NDJSON or Server-Sent Events, across rotation.

The dropin that streamsvc discovers is C{streamsvc/plugins/streamsvc_logtail.py};
the resource is L{streamsvc_logtail.resource}, the reading of a growing file
L{streamsvc_logtail.follow}.
"""
