"""Read side: every query the API, the admin and the task engine make about tasks and models."""

from __future__ import annotations

import uuid

from django.db.models import QuerySet

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


def list_tasks(
    task_model: type[Task], *, embedding_model_id: str | None = None, statuses: list[str] | None = None
) -> QuerySet[Task]:
    tasks = task_model.objects.all()
    if embedding_model_id:
        tasks = tasks.filter(embedding_model_id=embedding_model_id)
    if statuses:
        tasks = tasks.filter(status__in=statuses)
    return tasks.order_by("-created_at", "-sequence")


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
