"""Per-model leases in the database: one worker at a time may act on a model, on any machine.

A lease is a ModelLease row's (owner, generation, expires_at). It is taken with one conditional
UPDATE, so two workers racing for it cannot both win (PostgreSQL re-checks the WHERE clause after
the row lock; SQLite serializes writers). A heartbeat thread pushes expires_at forward while the
task runs, one UPDATE every ``lease_renewal_seconds()``; if the worker dies, its supervisor sees it
and takes the lease over at once (``take_over_lease``), and otherwise (a paused worker, a machine
gone) the lease simply runs out and the sweeper takes over.

Fencing: every take bumps the generation, and a holder checks (``Fence``) that the row still
names its owner and generation, unexpired, before every stage and every write it makes. Expiry is
computed and compared with the database's clock (``Now()``), so hosts whose clocks disagree, or a
worker paused for minutes, cannot believe a lease is theirs when the database says it is not.

The same row counts the model's queue positions (``allocate_sequence``). The capacity lock, which
is about all models at once, has a table of its own (``CapacityLock``).
"""

from __future__ import annotations

import contextvars
import logging
import os
import socket
import threading
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import close_old_connections, connection
from django.db.models import DateTimeField, Exists, ExpressionWrapper, F, Q, QuerySet
from django.db.models.functions import Now

from deployments.inference import FenceLost
from deployments.models import CapacityLock, ModelLease, Task
from deployments.services.reconnect import reconnecting

logger = logging.getLogger(__name__)


def new_lease_owner() -> str:
    """A name for one run of one task: host, process and a nonce (pids are reused after restarts)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def lease_duration() -> timedelta:
    return timedelta(seconds=settings.TASK_LEASE_SECONDS)


def lease_renewal_seconds() -> float:
    """How often a holder renews its lease: a third of it, so two renewals in a row may fail (a database
    busy for a moment) before the lease runs out; one small UPDATE per held lease each time."""
    return max(0.05, settings.TASK_LEASE_SECONDS / 3)


def lease_expiry() -> ExpressionWrapper:
    """When a lease taken or renewed now expires, by the database's clock."""
    return ExpressionWrapper(Now() + lease_duration(), output_field=DateTimeField())


@dataclass(frozen=True)
class Lease:
    """A lease as its holder took it: the generation is the holder's fencing token."""

    embedding_model_id: str
    owner: str
    generation: int


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


def claim_lease(task: Task, owner: str) -> Lease | None:
    """Take the model's lease for ``task`` if it is free or its holder stopped renewing it."""
    return claim_model_lease(task.embedding_model_id, owner, task_id=task.pk)


def claim_model_lease(embedding_model_id: str, owner: str, task_id: str | None = None) -> Lease | None:
    """Take a model's lease if it is free or expired (None if not); without a task for work that is
    not one (restore, reconcile)."""
    ensure_lease_rows([embedding_model_id])
    claimed = (
        ModelLease.objects.filter(pk=embedding_model_id)
        .filter(Q(owner="") | Q(expires_at__lt=Now()))
        .update(owner=owner, task_id=task_id, generation=F("generation") + 1, expires_at=lease_expiry())
    )
    if not claimed:
        return None
    generation = ModelLease.objects.filter(pk=embedding_model_id, owner=owner).values_list("generation", flat=True)
    return Lease(embedding_model_id, owner, generation.get())


def take_over_lease(lost: Lease, owner: str, *, holder_is_dead: bool = False) -> Lease | None:
    """Take a lease from a holder judged lost (None if it is not lost after all).

    Only if the row still names that holder and generation, so a holder that renewed meanwhile, or a
    newer holder, is never stolen from; and only once it has expired, unless the holder is known dead
    (its process is gone: it cannot renew, so there is nothing to wait for).
    """
    held = ModelLease.objects.filter(pk=lost.embedding_model_id, owner=lost.owner, generation=lost.generation)
    if not holder_is_dead:
        held = held.filter(expires_at__lt=Now())
    if not held.update(owner=owner, task_id=None, generation=F("generation") + 1, expires_at=lease_expiry()):
        return None
    return Lease(lost.embedding_model_id, owner, lost.generation + 1)


