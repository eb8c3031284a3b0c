"""The reconciler: what the fleet serves follows what the registry says is live, and drift is shown."""

from __future__ import annotations

import re
from io import StringIO

import httpx
import pytest
from django.core.management import call_command

from deployments import jobs
from deployments.inference import V2Client, served_name
from deployments.inference.router import LocalEnvoy
from deployments.inference.server import free_port
from deployments.models import Drift, EmbeddingModel, TaskStatus
from deployments.services import reconciler, submit_deployment
from deployments.services.leases import claim_lease, release_lease
from deployments.services.reconciler import InferenceServerDown, reconcile_models
from tests.support.drills import live_model
from tests.support.factories import DeploymentTaskFactory, EmbeddingModelFactory
from tests.support.processes import wait_for

pytestmark = [pytest.mark.mlserver, pytest.mark.django_db]


def deploy(model_id: str) -> str:
    EmbeddingModelFactory(id=model_id)
    task = submit_deployment(model_id, config={"expected_dimensions": 384}).task
    assert jobs.run_task(str(task.pk)) == TaskStatus.DONE
    return EmbeddingModel.objects.get(pk=model_id).live_revision


def test_a_model_a_replica_lost_is_served_again_and_the_drift_is_recorded(inference_settings, mlserver, api):
    revision = deploy("rc-lost")
    with V2Client(mlserver.url) as client:
        client.unload(served_name("rc-lost", revision))  # what a restarted replica looks like

        report = reconcile_models()

        assert report.restored == ["rc-lost"]
        assert client.infer(served_name("rc-lost", revision), ["back"]).parameters["revision"] == revision
    drift = Drift.objects.get(embedding_model_id="rc-lost")
    assert (drift.registered_revision, drift.served_revision) == (revision, revision)  # routed, not ready
    assert f"not ready on {mlserver.url}" in drift.detail
    assert drift.resolved_at is not None and f"revision {revision} ready on every replica" in drift.action
    assert api.get("/models/rc-lost").json()["drift"] is None
    # In step now: a second pass changes nothing and opens no drift.
    assert reconcile_models().already_served == ["rc-lost"]
    assert Drift.objects.filter(embedding_model_id="rc-lost").count() == 1


def test_a_model_whose_lease_a_task_holds_is_not_raced_and_no_drift_is_opened(inference_settings, mlserver, api):
    revision = deploy("rc-busy")
    with V2Client(mlserver.url) as client:
        client.unload(served_name("rc-busy", revision))
    task = DeploymentTaskFactory(embedding_model_id="rc-busy", status=TaskStatus.PROCESSING)
    lease = claim_lease(task, "a-deploy-in-progress")
    assert lease
    try:
        assert reconcile_models().busy == ["rc-busy"]
        with V2Client(mlserver.url) as client:
            assert not client.model_ready(served_name("rc-busy", revision))  # left to the task holding the lease
        # What a deploy in flight shows is its own business: not drift.
        assert api.get("/models/rc-busy").json()["drift"] is None
        assert not Drift.objects.filter(embedding_model_id="rc-busy").exists()
    finally:
        release_lease("rc-busy", "a-deploy-in-progress")

    # Let go and still not served: that is drift, repaired and recorded.
    assert reconcile_models().restored == ["rc-busy"]
    drift = Drift.objects.get(embedding_model_id="rc-busy")
    assert drift.resolved_at is not None and f"not ready on {mlserver.url}" in drift.detail


def test_a_deploy_between_the_cycles_look_and_its_repair_opens_no_drift(
    inference_settings, minilm_dir, sources_root, monkeypatch
):
    """The cycle looked at the fleet, then a whole deploy ran before it took the model's lease: what it saw
    is stale, not drift (every deploy used to leave a drift row, opened and resolved at once)."""
    blue = live_model("rc-stale", minilm_dir, sources_root).metadata["revision"]
    look = reconciler._look_at_fleet

    def look_then_deploy(*args, **kwargs):
        view = look(*args, **kwargs)
        green = submit_deployment("rc-stale", config={"expected_dimensions": 384}).task
        assert jobs.run_task(str(green.pk)) == TaskStatus.DONE
        return view

    monkeypatch.setattr(reconciler, "_look_at_fleet", look_then_deploy)
    report = reconcile_models()
    monkeypatch.undo()

    assert report.busy == ["rc-stale"] and not report.restored
    assert not Drift.objects.filter(embedding_model_id="rc-stale").exists()
    assert EmbeddingModel.objects.get(pk="rc-stale").live_revision != blue
    assert reconcile_models().already_served == ["rc-stale"]


def test_a_server_that_is_down_opens_a_drift_for_every_deployed_model(inference_settings, api, admin_client):
    EmbeddingModelFactory(id="rc-down", state=EmbeddingModel.State.DEPLOYED, live_revision="feedface")
    down = f"http://127.0.0.1:{free_port()}"
    inference_settings.INFERENCE_REPLICA_URLS = [down]
    with pytest.raises(InferenceServerDown):
        reconcile_models()
    drift = Drift.objects.get(embedding_model_id="rc-down", resolved_at__isnull=True)
    assert drift.registered_revision == "feedface" and down in drift.detail

    shown = api.get("/models/rc-down").json()["drift"]
    assert shown["registered_revision"] == "feedface" and "waiting" in shown["action"] and shown["detected_at"]
    out = StringIO()
    call_command("tasks", stdout=out)
    assert re.search(r"^rc-down\s+\d{4}-\d\d-\d\d", out.getvalue(), re.MULTILINE)
    page = admin_client.get("/admin/deployments/embeddingmodel/").content.decode()
    assert "drift" in page and "since" in page


def test_a_replica_that_does_not_answer_keeps_a_model_from_counting_as_in_step(inference_settings, mlserver):
    deploy("rc-degraded")
    down = f"http://127.0.0.1:{free_port()}"
    inference_settings.INFERENCE_REPLICA_URLS = [mlserver.url, down]

    report = reconcile_models()

    assert report.already_served == [] and down in report.failed["rc-degraded"]
    inference_settings.INFERENCE_REPLICA_URLS = [mlserver.url]
    assert reconcile_models().already_served == ["rc-degraded"]


def test_a_router_started_with_no_table_is_told_the_fleet_and_answers_it_live(inference_settings, tmp_path):
    with LocalEnvoy(tmp_path / "envoy") as router:
        # A repository of its own: ready means every routed model is, and the models other tests leave
        # live in the session's repository are not this router's to wait for.
        inference_settings.MODEL_REPOSITORY_ROOT = tmp_path / "repository"
        inference_settings.MODEL_REPOSITORY_ROOT.mkdir()
        inference_settings.INFERENCE_SERVER_URL = router.url
        inference_settings.ROUTER_CONFIG_DIR = router.routes.config_dir
        inference_settings.ROUTER_ADMIN_URL = router.admin_url
        assert httpx.get(f"{router.url}/v2/health/live").status_code == 503, "it knows no replica yet"

        reconcile_models()

        wait_for(lambda: httpx.get(f"{router.url}/v2/health/live").status_code == 200, 10, "the fleet to be live")
        # Ready follows the router's health checks (every second) of each routed revision, which may lag.
        wait_for(lambda: httpx.get(f"{router.url}/v2/health/ready").status_code == 200, 10, "the fleet to be ready")
        assert httpx.get(f"{router.url}/v2").json()["name"] == "mlserver"
