"""/healthz and /readyz, through the test client with no login (probes have none): 200 only when it is true."""

from __future__ import annotations

import os
import re
import signal
import socket
import time
from datetime import timedelta

import pytest
from django.db import OperationalError, connection
from django.utils import timezone

from deployments import jobs
from deployments.inference import V2Client, served_name
from deployments.inference.server import LocalMLServer
from deployments.models import EmbeddingModel, TaskStatus, WorkerCluster
from deployments.services import submit_deployment
from deployments.services.reconciler import reconcile_models, refresh_servers
from deployments.services.workers import supervisor_gone_after, watchdog_bound
from tests.support.factories import (
    DeploymentTaskFactory,
    EmbeddingModelFactory,
    FinishedDeploymentFactory,
    RunningDeploymentFactory,
    cluster_with_heartbeat,
)

pytestmark = pytest.mark.django_db


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there once the socket is closed


def age(task, seconds: float) -> None:
    type(task).objects.filter(pk=task.pk).update(created_at=timezone.now() - timedelta(seconds=seconds))


@pytest.fixture
def server_down(settings):
    """No router and no replica answers."""
    settings.INFERENCE_SERVER_URL = closed_port_url()
    settings.ROUTER_ADMIN_URL = closed_port_url()
    settings.INFERENCE_REPLICA_URLS = [closed_port_url()]
    return settings


def readyz(client):
    response = client.get("/readyz")
    return response.status_code, response.json()


