"""The admin as a control room, through Django's test client: models, history, actions, timeline, dashboard."""

from __future__ import annotations

import json
import re
import uuid
from datetime import timedelta

import pytest
from django.contrib import messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from deployments.admin.filters import CappedCountPaginator
from deployments.models import DeletionTask, DeploymentTask, EmbeddingModel, EngineEvent, TaskStatus, WorkerCluster
from tests.support.artifacts import small_model_folder, truncate
from tests.support.factories import (
    DeletionTaskFactory,
    DeploymentTaskFactory,
    EmbeddingModelFactory,
    FailedDeploymentFactory,
    FinishedDeletionFactory,
    FinishedDeploymentFactory,
    RunningDeploymentFactory,
    cluster_with_heartbeat,
)

pytestmark = pytest.mark.django_db

MODELS_URL = "/admin/deployments/embeddingmodel/"
DEPLOYS_URL = "/admin/deployments/deploymenttask/"
DELETES_URL = "/admin/deployments/deletiontask/"


CONFIRM_TEMPLATE = "admin/deployments/embeddingmodel/confirm_tasks.html"


def reported(response) -> list[tuple[int, str]]:
    """The action's messages as (level, text): success, warning or error is the outcome."""
    return [(message.level, str(message)) for message in response.context["messages"]]


def count_in(message: str) -> int:
    """The count an action's message opens with ("<Verb> 3 task(s): ...")."""
    return int(re.search(r"\d+", message).group())


def short(task) -> str:
    return str(task.pk)[:8]


def run_action(client, url: str, action: str, objects, **extra):
    data = {"action": action, ACTION_CHECKBOX_NAME: [str(obj.pk) for obj in objects], **extra}
    return client.post(url, data, follow=True)


# -- models ---------------------------------------------------------------------------------------


def test_models_list_state_revision_endpoint_dimensions_and_the_latest_tasks(admin_client):
    model = EmbeddingModelFactory(
        id="m-live", state="deployed", live_revision="abcdef0123456789", endpoint="http://s/v2/models/m-live/infer"
    )
    FailedDeploymentFactory(embedding_model_id=model.id)
    latest = FinishedDeploymentFactory(embedding_model_id=model.id)
    deletion = FinishedDeletionFactory(embedding_model_id=model.id)

    page = admin_client.get(MODELS_URL).content.decode()

    assert "Deployed" in page and "abcdef012345" in page and "http://s/v2/models/m-live/infer" in page
    assert f"/admin/deployments/deploymenttask/{latest.pk}/change/" in page  # the latest, not the first
    assert f"/admin/deployments/deletiontask/{deletion.pk}/change/" in page
    assert 'value="deploy_selected"' in page and 'value="delete_selected_deployments"' in page
    assert 'value="delete_selected"' not in page  # unregistering is not a bulk action here


def test_models_list_shows_dimensions_of_a_live_revision_only(admin_client):
    EmbeddingModelFactory(id="dim-live", state="deployed", live_revision="abcdef0123456789", dimensions=384)
    EmbeddingModelFactory(id="dim-expected", dimensions=768)
    EmbeddingModelFactory(id="dim-unknown")

    page = admin_client.get(MODELS_URL).content.decode()
    cells = dict(
        re.findall(r'<th class="field-id_and_name"><a [^>]*>([\w-]+)</a>.*?<td class="field-dim">(.*?)</td>', page)
    )

    assert cells == {
        "dim-live": "384",
        "dim-expected": '<span title="768 expected; no revision is live">—</span>',
        "dim-unknown": "—",
    }


def test_models_list_fetches_the_latest_tasks_with_the_page_not_per_row(admin_client):
    def queries_for_page() -> int:
        with CaptureQueriesContext(connection) as queries:
            assert admin_client.get(MODELS_URL).status_code == 200
        return len(queries)

    for _ in range(2):
        FinishedDeploymentFactory(embedding_model_id=EmbeddingModelFactory().id)
    few = queries_for_page()
    for _ in range(10):
        FinishedDeploymentFactory(embedding_model_id=EmbeddingModelFactory().id)
    assert queries_for_page() == few


def test_deploy_selected_asks_first_then_creates_tasks_as_the_api_does(
    admin_client, django_capture_on_commit_callbacks
):
    first, second = EmbeddingModelFactory(id="dep-a"), EmbeddingModelFactory(id="dep-b")

    confirm = run_action(admin_client, MODELS_URL, "deploy_selected", [first, second])
    assert confirm.status_code == 200
    assert CONFIRM_TEMPLATE in [template.name for template in confirm.templates]
    assert (confirm.context["verb"], [m.id for m in confirm.context["models"]]) == ("deploy", ["dep-a", "dep-b"])
    assert b'name="post" value="yes"' in confirm.content  # the confirmation posts back
    assert not DeploymentTask.objects.exists()  # nothing happens before the operator confirms

    with django_capture_on_commit_callbacks(execute=True):
        done = run_action(admin_client, MODELS_URL, "deploy_selected", [first, second], post="yes")

    tasks = DeploymentTask.objects.order_by("embedding_model_id")
    assert [t.embedding_model_id for t in tasks] == ["dep-a", "dep-b"]
    assert all(t.status == "pending" and t.requested_by == "root" and t.dispatched_at for t in tasks)
    assert all(t.metadata == {"attempt": 1, "retry_of": None} and t.config == {} for t in tasks)
    ((level, created),) = reported(done)
    assert level == messages.INFO and count_in(created) == 2
    assert all(t.embedding_model_id in created and short(t) in created for t in tasks)


