"""
C{/files}: downloads, listings and uploads, from a file store
(L{streamsvc.interfaces.IFileStore}).

  - L{resource}: the resource (GET/HEAD downloads; PUT/DELETE from L{upload});
  - L{store}: the values the store contract passes (preconditions, installs);
  - L{local}: the local store, a folder on disk (L{disk_upload} its writes,
    L{paths} its race-free opens below the root);
  - L{s3client}: the S3 protocol on Twisted's HTTP client;
  - L{media}: media types of file names;
  - L{fields}: request header fields read as RFC 9110 says;
  - L{listing}: folder listings as streamed JSON or an HTML page.
"""

from streamsvc.files.listing import DirectoryListing
from streamsvc.files.local import LocalFileStore
from streamsvc.files.media import content_disposition, content_type_for
from streamsvc.files.fields import escape_query
from streamsvc.files.paths import Target, resolve
from streamsvc.files.resource import FilesResource

__all__ = [
    "DirectoryListing",
    "FilesResource",
    "LocalFileStore",
    "Target",
    "content_disposition",
    "content_type_for",
    "escape_query",
    "resolve",
]
