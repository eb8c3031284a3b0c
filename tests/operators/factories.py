"""Tasks as the engine leaves them: finished with a timeline, failed with a reason, running."""

from __future__ import annotations

from datetime import timedelta

import factory
from django.utils import timezone

from deployments.models import TaskEvent, TaskStatus
from tests.control.factories import DeletionTaskFactory, DeploymentTaskFactory


class FinishedDeploymentFactory(DeploymentTaskFactory):
    class Meta:
        skip_postgeneration_save = True

    status = TaskStatus.DONE
    started_at = factory.LazyFunction(lambda: timezone.now() - timedelta(seconds=3))
    finished_at = factory.LazyFunction(timezone.now)
    detail = "revision rev-1 serves at http://127.0.0.1:8080/v2/models/m/infer"
    metadata = factory.LazyAttribute(
        lambda o: {
            "attempt": 1,
            "retry_of": None,
            "revision": "rev-1",
            "endpoint": f"http://127.0.0.1:8080/v2/models/{o.embedding_model_id}/infer",
            "dimensions": 384,
            "timings": {"validate": 0.01, "fetch": 0.4, "stage_green": 1.2, "smoke_test": 0.3, "promote": 0.5},
        }
    )

    @factory.post_generation
    def events(task, create, extracted, **kwargs):
        if not create:
            return
        for stage, seconds in task.metadata.get("timings", {}).items():
            TaskEvent.objects.create(deployment_task=task, stage=stage, state="started")
            TaskEvent.objects.create(
                deployment_task=task, stage=stage, state="done", duration_s=seconds, message=f"{stage} ok"
            )


class FailedDeploymentFactory(DeploymentTaskFactory):
    status = TaskStatus.FAILED
    started_at = factory.LazyFunction(lambda: timezone.now() - timedelta(seconds=2))
    finished_at = factory.LazyFunction(timezone.now)
    detail = "smoke_test: embeddings have 3 dimensions, expected 384"
    metadata = factory.LazyAttribute(
        lambda o: {"attempt": 1, "retry_of": None, "failed_stage": "smoke_test", "reason": "expected 384"}
    )


class RunningDeploymentFactory(DeploymentTaskFactory):
    status = TaskStatus.PROCESSING
    started_at = factory.LazyFunction(lambda: timezone.now() - timedelta(seconds=5))
    lease_owner = "host:1:abcd"


class FinishedDeletionFactory(DeletionTaskFactory):
    status = TaskStatus.DONE
    started_at = factory.LazyFunction(lambda: timezone.now() - timedelta(seconds=1))
    finished_at = factory.LazyFunction(timezone.now)
    detail = "unloaded m; removed 1 revision(s)"