def test_delete_selected_asks_first_then_creates_deletion_tasks(admin_client, django_capture_on_commit_callbacks):
    model = EmbeddingModelFactory(id="del-a", state="deployed", live_revision="r1")

    confirm = run_action(admin_client, MODELS_URL, "delete_selected_deployments", [model])
    assert CONFIRM_TEMPLATE in [template.name for template in confirm.templates]
    assert (confirm.context["verb"], confirm.context["task_kind"]) == ("delete", "deletion")
    assert [m.id for m in confirm.context["models"]] == ["del-a"]
    assert not DeletionTask.objects.exists()

    with django_capture_on_commit_callbacks(execute=True):
        done = run_action(admin_client, MODELS_URL, "delete_selected_deployments", [model], post="yes")

    task = DeletionTask.objects.get()
    assert (task.embedding_model_id, task.status, task.requested_by) == ("del-a", "pending", "root")
    ((level, created),) = reported(done)
    assert level == messages.INFO and count_in(created) == 1 and "del-a" in created and short(task) in created
    assert EmbeddingModel.objects.filter(pk="del-a").exists()  # still registered


def test_staff_without_task_permissions_sees_no_deploy_or_delete_action(viewer_client):
    EmbeddingModelFactory()
    page = viewer_client.get(MODELS_URL).content.decode()
    assert "deploy_selected" not in page and "delete_selected_deployments" not in page


def test_a_deployed_model_cannot_be_unregistered_from_its_page(admin_client):
    model = EmbeddingModelFactory(state="deployed", live_revision="r1")
    assert admin_client.get(f"{MODELS_URL}{model.pk}/delete/").status_code == 403


def test_registering_a_model_in_the_admin_goes_through_the_registry(admin_client, minilm_dir):
    response = admin_client.post(
        f"{MODELS_URL}add/", {"id": "from-admin", "name": "", "source": str(minilm_dir), "dimensions": 384}
    )
    assert response.status_code == 302
    model = EmbeddingModel.objects.get(pk="from-admin")
    assert model.name == "from-admin"  # register_model names it after its id

    refused = admin_client.post(f"{MODELS_URL}add/", {"id": "elsewhere", "source": "/etc", "dimensions": ""})
    assert refused.status_code == 200
    errors = refused.context["adminform"].form.errors
    assert list(errors) == ["source"] and "/etc" in errors["source"][0]
    assert not EmbeddingModel.objects.filter(pk="elsewhere").exists()


