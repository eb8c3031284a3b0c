"""The worker side: run one task under its model's lease, record its timeline, and always finish it.

Order and exclusivity: a task runs only when no earlier task of its model is unfinished and its
worker holds the model's lease. A worker that cannot run a task yet does not wait (it would pin a
django-q worker); it returns, and whoever finishes the task ahead dispatches the next one.
"""

from __future__ import annotations

import logging

from django.utils import timezone

from deployments import metrics, selectors
from deployments.inference import FenceLost
from deployments.log_context import task_log_context
from deployments.models import Task, TaskKind, TaskStatus
from deployments.services.leases import Fence, Lease, LeaseHeartbeat, claim_lease, new_lease_owner, release_lease
from deployments.services.pipelines import run_deletion, run_deployment
from deployments.services.reconnect import reconnecting
from deployments.services.recording import Outcome, TaskRecorder, record_event
from deployments.services.tasks import dispatch_next_task
from deployments.services.transitions import transition

logger = logging.getLogger(__name__)

PIPELINES = {TaskKind.DEPLOYMENT: run_deployment, TaskKind.DELETION: run_deletion}


def run_task(task_id: str) -> str:
    """Run the task if it is its model's turn; return what happened (for the queue's result log)."""
    task = selectors.find_task(task_id)
    if task is None:
        return "missing"
    if task.status != TaskStatus.PENDING:
        return f"already {task.status}"
    with task_log_context(task.pk, task.embedding_model_id, task.attempt):
        return _run_in_turn(task)


def _run_in_turn(task: Task) -> str:
    if selectors.earlier_unfinished_task_exists(task):
        return "waiting: an earlier task of this model is unfinished"
    owner = new_lease_owner()
    lease = claim_lease(task, owner)
    if lease is None:
        return "waiting: another worker holds the model's lease"
    try:
        if not transition(task, TaskStatus.PROCESSING, by=owner):
            return "not pending anymore"  # canceled (or run by a duplicate message) between our read and the claim
        return _run_and_finish(task, lease)
    finally:
        # Whatever happened, the model is let go and its next task sent (both no-ops once superseded).
        release_lease(task.embedding_model_id, owner)
        dispatch_next_task(task.embedding_model_id)


# What the task says when its worker is stopped mid-pipeline (django-q's timeout is a SystemExit).
STOPPED = Outcome(
    TaskStatus.FAILED, "worker: stopped before the task ended (timeout or shutdown)", {"failed_stage": "worker"}
)


def _run_and_finish(task: Task, lease: Lease) -> str:
    with LeaseHeartbeat(task.embedding_model_id, lease.owner) as heartbeat:
        fence = Fence(lease, heartbeat)
        outcome: Outcome | None = STOPPED
        try:
            outcome = _run_pipeline(task, fence)
        finally:
            # In ``finally``: even a worker being stopped finishes its task, unless it was superseded.
            finished = outcome is not None and finish_task(task, outcome, fence)
    if outcome is None:
        return "superseded: another attempt holds the model's lease; this one changed nothing more"
    return outcome.status if finished else "lost: the sweeper resolved this attempt"


def _run_pipeline(task: Task, fence: Fence) -> Outcome | None:
    """The pipeline's outcome, or None when the attempt was superseded and must write nothing more."""
    recorder = TaskRecorder(task, fence.lease.owner, fence)
    try:
        return PIPELINES[task.kind](task, recorder, fence)
    except FenceLost as exc:
        logger.warning("%s task %s stopped: %s", task.kind, task.pk, exc)
        return None
    except Exception as exc:
        # Whatever went wrong, the task ends: a task left in `processing` would block its model forever.
        # The failure is recorded under the stage it happened in (the serving layer may have done so).
        stage = recorder.current_stage or recorder.failed_stage or "worker"
        logger.exception("%s task %s failed unexpectedly at %s", task.kind, task.pk, stage)
        if recorder.current_stage:
            record_event(task, stage, "failed", f"unexpected error: {exc!r}", actor=fence.lease.owner)
        return Outcome(TaskStatus.FAILED, f"{stage}: unexpected error: {exc}", {"failed_stage": stage})


@reconnecting
def finish_task(task: Task, outcome: Outcome, fence: Fence | None = None) -> bool:
    """Write the outcome, unless the sweeper already resolved this attempt (its lease had expired)."""
    task.metadata.update(outcome.metadata)
    if task.started_at:
        task.metadata.setdefault("timings", {})["total"] = round((timezone.now() - task.started_at).total_seconds(), 4)
    finished = transition(
        task,
        outcome.status,
        detail=outcome.detail,
        metadata=task.metadata,
        by=task.lease_owner,
        only_if=fence.condition if fence is not None else None,
    )
    if finished and task.kind == TaskKind.DEPLOYMENT and outcome.status == TaskStatus.DONE and task.started_at:
        metrics.observe_deploy(task.metadata["timings"]["total"])
    if not finished:
        logger.warning(
            "%s task %s was resolved by the sweeper before %s finished it", task.kind, task.pk, task.lease_owner
        )
    return finished
