# -*- test-case-name: tests.test_producers -*-
"""
The contracts every streamsvc body source and stage obeys.

Written as prose, in the manner of C{twisted.web.iweb.IBodyProducer}, because
the hard parts of streaming are not the method signatures but who may call
what, when, and who closes what.
"""

from __future__ import annotations

from twisted.plugin import IPlugin
from zope.interface import Attribute, Interface
from twisted.internet.interfaces import IPushProducer


__all__ = [
    "IBodyConsumer",
    "IFileStore",
    "IReadAtOnce",
    "IStoredFile",
    "IStoredFolder",
    "IStreamProducer",
    "IStreamingBodyResource",
    "IStreamsvcPlugin",
    "ITaskCursor",
    "ITaskStore",
    "IUploadSink",
]


class IStreamProducer(IPushProducer, Interface):
    """
    A source of a response body that writes to an C{IConsumer} at the pace
    the consumer allows, and owns whatever it reads from.

    Two registrations, chosen by L{streaming} before L{startProducing}:

      - C{streaming=True} (push): from the reactor turn after
        C{startProducing}, the producer writes chunks on its own until
        C{pauseProducing}; C{resumeProducing} lets it go on. It never loops
        unboundedly inside one reactor turn: after a bounded burst it yields
        to the reactor and continues on the next turn.
      - C{streaming=False} (pull): each C{resumeProducing} writes at most one
        chunk (or starts fetching one, if the source is asynchronous; it is
        written when it arrives, and L{when_ready} says when that is).
        C{pauseProducing} is then meaningless and ignored. Pull producers
        are driven by L{streamsvc.pull.PullDriver}, never by Twisted's
        C{_PullToPush}, whose pause counting stalls them.

    Pause and resume are idempotent in both modes: a TCP transport pauses on
    every write over its high-water mark and resumes once, so the calls are
    not balanced, and a producer must not count them.

    Re-entrancy: C{consumer.write} may call C{pauseProducing},
    C{resumeProducing} or C{stopProducing} synchronously (a TCP transport
    pauses its producer from inside C{write} when its buffer passes the
    high-water mark). Implementations update their state before writing and
    re-check it after.

    Ownership: the producer owns its source (an open file, a generator, a
    cursor). It releases it exactly once: when the body is complete, when the
    source fails, or when C{stopProducing} is called, whichever comes first.
    C{stopProducing} releases it at once, synchronously, and is idempotent.
    C{stopProducing} is the consumer's call and means the consumer is gone
    (the connection was lost); server-side code that wants a stream to end
    early (a timeout, shutdown) stops it through
    L{streamsvc.producers.BodyStream.stop}, which also tells the client.

    Every way out of a step ends the stream: an exception from the source
    (any C{BaseException}, not only C{Exception}) fails the completion
    Deferred; C{KeyboardInterrupt} and C{SystemExit} propagate only after it.

    Completion: the C{Deferred} returned by C{startProducing} fires with
    C{None} when the whole body has been written, fails with the source's
    error if the source fails, and fails with L{StreamStopped} when
    C{stopProducing} is called first. It never fires twice. The producer
    never calls C{registerProducer}, C{unregisterProducer} or C{finish} on its
    consumer: ending the response belongs to L{streamsvc.producers.send_body}.
    """

    length = Attribute(
        "The number of bytes the producer will write, or None when it is not "
        "known in advance (the response is then sent chunked)."
    )

    streaming = Attribute(
        "True to be registered as a push producer, False as a pull producer."
    )

    bytes_written = Attribute("How many bytes have been written to the consumer so far.")

    def startProducing(consumer):
        """
        Start writing the body to C{consumer}.

        @return: a Deferred that fires as described in the interface docstring.
        """

    def when_ready():
        """
        Whether a C{resumeProducing} now would do any work.

        @return: C{None} when it would; otherwise (an asynchronous chunk is
            pending, a throttle is out of tokens) a C{Deferred} that fires,
            with C{None}, once it would, or once the stream has ended. A pull
            driver waits on it instead of calling C{resumeProducing} in a
            busy loop. A stage returns its upstream's answer.
        """


