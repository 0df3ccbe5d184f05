"""
C{streamsvc-client}: treq scripts that move big bodies in constant memory.

  - L{streamsvc.client.resume}: what to ask for and what an answer means
    for a resumed download (pure);
  - L{streamsvc.client.get}: C{get URL [-o FILE]}, streamed to a C{.part}
    file and renamed on success, resumable;
  - L{streamsvc.client.cli}: the command line.

(Issue 15, in progress: C{put} and C{tail} are still to come.)
"""
