"""factory-boy factories for the control plane's models."""

from __future__ import annotations

import factory
from django.contrib.auth import get_user_model

from deployments.inference.packaged import packaged_model_dir
from deployments.models import DeletionTask, DeploymentTask, EmbeddingModel, TaskStatus
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