class IBodyConsumer(Interface):
    """
    Receives a request body chunk by chunk as it arrives, before it is
    complete (see L{streamsvc.body}).

    Who calls what: the request calls L{write} for each chunk, then exactly
    one of L{body_done} or L{body_failed}. A consumer that cannot keep up
    calls C{request.pause_body()}: the server stops reading the socket (the
    rest of the read already in hand, at most some 64 KiB, may still arrive)
    until C{request.resume_body()}.

    Who closes what: the consumer owns whatever it opened for the body (a
    temporary file, a pipe to the response) and releases it in
    L{body_failed}; after L{body_done} it finishes the response itself.
    """

    def write(data):
        """A chunk of the body (bytes, never empty)."""

    def body_done():
        """The whole body has arrived."""

    def body_failed(reason):
        """
        The body will not be complete: the client went away, or passed the
        size limit. C{reason} is a C{Failure}. Discard what was received.
        """


class IStreamingBodyResource(Interface):
    """
    A resource that takes its request body as it arrives.

    For a request with a body, L{body_consumer} is called as soon as the
    headers are in, before any body byte is read, with the request's
    C{method}, C{uri}, C{path}, C{args} and headers set. The resource's
    C{render} is then never called for that request: the resource answers
    from the consumer (it may start the response at once, as the echo does).
    Requests without a body are rendered as usual.
    """

    max_body_bytes = Attribute(
        "The longest body accepted: a longer Content-Length is a 413 at the "
        "headers, a chunked body passing it a 413 as it does."
    )

    # Optional: C{takes_content_coding = True} on a resource that handles a
    # body with a C{Content-Encoding} itself (the echo passes it through).
    # Without it such a body is a 415 at the headers, before body_consumer:
    # nothing in streamsvc decodes a request body, and a resource that never
    # looks would store or parse the coded bytes.

    def body_consumer(request):
        """
        Decide on the body: return the L{IBodyConsumer} that takes it, or
        raise L{streamsvc.errors.HTTPError} to refuse it (401, 404, 405,
        412, 413...). A refusal is answered at once, no C{100 Continue} is
        sent and the connection is closed without reading the body.

        Return C{None} to decline: the request's method takes no body here
        (a GET with one), and it is handled as for a resource that takes
        none (a small body dropped and the request rendered, a longer one
        refused).
        """


class ITaskCursor(Interface):
    """
    The rows of one listing or export, read in batches as the client takes
    them (see L{ITaskStore.cursor}).

    Who calls what: the owner calls L{fetch} with at most one call in flight
    (the next only once the previous has fired), then L{close} exactly when
    it is done with the rows — after the last batch, on error, and at once
    when its client goes away.

    Between fetches the owner may wait as long as its client does (a slow
    or stalled reader): a store must not let such cursors hold what other
    listings need (the SQLite store reads in keyset batches and holds no
    connection between them). A store that can find no reader in time fails
    the fetch with L{streamsvc.tasks.store.StoreBusy} (answered 503).
    """

    def fetch(count):
        """
        A Deferred of the next batch: a list of at most C{count}
        L{streamsvc.tasks.model.Task}s in id order, empty once there are no more.
        """

    def close():
        """
        Release the cursor and whatever it holds (a connection or server-side
        cursor, if the store keeps one between fetches; the SQLite store
        keeps none). Idempotent. A fetch still running finishes first; its
        result is then dropped.
        """


class ITaskStore(Interface):
    """
    Where tasks live. Every method answers with a Deferred and never makes
    the reactor wait on the database, so a store may run its queries in
    threads (SQLite), over the network (PostgreSQL) or in memory (tests).

    Failures: L{streamsvc.tasks.store.TaskNotFound} when the task does not
    exist, L{streamsvc.tasks.store.PreconditionFailed} when C{precondition}
    refuses the current task (checked in the same transaction as the write,
    so two editors cannot both pass it).
    """

    open_cursors = Attribute("Cursors not yet closed (for metrics and tests).")

    def create(task):
        """Store a L{streamsvc.tasks.model.NewTask}; a Deferred of the stored Task."""

    def create_many(tasks):
        """Store a sequence of NewTasks in one transaction; a Deferred of the stored Tasks, in order."""

    def get(task_id):
        """A Deferred of the Task with this id, or of None."""

    def update(task_id, changes, precondition=None):
        """
        Apply C{changes} (a dict of validated writable fields) and bump the
        version and C{updated_at}; no changes leave the task as it is. A
        Deferred of the Task as it is now. C{precondition}, a pure function
        of the current Task, must return true for the write to happen.
        """

    def delete(task_id, precondition=None):
        """Delete the task; a Deferred of the Task as it was."""

    def cursor(query):
        """An L{ITaskCursor} over the tasks passing a L{streamsvc.tasks.model.TaskQuery}, in id order."""

    def feed(hub):
        """
        From now on, every change this store commits reaches C{hub} (an
        L{streamsvc.tasks.events.EventHub}) as an event
        (L{streamsvc.tasks.store.change_event}: C{created}, C{updated},
        C{deleted}, C{imported}), in commit order; the resources publish
        nothing themselves. A store only this process writes to publishes
        each change once it has committed (the hub, or its relay, numbers
        it: L{streamsvc.tasks.store.LocalFeed}). A store several hosts
        share writes the event with the change, in its transaction, and
        feeds C{hub} from the database with ids that mean the same on
        every host (C{hub.deliver}), including the changes made here.
        Called once, before the reactor runs; L{close} stops it.
        """

    def close():
        """Release every resource (at shutdown); a Deferred that fires once done."""


