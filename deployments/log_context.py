"""What a log line is about: while a worker runs a task, every line it logs names the task.

The engine sets the context around a task's run (``task_log_context``); the console handler's
``TaskContextFilter`` copies it onto each record, so the JSON formatter (LOG_FORMAT=json) writes
``task_id``, ``embedding_model_id`` and ``attempt`` as fields of their own. A context variable, not
an argument: the lines come from every layer the task goes through (services, the serving layer).

Imported by the LOGGING setting before the app registry is ready, so it imports no models.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

_current_task: ContextVar[dict[str, Any] | None] = ContextVar("current_task", default=None)


@contextmanager
def task_log_context(task_id: str, embedding_model_id: str, attempt: int) -> Iterator[None]:
    """Within the block, log records carry this task's id, model id and attempt."""
    token = _current_task.set({"task_id": task_id, "embedding_model_id": embedding_model_id, "attempt": attempt})
    try:
        yield
    finally:
        _current_task.reset(token)


def current_task_fields() -> dict[str, Any]:
    return dict(_current_task.get() or {})


class TaskContextFilter(logging.Filter):
    """Adds the running task's fields to each record (a field the call passed in ``extra`` wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in current_task_fields().items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True
