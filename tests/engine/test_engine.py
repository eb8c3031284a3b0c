"""The task engine and the jobs, through the real GreenDeployer and the session's real MLServer.

Fakes appear only to inject faults (a deployer that raises); every pipeline that can run for
real does.
"""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.utils import timezone

from deployments import jobs, services
from deployments.inference import DEPLOY_STAGES, V2Client
from deployments.models import DeploymentTask, EmbeddingModel, ModelLease, TaskEvent, TaskStatus
from deployments.services.leases import claim_lease
from deployments.services.pipelines import reserve_capacity, rollback_waiting
from tests.support.artifacts import copy_packaged_model, truncate
from tests.support.factories import DeletionTaskFactory, DeploymentTaskFactory, EmbeddingModelFactory

pytestmark = pytest.mark.django_db

PROBE = "tests.support.probes.build_probe_deployer"
EXPLODING = "tests.support.probes.build_exploding_deployer"


@pytest.fixture
def engine_settings(inference_settings):
    # The tests' transaction holds the lease row; keep the heartbeat thread from waiting on it.
    inference_settings.TASK_LEASE_SECONDS = 600
    return inference_settings


def submit_deploy(model_id: str, **config: object) -> DeploymentTask:
    return services.submit_deployment(model_id, config=config).task


def stages(task) -> list[tuple[str, str]]:
    return [(e.stage, e.state) for e in TaskEvent.objects.filter(task=task).order_by("id")]


def numbers(text: str) -> list[int]:
    """The whole numbers a reason names, in order (counts, limits, dimensions)."""
    return [int(n) for n in re.findall(r"\d+", text)]


@pytest.mark.mlserver
def test_the_deploy_job_deploys_for_real_and_the_delete_job_removes(engine_settings, envoy):
    # Regression: the origin's deploy handler was a nested function nobody called.
    model = EmbeddingModelFactory(id="cp-jobs")
    task = submit_deploy(model.id, expected_dimensions=384)

    assert jobs.run_task(str(task.pk)) == TaskStatus.DONE

    task.refresh_from_db()
    assert task.status == TaskStatus.DONE, task.detail
    assert task.started_at and task.finished_at and task.lease_owner
    assert task.metadata["dimensions"] == 384
    assert task.metadata["endpoint"] == f"{envoy.url}/v2/models/cp-jobs/infer"
    assert set(task.metadata["timings"]) >= {*DEPLOY_STAGES, "total"}
    assert task.metadata["stages"]["switch"]["state"] == "done"
    assert task.metadata["replicas"] == engine_settings.INFERENCE_REPLICA_URLS
    assert [s for s, state in stages(task) if state == "done"] == [*DEPLOY_STAGES, "status"]
    model.refresh_from_db()
    assert (model.state, model.live_revision, model.dimensions) == ("deployed", task.metadata["revision"], 384)
    with V2Client(envoy.url) as client:
        assert client.infer("cp-jobs", ["hello world"]).embeddings.shape == (1, 384)
    assert ModelLease.objects.get(pk=model.id).owner == ""  # released

    deletion = services.submit_deletion(model.id).task
    assert jobs.run_task(str(deletion.pk)) == TaskStatus.DONE
    deletion.refresh_from_db()
    assert "cp-jobs" in deletion.detail and deletion.metadata["was_deployed"] is True
    model.refresh_from_db()
    assert (model.state, model.live_revision, model.endpoint) == ("not_deployed", "", "")
    with V2Client(envoy.url) as client:
        assert client.model_metadata("cp-jobs") is None  # the router no longer routes it


@pytest.mark.mlserver
def test_a_failed_smoke_test_fails_the_task_and_blue_keeps_serving(engine_settings, envoy):
    model = EmbeddingModelFactory(id="cp-blue")
    blue = submit_deploy(model.id)
    services.run_task(blue.pk)
    blue.refresh_from_db()
    assert blue.status == TaskStatus.DONE, blue.detail

    green = submit_deploy(model.id, expected_dimensions=100)
    assert services.run_task(green.pk) == TaskStatus.FAILED

    green.refresh_from_db()
    assert green.status == TaskStatus.FAILED and green.detail.startswith("smoke_test:")
    assert (green.metadata["failed_stage"], green.metadata["stages"]["smoke_test"]["state"]) == ("smoke_test", "failed")
    assert green.metadata["reason"].endswith("expected 100 dimensions, the model returned 384")
    model.refresh_from_db()
    assert (model.state, model.live_revision) == ("deployed", blue.metadata["revision"])
    with V2Client(envoy.url) as client:
        answer = client.infer("cp-blue", ["still here"])
        assert answer.embeddings.shape == (1, 384) and answer.parameters["revision"] == blue.metadata["revision"]


