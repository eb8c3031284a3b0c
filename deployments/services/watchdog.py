"""The watchdog behind ``manage.py run_workers``: a django-q2 cluster that is proven to run jobs, or restarted.

django-q2 can wedge (its issue #23): a worker that dies holding the task queue's lock leaves every
other worker blocked for ever, while the cluster looks alive and ignores SIGTERM. So the watchdog
does not trust the cluster's processes; it asks for proof. Every WORKERS_CANARY_SECONDS it enqueues
a canary job; the canary, run by a worker of this cluster, stamps the cluster's row. When no canary
ran for ``watchdog_bound()`` (2 periods + grace), the cluster is wedged: its whole process group is
SIGKILLed (SIGTERM hangs qcluster, and killing only qcluster leaves its workers consuming) and a
fresh qcluster is started. Pending tasks whose messages the killed cluster had taken are re-sent.

A dead worker's task is not left to its lease: the supervisor looks at its cluster's processes every
tick, and the tasks whose leases a process held when it died (SIGKILL, the OOM killer, a crash, or
the watchdog's own kill) are retried at once, through the sweeper's door. Django-q2 reincarnates the
worker itself. A worker that is alive but paused cannot be told from a slow one: its lease runs out,
and the supervisor sweeps expired leases every ``lease_renewal_seconds()``.

A cluster that is merely busy is not killed: while every worker runs a task whose model lease it
keeps renewing, a canary cannot run and need not; the proof is due ``watchdog_bound()`` after the
last moment all workers were seen busy.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from datetime import datetime, timedelta

import psutil
from django.conf import settings
from django.db import DatabaseError, close_old_connections
from django.utils import timezone

from deployments import selectors
from deployments.inference.processes import describe_exit
from deployments.models import WorkerCluster
from deployments.services.leases import lease_renewal_seconds
from deployments.services.sweeper import (
    SweepReport,
    ensure_sweep_schedule,
    resolve_expired_leases,
    resolve_leases_of_dead_process,
)
from deployments.services.workers import (
    abandon_dead_clusters,
    abandon_silent_clusters,
    last_proof,
    record_all_workers_busy,
    record_cluster_start,
    record_cluster_stop,
    register_cluster,
    resend_handoffs_lost_with,
    send_canary,
    watchdog_bound,
)

logger = logging.getLogger(__name__)

# A cluster that dies sooner than this after its start is failing to start: wait before the next try.
QUICK_DEATH_SECONDS = 10.0
MAX_START_BACKOFF_SECONDS = 8.0


def qcluster_command() -> list[str]:
    return [sys.executable, str(settings.BASE_DIR / "manage.py"), "qcluster"]


def process_group(pgid: int) -> list[psutil.Process]:
    """The live processes of a process group (zombies excluded: they are dead, only not yet reaped)."""
    members = []
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == pgid and process.status() != psutil.STATUS_ZOMBIE:
                members.append(process)
        except (ProcessLookupError, psutil.Error):
            continue
    return members


def is_qcluster_group(pgid: int) -> bool:
    """True if ``pgid`` still leads a process group running qcluster (pids are reused: check before killing)."""
    try:
        leader = psutil.Process(pgid)
        return os.getpgid(pgid) == pgid and "qcluster" in leader.cmdline()
    except (ProcessLookupError, psutil.Error):
        return False


def kill_process_group(pgid: int, timeout: float = 5.0) -> int:
    """SIGKILL every process of the group and wait until none is left; return how many there were."""
    members = process_group(pgid)
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            break
        if not process_group(pgid) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    return len(members)


def process_ids(processes: Sequence[psutil.Process]) -> dict[int, float]:
    """Each process's pid and start time: together they name one process (a pid alone is reused)."""
    identities = {}
    for process in processes:
        try:
            identities[process.pid] = process.create_time()
        except psutil.Error:
            continue
    return identities


def is_gone(pid: int, create_time: float) -> bool:
    """True if the process that had this pid and start time has ended (a zombie has: it only waits to
    be reaped). False while the pid runs another process: nothing can be said about it then."""
    try:
        process = psutil.Process(pid)
        return process.create_time() == create_time and process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:
        return False


def _not_before(moment: datetime | None, reference: datetime) -> bool:
    return moment is not None and moment >= reference