class IStoredFile(Interface):
    """
    One version of a file, opened by L{IFileStore.open}: what the response
    says of it (L{facts}) and a way to read byte ranges of that version.

    Who closes what: the caller owns it until it asks for a L{producer},
    which then owns whatever the file holds (a descriptor, a connection to
    the store) and releases it however the stream ends. L{close} releases
    it when no producer was made (a 304, a HEAD, an error) and is a no-op
    after one was: callers call it in a C{finally}.
    """

    facts = Attribute(
        "The L{streamsvc.files.facts.FileFacts} of this version: size, "
        "modification time, strong ETag, media type."
    )

    name = Attribute("The file's own name (the last path segment), for Content-Disposition.")

    def producer(spans, *, chunk_size, streaming, clock, sendfile):
        """
        An L{IStreamProducer} of C{spans} (a list of
        L{streamsvc.ranges.ByteRange}s of this version and literal bytes,
        as L{streamsvc.producers.FileProducer} takes them), reading at most
        C{chunk_size} bytes at a time. It fails (L{SourceTruncated}, or the
        store's error) rather than send bytes of another version.
        C{sendfile}: the bytes go to the transport as they are (no stage
        after), so a store on a local disk may send them with
        C{os.sendfile}.
        """

    def close():
        """Release the file if no producer took it. Idempotent."""


class IReadAtOnce(Interface):
    """
    Optional, on an L{IStoredFile} whose bytes are at hand (a local disk):
    a body of one chunk is read at once and sent with the headers, in one
    write, rather than through a producer.
    """

    def read(spans):
        """The bytes of C{spans}, now; C{OSError} or L{SourceTruncated} if they cannot be read."""


class IStoredFolder(Interface):
    """
    A folder, found by L{IFileStore.open}. Its listing is an iterator of
    batches, each a L{streamsvc.files.listing.Batch} or a C{Deferred} of one
    (a store that lists over the network), never more than a bounded number
    of entries at a time; the batch that says C{last} ends it.
    """

    slash = Attribute("Whether the request path ended with C{/} (without it the resource redirects).")

    def entries():
        """The iterator of batches described above, which the caller closes (C{close()})."""

    def close():
        """Release what finding the folder took (a descriptor). Idempotent."""


class IUploadSink(Interface):
    """
    A new version of a file on its way into an L{IFileStore}
    (L{IFileStore.begin_upload}): installed whole, or not at all.

    Who calls what: the uploads' request side calls L{write} with each chunk
    of the body in order, then exactly one of L{finish} (the body is
    complete) or L{abort} (it will not be). The sink paces the body with
    the C{flow} it was given (C{pause_body()} / C{resume_body()}), so a
    client faster than the store costs a bounded buffer.

    L{done} fires with a L{streamsvc.files.store.Installed} once the new
    version is in place, durably (its digests and preconditions checked
    just before, with L{streamsvc.files.store.WriteChecks}); it fails with
    an L{HTTPError} or L{StoreUnavailable} as soon as the sink fails, even
    while the body is still arriving, and with L{UploadAborted} after
    L{abort}. Whichever way it ends, nothing half-written is ever served and
    the previous version stays until the install.
    """

    done = Attribute("A Deferred, as above.")

    def write(data):
        """The next bytes of the body."""

    def finish():
        """The body is complete: check it and install it."""

    def abort():
        """The body will not be complete: discard what was received (and the store's upload)."""


