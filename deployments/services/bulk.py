"""Write side of operators' bulk work: many submits in one batch, retries and cancels with a verdict
per task, and pruning old history. The admin's actions and the management commands call these.

Every path shares the single-task code in ``tasks.py``: the same registration check
(``ensure_registered``), the same row (``new_task``), the same hand-off on commit (``hand_off``),
and ``retry_task`` (with its one retry rule) / ``cancel_task`` themselves for each task.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any

from django.db import transaction
from django.db.models import Count, F, Window
from django.db.models.functions import RowNumber

from deployments.models import TERMINAL_STATUSES, AuditEntry, Task, TaskKind
from deployments.services.audit import Actor, record
from deployments.services.errors import RetryRefused, TaskError, TaskHandOffFailed
from deployments.services.leases import allocate_sequences
from deployments.services.registry import register_runs_on_first_use
from deployments.services.tasks import ID_CHUNK, cancel_task, ensure_registered, hand_off, new_task, retry_task


def submit_many(
    kind: str,
    embedding_model_ids: Iterable[str],
    config: dict[str, Any] | None = None,
    requested_by: Actor | str = "",
) -> list[Task]:
    """One task per distinct model, created in one transaction and handed over on commit.

    All or nothing: an unregistered id refuses the whole batch before anything is written.
    A model named twice gets one task (two identical deploys in a row would only redo the work).
    Raises TaskHandOffFailed, after the commit, naming the tasks the queue refused (they stay pending).
    """
    model_ids = list(dict.fromkeys(embedding_model_ids))
    if not model_ids:
        return []
    if kind == TaskKind.DEPLOYMENT:
        register_runs_on_first_use(model_ids, by=requested_by)
    ensure_registered(model_ids)
    with transaction.atomic():
        positions = allocate_sequences(model_ids)
        tasks = [
            new_task(kind, model_id, dict(config or {}), positions[model_id], requested_by=str(requested_by))
            for model_id in model_ids
        ]
        Task.objects.bulk_create(tasks, batch_size=ID_CHUNK)
        record(requested_by, AuditEntry.Action.CREATE, *tasks, changes={"config": dict(config or {})})
        transaction.on_commit(partial(hand_off, tasks))
    return tasks


@dataclass(frozen=True)
class TaskVerdict:
    """What a bulk action did to one task: ``result`` when it acted, otherwise ``reason`` says why not.
    ``note`` is what else the operator should know about an action that went through."""

    task: Task
    result: Task | None = None
    reason: str = ""
    note: str = ""

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


def retry_many(tasks: Sequence[Task], requested_by: Actor | str = "") -> BulkOutcome:
    """Retry each task by ``retry_task`` and its one rule (failed, refused or canceled; once).

    A task that already has a newer attempt (retried by someone else, or by the sweeper) is skipped,
    naming that attempt: a double click must not queue the same work twice.
    """
    outcome = BulkOutcome()
    for task in tasks:
        try:
            outcome.verdicts.append(TaskVerdict(task, result=retry_task(task, requested_by=requested_by)))
        except RetryRefused as exc:
            outcome.verdicts.append(TaskVerdict(task, reason=exc.reason))
        except TaskHandOffFailed as exc:
            # The attempt exists and stays pending; only its message to the queue is late.
            note = f"not yet handed to the task queue; the sweeper sends it once it has waited {exc.retry_after} s"
            outcome.verdicts.append(TaskVerdict(task, result=exc.tasks[0], note=note))
        except TaskError as exc:
            outcome.verdicts.append(TaskVerdict(task, reason=str(exc)))
    return outcome


def cancel_many(tasks: Sequence[Task], by: Actor | str = "") -> BulkOutcome:
    """Cancel each pending task (``cancel_task``); say why for the others."""
    outcome = BulkOutcome()
    for task in tasks:
        try:
            outcome.verdicts.append(TaskVerdict(task, result=cancel_task(task, by=by)))
        except TaskError as exc:
            outcome.verdicts.append(TaskVerdict(task, reason=str(exc)))
    return outcome


@dataclass
class PruneReport:
    deleted: dict[str, int] = field(default_factory=dict)
    dry_run: bool = False

    @property
    def total(self) -> int:
        return sum(self.deleted.values())


def prune_tasks(
    kinds: Sequence[str],
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
    ranked = Task.objects.annotate(
        rank=Window(
            RowNumber(),
            partition_by=[F("embedding_model_id"), F("kind")],
            order_by=[F("sequence").desc(), F("attempt").desc()],
        )
    )
    # Ranked over all tasks (no other filter inside the window), then narrowed.
    beyond_latest = ranked.filter(rank__gt=keep_latest).values("pk")
    candidates = Task.objects.filter(pk__in=beyond_latest, kind__in=kinds, status__in=TERMINAL_STATUSES)
    if older_than is not None:
        candidates = candidates.filter(created_at__lt=older_than)
    if dry_run:
        counts = candidates.values("kind").annotate(n=Count("pk")).order_by()
        report.deleted = dict.fromkeys(kinds, 0) | {row["kind"]: row["n"] for row in counts}
        return report
    # The ranking runs once; then deletes go 500 rows (with their timelines) per transaction.
    rows = list(candidates.values_list("pk", "kind"))
    ids = [pk for pk, _ in rows]
    for start in range(0, len(ids), ID_CHUNK):
        with transaction.atomic():
            Task.objects.filter(pk__in=ids[start : start + ID_CHUNK]).delete()
    report.deleted = {kind: sum(1 for _, row_kind in rows if row_kind == kind) for kind in kinds}
    return report