def test_healthz_answers_while_the_process_lives(client):
    response = client.get("/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


def test_no_worker_cluster_at_all_fails_workers(client, server_down):
    status, body = readyz(client)
    assert status == 503 and body["status"] == "failing"
    assert "workers" in body["failing"]
    assert body["checks"]["workers"]["error"] == "no worker cluster is running"


def test_a_stale_heartbeat_fails_workers_and_names_the_cluster(client, server_down):
    cluster_with_heartbeat(1)
    cluster_with_heartbeat(watchdog_bound().total_seconds() + 5, name="host-b:7:def")

    status, body = readyz(client)

    assert status == 503 and "workers" in body["failing"]
    assert "host-b:7:def" in body["checks"]["workers"]["error"]
    assert [c["fresh"] for c in body["checks"]["workers"]["clusters"]] == [True, False]


def test_a_stopped_cluster_or_one_whose_supervisor_went_silent_is_not_counted(client, server_down):
    cluster_with_heartbeat(1)
    WorkerCluster.objects.filter(pk=cluster_with_heartbeat(3600, name="stopped:1:x").pk).update(
        stopped_at=timezone.now()
    )
    silent_since = timezone.now() - supervisor_gone_after() - timedelta(seconds=1)
    WorkerCluster.objects.filter(pk=cluster_with_heartbeat(3600, name="gone:1:x").pk).update(
        supervisor_seen_at=silent_since
    )

    _, body = readyz(client)

    assert "workers" not in body["failing"]
    assert [cluster["name"] for cluster in body["checks"]["workers"]["clusters"]] == ["host-a:1:abc"]


def test_a_cluster_whose_every_worker_runs_a_live_task_is_not_stale(client, server_down):
    busy = cluster_with_heartbeat(watchdog_bound().total_seconds() + 60)
    WorkerCluster.objects.filter(pk=busy.pk).update(all_busy_at=timezone.now())

    _, body = readyz(client)

    assert body["checks"]["workers"]["ok"], body


@pytest.mark.mlserver
def test_everything_up_answers_200_with_every_check(client, inference_settings, mlserver):
    settings = inference_settings
    cluster_with_heartbeat(1)
    FinishedDeploymentFactory()

    status, body = readyz(client)

    assert status == 200, body
    assert body["status"] == "ok" and body["failing"] == []
    assert set(body["checks"]) == {"database", "broker", "workers", "pending", "inference"}
    assert all(check["ok"] for check in body["checks"].values())
    assert body["checks"]["broker"]["kind"] == ("redis" if "redis" in settings.Q_CLUSTER else "orm")
    assert body["checks"]["inference"]["replicas_live"] == "1/1"


@pytest.mark.mlserver
def test_a_replica_down_is_named_while_another_still_serves(client, inference_settings, mlserver):
    down = closed_port_url()
    inference_settings.INFERENCE_REPLICA_URLS = [mlserver.url, down]
    cluster_with_heartbeat(1)

    status, body = readyz(client)

    # Degraded, not failing: the web tier keeps routing (200) while monitors see a replica is gone.
    assert (status, body["status"], body["failing"], body["degraded"]) == (200, "degraded", [], ["inference"])
    inference = body["checks"]["inference"]
    assert inference["ok"] and inference["replicas_live"] == "1/2"
    assert "ConnectError" in inference["replicas_down"][down]
    assert inference["degraded"] == f"1 of 2 replica(s) serving ({down} down)"


def deploy(model_id: str) -> str:
    """A real deploy onto the real replica; the live revision."""
    EmbeddingModelFactory(id=model_id)
    task = submit_deployment(model_id, config={"expected_dimensions": 384}).task
    assert jobs.run_task(str(task.pk)) == TaskStatus.DONE
    return EmbeddingModel.objects.get(pk=model_id).live_revision


@pytest.mark.mlserver
def test_a_live_replica_that_serves_no_live_revision_is_empty_and_degrades_readiness(
    client, admin_client, inference_settings, mlserver
):
    revision = deploy("hz-empty")
    cluster_with_heartbeat(1)
    status, body = readyz(client)
    assert (status, body["status"]) == (200, "ok"), body
    assert "replicas_empty" not in body["checks"]["inference"]
    refresh_servers()
    assert "Inference replicas: 1 of 1 serving" in admin_client.get("/admin/").content.decode()

    with V2Client(mlserver.url) as replica:
        replica.unload(served_name("hz-empty", revision))  # what a replica just restarted looks like
    status, body = readyz(client)

    assert (status, body["status"], body["degraded"]) == (200, "degraded", ["inference"])
    inference = body["checks"]["inference"]
    assert inference["replicas_live"] == "1/1"
    assert inference["replicas_empty"] == {mlserver.url: "serves 0 of the 1 live revision(s)"}
    refresh_servers()  # the reconciler's look, which the dashboard shows
    page = admin_client.get("/admin/").content.decode()
    assert "Inference replicas: 0 of 1 serving" in page
    assert re.search(rf'cr-replica-empty"><td><code>{re.escape(mlserver.url)}</code>', page)


@pytest.mark.mlserver
def test_the_dashboard_shows_a_replica_down_from_the_reconcilers_look(admin_client, inference_settings, mlserver):
    down = closed_port_url()
    inference_settings.INFERENCE_REPLICA_URLS = [mlserver.url, down, closed_port_url()]
    record = refresh_servers(inference_settings.INFERENCE_REPLICA_URLS[:2])  # the third: never looked at yet
    assert {server.url: server.live for server in record} == {mlserver.url: True, down: False}

    page = admin_client.get("/admin/").content.decode()

    assert "Inference replicas: 1 of 3 serving" in page
    down_row = re.search(rf'cr-replica-down"><td><code>{re.escape(down)}</code>.*?</tr>', page, re.S).group(0)
    assert "ConnectError" in down_row or "refused" in down_row.lower(), down_row
    assert 'cr-replica-not-checked-yet"' in page
    assert page.index("cr-replica-down") < page.index(f"<code>{mlserver.url}</code>")  # trouble first


def test_a_task_waiting_too_long_for_a_worker_fails_pending(client, settings, server_down):
    settings.READY_MAX_PENDING_SECONDS = 60
    cluster_with_heartbeat(1)
    waiting = DeploymentTaskFactory()
    age(waiting, 61)

    status, body = readyz(client)

    assert status == 503 and body["failing"] == ["pending", "inference"]
    assert body["checks"]["pending"]["task_id"] == str(waiting.pk)
    assert str(waiting.pk) in body["checks"]["pending"]["error"]


def test_a_task_queued_behind_a_running_one_of_its_model_is_not_waiting_for_a_worker(client, settings, server_down):
    settings.READY_MAX_PENDING_SECONDS = 60
    cluster_with_heartbeat(1)
    running = RunningDeploymentFactory()
    queued = DeploymentTaskFactory(embedding_model_id=running.embedding_model_id)
    age(queued, 3600)

    _, body = readyz(client)

    assert body["checks"]["pending"]["ok"] and body["checks"]["pending"]["longest_wait_s"] == 0
    assert queued.status == TaskStatus.PENDING


def test_a_task_waits_for_a_worker_from_when_the_task_ahead_of_it_finished(client, settings, server_down):
    settings.READY_MAX_PENDING_SECONDS = 60
    cluster_with_heartbeat(1)
    ahead = FinishedDeploymentFactory(finished_at=timezone.now() - timedelta(seconds=10))
    queued = DeploymentTaskFactory(embedding_model_id=ahead.embedding_model_id)
    age(queued, 3600)

    _, body = readyz(client)

    assert body["checks"]["pending"]["ok"] and 9 <= body["checks"]["pending"]["longest_wait_s"] <= 15


def test_an_inference_server_that_does_not_answer_fails_inference(client, server_down):
    cluster_with_heartbeat(1)
    status, body = readyz(client)
    assert status == 503 and body["failing"] == ["inference"]
    assert "router" in body["checks"]["inference"]["error"] and "ConnectError" in body["checks"]["inference"]["error"]
    assert body["checks"]["inference"]["replicas_live"] == "0/1"


def test_a_database_that_fails_is_named_without_its_error_message(client, server_down):
    cluster_with_heartbeat(1)

    def database_down(execute, sql, params, many, context):
        raise OperationalError("could not connect to server at secret-host.internal as user admin")

    with connection.execute_wrapper(database_down):
        response = client.get("/readyz")

    body = response.json()
    assert response.status_code == 503 and {"database", "workers", "pending"} <= set(body["failing"])
    assert body["checks"]["database"] == {"ok": False, "error": "OperationalError"}
    assert b"secret-host" not in response.content


def test_a_redis_broker_that_never_answers_fails_the_broker_check_without_hanging(client, settings):
    """A blackholed Redis: it accepts the connection and never replies."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    try:
        settings.Q_CLUSTER = {**settings.Q_CLUSTER, "redis": f"redis://127.0.0.1:{listener.getsockname()[1]}/0"}
        settings.READY_INFERENCE_TIMEOUT = 0.5
        cluster_with_heartbeat(1)
        started = time.monotonic()
        status, body = readyz(client)
        assert time.monotonic() - started < 5
    finally:
        listener.close()
    assert status == 503 and "broker" in body["failing"]
    assert body["checks"]["broker"]["kind"] == "redis" and body["checks"]["broker"]["ok"] is False


def ready_now(client):
    """/readyz with the worker cluster's canary just run: only the replicas are in question."""
    now = timezone.now()
    WorkerCluster.objects.update(last_canary_at=now, supervisor_seen_at=now)
    return readyz(client)


@pytest.mark.mlserver
@pytest.mark.drill
@pytest.mark.django_db(transaction=True)  # the deploy's lease heartbeat writes from a thread of its own
def test_a_real_replica_killed_then_restarted_is_down_then_empty_then_serving(
    client, admin_client, inference_settings, mlserver, tmp_path
):
    """Two real replicas serving a deployed model; one is SIGKILLed, then started again with nothing loaded."""
    second = LocalMLServer(mlserver.repository_root, tmp_path / "second", extra_env=mlserver.extra_env).start()
    try:
        inference_settings.INFERENCE_REPLICA_URLS = [mlserver.url, second.url]
        deploy("hz-killed")
        cluster_with_heartbeat(1)
        status, body = ready_now(client)
        assert (status, body["status"], body["checks"]["inference"]["replicas_live"]) == (200, "ok", "2/2"), body

        os.killpg(second.process.pid, signal.SIGKILL)
        second.process.wait(timeout=10)
        status, body = ready_now(client)
        assert (status, body["status"], body["degraded"]) == (200, "degraded", ["inference"])
        assert list(body["checks"]["inference"]["replicas_down"]) == [second.url]
        refresh_servers()
        assert re.search(rf'cr-replica-down"><td><code>{re.escape(second.url)}<', admin_client.get("/admin/").text)

        second.start()  # back, on its ports, with nothing loaded
        status, body = ready_now(client)
        assert (status, body["status"]) == (200, "degraded")
        assert body["checks"]["inference"]["replicas_empty"] == {second.url: "serves 0 of the 1 live revision(s)"}
        refresh_servers()
        assert re.search(rf'cr-replica-empty"><td><code>{re.escape(second.url)}<', admin_client.get("/admin/").text)

        assert reconcile_models().restored == ["hz-killed"]  # loads it back where it is missing
        status, body = ready_now(client)
        assert (status, body["status"], body["degraded"]) == (200, "ok", []), body
        refresh_servers()  # the reconciler's next look (this pass recorded the replicas before it loaded)
        assert "Inference replicas: 2 of 2 serving" in admin_client.get("/admin/").text
    finally:
        second.stop()
