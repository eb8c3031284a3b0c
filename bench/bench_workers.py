"""A dead or paused worker's deploy: how soon it resumes, and what the lease renewals cost, side by side in one run.
Not part of the test suite.

    .venv/bin/python bench/bench_workers.py [--leases 15,60] [--window 60]

For each lease length (``TASK_LEASE_SECONDS``; 15 s is the default, 60 s the default before), the
script starts a real ``manage.py run_workers`` (the watchdog, a real qcluster of 2 workers, the
default canary) on a throw-away SQLite database in a temporary folder, with everything else at its
defaults. Deploys run through the real engine, lease, heartbeat and sweeper; the deployer is the
probe deployer of the tests (a pause per stage, no server: the subject is the engine), and the fault
hook holds a deploy's first attempt in its bake. Printed per lease:

1. SIGKILL of the busy worker in its bake: seconds from the kill until the retry starts (by the
   retry's ``started_at``); the target is 15 s;
2. lease renewals: the UPDATEs a running task's heartbeat makes per minute, counted over --window
   seconds as the times the model's lease row changed its expiry (the target: one UPDATE per
   renewal, a few per minute);
3. SIGSTOP of the busy worker in its bake: seconds from the pause until the retry starts (a paused
   worker is alive: it is taken over once its lease runs out, within TASK_LEASE_SECONDS plus the
   supervisor's sweep period, a third of the lease).

The machine's load shows in every figure: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEAD_WORKER_TARGET_SECONDS = 15.0


def setup_django(workdir: Path) -> None:
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "controlplane.settings",
            "CONTROLPLANE_VAR_DIR": str(workdir),
            "SECRET_KEY": secrets.token_urlsafe(40),
            "DATABASE_URL": f"sqlite:///{workdir / 'bench.sqlite3'}",
            "INFERENCE_DEPLOYER_FACTORY": "tests.support.probes.build_probe_deployer",
            "Q_CLUSTER_NAME": f"bench-workers-{uuid.uuid4().hex[:8]}",
            "LOG_LEVEL": "WARNING",
        }
    )
    os.environ.pop("REDIS_URL", None)
    sys.path.insert(0, str(PROJECT_ROOT))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def held_pid(hold: Path, timeout: float = 120) -> int:
    from tests.support.drills import held_worker_pid

    return held_worker_pid(hold, timeout)


def seconds_until_retry_starts(first_task_id: str, since: float, timeout: float) -> float:
    from deployments.models import Task
    from tests.support.processes import wait_for

    retry = wait_for(
        lambda: Task.objects.filter(retry_of_id=first_task_id, started_at__isnull=False).first(),
        timeout,
        f"a retry of {first_task_id} to start",
    )
    return retry.started_at.timestamp() - since


def wait_until_done(first_task_id: str) -> None:
    from deployments.models import TERMINAL_STATUSES, Task
    from tests.support.processes import wait_for

    wait_for(
        lambda: Task.objects.filter(retry_of_id=first_task_id, status__in=TERMINAL_STATUSES).exists(),
        60,
        f"the retry of {first_task_id} to end",
    )


def renewals_per_minute(model_id: str, window: float) -> float:
    """How often the lease row's expiry moved while its task ran: each move is one renewal UPDATE."""
    from deployments.models import ModelLease

    seen = set()
    deadline = time.monotonic() + window
    while time.monotonic() < deadline:
        seen.add(ModelLease.objects.filter(pk=model_id).values_list("expires_at", flat=True).get())
        time.sleep(0.1)
    return (len(seen) - 1) * 60 / window  # the first value is the take (or a renewal before the window)


def measure(lease: float, window: float, workdir: Path) -> dict[str, float]:
    from deployments import services
    from deployments.models import WorkerCluster
    from deployments.services.faults import HOLD_AT_ENV, HOLD_FILE_ENV
    from tests.support.factories import EmbeddingModelFactory
    from tests.support.processes import SupervisedWorkers, wait_for, worker_env

    hold = workdir / f"hold-{lease:g}"
    env = worker_env(TASK_LEASE_SECONDS=f"{lease:g}", **{HOLD_AT_ENV: "bake", HOLD_FILE_ENV: str(hold)})
    workers = SupervisedWorkers(workdir / f"run_workers-{lease:g}.log", env).start()
    try:
        wait_for(
            lambda: WorkerCluster.objects.filter(supervisor_pid=workers.process.pid, last_canary_at__isnull=False),
            60,
            "the supervised cluster to run its first canary",
            workers.log_tail,
        )
        killed = services.submit_deployment(EmbeddingModelFactory(id=f"killed-{lease:g}").id).task
        worker = held_pid(hold)
        killed_at = time.time()
        os.kill(worker, signal.SIGKILL)
        kill_to_retry = seconds_until_retry_starts(killed.pk, killed_at, 4 * lease + 60)
        wait_until_done(killed.pk)

        hold.unlink()
        paused_model = f"paused-{lease:g}"
        paused = services.submit_deployment(EmbeddingModelFactory(id=paused_model).id).task
        worker = held_pid(hold)
        renewals = renewals_per_minute(paused_model, window)
        paused_at = time.time()
        os.kill(worker, signal.SIGSTOP)
        try:
            stop_to_takeover = seconds_until_retry_starts(paused.pk, paused_at, 4 * lease + 60)
            wait_until_done(paused.pk)
        finally:
            hold.unlink()
            os.kill(worker, signal.SIGCONT)
    finally:
        workers.stop()
    return {"kill": kill_to_retry, "renewals": renewals, "stop": stop_to_takeover}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--leases", default="15,60", help="TASK_LEASE_SECONDS values, the default first")
    parser.add_argument("--window", type=float, default=60, help="seconds over which renewals are counted")
    args = parser.parse_args()
    leases = [float(value) for value in args.leases.split(",")]

    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
        workdir = Path(tmp)
        setup_django(workdir)
        results = {}
        for lease in leases:
            print(f"TASK_LEASE_SECONDS={lease:g}: measuring ...", flush=True)
            results[lease] = measure(lease, args.window, workdir)

    print()
    print(
        f"{'TASK_LEASE_SECONDS':>20} {'SIGKILL -> retry starts':>24} {'SIGSTOP -> retry starts':>24} "
        f"{'renewals / min / task':>22} {'renewal period':>15}"
    )
    for lease, figures in results.items():
        print(
            f"{lease:>20g} {figures['kill']:>22.1f} s {figures['stop']:>22.1f} s "
            f"{figures['renewals']:>22.1f} {lease / 3:>13.1f} s"
        )
    print(
        f"\ntargets: SIGKILL -> retry <= {DEAD_WORKER_TARGET_SECONDS:g} s; SIGSTOP -> retry <= TASK_LEASE_SECONDS "
        "+ a third of it (the supervisor's sweep period); one UPDATE per renewal"
    )


if __name__ == "__main__":
    main()