def test_a_tracking_server_not_allowed_is_an_error_on_its_field_in_the_admin(
    admin_client, elsewhere, mlflow_token, monkeypatch
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://mlflow.example.com")
    monkeypatch.delenv("MLFLOW_ALLOWED_TRACKING_URIS", raising=False)
    form = {"id": "phoning-home", "source": "models:/embedder/1", "mlflow_tracking_uri": elsewhere.url}
    refused = admin_client.post(f"{MODELS_URL}add/", {**form, "dimensions": ""})
    assert refused.status_code == 200
    errors = refused.context["adminform"].form.errors
    assert list(errors) == ["mlflow_tracking_uri"]  # the source is not asked of that server
    assert errors["mlflow_tracking_uri"][0].startswith(f"MLflow tracking server {elsewhere.url} is not allowed")
    assert "allowed: https://mlflow.example.com" in errors["mlflow_tracking_uri"][0]
    assert not EmbeddingModel.objects.filter(pk="phoning-home").exists()
    assert elsewhere.received == []


def test_a_model_with_damaged_artifacts_is_not_registered_in_the_admin(admin_client, settings, tmp_path):
    folder = small_model_folder(tmp_path / "sources" / "small")
    settings.ALLOWED_SOURCE_ROOTS = [tmp_path / "sources"]
    (folder / "modules.json").write_text('[{"idx": 0')
    refused = admin_client.post(f"{MODELS_URL}add/", {"id": "damaged", "source": str(folder), "dimensions": ""})
    assert refused.status_code == 200
    errors = refused.context["adminform"].form.errors
    assert list(errors) == ["source"] and errors["source"][0].startswith(f"modules.json in {folder} is not valid JSON")
    assert not EmbeddingModel.objects.filter(pk="damaged").exists()

    (folder / "modules.json").write_text(json.dumps([{"path": "", "type": "sentence_transformers.models.Transformer"}]))
    form = {"id": "damaged", "name": "", "source": str(folder), "dimensions": ""}
    assert admin_client.post(f"{MODELS_URL}add/", form).status_code == 302
    truncate(folder / "model.safetensors", 100)  # damaged since: a new name is still accepted
    drifts = {f"drifts-{key}": "0" for key in ("TOTAL_FORMS", "INITIAL_FORMS", "MIN_NUM_FORMS", "MAX_NUM_FORMS")}
    renamed = admin_client.post(f"{MODELS_URL}damaged/change/", {**form, **drifts, "name": "Damaged"})
    assert renamed.status_code == 302
    assert EmbeddingModel.objects.get(pk="damaged").name == "Damaged"


# -- task history ---------------------------------------------------------------------------------


def test_history_shows_coloured_status_model_created_duration_and_attempts(admin_client):
    task = FailedDeploymentFactory(embedding_model_id=EmbeddingModelFactory(id="hist").id)
    page = admin_client.get(DEPLOYS_URL).content.decode()
    assert str(task.pk)[:8] in page
    assert 'class="cr-badge" style="background:#b91c1c">Failed<' in page
    assert '<a href="/admin/deployments/embeddingmodel/hist/change/">hist</a>' in page
    assert "2.0 s" in page  # duration from started to finished
    assert "expected 384" in page


def test_history_is_read_only_but_keeps_its_actions(admin_client):
    task = FinishedDeploymentFactory()
    listing = admin_client.get(DEPLOYS_URL).content.decode()
    assert f"{DEPLOYS_URL}add/" not in listing
    assert 'value="retry_selected"' in listing and 'value="cancel_selected"' in listing
    detail = admin_client.get(f"{DEPLOYS_URL}{task.pk}/change/").content.decode()
    assert 'name="_save"' not in detail and "deletelink" not in detail
    assert admin_client.post(f"{DEPLOYS_URL}{task.pk}/change/", {"status": "failed"}).status_code == 403
    assert admin_client.get(f"{DEPLOYS_URL}{task.pk}/delete/").status_code == 403


def test_viewers_see_the_history_without_retry_or_cancel(viewer_client):
    FinishedDeploymentFactory()
    page = viewer_client.get(DEPLOYS_URL).content.decode()
    assert viewer_client.get(DEPLOYS_URL).status_code == 200
    assert "retry_selected" not in page and "cancel_selected" not in page


def test_filters_by_status_model_and_date_and_search_by_task_and_model_id(admin_client):
    alpha, beta = EmbeddingModelFactory(id="alpha"), EmbeddingModelFactory(id="beta")
    failed = FailedDeploymentFactory(embedding_model_id=alpha.id)
    done = FinishedDeploymentFactory(embedding_model_id=beta.id)
    old = FinishedDeploymentFactory(embedding_model_id=alpha.id)
    DeploymentTask.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=40))

    def listed(query: str) -> set:
        response = admin_client.get(f"{DEPLOYS_URL}?{query}")
        assert response.status_code == 200, response.content[:500]
        return {task.pk for task in response.context["cl"].result_list}

    assert listed("status__exact=failed") == {failed.pk}
    assert listed("model=beta") == {done.pk}
    assert listed("created=24h") == {failed.pk, done.pk}
    assert listed("created=older") == {old.pk}
    assert listed(f"q={failed.pk}") == {failed.pk}
    assert listed("q=beta") == {done.pk}
    assert listed("q=bet") == {done.pk}  # part of a model id
    assert listed(f"q={uuid.uuid4()}") == set()


def test_the_kind_filter_switches_history_and_keeps_the_other_filters(admin_client):
    FinishedDeploymentFactory(embedding_model_id=EmbeddingModelFactory(id="kinds").id)
    page = admin_client.get(f"{DEPLOYS_URL}?status__exact=done&model=kinds").content.decode()
    assert f'href="{DELETES_URL}?status__exact=done&amp;model=kinds"' in page
    assert admin_client.get(f"{DELETES_URL}?status__exact=done&model=kinds").status_code == 200


def test_large_lists_never_count_the_whole_table(admin_client, monkeypatch):
    monkeypatch.setattr(CappedCountPaginator, "cap", 5)
    for _ in range(8):
        FinishedDeploymentFactory()
    with CaptureQueriesContext(connection) as queries:
        page = admin_client.get(DEPLOYS_URL).content.decode()
    assert "more than 5 deployment tasks" in page
    assert "Select all matching deployment tasks (more than 5)" in page
    counts = [
        q["sql"] for q in queries.captured_queries if "COUNT(" in q["sql"].upper() and "deployments_task" in q["sql"]
    ]
    assert counts and all("LIMIT" in sql.upper() for sql in counts), counts


