"""The HTTP API: the six spec endpoints and the extras, their success, 404 and 400 paths, and auth.

No worker runs here: created tasks stay pending, which is all these tests need.
"""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone
from rest_framework.test import APIClient

from deployments import services
from deployments.clock import format_time
from deployments.models import DeletionTask, DeploymentTask, EmbeddingModel, Task, TaskStatus
from tests.support.artifacts import copy_packaged_model, truncate
from tests.support.factories import DeletionTaskFactory, DeploymentTaskFactory, EmbeddingModelFactory
from tests.support.sources import lay_out_hf_cache

pytestmark = pytest.mark.django_db

RESPONSE_FIELDS = {"task_id", "embedding_model_id", "status", "detail", "metadata", "created_at", "updated_at"}


def post(client: APIClient, path: str, body: object):
    return client.post(path, data=json.dumps(body), content_type="application/json")


# -- authentication and permissions ---------------------------------------------------------


def test_no_credentials_is_401_with_a_token_challenge(anonymous, packaged_model):
    for response in (
        anonymous.get("/deploy-status/minilm"),
        post(anonymous, "/deploy", {"embedding_model_id": "minilm"}),
    ):
        assert response.status_code == 401
        assert response["WWW-Authenticate"] == "Token"
        assert "credentials" in response.json()["detail"]


def test_a_bad_token_is_401(packaged_model):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token not-a-token")
    assert client.get("/deploy").status_code == 401


def test_reading_needs_a_login_writing_needs_the_model_permission(reader, packaged_model):
    task = DeploymentTaskFactory(embedding_model_id="minilm")
    assert reader.get(f"/deploy/{task.pk}").status_code == 200
    response = post(reader, "/deploy", {"embedding_model_id": "minilm"})
    assert response.status_code == 403
    assert "permission" in response.json()["detail"]
    assert post(reader, "/delete", {"embedding_model_id": "minilm"}).status_code == 403
    assert post(reader, f"/deploy/{task.pk}/cancel", {}).status_code == 403
    assert DeploymentTask.objects.count() == 1


# -- POST /deploy and POST /delete ------------------------------------------------------------


@pytest.mark.parametrize("path,task_model", [("/deploy", DeploymentTask), ("/delete", DeletionTask)])
def test_create_a_task(api, packaged_model, operator, path, task_model):
    response = post(api, path, {"embedding_model_id": "minilm"})
    assert response.status_code == 202
    body = response.json()
    assert set(body) == RESPONSE_FIELDS
    task = task_model.objects.get(pk=body["task_id"])
    assert (body["embedding_model_id"], body["status"], task.requested_by) == ("minilm", "pending", "operator")
    assert body["metadata"] == {"attempt": 1, "retry_of": None}


def test_the_specs_model_id_is_accepted(api, packaged_model):
    response = post(api, "/deploy", {"model_id": "minilm", "config": {"expected_dimensions": 384}})
    assert response.status_code == 202
    assert DeploymentTask.objects.get().config == {"expected_dimensions": 384}
    assert post(api, "/deploy", {"model_id": "minilm", "embedding_model_id": "minilm"}).status_code == 202


@pytest.mark.parametrize("task_id", ["1234", str(uuid.uuid4()), "nightly:2025-01-01_minilm.v2", "-", "x" * 128])
def test_a_client_chosen_task_id_names_the_task(api, packaged_model, task_id):
    response = post(api, "/deploy", {"embedding_model_id": "minilm", "task_id": task_id})
    assert response.status_code == 202, response.content
    assert response.json()["task_id"] == task_id
    for path in (f"/deploy/{task_id}", f"/deploy/{task_id}/events"):
        assert api.get(path).status_code == 200
    assert api.get(f"/deploy/{task_id}").json()["task_id"] == task_id
    assert DeploymentTask.objects.get().pk == task_id


def test_without_a_task_id_the_server_names_the_task_with_a_uuid(api, packaged_model):
    task_id = post(api, "/deploy", {"embedding_model_id": "minilm"}).json()["task_id"]
    assert str(uuid.UUID(task_id)) == task_id


