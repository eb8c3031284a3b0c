"""Fault drills on the services the engine stands on: PostgreSQL restarted in the middle of a task.

Only in the PostgreSQL + Redis profile (marker ``services_drill``): the drill restarts the machine's
PostgreSQL cluster, which the SQLite profile does not use.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from django.db import connection

from deployments import services
from deployments.models import Task, TaskStatus
from deployments.services.faults import HOLD_AT_ENV, HOLD_FILE_ENV
from tests.support.drills import BlueTraffic, assert_settled, held_worker_pid
from tests.support.factories import EmbeddingModelFactory
from tests.support.processes import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.mlserver, pytest.mark.services_drill]


def restart_postgresql() -> None:
    version = sorted(Path("/etc/postgresql").iterdir())[-1].name
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart", "-m", "fast"],
        check=True,
        capture_output=True,
    )


def reconnect() -> bool:
    connection.close()
    try:
        connection.ensure_connection()
        return True
    except Exception:
        return False


@pytest.fixture
def on_postgresql():
    if connection.vendor != "postgresql":
        pytest.skip("restarts PostgreSQL: the PostgreSQL profile only")


def test_postgresql_restarted_in_the_middle_of_a_task(
    on_postgresql, inference_settings, qcluster, mlserver, minilm_dir, tmp_path
):
    inference_settings.TASK_LEASE_SECONDS = 4
    EmbeddingModelFactory(id="pg-restart", source=str(minilm_dir))
    blue = services.submit_deployment("pg-restart").task
    assert services.run_task(blue.pk) == TaskStatus.DONE
    hold = tmp_path / "hold"
    cluster = qcluster(**{HOLD_AT_ENV: "stage_green", HOLD_FILE_ENV: str(hold)})

    with BlueTraffic(mlserver.url, "pg-restart") as traffic:
        task = services.submit_deployment("pg-restart").task
        held_worker_pid(hold)
        restarted_at = time.monotonic()
        restart_postgresql()
        wait_for(reconnect, 30, "PostgreSQL to accept connections again")
        hold.unlink()

        def every_task_ended() -> bool:
            services.sweep_tasks()  # what the schedule does; a lost attempt is retried
            unfinished = Task.objects.filter(embedding_model_id="pg-restart").exclude(
                status__in=[TaskStatus.DONE, TaskStatus.FAILED, TaskStatus.REFUSED, TaskStatus.CANCELED]
            )
            return not unfinished.exists()

        wait_for(every_task_ended, 120, "every task to end", cluster.log_tail)
        settled_in = time.monotonic() - restarted_at

    latest = Task.objects.filter(embedding_model_id="pg-restart").order_by("-sequence", "-attempt").first()
    assert latest.status == TaskStatus.DONE, (latest.detail, [t.detail for t in Task.objects.filter(pk=task.pk)])
    assert_settled("pg-restart", mlserver.url)
    assert traffic.sent > 0 and traffic.failures == []
    attempts = [
        (t.attempt, t.status, t.detail[:100])
        for t in Task.objects.filter(pk=task.pk) | Task.objects.filter(retry_of=task)
    ]
    print(f"\nPostgreSQL restart mid-task: settled {settled_in:.1f}s after the restart; attempts {attempts}")