@pytest.mark.mlserver
def test_the_registry_records_the_dimensions_of_the_revision_deployed(engine_settings, envoy):
    # The registry expected 512; the operator expects 384 of this revision: the smoke test checks the
    # operator's number, and the registry then says what is live (it kept the stale 512 before).
    model = EmbeddingModelFactory(id="cp-dims", dimensions=512)
    task = submit_deploy(model.id, expected_dimensions=384)

    assert services.run_task(task.pk) == TaskStatus.DONE

    model.refresh_from_db()
    assert (model.state, model.dimensions) == ("deployed", 384)
    again = submit_deploy(model.id)  # the next deploy expects what is live now
    assert services.run_task(again.pk) == TaskStatus.DONE


@pytest.mark.mlserver
def test_a_source_outside_the_allowed_roots_is_refused(engine_settings, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    model = EmbeddingModelFactory(id="cp-refused", source=str(outside))
    task = submit_deploy(model.id)
    assert services.run_task(task.pk) == TaskStatus.REFUSED
    task.refresh_from_db()
    assert task.status == TaskStatus.REFUSED and task.detail.startswith("validate:")
    assert task.metadata["failed_stage"] == "validate"
    assert str(outside) in task.metadata["reason"]
    assert any(str(root) in task.metadata["reason"] for root in engine_settings.ALLOWED_SOURCE_ROOTS)
    model.refresh_from_db()
    assert model.state == "not_deployed"


@pytest.mark.mlserver
def test_a_tracking_server_no_longer_allowed_is_refused_at_fetch_and_sent_nothing(
    engine_settings, elsewhere, mlflow_token, monkeypatch
):
    # Registered while the operator allowed its server; the allow-list has changed since.
    model = EmbeddingModelFactory(id="cp-moved", source="models:/embedder/1", mlflow_tracking_uri=elsewhere.url)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://mlflow.example.com")
    monkeypatch.delenv("MLFLOW_ALLOWED_TRACKING_URIS", raising=False)
    task = submit_deploy(model.id)

    assert services.run_task(task.pk) == TaskStatus.REFUSED
    task.refresh_from_db()
    assert task.detail == (
        f"fetch: MLflow tracking server {elsewhere.url} is not allowed; allowed: https://mlflow.example.com "
        "(the operator adds servers to MLFLOW_ALLOWED_TRACKING_URIS)"
    )
    assert task.metadata["failed_stage"] == "fetch"
    assert elsewhere.received == []
    model.refresh_from_db()
    assert model.state == "not_deployed"


@pytest.mark.mlserver
def test_a_deploy_of_a_truncated_copy_ends_failed_at_fetch_naming_the_source_file(engine_settings, sources_root):
    folder = copy_packaged_model(sources_root / "minilm-cut")
    truncate(folder / "model.safetensors", 751_485)
    model = EmbeddingModelFactory(id="cp-cut", source=str(folder))  # registered before the copy broke
    task = submit_deploy(model.id)

    assert services.run_task(task.pk) == TaskStatus.FAILED
    task.refresh_from_db()
    assert task.detail.startswith(f"fetch: model.safetensors in {folder} is truncated: ")
    assert "90,856,960 bytes of tensors" in task.detail and "copy it again" in task.detail
    assert (task.metadata["failed_stage"], task.metadata["stages"]["fetch"]["state"]) == ("fetch", "failed")
    assert "load_green" not in task.metadata["stages"]
    model.refresh_from_db()
    assert model.state == "not_deployed"


def test_the_limit_on_deployed_models_is_not_off_by_one(settings):
    # Regression: the origin let MAX_DEPLOYED_MODELS + 1 models through.
    settings.MAX_DEPLOYED_MODELS = 2
    EmbeddingModelFactory(id="live-1", state="deployed", live_revision="r")
    second = EmbeddingModelFactory(id="second")
    assert reserve_capacity(second) is None  # 1 deployed, limit 2: allowed
    second.refresh_from_db()
    assert second.state == "deploying"

    third = EmbeddingModelFactory(id="third")
    assert numbers(reserve_capacity(third)) == [2, 2]  # 2 slots held, at most 2: refused
    third.refresh_from_db()
    assert third.state == "not_deployed"
    assert reserve_capacity(second) is None  # a model that holds a slot keeps it (redeploy)


def test_a_deploy_over_the_limit_ends_refused(settings):
    settings.MAX_DEPLOYED_MODELS = 1
    settings.INFERENCE_DEPLOYER_FACTORY = PROBE
    EmbeddingModelFactory(id="live-1", state="deployed", live_revision="r")
    task = submit_deploy(EmbeddingModelFactory(id="one-too-many").id)
    assert services.run_task(task.pk) == TaskStatus.REFUSED
    task.refresh_from_db()
    assert (task.status, task.metadata["failed_stage"]) == (TaskStatus.REFUSED, "validate")
    assert task.detail.startswith("validate:")
    assert numbers(task.metadata["reason"]) == [1, 1]  # 1 model holds a slot, the limit is 1
    assert stages(task) == [("status", "processing"), ("validate", "failed"), ("status", "refused")]


def test_a_failed_recheck_ends_the_task_instead_of_leaving_it_processing(settings):
    # Regression: the origin left a task in `processing` when a check inside the worker failed.
    settings.INFERENCE_DEPLOYER_FACTORY = PROBE
    model = EmbeddingModelFactory()
    task = submit_deploy(model.id)
    EmbeddingModel.objects.filter(pk=model.id).delete()  # unregistered between submit and run

    assert services.run_task(task.pk) == TaskStatus.REFUSED
    task.refresh_from_db()
    assert task.status == TaskStatus.REFUSED and task.metadata["failed_stage"] == "validate"
    assert model.id in task.metadata["reason"]
    assert ModelLease.objects.get(pk=model.id).owner == ""


def test_an_unexpected_error_fails_the_task_and_frees_the_model(settings):
    settings.INFERENCE_DEPLOYER_FACTORY = EXPLODING
    model = EmbeddingModelFactory()
    task = submit_deploy(model.id)
    following = submit_deploy(model.id)

    assert services.run_task(task.pk) == TaskStatus.FAILED

    task.refresh_from_db()
    assert (task.status, task.metadata["failed_stage"]) == (TaskStatus.FAILED, "validate")
    assert task.detail.startswith("validate:") and "deployer crashed" in task.detail  # the injected fault
    assert stages(task)[-2:] == [("validate", "failed"), ("status", "failed")]
    assert ModelLease.objects.get(pk=model.id).owner == ""
    following.refresh_from_db()
    assert following.dispatched_at is not None  # the next task was handed over


def test_a_task_waits_for_the_earlier_tasks_of_its_model(settings):
    settings.INFERENCE_DEPLOYER_FACTORY = PROBE
    model = EmbeddingModelFactory()
    first, second = submit_deploy(model.id), services.submit_deletion(model.id).task
    other_model_task = submit_deploy(EmbeddingModelFactory().id)

    assert services.run_task(second.pk).startswith("waiting")
    assert services.run_task(other_model_task.pk) == TaskStatus.DONE  # models run independently
    second.refresh_from_db()
    assert (second.status, second.dispatched_at) == (TaskStatus.PENDING, None)

    assert services.run_task(first.pk) == TaskStatus.DONE
    second.refresh_from_db()
    assert second.dispatched_at is not None  # woken by the task ahead of it
    assert services.run_task(second.pk) == TaskStatus.DONE
    assert services.run_task(second.pk) == "already done"


def test_a_task_does_not_run_while_another_worker_holds_the_lease(settings):
    settings.INFERENCE_DEPLOYER_FACTORY = PROBE
    task = submit_deploy(EmbeddingModelFactory().id)
    holder = DeletionTaskFactory(embedding_model_id=task.embedding_model_id, status=TaskStatus.DONE)
    assert claim_lease(holder, "other-machine:42")
    assert services.run_task(task.pk).startswith("waiting")
    task.refresh_from_db()
    assert (task.status, task.started_at, task.lease_owner) == (TaskStatus.PENDING, None, "")
    assert ModelLease.objects.get(pk=task.embedding_model_id).owner == "other-machine:42"  # still the holder's


def test_canceling_the_head_task_hands_over_the_next(settings, django_capture_on_commit_callbacks):
    model = EmbeddingModelFactory()
    first, second = submit_deploy(model.id), submit_deploy(model.id)
    with django_capture_on_commit_callbacks(execute=True):
        services.cancel_task(first)
    second.refresh_from_db()
    assert second.dispatched_at is not None


def lose_worker(task: DeploymentTask, owner: str = "dead-host:1:abc") -> None:
    """What a worker killed mid-task leaves behind: a processing task and a lease nobody renews."""
    assert claim_lease(task, owner)
    DeploymentTask.objects.filter(pk=task.pk).update(status=TaskStatus.PROCESSING, lease_owner=owner)
    ModelLease.objects.filter(pk=task.embedding_model_id).update(expires_at=timezone.now() - timedelta(seconds=1))


def test_the_sweeper_runs_on_a_django_q_schedule():
    from django_q.models import Schedule

    schedule = Schedule.objects.get(name="deployments: sweep tasks")  # created by post_migrate
    assert (schedule.func, schedule.schedule_type, schedule.repeats) == ("deployments.jobs.sweep_tasks", "I", -1)


def test_the_sweeper_retries_a_dead_workers_task_as_a_new_attempt(
    settings, tmp_path, django_capture_on_commit_callbacks
):
    settings.TASK_MAX_ATTEMPTS = 2
    settings.MODEL_REPOSITORY_ROOT = tmp_path / "repository"
    model = EmbeddingModelFactory()
    task = submit_deploy(model.id, ready_timeout=30)
    later = submit_deploy(model.id)
    lose_worker(task)

    with django_capture_on_commit_callbacks(execute=True):
        report = services.sweep_tasks()

    task.refresh_from_db()
    retry = DeploymentTask.objects.get(retry_of=task)
    assert report.failed == [str(task.pk)] and report.retried == [str(retry.pk)]
    assert task.status == TaskStatus.FAILED
    assert (task.metadata["lost"], task.metadata["retried_as"]) == (True, str(retry.pk))
    assert "dead-host:1:abc" in task.detail and str(retry.pk) in task.detail  # the lost worker, the retry
    # The retry keeps the lost attempt's place: it runs before tasks submitted after it.
    assert (retry.attempt, retry.sequence, retry.status) == (2, task.sequence, "pending")
    assert retry.config == {"ready_timeout": 30}
    assert retry.dispatched_at is not None
    assert ModelLease.objects.get(pk=model.id).owner == ""
    assert services.run_task(later.pk).startswith("waiting")

    EmbeddingModel.objects.filter(pk=model.id).update(state="deploying")  # as the lost attempt left it
    lose_worker(retry)
    services.sweep_tasks()
    retry.refresh_from_db()
    assert (retry.status, retry.attempt) == (TaskStatus.FAILED, 2)
    assert (retry.metadata["lost"], retry.metadata["retried_as"]) == (True, None)  # the last attempt allowed
    assert not DeploymentTask.objects.filter(retry_of=retry).exists()
    model.refresh_from_db()
    assert model.state == "not_deployed"  # nothing is live in the repository: the slot is given back


def test_the_sweeper_leaves_a_live_worker_alone():
    task = submit_deploy(EmbeddingModelFactory().id)
    assert claim_lease(task, "alive:1")
    DeploymentTask.objects.filter(pk=task.pk).update(status=TaskStatus.PROCESSING, lease_owner="alive:1")
    report = services.sweep_tasks()
    assert report.failed == report.resent == []
    task.refresh_from_db()
    assert task.status == TaskStatus.PROCESSING


def test_the_sweeper_resends_a_lost_hand_off(settings):
    settings.TASK_HANDOFF_GRACE_SECONDS = 30
    model = EmbeddingModelFactory()
    lost = DeploymentTaskFactory(embedding_model_id=model.id)  # never handed over
    behind = DeploymentTaskFactory(embedding_model_id=model.id)
    other_model = DeletionTaskFactory()

    assert services.sweep_tasks().resent == []  # within the grace period
    report = services.sweep_tasks(now=timezone.now() + timedelta(seconds=31))
    # Only the head of each model's queue needs a message; the rest follow it.
    assert sorted(report.resent) == sorted([str(lost.pk), str(other_model.pk)])
    behind.refresh_from_db()
    assert behind.dispatched_at is None
    assert services.sweep_tasks().resent == []  # just re-sent: not again until the grace period passes


def test_reap_tasks_command(capsys):
    from django.core.management import call_command

    call_command("reap_tasks")
    summary = capsys.readouterr().out.splitlines()[0]
    assert numbers(summary) == [0, 0, 0]  # resolved, retried, re-sent


def test_a_deploy_of_the_blue_revision_waiting_behind_a_bake_asks_it_to_roll_back(db):
    model = EmbeddingModelFactory(id="cp-bakeback")
    DeploymentTaskFactory(embedding_model_id=model.id, config={"revision": "0123456789abcdef"}, status="done")
    assert rollback_waiting(model.id, "0123456789abcdef") is None  # only a waiting task asks
    waiting = DeploymentTaskFactory(embedding_model_id=model.id, config={"revision": "0123456789abcdef"})
    DeploymentTaskFactory(embedding_model_id=model.id, config={"revision": "fedcba9876543210"})
    assert rollback_waiting(model.id, "0123456789abcdef") == f"task {waiting.pk} asks for revision 0123456789abcdef"
    assert rollback_waiting("another-model", "0123456789abcdef") is None
