"""The one door for status changes: which moves it allows, what it writes, and the races it settles."""

from __future__ import annotations

import itertools

import pytest

from deployments.models import TERMINAL_STATUSES, Task, TaskStatus
from deployments.services import TransitionNotAllowed, cancel_task, transition
from deployments.services.transitions import ALLOWED_TRANSITIONS, STATUS_STAGE
from tests.support.factories import DeletionTaskFactory, DeploymentTaskFactory

pytestmark = pytest.mark.django_db

ALLOWED = {
    (TaskStatus.PENDING, TaskStatus.PROCESSING),
    (TaskStatus.PENDING, TaskStatus.CANCELED),
    (TaskStatus.PENDING, TaskStatus.REFUSED),
    (TaskStatus.PENDING, TaskStatus.FAILED),
    (TaskStatus.PROCESSING, TaskStatus.DONE),
    (TaskStatus.PROCESSING, TaskStatus.FAILED),
    (TaskStatus.PROCESSING, TaskStatus.REFUSED),
}
EVERY_MOVE = list(itertools.product(TaskStatus.values, repeat=2))


def test_the_table_of_allowed_moves_is_the_lifecycle():
    table = {(from_status, to) for from_status, targets in ALLOWED_TRANSITIONS.items() for to in targets}
    assert table == ALLOWED
    assert not any(from_status in TERMINAL_STATUSES for from_status, _ in table)


@pytest.mark.parametrize("from_status,to", [move for move in EVERY_MOVE if move not in ALLOWED])
def test_every_move_that_is_not_allowed_is_refused_and_writes_nothing(from_status, to):
    task = DeploymentTaskFactory(status=from_status, lease_owner="w:1")
    before = Task.objects.filter(pk=task.pk).values().get()
    with pytest.raises(TransitionNotAllowed):
        transition(task, to, detail="should not land", by="test")
    assert Task.objects.filter(pk=task.pk).values().get() == before
    assert task.events.count() == 0
    assert task.status == from_status


@pytest.mark.parametrize("from_status,to", sorted(ALLOWED))
def test_an_allowed_move_writes_the_status_the_event_and_the_times(from_status, to):
    task = DeletionTaskFactory(status=from_status, lease_owner="w:1")
    before = Task.objects.get(pk=task.pk).updated_at

    assert transition(task, to, detail="why", by="worker-7")

    stored = Task.objects.get(pk=task.pk)
    assert (stored.status, stored.detail) == (to, "why")
    assert stored.updated_at > before
    assert (stored.started_at is not None) == (to == TaskStatus.PROCESSING)
    assert (stored.finished_at is not None) == (to in TERMINAL_STATUSES)
    if to == TaskStatus.PROCESSING:
        assert stored.lease_owner == "worker-7"
    event = task.events.get()
    assert (event.stage, event.state, event.message, event.actor) == (STATUS_STAGE, to, "why", "worker-7")
    assert task.status == to  # the caller's instance follows


def test_a_move_from_a_status_the_row_no_longer_has_changes_nothing():
    task = DeploymentTaskFactory(status=TaskStatus.PENDING)
    stale = Task.objects.get(pk=task.pk)
    assert transition(task, TaskStatus.CANCELED, by="operator")
    assert not transition(stale, TaskStatus.PROCESSING, by="late-worker")
    stored = Task.objects.get(pk=task.pk)
    assert (stored.status, stored.lease_owner) == (TaskStatus.CANCELED, "")
    assert [e.state for e in task.events.all()] == [TaskStatus.CANCELED]


def test_of_a_finishing_worker_and_the_sweeper_exactly_one_wins():
    task = DeploymentTaskFactory(status=TaskStatus.PROCESSING, lease_owner="worker:1")
    seen_by_worker, seen_by_sweeper = Task.objects.get(pk=task.pk), Task.objects.get(pk=task.pk)
    assert transition(seen_by_sweeper, TaskStatus.FAILED, detail="lease expired", by="sweeper")
    assert not transition(seen_by_worker, TaskStatus.DONE, detail="revision r1", by="worker:1")
    assert Task.objects.get(pk=task.pk).status == TaskStatus.FAILED


def test_a_running_task_taken_over_by_another_worker_is_not_finished_by_the_first():
    task = DeploymentTaskFactory(status=TaskStatus.PROCESSING, lease_owner="worker:1")
    seen_by_first = Task.objects.get(pk=task.pk)
    Task.objects.filter(pk=task.pk).update(lease_owner="worker:2")
    assert not transition(seen_by_first, TaskStatus.DONE, by="worker:1")
    assert Task.objects.get(pk=task.pk).status == TaskStatus.PROCESSING


def test_cancel_goes_through_the_door_and_names_who_canceled():
    task = DeploymentTaskFactory(status=TaskStatus.PENDING)
    cancel_task(task, by="alice")
    event = task.events.get()
    assert (task.status, event.state, event.actor) == (TaskStatus.CANCELED, TaskStatus.CANCELED, "alice")
