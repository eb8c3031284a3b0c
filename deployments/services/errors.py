"""What the task services refuse, as exceptions the API, the admin and the commands translate."""

from __future__ import annotations

from collections.abc import Sequence

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
    """Tasks were created but the queue refused them. Nothing is withdrawn: they stay pending and the
    sweeper sends them again once they have waited ``retry_after`` seconds. The message leaves the broker's
    own error out (it may name hosts, and the API shows the message to clients); ``cause`` holds it."""

    def __init__(self, tasks: Sequence[Task], cause: Exception, retry_after: int):
        self.tasks = list(tasks)
        self.cause = cause
        self.retry_after = retry_after
        if len(self.tasks) == 1:
            what = f"task {self.tasks[0].pk} was created but could not be handed to the task queue"
            then = f"it stays pending and the sweeper sends it again once it has waited {retry_after} s"
        else:
            what = f"{len(self.tasks)} tasks were created but could not be handed to the task queue"
            then = f"they stay pending and the sweeper sends them again once they have waited {retry_after} s"
        super().__init__(f"{what}; {then}")

    @property
    def task_ids(self) -> list[str]:
        return [str(task.pk) for task in self.tasks]
