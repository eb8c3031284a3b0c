"""The one retry rule the API, the admin and the commands share, and retrying only once under concurrency."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connection

from deployments import services
from deployments.models import AuditEntry, DeploymentTask, Task, TaskStatus
from deployments.services import tasks as task_services
from tests.engine.test_engine import lose_worker
from tests.support.factories import DeletionTaskFactory, DeploymentTaskFactory, EmbeddingModelFactory

RETRIED = [TaskStatus.FAILED, TaskStatus.REFUSED, TaskStatus.CANCELED]
NOT_RETRIED = {
    TaskStatus.DONE: "it is done: deploy the model again instead",
    TaskStatus.PENDING: "it is pending: it has not finished yet",
    TaskStatus.PROCESSING: "it is processing: it has not finished yet",
}


@pytest.mark.django_db
@pytest.mark.parametrize("status", RETRIED)
def test_failed_refused_and_canceled_tasks_are_retried_once(status):
    task = DeploymentTaskFactory(status=status)

    attempt = services.retry_task(task, requested_by="alice")

    assert (attempt.retry_of_id, attempt.attempt, attempt.status, attempt.requested_by) == (
        task.pk,
        2,
        "pending",
        "alice",
    )
    with pytest.raises(services.RetryRefused) as refused:
        services.retry_task(task)
    assert refused.value.newer_attempt == attempt
    assert refused.value.reason == f"it was already retried as {attempt.pk} (attempt 2)"
    assert Task.objects.filter(retry_of=task).count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize("status,reason", NOT_RETRIED.items())
def test_other_tasks_are_not_retried_and_the_refusal_says_why(status, reason):
    task = DeploymentTaskFactory(status=status)
    with pytest.raises(services.RetryRefused) as refused:
        services.retry_task(task)
    assert (refused.value.reason, refused.value.newer_attempt) == (reason, None)
    assert Task.objects.count() == 1


@pytest.mark.django_db
def test_a_done_deletion_is_deleted_again_not_retried():
    with pytest.raises(services.RetryRefused, match="it is done: delete the model again instead"):
        services.retry_task(DeletionTaskFactory(status=TaskStatus.DONE))


@pytest.mark.django_db
def test_an_attempt_the_sweeper_retried_is_not_retried_again(settings):
    settings.TASK_MAX_ATTEMPTS = 2
    task = services.submit_deployment(EmbeddingModelFactory().id).task
    lose_worker(task)
    services.sweep_tasks()
    task.refresh_from_db()
    automatic = DeploymentTask.objects.get(retry_of=task)

    with pytest.raises(services.RetryRefused) as refused:
        services.retry_task(task)

    assert task.status == TaskStatus.FAILED and refused.value.newer_attempt == automatic


@pytest.mark.django_db
def test_the_sweepers_retry_is_on_the_audit_trail_as_the_sweeper(settings):
    settings.TASK_MAX_ATTEMPTS = 2
    task = services.submit_deployment(EmbeddingModelFactory().id, requested_by="alice").task
    lose_worker(task)
    services.sweep_tasks()
    automatic = DeploymentTask.objects.get(retry_of=task)

    retried = AuditEntry.objects.get(action="retry")
    assert (retried.actor, retried.via, retried.object_id) == ("sweeper", "system", task.pk)
    assert retried.changes == {"retried_as": automatic.pk, "attempt": 2}
    assert automatic.requested_by == "alice"  # the attempt still belongs to whoever asked for the work


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_retries_of_one_task_make_exactly_one_attempt(monkeypatch):
    failed = DeploymentTaskFactory(embedding_model_id=EmbeddingModelFactory().id, status=TaskStatus.FAILED)
    first_is_inserting = threading.Event()
    create_task = task_services._create_task

    def slow_create_task(*args: object, **kwargs: object) -> Task:
        # Hold the first retry between its check and its insert while the second one arrives.
        first_is_inserting.set()
        time.sleep(0.5)
        return create_task(*args, **kwargs)

    monkeypatch.setattr(task_services, "_create_task", slow_create_task)
    outcomes: dict[str, Task | Exception] = {}

    def retry(name: str) -> None:
        try:
            outcomes[name] = services.retry_task(Task.objects.get(pk=failed.pk))
        except Exception as exc:
            outcomes[name] = exc
        finally:
            connection.close()

    first = threading.Thread(target=retry, args=("first",))
    first.start()
    assert first_is_inserting.wait(10)
    second = threading.Thread(target=retry, args=("second",))
    second.start()
    first.join(20)
    second.join(20)

    attempt = Task.objects.get(retry_of=failed)
    assert outcomes["first"] == attempt
    assert isinstance(outcomes["second"], services.RetryRefused), outcomes["second"]
    assert outcomes["second"].newer_attempt == attempt
