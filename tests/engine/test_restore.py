"""After the inference server restarts it serves nothing: restore_models puts back what is live."""

from __future__ import annotations

import re

import pytest
from django.core.management import CommandError, call_command

from deployments import jobs
from deployments.inference import V2Client, served_name
from deployments.inference.server import free_port
from deployments.models import EmbeddingModel, TaskStatus
from deployments.services import submit_deployment
from deployments.services.leases import claim_model_lease, release_lease
from deployments.services.reconciler import reconcile_models
from tests.support.factories import EmbeddingModelFactory

pytestmark = [pytest.mark.mlserver, pytest.mark.django_db]


def deploy(model_id: str) -> str:
    task = submit_deployment(model_id, config={"expected_dimensions": 384}).task
    assert jobs.run_task(str(task.pk)) == TaskStatus.DONE
    return EmbeddingModel.objects.get(pk=model_id).live_revision


def test_a_restarted_replica_serves_the_live_revisions_again(inference_settings, mlserver, capsys):
    EmbeddingModelFactory(id="cp-restore")
    revision = deploy("cp-restore")
    name = served_name("cp-restore", revision)
    with V2Client(mlserver.url) as client:
        client.unload(name)  # a restarted replica: nothing loaded, the registry still says deployed
        capsys.readouterr()

        call_command("restore_models")

        assert client.infer(name, ["back again"]).parameters["revision"] == revision
    summary, *listed = capsys.readouterr().out.splitlines()
    # restored, already served, not live, busy, failed
    assert [int(n) for n in re.findall(r"\d+", summary)] == [1, 0, 0, 0, 0]
    assert [line.strip().split(": ", 1) for line in listed] == [["restored", "cp-restore"]]
    assert reconcile_models().already_served == ["cp-restore"]


def test_a_model_the_repository_does_not_hold_is_marked_not_deployed(inference_settings):
    EmbeddingModelFactory(id="cp-phantom", state=EmbeddingModel.State.DEPLOYED, live_revision="feedface")

    report = reconcile_models()

    assert report.not_live == ["cp-phantom"]
    model = EmbeddingModel.objects.get(pk="cp-phantom")
    assert model.state == EmbeddingModel.State.NOT_DEPLOYED and model.live_revision == ""


def test_a_model_whose_lease_is_held_is_left_to_its_task(inference_settings):
    EmbeddingModelFactory(id="cp-busy", state=EmbeddingModel.State.DEPLOYED, live_revision="feedface")
    assert claim_model_lease("cp-busy", "some-worker")
    try:
        assert reconcile_models().busy == ["cp-busy"]
    finally:
        release_lease("cp-busy", "some-worker")
    assert EmbeddingModel.objects.get(pk="cp-busy").state == EmbeddingModel.State.DEPLOYED


def test_a_server_that_is_down_is_a_clear_one_line_error(inference_settings):
    down = f"http://127.0.0.1:{free_port()}"
    inference_settings.INFERENCE_REPLICA_URLS = [down]
    with pytest.raises(CommandError) as failure:
        call_command("restore_models", "--wait-for-server", "0.5")
    assert failure.value.returncode == 1
    assert down in str(failure.value) and "\n" not in str(failure.value)
