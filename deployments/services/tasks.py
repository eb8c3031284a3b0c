"""Write side of the task lifecycle as callers see it: submit, cancel, retry, and dispatch to the queue.

A task row is created in a transaction and dispatched to django-q2 only once that transaction has
committed (so a worker never looks for a row that is not there yet). The queue message carries
nothing but the task id: the row is the single source of truth. A row whose hand-off failed is
never withdrawn: it stays pending and the sweeper sends it again (``resend_lost_handoffs``).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Collection, Sequence
from contextlib import suppress
from dataclasses import dataclass
from functools import partial
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from django_q.tasks import async_task

from deployments import selectors
from deployments.models import AuditEntry, EmbeddingModel, Task, TaskKind, TaskStatus
from deployments.services.audit import Actor, record
from deployments.services.errors import ModelNotRegistered, RetryRefused, TaskConflict, TaskHandOffFailed
from deployments.services.leases import allocate_sequence, lease_is_held
from deployments.services.registry import register_runs_on_first_use
from deployments.services.transitions import transition
from deployments.task_ids import new_task_id

logger = logging.getLogger(__name__)

# Ids per IN (...) list and messages per broker transaction: well below SQLite's parameter limit.
ID_CHUNK = 500

# The django-q2 job every task runs: it reads the task's kind from its row.
TASK_JOB = "deployments.jobs.run_task"

# What a user may retry: outcomes that did not deliver. A done task is not retried: the same work is
# asked for again by a new submission. A pending or processing one has not finished yet.
RETRYABLE_STATUSES = (TaskStatus.FAILED, TaskStatus.REFUSED, TaskStatus.CANCELED)
DO_AGAIN_INSTEAD = {
    TaskKind.DEPLOYMENT: "deploy the model again instead",
    TaskKind.DELETION: "delete the model again instead",
}


@dataclass(frozen=True)
class Submission:
    task: Task
    created: bool


def submit_deployment(
    embedding_model_id: str,
    config: dict[str, Any] | None = None,
    task_id: str | None = None,
    requested_by: Actor | str = "",
) -> Submission:
    return submit_task(TaskKind.DEPLOYMENT, embedding_model_id, config, task_id, requested_by)


def submit_deletion(
    embedding_model_id: str,
    config: dict[str, Any] | None = None,
    task_id: str | None = None,
    requested_by: Actor | str = "",
) -> Submission:
    return submit_task(TaskKind.DELETION, embedding_model_id, config, task_id, requested_by)


def submit_task(
    kind: str,
    embedding_model_id: str,
    config: dict[str, Any] | None = None,
    task_id: str | None = None,
    requested_by: Actor | str = "",
) -> Submission:
    """Create a task (or return the one already created under ``task_id``) and dispatch it on commit.

    The same ``task_id`` with the same kind, model and config is the same request sent again: the
    existing task comes back (``created`` False). With anything different it is a TaskConflict.
    Raises TaskHandOffFailed, after the commit, when the queue refused the new task (it stays pending).
    """
    config = config or {}
    if kind == TaskKind.DEPLOYMENT:
        register_runs_on_first_use([embedding_model_id], by=requested_by)
    ensure_registered([embedding_model_id])
    try:
        with transaction.atomic():
            # Taking the queue position first locks the model's row: a concurrent request with the
            # same task_id waits here and then finds the task below.
            sequence = allocate_sequence(embedding_model_id)
            if task_id is not None and (existing := _existing_submission(kind, embedding_model_id, config, task_id)):
                return existing
            task = _create_task(kind, embedding_model_id, config, sequence, task_id, str(requested_by))
            record(requested_by, AuditEntry.Action.CREATE, task, changes={"config": config})
    except IntegrityError:
        # The same task_id was inserted concurrently for another model's queue: idempotency still holds.
        if task_id is not None and (existing := _existing_submission(kind, embedding_model_id, config, task_id)):
            return existing
        raise
    return Submission(task, created=True)


def _existing_submission(kind: str, embedding_model_id: str, config: dict[str, Any], task_id: str) -> Submission | None:
    existing = selectors.find_task(task_id)
    if existing is None:
        return None
    if (existing.kind, existing.embedding_model_id, existing.config) != (kind, embedding_model_id, config):
        raise TaskConflict(
            f"task_id {task_id} is already used by a {existing.kind} task of model {existing.embedding_model_id!r} "
            f"with config {json.dumps(existing.config, sort_keys=True)}; a different request needs a new task_id"
        )
    return Submission(existing, created=False)


def _create_task(
    kind: str,
    embedding_model_id: str,
    config: dict[str, Any],
    sequence: int,
    task_id: str | None,
    requested_by: str,
    *,
    attempt: int = 1,
    retry_of: Task | None = None,
    hand_off_with: Callable[[Sequence[Task]], None] | None = None,
) -> Task:
    """Insert the row and arrange its hand-off (``hand_off`` unless told otherwise) for when the
    surrounding transaction commits."""
    task = new_task(
        kind, embedding_model_id, config, sequence, task_id, requested_by, attempt=attempt, retry_of=retry_of
    )
    task.save(force_insert=True)
    transaction.on_commit(partial(hand_off_with or hand_off, [task]))
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
    kind: str,
    embedding_model_id: str,
    config: dict[str, Any],
    sequence: int,
    task_id: str | None = None,
    requested_by: str = "",
    *,
    attempt: int = 1,
    retry_of: Task | None = None,
) -> Task:
    """An unsaved task row as every submission path creates it (single, batch, retry)."""
    metadata: dict[str, Any] = {"attempt": attempt, "retry_of": str(retry_of.pk) if retry_of else None}
    return Task(
        id=task_id or new_task_id(),
        kind=kind,
        embedding_model_id=embedding_model_id,
        config=config,
        sequence=sequence,
        attempt=attempt,
        retry_of=retry_of,
        requested_by=requested_by[: Task._meta.get_field("requested_by").max_length],
        metadata=metadata,
    )


def dispatch(tasks: Sequence[Task]) -> None:
    """Send task ids to django-q2 and note when, ``ID_CHUNK`` at a time.

    Sending twice is harmless: the job checks the row. Each chunk is enqueued inside one
    transaction: with the ORM broker that is one commit per chunk instead of one per message
    (1,000 deploys take seconds, not minutes); with Redis it changes nothing. Only chunks that
    went through completely are marked as dispatched. If the broker fails, TaskHandOffFailed names
    the tasks not sent; they stay pending, and the sweeper re-sends a model's first pending task
    once it has waited TASK_HANDOFF_GRACE_SECONDS without a hand-off.
    """
    for start in range(0, len(tasks), ID_CHUNK):
        chunk = tasks[start : start + ID_CHUNK]
        try:
            with transaction.atomic():
                for task in chunk:
                    async_task(TASK_JOB, str(task.pk), task_name=f"{task.kind}-{task.pk}", group=f"{task.kind}s")
        except Exception as exc:
            raise TaskHandOffFailed(tasks[start:], exc, math.ceil(settings.TASK_HANDOFF_GRACE_SECONDS)) from exc
        Task.objects.filter(pk__in=[task.pk for task in chunk]).update(dispatched_at=timezone.now())


def hand_off(tasks: Sequence[Task]) -> None:
    """Dispatch freshly committed tasks for a caller who is waiting (API, admin, commands).

    A broker failure deletes nothing: TaskHandOffFailed reaches the caller (the API answers 503
    with Retry-After) while the tasks stay pending for the sweeper to send.
    """
    try:
        dispatch(tasks)
    except TaskHandOffFailed as exc:
        logger.exception("handing %d task(s) to the queue failed; the sweeper will send them", len(exc.tasks))
        raise


def hand_off_in_background(tasks: Sequence[Task]) -> None:
    """Dispatch tasks nobody waits for (the sweeper's retries): a failure is logged, not raised, so
    the sweep goes on; a later sweep sends the tasks."""
    with suppress(TaskHandOffFailed):
        hand_off(tasks)


def dispatch_next_task(embedding_model_id: str) -> Task | None:
    """Dispatch the model's first unfinished task, if it is pending and nobody holds the model's lease."""
    head = selectors.head_task_for_model(embedding_model_id)
    if head is None or head.status != TaskStatus.PENDING:
        return None
    if lease_is_held(embedding_model_id):
        return None  # the holder dispatches the next task when it finishes
    try:
        dispatch([head])
    except Exception:
        # Not fatal: the sweeper re-sends pending tasks whose dispatch was lost.
        logger.exception("dispatching %s task %s failed; the sweeper will retry", head.kind, head.pk)
        return None
    return head


def cancel_task(task: Task, by: Actor | str = "") -> Task:
    """Cancel a pending task. A task already running cannot be canceled (the server is mid-change)."""
    if task.status != TaskStatus.PENDING:
        raise TaskConflict(f"only a pending task can be canceled; this one is {task.status}")
    with transaction.atomic():
        if not transition(task, TaskStatus.CANCELED, detail="canceled before it started", by=str(by)):
            task.refresh_from_db()
            raise TaskConflict(f"only a pending task can be canceled; this one is {task.status}")
        record(by, AuditEntry.Action.CANCEL, task)
        # The canceled task may have been first in line: let the next one go.
        transaction.on_commit(partial(dispatch_next_task, task.embedding_model_id))
    return task


def ensure_retryable(task: Task) -> None:
    """The one retry rule, for the API, the admin and the commands alike.

    Raises RetryRefused unless ``task`` is failed, refused or canceled and has no newer attempt yet;
    when it was retried already (by a user or by the sweeper), the refusal names that attempt.
    """
    if task.status == TaskStatus.DONE:
        raise RetryRefused(task, f"it is done: {DO_AGAIN_INSTEAD[task.kind]}")
    if task.status not in RETRYABLE_STATUSES:
        raise RetryRefused(task, f"it is {task.status}: it has not finished yet")
    if newer := selectors.newer_attempt(task):
        raise RetryRefused(task, f"it was already retried as {newer.pk} (attempt {newer.attempt})", newer)


def retry_task(task: Task, requested_by: Actor | str = "", config: dict[str, Any] | None = None) -> Task:
    """Run a failed, refused or canceled task again as a new attempt linked to it, at the back of the
    model's queue. Once only: a double click, or two operators at once, make one attempt.

    ``config`` replaces the task's config for the new attempt (a deploy that failed on its config
    is retried with a better one); the caller validates it (``task_config.validate_config``). Without
    it the attempt reuses the config that failed.
    """
    ensure_retryable(task)  # refuse the obvious cases before taking any lock
    ensure_registered([task.embedding_model_id])
    attempt_config = task.config if config is None else config
    with transaction.atomic():
        # Taking the queue position locks the model's lease row until commit (SQLite: the database), so
        # concurrent retries of one task take turns, and the later one finds the earlier one's attempt.
        sequence = allocate_sequence(task.embedding_model_id)
        ensure_retryable(task)
        attempt = _create_task(
            task.kind,
            task.embedding_model_id,
            attempt_config,
            sequence,
            None,
            str(requested_by),
            attempt=task.attempt + 1,
            retry_of=task,
        )
        _record_retry(requested_by, task, attempt)
    return attempt


def _record_retry(by: Actor | str, task: Task, attempt: Task) -> None:
    # On the task that was retried ("who retried this one?"), naming the attempt it made, and its config
    # when it differs from the one retried.
    changes: dict[str, Any] = {"retried_as": attempt.pk, "attempt": attempt.attempt}
    if attempt.config != task.config:
        changes["config"] = attempt.config
    record(by, AuditEntry.Action.RETRY, task, changes=changes)


def retry_lost_attempt(task: Task, task_id: str | None = None, by: Actor | str = "") -> Task:
    """The sweeper's automatic retry: a new attempt that keeps the lost one's place in the queue.

    Never withdrawn: if the queue refuses it, it stays pending and a later sweep sends it. The new
    attempt keeps the lost one's requester; ``by`` (the sweeper) is who retried it, for the audit trail.
    """
    attempt = _create_task(
        task.kind,
        task.embedding_model_id,
        task.config,
        task.sequence,
        task_id,
        task.requested_by,
        attempt=task.attempt + 1,
        retry_of=task,
        hand_off_with=hand_off_in_background,
    )
    _record_retry(by, task, attempt)
    return attempt
