"""The audit trail in the admin: saves, deletes and actions leave entries naming the staff user, and each
task's and model's page shows its own."""

from __future__ import annotations

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME

from deployments import services
from deployments.models import AuditEntry, DeploymentTask, EmbeddingModel, TaskStatus
from deployments.services.audit import Actor
from deployments.services.tasks import retry_lost_attempt
from tests.support.factories import DeploymentTaskFactory, EmbeddingModelFactory, FailedDeploymentFactory

pytestmark = pytest.mark.django_db

MODELS_URL = "/admin/deployments/embeddingmodel/"
DEPLOYS_URL = "/admin/deployments/deploymenttask/"
AUDIT_URL = "/admin/deployments/auditentry/"

# What a browser sends with a model's form: the (empty) formset of its drifts shown below the fields.
DRIFTS_FORMSET = {f"drifts-{key}": "0" for key in ("TOTAL_FORMS", "INITIAL_FORMS", "MIN_NUM_FORMS", "MAX_NUM_FORMS")}


def run_action(client, url: str, action: str, objects, **extra):
    data = {"action": action, ACTION_CHECKBOX_NAME: [str(obj.pk) for obj in objects], **extra}
    return client.post(url, data, follow=True)


def test_an_admin_change_of_a_model_records_which_fields_changed_old_and_new(admin_client, admin_user, minilm_dir):
    model = EmbeddingModelFactory(id="edited", name="Old", source=str(minilm_dir), dimensions=None)
    form = {"name": "New", "source": str(minilm_dir), "dimensions": "384", **DRIFTS_FORMSET}

    assert admin_client.post(f"{MODELS_URL}{model.pk}/change/", form).status_code == 302
    assert admin_client.post(f"{MODELS_URL}{model.pk}/change/", form).status_code == 302  # saved unchanged

    entry = AuditEntry.objects.get()
    assert (entry.actor, entry.user, entry.via, entry.action) == ("root", admin_user, "admin", "change")
    assert (entry.object_kind, entry.object_id, entry.ip) == ("embedding_model", "edited", "127.0.0.1")
    assert entry.changes == {"name": ["Old", "New"], "dimensions": [None, 384]}


def test_adding_and_deleting_a_model_in_the_admin_are_recorded(admin_client, minilm_dir):
    added = {"id": "added", "name": "Added", "source": str(minilm_dir), "dimensions": "", **DRIFTS_FORMSET}
    assert admin_client.post(f"{MODELS_URL}add/", added).status_code == 302
    assert admin_client.post(f"{MODELS_URL}added/delete/", {"post": "yes"}).status_code == 302
    assert not EmbeddingModel.objects.exists()

    created, deleted = AuditEntry.objects.order_by("id")
    assert (created.action, created.via, created.actor) == ("create", "admin", "root")
    assert created.changes == {"name": [None, "Added"], "source": [None, str(minilm_dir)]}
    assert (deleted.action, deleted.via, deleted.object_id) == ("delete", "admin", "added")
    assert deleted.changes == {"name": ["Added", None], "source": [str(minilm_dir), None]}


def test_bulk_retry_and_cancel_record_each_task_they_acted_on(admin_client, django_capture_on_commit_callbacks):
    model = EmbeddingModelFactory(id="bulk")
    failed = [FailedDeploymentFactory(embedding_model_id=model.id) for _ in range(2)]
    done = DeploymentTaskFactory(embedding_model_id=model.id, status=TaskStatus.DONE)

    with django_capture_on_commit_callbacks(execute=True):
        run_action(admin_client, DEPLOYS_URL, "retry_selected", [*failed, done])
    retries = AuditEntry.objects.filter(action="retry")
    assert {(e.object_id, e.actor, e.via) for e in retries} == {(t.pk, "root", "admin") for t in failed}
    for task in failed:
        attempt = DeploymentTask.objects.get(retry_of=task)
        assert retries.get(object_id=task.pk).changes == {"retried_as": attempt.pk, "attempt": 2}

    attempts = list(DeploymentTask.objects.filter(status=TaskStatus.PENDING))
    run_action(admin_client, DEPLOYS_URL, "cancel_selected", [*attempts, done])
    cancels = AuditEntry.objects.filter(action="cancel")
    assert {(e.object_id, e.actor, e.via) for e in cancels} == {(t.pk, "root", "admin") for t in attempts}
    assert not AuditEntry.objects.filter(object_id=done.pk).exists()  # skipped: nothing happened to it


