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
# How much of a task id the pages and commands show, and what search and `tasks <id>` accept as its start.
SHORT_ID_LENGTH = 8


def short_id(task_id: object) -> str:
    """The start of a task id that operators see (``3357e86d``)."""
    return str(task_id)[:SHORT_ID_LENGTH]


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
