"""Drills on a real ``manage.py run_workers``: kill what django-q2 cannot survive, and time the recovery.

django-q2's issue #23: a worker killed while it is next in line for the task queue takes the queue's
lock with it, and the cluster never runs another job. The watchdog must notice (no canary ran) and
restart the whole cluster within its bound; a task submitted meanwhile must still end ``done``.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from django.utils import timezone
from django_q.models import Schedule

from deployments import services
from deployments.models import TERMINAL_STATUSES, EngineEvent, Task, TaskStatus, WorkerCluster
from deployments.services.faults import HOLD_AT_ENV, HOLD_FILE_ENV
from deployments.services.leases import lease_renewal_seconds
from deployments.services.sweeper import SWEEP_SCHEDULE_NAME
from deployments.services.watchdog import process_group
from deployments.services.workers import watchdog_bound
from tests.support.drills import held_worker_pid, wait_for_superseded_attempt_to_stop
from tests.support.factories import EmbeddingModelFactory
from tests.support.processes import SupervisedWorkers, wait_for, wait_for_status
from tests.support.snapshots import rows

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.drill]

# Short periods, so a drill takes seconds: a canary every second, a wedge detected after 4 s.
CANARY_SECONDS, GRACE_SECONDS = 1, 2
# What a restart costs beyond the watchdog's bound: the new qcluster's start (about 1-2 s here) and the task.
START_ALLOWANCE_SECONDS = 8


@pytest.fixture
def drill_settings(settings):
    settings.INFERENCE_DEPLOYER_FACTORY = "tests.support.probes.build_probe_deployer"
    settings.WORKERS_CANARY_SECONDS = CANARY_SECONDS
    settings.WORKERS_CANARY_GRACE_SECONDS = GRACE_SECONDS
    return settings


def start_proven_cluster(run_workers, **env: str) -> tuple[SupervisedWorkers, WorkerCluster]:
    periods = {"WORKERS_CANARY_SECONDS": str(CANARY_SECONDS), "WORKERS_CANARY_GRACE_SECONDS": str(GRACE_SECONDS)}
    workers = run_workers(**(periods | env))

    def proven() -> WorkerCluster | None:
        return WorkerCluster.objects.filter(supervisor_pid=workers.process.pid, last_canary_at__isnull=False).first()

    cluster = wait_for(proven, 30, "the supervised cluster to run its first canary", workers.log_tail)
    wait_for(lambda: workers.worker_pids(cluster.cluster_pid), 10, "the workers to announce themselves")
    return workers, cluster


def recovery_bound() -> float:
    return watchdog_bound().total_seconds() + START_ALLOWANCE_SECONDS


def submit_and_time(workers: SupervisedWorkers, since: float, model_id: str) -> float:
    task = services.submit_deployment(EmbeddingModelFactory(id=model_id).id).task
    wait_for_status(task, set(TERMINAL_STATUSES), timeout=recovery_bound() + 20, cluster=workers)
    elapsed = time.monotonic() - since
    assert task.status == TaskStatus.DONE, task.detail
    return elapsed


@pytest.mark.parametrize("q_workers", ["1", "2"])
def test_an_idle_worker_killed_the_next_task_still_ends_done_within_the_bound(drill_settings, run_workers, q_workers):
    workers, cluster = start_proven_cluster(run_workers, Q_WORKERS=q_workers)

    killed_at = time.monotonic()
    os.kill(workers.worker_pids(cluster.cluster_pid)[0], signal.SIGKILL)
    elapsed = submit_and_time(workers, killed_at, f"after-worker-kill-{q_workers}")

    restarts = EngineEvent.objects.filter(kind=EngineEvent.Kind.CLUSTER_RESTARTED, cluster=cluster)
    wedged = "wedged, restarted" if restarts.exists() else "not wedged"
    print(f"\n{q_workers} worker(s), one killed ({wedged}): the next task done {elapsed:.1f} s after the kill")
    assert elapsed <= recovery_bound(), workers.log_tail()
    if q_workers == "1":
        # The only worker is always next in line: its death wedges the cluster (#23), the watchdog restarts it.
        assert restarts.count() == 1, workers.log_tail()
        assert "no canary ran" in restarts.get().message
    cluster.refresh_from_db()
    assert cluster.restarts == restarts.count()


def test_every_process_of_the_cluster_but_qcluster_killed_it_is_restarted_and_runs_tasks_and_the_sweeper(
    drill_settings, run_workers
):
    workers, cluster = start_proven_cluster(run_workers)
    children = [process for process in process_group(cluster.cluster_pid) if process.pid != cluster.cluster_pid]

    killed_at = time.monotonic()
    for process in children:
        process.kill()
    elapsed = submit_and_time(workers, killed_at, "after-cluster-kill")

    print(f"\nevery child of qcluster killed: the next task done {elapsed:.1f} s after the kill")
    assert elapsed <= recovery_bound(), workers.log_tail()
    restart = EngineEvent.objects.get(kind=EngineEvent.Kind.CLUSTER_RESTARTED, cluster=cluster)
    killed_pid = cluster.cluster_pid
    cluster.refresh_from_db()
    assert cluster.restarts == 1 and cluster.cluster_pid != killed_pid
    assert f"qcluster {killed_pid} exited" in restart.message or "no canary ran" in restart.message
    assert process_group(killed_pid) == []  # nothing of the old cluster is left to consume the queue

    # The sweeper is a schedule the new cluster's scheduler runs (django-q2 looks every 30 s).
    sweep = Schedule.objects.get(name=SWEEP_SCHEDULE_NAME)
    Schedule.objects.filter(pk=sweep.pk).update(next_run=timezone.now())
    wait_for(
        lambda: Schedule.objects.get(pk=sweep.pk).next_run > timezone.now(), 45, "the sweeper to be scheduled again"
    )


def test_a_cluster_busy_with_live_tasks_on_every_worker_is_not_restarted(drill_settings, run_workers):
    # One worker, one task of 7 stages x 1 s: longer than the watchdog's bound, with its lease renewed.
    workers, cluster = start_proven_cluster(run_workers, Q_WORKERS="1", PROBE_STAGE_PAUSE="1")
    task = services.submit_deployment(EmbeddingModelFactory(id="long-task").id).task

    wait_for_status(task, set(TERMINAL_STATUSES), timeout=30, cluster=workers)

    assert task.status == TaskStatus.DONE, task.detail
    assert (task.finished_at - task.started_at).total_seconds() > watchdog_bound().total_seconds()
    assert not EngineEvent.objects.filter(kind=EngineEvent.Kind.CLUSTER_RESTARTED).exists(), workers.log_tail()
    cluster.refresh_from_db()
    assert cluster.all_busy_at is not None  # the watchdog saw the late canary excused, and /readyz does too


def test_sigterm_stops_the_supervisor_and_every_process_of_its_cluster(drill_settings, run_workers):
    workers, cluster = start_proven_cluster(run_workers, WORKERS_STOP_SECONDS="3")
    assert process_group(cluster.cluster_pid)

    started = time.monotonic()
    workers.process.send_signal(signal.SIGTERM)
    returncode = workers.process.wait(20)

    assert returncode == 0, workers.log_tail()
    assert time.monotonic() - started < 3 + 5
    assert process_group(cluster.cluster_pid) == []
    cluster.refresh_from_db()
    assert cluster.stopped_at is not None
    assert EngineEvent.objects.filter(kind=EngineEvent.Kind.CLUSTER_STOPPED, cluster=cluster).exists()


def test_the_qcluster_of_a_killed_supervisor_is_ended_by_the_next_supervisor_on_its_host(drill_settings, run_workers):
    first, cluster = start_proven_cluster(run_workers)
    first.process.kill()  # the supervisor alone: its qcluster, in a session of its own, keeps consuming
    first.process.wait()
    assert process_group(cluster.cluster_pid)

    start_proven_cluster(run_workers)

    assert process_group(cluster.cluster_pid) == []
    cluster.refresh_from_db()
    assert cluster.stopped_at is not None
    assert EngineEvent.objects.filter(kind=EngineEvent.Kind.CLUSTER_ABANDONED, cluster=cluster).exists()


# -- a worker that dies or is paused mid-task, with the default lease --------------------------

# Beyond the requirement's 15 s: a loaded 2-core machine slows the supervisor's 0.5 s look at its
# processes, the retry's hand-off (the ORM broker is polled every 0.2 s) and the idle worker's start
# of it by a second or two; 3 s covers that with room.
LOADED_MACHINE_MARGIN_SECONDS = 3
DEAD_WORKER_RETRY_BOUND_SECONDS = 15


def start_held_deploy(run_workers, model_id: str, hold: Path) -> tuple[SupervisedWorkers, Task, int]:
    """A supervised cluster (canaries at their defaults) whose worker holds the first attempt at its bake."""
    workers = run_workers(**{HOLD_AT_ENV: "bake", HOLD_FILE_ENV: str(hold)})
    wait_for(
        lambda: WorkerCluster.objects.filter(supervisor_pid=workers.process.pid, cluster_pid__isnull=False).exists(),
        30,
        "the supervisor to start its cluster",
        workers.log_tail,
    )
    task = services.submit_deployment(EmbeddingModelFactory(id=model_id).id).task
    return workers, task, held_worker_pid(hold, timeout=60)


def seconds_until_the_retry_starts(first: Task, since: float, bound: float, workers: SupervisedWorkers) -> float:
    def retry_started() -> Task | None:
        return Task.objects.filter(retry_of=first, started_at__isnull=False).first()

    retry = wait_for(retry_started, bound + 30, f"a retry of {first.pk} to start", workers.log_tail)
    return retry.started_at.timestamp() - since


def test_the_task_of_a_killed_busy_worker_is_retried_within_seconds(settings, run_workers, tmp_path):
    settings.INFERENCE_DEPLOYER_FACTORY = "tests.support.probes.build_probe_deployer"
    workers, first, worker = start_held_deploy(run_workers, "killed-in-bake", tmp_path / "hold")

    killed_at = time.time()
    os.kill(worker, signal.SIGKILL)
    elapsed = seconds_until_the_retry_starts(first, killed_at, DEAD_WORKER_RETRY_BOUND_SECONDS, workers)

    print(f"\nbusy worker SIGKILLed: its retry started {elapsed:.1f} s later (lease {settings.TASK_LEASE_SECONDS:g} s)")
    assert elapsed <= DEAD_WORKER_RETRY_BOUND_SECONDS + LOADED_MACHINE_MARGIN_SECONDS, workers.log_tail()
    first.refresh_from_db()
    assert first.status == TaskStatus.FAILED and first.metadata["lost"] is True
    # Seen dying, as a rule; should the supervisor's look miss it, the bound above still held.
    assert f"died (its process {worker} ended)" in first.detail or "stopped renewing its lease" in first.detail
    retry = wait_for_status(Task.objects.get(retry_of=first), set(TERMINAL_STATUSES), timeout=30, cluster=workers)
    assert retry.status == TaskStatus.DONE, retry.detail


def test_the_task_of_a_paused_worker_is_taken_over_after_its_lease_and_its_late_writes_are_fenced(
    settings, run_workers, tmp_path
):
    settings.INFERENCE_DEPLOYER_FACTORY = "tests.support.probes.build_probe_deployer"
    hold = tmp_path / "hold"
    workers, first, worker = start_held_deploy(run_workers, "paused-in-bake", hold)
    lease, renewal = settings.TASK_LEASE_SECONDS, lease_renewal_seconds()

    paused_at = time.time()
    os.kill(worker, signal.SIGSTOP)
    try:
        # Its lease ends at most one lease after its last renewal, and the supervisor sweeps every renewal period.
        bound = lease + renewal
        elapsed = seconds_until_the_retry_starts(first, paused_at, bound, workers)
        retry = wait_for_status(Task.objects.get(retry_of=first), set(TERMINAL_STATUSES), timeout=30, cluster=workers)
        before = rows("paused-in-bake")
        hold.unlink()  # once it wakes up, the stale attempt goes on to its next write at once
    finally:
        os.kill(worker, signal.SIGCONT)

    wait_for_superseded_attempt_to_stop(first, 30, workers.log_tail)
    print(f"\nbusy worker SIGSTOPped: taken over {elapsed:.1f} s later (lease {lease:g} s, bound {bound:g} s)")
    # A paused holder is alive: it is not stolen from before its lease could have run out.
    assert lease - renewal <= elapsed <= bound + LOADED_MACHINE_MARGIN_SECONDS, workers.log_tail()
    assert retry.status == TaskStatus.DONE, retry.detail
    first.refresh_from_db()
    assert "stopped renewing its lease" in first.detail
    assert rows("paused-in-bake") == before  # the woken attempt wrote nothing


@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
def test_a_quiet_cycle_of_the_supervised_cluster_logs_nothing_at_info(drill_settings, run_workers, level):
    """Canaries every second and the sweep are routine: at INFO the log stays empty while they run; at
    DEBUG their lines are there (lowered, not lost)."""
    # A generous grace: on a loaded machine qcluster may take longer to start than the 1 s canary's bound.
    workers, cluster = start_proven_cluster(run_workers, LOG_LEVEL=level, WORKERS_CANARY_GRACE_SECONDS="30")
    start = len(workers.log_path.read_bytes())
    proofs = {cluster.last_canary_at}

    def three_more_canaries_ran() -> bool:
        proofs.add(WorkerCluster.objects.get(pk=cluster.pk).last_canary_at)
        return len(proofs) > 3

    wait_for(three_more_canaries_ran, 20, "three more canaries", workers.log_tail)
    time.sleep(0.5)  # the last canary's "processed" line follows its proof
    quiet_cycle = workers.log_path.read_bytes()[start:].decode()

    if level == "INFO":
        assert quiet_cycle == ""
    else:
        assert quiet_cycle.count("DEBUG Processed 'deployments.jobs.prove_cluster_runs_jobs'") >= 3, quiet_cycle
        assert "DEBUG Enqueued" in quiet_cycle and " INFO " not in quiet_cycle
