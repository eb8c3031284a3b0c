"""Write side of operators' bulk work: many submits in one batch, retries and cancels with a verdict
per task, and pruning old history. The admin's actions and the management commands call these.

Every path shares the single-task code in ``tasks.py``: the same registration check
(``ensure_registered``), the same row (``new_task``), the same hand-off on commit
(``hand_over_new_tasks``), and ``retry_task`` / ``cancel_task`` themselves for each task.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any

from django.db import transaction
from django.db.models import F, Window
from django.db.models.functions import RowNumber

from deployments.models import TERMINAL_STATUSES, Task, TaskStatus
from deployments.services.leases import allocate_sequences
from deployments.services.tasks import (
    ID_CHUNK,
    TaskError,
    cancel_task,
    ensure_registered,
    hand_over_new_tasks,
    new_task,
    retry_task,
)

# What an operator retries: outcomes that did not deliver. A done task is deployed again by a new
# deploy, not "retried"; a pending or processing one has not finished yet.
RETRYABLE_STATUSES = (TaskStatus.FAILED, TaskStatus.REFUSED, TaskStatus.CANCELED)


def submit_many(
    task_model: type[Task],
    embedding_model_ids: Iterable[str],
    config: dict[str, Any] | None = None,
    requested_by: str = "",
) -> list[Task]:
    """One task per distinct model, created in one transaction and handed over on commit.

    All or nothing: an unregistered id refuses the whole batch before anything is written.
    A model named twice gets one task (two identical deploys in a row would only redo the work).
    """
    model_ids = list(dict.fromkeys(embedding_model_ids))
    if not model_ids:
        return []
    ensure_registered(model_ids)
    with transaction.atomic():
        positions = allocate_sequences(model_ids)
        tasks = [
            new_task(task_model, model_id, dict(config or {}), positions[model_id], requested_by=requested_by)
            for model_id in model_ids
        ]
        task_model.objects.bulk_create(tasks, batch_size=ID_CHUNK)
        transaction.on_commit(partial(hand_over_new_tasks, task_model, [task.pk for task in tasks]))
    return tasks


@dataclass(frozen=True)
class TaskVerdict:
    """What a bulk action did to one task: ``result`` when it acted, otherwise ``reason`` says why not."""

    task: Task
    result: Task | None = None
    reason: str = ""

    @property
    def acted(self) -> bool:
        return self.result is not None


@dataclass
class BulkOutcome:
    verdicts: list[TaskVerdict] = field(default_factory=list)

    @property
    def acted(self) -> list[TaskVerdict]:
        return [verdict for verdict in self.verdicts if verdict.acted]

    @property
    def skipped(self) -> list[TaskVerdict]:
        return [verdict for verdict in self.verdicts if not verdict.acted]


def retry_many(tasks: Sequence[Task], requested_by: str = "") -> BulkOutcome:
    """Retry each failed, refused or canceled task as a new attempt (``retry_task``), once.

    A task that already has a newer attempt (retried by someone else, or by the sweeper) is not
    retried again: a double click must not queue the same work twice.
    """
    retried_as = _existing_retries(tasks)
    outcome = BulkOutcome()
    for task in tasks:
        if task.status not in RETRYABLE_STATUSES:
            reason = (
                "it is done: deploy the model again instead"
                if task.status == TaskStatus.DONE
                else f"it is {task.status}: it has not finished yet"
            )
            outcome.verdicts.append(TaskVerdict(task, reason=reason))
        elif task.pk in retried_as:
            outcome.verdicts.append(TaskVerdict(task, reason=f"it was already retried as {retried_as[task.pk]}"))
        else:
            try:
                outcome.verdicts.append(TaskVerdict(task, result=retry_task(task, requested_by=requested_by)))
            except TaskError as exc:
                outcome.verdicts.append(TaskVerdict(task, reason=str(exc)))
    return outcome


def cancel_many(tasks: Sequence[Task]) -> BulkOutcome:
    """Cancel each pending task (``cancel_task``); say why for the others."""
    outcome = BulkOutcome()
    for task in tasks:
        try:
            outcome.verdicts.append(TaskVerdict(task, result=cancel_task(task)))
        except TaskError as exc:
            outcome.verdicts.append(TaskVerdict(task, reason=str(exc)))
    return outcome


def _existing_retries(tasks: Sequence[Task]) -> dict[uuid.UUID, uuid.UUID]:
    """For each task that already has a newer attempt: that attempt's id (one query per kind and 500 tasks)."""
    retried_as: dict[uuid.UUID, uuid.UUID] = {}
    by_kind: dict[type[Task], list[uuid.UUID]] = {}
    for task in tasks:
        by_kind.setdefault(type(task), []).append(task.pk)
    for task_model, ids in by_kind.items():
        for start in range(0, len(ids), ID_CHUNK):
            rows = (
                task_model.objects.filter(retry_of__in=ids[start : start + ID_CHUNK])
                .order_by("attempt")
                .values_list("retry_of_id", "pk")
            )
            retried_as.update(rows)
    return retried_as


@dataclass
class PruneReport:
    deleted: dict[str, int] = field(default_factory=dict)
    dry_run: bool = False

    @property
    def total(self) -> int:
        return sum(self.deleted.values())


def prune_tasks(
    task_models: Sequence[type[Task]],
    *,
    older_than: datetime | None = None,
    keep_latest: int = 1,
    dry_run: bool = False,
) -> PruneReport:
    """Delete finished tasks (and their timelines) created before ``older_than``, always keeping the
    ``keep_latest`` (at least 1) most recent tasks of each model and kind.

    The latest task of a model is what ``/deploy-status`` answers with, so it is never pruned;
    pending and processing tasks are never pruned either.
    """
    keep_latest = max(1, keep_latest)
    report = PruneReport(dry_run=dry_run)
    for task_model in task_models:
        ranked = task_model.objects.annotate(
            rank=Window(
                RowNumber(),
                partition_by=[F("embedding_model_id")],
                order_by=[F("sequence").desc(), F("attempt").desc()],
            )
        )
        # Ranked over all of the kind's tasks (no other filter inside the window), then narrowed.
        beyond_latest = ranked.filter(rank__gt=keep_latest).values("pk")
        candidates = task_model.objects.filter(pk__in=beyond_latest, status__in=TERMINAL_STATUSES)
        if older_than is not None:
            candidates = candidates.filter(created_at__lt=older_than)
        if dry_run:
            report.deleted[task_model.KIND] = candidates.count()
            continue
        # The ranking runs once; then deletes go 500 rows (with their timelines) per transaction.
        ids = list(candidates.values_list("pk", flat=True))
        for start in range(0, len(ids), ID_CHUNK):
            with transaction.atomic():
                task_model.objects.filter(pk__in=ids[start : start + ID_CHUNK]).delete()
        report.deleted[task_model.KIND] = len(ids)
    return report
