"""Models, selectors and leases: the data layer's rules and the origin's lookup bugs."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection
from django.utils import timezone

from deployments import selectors
from deployments.models import (
    ACTIVE_STATUSES,
    DeletionTask,
    DeploymentTask,
    EmbeddingModel,
    ModelLease,
    Task,
    TaskEvent,
    TaskKind,
    TaskStatus,
)
from deployments.services.leases import allocate_sequence, claim_lease, release_lease, renew_lease
from tests.support.factories import DeletionTaskFactory, DeploymentTaskFactory, EmbeddingModelFactory

pytestmark = pytest.mark.django_db


def test_latest_task_for_a_model_is_the_newest_not_the_first():
    # Regression: the origin returned the *first* task of a model.
    model = EmbeddingModelFactory()
    first = DeploymentTaskFactory(embedding_model_id=model.id, status=TaskStatus.DONE)
    latest = DeploymentTaskFactory(embedding_model_id=model.id, status=TaskStatus.PENDING)
    DeploymentTaskFactory()  # another model's task does not count
    assert selectors.latest_task_for_model(TaskKind.DEPLOYMENT, model.id) == latest != first


def test_latest_prefers_the_newest_attempt_of_the_same_submission():
    model = EmbeddingModelFactory()
    lost = DeploymentTaskFactory(embedding_model_id=model.id, status=TaskStatus.FAILED)
    retry = DeploymentTaskFactory(embedding_model_id=model.id, sequence=lost.sequence, attempt=2, retry_of=lost)
    assert selectors.latest_task_for_model(TaskKind.DEPLOYMENT, model.id) == retry


def test_deployment_and_deletion_lookups_are_separate():
    # Regression: the origin's delete endpoints read deployment tasks.
    model = EmbeddingModelFactory()
    deployment = DeploymentTaskFactory(embedding_model_id=model.id)
    assert selectors.latest_task_for_model(TaskKind.DELETION, model.id) is None
    assert selectors.find_task(deployment.pk, kind=TaskKind.DELETION) is None
    assert DeletionTask.objects.filter(pk=deployment.pk).count() == 0
    deletion = DeletionTaskFactory(embedding_model_id=model.id)
    assert selectors.latest_task_for_model(TaskKind.DELETION, model.id) == deletion
    assert selectors.latest_task_for_model(TaskKind.DEPLOYMENT, model.id) == deployment


def _plan(queryset) -> str:
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SET enable_seqscan = off")  # tiny tables: make the planner show what it would use
        plan = queryset.explain()
        if connection.vendor == "postgresql":
            cursor.execute("SET enable_seqscan = on")
    return plan


def test_latest_lookup_is_an_index_seek():
    """EXPLAIN shows the (embedding_model_id, kind, sequence, attempt) index, whatever the table size."""
    DeploymentTaskFactory.create_batch(3)
    plan = _plan(
        Task.objects.filter(embedding_model_id="model-x", kind=TaskKind.DELETION).order_by("-sequence", "-attempt")[:1]
    )
    assert "task_model_kind_seq" in plan
    assert "TEMP B-TREE" not in plan.upper()  # no sort step on SQLite


def test_a_models_queue_head_reads_the_index_of_unfinished_tasks():
    DeploymentTaskFactory.create_batch(3)
    plan = _plan(
        Task.objects.filter(embedding_model_id="model-x", status__in=ACTIVE_STATUSES).order_by("sequence", "attempt")[
            :1
        ]
    )
    # Two seeks (pending, processing); the sort is over the model's unfinished tasks alone.
    assert "task_model_queue" in plan


def test_queue_order_shares_one_counter_between_deployments_and_deletions():
    model = EmbeddingModelFactory()
    deploy = DeploymentTaskFactory(embedding_model_id=model.id)
    delete = DeletionTaskFactory(embedding_model_id=model.id)
    later = DeploymentTaskFactory(embedding_model_id=model.id)
    assert deploy.sequence < delete.sequence < later.sequence
    assert selectors.head_task_for_model(model.id) == deploy
    assert selectors.earlier_unfinished_task_exists(delete)
    Task.objects.filter(pk=deploy.pk).update(status=TaskStatus.DONE)
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
    assert list(error.value.message_dict) == ["source"]
    assert str(tmp_path) in str(error.value.message_dict["source"])


def test_an_event_belongs_to_a_task():
    with pytest.raises(IntegrityError):
        TaskEvent.objects.create(stage="validate", state="started")


def test_proxies_see_their_own_kind_and_create_rows_of_it():
    deployment, deletion = DeploymentTaskFactory(), DeletionTaskFactory()
    assert (deployment.kind, deletion.kind) == (TaskKind.DEPLOYMENT, TaskKind.DELETION)
    assert list(DeploymentTask.objects.values_list("pk", flat=True)) == [deployment.pk]
    assert list(DeletionTask.objects.values_list("pk", flat=True)) == [deletion.pk]
    assert Task.objects.count() == 2
    # Loaded through the base model, a row keeps its kind.
    assert Task.objects.get(pk=deletion.pk).kind == TaskKind.DELETION


def test_a_task_of_an_unknown_kind_cannot_be_stored():
    with pytest.raises(IntegrityError):
        Task.objects.create(kind="upgrade", embedding_model_id="m", sequence=1)


def test_the_lock_is_a_database_lease_not_a_file():
    """Regression: the origin's lock was a file in /tmp, so two machines could both hold it."""
    first, second = DeploymentTaskFactory(), DeploymentTaskFactory()
    second.embedding_model_id = first.embedding_model_id
    assert claim_lease(first, "machine-a:1")
    assert not claim_lease(second, "machine-b:1")  # another machine sees the same row
    lease = ModelLease.objects.get(pk=first.embedding_model_id)
    assert (lease.owner, lease.task_id) == ("machine-a:1", first.pk)
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


@pytest.mark.parametrize("task_id", ["1234", "3f1c9a5e-8a47-4a53-9d7e-2b0c6f1e4d21", "a.b_c:d-e", "_x", "x" * 128])
def test_a_task_id_is_any_safe_string(task_id):
    DeploymentTaskFactory(id=task_id).full_clean()


@pytest.mark.parametrize("task_id", [".x", "..", "a/b", "a b", "a\tb", "a\x00b", "x" * 129, "caf\u00e9", "a#b"])
def test_an_unsafe_task_id_does_not_validate(task_id):
    with pytest.raises(ValidationError) as invalid:
        DeploymentTask(id=task_id, embedding_model_id="m", sequence=1).full_clean()
    assert "id" in invalid.value.message_dict