def test_the_same_task_id_returns_the_same_task(api, packaged_model):
    body = {
        "embedding_model_id": "minilm",
        "task_id": "1234",
        "config": {"expected_dimensions": 384, "ready_timeout": 60},
    }
    first = post(api, "/deploy", body)
    # The same request: the config's keys in another order, the spec's model_id instead of embedding_model_id.
    again = post(
        api,
        "/deploy",
        {"model_id": "minilm", "task_id": "1234", "config": {"ready_timeout": 60, "expected_dimensions": 384}},
    )
    assert (first.status_code, again.status_code) == (202, 200)
    assert first.json()["task_id"] == again.json()["task_id"] == "1234"
    assert DeploymentTask.objects.count() == 1


def test_the_same_task_id_without_config_returns_the_same_task(api, packaged_model):
    first = post(api, "/delete", {"embedding_model_id": "minilm", "task_id": "del-1"})
    again = post(api, "/delete", {"embedding_model_id": "minilm", "task_id": "del-1", "config": {}})
    assert (first.status_code, again.status_code) == (202, 200)
    assert DeletionTask.objects.count() == 1


def test_a_task_id_of_another_request_is_409(api, packaged_model):
    EmbeddingModelFactory(id="other")
    task_id = "1234"
    first = {"embedding_model_id": "minilm", "task_id": task_id, "config": {"expected_dimensions": 384}}
    assert post(api, "/deploy", first).status_code == 202
    for path, body in (
        ("/deploy", {**first, "embedding_model_id": "other"}),
        ("/delete", {"embedding_model_id": "minilm", "task_id": task_id}),
        ("/deploy", {**first, "config": {"expected_dimensions": 768}}),
        ("/deploy", {**first, "config": {}}),
        ("/deploy", {"embedding_model_id": "minilm", "task_id": task_id}),
    ):
        response = post(api, path, body)
        assert response.status_code == 409, body
        assert task_id in response.json()["detail"]
    assert DeploymentTask.objects.count() == 1 and DeletionTask.objects.count() == 0
    assert DeploymentTask.objects.get().config == {"expected_dimensions": 384}