def test_a_pending_task_says_why_it_waits_in_the_list_and_on_its_page(admin_client):
    model = EmbeddingModelFactory(id="queued")
    first = DeploymentTaskFactory(embedding_model_id=model.id)
    second = DeploymentTaskFactory(embedding_model_id=model.id)
    behind = f"queued behind {first.pk} (deployment of queued)"

    page = admin_client.get(f"{DEPLOYS_URL}?model=queued").content.decode()
    assert behind in page
    assert "not yet sent to the queue (since " in page  # the first: its hand-off never ran here
    detail = admin_client.get(f"{DEPLOYS_URL}{second.pk}/change/").content.decode()
    assert behind in detail


def test_the_task_list_explains_pending_tasks_with_the_page_not_per_row(admin_client):
    def queries_for_page() -> int:
        with CaptureQueriesContext(connection) as queries:
            assert admin_client.get(DEPLOYS_URL).status_code == 200
        return len(queries)

    model = EmbeddingModelFactory(id="many")
    DeploymentTaskFactory.create_batch(2, embedding_model_id=model.id)
    few = queries_for_page()
    DeploymentTaskFactory.create_batch(15, embedding_model_id=model.id)
    assert queries_for_page() == few


def test_task_detail_shows_the_stage_timeline_and_readable_metadata(admin_client):
    task = FinishedDeploymentFactory(embedding_model_id=EmbeddingModelFactory(id="timeline").id)
    retry = DeploymentTaskFactory(embedding_model_id="timeline", retry_of=task, attempt=2)

    page = admin_client.get(f"{DEPLOYS_URL}{task.pk}/change/").content.decode()

    stages = ["validate", "fetch", "load_green", "smoke_test", "switch"]
    positions = [page.index(f"<strong>{stage}</strong>") for stage in stages]
    assert positions == sorted(positions)  # in the order they ran
    assert "load_green ok" in page and "1.2 s" in page  # each stage's message and duration
    assert (
        '<dt>revision</dt><dd><code class="cr-revision">rev-1</code></dd>' in page
        and "<dt>dimensions</dt><dd>384</dd>" in page
    )
    assert f"/admin/deployments/deploymenttask/{retry.pk}/change/" in page  # "retried as"


def test_a_pending_task_says_it_waits_for_a_worker(admin_client):
    task = DeploymentTaskFactory()
    assert b"the task waits for a worker" in admin_client.get(f"{DEPLOYS_URL}{task.pk}/change/").content


# -- retry and cancel -----------------------------------------------------------------------------


def test_retry_creates_linked_attempts_and_says_why_others_were_not_retried(
    admin_client, django_capture_on_commit_callbacks
):
    model = EmbeddingModelFactory(id="retry-me")
    failed = FailedDeploymentFactory(embedding_model_id=model.id)
    refused = DeploymentTaskFactory(embedding_model_id=model.id, status=TaskStatus.REFUSED)
    canceled = DeploymentTaskFactory(embedding_model_id=model.id, status=TaskStatus.CANCELED)
    done = FinishedDeploymentFactory(embedding_model_id=model.id)
    pending = DeploymentTaskFactory(embedding_model_id=model.id)

    with django_capture_on_commit_callbacks(execute=True):
        response = run_action(admin_client, DEPLOYS_URL, "retry_selected", [failed, refused, canceled, done, pending])

    (retried_level, retried), (skipped_level, skipped) = reported(response)
    assert (retried_level, count_in(retried)) == (messages.SUCCESS, 3)
    for task in (failed, refused, canceled):
        attempt = DeploymentTask.objects.get(retry_of=task)
        assert (attempt.attempt, attempt.status, attempt.requested_by) == (2, "pending", "root")
        assert attempt.metadata["retry_of"] == str(task.pk) and attempt.dispatched_at
        assert short(task) in retried and short(attempt) in retried and short(task) not in skipped
    assert (skipped_level, count_in(skipped)) == (messages.WARNING, 2)
    # Each task not retried is named with the status that kept it from being retried.
    why = {part.split()[1]: part for part in skipped.split(": ", 1)[1].split("; ")}
    assert set(why) == {short(done), short(pending)}
    assert "done" in why[short(done)] and "pending" in why[short(pending)]
    assert not DeploymentTask.objects.filter(retry_of__in=[done, pending]).exists()

    again = run_action(admin_client, DEPLOYS_URL, "retry_selected", [failed])
    ((level, not_again),) = reported(again)
    first_retry = DeploymentTask.objects.get(retry_of=failed)
    assert level == messages.WARNING and short(failed) in not_again and str(first_retry.pk) in not_again
    assert DeploymentTask.objects.filter(retry_of=failed).count() == 1


def test_retrying_a_task_of_an_unregistered_model_says_so(admin_client):
    orphan = DeletionTaskFactory(embedding_model_id=EmbeddingModelFactory().id, status=TaskStatus.FAILED)
    EmbeddingModel.objects.filter(pk=orphan.embedding_model_id).delete()
    response = run_action(admin_client, DELETES_URL, "retry_selected", [orphan])
    ((level, message),) = reported(response)
    assert level == messages.WARNING and count_in(message) == 1
    assert short(orphan) in message and f"'{orphan.embedding_model_id}'" in message  # the unregistered id
    assert not DeletionTask.objects.filter(retry_of=orphan).exists()


