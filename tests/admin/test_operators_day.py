"""An operator's day in the admin: the product's name, no internal rows, one revision length, short-id search,
bulk actions that account for every selected task, and actions on the task's and the model's own page."""

from __future__ import annotations

import pytest
from django.contrib import messages

from deployments.models import AuditEntry, DeploymentTask, ModelLease, TaskStatus
from tests.admin.test_admin import DEPLOYS_URL, MODELS_URL, reported, run_action, short
from tests.support.factories import (
    DeploymentTaskFactory,
    EmbeddingModelFactory,
    FailedDeploymentFactory,
    FinishedDeploymentFactory,
)

pytestmark = pytest.mark.django_db

REVISION = "0123456789abcdef"


# -- the header, internal rows ----------------------------------------------------------------------


def test_every_page_carries_the_products_name(admin_client):
    index = admin_client.get("/admin/").content.decode()
    assert "<title>Control room | Embedding deployments</title>" in index
    assert '<a href="/admin/">Embedding deployments</a>' in index and "Django administration" not in index
    models = admin_client.get(MODELS_URL).content.decode()
    assert "| Embedding deployments</title>" in models


def test_the_queues_own_pages_are_not_in_the_control_room(admin_client):
    index = admin_client.get("/admin/").content.decode()
    assert "/admin/django_q/" not in index and "Failed tasks" not in index
    for page in ("failure", "success", "schedule", "ormq"):
        assert admin_client.get(f"/admin/django_q/{page}/").status_code == 404


def test_the_leases_list_shows_models_leases_not_the_old_capacity_row(admin_client):
    ModelLease.objects.create(embedding_model_id="lease-me", owner="host:1:abc")
    ModelLease.objects.create(embedding_model_id="~capacity")
    response = admin_client.get("/admin/deployments/modellease/")
    assert [lease.pk for lease in response.context["cl"].result_list] == ["lease-me"]
    assert "~capacity" not in response.content.decode()


# -- one revision length -----------------------------------------------------------------------------


def test_a_revision_is_shown_whole_on_every_page(admin_client):
    model = EmbeddingModelFactory(id="rev", state="deployed", live_revision=REVISION)
    task = FinishedDeploymentFactory(embedding_model_id=model.id)
    task.metadata = {**task.metadata, "revision": REVISION, "previous_revision": "fedcba9876543210"}
    task.save()
    whole = f'<code class="cr-revision">{REVISION}</code>'

    assert whole in admin_client.get(MODELS_URL).content.decode()
    assert whole in admin_client.get(f"{MODELS_URL}{model.pk}/change/").content.decode()
    detail = admin_client.get(f"{DEPLOYS_URL}{task.pk}/change/").content.decode()
    assert whole in detail and '<code class="cr-revision">fedcba9876543210</code>' in detail
    assert whole in admin_client.get("/admin/").content.decode()  # the dashboard's deployed models
    confirm = run_action(admin_client, MODELS_URL, "deploy_selected", [model]).content.decode()
    assert whole in confirm
    for page in (MODELS_URL, "/admin/"):
        assert REVISION[:12] + "<" not in admin_client.get(page).content.decode()  # never cut short


# -- search by what the pages show --------------------------------------------------------------------


def test_task_lists_find_a_task_by_the_short_id_they_show_and_a_model_by_part_of_its_id(admin_client):
    minilm = EmbeddingModelFactory(id="all-minilm-l6-v2")
    wanted = FailedDeploymentFactory(embedding_model_id=minilm.id)
    other = FinishedDeploymentFactory(embedding_model_id=EmbeddingModelFactory(id="bge-small").id)

    def listed(url: str, term: str) -> set:
        response = admin_client.get(url, {"q": term})
        assert response.status_code == 200
        return {row.pk for row in response.context["cl"].result_list}

    shown = admin_client.get(DEPLOYS_URL).content.decode()
    short_id = str(wanted.pk)[:8]
    assert f">{short_id}</code>" in shown  # what the list shows is what the search takes
    assert listed(DEPLOYS_URL, short_id) == {wanted.pk}
    assert listed(DEPLOYS_URL, str(wanted.pk)) == {wanted.pk}
    assert listed(DEPLOYS_URL, "minilm") == listed(DEPLOYS_URL, "MiniLM") == {wanted.pk}
    assert listed(DEPLOYS_URL, "small") == {other.pk}
    assert listed(DEPLOYS_URL, "a b") == listed(DEPLOYS_URL, ".hidden") == set()  # not a task id: nothing
    assert listed(MODELS_URL, "minilm") == {"all-minilm-l6-v2"}


# -- bulk actions account for every selected task -------------------------------------------------------


def test_cancel_on_a_filtered_list_names_every_selected_task_even_those_the_filter_now_drops(
    admin_client, django_capture_on_commit_callbacks
):
    model = EmbeddingModelFactory(id="ten")
    selected = [DeploymentTaskFactory(embedding_model_id=model.id) for _ in range(10)]
    started = selected[:2]  # between drawing the page and clicking: two tasks start
    DeploymentTask.objects.filter(pk__in=[task.pk for task in started]).update(status=TaskStatus.PROCESSING)
    pruned = DeploymentTaskFactory(embedding_model_id=model.id)
    pruned_id = str(pruned.pk)
    DeploymentTask.objects.filter(pk=pruned_id).delete()  # pruned meanwhile

    with django_capture_on_commit_callbacks(execute=True):
        response = run_action(
            admin_client, f"{DEPLOYS_URL}?status__exact=pending", "cancel_selected", [*selected, pruned]
        )

    assert DeploymentTask.objects.filter(status=TaskStatus.CANCELED).count() == 8
    (done_level, done), (skipped_level, skipped), (gone_level, gone) = reported(response)
    assert done_level == messages.SUCCESS and done.startswith("Canceled 8 of 11 selected task(s)")
    assert skipped_level == messages.WARNING and skipped.startswith("Not canceled 2 of 11 selected task(s)")
    for task in started:
        assert f"{short(task)} (only a pending task can be canceled; this one is processing)" in skipped
    assert gone_level == messages.WARNING and f"{pruned_id[:8]} (no such deployment task any more)" in gone
    assert AuditEntry.objects.filter(action="cancel").count() == 8  # one per task canceled, as before


def test_retry_acts_on_the_selected_ids_not_the_filtered_list(admin_client, django_capture_on_commit_callbacks):
    model = EmbeddingModelFactory(id="sel")
    failed = FailedDeploymentFactory(embedding_model_id=model.id)
    refused = DeploymentTaskFactory(embedding_model_id=model.id, status=TaskStatus.REFUSED)

    with django_capture_on_commit_callbacks(execute=True):
        response = run_action(admin_client, f"{DEPLOYS_URL}?status__exact=failed", "retry_selected", [failed, refused])

    [(level, message)] = reported(response)
    assert level == messages.SUCCESS and message.startswith("Retried 2 task(s)")  # every one acted on: no "of"
    assert DeploymentTask.objects.filter(retry_of__in=[failed, refused]).count() == 2
