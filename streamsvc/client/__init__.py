"""
C{streamsvc-client}: treq scripts that move big bodies in constant memory.

  - L{streamsvc.client.resume}: what to ask for and what an answer means
    for a resumed download (pure);
  - L{streamsvc.client.get}: C{get URL [-o FILE]}, streamed to a C{.part}
    file and renamed on success, resumable;
  - L{streamsvc.client.body}: reading a body at a rate, with a stall timeout;
  - L{streamsvc.client.put}: C{put FILE URL}, streamed, with its digest;
  - L{streamsvc.client.tail}: C{tail URL}, SSE or NDJSON, reconnecting;
  - L{streamsvc.client.http}: the treq client and its TLS policy
    (C{--cacert}, C{-k});
  - L{streamsvc.client.errors}: failures as one line;
  - L{streamsvc.client.cli}: the command line.
"""
