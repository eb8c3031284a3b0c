"""Fault drills on the services the engine stands on: PostgreSQL restarted in the middle of a task,
Redis (the broker) down when a task is submitted and while the sweeper retries a lost attempt.

Only in the PostgreSQL + Redis profile (marker ``services_drill``): the drills restart the machine's
PostgreSQL and stop its Redis, which the SQLite profile does not use.
"""

from __future__ import annotations

import subprocess
import time
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connection
from django.utils import timezone

from deployments import services
from deployments.models import ModelLease, Task, TaskStatus
from deployments.services.faults import HOLD_AT_ENV, HOLD_FILE_ENV
from deployments.services.leases import claim_lease
from tests.support.drills import BlueTraffic, assert_settled, held_worker_pid
from tests.support.factories import EmbeddingModelFactory
from tests.support.processes import wait_for, wait_for_status

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


REDIS = ["redis-cli", "-h", "127.0.0.1", "-p", "6379"]


def redis_answers() -> bool:
    return subprocess.run([*REDIS, "ping"], capture_output=True, text=True).stdout.strip() == "PONG"


@pytest.fixture
def redis_outage(settings):
    """A context in which Redis is down; it is started again however the drill ends."""
    if "redis" not in settings.Q_CLUSTER:
        pytest.skip("stops Redis: the Redis broker's profile only")

    @contextmanager
    def down():
        subprocess.run([*REDIS, "shutdown", "nosave"], capture_output=True)
        wait_for(lambda: not redis_answers(), 10, "Redis to stop")
        try:
            yield
        finally:
            start_redis()

    yield down
    start_redis()


def start_redis() -> None:
    if not redis_answers():
        subprocess.run(
            [
                "redis-server",
                "--daemonize",
                "yes",
                "--bind",
                "127.0.0.1",
                "--port",
                "6379",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            check=True,
            capture_output=True,
        )
        wait_for(redis_answers, 10, "Redis to start")


def test_redis_down_at_submit_loses_nothing(redis_outage, settings, api, qcluster):
    """The API answers 503 with Retry-After and keeps the task; once Redis is back, the sweeper sends it."""
    settings.INFERENCE_DEPLOYER_FACTORY = "tests.support.probes.build_probe_deployer"
    settings.TASK_HANDOFF_GRACE_SECONDS = 1
    EmbeddingModelFactory(id="redis-at-submit")
    with redis_outage():
        response = api.post(
            "/deploy", {"embedding_model_id": "redis-at-submit", "task_id": "at-submit-1"}, format="json"
        )
        assert response.status_code == 503 and response["Retry-After"] == "1"
    task = Task.objects.get(pk="at-submit-1")
    assert (task.status, task.dispatched_at) == (TaskStatus.PENDING, None)
    came_back = time.monotonic()

    cluster = qcluster()
    wait_for(lambda: "at-submit-1" in services.sweep_tasks().resent, 30, "the sweeper to re-send the task")
    wait_for_status(task, {TaskStatus.DONE, TaskStatus.FAILED}, timeout=60, cluster=cluster)
    assert task.status == TaskStatus.DONE
    print(f"\nRedis down at submit: kept, re-sent by the sweeper, done {time.monotonic() - came_back:.1f}s after Redis")


def test_redis_down_while_the_sweeper_retries_a_lost_attempt_loses_nothing(redis_outage, settings, qcluster):
    """The retry the sweeper creates stays pending (never deleted); a later sweep sends it."""
    settings.INFERENCE_DEPLOYER_FACTORY = "tests.support.probes.build_probe_deployer"
    settings.TASK_HANDOFF_GRACE_SECONDS = 1
    EmbeddingModelFactory(id="redis-in-sweep")
    lost = services.submit_deployment("redis-in-sweep").task
    assert claim_lease(lost, "dead-host:1:abc")
    Task.objects.filter(pk=lost.pk).update(status=TaskStatus.PROCESSING, lease_owner="dead-host:1:abc")
    ModelLease.objects.filter(pk="redis-in-sweep").update(expires_at=timezone.now() - timedelta(seconds=1))

    with redis_outage():
        report = services.sweep_tasks()
        retry = Task.objects.get(retry_of=lost)
        assert report.failed == [str(lost.pk)] and report.retried == [str(retry.pk)]
        assert (retry.status, retry.dispatched_at) == (TaskStatus.PENDING, None)
    came_back = time.monotonic()

    cluster = qcluster()
    wait_for(lambda: str(retry.pk) in services.sweep_tasks().resent, 30, "the sweeper to re-send the retry")
    wait_for_status(retry, {TaskStatus.DONE, TaskStatus.FAILED}, timeout=60, cluster=cluster)
    assert retry.status == TaskStatus.DONE
    print(f"\nRedis down during a sweep: retry kept, re-sent, done {time.monotonic() - came_back:.1f}s after Redis")


def test_postgresql_restarted_in_the_middle_of_a_task(
    on_postgresql, inference_settings, qcluster, mlserver, envoy, minilm_dir, tmp_path
):
    inference_settings.TASK_LEASE_SECONDS = 4
    EmbeddingModelFactory(id="pg-restart", source=str(minilm_dir))
    blue = services.submit_deployment("pg-restart").task
    assert services.run_task(blue.pk) == TaskStatus.DONE
    hold = tmp_path / "hold"
    cluster = qcluster(**{HOLD_AT_ENV: "load_green", HOLD_FILE_ENV: str(hold)})

    with BlueTraffic(envoy.url, "pg-restart") as traffic:
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
    assert_settled("pg-restart")
    assert traffic.sent > 0 and traffic.failures == []
    attempts = [
        (t.attempt, t.status, t.detail[:100])
        for t in Task.objects.filter(pk=task.pk) | Task.objects.filter(retry_of=task)
    ]
    print(f"\nPostgreSQL restart mid-task: settled {settled_in:.1f}s after the restart; attempts {attempts}")
