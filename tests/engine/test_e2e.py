"""End to end: HTTP request -> task row -> django-q2 broker -> real `manage.py qcluster` -> real
GreenDeployer -> real MLServer -> real embeddings. And a worker killed mid-deploy, for real."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from deployments import services
from deployments.inference import V2Client, served_name
from deployments.models import TERMINAL_STATUSES, DeletionTask, DeploymentTask, EmbeddingModel, TaskStatus
from deployments.services.faults import HOLD_AT_ENV, HOLD_FILE_ENV
from tests.support.drills import held_worker_pid
from tests.support.factories import EmbeddingModelFactory
from tests.support.processes import wait_for_status

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.mlserver]


def post(client, path: str, body: object):
    return client.post(path, data=json.dumps(body), content_type="application/json")


def test_post_deploy_to_real_embeddings_and_delete_again(api, inference_settings, qcluster, envoy):
    EmbeddingModelFactory(id="cp-e2e")
    cluster = qcluster()

    response = post(api, "/deploy", {"model_id": "cp-e2e", "config": {"expected_dimensions": 384}})
    assert response.status_code == 202
    task = DeploymentTask.objects.get(pk=response.json()["task_id"])
    wait_for_status(task, set(TERMINAL_STATUSES), timeout=180, cluster=cluster)
    assert task.status == TaskStatus.DONE, f"{task.detail}\n{cluster.log_tail()}"

    status = api.get("/deploy-status/cp-e2e").json()
    assert (status["task_id"], status["status"]) == (str(task.pk), "done")
    assert status["metadata"]["endpoint"] == f"{envoy.url}/v2/models/cp-e2e/infer"
    events = [(e["stage"], e["state"]) for e in api.get(f"/deploy/{task.pk}/events").json()]
    assert events[-2:] == [("done", "done"), ("status", "done")]
    with V2Client(envoy.url) as client:
        result = client.infer("cp-e2e", ["a cat sat on the mat", "a kitten sat on the rug", "stock markets fell"])
    vectors = result.embeddings
    assert vectors.shape == (3, 384) and np.isfinite(vectors).all()
    assert result.parameters["revision"] == status["metadata"]["revision"]
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    assert unit[0] @ unit[1] > unit[0] @ unit[2]  # real semantics, not just numbers

    response = post(api, "/delete", {"embedding_model_id": "cp-e2e"})
    deletion = DeletionTask.objects.get(pk=response.json()["task_id"])
    wait_for_status(deletion, set(TERMINAL_STATUSES), timeout=60, cluster=cluster)
    assert deletion.status == TaskStatus.DONE, deletion.detail
    assert api.get("/delete-status/cp-e2e").json()["status"] == "done"
    assert EmbeddingModel.objects.get(pk="cp-e2e").state == "not_deployed"
    with V2Client(envoy.url) as client:
        assert not client.model_ready("cp-e2e")


@pytest.mark.mlflow
def test_a_run_deployed_by_its_id_from_mlflow_serves_and_records_its_run(
    api, inference_settings, qcluster, envoy, mlflow_registry, monkeypatch
):
    """As the origin did: the run id is the model id; the first deploy registers it (opted in)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_registry["uri"])  # the worker inherits it
    inference_settings.MLFLOW_RUN_SOURCE_TEMPLATE = "runs:/{id}/model"
    run_id = mlflow_registry["run1"]
    cluster = qcluster()

    response = post(api, "/deploy", {"embedding_model_id": run_id})
    assert response.status_code == 202, response.json()
    task = DeploymentTask.objects.get(pk=response.json()["task_id"])
    wait_for_status(task, set(TERMINAL_STATUSES), timeout=180, cluster=cluster)

    assert task.status == TaskStatus.DONE, f"{task.detail}\n{cluster.log_tail()}"
    source = task.metadata["source"]
    assert (source["uri"], source["run_id"], source["tracking_uri"]) == (
        f"runs:/{run_id}/model",
        run_id,
        mlflow_registry["uri"],
    )
    with V2Client(envoy.url) as client:
        assert client.infer(run_id, ["deployed from a run"]).embeddings.shape == (1, 384)


def test_a_worker_killed_mid_deploy_is_detected_and_its_task_retried_while_blue_serves(
    api, inference_settings, qcluster, envoy, mlserver, tmp_path
):
    model = EmbeddingModelFactory(id="cp-killed")
    blue = services.submit_deployment(model.id).task
    assert services.run_task(blue.pk) == TaskStatus.DONE
    blue.refresh_from_db()
    inference_settings.TASK_LEASE_SECONDS = 2  # for the worker below: its lease runs out soon after the kill

    # A real worker held (by the fault hook) once green is loaded, and then killed with SIGKILL.
    hold = tmp_path / "hold"
    doomed = qcluster(**{HOLD_AT_ENV: "smoke_test", HOLD_FILE_ENV: str(hold)})
    green = DeploymentTask.objects.get(pk=post(api, "/deploy", {"embedding_model_id": model.id}).json()["task_id"])
    held_worker_pid(hold)
    green.refresh_from_db()
    doomed.kill()
    assert green.status == TaskStatus.PROCESSING

    with V2Client(envoy.url) as client:  # blue keeps serving while the dead worker's task waits
        assert client.infer(model.id, ["still serving"]).parameters["revision"] == blue.metadata["revision"]

    time.sleep(2.5)  # let the lease run out: nobody renews it any more
    report = services.sweep_tasks()
    green.refresh_from_db()
    assert report.failed == [str(green.pk)]
    retry = DeploymentTask.objects.get(retry_of=green)
    assert green.status == TaskStatus.FAILED
    assert (green.metadata["lost"], green.metadata["retried_as"]) == (True, str(retry.pk))
    assert green.metadata["stages"]["load_green"]["state"] == "done"  # lost after green was loaded
    assert (retry.attempt, retry.metadata["retry_of"]) == (2, str(green.pk))

    healthy = qcluster()  # a healthy worker picks up the retry the sweeper handed over
    wait_for_status(retry, set(TERMINAL_STATUSES), timeout=120, cluster=healthy)
    assert retry.status == TaskStatus.DONE, retry.detail
    assert api.get(f"/deploy-status/{model.id}").json()["task_id"] == str(retry.pk)
    with V2Client(envoy.url) as client:
        assert client.infer(model.id, ["after the retry"]).embeddings.shape == (1, 384)
    with V2Client(mlserver.url) as replica:  # only the live revision is loaded: no leftover of the dead worker
        ready = [e["name"] for e in replica.index() if e["name"].startswith(f"{model.id}~") and e["state"] == "READY"]
    assert ready == [served_name(model.id, retry.metadata["revision"])]
