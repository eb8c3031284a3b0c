"""A lease's heartbeat: a renewal the database refused is tried again soon, not a whole interval later,
so a short lease survives a database that was briefly busy."""

from __future__ import annotations

import time

import pytest
from django.db import OperationalError

from deployments.services import leases
from deployments.services.leases import LeaseHeartbeat, claim_model_lease
from tests.support.processes import wait_for


@pytest.mark.django_db(transaction=True)
def test_a_failed_renewal_is_tried_again_within_a_second(settings, monkeypatch):
    settings.TASK_LEASE_SECONDS = 15  # renewed every 5 s
    claim_model_lease("m", "me")
    renewed_at: list[float] = []
    real_renew = leases.renew_lease

    def busy_once(embedding_model_id: str, owner: str) -> bool:
        renewed_at.append(time.monotonic())
        if len(renewed_at) == 1:
            raise OperationalError("database is locked")  # what SQLite says when another writer holds it
        return real_renew(embedding_model_id, owner)

    monkeypatch.setattr(leases, "renew_lease", busy_once)
    with LeaseHeartbeat("m", "me") as heartbeat:
        wait_for(lambda: len(renewed_at) >= 2, 12, "the renewal to be tried again")
    assert renewed_at[1] - renewed_at[0] < 2, "tried again a whole interval later"
    assert not heartbeat.lost.is_set()
