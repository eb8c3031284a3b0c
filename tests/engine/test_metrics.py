"""GET /metrics: the database's gauges at scrape time, the metrics real worker processes observed,
request and database metrics, and the optional token."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import OperationalError, connection
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families
from rest_framework.test import APIClient

from deployments import services
from deployments.inference import DEPLOY_STAGES
from deployments.models import Drift, EmbeddingModel, InferenceServer, ModelLease, ModelRevision, TaskStatus
from tests.support.factories import (
    DeploymentTaskFactory,
    EmbeddingModelFactory,
    FailedDeploymentFactory,
    FinishedDeletionFactory,
    RunningDeploymentFactory,
    cluster_with_heartbeat,
)
from tests.support.processes import wait_for_status

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(client: APIClient | None = None, **headers: str) -> Samples:
    response = (client or APIClient()).get("/metrics", **headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.content.decode())
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


@pytest.mark.django_db
def test_the_database_gauges_count_tasks_ages_drifts_and_slots(settings):
    settings.MAX_DEPLOYED_MODELS = 7
    settings.TASK_LEASE_SECONDS = 60
    now = timezone.now()
    waiting = DeploymentTaskFactory()
    DeploymentTaskFactory(created_at=now)
    type(waiting).objects.filter(pk=waiting.pk).update(created_at=now - timedelta(seconds=120))
    RunningDeploymentFactory()
    FailedDeploymentFactory()
    FailedDeploymentFactory()
    FinishedDeletionFactory()
    deployed = EmbeddingModelFactory(state=EmbeddingModel.State.DEPLOYED)
    EmbeddingModelFactory(state=EmbeddingModel.State.DELETING)
    Drift.objects.create(embedding_model=deployed, detail="replica lacks it")
    Drift.objects.create(embedding_model=deployed, resolved_at=now, detail="closed")
    # Renewed 20 s ago: expires in 40 s of a 60 s lease. A free lease is not reported.
    ModelLease.objects.update_or_create(
        pk="busy", defaults={"owner": "host:1:abc", "expires_at": now + timedelta(seconds=40)}
    )
    ModelLease.objects.update_or_create(pk="idle", defaults={"owner": "", "expires_at": None})
    cluster = cluster_with_heartbeat(age_seconds=30, name="host-a:1:abc")
    stopped = cluster_with_heartbeat(age_seconds=5, name="host-b:2:def")
    stopped.stopped_at = now
    stopped.save()

    samples = scrape()

    assert value(samples, "controlplane_database_up") == 1
    assert value(samples, "controlplane_tasks", kind="deployment", status="pending") == 2
    assert value(samples, "controlplane_tasks", kind="deployment", status="processing") == 1
    assert value(samples, "controlplane_tasks", kind="deployment", status="failed") == 2
    assert value(samples, "controlplane_tasks", kind="deletion", status="done") == 1
    assert value(samples, "controlplane_tasks", kind="deletion", status="canceled") == 0  # zeros stay
    assert 120 <= value(samples, "controlplane_oldest_pending_task_age_seconds") < 180
    assert 20 <= value(samples, "controlplane_model_lease_heartbeat_age_seconds", embedding_model_id="busy") < 30
    assert value(samples, "controlplane_model_lease_heartbeat_age_seconds", embedding_model_id="idle") is None
    assert 30 <= value(samples, "controlplane_worker_canary_age_seconds", cluster=cluster.name) < 60
    assert value(samples, "controlplane_worker_supervisor_heartbeat_age_seconds", cluster=cluster.name) < 30
    assert value(samples, "controlplane_worker_canary_age_seconds", cluster=stopped.name) is None
    assert value(samples, "controlplane_open_drifts") == 1
    assert value(samples, "controlplane_models_deployed") == 1
    assert value(samples, "controlplane_model_slots_used") == 2
    assert value(samples, "controlplane_model_slots_max") == 7


@pytest.mark.django_db
def test_the_scrape_time_gauges_cost_a_fixed_number_of_queries(django_assert_max_num_queries):
    for n in range(5):
        DeploymentTaskFactory()
        RunningDeploymentFactory()
        model = EmbeddingModelFactory()
        ModelRevision.objects.create(
            name=f"{model.id}~000000000000000{n}", embedding_model=model, revision=f"000000000000000{n}", memory_bytes=n
        )
        InferenceServer.objects.create(url=f"http://127.0.0.1:{8090 + n}", live=True, loaded=[f"{model.id}~x"])
    with django_assert_max_num_queries(8):
        scrape()


@pytest.mark.django_db
def test_requests_and_database_queries_are_counted():
    vendor = connection.vendor
    before = scrape()
    after = scrape()

    # django-prometheus's middleware counted the first scrape, its database wrapper the scrape's queries.
    name = "django_http_requests_total_by_view_transport_method_total"
    labels = {"view": "metrics", "transport": "http", "method": "GET"}
    assert value(after, name, **labels) == (value(before, name, **labels) or 0) + 1
    queries = "django_db_execute_total"
    assert value(after, queries, alias="default", vendor=vendor) > (
        value(before, queries, alias="default", vendor=vendor) or 0
    )


@pytest.mark.django_db
def test_a_metrics_token_when_set_is_required(settings):
    settings.METRICS_TOKEN = "s3cret"

    assert APIClient().get("/metrics").status_code == 401
    assert APIClient().get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert value(scrape(HTTP_AUTHORIZATION="Bearer s3cret"), "controlplane_database_up") == 1


@pytest.mark.django_db(transaction=True)
def test_stage_and_deploy_durations_observed_by_a_worker_process_reach_the_scrape(settings, qcluster):
    # The probe deployer walks every stage in a real worker process; the test process runs none of them.
    settings.INFERENCE_DEPLOYER_FACTORY = "tests.support.probes.build_probe_deployer"
    model = EmbeddingModelFactory()
    stage = "controlplane_task_stage_duration_seconds_count"
    deploys = "controlplane_deploy_duration_seconds_count"
    before = scrape()

    cluster = qcluster(PROBE_STAGE_PAUSE="0.02")
    task = services.submit_deployment(model.id, {"expected_dimensions": 3}).task
    wait_for_status(task, {TaskStatus.DONE, TaskStatus.FAILED}, 60, cluster)
    assert task.status == TaskStatus.DONE, task.detail

    after = scrape()
    for name in DEPLOY_STAGES:
        labels = {"kind": "deployment", "stage": name, "outcome": "done"}
        assert value(after, stage, **labels) == (value(before, stage, **labels) or 0) + 1, name
    assert value(after, deploys) == (value(before, deploys) or 0) + 1
    assert value(after, "controlplane_deploy_duration_seconds_sum") - (
        value(before, "controlplane_deploy_duration_seconds_sum") or 0
    ) >= 0.02 * len(DEPLOY_STAGES)


@pytest.mark.django_db
def test_a_scrape_still_answers_when_the_database_cannot_be_read(monkeypatch):
    def unreadable() -> None:
        raise OperationalError("database is locked")

    monkeypatch.setattr("deployments.selectors.control_plane_state", unreadable)

    samples = scrape()

    assert value(samples, "controlplane_database_up") == 0
    assert value(samples, "controlplane_open_drifts") is None
    assert any(name.startswith("django_http_") for name, _ in samples)


@pytest.mark.django_db
def test_a_metrics_file_left_empty_by_a_killed_process_does_not_break_the_scrape(settings, tmp_path):
    """A process SIGKILLed while it created its metrics file leaves it empty; prometheus_client's merge
    raises on such a file, so every later scrape answered 500."""
    settings.PROMETHEUS_MULTIPROC_DIR = tmp_path
    (tmp_path / "histogram_4242.db").touch()
    samples = scrape()
    assert value(samples, "controlplane_tasks", kind="deployment", status="pending") is not None