def test_deploy_selected_records_a_create_per_model(admin_client, django_capture_on_commit_callbacks):
    models = [EmbeddingModelFactory(id="sel-a"), EmbeddingModelFactory(id="sel-b")]
    with django_capture_on_commit_callbacks(execute=True):
        run_action(admin_client, MODELS_URL, "deploy_selected", models, post="yes")
    entries = AuditEntry.objects.order_by("embedding_model_id")
    assert [(e.embedding_model_id, e.object_kind, e.action, e.via) for e in entries] == [
        ("sel-a", "deployment", "create", "admin"),
        ("sel-b", "deployment", "create", "admin"),
    ]
    assert {e.object_id for e in entries} == set(DeploymentTask.objects.values_list("pk", flat=True))


def test_a_tasks_page_shows_who_did_what_to_it(admin_client, django_capture_on_commit_callbacks):
    EmbeddingModelFactory(id="shown")
    alice = Actor(name="alice", via=AuditEntry.Via.API)
    task = services.submit_deployment("shown", task_id="watched", requested_by=alice).task
    services.cancel_task(task, by=Actor(name="bob", via=AuditEntry.Via.ADMIN))
    services.submit_deployment("shown", task_id="unrelated", requested_by=Actor(name="carol"))

    section = admin_client.get(f"{DEPLOYS_URL}watched/change/").content.decode().split("field-audit", 1)[1]
    assert "<code>alice</code>" in section and "<code>bob</code>" in section
    assert section.index("<strong>Cancel</strong>") < section.index("<strong>Create</strong>")  # newest first
    assert "carol" not in section

    empty = DeploymentTaskFactory(embedding_model_id="shown")
    assert b"Nobody has acted on it" in admin_client.get(f"{DEPLOYS_URL}{empty.pk}/change/").content


def test_a_retried_attempts_page_says_who_asked_for_the_retry(admin_client, api):
    EmbeddingModelFactory(id="retried")
    failed = FailedDeploymentFactory(embedding_model_id="retried")
    attempt = services.retry_task(failed, requested_by=Actor(name="alice", via=AuditEntry.Via.API))
    lost = FailedDeploymentFactory(embedding_model_id="retried")
    automatic = retry_lost_attempt(lost, by=Actor(name="sweeper", via=AuditEntry.Via.SYSTEM))

    page = admin_client.get(f"{DEPLOYS_URL}{attempt.pk}/change/").content.decode()
    section = page.split("field-audit", 1)[1]
    assert "Nobody has acted on it" not in section
    assert "<code>alice</code>" in section and "<strong>Retry</strong>" in section
    assert f"retried_as: {attempt.pk}" in section and f"/deploymenttask/{failed.pk}/change/" in section
    assert "sweeper" not in section  # another task's retry
    section = admin_client.get(f"{DEPLOYS_URL}{automatic.pk}/change/").content.decode().split("field-audit", 1)[1]
    assert "<code>sweeper</code>" in section and "alice" not in section
    # The API's trail of the attempt says the same.
    entries = api.get("/audit", {"task_id": attempt.pk}).json()["results"]
    assert [(e["actor"], e["action"], e["object_id"]) for e in entries] == [("alice", "retry", failed.pk)]


def test_a_models_page_shows_its_registry_changes_and_its_tasks_entries(admin_client, minilm_dir):
    model = services.register_model("paged", str(minilm_dir), by=Actor(name="alice", via=AuditEntry.Via.API))
    services.update_model(model, name="Paged", by=Actor(name="bob", via=AuditEntry.Via.ADMIN))
    services.submit_deletion("paged", task_id="paged-del", requested_by=Actor(name="carol"))
    services.register_model("elsewhere", str(minilm_dir), by=Actor(name="dave"))

    page = admin_client.get(f"{MODELS_URL}paged/change/").content.decode()
    section = page.split("field-audit", 1)[1]
    assert all(f"<code>{name}</code>" in section for name in ("alice", "bob", "carol"))
    assert "name: paged → Paged" in section
    assert "/admin/deployments/deletiontask/paged-del/change/" in section
    assert "dave" not in section
    assert "field-audit" not in admin_client.get(f"{MODELS_URL}add/").content.decode()


def test_the_audit_list_is_read_only_and_searched_by_exact_ids(admin_client, minilm_dir):
    services.register_model("listed", str(minilm_dir), by=Actor(name="alice"))
    services.register_model("other", str(minilm_dir), by=Actor(name="bob"))

    response = admin_client.get(AUDIT_URL, {"q": "listed"})
    assert response.status_code == 200
    assert [entry.object_id for entry in response.context["cl"].result_list] == ["listed"]
    assert [e.actor for e in admin_client.get(AUDIT_URL, {"via": "system"}).context["cl"].result_list] == [
        "bob",
        "alice",
    ]
    entry = AuditEntry.objects.get(object_id="listed")
    assert admin_client.get(f"{AUDIT_URL}add/").status_code == 403
    assert admin_client.post(f"{AUDIT_URL}{entry.pk}/delete/", {"post": "yes"}).status_code == 403
    assert AuditEntry.objects.count() == 2