class ClusterSupervisor:
    """Runs ``manage.py qcluster`` in a process group of its own and keeps it proven or restarted."""

    def __init__(self, command: Sequence[str] | None = None):
        self.command = list(command or qcluster_command())
        self.period = settings.WORKERS_CANARY_SECONDS
        self.tick = min(0.5, self.period / 4)
        self.stop_requested = threading.Event()
        self.cluster: WorkerCluster | None = None
        self.process: subprocess.Popen | None = None
        self.cluster_started_at: datetime | None = None
        self.canary_sent_at: datetime | None = None
        # The last moment the watchdog could not look (no database or broker): nothing to judge before.
        self.unobserved_at: datetime | None = None
        self.quick_deaths = 0
        # The cluster's processes at the last tick (pid: start time), to see which of them died since.
        self.members: dict[int, float] = {}
        # Processes seen dead whose leases could not be resolved yet (the database refused): tried each look.
        self.unresolved_deaths: dict[int, float] = {}
        self.leases_swept_at = time.monotonic()

    def request_stop(self, *_: object) -> None:
        """Signal-handler safe: the loop notices at its next tick."""
        self.stop_requested.set()

    def run(self) -> int:
        self._end_clusters_of_dead_supervisors()
        self.cluster = register_cluster()
        ensure_sweep_schedule()  # the sweeper is a schedule: make sure there is one to run
        logger.info(
            "supervising qcluster as %s: a canary every %.1f s, restart when none ran for %.1f s",
            self.cluster.name,
            self.period,
            watchdog_bound().total_seconds(),
        )
        self._start_cluster()
        try:
            while not self.stop_requested.wait(self.tick):
                try:
                    self._watch()
                except Exception:
                    # No database or broker: no canary can prove anything either way, and a restart would not
                    # bring them back (it would only kill running tasks). Judge nothing; look again next tick.
                    logger.exception("the watchdog cannot look at its cluster")
                    self.unobserved_at = timezone.now()
                finally:
                    close_old_connections()
        finally:
            stopped = self._stop_cluster()
            self._resolve_killed_workers()
            record_cluster_stop(self.cluster, f"supervisor stopped; {stopped}")
        return 0

    def _end_clusters_of_dead_supervisors(self, abandoned: list[WorkerCluster] | None = None) -> None:
        """A supervisor that was SIGKILLed leaves its qcluster running (it has a session of its own): a second
        consumer nobody watches. End those of this host, and re-send what they may have taken from the queue."""
        host = socket.gethostname()
        killed = 0
        for cluster in abandoned if abandoned is not None else abandon_dead_clusters(host):
            if cluster.host == host and cluster.cluster_pid and is_qcluster_group(cluster.cluster_pid):
                killed += kill_process_group(cluster.cluster_pid)
                logger.warning("killed qcluster %d left by supervisor %d", cluster.cluster_pid, cluster.supervisor_pid)
        if killed:
            resend_handoffs_lost_with(timezone.now())

    # -- one look at the cluster --------------------------------------------------------------

    def _watch(self) -> None:
        returncode = self.process.poll()
        if returncode is not None:
            self._restart(f"qcluster {self.process.pid} {describe_exit(returncode)}")
            return
        self._resolve_dead_workers()
        self._resolve_expired_leases()
        now = timezone.now()
        self.cluster.refresh_from_db(fields=["last_canary_at", "canary_ran_elsewhere_at", "all_busy_at"])
        if self._canary_due(now):
            send_canary(self.cluster)
            self.canary_sent_at = now
            self._end_clusters_of_dead_supervisors(abandon_silent_clusters(now))
        proof_due = self._last_proof() + watchdog_bound()
        if now <= proof_due:
            return
        if self._all_workers_busy():
            if not _not_before(self.cluster.all_busy_at, now - timedelta(seconds=self.period)):
                record_all_workers_busy(self.cluster, now)  # once a period is enough to stay excused
            return
        late = (now - self._last_proof()).total_seconds()
        self._restart(f"no canary ran for {late:.1f} s (bound {watchdog_bound().total_seconds():.0f} s)")

    def _resolve_dead_workers(self, gone: dict[int, float] | None = None) -> None:
        """Retry at once the tasks of the cluster's processes that died since the last look (or of ``gone``)."""
        if gone is None:
            current = process_ids(process_group(self.process.pid))
            gone = {pid: started for pid, started in self.members.items() if current.get(pid) != started}
            self.members = current
        else:
            self.members = {}
        host = socket.gethostname()
        gone, self.unresolved_deaths = self.unresolved_deaths | gone, {}
        for pid, started in gone.items():
            try:
                report = resolve_leases_of_dead_process(
                    host, pid, lambda pid=pid, started=started: is_gone(pid, started), f"its process {pid} ended"
                )
            except DatabaseError:
                # Not forgotten: the next look tries again, rather than the lease running out first.
                logger.warning("could not resolve the leases of dead worker %d yet", pid, exc_info=True)
                self.unresolved_deaths[pid] = started
                close_old_connections()
                continue
            if report.failed:
                logger.warning("worker %d of qcluster %d died: %s", pid, self.process.pid, report)

    def _resolve_killed_workers(self) -> None:
        """After the whole group was killed: every process seen in it is gone."""
        try:
            self._resolve_dead_workers(gone=self.members)
        except Exception:
            # No database: the leases will run out and be swept; a restart or a stop must not wait for it.
            logger.exception("could not resolve the tasks of the killed cluster's workers")

    def _resolve_expired_leases(self) -> None:
        """Paused or unreachable holders: their leases ran out. Swept here as often as leases are renewed,
        so a paused worker's task is taken over soon after its lease ends, not at the next scheduled sweep."""
        if time.monotonic() - self.leases_swept_at < lease_renewal_seconds():
            return
        self.leases_swept_at = time.monotonic()
        report = SweepReport()
        resolve_expired_leases(timezone.now(), report)
        if report.failed:
            logger.warning("expired leases: %s", report)

    def _last_proof(self) -> datetime:
        moments = [last_proof(self.cluster), self.cluster_started_at, self.unobserved_at]
        return max(moment for moment in moments if moment is not None)

    def _canary_due(self, now: datetime) -> bool:
        sent = self.canary_sent_at
        if sent is None or (now - sent).total_seconds() >= self.period:
            return True
        answered_here = self.cluster.last_canary_at is not None and self.cluster.last_canary_at >= sent
        ran_elsewhere = (
            self.cluster.canary_ran_elsewhere_at is not None and self.cluster.canary_ran_elsewhere_at >= sent
        )
        # Another cluster on the shared queue took it: that proves nothing about ours, ask again now.
        return ran_elsewhere and not answered_here

    def _all_workers_busy(self) -> bool:
        """True while every worker of the cluster runs a task whose model lease it keeps renewing."""
        group = {process.pid for process in process_group(self.process.pid)}
        runners = selectors.pids_running_live_tasks(socket.gethostname()) & group
        return len(runners) >= settings.Q_CLUSTER["workers"]

    # -- starting, restarting, stopping -------------------------------------------------------

    def _start_cluster(self, reason: str = "") -> None:
        # A session of its own: the qcluster's pid is its process group's id, and the group is killed whole.
        self.process = subprocess.Popen(self.command, cwd=settings.BASE_DIR, start_new_session=True)
        self.cluster_started_at = timezone.now()
        self.canary_sent_at = None
        self.unobserved_at = None
        record_cluster_start(self.cluster, self.process.pid, reason)

    def _restart(self, reason: str) -> None:
        pgid = self.process.pid
        killed = kill_process_group(pgid)
        self.process.wait()
        killed_at = timezone.now()
        self._resolve_killed_workers()
        lived = (killed_at - self.cluster_started_at).total_seconds()
        self.quick_deaths = self.quick_deaths + 1 if lived < QUICK_DEATH_SECONDS else 0
        if self.quick_deaths > 1:
            backoff = min(MAX_START_BACKOFF_SECONDS, 2.0 ** (self.quick_deaths - 2))
            if self.stop_requested.wait(backoff):
                return  # stopping: run() records the stop
        self._start_cluster(f"{reason}; SIGKILLed its process group {pgid} ({killed} process(es))")
        report = resend_handoffs_lost_with(killed_at)
        if report.resent:
            logger.info("re-sent %d pending task(s) the killed cluster may have taken", len(report.resent))

    def _stop_cluster(self) -> str:
        """SIGTERM to qcluster alone (to the group it hangs for ever), a few seconds to finish, then SIGKILL
        to the whole group, which also ends workers a dead qcluster left behind."""
        if self.process is None:
            return "no cluster was running"
        pgid = self.process.pid
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(settings.WORKERS_STOP_SECONDS)
            except subprocess.TimeoutExpired:
                logger.warning("qcluster %d did not stop within %.0f s", pgid, settings.WORKERS_STOP_SECONDS)
        killed = kill_process_group(pgid)
        self.process.wait()
        return f"qcluster {pgid} stopped" + (f"; SIGKILLed {killed} process(es) left in its group" if killed else "")