BAD_BODIES = [
    ({}, "embedding_model_id"),
    ({"embedding_model_id": 123}, "embedding_model_id"),
    ({"embedding_model_id": None}, "embedding_model_id"),
    ({"embedding_model_id": ""}, "embedding_model_id"),
    ({"embedding_model_id": "x" * 129}, "embedding_model_id"),
    ({"embedding_model_id": "a/b"}, "embedding_model_id"),
    ({"embedding_model_id": ".."}, "embedding_model_id"),
    ({"embedding_model_id": "a..b"}, "embedding_model_id"),
    ({"embedding_model_id": "a\x00b"}, "embedding_model_id"),
    ({"embedding_model_id": " minilm"}, "embedding_model_id"),
    ({"embedding_model_id": "min lm"}, "embedding_model_id"),
    ({"embedding_model_id": "minilm\n"}, "embedding_model_id"),
    ({"embedding_model_id": "mini$lm"}, "embedding_model_id"),
    ({"model_id": ["minilm"]}, "model_id"),
    ({"model_id": "minilm", "embedding_model_id": "other"}, "model_id"),
    ({"embedding_model_id": "not-registered"}, "embedding_model_id"),
    ({"embedding_model_id": "minilm", "task_id": 12}, "task_id"),
    ({"embedding_model_id": "minilm", "task_id": None}, "task_id"),
    ({"embedding_model_id": "minilm", "task_id": ""}, "task_id"),
    ({"embedding_model_id": "minilm", "task_id": "x" * 129}, "task_id"),
    ({"embedding_model_id": "minilm", "task_id": "a/b"}, "task_id"),
    ({"embedding_model_id": "minilm", "task_id": ".."}, "task_id"),
    ({"embedding_model_id": "minilm", "task_id": ".hidden"}, "task_id"),
    ({"embedding_model_id": "minilm", "task_id": "a b"}, "task_id"),
    ({"embedding_model_id": "minilm", "task_id": " 1234"}, "task_id"),
    ({"embedding_model_id": "minilm", "task_id": "1234\n"}, "task_id"),
    ({"embedding_model_id": "minilm", "task_id": "a\x00b"}, "task_id"),
    ({"embedding_model_id": "minilm", "task_id": "a\x7fb"}, "task_id"),
    ({"embedding_model_id": "minilm", "task_id": "caf\u00e9"}, "task_id"),
    ({"embedding_model_id": "minilm", "task_id": "a?b"}, "task_id"),
    ({"embedding_model_id": "minilm", "task_id": "a%2Fb"}, "task_id"),
    ({"embedding_model_id": "minilm", "config": "fast"}, "config"),
    ({"embedding_model_id": "minilm", "config": None}, "config"),
    ({"embedding_model_id": "minilm", "config": {"param": "value"}}, "config.param"),
    ({"embedding_model_id": "minilm", "config": {"expected_dimensions": "384"}}, "config.expected_dimensions"),
    ({"embedding_model_id": "minilm", "config": {"expected_dimensions": 0}}, "config.expected_dimensions"),
    ({"embedding_model_id": "minilm", "config": {"expected_dimensions": True}}, "config.expected_dimensions"),
    ({"embedding_model_id": "minilm", "config": {"ready_timeout": 1e9}}, "config.ready_timeout"),
    ({"embedding_model_id": "minilm", "config": {"ready_timeout": 3000}}, "config.ready_timeout"),
    ({"embedding_model_id": "minilm", "priority": 1}, "priority"),
    (["minilm"], "non_field_errors"),
    ("minilm", "non_field_errors"),
]


@pytest.mark.parametrize("body,field", BAD_BODIES, ids=[repr(b)[:40] for b, _ in BAD_BODIES])
def test_bad_input_is_a_400_naming_the_field(api, packaged_model, body, field):
    response = post(api, "/deploy", body)
    assert response.status_code == 400, response.content
    error = response.json()
    assert field.split(".")[0] in error["errors"]
    if field != "non_field_errors":
        assert error["detail"].startswith(field)
    assert DeploymentTask.objects.count() == 0


def test_deletion_takes_no_config_keys(api, packaged_model):
    response = post(api, "/delete", {"embedding_model_id": "minilm", "config": {"expected_dimensions": 3}})
    assert response.status_code == 400
    assert "config.expected_dimensions" in response.json()["detail"]
    assert post(api, "/delete", {"embedding_model_id": "minilm", "config": {}}).status_code == 202


@pytest.mark.parametrize(
    "raw,content_type",
    [
        (b'{"embedding_model_id": "minilm"', "application/json"),
        (b"", "application/json"),
        (b"\xff\xfe", "application/json"),
        (b"NaN", "application/json"),
        (b"embedding_model_id=minilm", "application/x-www-form-urlencoded"),
    ],
)
def test_malformed_bodies_are_400_json(api, packaged_model, raw, content_type):
    response = api.post("/deploy", data=raw, content_type=content_type)
    assert response.status_code in (400, 415)
    assert response["Content-Type"] == "application/json"
    assert response.json()["detail"]


@pytest.mark.parametrize(
    "raw,says",
    [
        (b'{"embedding_model_id": "minilm"', "JSON parse error"),
        (b"\xff\xfe", "JSON parse error"),
        (b"NaN", "JSON parse error"),
    ],
)
@pytest.mark.parametrize("path", ["/deploy", "/models"])
def test_a_body_that_is_not_json_is_a_400_naming_the_body_as_validation_errors_do(api, path, raw, says):
    response = api.post(path, data=raw, content_type="application/json")
    assert response.status_code == 400
    body = response.json()
    assert set(body) == {"detail", "errors"}
    (problem,) = body["errors"]["body"]
    assert problem.startswith(says)
    assert body["detail"] == f"body: {problem}"


