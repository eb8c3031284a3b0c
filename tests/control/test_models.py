"""Models, selectors and leases: the data layer's rules and the origin's lookup bugs."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection
from django.utils import timezone

from deployments import selectors
from deployments.models import DeletionTask, DeploymentTask, EmbeddingModel, ModelLease, TaskEvent, TaskStatus
from deployments.services.leases import allocate_sequence, claim_lease, release_lease, renew_lease
from tests.control.factories import DeletionTaskFactory, DeploymentTaskFactory, EmbeddingModelFactory

pytestmark = pytest.mark.django_db


def test_latest_task_for_a_model_is_the_newest_not_the_first():
    # Regression: the origin returned the *first* task of a model.
    model = EmbeddingModelFactory()
    first = DeploymentTaskFactory(embedding_model_id=model.id, status=TaskStatus.DONE)
    latest = DeploymentTaskFactory(embedding_model_id=model.id, status=TaskStatus.PENDING)
    DeploymentTaskFactory()  # another model's task does not count
    assert selectors.latest_task_for_model(DeploymentTask, model.id) == latest != first


def test_latest_prefers_the_newest_attempt_of_the_same_submission():
    model = EmbeddingModelFactory()
    lost = DeploymentTaskFactory(embedding_model_id=model.id, status=TaskStatus.FAILED)
    retry = DeploymentTaskFactory(embedding_model_id=model.id, sequence=lost.sequence, attempt=2, retry_of=lost)
    assert selectors.latest_task_for_model(DeploymentTask, model.id) == retry


def test_deployment_and_deletion_lookups_are_separate():
    # Regression: the origin's delete endpoints read deployment tasks.
    model = EmbeddingModelFactory()
    deployment = DeploymentTaskFactory(embedding_model_id=model.id)
    assert selectors.latest_task_for_model(DeletionTask, model.id) is None
    assert selectors.get_task(DeletionTask, deployment.pk) is None
    deletion = DeletionTaskFactory(embedding_model_id=model.id)
    assert selectors.latest_task_for_model(DeletionTask, model.id) == deletion
    assert selectors.latest_task_for_model(DeploymentTask, model.id) == deployment


def test_latest_lookup_is_an_index_seek():
    """EXPLAIN shows the (embedding_model_id, sequence, attempt) index, whatever the table size."""
    DeploymentTaskFactory.create_batch(3)
    queryset = DeploymentTask.objects.filter(embedding_model_id="model-x").order_by("-sequence", "-attempt")[:1]
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SET enable_seqscan = off")  # tiny tables: make the planner show what it would use
        plan = queryset.explain()
        if connection.vendor == "postgresql":
            cursor.execute("SET enable_seqscan = on")
    assert "deploytask_model_seq" in plan
    assert "TEMP B-TREE" not in plan.upper()  # no sort step on SQLite


def test_queue_order_shares_one_counter_between_deployments_and_deletions():
    model = EmbeddingModelFactory()
    deploy = DeploymentTaskFactory(embedding_model_id=model.id)
    delete = DeletionTaskFactory(embedding_model_id=model.id)
    later = DeploymentTaskFactory(embedding_model_id=model.id)
    assert deploy.sequence < delete.sequence < later.sequence
    assert selectors.head_task_for_model(model.id) == deploy
    assert selectors.earlier_unfinished_task_exists(delete)
    deploy.status = TaskStatus.DONE
    deploy.save()
    assert selectors.head_task_for_model(model.id) == delete
    assert not selectors.earlier_unfinished_task_exists(delete)
    assert selectors.earlier_unfinished_task_exists(later)


def test_allocate_sequence_counts_per_model():
    assert [allocate_sequence("a"), allocate_sequence("a"), allocate_sequence("b")] == [1, 2, 1]


def test_embedding_model_id_uses_the_serving_layers_rule(minilm_dir):
    for bad in ["", "a/b", "..", "a..b", "a b", "-a", "a\x00b", "x" * 129, "é"]:
        with pytest.raises(ValidationError):
            EmbeddingModel(id=bad, source=str(minilm_dir)).full_clean()
    EmbeddingModel(id="x" * 128, source=str(minilm_dir)).full_clean()


def test_a_source_outside_the_allowed_roots_does_not_validate(tmp_path, minilm_dir):
    with pytest.raises(ValidationError) as error:
        EmbeddingModel(id="m", source=str(tmp_path)).full_clean()
    assert "outside the allowed roots" in str(error.value.message_dict["source"])


def test_an_event_belongs_to_exactly_one_task():
    with pytest.raises(IntegrityError):
        TaskEvent.objects.create(stage="validate", state="started")


def test_the_lock_is_a_database_lease_not_a_file():
    """Regression: the origin's lock was a file in /tmp, so two machines could both hold it."""
    first, second = DeploymentTaskFactory(), DeploymentTaskFactory()
    second.embedding_model_id = first.embedding_model_id
    assert claim_lease(first, "machine-a:1")
    assert not claim_lease(second, "machine-b:1")  # another machine sees the same row
    lease = ModelLease.objects.get(pk=first.embedding_model_id)
    assert (lease.owner, lease.task_id, lease.task_kind) == ("machine-a:1", first.pk, "deployment")
    assert renew_lease(first.embedding_model_id, "machine-a:1")
    assert not release_lease(first.embedding_model_id, "machine-b:1")
    assert release_lease(first.embedding_model_id, "machine-a:1")
    assert claim_lease(second, "machine-b:1")


def test_an_expired_lease_can_be_taken_over():
    task = DeploymentTaskFactory()
    assert claim_lease(task, "dead-worker")
    ModelLease.objects.filter(pk=task.embedding_model_id).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert not renew_lease(task.embedding_model_id, "someone-else")
    assert claim_lease(task, "new-worker")
