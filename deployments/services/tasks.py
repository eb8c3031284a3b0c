"""Write side of the task lifecycle as callers see it: submit, cancel, retry, and hand-off to the queue.

A task row is created in a transaction and handed to django-q2 only once that transaction has
committed (so a worker never looks for a row that is not there yet). The queue message carries
nothing but the task id: the row is the single source of truth.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone
from django_q.tasks import async_task

from deployments import selectors
from deployments.models import DeletionTask, DeploymentTask, EmbeddingModel, Task, TaskEvent, TaskStatus
from deployments.services.leases import allocate_sequence

logger = logging.getLogger(__name__)

# Ids per IN (...) list and messages per broker transaction: well below SQLite's parameter limit.
ID_CHUNK = 500

JOB_FOR_KIND = {
    DeploymentTask.KIND: "deployments.jobs.run_deployment_task",
    DeletionTask.KIND: "deployments.jobs.run_deletion_task",
}


class TaskError(Exception):
    """A request about tasks that cannot be honoured; the message says why."""


class ModelNotRegistered(TaskError):
    pass


class TaskConflict(TaskError):
    """The task exists but is in a state (or of a kind) that does not allow the request."""


class TaskHandOffFailed(TaskError):
    """The task could not be handed to the queue; it was withdrawn, nothing is left behind."""


@dataclass(frozen=True)
class Submission:
    task: Task
    created: bool


def submit_deployment(
    embedding_model_id: str,
    config: dict[str, Any] | None = None,
    task_id: uuid.UUID | None = None,
    requested_by: str = "",
) -> Submission:
    return submit_task(DeploymentTask, embedding_model_id, config, task_id, requested_by)


def submit_deletion(
    embedding_model_id: str,
    config: dict[str, Any] | None = None,
    task_id: uuid.UUID | None = None,
    requested_by: str = "",
) -> Submission:
    return submit_task(DeletionTask, embedding_model_id, config, task_id, requested_by)


def submit_task(
    task_model: type[Task],
    embedding_model_id: str,
    config: dict[str, Any] | None = None,
    task_id: uuid.UUID | None = None,
    requested_by: str = "",
) -> Submission:
    """Create a task (or return the one already created under ``task_id``) and hand it over on commit."""
    ensure_registered([embedding_model_id])
    try:
        with transaction.atomic():
            # Taking the queue position first locks the model's row: a concurrent request with the
            # same task_id waits here and then finds the task below.
            sequence = allocate_sequence(embedding_model_id)
            if task_id is not None and (existing := _existing_submission(task_model, embedding_model_id, task_id)):
                return existing
            task = _create_task(task_model, embedding_model_id, config or {}, sequence, task_id, requested_by)
    except IntegrityError:
        # The same task_id was inserted concurrently for another model's queue: idempotency still holds.
        if task_id is not None and (existing := _existing_submission(task_model, embedding_model_id, task_id)):
            return existing
        raise
    return Submission(task, created=True)


def _existing_submission(task_model: type[Task], embedding_model_id: str, task_id: uuid.UUID) -> Submission | None:
    existing = selectors.find_task(task_id)
    if existing is None:
        return None
    if not isinstance(existing, task_model) or existing.embedding_model_id != embedding_model_id:
        raise TaskConflict(
            f"task_id {task_id} is already used by a {existing.KIND} task of model {existing.embedding_model_id!r}"
        )
    return Submission(existing, created=False)


def _create_task(
    task_model: type[Task],
    embedding_model_id: str,
    config: dict[str, Any],
    sequence: int,
    task_id: uuid.UUID | None,
    requested_by: str,
    *,
    attempt: int = 1,
    retry_of: Task | None = None,
) -> Task:
    """Insert the row and arrange its hand-off for when the surrounding transaction commits."""
    task = new_task(
        task_model,
        embedding_model_id,
        config,
        sequence,
        task_id,
        requested_by,
        attempt=attempt,
        retry_of=retry_of,
    )
    task.save(force_insert=True)
    transaction.on_commit(partial(hand_over_new_tasks, task_model, [task.pk]))
    return task


def ensure_registered(embedding_model_ids: Collection[str]) -> None:
    """Raise ModelNotRegistered naming the ids that are not in the registry (one query per 500 ids).

    The single submit and the batch submit both check through here.
    """
    wanted = set(embedding_model_ids)
    known: set[str] = set()
    ids = sorted(wanted)
    for start in range(0, len(ids), ID_CHUNK):
        chunk = ids[start : start + ID_CHUNK]
        known.update(EmbeddingModel.objects.filter(pk__in=chunk).values_list("pk", flat=True))
    unknown = sorted(wanted - known)
    if len(unknown) == 1:
        raise ModelNotRegistered(f"embedding model {unknown[0]!r} is not registered")
    if unknown:
        shown = ", ".join(repr(model_id) for model_id in unknown[:5])
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise ModelNotRegistered(f"{len(unknown)} embedding models are not registered: {shown}{more}")


def new_task(
    task_model: type[Task],
    embedding_model_id: str,
    config: dict[str, Any],
    sequence: int,
    task_id: uuid.UUID | None = None,
    requested_by: str = "",
    *,
    attempt: int = 1,
    retry_of: Task | None = None,
) -> Task:
    """An unsaved task row as every submission path creates it (single, batch, retry)."""
    metadata: dict[str, Any] = {"attempt": attempt, "retry_of": str(retry_of.pk) if retry_of else None}
    return task_model(
        id=task_id or uuid.uuid4(),
        embedding_model_id=embedding_model_id,
        config=config,
        sequence=sequence,
        attempt=attempt,
        retry_of=retry_of,
        requested_by=requested_by,
        metadata=metadata,
    )


def hand_over_new_tasks(task_model: type[Task], task_ids: Sequence[uuid.UUID]) -> None:
    """Hand freshly committed tasks to the queue; withdraw the ones that could not be handed over."""
    try:
        hand_over_many(task_model, task_ids)
    except Exception as exc:
        logger.exception("handing %d %s task(s) to the queue failed", len(task_ids), task_model.KIND)
        # Withdraw the tasks not handed over, unless someone (a finishing worker, the sweeper) did it meanwhile.
        withdrawn = 0
        for start in range(0, len(task_ids), ID_CHUNK):
            deleted, _ = task_model.objects.filter(
                pk__in=task_ids[start : start + ID_CHUNK], status=TaskStatus.PENDING, dispatched_at__isnull=True
            ).delete()
            withdrawn += deleted
        if withdrawn and len(task_ids) == 1:
            raise TaskHandOffFailed(
                f"the task could not be handed to the task queue ({exc}); nothing was created"
            ) from exc
        if withdrawn:
            raise TaskHandOffFailed(
                f"{withdrawn} of {len(task_ids)} tasks could not be handed to the task queue ({exc}) "
                "and were withdrawn; the others are queued"
            ) from exc


def hand_over(task_model: type[Task], task_id: uuid.UUID) -> None:
    """Send the task id to django-q2 and note when. Sending twice is harmless: the job checks the row."""
    hand_over_many(task_model, [task_id])


def hand_over_many(task_model: type[Task], task_ids: Sequence[uuid.UUID]) -> None:
    """Send task ids to django-q2 and note when, ``ID_CHUNK`` at a time.

    Each chunk is enqueued inside one transaction: with the ORM broker that is one commit per
    chunk instead of one per message (1,000 deploys take seconds, not minutes); with Redis it
    changes nothing. Only chunks that went through completely are marked as dispatched.
    """
    for start in range(0, len(task_ids), ID_CHUNK):
        chunk = list(task_ids[start : start + ID_CHUNK])
        with transaction.atomic():
            for task_id in chunk:
                async_task(
                    JOB_FOR_KIND[task_model.KIND],
                    str(task_id),
                    task_name=f"{task_model.KIND}-{task_id}",
                    group=f"{task_model.KIND}s",
                )
        task_model.objects.filter(pk__in=chunk).update(dispatched_at=timezone.now())


def wake_model(embedding_model_id: str) -> Task | None:
    """Hand over the model's next task if it is pending and nobody holds the model's lease."""
    head = selectors.head_task_for_model(embedding_model_id)
    if head is None or head.status != TaskStatus.PENDING:
        return None
    lease = selectors.get_lease(embedding_model_id)
    if lease is not None and lease.owner and lease.expires_at and lease.expires_at > timezone.now():
        return None  # the holder wakes the model when it finishes
    try:
        hand_over(type(head), head.pk)
    except Exception:
        # Not fatal: the sweeper re-sends pending tasks whose hand-off was lost.
        logger.exception("handing over %s task %s failed; the sweeper will retry", head.KIND, head.pk)
        return None
    return head


def cancel_task(task: Task) -> Task:
    """Cancel a pending task. A task already running cannot be canceled (the server is mid-change)."""
    with transaction.atomic():
        now = timezone.now()
        canceled = (
            type(task)
            .objects.filter(pk=task.pk, status=TaskStatus.PENDING)
            .update(status=TaskStatus.CANCELED, detail="canceled before it started", finished_at=now, updated_at=now)
        )
        task.refresh_from_db()
        if not canceled:
            raise TaskConflict(f"only a pending task can be canceled; this one is {task.status}")
        record_event(task, "canceled", "done", "canceled before it started")
        # The canceled task may have been first in line: let the next one go.
        transaction.on_commit(partial(wake_model, task.embedding_model_id))
    return task


def retry_task(task: Task, requested_by: str = "") -> Task:
    """Run a finished task again as a new attempt linked to it, at the back of the model's queue."""
    if not task.is_terminal:
        raise TaskConflict(f"only a finished task can be retried; this one is {task.status}")
    ensure_registered([task.embedding_model_id])
    with transaction.atomic():
        sequence = allocate_sequence(task.embedding_model_id)
        return _create_task(
            type(task),
            task.embedding_model_id,
            task.config,
            sequence,
            None,
            requested_by,
            attempt=task.attempt + 1,
            retry_of=task,
        )


def retry_lost_attempt(task: Task, task_id: uuid.UUID | None = None) -> Task:
    """The sweeper's automatic retry: a new attempt that keeps the lost one's place in the queue."""
    return _create_task(
        type(task),
        task.embedding_model_id,
        task.config,
        task.sequence,
        task_id,
        task.requested_by,
        attempt=task.attempt + 1,
        retry_of=task,
    )


def record_event(task: Task, stage: str, state: str, message: str = "", duration_s: float | None = None) -> TaskEvent:
    owner = {"deployment_task": task} if isinstance(task, DeploymentTask) else {"deletion_task": task}
    return TaskEvent.objects.create(stage=stage, state=state, message=message, duration_s=duration_s, **owner)