def test_an_oversized_body_is_400(api, packaged_model, settings):
    body = json.dumps({"embedding_model_id": "minilm", "config": {"x": "y" * settings.DATA_UPLOAD_MAX_MEMORY_SIZE}})
    response = api.post("/deploy", data=body, content_type="application/json")
    assert response.status_code == 400
    assert str(settings.DATA_UPLOAD_MAX_MEMORY_SIZE) in response.json()["errors"]["body"][0]  # names the limit
    assert DeploymentTask.objects.count() == 0


# -- GET /deploy/{task_id}, /delete/{task_id} ---------------------------------------------------


def test_get_a_task_by_id(api):
    task = DeploymentTaskFactory(status=TaskStatus.DONE, detail="ok", metadata={"revision": "r1"})
    body = api.get(f"/deploy/{task.pk}").json()
    assert body["task_id"] == str(task.pk)
    assert (body["status"], body["detail"], body["metadata"]) == ("done", "ok", {"revision": "r1"})


@pytest.mark.parametrize("kind", ["deploy", "delete"])
@pytest.mark.parametrize("task_id", [str(uuid.uuid4()), "1234", "job:1_a.b"])
@pytest.mark.parametrize("suffix", ["", "/events"])
def test_an_unknown_task_is_404_json_naming_it(api, kind, task_id, suffix):
    response = api.get(f"/{kind}/{task_id}{suffix}")
    assert response.status_code == 404
    assert task_id in response.json()["detail"]


UNSAFE_PATH_IDS = ["not%20a%20uuid", "..", ".x", "%00", "a%0Ab", "x" * 129, "caf%C3%A9", "a%2Cb"]


@pytest.mark.parametrize("task_id", UNSAFE_PATH_IDS)
@pytest.mark.parametrize("method,suffix", [("get", ""), ("get", "/events"), ("post", "/cancel"), ("post", "/retry")])
def test_an_unsafe_task_id_in_the_path_is_400_naming_task_id(api, task_id, method, suffix):
    response = getattr(api, method)(f"/deploy/{task_id}{suffix}")
    assert response.status_code == 400
    assert response.json()["detail"].startswith("task_id: ")
    assert set(response.json()["errors"]) == {"task_id"}


def test_delete_task_endpoints_read_deletion_tasks(api):
    # Regression: the origin's /delete/{task_id} and /delete-status read deployment tasks.
    deployment = DeploymentTaskFactory()
    assert api.get(f"/delete/{deployment.pk}").status_code == 404
    assert api.get(f"/delete-status/{deployment.embedding_model_id}").status_code == 404
    deletion = DeletionTaskFactory(embedding_model_id=deployment.embedding_model_id)
    assert api.get(f"/delete/{deletion.pk}").json()["task_id"] == str(deletion.pk)
    assert api.get(f"/delete-status/{deployment.embedding_model_id}").json()["task_id"] == str(deletion.pk)
    assert api.get(f"/deploy/{deletion.pk}").status_code == 404


# -- GET /deploy-status/{id}, /delete-status/{id} ------------------------------------------------


@pytest.mark.parametrize("kind,factory", [("deploy", DeploymentTaskFactory), ("delete", DeletionTaskFactory)])
def test_status_is_the_latest_task_of_the_model(api, kind, factory):
    model = EmbeddingModelFactory()
    factory(embedding_model_id=model.id, status=TaskStatus.DONE)
    latest = factory(embedding_model_id=model.id, status=TaskStatus.FAILED, detail="fetch: boom")
    body = api.get(f"/{kind}-status/{model.id}").json()
    assert (body["task_id"], body["status"], body["detail"]) == (str(latest.pk), "failed", "fetch: boom")


@pytest.mark.parametrize("kind", ["deploy", "delete"])
def test_status_of_a_model_without_tasks_is_404(api, kind):
    response = api.get(f"/{kind}-status/never-seen")
    assert response.status_code == 404
    assert "never-seen" in response.json()["detail"]


