"""The worker side: run one task under its model's lease, record its timeline, and always finish it.

Order and exclusivity: a task runs only when no earlier task of its model is unfinished and its
worker holds the model's lease. A worker that cannot run a task yet does not wait (it would pin a
django-q worker); it returns, and whoever finishes the task ahead hands the next one over.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction
from django.utils import timezone

from deployments import selectors
from deployments.inference import StageEvent
from deployments.models import DeploymentTask, Task, TaskStatus
from deployments.services.leases import LeaseHeartbeat, claim_lease, new_lease_owner, release_lease
from deployments.services.tasks import record_event, wake_model

logger = logging.getLogger(__name__)


@dataclass
class Outcome:
    """How a pipeline ended: the final status, a one-line detail and what to merge into metadata."""

    status: str
    detail: str
    metadata: dict[str, Any] = field(default_factory=dict)


class TaskRecorder:
    """The serving layer's progress callback: each StageEvent becomes a TaskEvent and a metadata entry."""

    def __init__(self, task: Task, owner: str):
        self.task = task
        self.owner = owner
        self.current_stage: str | None = None

    def __call__(self, event: StageEvent) -> None:
        self.current_stage = event.stage if event.state == "started" else None
        record_event(self.task, event.stage, event.state, event.message, event.duration_s)
        stages = self.task.metadata.setdefault("stages", {})
        stages[event.stage] = {"state": event.state, "message": event.message, "duration_s": event.duration_s}
        if event.duration_s is not None:
            self.task.metadata.setdefault("timings", {})[event.stage] = event.duration_s
        # Conditional on still owning the task: a worker the sweeper gave up on must not write over it.
        type(self.task).objects.filter(pk=self.task.pk, status=TaskStatus.PROCESSING, lease_owner=self.owner).update(
            metadata=self.task.metadata, updated_at=timezone.now()
        )


def run_task(task_model: type[Task], task_id: uuid.UUID | str) -> str:
    """Run the task if it is its model's turn; return what happened (for the queue's result log)."""
    task = selectors.get_task(task_model, task_id)
    if task is None:
        return "missing"
    if task.status != TaskStatus.PENDING:
        return f"already {task.status}"
    if selectors.earlier_unfinished_task_exists(task):
        return "waiting: an earlier task of this model is unfinished"
    owner = new_lease_owner()
    if not claim_lease(task, owner):
        return "waiting: another worker holds the model's lease"
    now = timezone.now()
    started = task_model.objects.filter(pk=task.pk, status=TaskStatus.PENDING).update(
        status=TaskStatus.PROCESSING, lease_owner=owner, started_at=now, updated_at=now
    )
    if not started:  # canceled (or run by a duplicate message) between our read and the claim
        release_lease(task.embedding_model_id, owner)
        wake_model(task.embedding_model_id)
        return "not pending anymore"
    task.refresh_from_db()
    outcome = _run_pipeline(task, owner)
    finished = finish_task(task, owner, outcome)
    release_lease(task.embedding_model_id, owner)
    wake_model(task.embedding_model_id)
    return outcome.status if finished else "lost: the sweeper resolved this attempt"


def _run_pipeline(task: Task, owner: str) -> Outcome:
    from deployments.services.pipelines import run_deletion, run_deployment

    recorder = TaskRecorder(task, owner)
    pipeline = run_deployment if isinstance(task, DeploymentTask) else run_deletion
    try:
        with LeaseHeartbeat(task.embedding_model_id, owner):
            return pipeline(task, recorder)
    except Exception as exc:
        # Whatever went wrong, the task ends: a task left in `processing` would block its model forever.
        stage = recorder.current_stage or "worker"
        logger.exception("%s task %s failed unexpectedly at %s", task.KIND, task.pk, stage)
        record_event(task, stage, "failed", f"unexpected error: {exc!r}")
        return Outcome(TaskStatus.FAILED, f"{stage}: unexpected error: {exc}", {"failed_stage": stage})


def finish_task(task: Task, owner: str, outcome: Outcome) -> bool:
    """Write the outcome, unless the sweeper already resolved this attempt (its lease had expired)."""
    task.metadata.update(outcome.metadata)
    now = timezone.now()
    if task.started_at:
        task.metadata.setdefault("timings", {})["total"] = round((now - task.started_at).total_seconds(), 4)
    with transaction.atomic():
        finished = (
            type(task)
            .objects.filter(pk=task.pk, status=TaskStatus.PROCESSING, lease_owner=owner)
            .update(
                status=outcome.status, detail=outcome.detail, metadata=task.metadata, finished_at=now, updated_at=now
            )
        )
    if finished:
        task.status, task.detail, task.finished_at = outcome.status, outcome.detail, now
    else:
        logger.warning("%s task %s was resolved by the sweeper before %s finished it", task.KIND, task.pk, owner)
    return bool(finished)
