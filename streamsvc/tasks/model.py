# -*- test-case-name: tests.test_task_model -*-
"""
What a task is, what a client may send for one, and what a listing may ask
for: pure functions, no I/O, so that the HTTP resources, the importer and
every store implementation agree on one set of rules.

Every rule fails with L{Invalid}, whose message names the field, and which
the resources answer as a 400 C{{"error": ...}}.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping
from typing import Any, NamedTuple

#: The states a task can be in.
STATUSES = ("pending", "in-progress", "completed")
#: The fields a client may set, and how.
TITLE_MAX = 500
PRIORITY_MIN, PRIORITY_MAX = 0, 10
#: The columns of every export, in order; also a task's JSON keys.
COLUMNS = ("id", "title", "priority", "status", "created_at", "updated_at")
#: Fields a client may write.
WRITABLE = ("title", "priority", "status")
#: Fields an import accepts and ignores, so that an export imports back.
IMPORT_IGNORED = ("id", "created_at", "updated_at")
#: The filters every listing and export shares.
FILTERS = ("status", "min_priority", "q", "limit", "after_id")
Q_MAX = 500
#: Ids are SQLite integers: anything larger cannot name a task.
ID_MAX = 2**63 - 1


class Invalid(ValueError):
    """Something the client sent breaks a rule; the message names the field."""


class Task(NamedTuple):
    """
    A stored task. C{version} starts at 1 and grows by one with every
    change; it makes the task's ETag, so an editor's C{If-Match} fails once
    someone else has changed the task.
    """

    id: int
    title: str
    priority: int
    status: str
    created_at: str
    updated_at: str
    version: int = 1

    def as_json(self) -> dict[str, Any]:
        """The task as its API shows it (without the version: that is the ETag)."""
        return {
            "id": self.id,
            "title": self.title,
            "priority": self.priority,
            "status": self.status,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }

    @property
    def etag(self) -> str:
        """A strong ETag: the task's id and version."""
        return f'"{self.id}.{self.version}"'


class NewTask(NamedTuple):
    """A task as a client asks for it, validated."""

    title: str
    priority: int = 0
    status: str = "pending"


class TaskQuery(NamedTuple):
    """
    The filters of a listing or export. Results come in id order, so
    C{after_id} (the last id of the previous page) is keyset pagination:
    stable while tasks are added, and as cheap for page 1000 as for page 1.
    """

    status: str | None = None
    min_priority: int | None = None
    q: str | None = None
    limit: int | None = None
    after_id: int = 0


