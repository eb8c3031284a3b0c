"""The audit trail through the API: task and registry writes each leave an entry naming the token's user,
and GET /audit lists them (a token needed), filtered and in cursor pages."""

from __future__ import annotations

import json

import pytest
from rest_framework.test import APIClient

from deployments.models import AuditEntry, DeploymentTask, EmbeddingModel
from tests.support.factories import DeploymentTaskFactory, EmbeddingModelFactory, FailedDeploymentFactory

pytestmark = pytest.mark.django_db


def post(client: APIClient, path: str, body: object, **headers: str):
    return client.post(path, data=json.dumps(body), content_type="application/json", **headers)


def entry_of(object_id: str) -> AuditEntry:
    return AuditEntry.objects.get(object_id=object_id)


def test_creating_a_task_records_who_asked_for_what_with_the_request(api, operator, packaged_model):
    body = {"embedding_model_id": "minilm", "task_id": "audit-1", "config": {"expected_dimensions": 384}}
    assert post(api, "/deploy", body, HTTP_X_REQUEST_ID="req-42").status_code == 202

    entry = entry_of("audit-1")
    assert (entry.actor, entry.user, entry.via, entry.action) == ("operator", operator, "api", "create")
    assert (entry.object_kind, entry.embedding_model_id) == ("deployment", "minilm")
    assert entry.changes == {"config": {"expected_dimensions": 384}}
    assert (entry.request_id, entry.ip) == ("req-42", "127.0.0.1")

    assert post(api, "/deploy", body).status_code == 200  # the same request again creates nothing...
    assert AuditEntry.objects.count() == 1  # ...and records nothing


def test_a_client_address_that_is_no_ip_address_is_left_out_not_refused(api, packaged_model):
    # A server on a Unix socket has no peer address; the request must still go through.
    response = post(api, "/deploy", {"embedding_model_id": "minilm", "task_id": "sock"}, REMOTE_ADDR="unix:")
    assert response.status_code == 202
    assert entry_of("sock").ip is None


def test_cancel_and_retry_are_recorded_on_the_task_they_act_on(api, operator, packaged_model):
    pending = DeploymentTaskFactory(embedding_model_id="minilm")
    assert post(api, f"/deploy/{pending.pk}/cancel", {}).status_code == 200
    canceled = entry_of(pending.pk)
    assert (canceled.actor, canceled.via, canceled.action, canceled.changes) == ("operator", "api", "cancel", {})
    assert pending.events.get(state="canceled").actor == "operator"  # the timeline names the same user

    failed = FailedDeploymentFactory(embedding_model_id="minilm")
    response = post(api, f"/deploy/{failed.pk}/retry", {})
    assert response.status_code == 202
    attempt = DeploymentTask.objects.get(pk=response.json()["task_id"])
    retried = entry_of(failed.pk)
    assert (retried.actor, retried.user, retried.via, retried.action) == ("operator", operator, "api", "retry")
    assert retried.changes == {"retried_as": attempt.pk, "attempt": 2}

    assert post(api, f"/deploy/{failed.pk}/retry", {}).status_code == 409  # refused: nothing happened
    assert post(api, f"/deploy/{failed.pk}/cancel", {}).status_code == 409
    assert AuditEntry.objects.count() == 2


def test_registry_writes_record_each_changed_field_old_and_new(api, operator, minilm_dir):
    assert post(api, "/models", {"id": "mini", "source": str(minilm_dir), "dimensions": 384}).status_code == 201
    assert api.patch("/models/mini", data={"name": "MiniLM", "dimensions": 768}, format="json").status_code == 200
    assert api.patch("/models/mini", data={"name": "MiniLM"}, format="json").status_code == 200  # no change
    assert api.delete("/models/mini").status_code == 204

    entries = list(AuditEntry.objects.order_by("id"))
    assert [(e.action, e.object_kind, e.object_id, e.actor, e.via) for e in entries] == [
        ("create", "embedding_model", "mini", "operator", "api"),
        ("change", "embedding_model", "mini", "operator", "api"),
        ("delete", "embedding_model", "mini", "operator", "api"),
    ]
    created, changed, deleted = (e.changes for e in entries)
    assert created == {"name": [None, "mini"], "source": [None, str(minilm_dir)], "dimensions": [None, 384]}
    assert changed == {"name": ["mini", "MiniLM"], "dimensions": [384, 768]}
    assert deleted == {"name": ["MiniLM", None], "source": [str(minilm_dir), None], "dimensions": [768, None]}


