"""Migration 0003 (one task table) on a database filled with both kinds of task, forward and back."""

from __future__ import annotations

import uuid
from datetime import timedelta

from django.utils import timezone

BEFORE = ("deployments", "0002_task_status_created_index")
AFTER = ("deployments", "0003_one_task_table")
COPIED = (
    "embedding_model_id",
    "status",
    "detail",
    "metadata",
    "config",
    "sequence",
    "attempt",
    "retry_of_id",
    "requested_by",
    "lease_owner",
    "dispatched_at",
    "started_at",
    "finished_at",
    "created_at",
    "updated_at",
)


def fill_two_tables(apps) -> dict[uuid.UUID, tuple[str, dict]]:
    """Tasks of both kinds with retries, timelines and leases, as the two-table schema held them."""
    tables = {
        "deployment": apps.get_model("deployments", "DeploymentTask"),
        "deletion": apps.get_model("deployments", "DeletionTask"),
    }
    event = apps.get_model("deployments", "TaskEvent")
    lease = apps.get_model("deployments", "ModelLease")
    now = timezone.now()
    expected = {}
    for kind, model in tables.items():
        first = model.objects.create(
            embedding_model_id="m-1",
            status="failed",
            detail=f"{kind} failed",
            metadata={"attempt": 1, "lost": True},
            config={"ready_timeout": 30} if kind == "deployment" else {},
            sequence=1 if kind == "deployment" else 2,
            requested_by="alice",
            lease_owner="host:1:aa",
            dispatched_at=now - timedelta(minutes=5),
            started_at=now - timedelta(minutes=4),
            finished_at=now - timedelta(minutes=3),
        )
        retry = model.objects.create(
            embedding_model_id="m-1",
            status="done" if kind == "deployment" else "pending",
            sequence=first.sequence,
            attempt=2,
            retry_of=first,
            metadata={"attempt": 2, "retry_of": str(first.pk)},
        )
        other = model.objects.create(embedding_model_id="m-2", status="canceled", sequence=1)
        for task in (first, retry, other):
            event.objects.create(**{f"{kind}_task": task}, stage="fetch", state="started")
            event.objects.create(**{f"{kind}_task": task}, stage="fetch", state="done", duration_s=0.5, message="ok")
            expected[task.pk] = (kind, {name: getattr(task, name) for name in COPIED})
    lease.objects.create(embedding_model_id="m-1", next_sequence=2, owner="host:1:aa", task_kind="deletion")
    lease.objects.create(embedding_model_id="~capacity")
    return expected


def test_one_task_table_keeps_every_task_and_its_timeline(migrator):
    old = migrator.apply_initial_migration(BEFORE)
    expected = fill_two_tables(old.apps)
    old_events = {
        (row["deployment_task_id"] or row["deletion_task_id"], row["stage"], row["state"], row["message"])
        for row in old.apps.get_model("deployments", "TaskEvent").objects.values()
    }

    new = migrator.apply_tested_migration(AFTER)

    task = new.apps.get_model("deployments", "Task")
    rows = {row["id"]: row for row in task.objects.values()}
    assert set(rows) == set(expected)
    for task_id, (kind, fields) in expected.items():
        assert rows[task_id]["kind"] == kind
        assert {name: rows[task_id][name] for name in COPIED} == fields
    retries = task.objects.filter(attempt=2)
    assert {(t.kind, t.retry_of.kind, t.retry_of.attempt) for t in retries} == {
        ("deployment", "deployment", 1),
        ("deletion", "deletion", 1),
    }
    new_events = {
        (row["task_id"], row["stage"], row["state"], row["message"])
        for row in new.apps.get_model("deployments", "TaskEvent").objects.values()
    }
    assert new_events == old_events and len(new_events) == 12
    lease = new.apps.get_model("deployments", "ModelLease")
    assert list(lease.objects.values_list("pk", "next_sequence", "owner")) == [("m-1", 2, "host:1:aa")]
    assert list(new.apps.get_model("deployments", "CapacityLock").objects.values_list("pk", flat=True)) == [1]
    # The proxies read their own kind out of the one table.
    assert task.objects.filter(kind="deletion").count() == 3


def test_going_back_splits_the_kinds_again(migrator):
    old = migrator.apply_initial_migration(BEFORE)
    expected = fill_two_tables(old.apps)
    migrator.apply_tested_migration(AFTER)

    back = migrator.apply_tested_migration(BEFORE)

    for kind, table in (("deployment", "DeploymentTask"), ("deletion", "DeletionTask")):
        rows = {row["id"]: row for row in back.apps.get_model("deployments", table).objects.values()}
        assert {task_id for task_id, (k, _) in expected.items() if k == kind} == set(rows)
        for task_id, row in rows.items():
            assert {name: row[name] for name in COPIED} == expected[task_id][1]
    events = back.apps.get_model("deployments", "TaskEvent").objects
    assert events.filter(deployment_task__isnull=False).count() == 6
    assert events.filter(deletion_task__isnull=False).count() == 6
