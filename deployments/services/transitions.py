"""The one door through which a task's status changes.

``transition`` checks that the move is allowed, writes it only if the row still is what the
caller read (status and, for a running task, its worker), records it on the timeline and sets
the times that go with it. Every status change in the code base goes through here.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models import Exists
from django.utils import timezone

from deployments.models import TERMINAL_STATUSES, Task, TaskStatus
from deployments.services.errors import TransitionNotAllowed
from deployments.services.recording import record_event

ALLOWED_TRANSITIONS: dict[str, frozenset[str]] = {
    TaskStatus.PENDING: frozenset({TaskStatus.PROCESSING, TaskStatus.CANCELED, TaskStatus.REFUSED, TaskStatus.FAILED}),
    TaskStatus.PROCESSING: frozenset({TaskStatus.DONE, TaskStatus.FAILED, TaskStatus.REFUSED}),
    # Nothing leaves a terminal status: a finished task is retried as a new attempt, never reopened.
}

# The stage under which status changes appear on a task's timeline.
STATUS_STAGE = "status"


def is_allowed(from_status: str, to_status: str) -> bool:
    return to_status in ALLOWED_TRANSITIONS.get(from_status, frozenset())


def transition(
    task: Task,
    to: str,
    *,
    detail: str | None = None,
    metadata: dict[str, Any] | None = None,
    by: str = "",
    only_if: Exists | None = None,
) -> bool:
    """Move ``task`` to status ``to``; False (and nothing written) if the row changed since it was read.

    Compare-and-set on what the caller holds: the row must still have ``task.status`` and, for a
    running task, ``task.lease_owner``. So of a worker finishing and the sweeper giving up on it,
    exactly one wins. Moving to ``processing`` makes ``by`` the task's lease owner. ``only_if`` adds
    a condition checked in the same statement (a worker passes its lease fence).
    Raises ``TransitionNotAllowed`` for a move the lifecycle forbids.
    """
    from_status = task.status
    if not is_allowed(from_status, to):
        raise TransitionNotAllowed(f"a {from_status} task cannot become {to}")
    now = timezone.now()
    changes: dict[str, Any] = {"status": to, "updated_at": now}
    if detail is not None:
        changes["detail"] = detail
    if metadata is not None:
        changes["metadata"] = metadata
    if to == TaskStatus.PROCESSING:
        changes.update(started_at=now, lease_owner=by)
    if to in TERMINAL_STATUSES:
        changes["finished_at"] = now
    still_as_read = Task.objects.filter(pk=task.pk, status=from_status)
    if from_status == TaskStatus.PROCESSING:
        still_as_read = still_as_read.filter(lease_owner=task.lease_owner)
    if only_if is not None:
        still_as_read = still_as_read.filter(only_if)
    with transaction.atomic():
        if not still_as_read.update(**changes):
            return False
        record_event(task, STATUS_STAGE, to, detail or "", actor=by)
    for name, value in changes.items():
        setattr(task, name, value)
    return True