@pytest.mark.parametrize("model_id", ["a%20b", "a..b", "-a", "x" * 129, "a%00b", "%2e%2e", "a%24"])
def test_status_with_an_unsafe_id_is_400(api, model_id):
    response = api.get(f"/deploy-status/{model_id}")
    assert response.status_code == 400
    assert response.json()["detail"].startswith("embedding_model_id")


def test_a_slash_in_an_id_never_reaches_a_lookup(api):
    response = api.get("/deploy-status/a%2Fb")
    assert response.status_code == 404
    assert response.json()["detail"]


def test_an_unknown_path_is_404_json(api):
    response = api.get("/no-such-endpoint")
    assert (response.status_code, response["Content-Type"]) == (404, "application/json")
    body = response.json()
    assert list(body) == ["detail"] and "/no-such-endpoint" in body["detail"]


# -- listing, cancel, retry, events ---------------------------------------------------------------


def test_list_and_filter_tasks(api):
    model = EmbeddingModelFactory()
    done = DeploymentTaskFactory(embedding_model_id=model.id, status=TaskStatus.DONE)
    pending = DeploymentTaskFactory(embedding_model_id=model.id)
    DeploymentTaskFactory()
    assert len(api.get("/deploy").json()["results"]) == 3
    results = api.get(f"/deploy?embedding_model_id={model.id}").json()["results"]
    assert [r["task_id"] for r in results] == [str(pending.pk), str(done.pk)]
    results = api.get(f"/deploy?embedding_model_id={model.id}&status=done,failed").json()["results"]
    assert [r["task_id"] for r in results] == [str(done.pk)]
    assert api.get("/deploy?status=finished").status_code == 400
    assert api.get("/delete").json()["results"] == []


def test_a_pending_task_says_why_it_waits_wherever_it_is_read(api, django_capture_on_commit_callbacks):
    EmbeddingModelFactory(id="why")
    with django_capture_on_commit_callbacks(execute=True):
        first = post(api, "/deploy", {"embedding_model_id": "why"}).json()["task_id"]
    with django_capture_on_commit_callbacks(execute=True):
        second = post(api, "/delete", {"embedding_model_id": "why"}).json()["task_id"]
    handed_over = format_time(Task.objects.get(pk=first).dispatched_at)

    assert api.get(f"/deploy/{first}").json()["detail"] == f"waiting for a worker since {handed_over}"
    behind = f"queued behind {first} (deployment of why)"  # whole: the id it names can be looked up
    assert api.get(f"/delete/{second}").json()["detail"] == behind
    assert api.get("/delete-status/why").json()["detail"] == behind
    [listed] = api.get("/delete?embedding_model_id=why").json()["results"]
    assert (listed["task_id"], listed["detail"]) == (second, behind)

    canceled = post(api, f"/deploy/{first}/cancel", {}).json()
    assert canceled["detail"] == "canceled before it started"  # finished: its outcome, not a wait
    assert api.get(f"/delete/{second}").json()["detail"].startswith("waiting")  # now first in line


def test_a_clients_task_ids_are_named_whole_in_the_apis_details_and_refusals(api, django_capture_on_commit_callbacks):
    EmbeddingModelFactory(id="m")
    with django_capture_on_commit_callbacks(execute=True):
        post(api, "/deploy", {"embedding_model_id": "m", "task_id": "nightly:2026-12-01"})
        post(api, "/delete", {"embedding_model_id": "m", "task_id": "slow-bake-1"})

    behind = "queued behind nightly:2026-12-01 (deployment of m)"
    assert api.get("/delete/slow-bake-1").json()["detail"] == behind
    assert api.get("/delete-status/m").json()["detail"] == behind
    assert [task["detail"] for task in api.get("/delete?embedding_model_id=m").json()["results"]] == [behind]

    post(api, "/deploy/nightly:2026-12-01/cancel", {})
    with django_capture_on_commit_callbacks(execute=True):
        retried = post(api, "/deploy/nightly:2026-12-01/retry", {}).json()["task_id"]
    again = post(api, "/deploy/nightly:2026-12-01/retry", {})
    assert again.status_code == 409 and f"already retried as {retried} (attempt 2)" in again.json()["detail"]
    assert api.get(f"/deploy/{retried}").json()["detail"] == "queued behind slow-bake-1 (deletion of m)"


