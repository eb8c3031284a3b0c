"""Read side: every query the API, the admin and the task engine make about tasks and models."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import Count, Exists, OuterRef, Q, QuerySet, Subquery
from django.utils import timezone

from deployments.models import (
    ACTIVE_STATUSES,
    DeletionTask,
    DeploymentTask,
    EmbeddingModel,
    ModelLease,
    Task,
    TaskStatus,
)

TASK_MODELS: dict[str, type[Task]] = {DeploymentTask.KIND: DeploymentTask, DeletionTask.KIND: DeletionTask}


def get_task(task_model: type[Task], task_id: uuid.UUID | str) -> Task | None:
    return task_model.objects.filter(pk=task_id).first()


def find_task(task_id: uuid.UUID | str) -> Task | None:
    """A task of either kind (task ids are unique across kinds)."""
    for task_model in TASK_MODELS.values():
        if task := get_task(task_model, task_id):
            return task
    return None


def latest_task_for_model(task_model: type[Task], embedding_model_id: str) -> Task | None:
    """The most recently submitted task of that kind for the model (the origin returned the first one).

    Served by the (embedding_model_id, sequence, attempt) index read backwards: one seek,
    whatever the number of rows.
    """
    return task_model.objects.filter(embedding_model_id=embedding_model_id).order_by("-sequence", "-attempt").first()


def task_events(task: Task) -> QuerySet:
    return task.events.order_by("id")


def earlier_unfinished_task_exists(task: Task) -> bool:
    """True while a task of the same model submitted before ``task`` is pending or processing."""
    return any(
        task_model.objects.filter(
            embedding_model_id=task.embedding_model_id, sequence__lt=task.sequence, status__in=ACTIVE_STATUSES
        ).exists()
        for task_model in TASK_MODELS.values()
    )


def head_task_for_model(embedding_model_id: str) -> Task | None:
    """The unfinished task of the model that was submitted first: the only one allowed to run next."""
    heads = [
        task_model.objects.filter(embedding_model_id=embedding_model_id, status__in=ACTIVE_STATUSES)
        .order_by("sequence", "attempt")
        .first()
        for task_model in TASK_MODELS.values()
    ]
    heads = [task for task in heads if task is not None]
    return min(heads, key=lambda task: (task.sequence, task.attempt)) if heads else None


def models_with_pending_tasks() -> set[str]:
    model_ids: set[str] = set()
    for task_model in TASK_MODELS.values():
        model_ids.update(
            task_model.objects.filter(status=TaskStatus.PENDING).values_list("embedding_model_id", flat=True).distinct()
        )
    return model_ids


def processing_tasks() -> list[Task]:
    return [
        task for task_model in TASK_MODELS.values() for task in task_model.objects.filter(status=TaskStatus.PROCESSING)
    ]


def get_lease(embedding_model_id: str) -> ModelLease | None:
    return ModelLease.objects.filter(pk=embedding_model_id).first()


def get_embedding_model(embedding_model_id: str) -> EmbeddingModel | None:
    return EmbeddingModel.objects.filter(pk=embedding_model_id).first()


def list_embedding_models() -> QuerySet[EmbeddingModel]:
    return EmbeddingModel.objects.order_by("id")


# -- Operators: the admin's lists and dashboard, the management commands ----------------------


def _latest_task_subquery(task_model: type[Task], column: str) -> Subquery:
    latest = task_model.objects.filter(embedding_model_id=OuterRef("pk")).order_by("-sequence", "-attempt")
    return Subquery(latest.values(column)[:1])


def with_latest_tasks(models: QuerySet[EmbeddingModel]) -> QuerySet[EmbeddingModel]:
    """Each model with the id and status of its latest deployment and deletion task, in the same query
    (each column is one seek on the (embedding_model_id, sequence, attempt) index)."""
    return models.annotate(
        latest_deployment_id=_latest_task_subquery(DeploymentTask, "pk"),
        latest_deployment_status=_latest_task_subquery(DeploymentTask, "status"),
        latest_deletion_id=_latest_task_subquery(DeletionTask, "pk"),
        latest_deletion_status=_latest_task_subquery(DeletionTask, "status"),
    )


def embedding_model_ids(*, states: Sequence[str] | None = None, limit: int | None = None) -> list[str]:
    """Registered model ids in id order, optionally only those in the given states, at most ``limit``."""
    models = EmbeddingModel.objects.all()
    if states:
        models = models.filter(state__in=states)
    return list(models.order_by("pk").values_list("pk", flat=True)[:limit])


def tasks_by_ids(task_model: type[Task], task_ids: Sequence[uuid.UUID]) -> list[Task]:
    tasks: list[Task] = []
    for start in range(0, len(task_ids), 500):
        tasks.extend(task_model.objects.filter(pk__in=task_ids[start : start + 500]))
    return tasks


def filter_tasks(
    task_model: type[Task],
    *,
    statuses: Sequence[str] | None = None,
    embedding_model_id: str | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
) -> QuerySet[Task]:
    """A kind's tasks, newest first, narrowed by status, model and creation time."""
    tasks = task_model.objects.all()
    if statuses:
        tasks = tasks.filter(status__in=statuses)
    if embedding_model_id:
        tasks = tasks.filter(embedding_model_id=embedding_model_id)
    if created_after:
        tasks = tasks.filter(created_at__gte=created_after)
    if created_before:
        tasks = tasks.filter(created_at__lt=created_before)
    return tasks.order_by("-created_at")


