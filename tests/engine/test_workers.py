"""The canary's proof and the cluster rows, without processes: who ran a canary, and rows of dead supervisors."""

from __future__ import annotations

import os
import socket
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from deployments.jobs import prove_cluster_runs_jobs
from deployments.models import EngineEvent, ModelLease, WorkerCluster
from deployments.selectors import pids_running_live_tasks
from deployments.services.leases import new_lease_owner
from deployments.services.workers import (
    abandon_dead_clusters,
    abandon_silent_clusters,
    register_cluster,
    supervisor_gone_after,
)
from tests.support.factories import RunningDeploymentFactory

pytestmark = pytest.mark.django_db

# A pid that cannot be running: above the kernel's pid_max.
GONE_PID = 2**22 + 1


def test_a_canary_proves_the_cluster_whose_process_group_ran_it():
    # This test process stands for a worker: the cluster whose qcluster leads its process group.
    here = WorkerCluster.objects.create(
        name="here", host=socket.gethostname(), supervisor_pid=os.getpid(), cluster_pid=os.getpgid(0)
    )

    assert prove_cluster_runs_jobs("here") == "canary of here ran in here"

    here.refresh_from_db()
    assert here.last_canary_at is not None and here.canary_ran_elsewhere_at is None


def test_a_canary_run_by_another_cluster_is_no_proof_for_its_sender_who_is_told_to_ask_again():
    sender = WorkerCluster.objects.create(name="sender", host=socket.gethostname(), supervisor_pid=1, cluster_pid=1)
    runner = WorkerCluster.objects.create(
        name="runner", host=socket.gethostname(), supervisor_pid=os.getpid(), cluster_pid=os.getpgid(0)
    )

    assert prove_cluster_runs_jobs("sender") == "canary of sender ran in runner"

    sender.refresh_from_db()
    runner.refresh_from_db()
    assert sender.last_canary_at is None and sender.canary_ran_elsewhere_at is not None
    assert runner.last_canary_at is not None


def test_a_supervisor_closes_the_rows_of_supervisors_of_its_host_that_are_gone():
    gone = WorkerCluster.objects.create(name="gone", host=socket.gethostname(), supervisor_pid=GONE_PID)
    # After a reboot the pid may run something else: only a run_workers process counts as the supervisor.
    WorkerCluster.objects.create(name="reused", host=socket.gethostname(), supervisor_pid=os.getpid())
    elsewhere = WorkerCluster.objects.create(name="elsewhere", host="other-host", supervisor_pid=GONE_PID)

    assert {cluster.name for cluster in abandon_dead_clusters(socket.gethostname())} == {"gone", "reused"}
    mine = register_cluster()

    elsewhere.refresh_from_db()
    assert elsewhere.stopped_at is None and mine.stopped_at is None
    event = EngineEvent.objects.get(kind=EngineEvent.Kind.CLUSTER_ABANDONED, cluster=gone)
    assert f"pid {GONE_PID}" in event.message


def test_a_cluster_whose_supervisor_went_silent_is_closed_on_any_host():
    now = timezone.now()
    silent = WorkerCluster.objects.create(
        name="silent", host="gone-host", supervisor_pid=1, supervisor_seen_at=now - supervisor_gone_after() * 1.5
    )
    alive = WorkerCluster.objects.create(name="alive", host="other-host", supervisor_pid=1, supervisor_seen_at=now)

    assert abandon_silent_clusters(now) == [silent]

    alive.refresh_from_db()
    assert alive.stopped_at is None
    assert "has not been seen for" in EngineEvent.objects.get(cluster=silent).message


def test_run_workers_check_says_whether_a_cluster_of_this_host_runs_jobs():
    with pytest.raises(CommandError, match="no cluster on this host ran a canary"):
        call_command("run_workers", "--check")

    now = timezone.now()
    WorkerCluster.objects.create(
        name="here", host=socket.gethostname(), supervisor_pid=1, supervisor_seen_at=now, last_canary_at=now
    )
    out = StringIO()
    call_command("run_workers", "--check", stdout=out)
    assert out.getvalue().strip() == "ok"


def test_the_watchdog_sees_which_of_its_pids_run_tasks_under_a_lease_they_renew():
    owner = new_lease_owner()  # what a worker of this process would sign its lease with
    live = RunningDeploymentFactory(lease_owner=owner)
    ModelLease.objects.filter(pk=live.embedding_model_id).update(
        owner=owner, expires_at=timezone.now() + timedelta(seconds=60)
    )
    expired_owner = f"{socket.gethostname()}:{GONE_PID}:dead"
    expired = RunningDeploymentFactory(lease_owner=expired_owner)
    ModelLease.objects.filter(pk=expired.embedding_model_id).update(owner=expired_owner, expires_at=timezone.now())

    assert pids_running_live_tasks(socket.gethostname()) == {os.getpid()}
    assert pids_running_live_tasks("another-host") == set()