def test_cancel_a_pending_task(api):
    task = DeploymentTaskFactory()
    response = post(api, f"/deploy/{task.pk}/cancel", {})
    assert response.status_code == 200
    assert response.json()["status"] == "canceled"
    assert post(api, f"/deploy/{task.pk}/cancel", {}).status_code == 409
    events = api.get(f"/deploy/{task.pk}/events").json()
    assert [(e["stage"], e["state"]) for e in events] == [("status", "canceled")]


def test_a_processing_task_cannot_be_canceled(api):
    task = DeletionTaskFactory(status=TaskStatus.PROCESSING)
    response = post(api, f"/delete/{task.pk}/cancel", {})
    assert response.status_code == 409
    assert "processing" in response.json()["detail"]


def test_retry_a_failed_task_as_a_new_attempt(api):
    failed = DeploymentTaskFactory(status=TaskStatus.FAILED, config={"ready_timeout": 5})
    response = post(api, f"/deploy/{failed.pk}/retry", {})
    assert response.status_code == 202
    retry = DeploymentTask.objects.get(pk=response.json()["task_id"])
    assert (retry.retry_of, retry.attempt, retry.config, retry.status) == (failed, 2, {"ready_timeout": 5}, "pending")
    assert retry.sequence > failed.sequence
    assert response.json()["metadata"] == {"attempt": 2, "retry_of": str(failed.pk)}
    failed.refresh_from_db()
    assert failed.status == TaskStatus.FAILED  # history is never rewritten
    assert post(api, f"/deploy/{retry.pk}/retry", {}).status_code == 409  # pending: not finished


def test_a_second_retry_is_409_naming_the_newer_attempt(api):
    failed = DeletionTaskFactory(status=TaskStatus.CANCELED)
    first = post(api, f"/delete/{failed.pk}/retry", {})
    again = post(api, f"/delete/{failed.pk}/retry", {})
    assert (first.status_code, again.status_code) == (202, 409)
    assert again.json()["retried_as"] == first.json()["task_id"]
    assert first.json()["task_id"] in again.json()["detail"]
    assert DeletionTask.objects.filter(retry_of=failed).count() == 1


@pytest.mark.parametrize("status", [TaskStatus.DONE, TaskStatus.PENDING, TaskStatus.PROCESSING])
def test_only_failed_refused_or_canceled_tasks_are_retried(api, status):
    task = DeploymentTaskFactory(status=status)
    response = post(api, f"/deploy/{task.pk}/retry", {})
    assert response.status_code == 409
    assert f"it is {status}" in response.json()["detail"]
    assert "retried_as" not in response.json()
    assert DeploymentTask.objects.count() == 1


# -- the model registry -----------------------------------------------------------------------


def test_register_update_and_unregister_a_model(api, minilm_dir):
    response = post(api, "/models", {"id": "mini", "source": str(minilm_dir), "dimensions": 384})
    assert response.status_code == 201, response.content
    assert response.json()["state"] == "not_deployed"
    assert post(api, "/models", {"id": "mini", "source": str(minilm_dir)}).status_code == 400
    response = api.patch("/models/mini", data={"name": "MiniLM"}, format="json")
    assert response.json()["name"] == "MiniLM"
    assert api.get("/models").json()["results"][0]["id"] == "mini"
    EmbeddingModel.objects.filter(pk="mini").update(state="deployed", live_revision="r1")
    assert api.delete("/models/mini").status_code == 409
    EmbeddingModel.objects.filter(pk="mini").update(state="not_deployed", live_revision="")
    assert api.delete("/models/mini").status_code == 204
    assert api.get("/models/mini").status_code == 404