def test_cancel_finishes_pending_tasks_and_says_why_others_were_not_canceled(
    admin_client, django_capture_on_commit_callbacks
):
    model = EmbeddingModelFactory(id="cancel-me")
    running = RunningDeploymentFactory(embedding_model_id=model.id)
    waiting = DeploymentTaskFactory(embedding_model_id=model.id)

    with django_capture_on_commit_callbacks(execute=True):
        response = run_action(admin_client, DEPLOYS_URL, "cancel_selected", [running, waiting])

    (canceled_level, canceled), (skipped_level, skipped) = reported(response)
    waiting.refresh_from_db()
    running.refresh_from_db()
    assert waiting.status == "canceled" and running.status == "processing"
    assert (canceled_level, count_in(canceled)) == (messages.SUCCESS, 1)
    assert f"cancel-me {short(waiting)}" in canceled and short(running) not in canceled
    assert (skipped_level, count_in(skipped)) == (messages.WARNING, 1)
    assert f"cancel-me {short(running)}" in skipped and short(waiting) not in skipped
    assert "processing" in skipped  # the status that kept it from being canceled


def test_an_action_over_too_many_tasks_does_nothing(admin_client, monkeypatch):
    monkeypatch.setattr("deployments.admin.history.MAX_ACTION_TASKS", 2)
    tasks = [DeploymentTaskFactory() for _ in range(3)]
    response = run_action(admin_client, DEPLOYS_URL, "cancel_selected", tasks)
    ((level, message),) = reported(response)
    assert level == messages.ERROR and re.findall(r"\d+", message) == ["2"]  # the most an action takes
    assert not DeploymentTask.objects.filter(status="canceled").exists()


# -- dashboard ------------------------------------------------------------------------------------


def test_dashboard_shows_in_flight_outcomes_failures_and_deployed_models(admin_client):
    live = EmbeddingModelFactory(id="dash-live", state="deployed", live_revision="0123456789abcdef", dimensions=384)
    RunningDeploymentFactory(
        embedding_model_id=live.id, metadata={"stages": {"validate": {"state": "done"}, "fetch": {"state": "started"}}}
    )
    DeploymentTaskFactory(embedding_model_id=live.id)
    DeletionTaskFactory()
    FinishedDeploymentFactory()
    failed = FailedDeploymentFactory(embedding_model_id=EmbeddingModelFactory(id="dash-broken").id)
    refused = DeploymentTaskFactory(status=TaskStatus.REFUSED, detail="validate: 20 models are deployed")
    old_failure = FailedDeploymentFactory()
    DeploymentTask.objects.filter(pk=old_failure.pk).update(created_at=timezone.now() - timedelta(days=2))

    response = admin_client.get("/admin/")
    page = response.content.decode()

    assert response.status_code == 200
    assert 'href="/admin/deployments/deploymenttask/?status__exact=pending">1<' in page
    assert 'href="/admin/deployments/deploymenttask/?status__exact=processing">1<' in page
    assert 'href="/admin/deployments/deletiontask/?status__exact=pending">1<' in page
    # outcomes of the last 24 hours: the two-day-old failure is not among them
    assert "?created=24h&amp;status__exact=failed" in page
    assert '<span class="cr-badge" style="background:#b91c1c">1</span>' in page
    assert "<td>fetch</td>" in page  # the stage the running task is in
    for task in (failed, refused):
        assert str(task.pk)[:8] in page and task.detail in page
    assert "Models deployed: 1" in page and "dash-live" in page and "0123456789ab" in page


def test_dashboard_lists_only_failures_nothing_has_made_good_since(admin_client, django_capture_on_commit_callbacks):
    """A failure whose retry ended done, or after which a new task of its kind for its model ended done, is
    resolved and left out; one whose retry is still on its way stays, naming it."""
    model = EmbeddingModelFactory(id="dash-flaky")
    retried_ok = FailedDeploymentFactory(embedding_model_id=model.id, detail="load_green: replica 1 timed out")
    retried_ok.refresh_from_db()
    FinishedDeploymentFactory(
        embedding_model_id=model.id, retry_of=retried_ok, attempt=2, sequence=retried_ok.sequence, detail="ok"
    )
    superseded = FailedDeploymentFactory(detail="fetch: checksum mismatch in the source")
    FinishedDeploymentFactory(embedding_model_id=superseded.embedding_model_id)  # a later deploy made it good
    retrying = FailedDeploymentFactory(detail="smoke_test: 3 dimensions, expected 384")
    pending_retry = DeploymentTaskFactory(embedding_model_id=retrying.embedding_model_id, retry_of=retrying, attempt=2)
    deletion_after = FailedDeploymentFactory(detail="switch: the router did not confirm")
    FinishedDeletionFactory(embedding_model_id=deletion_after.embedding_model_id)  # another kind: not a fix

    page = admin_client.get("/admin/").content.decode()
    failures = page[page.index("Latest failures") :]

    assert short(retried_ok) not in failures and "replica 1 timed out" not in failures
    assert short(superseded) not in failures and "checksum mismatch" not in failures
    assert short(retrying) in failures and "retried → pending" in failures
    assert f"/admin/deployments/deploymenttask/{pending_retry.pk}/change/" in failures
    assert short(deletion_after) in failures and "did not confirm" in failures


