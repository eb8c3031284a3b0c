"""The API with MLflow sources, against the session's real MLflow server: registering validates against
the registry, a model may name its own server, and (opted in) a run is deployed by its id."""

from __future__ import annotations

import json
import logging

import pytest
from rest_framework.test import APIClient

from deployments.models import AuditEntry, DeploymentTask, EmbeddingModel
from tests.support.factories import EmbeddingModelFactory
from tests.support.mlflow import NAME, run_with_artifacts_at

pytestmark = [pytest.mark.mlflow, pytest.mark.django_db]


def post(client: APIClient, path: str, body: object):
    return client.post(path, data=json.dumps(body), content_type="application/json")


@pytest.fixture
def tracking(mlflow_registry, monkeypatch) -> dict[str, str]:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_registry["uri"])
    return mlflow_registry


def test_registering_a_version_the_registry_does_not_have_is_a_400_naming_the_source(api, tracking):
    missing = post(api, "/models", {"id": "mlflow-99", "source": f"models:/{NAME}/99"})
    assert missing.status_code == 400
    assert (
        "MLflow says" in missing.json()["errors"]["source"][0] and "not found" in missing.json()["errors"]["source"][0]
    )
    assert not EmbeddingModel.objects.filter(pk="mlflow-99").exists()

    created = post(api, "/models", {"id": "mlflow-champion", "source": f"models:/{NAME}@champion"})
    assert created.status_code == 201, created.json()
    assert created.json()["source"] == f"models:/{NAME}@champion"


def test_a_model_may_name_its_own_tracking_server(api, mlflow_registry, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOWED_TRACKING_URIS", mlflow_registry["uri"])
    body = {"id": "mlflow-own", "source": f"models:/{NAME}/1", "mlflow_tracking_uri": mlflow_registry["uri"]}
    created = post(api, "/models", body)
    assert created.status_code == 201, created.json()
    assert created.json()["mlflow_tracking_uri"] == mlflow_registry["uri"]

    nowhere = post(api, "/models", {"id": "mlflow-nowhere", "source": f"models:/{NAME}/1"})
    assert nowhere.status_code == 400 and "MLFLOW_TRACKING_URI" in nowhere.json()["errors"]["source"][0]
    odd = post(api, "/models", {**body, "id": "mlflow-odd", "mlflow_tracking_uri": "ftp://registry"})
    assert odd.status_code == 400 and "mlflow_tracking_uri" in odd.json()["errors"]


def test_a_tracking_server_the_operator_did_not_allow_is_a_400_naming_the_field_and_the_allowed_servers(
    api, elsewhere, mlflow_token, monkeypatch
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://mlflow.example.com")
    monkeypatch.setenv("MLFLOW_ALLOWED_TRACKING_URIS", "https://mlflow-2.example.com:8443")
    allowed = (
        "allowed: https://mlflow.example.com, https://mlflow-2.example.com:8443 "
        "(the operator adds servers to MLFLOW_ALLOWED_TRACKING_URIS)"
    )
    body = {"id": "phoning-home", "source": f"models:/{NAME}/1", "mlflow_tracking_uri": elsewhere.url}

    created = post(api, "/models", body)

    assert created.status_code == 400
    assert created.json()["errors"] == {
        "mlflow_tracking_uri": [f"MLflow tracking server {elsewhere.url} is not allowed; {allowed}"]
    }
    metadata = post(api, "/models", {**body, "mlflow_tracking_uri": "http://169.254.169.254/latest/meta-data"})
    assert metadata.status_code == 400 and "http://169.254.169.254 is not allowed" in str(metadata.json())
    with_user = post(api, "/models", {**body, "mlflow_tracking_uri": "https://me:pw@mlflow.example.com"})
    assert "holds a user or password" in with_user.json()["errors"]["mlflow_tracking_uri"][0]
    assert not EmbeddingModel.objects.exists()

    model = EmbeddingModelFactory(id="registered")
    changed = api.patch(
        f"/models/{model.pk}", data=json.dumps({"mlflow_tracking_uri": elsewhere.url}), content_type="application/json"
    )
    assert changed.status_code == 400 and list(changed.json()["errors"]) == ["mlflow_tracking_uri"]
    model.refresh_from_db()
    assert model.mlflow_tracking_uri == ""
    assert elsewhere.received == []


def test_a_run_whose_artifacts_are_on_another_host_is_not_registered_on_its_first_deploy(
    api, tracking, settings, elsewhere, mlflow_token
):
    settings.MLFLOW_RUN_SOURCE_TEMPLATE = "runs:/{id}/model"
    run_id = run_with_artifacts_at(tracking["uri"], f"{elsewhere.url}/artifacts")

    response = post(api, "/deploy", {"embedding_model_id": run_id})

    assert response.status_code == 400
    reason = response.json()["errors"]["embedding_model_id"][0]
    assert "as an MLflow run it cannot be" in reason and f"on {elsewhere.url}, not on the tracking server" in reason
    assert not EmbeddingModel.objects.filter(pk=run_id).exists()
    assert elsewhere.received == []


def test_with_the_run_template_on_a_run_is_registered_on_its_first_deploy(api, tracking, settings, caplog):
    settings.MLFLOW_RUN_SOURCE_TEMPLATE = "runs:/{id}/model"
    run_id = tracking["run1"]

    with caplog.at_level(logging.INFO, logger="deployments.services.registry"):
        response = post(api, "/deploy", {"embedding_model_id": run_id})

    assert response.status_code == 202, response.json()
    model = EmbeddingModel.objects.get(pk=run_id)
    assert model.source == f"runs:/{run_id}/model"
    assert DeploymentTask.objects.get(pk=response.json()["task_id"]).embedding_model_id == run_id
    assert AuditEntry.objects.filter(object_kind="embedding_model", object_id=run_id, action="create").exists()
    assert f"registered MLflow run {run_id} on first use" in caplog.text
    again = post(api, "/deploy", {"embedding_model_id": run_id})
    assert again.status_code == 202 and EmbeddingModel.objects.filter(pk=run_id).count() == 1


def test_a_run_the_server_does_not_know_is_not_registered_and_the_deploy_is_a_400(api, tracking, settings):
    settings.MLFLOW_RUN_SOURCE_TEMPLATE = "runs:/{id}/model"
    unknown = "0" * 32
    response = post(api, "/deploy", {"embedding_model_id": unknown})
    assert response.status_code == 400
    assert "as an MLflow run it cannot be" in response.json()["errors"]["embedding_model_id"][0]
    assert not EmbeddingModel.objects.filter(pk=unknown).exists()


def test_without_the_run_template_a_run_id_is_only_an_unregistered_model(api, tracking, settings):
    settings.MLFLOW_RUN_SOURCE_TEMPLATE = ""
    response = post(api, "/deploy", {"embedding_model_id": tracking["run2"]})
    assert response.status_code == 400 and "is not registered" in response.json()["errors"]["embedding_model_id"][0]
    assert not EmbeddingModel.objects.filter(pk=tracking["run2"]).exists()
