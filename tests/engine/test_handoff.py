"""Hand-off to the queue when the broker fails: no path withdraws a task, every one stays pending and
the sweeper sends it once the broker answers again.

The broker fault is injected by replacing django-q2's ``async_task`` as the services use it; real
commits (``transaction=True``), so the hand-off runs when it does in production: after the commit.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from deployments import services
from deployments.models import DeploymentTask, Task, TaskKind, TaskStatus
from deployments.services.bulk import submit_many
from deployments.services.sweeper import SweepReport
from tests.engine.test_engine import lose_worker
from tests.support.factories import EmbeddingModelFactory

pytestmark = pytest.mark.django_db(transaction=True)

GRACE = 30


@pytest.fixture
def broker(monkeypatch, settings):
    """Switch the broker off and on again: ``broker.down()``, ``broker.up()``."""
    settings.TASK_HANDOFF_GRACE_SECONDS = GRACE

    class Broker:
        @staticmethod
        def down() -> None:
            def unreachable(*args: object, **kwargs: object) -> None:
                raise ConnectionError("broker unreachable")

            monkeypatch.setattr("deployments.services.tasks.async_task", unreachable)

        @staticmethod
        def up() -> None:
            monkeypatch.undo()

    return Broker()


def sweep_after_the_grace() -> SweepReport:
    return services.sweep_tasks(now=timezone.now() + timedelta(seconds=GRACE + 1))


def test_a_broker_failure_while_the_sweeper_retries_lost_attempts_keeps_the_retries(broker, settings):
    settings.TASK_MAX_ATTEMPTS = 3
    lost = []
    for _ in range(2):
        task = services.submit_deployment(EmbeddingModelFactory().id).task
        lose_worker(task)
        lost.append(task)
    broker.down()

    report = services.sweep_tasks()

    # Both lost attempts are resolved (the first failed hand-off does not stop the sweep) and retried.
    assert sorted(report.failed) == sorted(task.pk for task in lost)
    retries = list(DeploymentTask.objects.filter(retry_of__in=lost))
    assert sorted(report.retried) == sorted(retry.pk for retry in retries) and len(retries) == 2
    assert {(retry.status, retry.dispatched_at) for retry in retries} == {(TaskStatus.PENDING, None)}

    broker.up()
    assert services.sweep_tasks().resent == []  # within the grace period
    assert sorted(sweep_after_the_grace().resent) == sorted(retry.pk for retry in retries)
    assert all(retry.dispatched_at for retry in DeploymentTask.objects.filter(retry_of__in=lost))


def test_a_batch_whose_hand_off_fails_stays_pending_and_names_its_tasks(broker):
    model_ids = [EmbeddingModelFactory().id for _ in range(3)]
    broker.down()

    with pytest.raises(services.TaskHandOffFailed) as failed:
        submit_many(TaskKind.DEPLOYMENT, model_ids, {"expected_dimensions": 384})

    tasks = Task.objects.filter(embedding_model_id__in=model_ids)
    assert sorted(failed.value.task_ids) == sorted(tasks.values_list("pk", flat=True))
    assert failed.value.retry_after == GRACE
    assert "3 tasks were created" in str(failed.value)
    assert {(task.status, task.dispatched_at) for task in tasks} == {(TaskStatus.PENDING, None)}

    broker.up()
    assert len(sweep_after_the_grace().resent) == 3


def test_a_failed_hand_off_of_the_next_task_leaves_it_pending(broker):
    model = EmbeddingModelFactory()
    first = services.submit_deployment(model.id).task
    second = services.submit_deletion(model.id).task
    second.refresh_from_db()
    handed_over_at = second.dispatched_at  # sent once when submitted; its worker waited for the first
    broker.down()

    services.cancel_task(first)  # hands the next one over on commit

    second.refresh_from_db()
    assert (second.status, second.dispatched_at) == (TaskStatus.PENDING, handed_over_at)
    broker.up()
    assert sweep_after_the_grace().resent == [second.pk]