def test_a_refused_registry_write_records_nothing(api):
    EmbeddingModelFactory(id="live", state="deployed", live_revision="r1")
    assert api.delete("/models/live").status_code == 409
    assert post(api, "/models", {"id": "m", "source": "/etc"}).status_code == 400
    assert not AuditEntry.objects.exists()
    assert EmbeddingModel.objects.filter(pk="live").exists()


def test_the_audit_list_needs_a_token(anonymous):
    response = anonymous.get("/audit")
    assert response.status_code == 401 and response["WWW-Authenticate"] == "Token"


def test_the_audit_list_is_newest_first_filtered_and_paged(api, reader, packaged_model):
    other = EmbeddingModelFactory(id="other")
    for task_id in ("a1", "a2", "a3"):
        assert post(api, "/deploy", {"embedding_model_id": "minilm", "task_id": task_id}).status_code == 202
    assert post(api, "/delete", {"embedding_model_id": other.id, "task_id": "o1"}).status_code == 202
    assert post(api, "/deploy/a1/cancel", {}).status_code == 200

    everything = reader.get("/audit").json()["results"]  # a reader (logged in, no permissions) may look
    assert [(e["object_id"], e["action"]) for e in everything] == [
        ("a1", "cancel"),
        ("o1", "create"),
        ("a3", "create"),
        ("a2", "create"),
        ("a1", "create"),
    ]
    assert set(everything[0]) == {
        "id",
        "at",
        "actor",
        "via",
        "action",
        "object_kind",
        "object_id",
        "embedding_model_id",
        "changes",
        "request_id",
        "ip",
    }

    by_model = api.get("/audit", {"embedding_model_id": "other"}).json()["results"]
    assert [(e["object_id"], e["object_kind"]) for e in by_model] == [("o1", "deletion")]
    by_task = api.get("/audit", {"task_id": "a1"}).json()["results"]
    assert [e["action"] for e in by_task] == ["cancel", "create"]
    canceled = api.get("/audit", {"action": "cancel,retry", "via": "api"}).json()["results"]
    assert [e["object_id"] for e in canceled] == ["a1"]
    assert api.get("/audit", {"via": "admin"}).json()["results"] == []

    first = api.get("/audit", {"embedding_model_id": "minilm", "page_size": 2}).json()
    second = api.get(first["next"]).json()
    pages = [[e["object_id"] for e in page["results"]] for page in (first, second)]
    assert pages == [["a1", "a3"], ["a2", "a1"]] and second["next"] is None


@pytest.mark.parametrize(
    "query,field",
    [
        ({"action": "create,explode"}, "action"),
        ({"via": "telepathy"}, "via"),
        ({"embedding_model_id": "../etc"}, "embedding_model_id"),
        ({"task_id": "a b"}, "task_id"),
    ],
)
def test_bad_audit_filters_are_a_400_naming_the_parameter(api, query, field):
    response = api.get("/audit", query)
    assert response.status_code == 400
    assert field in response.json()["errors"]


def test_the_audit_list_is_in_the_openapi_schema(anonymous):
    response = anonymous.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    operation = json.loads(response.content)["paths"]["/audit"]["get"]
    assert operation["operationId"] == "list_audit_entries"
    assert {"embedding_model_id", "task_id", "action", "via"} <= {p["name"] for p in operation["parameters"]}
