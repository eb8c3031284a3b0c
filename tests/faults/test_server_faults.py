"""Fault drills on an inference replica: MLServer SIGKILLed at rest and in the middle of a deploy.

Each drill runs its own fleet (one MLServer behind its own Envoy; the session's is shared by other
tests) and restarts the replica on the same port and repository, as ``make run``'s supervisor does.
Nobody runs restore by hand: the reconciler loop (``manage.py reconcile --every 1``, a real process)
loads the live revisions again, and the router sends the replica traffic again.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings

from deployments import services
from deployments.inference import V2Client
from deployments.inference.router import LocalEnvoy
from deployments.inference.server import LocalMLServer
from deployments.models import Drift, EmbeddingModel, Task, TaskStatus
from deployments.services.faults import HOLD_AT_ENV, HOLD_FILE_ENV
from tests.support.drills import assert_settled, held_worker_pid
from tests.support.factories import EmbeddingModelFactory
from tests.support.processes import PROJECT_ROOT, wait_for, wait_for_status, worker_env

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.mlserver, pytest.mark.drill]


@pytest.fixture
def own_server(inference_settings, tmp_path) -> Iterator[LocalMLServer]:
    server = LocalMLServer(tmp_path / "repository", tmp_path / "server").start()
    router = LocalEnvoy(tmp_path / "envoy").start()
    inference_settings.INFERENCE_SERVER_URL = router.url
    inference_settings.INFERENCE_REPLICA_URLS = [server.url]
    inference_settings.ROUTER_ADMIN_URL = router.admin_url
    inference_settings.ROUTER_CONFIG_DIR = router.routes.config_dir
    inference_settings.MODEL_REPOSITORY_ROOT = server.repository_root
    yield server
    router.stop()
    server.stop()


def sigkill(server: LocalMLServer) -> None:
    os.killpg(server.process.pid, signal.SIGKILL)
    server.process.wait()
    server.process = None


@pytest.fixture
def reconciler(own_server, tmp_path) -> Iterator[subprocess.Popen]:
    with open(tmp_path / "reconcile.log", "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "manage.py", "reconcile", "--every", "1"],
            cwd=PROJECT_ROOT,
            env=worker_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    yield process
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def serves(model_id: str, revision: str) -> bool:
    """The router answers for ``model_id`` from ``revision``."""
    with V2Client(settings.INFERENCE_SERVER_URL, timeout=2) as client:
        try:
            return (client.model_metadata(model_id) or {}).get("parameters", {}).get("revision") == revision
        except Exception:
            return False


def deployed(model_id: str, source: Path) -> str:
    EmbeddingModelFactory(id=model_id, source=str(source))
    task = services.submit_deployment(model_id).task
    assert services.run_task(task.pk) == TaskStatus.DONE
    return EmbeddingModel.objects.get(pk=model_id).live_revision


def test_a_killed_and_restarted_server_serves_the_live_revisions_again_unaided(own_server, reconciler, minilm_dir):
    revision = deployed("srv-at-rest", minilm_dir)
    sigkill(own_server)
    killed_at = time.monotonic()
    own_server.start()  # the supervisor's restart: a fresh server that serves nothing

    wait_for(lambda: serves("srv-at-rest", revision), 60, "the reconciler to serve the model again")
    recovered_in = time.monotonic() - killed_at

    # Envoy serves the model again as soon as the replica has it; the reconciler closes the drift right after.
    closed = Drift.objects.filter(embedding_model_id="srv-at-rest", resolved_at__isnull=False)
    wait_for(closed.exists, 10, "the drift to close")
    drift = closed.get()
    assert drift.registered_revision == revision and f"revision {revision} ready on every replica" in drift.action
    assert_settled("srv-at-rest")
    print(f"\nMLServer SIGKILL at rest: served again {recovered_in:.1f}s after the kill (restart included)")


def test_a_server_killed_during_a_deploy_fails_that_task_with_the_reason_and_a_retry_succeeds(
    own_server, reconciler, qcluster, minilm_dir, sources_root, tmp_path
):
    blue = deployed("srv-mid-deploy", minilm_dir)
    green_source = sources_root / "next"
    shutil.copytree(minilm_dir, green_source)
    (green_source / "RELEASE_NOTES.txt").write_text("next")
    EmbeddingModel.objects.filter(pk="srv-mid-deploy").update(source=str(green_source))
    hold = tmp_path / "hold"
    cluster = qcluster(**{HOLD_AT_ENV: "load_green", HOLD_FILE_ENV: str(hold)})
    task = services.submit_deployment("srv-mid-deploy").task
    held_worker_pid(hold)

    sigkill(own_server)
    hold.unlink()  # the worker goes on into load_green with the server gone
    wait_for_status(task, {TaskStatus.FAILED, TaskStatus.DONE}, timeout=120, cluster=cluster)
    assert task.status == TaskStatus.FAILED
    assert task.metadata["failed_stage"] == "load_green" and own_server.url in task.metadata["reason"]

    own_server.start()
    wait_for(lambda: serves("srv-mid-deploy", blue), 60, "the reconciler to serve blue again")
    retry = services.retry_task(Task.objects.get(pk=task.pk))
    wait_for_status(retry, {TaskStatus.FAILED, TaskStatus.DONE}, timeout=120, cluster=cluster)
    assert retry.status == TaskStatus.DONE, retry.detail
    wait_for(lambda: serves("srv-mid-deploy", retry.metadata["revision"]), 30, "the retry's revision")
    assert_settled("srv-mid-deploy")
