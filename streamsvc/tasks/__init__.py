"""
The tasks store and its HTTP face (C{/tasks}): a SQLite-backed CRUD API whose
listings and exports stream in batches read off the reactor, a streaming
import, and live events.

  - L{streamsvc.tasks.model}: the task, its validation and the query filters (pure);
  - L{streamsvc.tasks.encoders}: task rows to JSON/NDJSON/CSV bytes, and CSV/NDJSON
    import records back (pure);
  - L{streamsvc.tasks.store}: what every L{streamsvc.interfaces.ITaskStore} shares (errors,
    the connection pool, the keyset cursor);
  - L{streamsvc.tasks.sqlite}: the store on SQLite, in threads (the default);
  - L{streamsvc.tasks.events}: the bounded fan-out hub behind C{/tasks/events};
  - L{streamsvc.tasks.importer}: C{POST /tasks/import}, a streaming body consumer;
  - L{streamsvc.tasks.resource}: the resources.
"""