def test_a_long_failure_reason_wraps_inside_its_panel_with_the_whole_reason_as_tooltip(admin_client):
    reason = "fetch: " + "/srv/models/" + "x" * 400 + "/model.safetensors is not readable"
    FailedDeploymentFactory(detail=reason)
    page = admin_client.get("/admin/").content.decode()
    assert f'<td class="cr-reason" title="{reason}">' in page  # the whole reason, on hover
    assert reason not in page.replace(f'title="{reason}"', "")  # the cell itself is cut
    # That it stays inside its panel is measured in a real browser: test_layout.py.


def test_dashboard_costs_a_fixed_number_of_queries(admin_client):
    def queries_for_index() -> int:
        with CaptureQueriesContext(connection) as queries:
            admin_client.get("/admin/")
        return len(queries)

    FailedDeploymentFactory()
    few = queries_for_index()
    for _ in range(5):
        FailedDeploymentFactory()
        RunningDeploymentFactory()
        EmbeddingModelFactory(state="deployed")
    assert queries_for_index() == few


def test_staff_without_task_permissions_get_no_dashboard(viewer_client, db):
    from django.contrib.auth.models import Permission

    from tests.support.factories import UserFactory

    user = UserFactory(username="models-only", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_embeddingmodel"))
    viewer_client.force_login(user)
    assert b"Latest failures" not in viewer_client.get("/admin/").content


def test_the_model_filter_lists_few_models_and_leaves_many_to_the_search_box(admin_client, monkeypatch):
    first = FinishedDeploymentFactory(embedding_model_id=EmbeddingModelFactory(id="few-1").id)
    assert 'href="?model=few-1">few-1</a>' in admin_client.get(DEPLOYS_URL).content.decode()

    monkeypatch.setattr("deployments.admin.filters.ModelFilter.max_listed", 1)
    EmbeddingModelFactory(id="few-2")
    response = admin_client.get(f"{DEPLOYS_URL}?model=few-1")
    assert "By model" not in response.content.decode()
    assert [task.pk for task in response.context["cl"].result_list] == [first.pk]  # ?model= still works


def test_leases_are_shown_but_not_editable(admin_client):
    DeploymentTaskFactory()
    response = admin_client.get("/admin/deployments/modellease/")
    assert response.status_code == 200 and b"/admin/deployments/modellease/add/" not in response.content


# -- the model id, task ids, retry once ------------------------------------------------------------


def test_a_models_id_is_editable_when_added_and_read_only_after(admin_client, minilm_dir):
    assert b'name="id"' in admin_client.get(f"{MODELS_URL}add/").content
    model = EmbeddingModelFactory(id="fixed-id", source=str(minilm_dir))

    page = admin_client.get(f"{MODELS_URL}{model.pk}/change/").content.decode()
    assert 'name="id"' not in page and "fixed-id" in page

    # What a browser sends: the fields, and the (empty) formset of the model's drifts shown below them.
    drifts_formset = {
        f"drifts-{key}": "0" for key in ("TOTAL_FORMS", "INITIAL_FORMS", "MIN_NUM_FORMS", "MAX_NUM_FORMS")
    }
    response = admin_client.post(
        f"{MODELS_URL}{model.pk}/change/",
        {"id": "renamed", "name": "Fixed", "source": str(minilm_dir), **drifts_formset},
    )
    assert response.status_code == 302
    assert list(EmbeddingModel.objects.values_list("pk", "name")) == [("fixed-id", "Fixed")]


def test_client_chosen_task_ids_are_searched_linked_and_shown(admin_client):
    model = EmbeddingModelFactory(id="ids")
    # '_2A' is how the admin escapes '*' in a URL: the link must escape the id's own '_'.
    FinishedDeploymentFactory(embedding_model_id=model.id)
    chosen = FailedDeploymentFactory(id="nightly:2025_2A.1", embedding_model_id=model.id)

    def listed(term: str) -> set:
        response = admin_client.get(DEPLOYS_URL, {"q": term})
        assert response.status_code == 200
        return {task.pk for task in response.context["cl"].result_list}

    assert listed("nightly:2025_2A.1") == {chosen.pk}
    assert len(listed("ids")) == 2
    assert listed("nightly:2025") == {chosen.pk}  # the start of an id
    assert listed("a b") == listed("../x") == set()  # not a task id, nor a model id: nothing, no error

    link = f"{DEPLOYS_URL}nightly_3A2025_5F2A.1/change/"
    assert link in admin_client.get(MODELS_URL).content.decode()  # the model's latest deployment
    detail = admin_client.get(link)
    assert detail.status_code == 200 and b"nightly:2025_2A.1" in detail.content


def test_retrying_an_already_retried_task_names_the_newer_attempt(admin_client, django_capture_on_commit_callbacks):
    failed = FailedDeploymentFactory(embedding_model_id=EmbeddingModelFactory(id="twice").id)
    with django_capture_on_commit_callbacks(execute=True):
        run_action(admin_client, DEPLOYS_URL, "retry_selected", [failed])
    attempt = DeploymentTask.objects.get(retry_of=failed)

    again = run_action(admin_client, DEPLOYS_URL, "retry_selected", [failed])

    [(level, not_again)] = reported(again)
    assert level == messages.WARNING and count_in(not_again) == 1 and str(attempt.pk) in not_again
    assert DeploymentTask.objects.filter(retry_of=failed).count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_retry_the_queue_refused_is_reported_as_made_and_waiting(admin_client, monkeypatch):
    failed = FailedDeploymentFactory(embedding_model_id=EmbeddingModelFactory(id="later").id)

    def broker_down(*args, **kwargs):
        raise ConnectionError("broker unreachable")

    monkeypatch.setattr("deployments.services.tasks.async_task", broker_down)
    response = run_action(admin_client, DEPLOYS_URL, "retry_selected", [failed])

    attempt = DeploymentTask.objects.get(retry_of=failed)
    assert (attempt.status, attempt.dispatched_at) == ("pending", None)
    [(retried_level, retried), (waiting_level, waiting)] = reported(response)
    assert (retried_level, count_in(retried)) == (messages.SUCCESS, 1)
    assert (waiting_level, count_in(waiting)) == (messages.WARNING, 1) and str(attempt.pk)[:8] in waiting


@pytest.mark.django_db(transaction=True)
def test_deploying_while_the_queue_refuses_creates_the_tasks_and_says_they_wait(admin_client, monkeypatch, settings):
    settings.TASK_HANDOFF_GRACE_SECONDS = 30
    models = [EmbeddingModelFactory(id="q-a"), EmbeddingModelFactory(id="q-b")]

    def broker_down(*args, **kwargs):
        raise ConnectionError("broker unreachable")

    monkeypatch.setattr("deployments.services.tasks.async_task", broker_down)
    response = run_action(admin_client, MODELS_URL, "deploy_selected", models, post="yes")

    tasks = DeploymentTask.objects.order_by("embedding_model_id")
    assert [(t.embedding_model_id, t.status, t.dispatched_at) for t in tasks] == [
        ("q-a", "pending", None),
        ("q-b", "pending", None),
    ]
    [(created_level, created), (waiting_level, waiting)] = reported(response)
    assert (created_level, count_in(created)) == (messages.INFO, 2)
    assert waiting_level == messages.WARNING and "2" in waiting and "30 s" in waiting
    assert "q-a" in waiting and "q-b" in waiting


# -- the task engine's health -----------------------------------------------------------------------


def engine_banner(page: str) -> str:
    start = page.find('class="cr-wide cr-engine-alert"')
    return page[start : page.find("</div>", start)] if start >= 0 else ""


def test_the_dashboard_shows_a_red_banner_while_no_cluster_proves_it_runs_jobs(admin_client):
    assert "no worker cluster is running" in engine_banner(admin_client.get("/admin/").content.decode())

    cluster = cluster_with_heartbeat(name="host:1:abc")
    assert engine_banner(admin_client.get("/admin/").content.decode()) == ""

    long_ago = timezone.now() - timedelta(minutes=5)
    WorkerCluster.objects.filter(pk=cluster.pk).update(cluster_started_at=long_ago, last_canary_at=long_ago)
    banner = engine_banner(admin_client.get("/admin/").content.decode())
    assert "workers: no heartbeat" in banner and cluster.name in banner


def test_the_dashboard_banner_names_a_task_that_waits_too_long_for_a_worker(admin_client, settings):
    settings.READY_MAX_PENDING_SECONDS = 60
    cluster_with_heartbeat(name="host:1:abc")
    waiting = DeploymentTaskFactory()
    DeploymentTask.objects.filter(pk=waiting.pk).update(created_at=timezone.now() - timedelta(minutes=5))

    banner = engine_banner(admin_client.get("/admin/").content.decode())

    assert "pending:" in banner and str(waiting.pk) in banner and "workers" not in banner


def test_engine_events_and_clusters_are_shown_but_not_editable(admin_client):
    cluster = cluster_with_heartbeat(name="host:1:abc")
    EngineEvent.objects.create(kind=EngineEvent.Kind.CLUSTER_RESTARTED, cluster=cluster, message="no canary ran")

    assert "Cluster restarted" in admin_client.get("/admin/").content.decode()  # the dashboard's latest events
    events = admin_client.get("/admin/deployments/engineevent/")
    clusters = admin_client.get("/admin/deployments/workercluster/")

    assert events.status_code == 200 and b"no canary ran" in events.content
    assert b"/admin/deployments/engineevent/add/" not in events.content
    assert clusters.status_code == 200 and cluster.name.encode() in clusters.content
    assert b"/admin/deployments/workercluster/add/" not in clusters.content


def test_a_models_page_links_the_mlflow_version_its_live_revision_came_from(admin_client):
    model = EmbeddingModelFactory(id="from-mlflow", state="deployed", live_revision="rev-1")
    live = FinishedDeploymentFactory(embedding_model_id=model.id)
    source = {
        "uri": "models:/embedder@champion",
        "registered_model": "embedder",
        "version": "7",
        "alias": "champion",
        "run_id": "a" * 32,
        "tracking_uri": "http://mlflow.internal:5000",
    }
    live.metadata = {**live.metadata, "source": source}
    live.save()

    page = admin_client.get(f"{MODELS_URL}{model.id}/change/").content.decode()

    assert "<code>models:/embedder@champion</code>" in page and "version 7" in page and "alias champion" in page
    assert 'href="http://mlflow.internal:5000/#/models/embedder/versions/7"' in page


def test_a_models_page_says_what_its_live_revision_was_deployed_from(admin_client):
    model = EmbeddingModelFactory(id="from-hf", state="deployed", live_revision="rev-1")
    source = {"uri": "hf://acme/embedder@main", "repo": "acme/embedder", "revision": "main", "commit": "c0ffee"}
    older = FinishedDeploymentFactory(embedding_model_id=model.id)
    older.metadata = {**older.metadata, "revision": "rev-0", "source": {"uri": "/old"}}
    older.save()
    live = FinishedDeploymentFactory(embedding_model_id=model.id)
    live.metadata = {**live.metadata, "source": source}
    live.save()

    page = admin_client.get(f"{MODELS_URL}{model.id}/change/").content.decode()

    assert "<code>hf://acme/embedder@main</code>" in page and "commit c0ffee" in page
    assert f"/admin/deployments/deploymenttask/{live.pk}/change/" in page and "/old" not in page
    never = admin_client.get(f"{MODELS_URL}{EmbeddingModelFactory(id='never').id}/change/").content.decode()
    assert "field-deployed_from" in never and "hf://acme" not in never  # the row is there, empty


def deployed_from(admin_client, model: EmbeddingModel) -> str:
    page = admin_client.get(f"{MODELS_URL}{model.id}/change/").content.decode()
    return re.search(r'field-deployed_from.*?<div class="readonly">(.*?)</div>', page, re.DOTALL).group(1)


def test_a_rolled_back_revision_says_which_task_fetched_it_and_which_deployed_it_again(admin_client):
    model = EmbeddingModelFactory(id="rolled", state="deployed", live_revision="rev-1")
    fetched = FinishedDeploymentFactory(embedding_model_id=model.id)
    fetched.metadata = {**fetched.metadata, "source": {"uri": "/models/rolled"}}
    fetched.save()
    newer = FinishedDeploymentFactory(embedding_model_id=model.id)
    newer.metadata = {**newer.metadata, "revision": "rev-2", "source": {"uri": "/models/rolled-v2"}}
    newer.save()
    back = FinishedDeploymentFactory(embedding_model_id=model.id, config={"revision": "rev-1"})
    back.metadata = {**back.metadata, "source": {}}  # a kept revision is not fetched
    back.save()

    shown = deployed_from(admin_client, model)

    assert shown.startswith("<code>/models/rolled</code> (task ") and "rolled-v2" not in shown
    assert f"/deploymenttask/{fetched.pk}/change/" in shown
    assert f'; deployed again, kept, by task <a href="/admin/deployments/deploymenttask/{back.pk}/change/' in shown


def test_a_live_revision_no_task_recorded_is_named_by_its_provenance(admin_client, settings, tmp_path):
    settings.MODEL_REPOSITORY_ROOT = tmp_path
    revision = tmp_path / "found" / "revisions" / "0123456789abcdef"
    revision.mkdir(parents=True)
    (revision / "PROVENANCE.json").write_text(json.dumps({"uri": "hf://acme/found@main", "commit": "c0ffee"}))
    found = EmbeddingModelFactory(id="found", state="deployed", live_revision="0123456789abcdef")
    assert deployed_from(admin_client, found) == (
        "<code>hf://acme/found@main</code> — commit c0ffee (the revision&#x27;s PROVENANCE.json)"
    )
    lost = EmbeddingModelFactory(id="lost", state="deployed", live_revision="fedcba9876543210")
    assert deployed_from(admin_client, lost) == "not recorded"
