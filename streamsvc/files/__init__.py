"""
C{/files}: downloads, listings and uploads below one root folder.

  - L{paths}: request paths checked and opened race-free below the root;
  - L{media}: media types of file names;
  - L{fields}: request header fields read as RFC 9110 says;
  - L{listing}: folder listings as streamed JSON;
  - L{resource}: the resource (GET/HEAD downloads; PUT/DELETE from L{upload}).
"""

from streamsvc.files.listing import DirectoryListing
from streamsvc.files.media import content_disposition, content_type_for
from streamsvc.files.fields import escape_query
from streamsvc.files.paths import Target, resolve
from streamsvc.files.resource import FilesResource

__all__ = [
    "DirectoryListing",
    "FilesResource",
    "Target",
    "content_disposition",
    "content_type_for",
    "escape_query",
    "resolve",
]