@pytest.mark.parametrize("method", ["patch", "put"])
def test_a_change_of_a_models_id_is_a_400_naming_id_and_changes_nothing(api, minilm_dir, method):
    assert post(api, "/models", {"id": "mini", "source": str(minilm_dir)}).status_code == 201
    body = {"id": "renamed", "name": "Renamed", "source": str(minilm_dir)}
    response = getattr(api, method)("/models/mini", data=body, format="json")
    assert response.status_code == 400
    (problem,) = response.json()["errors"]["id"]
    assert "'mini'" in problem and "'renamed'" in problem
    assert list(EmbeddingModel.objects.values_list("id", "name")) == [("mini", "mini")]
    # The same id as the path is no change: the rest of the body applies.
    same = getattr(api, method)("/models/mini", data={**body, "id": "mini"}, format="json")
    assert same.status_code == 200 and same.json()["name"] == "Renamed"


def test_a_model_from_the_hugging_face_cache_registers_only_when_the_cache_holds_it(
    api, minilm_dir, tmp_path, monkeypatch
):
    cache = tmp_path / "hf-cache"
    lay_out_hf_cache(cache, "sentence-transformers/all-MiniLM-L6-v2", minilm_dir)
    monkeypatch.setattr("deployments.inference.sources.hf_constants.HF_HUB_CACHE", str(cache))
    source = "hf://sentence-transformers/all-MiniLM-L6-v2@main"
    assert post(api, "/models", {"id": "mini-hf", "source": source}).status_code == 201
    missing = post(api, "/models", {"id": "other-hf", "source": "hf://acme/absent@main"})
    assert missing.status_code == 400
    assert "not in the local Hugging Face cache" in missing.json()["errors"]["source"][0]


def test_a_model_with_a_truncated_weights_file_is_not_registered(api, settings, tmp_path):
    folder = copy_packaged_model(tmp_path / "sources" / "minilm")
    settings.ALLOWED_SOURCE_ROOTS = [tmp_path / "sources"]
    truncate(folder / "model.safetensors", 751_485)
    response = post(api, "/models", {"id": "mini-cut", "source": str(folder)})
    assert response.status_code == 400
    [reason] = response.json()["errors"]["source"]
    assert reason.startswith(f"model.safetensors in {folder} is truncated: ") and "copy it again" in reason
    assert not EmbeddingModel.objects.filter(pk="mini-cut").exists()

    (folder / "model.safetensors").unlink()
    copy_packaged_model(tmp_path / "whole")
    (tmp_path / "whole" / "model.safetensors").rename(folder / "model.safetensors")  # copied again
    assert post(api, "/models", {"id": "mini-cut", "source": str(folder)}).status_code == 201
    (folder / "config.json").write_text("{")
    # Damaged since it was registered: renaming the model still works (the deploy's fetch names the file) ...
    assert api.patch("/models/mini-cut", data={"name": "MiniLM cut"}, format="json").status_code == 200
    # ... and setting a damaged source does not.
    response = api.patch("/models/mini-cut", data={"source": f"{folder}/"}, format="json")
    assert response.status_code == 400 and "config.json" in response.json()["errors"]["source"][0]


@pytest.mark.parametrize(
    "body,field",
    [
        ({"id": "m", "source": "/etc"}, "source"),
        ({"id": "m", "source": "relative/path"}, "source"),
        ({"id": "m", "source": "s3://bucket/model"}, "source"),
        ({"id": "../m", "source": "/etc"}, "id"),
        ({"id": "m", "source": "/x", "dimensions": "384"}, "dimensions"),
        ({"id": "m", "source": "/x", "state": "deployed", "colour": "blue"}, "colour"),
    ],
)
def test_registering_a_bad_model_is_400(api, body, field):
    response = post(api, "/models", body)
    assert response.status_code == 400
    assert field in response.json()["errors"]


