"""The sweeper: nothing stays pending or processing forever.

Run every TASK_SWEEP_MINUTES by django-q2 (schedule "deployments: sweep tasks") and on demand by
``manage.py reap_tasks``; ``manage.py run_workers`` also resolves expired leases every
``lease_renewal_seconds()``, and the leases of a worker it sees die at once. It
- resolves tasks whose worker died: their lease expired without renewal, or the worker's supervisor
  saw its process end. The attempt is marked failed with the reason and, below TASK_MAX_ATTEMPTS,
  retried as a new attempt that keeps its place in the model's queue; blue was never touched by a
  half-done green, so it keeps serving;
- re-sends the next pending task of a model whose hand-off to the queue was lost.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django_q.models import Schedule

from deployments import selectors
from deployments.clock import format_time
from deployments.log_routine import SWEEP_JOB, SWEEP_SCHEDULE_NAME
from deployments.models import HANDOFF_RESENT, HANDOFF_STAGE, ModelLease, Task, TaskStatus
from deployments.services.deployer import deployer_session
from deployments.services.leases import (
    Lease,
    lease_duration,
    lease_is_held,
    new_lease_owner,
    release_lease,
    take_over_lease,
)
from deployments.services.pipelines import sync_model_state
from deployments.services.recording import record_event
from deployments.services.tasks import dispatch, dispatch_next_task, retry_lost_attempt
from deployments.services.transitions import transition
from deployments.task_ids import new_task_id

logger = logging.getLogger(__name__)

# How the sweeper signs what it changes on a task's timeline.
SWEEPER = "sweeper"


@dataclass
class SweepReport:
    failed: list[str] = field(default_factory=list)
    retried: list[str] = field(default_factory=list)
    resent: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{len(self.failed)} lost attempt(s) resolved, {len(self.retried)} retried, {len(self.resent)} re-sent"


def sweep_tasks(now: datetime | None = None) -> SweepReport:
    now = now or timezone.now()
    report = SweepReport()
    resolve_expired_leases(now, report)
    resolve_orphaned_processing(now, report)
    resend_lost_handoffs(now, report)
    if report.failed or report.resent:
        logger.info("sweep: %s", report)
    return report


def resolve_expired_leases(now: datetime, report: SweepReport) -> None:
    # Expired by the database's clock (see leases): ``now`` only dates the sweep's other decisions.
    for lease in selectors.expired_leases():
        expired = format_time(lease.expires_at)
        reason = f"worker {lease.owner} stopped renewing its lease on {lease.pk} (expired {expired})"
        resolve_lost_lease(lease, reason, report)


def resolve_leases_of_dead_process(host: str, pid: int, is_still_gone: Callable[[], bool], why: str) -> SweepReport:
    """Resolve at once the tasks of the leases that process ``pid`` of ``host`` held when it died.

    Its supervisor saw it die, so nobody waits for the leases to run out. ``is_still_gone`` is asked
    after the leases are read: should the pid run again by then (reused), they may be the new
    process's, and are left to expire if it is in fact dead. Each take names the owner and
    generation read, so a lease taken meanwhile by someone alive is never touched.
    """
    report = SweepReport()
    held = selectors.leases_held_by_process(host, pid)
    if not held or not is_still_gone():
        return report
    for lease in held:
        resolve_lost_lease(lease, f"worker {lease.owner} died ({why})", report, holder_is_dead=True)
    return report


def resolve_lost_lease(lost: ModelLease, reason: str, report: SweepReport, *, holder_is_dead: bool = False) -> None:
    """Take over a lease whose holder is lost, fail (and retry) the task it ran, and let the model go."""
    sweeper = new_lease_owner()
    with transaction.atomic():
        # Take the lease over (a new generation), so no worker starts on the model while we resolve
        # it, and the lost holder's fence fails should it wake up.
        taken = take_over_lease(Lease(lost.pk, lost.owner, lost.generation), sweeper, holder_is_dead=holder_is_dead)
        if taken is None:
            return  # renewed, released or taken by someone else since it was read: not lost
        task = selectors.find_task(lost.task_id) if lost.task_id else None
        if task is not None and task.status == TaskStatus.PROCESSING and task.lease_owner == lost.owner:
            _resolve_lost_attempt(task, reason, report)
        release_lease(lost.pk, sweeper)
        transaction.on_commit(partial(dispatch_next_task, lost.pk))


def resolve_orphaned_processing(now: datetime, report: SweepReport) -> None:
    """Processing tasks whose worker holds no lease on their model (e.g. the lease row was reset)."""
    stale_before = now - lease_duration()
    for task in selectors.processing_tasks():
        lease = selectors.get_lease(task.embedding_model_id)
        if lease is not None and lease.owner == task.lease_owner:
            continue  # covered by its lease: alive, or resolved above once it expires
        if task.updated_at >= stale_before:
            continue
        with transaction.atomic():
            _resolve_lost_attempt(task, f"worker {task.lease_owner or '?'} no longer holds the model's lease", report)
            transaction.on_commit(partial(dispatch_next_task, task.embedding_model_id))


def _resolve_lost_attempt(task: Task, reason: str, report: SweepReport) -> None:
    retry_id = new_task_id() if task.attempt < settings.TASK_MAX_ATTEMPTS else None
    if retry_id:
        detail = f"{reason}; retried as attempt {task.attempt + 1} (task {retry_id})"
    else:
        detail = f"{reason}; gave up after {task.attempt} attempt(s)"
    metadata = {**task.metadata, "lost": True, "retried_as": str(retry_id) if retry_id else None}
    # Conditional: if the worker finished after all, its outcome stands and nothing is retried.
    if not transition(task, TaskStatus.FAILED, detail=detail, metadata=metadata, by=SWEEPER):
        return
    stages = list(task.metadata.get("stages", {}))
    record_event(task, stages[-1] if stages else "worker", "failed", detail, actor=SWEEPER)
    report.failed.append(str(task.pk))
    if retry_id:
        retry_lost_attempt(task, retry_id, by=SWEEPER)
        report.retried.append(str(retry_id))
    else:
        _sync_model_after_giving_up(task.embedding_model_id)


def _sync_model_after_giving_up(embedding_model_id: str) -> None:
    """No attempt is left to finish the job: set the registry from what the repository says is live,
    so the model does not hold a `deploying` slot forever."""
    try:
        with deployer_session() as deployer:
            sync_model_state(embedding_model_id, deployer)
    except Exception:
        logger.exception("could not resynchronize %s after its last attempt was lost", embedding_model_id)


def resend_lost_handoffs(now: datetime, report: SweepReport, handed_over_before: datetime | None = None) -> None:
    """Hand over again each model's next pending task that has waited too long without starting
    (or, given ``handed_over_before``, that was handed over before then: to a cluster since killed)."""
    cluster_killed = handed_over_before is not None
    if handed_over_before is None:
        handed_over_before = now - timedelta(seconds=settings.TASK_HANDOFF_GRACE_SECONDS)
    for embedding_model_id in selectors.models_with_pending_tasks():
        head = selectors.head_task_for_model(embedding_model_id)
        if head is None or head.status != TaskStatus.PENDING:
            continue
        last_handoff = head.dispatched_at or head.created_at
        if last_handoff > handed_over_before:
            continue
        if lease_is_held(embedding_model_id):
            continue
        try:
            dispatch([head])
            report.resent.append(str(head.pk))
        except Exception:
            logger.exception("re-sending %s task %s failed", head.kind, head.pk)
            continue
        if cluster_killed:
            why = "the worker cluster it was handed to was killed"
        elif head.dispatched_at is None:
            why = "its first hand-off to the queue had failed"
        else:
            why = f"no worker took it within {settings.TASK_HANDOFF_GRACE_SECONDS:g} s"
        # On the task's timeline, so a task still pending says its hand-off was sent again, and when.
        record_event(head, HANDOFF_STAGE, HANDOFF_RESENT, f"hand-off re-sent: {why}", actor=SWEEPER)


def ensure_sweep_schedule() -> None:
    """Create (or update) the django-q2 schedule that runs the sweeper."""
    Schedule.objects.update_or_create(
        name=SWEEP_SCHEDULE_NAME,
        defaults={
            "func": SWEEP_JOB,
            "schedule_type": Schedule.MINUTES,
            "minutes": settings.TASK_SWEEP_MINUTES,
            "repeats": -1,
        },
    )
