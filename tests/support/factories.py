"""factory-boy factories: models, users, and tasks as the engine leaves them (finished with a timeline,
failed with a reason, running)."""

from __future__ import annotations

from datetime import timedelta

import factory
from django.contrib.auth import get_user_model
from django.utils import timezone

from deployments.inference.packaged import packaged_model_dir
from deployments.models import DeletionTask, DeploymentTask, EmbeddingModel, TaskEvent, TaskStatus, WorkerCluster
from deployments.services.leases import allocate_sequence


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"user{n}")


class EmbeddingModelFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = EmbeddingModel

    id = factory.Sequence(lambda n: f"model-{n}")
    name = factory.LazyAttribute(lambda o: o.id)
    source = factory.LazyFunction(lambda: str(packaged_model_dir()))


class _TaskFactory(factory.django.DjangoModelFactory):
    embedding_model_id = factory.LazyFunction(lambda: EmbeddingModelFactory().id)
    status = TaskStatus.PENDING
    # Taken from the model's counter like a real submission, so factory and service tasks interleave correctly.
    sequence = factory.LazyAttribute(lambda o: allocate_sequence(o.embedding_model_id))
    metadata = factory.LazyAttribute(lambda o: {"attempt": 1, "retry_of": None})


class DeploymentTaskFactory(_TaskFactory):
    class Meta:
        model = DeploymentTask


class DeletionTaskFactory(_TaskFactory):
    class Meta:
        model = DeletionTask


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
            "timings": {"validate": 0.01, "fetch": 0.4, "load_green": 1.2, "smoke_test": 0.3, "switch": 0.01},
        }
    )

    @factory.post_generation
    def events(task, create, extracted, **kwargs):
        if not create:
            return
        for stage, seconds in task.metadata.get("timings", {}).items():
            TaskEvent.objects.create(task=task, stage=stage, state="started")
            TaskEvent.objects.create(task=task, stage=stage, state="done", duration_s=seconds, message=f"{stage} ok")


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


def cluster_with_heartbeat(age_seconds: float = 0, name: str = "host-a:1:abc") -> WorkerCluster:
    """A running worker cluster (named host:pid:nonce) whose canary last ran ``age_seconds`` ago."""
    beat = timezone.now() - timedelta(seconds=age_seconds)
    return WorkerCluster.objects.create(
        name=name,
        host=name.split(":", 1)[0],
        supervisor_pid=1,
        cluster_pid=2,
        cluster_started_at=beat,
        last_canary_at=beat,
        supervisor_seen_at=timezone.now(),
    )