def lease_is_held(embedding_model_id: str) -> bool:
    """True while someone holds the model's lease and keeps renewing it."""
    return ModelLease.objects.filter(pk=embedding_model_id, expires_at__gt=Now()).exclude(owner="").exists()


def renew_lease(embedding_model_id: str, owner: str) -> bool:
    """Push the lease's expiry forward, if ``owner`` still holds it and it has not expired meanwhile."""
    renewed = ModelLease.objects.filter(pk=embedding_model_id, owner=owner, expires_at__gt=Now()).update(
        expires_at=lease_expiry()
    )
    return renewed == 1


def release_lease(embedding_model_id: str, owner: str) -> bool:
    released = ModelLease.objects.filter(pk=embedding_model_id, owner=owner).update(
        owner="", task_id=None, expires_at=None
    )
    return released == 1


def _still_held(lease: Lease) -> QuerySet[ModelLease]:
    return ModelLease.objects.filter(
        pk=lease.embedding_model_id, owner=lease.owner, generation=lease.generation, expires_at__gt=Now()
    )


def lock_capacity() -> None:
    """Inside a transaction: wait for and hold the global capacity lock until commit."""
    CapacityLock.objects.select_for_update().get_or_create(pk=1)


class Fence:
    """What a lease holder checks before every stage and every write: is the lease still mine?

    ``check`` raises FenceLost once the heartbeat has seen the lease go, or when the database no
    longer names this owner and generation with an unexpired lease (taken over, or expired while
    the worker was paused). Writes to the database use ``condition`` so check and write are one.
    """

    def __init__(self, lease: Lease, heartbeat: LeaseHeartbeat | None = None):
        self.lease = lease
        self.heartbeat = heartbeat

    @reconnecting
    def holds(self) -> bool:
        if self.heartbeat is not None and self.heartbeat.lost.is_set():
            return False
        return _still_held(self.lease).exists()

    def check(self) -> None:
        if not self.holds():
            raise FenceLost(
                f"the lease on {self.lease.embedding_model_id} (generation {self.lease.generation}) is no longer "
                f"held by {self.lease.owner}: this attempt was superseded and stops here"
            )

    @property
    def condition(self) -> Exists:
        """A condition for a write that must only happen while the lease is still held (one statement)."""
        return Exists(_still_held(self.lease))


class LeaseHeartbeat:
    """Renews a lease from a background thread while the block runs."""

    def __init__(self, embedding_model_id: str, owner: str):
        self.embedding_model_id = embedding_model_id
        self.owner = owner
        self.interval = lease_renewal_seconds()
        self.lost = threading.Event()
        self._stop = threading.Event()
        # In a copy of the caller's context, so its log lines name the task it keeps alive (log_context).
        self._thread = threading.Thread(
            target=contextvars.copy_context().run, args=(self._run,), name=f"lease-{embedding_model_id}", daemon=True
        )

    def __enter__(self) -> LeaseHeartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval + 5)

    def _run(self) -> None:
        try:
            wait = self.interval
            while not self._stop.wait(wait):
                wait = self.interval
                try:
                    if not renew_lease(self.embedding_model_id, self.owner):
                        # The sweeper judged us dead and took the task over; finishing will not overwrite it.
                        logger.warning("lease on %s lost by %s", self.embedding_model_id, self.owner)
                        self.lost.set()
                        return
                except Exception:  # a transient DB error must not kill the heartbeat
                    logger.exception("renewing the lease on %s failed", self.embedding_model_id)
                    close_old_connections()
                    # Try again soon, not a whole interval later: a short lease survives few misses.
                    wait = min(1.0, self.interval)
        finally:
            connection.close()  # this thread's own connection
