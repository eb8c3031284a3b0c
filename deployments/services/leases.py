"""Per-model leases in the database: one worker at a time may act on a model, on any machine.

A lease is a ModelLease row's (owner, expires_at). It is taken with one conditional UPDATE, so two
workers racing for it cannot both win (PostgreSQL re-checks the WHERE clause after the row lock;
SQLite serializes writers). A heartbeat thread pushes expires_at forward while the task runs; if
the worker dies, the lease simply runs out and the sweeper takes over.

The same row counts the model's queue positions (``allocate_sequence``). The capacity lock, which
is about all models at once, has a table of its own (``CapacityLock``).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Collection, Sequence
from datetime import datetime, timedelta

from django.conf import settings
from django.db import close_old_connections, connection
from django.db.models import F, Q
from django.utils import timezone

from deployments.models import CapacityLock, ModelLease, Task

logger = logging.getLogger(__name__)


def new_lease_owner() -> str:
    """A name for one run of one task: host, process and a nonce (pids are reused after restarts)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def lease_duration() -> timedelta:
    return timedelta(seconds=settings.TASK_LEASE_SECONDS)


def ensure_lease_rows(embedding_model_ids: Collection[str]) -> None:
    # INSERT ... ON CONFLICT DO NOTHING: safe when many requests create the rows at once.
    ModelLease.objects.bulk_create(
        [ModelLease(embedding_model_id=model_id) for model_id in embedding_model_ids],
        ignore_conflicts=True,
        batch_size=500,
    )


def allocate_sequence(embedding_model_id: str) -> int:
    """The next queue position for the model. Call inside a transaction: the row stays locked
    until commit, so positions are handed out in commit order."""
    return allocate_sequences([embedding_model_id])[embedding_model_id]


def allocate_sequences(embedding_model_ids: Sequence[str]) -> dict[str, int]:
    """The next queue position of each of many (distinct) models, in a few statements per 500 models.

    Call inside a transaction. The rows are locked in id order first, so two batches that share
    models cannot deadlock each other.
    """
    ensure_lease_rows(embedding_model_ids)
    positions: dict[str, int] = {}
    ordered = sorted(set(embedding_model_ids))
    for start in range(0, len(ordered), 500):
        chunk = ordered[start : start + 500]
        if len(chunk) > 1:
            list(ModelLease.objects.select_for_update().filter(pk__in=chunk).order_by("pk").values_list("pk"))
        ModelLease.objects.filter(pk__in=chunk).update(next_sequence=F("next_sequence") + 1)
        positions.update(ModelLease.objects.filter(pk__in=chunk).values_list("pk", "next_sequence"))
    return positions


def claim_lease(task: Task, owner: str) -> bool:
    """Take the model's lease for ``task`` if it is free or its holder stopped renewing it."""
    return claim_model_lease(task.embedding_model_id, owner, task_id=task.pk)


def claim_model_lease(embedding_model_id: str, owner: str, task_id: uuid.UUID | None = None) -> bool:
    """Take a model's lease if it is free or expired; without a task for work that is not one (restore)."""
    ensure_lease_rows([embedding_model_id])
    now = timezone.now()
    claimed = (
        ModelLease.objects.filter(pk=embedding_model_id)
        .filter(Q(owner="") | Q(expires_at__lt=now))
        .update(owner=owner, task_id=task_id, expires_at=now + lease_duration())
    )
    return claimed == 1


def lease_is_held(embedding_model_id: str, now: datetime | None = None) -> bool:
    """True while someone holds the model's lease and keeps renewing it."""
    now = now or timezone.now()
    return ModelLease.objects.filter(pk=embedding_model_id, expires_at__gt=now).exclude(owner="").exists()


def renew_lease(embedding_model_id: str, owner: str) -> bool:
    renewed = ModelLease.objects.filter(pk=embedding_model_id, owner=owner).update(
        expires_at=timezone.now() + lease_duration()
    )
    return renewed == 1


def release_lease(embedding_model_id: str, owner: str) -> bool:
    released = ModelLease.objects.filter(pk=embedding_model_id, owner=owner).update(
        owner="", task_id=None, expires_at=None
    )
    return released == 1


def lock_capacity() -> None:
    """Inside a transaction: wait for and hold the global capacity lock until commit."""
    CapacityLock.objects.get_or_create(pk=1)
    CapacityLock.objects.select_for_update().get(pk=1)


class LeaseHeartbeat:
    """Renews a lease from a background thread while the block runs."""

    def __init__(self, embedding_model_id: str, owner: str):
        self.embedding_model_id = embedding_model_id
        self.owner = owner
        self.interval = max(0.05, settings.TASK_LEASE_SECONDS / 4)
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{embedding_model_id}", daemon=True)

    def __enter__(self) -> LeaseHeartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval + 5)

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.interval):
                try:
                    if not renew_lease(self.embedding_model_id, self.owner):
                        # The sweeper judged us dead and took the task over; finishing will not overwrite it.
                        logger.warning("lease on %s lost by %s", self.embedding_model_id, self.owner)
                        self.lost.set()
                        return
                except Exception:  # a transient DB error must not kill the heartbeat
                    logger.exception("renewing the lease on %s failed", self.embedding_model_id)
                    close_old_connections()
        finally:
            connection.close()  # this thread's own connection
