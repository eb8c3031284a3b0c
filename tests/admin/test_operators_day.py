"""An operator's day in the admin: the product's name, no internal rows, one revision length, short-id search,
bulk actions that account for every selected task, and actions on the task's and the model's own page."""

from __future__ import annotations

import pytest
from django.contrib import messages
from django.db import connection
from django.test.utils import CaptureQueriesContext

from deployments.admin.display import task_admin_url
from deployments.models import AuditEntry, DeletionTask, DeploymentTask, EmbeddingModel, ModelLease, TaskStatus
from tests.admin.test_admin import DEPLOYS_URL, MODELS_URL, reported, run_action, short
from tests.support.factories import (
    DeletionTaskFactory,
    DeploymentTaskFactory,
    EmbeddingModelFactory,
    FailedDeploymentFactory,
    FinishedDeploymentFactory,
    RunningDeploymentFactory,
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


def test_the_admin_shortens_only_the_ids_it_generated_never_a_clients(admin_client):
    model = EmbeddingModelFactory(id="m")
    nightly = FailedDeploymentFactory(id="nightly:2026-12-01", embedding_model_id=model.id)
    generated = FailedDeploymentFactory(embedding_model_id=model.id)
    DeploymentTaskFactory(id="slow-bake-1", embedding_model_id=model.id)
    DeploymentTaskFactory(embedding_model_id=model.id, sequence=99)

    listed = admin_client.get(DEPLOYS_URL).content.decode()
    assert f'<code title="{generated.pk}">{str(generated.pk)[:8]}</code>' in listed
    assert '<code title="nightly:2026-12-01">nightly:2026-12-01</code>' in listed
    assert '<code title="slow-bake-1">slow-bake-1</code>' in listed
    assert "queued behind slow-bake-1 (deployment of m)" in listed
    page = admin_client.get(task_admin_url(nightly.kind, nightly.pk)).content.decode()
    assert ">nightly:2026-12-01</code>" in page

    confirm = admin_client.get(task_admin_url(nightly.kind, nightly.pk).replace("/change/", "/retry/")).content.decode()
    assert "Yes, retry deployment nightly:2026-12-01" in confirm
    confirm = admin_client.get(
        task_admin_url(generated.kind, generated.pk).replace("/change/", "/retry/")
    ).content.decode()
    assert f"Retry deployment {str(generated.pk)[:8]}?" in confirm
    dashboard = admin_client.get("/admin/").content.decode()
    assert "<code>nightly:2026-12-01</code>" in dashboard and f"<code>{str(generated.pk)[:8]}</code>" in dashboard


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


# -- Retry and Cancel on the task's own page ----------------------------------------------------------


def object_actions(client, task) -> list[str]:
    response = client.get(f"{DEPLOYS_URL}{task.pk}/change/")
    assert response.status_code == 200
    return [action.label for action in response.context["object_actions"]]


def test_a_tasks_page_offers_what_its_status_allows(admin_client, viewer_client):
    model = EmbeddingModelFactory(id="offers")
    failed = FailedDeploymentFactory(embedding_model_id=model.id)
    pending = DeploymentTaskFactory(embedding_model_id=model.id)
    done = FinishedDeploymentFactory(embedding_model_id=model.id)
    running = RunningDeploymentFactory(embedding_model_id=model.id)

    assert object_actions(admin_client, failed) == ["Retry"]
    assert object_actions(admin_client, pending) == ["Cancel"]
    assert object_actions(admin_client, done) == object_actions(admin_client, running) == []
    page = admin_client.get(f"{DEPLOYS_URL}{failed.pk}/change/").content.decode()
    assert f'href="{DEPLOYS_URL}{failed.pk}/retry/"' in page and "Close" in page
    assert object_actions(viewer_client, failed) == object_actions(viewer_client, pending) == []
    assert viewer_client.post(f"{DEPLOYS_URL}{failed.pk}/retry/", {"post": "yes"}).status_code == 403
    assert viewer_client.post(f"{DEPLOYS_URL}{pending.pk}/cancel/", {"post": "yes"}).status_code == 403
    assert not DeploymentTask.objects.filter(retry_of=failed).exists()


def test_retry_from_the_tasks_page_asks_first_and_may_change_the_config(
    admin_client, django_capture_on_commit_callbacks
):
    failed = FailedDeploymentFactory(embedding_model_id=EmbeddingModelFactory(id="again").id)
    failed.config = {"expected_dimensions": 384}
    failed.save()
    url = f"{DEPLOYS_URL}{failed.pk}/retry/"

    confirm = admin_client.get(url)
    assert confirm.status_code == 200 and 'name="expected_dimensions" value="384"' in confirm.content.decode()
    assert not DeploymentTask.objects.filter(retry_of=failed).exists()  # nothing before the operator confirms

    too_long = admin_client.post(url, {"post": "yes", "expected_dimensions": "384", "ready_timeout": "3600"})
    assert too_long.status_code == 200 and "ready_timeout" in too_long.context["form"].errors
    assert "worker timeout" in too_long.content.decode()  # the API's own rule, said on the field
    assert not DeploymentTask.objects.filter(retry_of=failed).exists()

    with django_capture_on_commit_callbacks(execute=True):
        done = admin_client.post(url, {"post": "yes", "expected_dimensions": "768", "bake_seconds": "0"}, follow=True)

    attempt = DeploymentTask.objects.get(retry_of=failed)
    assert attempt.config == {"expected_dimensions": 768, "bake_seconds": 0.0} and attempt.attempt == 2
    assert attempt.requested_by == "root" and attempt.dispatched_at
    assert done.redirect_chain[-1][0] == f"{DEPLOYS_URL}{attempt.pk}/change/"
    [(level, message)] = reported(done)
    assert level == messages.SUCCESS and short(failed) in message and short(attempt) in message
    entry = AuditEntry.objects.get(action="retry")  # as the list's Retry and the API record it
    assert (entry.object_id, entry.via, entry.actor) == (failed.pk, "admin", "root")
    assert entry.changes == {"retried_as": attempt.pk, "attempt": 2, "config": attempt.config}


def test_retry_keeps_the_config_when_the_operator_leaves_it(admin_client, django_capture_on_commit_callbacks):
    failed = FailedDeploymentFactory(embedding_model_id=EmbeddingModelFactory(id="same").id)
    failed.config = {"expected_dimensions": 384}
    failed.save()
    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post(f"{DEPLOYS_URL}{failed.pk}/retry/", {"post": "yes", "expected_dimensions": "384"})
    assert DeploymentTask.objects.get(retry_of=failed).config == {"expected_dimensions": 384}
    assert AuditEntry.objects.get(action="retry").changes == {
        "retried_as": DeploymentTask.objects.get(retry_of=failed).pk,
        "attempt": 2,
    }


def test_a_refused_action_from_a_tasks_page_says_why_and_changes_nothing(admin_client):
    model = EmbeddingModelFactory(id="refuse")
    done = FinishedDeploymentFactory(embedding_model_id=model.id)
    running = RunningDeploymentFactory(embedding_model_id=model.id)

    for task, action, why in (
        (done, "retry", "Not retried: it is done: deploy the model again instead"),
        (running, "retry", "Not retried: it is processing: it has not finished yet"),
        (running, "cancel", "Not canceled: only a pending task can be; this one is processing"),
        (done, "cancel", "Not canceled: only a pending task can be; this one is done"),
    ):
        for method in (admin_client.get, admin_client.post):
            response = method(f"{DEPLOYS_URL}{task.pk}/{action}/", {"post": "yes"}, follow=True)
            assert response.status_code == 200 and response.redirect_chain[-1][0] == f"{DEPLOYS_URL}{task.pk}/change/"
            assert reported(response) == [(messages.ERROR, why)]
    assert DeploymentTask.objects.count() == 2 and not AuditEntry.objects.exists()
    missing = admin_client.get(f"{DEPLOYS_URL}no-such-task/retry/", follow=True)
    assert missing.status_code == 200 and "Perhaps it was deleted" in reported(missing)[0][1]


def test_cancel_from_a_tasks_page_asks_first_then_cancels(admin_client, django_capture_on_commit_callbacks):
    pending = DeploymentTaskFactory(embedding_model_id=EmbeddingModelFactory(id="stop").id)
    url = f"{DEPLOYS_URL}{pending.pk}/cancel/"

    confirm = admin_client.get(url)
    assert confirm.status_code == 200 and "Yes, cancel deployment" in confirm.content.decode()
    pending.refresh_from_db()
    assert pending.status == TaskStatus.PENDING

    with django_capture_on_commit_callbacks(execute=True):
        done = admin_client.post(url, {"post": "yes"}, follow=True)

    pending.refresh_from_db()
    assert pending.status == TaskStatus.CANCELED
    assert reported(done) == [(messages.SUCCESS, f"Canceled stop {short(pending)}")]
    entry = AuditEntry.objects.get(action="cancel")
    assert (entry.object_id, entry.via, entry.actor) == (pending.pk, "admin", "root")


# -- a model's page: its tasks, Deploy and Delete -------------------------------------------------------


def test_a_models_page_lists_its_latest_tasks_newest_first_and_links_to_all_of_them(admin_client, monkeypatch):
    monkeypatch.setattr("deployments.admin.registry.TASKS_SHOWN", 3)
    model = EmbeddingModelFactory(id="hist-page")
    oldest = FailedDeploymentFactory(embedding_model_id=model.id)
    middle = FinishedDeploymentFactory(embedding_model_id=model.id)
    deletion = DeletionTaskFactory(embedding_model_id=model.id)
    newest = DeploymentTaskFactory(embedding_model_id=model.id)
    elsewhere = DeploymentTaskFactory(embedding_model_id=EmbeddingModelFactory(id="other").id)

    page = admin_client.get(f"{MODELS_URL}{model.pk}/change/").content.decode()
    section = page[page.index("field-tasks") : page.index("field-audit")]

    links = [
        f"/admin/deployments/{kind}task/{task.pk}/change/"
        for kind, task in (("deployment", newest), ("deletion", deletion), ("deployment", middle))
    ]
    assert [section.index(link) for link in links] == sorted(section.index(link) for link in links)
    assert str(oldest.pk) not in section and str(elsewhere.pk) not in section  # the latest 3, its own
    assert (
        f'href="{DEPLOYS_URL}?model=hist-page"' in section
        and 'href="/admin/deployments/deletiontask/?model=hist-page"' in section
    )
    EmbeddingModelFactory(id="quiet")
    assert "No task has been created" in admin_client.get(f"{MODELS_URL}quiet/change/").content.decode()


def test_a_models_page_offers_deploy_and_delete_as_its_state_and_permissions_allow(admin_client, viewer_client):
    idle = EmbeddingModelFactory(id="idle")
    live = EmbeddingModelFactory(id="live", state="deployed", live_revision=REVISION)

    def offered(client, model) -> list[str]:
        return [action.label for action in client.get(f"{MODELS_URL}{model.pk}/change/").context["object_actions"]]

    assert offered(admin_client, idle) == ["Deploy"]
    assert offered(admin_client, live) == ["Deploy", "Delete from server"]
    assert offered(viewer_client, live) == []
    assert viewer_client.post(f"{MODELS_URL}live/deploy/", {"post": "yes"}).status_code == 403
    assert viewer_client.post(f"{MODELS_URL}live/delete-deployment/", {"post": "yes"}).status_code == 403
    assert not DeploymentTask.objects.exists()


def test_deploy_from_a_models_page_asks_first_then_submits_as_the_api_does(
    admin_client, django_capture_on_commit_callbacks
):
    model = EmbeddingModelFactory(id="one-deploy")
    url = f"{MODELS_URL}{model.pk}/deploy/"

    confirm = admin_client.get(url)
    assert confirm.status_code == 200 and 'name="expected_dimensions"' in confirm.content.decode()
    assert not DeploymentTask.objects.exists()
    refused = admin_client.post(url, {"post": "yes", "revision": "not-a-revision"})
    assert refused.status_code == 200 and "16 lowercase hex digits" in str(refused.context["form"].errors["revision"])
    assert not DeploymentTask.objects.exists()

    with django_capture_on_commit_callbacks(execute=True):
        done = admin_client.post(url, {"post": "yes", "expected_dimensions": "384"}, follow=True)

    task = DeploymentTask.objects.get()
    assert (task.embedding_model_id, task.config, task.status) == (
        "one-deploy",
        {"expected_dimensions": 384},
        "pending",
    )
    assert task.requested_by == "root" and task.dispatched_at  # handed to the queue on commit
    assert done.redirect_chain[-1][0] == f"{DEPLOYS_URL}{task.pk}/change/"
    [(level, message)] = reported(done)
    assert level == messages.SUCCESS and short(task) in message
    entry = AuditEntry.objects.get()
    assert (entry.action, entry.object_id, entry.via, entry.changes) == (
        "create",
        task.pk,
        "admin",
        {"config": {"expected_dimensions": 384}},
    )


def test_delete_from_a_models_page_asks_first_then_creates_a_deletion(admin_client, django_capture_on_commit_callbacks):
    model = EmbeddingModelFactory(id="one-delete", state="deployed", live_revision=REVISION)
    url = f"{MODELS_URL}{model.pk}/delete-deployment/"

    confirm = admin_client.get(url).content.decode()
    assert "clients calling it will get errors" in confirm and 'name="expected_dimensions"' not in confirm
    assert not DeletionTask.objects.exists()

    with django_capture_on_commit_callbacks(execute=True):
        done = admin_client.post(url, {"post": "yes"}, follow=True)

    task = DeletionTask.objects.get()
    assert (task.embedding_model_id, task.status, task.requested_by) == ("one-delete", "pending", "root")
    assert done.redirect_chain[-1][0] == f"/admin/deployments/deletiontask/{task.pk}/change/"
    assert AuditEntry.objects.get().object_kind == "deletion"
    assert EmbeddingModel.objects.filter(pk="one-delete").exists()  # still registered


@pytest.mark.skipif(connection.vendor != "sqlite", reason="SQLite's query plan")
def test_a_search_by_the_start_of_a_task_id_is_an_index_seek(admin_client):
    wanted = FailedDeploymentFactory()
    with CaptureQueriesContext(connection) as queries:
        admin_client.get(DEPLOYS_URL, {"q": str(wanted.pk)[:8]})
    [lookup] = [query["sql"] for query in queries.captured_queries if '"id" >= ' in query["sql"]]
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN QUERY PLAN {lookup}")
        plan = " ".join(str(row[-1]) for row in cursor.fetchall())
    assert "SEARCH" in plan and "sqlite_autoindex_deployments_task" in plan and "(id>? AND id<?)" in plan, plan


def test_retrying_a_deletion_from_its_page_has_no_config_to_change(admin_client, django_capture_on_commit_callbacks):
    failed = DeletionTaskFactory(embedding_model_id=EmbeddingModelFactory(id="gone").id, status=TaskStatus.FAILED)
    url = f"/admin/deployments/deletiontask/{failed.pk}/retry/"

    confirm = admin_client.get(url).content.decode()
    assert "Yes, retry deletion" in confirm and "Config of the new attempt" not in confirm
    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post(url, {"post": "yes"})

    attempt = DeletionTask.objects.get(retry_of=failed)
    assert (attempt.config, attempt.attempt, attempt.status) == ({}, 2, TaskStatus.PENDING)


def test_select_all_matching_acts_on_what_the_filter_shows(admin_client, django_capture_on_commit_callbacks):
    model = EmbeddingModelFactory(id="across")
    waiting = [DeploymentTaskFactory(embedding_model_id=model.id) for _ in range(3)]
    running = RunningDeploymentFactory(embedding_model_id=model.id)

    with django_capture_on_commit_callbacks(execute=True):
        response = run_action(
            admin_client, f"{DEPLOYS_URL}?status__exact=pending", "cancel_selected", waiting[:1], select_across="1"
        )

    [(level, message)] = reported(response)
    assert level == messages.SUCCESS and message.startswith("Canceled 3 task(s)")
    assert DeploymentTask.objects.filter(status=TaskStatus.CANCELED).count() == 3
    running.refresh_from_db()
    assert running.status == TaskStatus.PROCESSING
