"""What the engine guarantees when something unexpected happens inside a task."""

from __future__ import annotations

import pytest

from deployments import services
from deployments.models import EmbeddingModel, ModelLease, TaskStatus
from tests.support.factories import EmbeddingModelFactory

pytestmark = pytest.mark.django_db


def test_a_deployer_that_cannot_be_built_holds_no_capacity_slot(settings):
    settings.INFERENCE_DEPLOYER_FACTORY = "tests.support.probes.build_unbuildable_deployer"
    settings.MAX_DEPLOYED_MODELS = 1
    task = services.submit_deployment(EmbeddingModelFactory(id="unbuildable").id).task

    assert services.run_task(task.pk) == TaskStatus.FAILED

    assert EmbeddingModel.objects.get(pk="unbuildable").state == EmbeddingModel.State.NOT_DEPLOYED
    assert not EmbeddingModel.objects.filter(state__in=EmbeddingModel.SLOT_STATES).exists()


def test_a_worker_stopped_mid_pipeline_still_finishes_its_task_and_frees_the_model(settings):
    settings.INFERENCE_DEPLOYER_FACTORY = "tests.support.probes.build_stopped_deployer"
    model = EmbeddingModelFactory(id="stopped")
    task = services.submit_deployment(model.id).task
    following = services.submit_deployment(model.id).task

    with pytest.raises(SystemExit):
        services.run_task(task.pk)

    task.refresh_from_db()
    assert (task.status, task.metadata["failed_stage"]) == (TaskStatus.FAILED, "worker")
    assert ModelLease.objects.get(pk=model.id).owner == ""
    following.refresh_from_db()
    assert following.dispatched_at is not None  # the next task was handed over
