"""What the task services refuse, as exceptions the API, the admin and the commands translate."""

from __future__ import annotations

from deployments.models import Task


class TaskError(Exception):
    """A request about tasks that cannot be honoured; the message says why."""


class ModelNotRegistered(TaskError):
    pass


class TaskConflict(TaskError):
    """The task exists but is in a state (or of a kind) that does not allow the request."""


class TransitionNotAllowed(TaskConflict):
    """A status change the task lifecycle forbids (e.g. anything out of a terminal status)."""


class RetryRefused(TaskConflict):
    """The task may not be retried: ``reason`` says why; ``newer_attempt`` is set when it was retried already."""

    def __init__(self, task: Task, reason: str, newer_attempt: Task | None = None):
        self.task = task
        self.reason = reason
        self.newer_attempt = newer_attempt
        super().__init__(f"task {task.pk} cannot be retried: {reason}")


class TaskHandOffFailed(TaskError):
    """The task could not be handed to the queue; it was withdrawn, nothing is left behind."""