def test_register_packaged_model_command(db):
    call_command("register_packaged_model")
    call_command("register_packaged_model")  # idempotent
    model = EmbeddingModel.objects.get()
    assert (model.id, model.dimensions) == ("all-minilm-l6-v2", 384)


# -- OpenAPI ---------------------------------------------------------------------------------


def test_openapi_schema_documents_the_six_endpoints(anonymous):
    response = anonymous.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    schema = json.loads(response.content)
    operations = {op["operationId"]: path for path, item in schema["paths"].items() for op in item.values()}
    assert {
        operations["deploy"],
        operations["get_deploy_task"],
        operations["get_model_deploy_status"],
        operations["delete"],
        operations["get_delete_task"],
        operations["get_model_delete_status"],
    } == {
        "/deploy",
        "/deploy/{task_id}",
        "/deploy-status/{embedding_model_id}",
        "/delete",
        "/delete/{task_id}",
        "/delete-status/{embedding_model_id}",
    }
    deploy = schema["paths"]["/deploy"]["post"]
    assert "examples" in deploy["requestBody"]["content"]["application/json"]
    assert anonymous.get("/api/docs/").status_code == 200


# -- hand-off to the queue (real commits) -------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_created_task_is_handed_to_the_queue_on_commit(api, packaged_model):
    response = post(api, "/deploy", {"embedding_model_id": "minilm"})
    assert response.status_code == 202
    assert DeploymentTask.objects.get(pk=response.json()["task_id"]).dispatched_at is not None


def broker_down(*args, **kwargs):
    raise ConnectionError("broker unreachable")


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("path", ["/deploy", "/delete"])
def test_a_failed_hand_off_is_a_503_with_retry_after_and_keeps_the_task(
    api, packaged_model, monkeypatch, settings, path
):
    settings.TASK_HANDOFF_GRACE_SECONDS = 45
    monkeypatch.setattr("deployments.services.tasks.async_task", broker_down)

    response = post(api, path, {"embedding_model_id": "minilm", "task_id": "1234"})

    assert response.status_code == 503
    assert response["Retry-After"] == "45"
    body = response.json()
    assert body["task_id"] == "1234"
    assert "1234 was created" in body["detail"] and "sends it again" in body["detail"]
    assert "unreachable" not in body["detail"]  # the broker's own error stays in the log
    task = Task.objects.get(pk="1234")
    assert (task.status, task.dispatched_at) == ("pending", None)

    # Sending the same request again is safe: it answers with the task, which is still there.
    again = post(api, path, {"embedding_model_id": "minilm", "task_id": "1234"})
    assert (again.status_code, again.json()["task_id"], again.json()["status"]) == (200, "1234", "pending")
    assert Task.objects.count() == 1

    # Once the broker is back, the sweeper hands it over after the grace period.
    monkeypatch.undo()
    assert services.sweep_tasks().resent == []
    assert services.sweep_tasks(now=timezone.now() + timedelta(seconds=46)).resent == ["1234"]
    assert Task.objects.get(pk="1234").dispatched_at is not None


@pytest.mark.django_db(transaction=True)
def test_a_retry_whose_hand_off_fails_is_a_503_naming_the_new_attempt(api, packaged_model, monkeypatch, settings):
    settings.TASK_HANDOFF_GRACE_SECONDS = 29.5  # Retry-After is whole seconds, rounded up
    failed = DeploymentTaskFactory(embedding_model_id="minilm", status=TaskStatus.FAILED)
    monkeypatch.setattr("deployments.services.tasks.async_task", broker_down)

    response = post(api, f"/deploy/{failed.pk}/retry", {})

    assert response.status_code == 503
    assert response["Retry-After"] == "30"
    attempt = DeploymentTask.objects.get(retry_of=failed)
    assert response.json()["task_id"] == attempt.pk and attempt.status == "pending"
    # A second click does not make a second attempt.
    again = post(api, f"/deploy/{failed.pk}/retry", {})
    assert (again.status_code, again.json()["retried_as"]) == (409, attempt.pk)