class IFileStore(Interface):
    """
    Where C{/files} keeps its files: a local folder (L{streamsvc.files.local})
    or an object store (L{streamsvc.files.s3}). The resource, the listing
    page, signed links and the download plan (ranges, conditionals, gzip)
    use only this contract.

    Paths: L{open} takes the request's raw path segments (C{postpath}) and
    checks them itself (each store knows what it can name: a local folder
    any bytes below its root, an object store UTF-8 keys); the write
    methods take the segments L{streamsvc.files.paths.write_segments}
    checked. Nothing outside the store's root is ever reached, in any
    spelling; names starting with a dot are never served nor written.

    Every method answers with a C{Deferred} (a local store's may have fired
    already) and never makes the reactor wait: slow disk work runs in
    threads, network work is asynchronous. Failures: L{HTTPError} 404 for
    what is not there (or not servable), 409 for a file where a folder must
    be or the reverse, 412 for a precondition that fails; L{StoreUnavailable}
    when the store cannot be reached or answer (503/502/504 with
    C{Retry-After}).
    """

    def open(postpath):
        """A Deferred of the L{IStoredFile} or L{IStoredFolder} at C{postpath}."""

    def begin_upload(segments, checks, flow):
        """
        An L{IUploadSink} for a new version of the file at C{segments}.
        What can be decided at once (a path that leads nowhere, a folder in
        the way, a precondition already failing) is raised here as an
        L{HTTPError}, before the body is read; C{checks}
        (L{streamsvc.files.store.WriteChecks}) holds the preconditions and
        digests to check again at the install.
        """

    def delete(segments, preconditions):
        """
        Remove the file at C{segments} once C{preconditions} (a
        L{streamsvc.files.store.WritePreconditions}) accept it; a Deferred
        of None once it is gone. A folder there is a 409.
        """

    def make_folder(segments):
        """Make the folder (and those on the way); a Deferred of whether it was new. A file in the way: 409."""

    def install_file(segments, checks, path):
        """
        Install the complete local file at C{path} (a resumable upload's
        bytes, L{streamsvc.files.pending}) as the new version at
        C{segments}; a Deferred of the L{streamsvc.files.store.Installed}.
        C{checks.hashes} already holds every byte of the file: the digests
        and preconditions are checked here, at the install, as
        L{IUploadSink} does. The store takes the file over whichever way it
        ends (moves it into place, or copies it and removes it): the caller
        never touches C{path} again. The same errors as L{begin_upload}.
        """


class IStreamsvcPlugin(IPlugin, Interface):
    """
    A streaming endpoint of someone else's, mounted by C{twistd streamsvc}.

    Found with C{twisted.plugin.getPlugins(IStreamsvcPlugin,
    streamsvc.plugins)}: a module-level object providing this interface in a
    module of the C{streamsvc.plugins} dropin package, which the plugin's
    own distribution installs (L{streamsvc.plugin.Plugin} is the ready-made
    provider). Nothing found is served until the operator names it in
    C{[plugins] enabled}.

    The dropin module is imported at every scan, before the operator has
    enabled anything: it should import only what it needs to describe the
    plugin, and leave the real work to L{resource}.

    A plugin's requests go through everything a streamsvc resource gets:
    the connection and body limits, the timeouts, the access log, CORS,
    the Bearer guard (unless L{public}), and, for bodies sent with
    L{streamsvc.producers.send_body} / L{streamsvc.producers.start_body},
    the rate limits, the send timeout, the per-stream metrics (labelled
    C{plugin:NAME}) and the drain at shutdown.
    """

    name = Attribute(
        "The plugin's name (C{str}): lower-case letters, digits, C{-} and "
        "C{_}, starting with a letter. What C{[plugins] enabled} and the "
        "C{[plugin:NAME]} section call it."
    )
    path = Attribute(
        "The one path segment (C{str}) it is mounted at, e.g. C{'logs'} for "
        "C{/logs}; the operator may move it (C{[plugin:NAME] mount}). "
        "streamsvc's own paths are refused."
    )
    public = Attribute(
        "C{True}: served without a Bearer token. C{False} (what a plugin "
        "should be unless it shows nothing private): behind C{[auth] tokens}, "
        "and refused (403) when there are none."
    )
    settings = Attribute(
        "What C{[plugin:NAME]} may hold: a mapping of key to "
        "L{streamsvc.plugin.Setting}. Values are parsed and checked at "
        "start-up, with errors in the style of streamsvc's own sections."
    )
    description = Attribute("One line for the operator (C{str}).")

    def resource(context):
        """
        Build the plugin's resource: called once per process, at start-up,
        on the reactor, with a L{streamsvc.plugin.PluginContext}. It may not
        block (no network, no reading of large files): anything slow is
        done later, in C{context.run_in_thread}. Raising fails the start-up
        with one line naming the plugin.

        @return: an C{IResource}, mounted at L{path}.
        """
