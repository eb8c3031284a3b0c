"""Fencing: a lease carries a generation, expires by the database's clock, and an attempt that lost it
stops before its next side effect: no server call, no repository change, no registry or task write."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connection
from django.utils import timezone

from deployments import selectors, services
from deployments.inference import FenceLost, served_name
from deployments.models import EmbeddingModel, ModelLease, Task, TaskStatus
from deployments.services.faults import HOLD_AT_ENV, HOLD_FILE_ENV
from deployments.services.leases import Fence, claim_model_lease, renew_lease
from deployments.services.sweeper import resolve_leases_of_dead_process
from tests.support.factories import EmbeddingModelFactory
from tests.support.processes import wait_for
from tests.support.snapshots import repository_tree, rows, served


def expire(embedding_model_id: str) -> None:
    ModelLease.objects.filter(pk=embedding_model_id).update(expires_at=timezone.now() - timedelta(seconds=1))


@pytest.mark.django_db
def test_every_take_of_a_lease_is_a_new_generation():
    first = claim_model_lease("m", "worker-a")
    assert first is not None and first.generation == 1
    assert claim_model_lease("m", "worker-b") is None
    expire("m")
    second = claim_model_lease("m", "worker-b")
    assert second is not None and second.generation == 2


@pytest.mark.django_db
def test_a_fence_holds_until_the_lease_expires_or_is_taken_over():
    lease = claim_model_lease("m", "worker-a")
    fence = Fence(lease)
    fence.check()  # held: nothing raised
    expire("m")
    with pytest.raises(FenceLost):
        fence.check()  # expired, even though nobody took it yet
    assert not renew_lease("m", "worker-a")  # an expired lease is not renewed back to life
    claim_model_lease("m", "worker-b")
    with pytest.raises(FenceLost):
        fence.check()
    assert not EmbeddingModel.objects.filter(Fence(lease).condition).exists()


@pytest.mark.django_db
def test_lease_expiry_follows_the_database_clock_not_the_hosts(monkeypatch):
    claim_model_lease("m", "worker-a")
    # A host whose clock runs an hour ahead must not see the lease as expired.
    ahead = timezone.now() + timedelta(hours=1)
    monkeypatch.setattr(timezone, "now", lambda: ahead)
    assert claim_model_lease("m", "worker-b") is None
    assert services.sweep_tasks().failed == []


@pytest.mark.mlserver
@pytest.mark.django_db(transaction=True)
def test_a_superseded_worker_changes_nothing_when_it_wakes_up(inference_settings, mlserver, monkeypatch, tmp_path):
    """Attempt 1 is held at load_green, its lease expires, the sweeper retries it and attempt 2 deploys.
    When attempt 1 resumes, it finds its fence lost at its first write and stops."""
    inference_settings.TASK_LEASE_SECONDS = 600  # the heartbeat must not be what expires it
    model = EmbeddingModelFactory(id="fenced")
    hold = tmp_path / "hold"
    monkeypatch.setenv(HOLD_AT_ENV, "load_green")
    monkeypatch.setenv(HOLD_FILE_ENV, str(hold))
    first = services.submit_deployment(model.id).task
    outcome: list[str] = []

    def stale_worker() -> None:
        try:
            outcome.append(services.run_task(first.pk))
        finally:
            connection.close()

    worker = threading.Thread(target=stale_worker)
    worker.start()
    wait_for(hold.exists, 60, "attempt 1 to reach load_green")

    expire(model.id)
    assert services.sweep_tasks().failed == [str(first.pk)]
    retry = Task.objects.get(retry_of=first)
    assert services.run_task(retry.pk) == TaskStatus.DONE
    repository = Path(mlserver.repository_root)
    before = (repository_tree(repository / model.id), served(mlserver.url), rows(model.id))

    hold.unlink()  # attempt 1 wakes up
    worker.join(60)

    assert outcome and outcome[0].startswith("superseded")
    assert (repository_tree(repository / model.id), served(mlserver.url), rows(model.id)) == before
    retry.refresh_from_db()
    live = EmbeddingModel.objects.get(pk=model.id)
    assert (live.state, live.live_revision) == ("deployed", retry.metadata["revision"])
    loaded = [name for name, state in served(mlserver.url) if name.startswith(f"{model.id}~") and state == "READY"]
    assert loaded == [served_name(model.id, live.live_revision)]


def running_task_of(owner: str, model_id: str) -> Task:
    """A processing task whose worker (``owner``) holds its model's lease, unexpired."""
    task = services.submit_deployment(EmbeddingModelFactory(id=model_id).id).task
    assert claim_model_lease(model_id, owner, task_id=task.pk)
    Task.objects.filter(pk=task.pk).update(status=TaskStatus.PROCESSING, lease_owner=owner)
    return task


@pytest.mark.django_db
def test_the_leases_of_a_process_seen_dead_are_taken_over_at_once_and_its_task_retried():
    task = running_task_of("host-a:4242:abc", "dead-worker")
    running_task_of("host-a:42:def", "neighbour")  # another pid of the host: untouched
    running_task_of("host-b:4242:ghi", "other-host")  # the same pid on another host: untouched

    report = resolve_leases_of_dead_process("host-a", 4242, lambda: True, "its process 4242 ended")

    task.refresh_from_db()
    assert report.failed == [task.pk] and len(report.retried) == 1
    assert task.status == TaskStatus.FAILED and "worker host-a:4242:abc died (its process 4242 ended)" in task.detail
    assert ModelLease.objects.get(pk="dead-worker").owner == ""  # let go before its lease ran out
    assert set(ModelLease.objects.exclude(owner="").values_list("pk", flat=True)) == {"neighbour", "other-host"}


@pytest.mark.django_db
def test_a_dead_process_door_never_takes_a_lease_from_a_living_holder(monkeypatch):
    task = running_task_of("host-a:4242:abc", "reused")
    # Its pid runs another process by the time the leases are read: they may be that process's.
    assert resolve_leases_of_dead_process("host-a", 4242, lambda: False, "gone").failed == []
    # The lease changed hands between the read and the take (a newer generation): not the dead one's.
    read = list(ModelLease.objects.filter(pk="reused"))
    monkeypatch.setattr(selectors, "leases_held_by_process", lambda host, pid: read)
    expire("reused")
    assert claim_model_lease("reused", "host-a:4242:new") is not None
    assert resolve_leases_of_dead_process("host-a", 4242, lambda: True, "gone").failed == []

    task.refresh_from_db()
    assert task.status == TaskStatus.PROCESSING
    assert ModelLease.objects.get(pk="reused").owner == "host-a:4242:new"
