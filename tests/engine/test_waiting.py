"""Why a pending task waits: computed from the task table, the model's lease and the task's timeline
by one selector, for tasks submitted, handed to the real (ORM) broker and re-sent by the real sweeper."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from deployments import selectors, services
from deployments.clock import format_time
from deployments.models import HANDOFF_STAGE, DeploymentTask, Task, TaskEvent, TaskStatus
from deployments.services.leases import claim_lease, claim_model_lease
from deployments.services.sweeper import SWEEPER
from tests.support.factories import EmbeddingModelFactory, FailedDeploymentFactory

pytestmark = pytest.mark.django_db


def moment(task: Task, field: str) -> str:
    task.refresh_from_db()
    return format_time(getattr(task, field))


@pytest.fixture
def submit(django_capture_on_commit_callbacks):
    """Submit through the service, its hand-off to the broker run as on commit (no worker runs here)."""

    def submit_task(model_id: str, kind: str = "deployment") -> Task:
        with django_capture_on_commit_callbacks(execute=True):
            if kind == "deployment":
                return services.submit_deployment(model_id).task
            return services.submit_deletion(model_id).task

    return submit_task


def test_a_task_behind_another_of_its_model_says_which(submit):
    model = EmbeddingModelFactory(id="waits")
    first = submit(model.id)
    second = submit(model.id, "deletion")
    third = submit(model.id)
    behind_first = f"queued behind {first.pk} (deployment of waits)"
    assert selectors.waiting_reason(second) == behind_first
    assert selectors.waiting_reason(third) == behind_first  # the head of the queue, running or next

    # The first one running (it holds the lease) changes nothing for the others.
    assert claim_lease(first, "worker-host:7:abc")
    DeploymentTask.objects.filter(pk=first.pk).update(status=TaskStatus.PROCESSING, lease_owner="worker-host:7:abc")
    assert selectors.waiting_reason(third) == behind_first
    assert selectors.waiting_reason(Task.objects.get(pk=first.pk)) == ""  # not pending: no reason

    Task.objects.filter(pk=first.pk).update(status=TaskStatus.DONE, finished_at=timezone.now())
    assert selectors.waiting_reason(third) == f"queued behind {second.pk} (deletion of waits)"


def test_a_task_handed_to_the_broker_with_no_worker_says_since_when(submit):
    task = submit(EmbeddingModelFactory().id)
    assert selectors.waiting_reason(task) == f"waiting for a worker since {moment(task, 'dispatched_at')}"


def test_a_task_whose_hand_off_failed_says_it_was_not_handed_over(db):
    task = services.submit_deployment(EmbeddingModelFactory().id).task  # the commit never runs: no hand-off
    assert selectors.waiting_reason(task) == f"not yet sent to the queue (since {moment(task, 'created_at')})"


def test_a_re_sent_hand_off_says_when_and_the_timeline_says_why(submit, settings):
    settings.TASK_HANDOFF_GRACE_SECONDS = 30
    task = submit(EmbeddingModelFactory().id)

    assert services.sweep_tasks(now=timezone.now() + timedelta(seconds=31)).resent == [task.pk]

    event = TaskEvent.objects.get(task=task, stage=HANDOFF_STAGE)
    assert (event.state, event.actor) == ("resent", SWEEPER)
    assert event.message == "hand-off re-sent: no worker took it within 30 s"
    assert selectors.waiting_reason(task) == f"hand-off re-sent at {format_time(event.created_at)}"

    # Handed over afresh later (the task ahead finished, say): the re-send is no longer the news.
    Task.objects.filter(pk=task.pk).update(dispatched_at=timezone.now() + timedelta(seconds=5))
    assert selectors.waiting_reason(task).startswith("waiting for a worker since ")


def test_a_lease_held_by_other_work_is_named(submit):
    task = submit(EmbeddingModelFactory(id="restoring").id)
    assert claim_model_lease("restoring", "reconciler-host:9:def")  # a restore holds it, no task
    assert selectors.waiting_reason(task) == "waiting for the model's lease, held by reconciler-host:9:def"


def test_a_finished_task_keeps_its_outcome_as_detail(db):
    failed = FailedDeploymentFactory()
    assert selectors.waiting_reason(failed) == ""
    assert selectors.task_detail(failed) == failed.detail != ""


def test_a_page_of_tasks_is_explained_in_the_same_query(submit, django_assert_num_queries):
    model = EmbeddingModelFactory(id="paged")
    first = submit(model.id)
    for _ in range(5):
        submit(model.id)
    with django_assert_num_queries(1):
        tasks = list(selectors.with_waiting_reason(selectors.filter_tasks(embedding_model_id="paged")))
        reasons = [selectors.waiting_reason(task) for task in tasks]
    assert reasons[-1].startswith("waiting for a worker since ")
    assert reasons[:-1] == [f"queued behind {first.pk} (deployment of paged)"] * 5
