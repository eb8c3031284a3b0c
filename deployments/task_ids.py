"""What a task id may be: the one rule for ids clients send (API bodies and paths) and operators search.

A client may name its task (the spec's example is ``1234``) so that sending the same request
again is safe; otherwise the server names it with a new UUID. An id travels in URLs, queue
messages and log lines, so it is kept to characters that need no escaping anywhere.
"""

from __future__ import annotations

import re
import uuid

MAX_TASK_ID_LENGTH = 128
ALLOWED_TASK_ID_CHARACTERS = "letters, digits, '.', '_', ':' and '-'"
# Anchored for OpenAPI's `pattern`; ASCII only, so no look-alike letters, whitespace or control characters.
TASK_ID_PATTERN = rf"^[A-Za-z0-9_:-][A-Za-z0-9._:-]{{0,{MAX_TASK_ID_LENGTH - 1}}}$"
_TASK_ID = re.compile(TASK_ID_PATTERN)
# How much of a generated task id the admin shows; search and `tasks <id>` accept any start of an id.
SHORT_ID_LENGTH = 8
# What new_task_id makes: a UUID in its canonical form (lowercase, hyphenated; the ids of tasks made before
# ids were strings have it too). A client's id is what the client chose: shown whole, always.
_GENERATED_TASK_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def is_generated_task_id(task_id: object) -> bool:
    """True for an id in the form the service gives a task whose client did not name it."""
    return bool(_GENERATED_TASK_ID.fullmatch(str(task_id)))


def short_id(task_id: object) -> str:
    """A task id as the admin's lists show it: a generated id by its first 8 characters (``3357e86d``, unique
    in practice and whole in the tooltip), a client's id whole (``nightly:2026-12-01``), since the client
    looks it up by what it sent. The API and the commands show every id whole."""
    text = str(task_id)
    return text[:SHORT_ID_LENGTH] if is_generated_task_id(text) else text


class InvalidTaskId(ValueError):
    """Not a safe task id; the message says why."""


def validate_task_id(value: object) -> str:
    """Return ``value`` if it is a safe task id, else raise InvalidTaskId."""
    if not isinstance(value, str):
        raise InvalidTaskId("task id must be a string")
    if not value:
        raise InvalidTaskId("task id must not be empty")
    if len(value) > MAX_TASK_ID_LENGTH:
        raise InvalidTaskId(f"task id must be at most {MAX_TASK_ID_LENGTH} characters")
    if value.startswith("."):
        raise InvalidTaskId("task id must not start with '.'")
    if not _TASK_ID.fullmatch(value):
        raise InvalidTaskId(f"task id may contain only {ALLOWED_TASK_ID_CHARACTERS}")
    return value


def is_valid_task_id(value: object) -> bool:
    try:
        validate_task_id(value)
    except InvalidTaskId:
        return False
    return True


def new_task_id() -> str:
    """The id of a task whose client did not name it."""
    return str(uuid.uuid4())