def now_iso(clock_seconds: float) -> str:
    """ISO 8601 UTC with milliseconds: C{2026-12-02T07:36:02.123Z}."""
    moment = datetime.datetime.fromtimestamp(clock_seconds, datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


# --- bodies ---------------------------------------------------------------------


def _title(value: object) -> str:
    if not isinstance(value, str):
        raise Invalid("title must be a string")
    if not value.strip():
        raise Invalid("title must not be empty")
    if len(value) > TITLE_MAX:
        raise Invalid(f"title must be at most {TITLE_MAX} characters")
    if "\x00" in value:
        raise Invalid("title must not contain NUL")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, as JSON's "\ud800" can carry
        raise Invalid("title must be valid Unicode") from None
    return value


def _priority(value: object) -> int:
    # bool is an int in Python; not in this API.
    if not isinstance(value, int) or isinstance(value, bool):
        raise Invalid(f"priority must be an integer from {PRIORITY_MIN} to {PRIORITY_MAX}")
    if not PRIORITY_MIN <= value <= PRIORITY_MAX:
        raise Invalid(f"priority must be from {PRIORITY_MIN} to {PRIORITY_MAX}")
    return value


def _status(value: object) -> str:
    if value not in STATUSES or not isinstance(value, str):
        raise Invalid(f"status must be one of {', '.join(STATUSES)}")
    return value


_CHECKS = {"title": _title, "priority": _priority, "status": _status}


def _fields(document: object, *, ignored: tuple[str, ...] = ()) -> dict[str, Any]:
    if not isinstance(document, Mapping):
        raise Invalid("the body must be a JSON object")
    fields: dict[str, Any] = {}
    for name, value in document.items():
        check = _CHECKS.get(name)
        if check is None:
            if name in ignored:
                continue
            raise Invalid(f"unknown field {str(name)[:50]!r}")
        fields[name] = check(value)
    return fields


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for key, value in pairs:
        if key in document:
            raise Invalid(f"field {key[:50]!r} given more than once")
        document[key] = value
    return document


def parse_json(data: bytes) -> object:
    """
    JSON text as a document, or L{Invalid}: UTF-8, and no key twice in an
    object (Python keeps the last, another reader the first: a task must
    mean one thing). Every way a task comes in (C{POST}, C{PATCH}, each line
    of an NDJSON import) goes through here.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise Invalid("not UTF-8") from None
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except Invalid:
        raise
    except json.JSONDecodeError as e:
        raise Invalid(f"invalid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except (ValueError, RecursionError):  # giant integers, deep nesting
        raise Invalid("invalid JSON") from None


def new_task(document: object, *, ignored: tuple[str, ...] = ()) -> NewTask:
    """C{POST /tasks}'s body (a parsed JSON value) as a L{NewTask}, or L{Invalid}."""
    fields = _fields(document, ignored=ignored)
    if "title" not in fields:
        raise Invalid("title is required")
    return NewTask(**fields)


def task_changes(document: object) -> dict[str, Any]:
    """C{PATCH}'s body: any subset of the writable fields, each checked as for a new task."""
    return _fields(document)


# --- query strings ---------------------------------------------------------------


def one_parameter(args: Mapping[bytes, list[bytes]], name: str) -> str | None:
    values = args.get(name.encode("ascii"))
    if values is None:
        return None
    if len(values) != 1:
        raise Invalid(f"{name} given more than once")
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise Invalid(f"{name} is not UTF-8") from None


def _integer(name: str, text: str, low: int, high: int) -> int:
    # int() also takes " 5", "+5", "5_0" and "٥": a filter should be plainly digits.
    if not text.isascii() or not text.isdigit() or len(text) > 19:
        raise Invalid(f"{name} must be an integer from {low} to {high}")
    value = int(text)
    if not low <= value <= high:
        raise Invalid(f"{name} must be an integer from {low} to {high}")
    return value


def check_parameters(args: Mapping[bytes, list[bytes]], allowed: tuple[str, ...]) -> None:
    """A query parameter this endpoint does not know is a typo the client should hear of."""
    for key in args:
        name = key.decode("latin-1")
        if name not in allowed:
            raise Invalid(f"unknown query parameter {name[:50]!r}")


def parse_query(args: Mapping[bytes, list[bytes]], *, extra: tuple[str, ...] = ()) -> TaskQuery:
    """
    The shared filters from a request's C{args}: C{status}, C{min_priority}
    (0–10), C{q} (a title substring, case-insensitive for ASCII, at most
    500 characters), C{limit} (1 and up), C{after_id} (0 and up). C{extra}
    names the endpoint's own parameters, checked by the endpoint.
    """
    check_parameters(args, FILTERS + extra)
    status = one_parameter(args, "status")
    if status is not None:
        _status(status)
    min_priority = one_parameter(args, "min_priority")
    q = one_parameter(args, "q")
    if q is not None and len(q) > Q_MAX:
        raise Invalid(f"q must be at most {Q_MAX} characters")
    if q is not None and "\x00" in q:
        # No title holds one (see _title); and SQLite's LIKE would stop at it.
        raise Invalid("q must not contain NUL")
    limit = one_parameter(args, "limit")
    after_id = one_parameter(args, "after_id")
    return TaskQuery(
        status=status,
        min_priority=None
        if min_priority is None
        else _integer("min_priority", min_priority, PRIORITY_MIN, PRIORITY_MAX),
        q=q or None,
        limit=None if limit is None else _integer("limit", limit, 1, ID_MAX),
        after_id=0 if after_id is None else _integer("after_id", after_id, 0, ID_MAX),
    )


def flag(args: Mapping[bytes, list[bytes]], name: str) -> bool:
    """A yes/no query parameter (C{?bom=1}): 1/true/yes or 0/false/no."""
    value = one_parameter(args, name)
    if value is None:
        return False
    if value.lower() in ("1", "true", "yes"):
        return True
    if value.lower() in ("0", "false", "no"):
        return False
    raise Invalid(f"{name} must be 1 or 0")


def parse_task_id(segment: bytes) -> int | None:
    """A path segment as a task id, or None when it cannot be one (then 404, never 500)."""
    if not segment.isdigit() or len(segment) > 19:
        return None
    value = int(segment)
    return value if 1 <= value <= ID_MAX else None


def matches(task: Task, query: TaskQuery) -> bool:
    """Whether C{task} passes C{query}'s filters (C{limit} aside): the in-memory store's rule, and the SQL's."""
    if task.id <= query.after_id:
        return False
    if query.status is not None and task.status != query.status:
        return False
    if query.min_priority is not None and task.priority < query.min_priority:
        return False
    if query.q is not None and _ascii_lower(query.q) not in _ascii_lower(task.title):
        return False
    return True


def _ascii_lower(text: str) -> str:
    """Lower-case A–Z only: what SQLite's LIKE folds, so both stores agree."""
    return text.translate(_ASCII_LOWER)


_ASCII_LOWER = {c: c + 32 for c in range(ord("A"), ord("Z") + 1)}
