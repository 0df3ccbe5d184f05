"""
twistd dropin for streamsvc.

Kept to a name and a module path so that plugin discovery (which imports every
dropin on each scan) imports none of streamsvc itself; C{streamsvc.tap} is only
imported when C{twistd streamsvc} actually runs.
"""

from twisted.application.service import ServiceMaker

streamsvc = ServiceMaker(
    "streamsvc",
    "streamsvc.tap",
    "HTTP streaming service: files, uploads and generated streams with flow control",
    "streamsvc",
)
