"""Migration 0007 (task ids become strings) on a database filled with tasks, retries, timelines and leases."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.db import IntegrityError
from django.utils import timezone

BEFORE = ("deployments", "0006_task_kind_status_index")
AFTER = ("deployments", "0007_task_ids_are_strings")
KEPT = ("kind", "embedding_model_id", "status", "detail", "metadata", "config", "sequence", "attempt", "lease_owner")


def fill_with_uuid_tasks(apps) -> dict[str, dict]:
    """Tasks of both kinds with a retry, timelines and a lease naming its task, as UUID ids held them."""
    task = apps.get_model("deployments", "Task")
    event = apps.get_model("deployments", "TaskEvent")
    lease = apps.get_model("deployments", "ModelLease")
    first = task.objects.create(
        kind="deployment",
        embedding_model_id="m-1",
        status="failed",
        detail="lost",
        metadata={"attempt": 1, "lost": True},
        config={"ready_timeout": 30},
        sequence=1,
    )
    retry = task.objects.create(
        kind="deployment",
        embedding_model_id="m-1",
        status="processing",
        metadata={"attempt": 2, "retry_of": str(first.pk)},
        sequence=1,
        attempt=2,
        retry_of=first,
        lease_owner="host:1:aa",
    )
    deletion = task.objects.create(kind="deletion", embedding_model_id="m-2", status="done", sequence=1)
    for each in (first, retry, deletion):
        assert isinstance(each.pk, uuid.UUID)
        event.objects.create(task=each, stage="fetch", state="started")
        event.objects.create(task=each, stage="fetch", state="done", duration_s=0.5, message="ok")
    expires = timezone.now() + timedelta(minutes=1)
    lease.objects.create(
        embedding_model_id="m-1", next_sequence=1, owner="host:1:aa", task_id=retry.pk, expires_at=expires
    )
    lease.objects.create(embedding_model_id="m-2", next_sequence=1)
    return {str(each.pk): {name: getattr(each, name) for name in KEPT} for each in (first, retry, deletion)}


def test_uuid_ids_become_their_string_form_and_every_link_follows(migrator):
    old = migrator.apply_initial_migration(BEFORE)
    expected = fill_with_uuid_tasks(old.apps)

    new = migrator.apply_tested_migration(AFTER)

    task = new.apps.get_model("deployments", "Task")
    rows = {row["id"]: row for row in task.objects.values()}
    assert set(rows) == set(expected)  # "3f1c9a5e-8a47-...": the form the API always answered with
    for task_id, fields in expected.items():
        assert {name: rows[task_id][name] for name in KEPT} == fields
    retry = task.objects.get(attempt=2)
    assert retry.retry_of.pk == retry.metadata["retry_of"]
    assert list(task.objects.get(pk=retry.retry_of.pk).retries.values_list("pk", flat=True)) == [retry.pk]
    for task_id in expected:
        assert task.objects.get(pk=task_id).events.count() == 2
    lease = new.apps.get_model("deployments", "ModelLease")
    assert dict(lease.objects.values_list("pk", "task_id")) == {"m-1": retry.pk, "m-2": None}


def test_after_it_a_client_id_works_everywhere_a_uuid_did(migrator):
    old = migrator.apply_initial_migration(BEFORE)
    fill_with_uuid_tasks(old.apps)
    new = migrator.apply_tested_migration(AFTER)
    task = new.apps.get_model("deployments", "Task")
    event = new.apps.get_model("deployments", "TaskEvent")
    old_failure = task.objects.get(attempt=1, kind="deployment")
    old_retry = task.objects.get(attempt=2)

    chosen = task.objects.create(
        id="1234", kind="deployment", embedding_model_id="m-1", sequence=2, attempt=2, retry_of=old_failure
    )
    event.objects.create(task=chosen, stage="status", state="pending")

    assert task.objects.get(pk="1234").retry_of.pk == old_failure.pk
    assert set(old_failure.retries.values_list("pk", flat=True)) == {old_retry.pk, "1234"}
    assert event.objects.filter(task="1234").count() == 1
    with pytest.raises(IntegrityError):  # the foreign keys are still enforced
        event.objects.create(task_id="no-such-task", stage="status", state="pending")


def test_going_back_restores_the_uuids(migrator):
    old = migrator.apply_initial_migration(BEFORE)
    expected = fill_with_uuid_tasks(old.apps)
    migrator.apply_tested_migration(AFTER)

    back = migrator.apply_tested_migration(BEFORE)

    task = back.apps.get_model("deployments", "Task")
    assert {str(pk) for pk in task.objects.values_list("pk", flat=True)} == set(expected)
    retry = task.objects.get(attempt=2)
    assert isinstance(retry.pk, uuid.UUID) and str(retry.retry_of.pk) == retry.metadata["retry_of"]
    assert back.apps.get_model("deployments", "TaskEvent").objects.filter(task=retry).count() == 2
    lease = back.apps.get_model("deployments", "ModelLease").objects.get(pk="m-1")
    assert lease.task_id == retry.pk


def test_going_back_refuses_while_a_task_id_is_not_a_uuid(migrator):
    old = migrator.apply_initial_migration(BEFORE)
    fill_with_uuid_tasks(old.apps)
    new = migrator.apply_tested_migration(AFTER)
    new.apps.get_model("deployments", "Task").objects.create(
        id="1234", kind="deletion", embedding_model_id="m-2", sequence=2
    )

    with pytest.raises(RuntimeError, match="'1234'"):
        migrator.apply_tested_migration(BEFORE)