def recent_tasks(task_models: Sequence[type[Task]], *, limit: int, **filters: Any) -> list[Task]:
    """The ``limit`` newest tasks across kinds: the newest ``limit`` of each kind, merged."""
    tasks = [task for task_model in task_models for task in filter_tasks(task_model, **filters)[:limit]]
    return sorted(tasks, key=lambda task: task.created_at, reverse=True)[:limit]


@dataclass(frozen=True)
class Dashboard:
    """What the admin's index shows an operator first."""

    in_flight: dict[str, dict[str, int]]  # kind -> status -> count (pending, processing)
    running: list[Task]  # processing tasks, oldest first
    outcomes_24h: dict[str, dict[str, int]]  # kind -> status -> count of tasks created in the last 24 hours
    latest_failures: list[Task]
    deployed_models: list[EmbeddingModel]
    slot_count: int  # models holding a slot on the server (deploying, deployed, deleting)
    max_deployed: int

    @property
    def in_flight_total(self) -> int:
        return sum(sum(counts.values()) for counts in self.in_flight.values())


def dashboard(now: datetime | None = None, *, failures: int = 8) -> Dashboard:
    """A fixed number of small queries, each served by an index, whatever the number of tasks.

    In-flight counts use the partial (pending, processing) index; the last 24 hours and the
    latest failures read the created_at index backwards.
    """
    now = now or timezone.now()
    since = now - timedelta(hours=24)
    in_flight: dict[str, dict[str, int]] = {}
    outcomes: dict[str, dict[str, int]] = {}
    running: list[Task] = []
    failed: list[Task] = []
    for kind, task_model in TASK_MODELS.items():
        active = (
            task_model.objects.filter(status__in=ACTIVE_STATUSES).values("status").annotate(n=Count("pk")).order_by()
        )
        in_flight[kind] = {status: 0 for status in ACTIVE_STATUSES} | {row["status"]: row["n"] for row in active}
        # One conditional count per status over the created_at range, not GROUP BY status: grouping
        # tempts SQLite into walking the whole (status, created_at) index instead of the last day.
        outcomes[kind] = task_model.objects.filter(created_at__gte=since).aggregate(
            **{status: Count("pk", filter=Q(status=status)) for status in TaskStatus.values}
        )
        running.extend(task_model.objects.filter(status=TaskStatus.PROCESSING).order_by("started_at")[:20])
        failed.extend(
            task_model.objects.filter(status__in=[TaskStatus.FAILED, TaskStatus.REFUSED]).order_by("-created_at")[
                :failures
            ]
        )
    deployed = list(EmbeddingModel.objects.filter(state=EmbeddingModel.State.DEPLOYED).order_by("pk"))
    return Dashboard(
        in_flight=in_flight,
        running=sorted(running, key=lambda task: task.started_at or task.created_at)[:20],
        outcomes_24h=outcomes,
        latest_failures=sorted(failed, key=lambda task: task.created_at, reverse=True)[:failures],
        deployed_models=deployed,
        slot_count=EmbeddingModel.objects.filter(state__in=EmbeddingModel.SLOT_STATES).count(),
        max_deployed=settings.MAX_DEPLOYED_MODELS,
    )


def latest_attempts(tasks: QuerySet[Task]) -> QuerySet[Task]:
    """Only tasks that have not been retried yet (no newer attempt links to them)."""
    return tasks.filter(~Exists(tasks.model.objects.filter(retry_of=OuterRef("pk"))))
