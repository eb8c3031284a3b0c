"""Worker clusters as the database knows them: who runs, the canary that proves it, what happened to them.

``manage.py run_workers`` (``services.watchdog``) registers its cluster here, sends canary jobs and
records each start, restart and stop as an ``EngineEvent``. The canary job (``record_canary``) runs in
a django-q2 worker and writes the proof on the row of the cluster it ran in, found by host and process
group: the queue is shared, so the cluster that sent a canary is not necessarily the one that ran it.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from datetime import datetime, timedelta

import psutil
from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone
from django_q.tasks import async_task

from deployments.clock import format_time
from deployments.log_routine import CANARY_JOB
from deployments.models import EngineEvent, WorkerCluster
from deployments.services.sweeper import SweepReport, resend_lost_handoffs

logger = logging.getLogger(__name__)


def watchdog_bound() -> timedelta:
    """How late a cluster's proof may be before the watchdog restarts it: two canary periods and a grace."""
    return timedelta(seconds=2 * settings.WORKERS_CANARY_SECONDS + settings.WORKERS_CANARY_GRACE_SECONDS)


def supervisor_gone_after() -> timedelta:
    """A supervisor not seen for this long is gone: it stamps its row every canary period."""
    return 2 * watchdog_bound()


def record_event(kind: str, cluster: WorkerCluster | None, message: str) -> EngineEvent:
    logger.log(logging.WARNING if kind == EngineEvent.Kind.CLUSTER_RESTARTED else logging.INFO, "%s: %s", kind, message)
    return EngineEvent.objects.create(kind=kind, cluster=cluster, message=message)


def register_cluster() -> WorkerCluster:
    """A row for this supervisor (close the rows of the host's supervisors that are gone first)."""
    host = socket.gethostname()
    return WorkerCluster.objects.create(
        name=f"{host}:{os.getpid()}:{uuid.uuid4().hex[:8]}",
        host=host,
        supervisor_pid=os.getpid(),
        supervisor_seen_at=timezone.now(),
    )


def abandon_dead_clusters(host: str) -> list[WorkerCluster]:
    """Close the rows of this host whose supervisor process no longer exists (killed, machine rebooted)."""
    abandoned = []
    for cluster in WorkerCluster.objects.filter(host=host, stopped_at__isnull=True):
        if _is_supervisor(cluster.supervisor_pid):
            continue
        if _abandon(cluster, f"its supervisor (pid {cluster.supervisor_pid}) is gone"):
            abandoned.append(cluster)
    return abandoned


def _is_supervisor(pid: int) -> bool:
    """A live run_workers process (pids are reused after a reboot: the pid alone proves nothing)."""
    try:
        return "run_workers" in psutil.Process(pid).cmdline()
    except psutil.Error:
        return False


def abandon_silent_clusters(now: datetime) -> list[WorkerCluster]:
    """Close the rows, on any host, whose supervisor stopped stamping them (its machine may be gone)."""
    silent = WorkerCluster.objects.filter(stopped_at__isnull=True, supervisor_seen_at__lt=now - supervisor_gone_after())
    gone = supervisor_gone_after().total_seconds()
    return [cluster for cluster in silent if _abandon(cluster, f"its supervisor has not been seen for {gone:.0f} s")]


def _abandon(cluster: WorkerCluster, reason: str) -> bool:
    with transaction.atomic():
        if not WorkerCluster.objects.filter(pk=cluster.pk, stopped_at__isnull=True).update(stopped_at=timezone.now()):
            return False
        record_event(
            EngineEvent.Kind.CLUSTER_ABANDONED,
            cluster,
            f"{reason}; its last canary ran at {format_time(cluster.last_canary_at)}",
        )
    return True


def record_cluster_start(cluster: WorkerCluster, cluster_pid: int, reason: str = "") -> None:
    """Note the new qcluster; with a reason it replaces one the watchdog killed (a restart)."""
    WorkerCluster.objects.filter(pk=cluster.pk).update(
        cluster_pid=cluster_pid,
        cluster_started_at=timezone.now(),
        restarts=F("restarts") + (1 if reason else 0),
    )
    cluster.refresh_from_db()
    if reason:
        record_event(EngineEvent.Kind.CLUSTER_RESTARTED, cluster, f"{reason}; started qcluster {cluster_pid}")
    else:
        record_event(EngineEvent.Kind.CLUSTER_STARTED, cluster, f"started qcluster {cluster_pid}")


def record_cluster_stop(cluster: WorkerCluster, message: str) -> None:
    WorkerCluster.objects.filter(pk=cluster.pk).update(stopped_at=timezone.now())
    record_event(EngineEvent.Kind.CLUSTER_STOPPED, cluster, message)


def resend_handoffs_lost_with(killed_at: datetime) -> SweepReport:
    """Re-send each model's next pending task handed over before a cluster was killed.

    The killed pusher may have taken their messages (prefetch): the ORM broker hides them until its
    ``retry`` (minutes), Redis has lost them. Sending twice is harmless: the job checks the row.
    """
    report = SweepReport()
    resend_lost_handoffs(timezone.now(), report, handed_over_before=killed_at)
    return report


def record_all_workers_busy(cluster: WorkerCluster, now: datetime) -> None:
    """Every worker runs a live task: a late canary is excused, here and in /readyz."""
    WorkerCluster.objects.filter(pk=cluster.pk).update(all_busy_at=now)
    cluster.all_busy_at = now


def last_proof(cluster: WorkerCluster) -> datetime:
    """When the cluster last showed it works: its last canary, its start, or all its workers busy."""
    moments = [cluster.cluster_started_at, cluster.last_canary_at, cluster.all_busy_at]
    return max((moment for moment in moments if moment is not None), default=cluster.started_at)


def send_canary(cluster: WorkerCluster) -> None:
    """Enqueue a canary on the shared queue; its argument names the cluster that sent it. Sending is
    also the supervisor's own heartbeat."""
    WorkerCluster.objects.filter(pk=cluster.pk).update(supervisor_seen_at=timezone.now())
    async_task(
        CANARY_JOB,
        cluster.name,
        task_name=f"canary-{cluster.pk}-{uuid.uuid4().hex[:8]}",
        group="canaries",
        save=False,  # every few seconds: keep them out of django-q2's result table
    )


def record_canary(sent_by: str) -> str:
    """The canary job: prove that the cluster this worker belongs to runs jobs.

    The worker is in its qcluster's process group, whose id is the qcluster's pid
    (``run_workers`` starts it in a session of its own).
    """
    now = timezone.now()
    host, group = socket.gethostname(), os.getpgid(0)
    ran_in = WorkerCluster.objects.filter(host=host, cluster_pid=group, stopped_at__isnull=True)
    names = list(ran_in.values_list("name", flat=True))
    ran_in.update(last_canary_at=now)
    if sent_by not in names:
        # Its sender has no proof from this; tell it to send another canary now rather than wait a period.
        WorkerCluster.objects.filter(name=sent_by).update(canary_ran_elsewhere_at=now)
    if not names:
        return f"canary of {sent_by} ran outside any supervised cluster ({host}, process group {group})"
    return f"canary of {sent_by} ran in {names[0]}"
